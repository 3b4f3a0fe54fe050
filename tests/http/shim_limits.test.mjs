// Limits against abuse: body, header and URI caps, the per-address
// connection cap, slow clients and idle keep-alive connections.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startShim, request, rawRequest, assertErrorShape, eventually } from './lib.mjs';
import { createTestFunctions, dropTestFunctions } from './shim_fixtures.mjs';

let shim;
before(async () => {
  createTestFunctions();
  shim = await startShim({
    env: {
      LATTICE_SHIM_BODY_MAX: '1000',
      LATTICE_SHIM_HEADER_MAX: '4096',
      LATTICE_SHIM_URI_MAX: '1024',
      LATTICE_SHIM_REQUEST_TIMEOUT_MS: '800',
      LATTICE_SHIM_KEEPALIVE_TIMEOUT_MS: '600',
      LATTICE_SHIM_PER_ADDRESS_MAX: '3',
    },
  });
});
after(async () => {
  await shim?.stop();
  dropTestFunctions();
});

const JSON_HDR = 'Content-Type: application/json\r\n';

test('a body at the cap passes, one byte over is 413', async () => {
  const ok = '"' + 'a'.repeat(998) + '"';
  const r = await request(shim, '/api/v1/_test/echo', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: ok });
  assert.equal(r.status, 200);
  const big = await request(shim, '/api/v1/_test/echo', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: ok + ' ' });
  assertErrorShape(assert, big, 413, 'too_large');
});

test('413 comes from Content-Length, before the body is sent', async () => {
  // only the headers go out: an answer proves the shim did not wait for the body
  const r = await rawRequest(shim, `POST /api/v1/_test/echo HTTP/1.1\r\nHost: x\r\n${JSON_HDR}Content-Length: 104857600\r\n\r\n`, { timeout: 2000 });
  assertErrorShape(assert, r, 413, 'too_large');
  assert.equal(r.headers.connection, 'close');
});

test('a chunked body over the cap is 413 too', async () => {
  const chunk = 'a'.repeat(600);
  const body = `258\r\n${chunk}\r\n258\r\n${chunk}\r\n0\r\n\r\n`;
  const r = await rawRequest(shim, `POST /api/v1/_test/echo HTTP/1.1\r\nHost: x\r\n${JSON_HDR}Transfer-Encoding: chunked\r\n\r\n${body}`);
  assertErrorShape(assert, r, 413, 'too_large');
});

test('huge headers: 431', async () => {
  const r = await rawRequest(shim, `GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(6000)}\r\n\r\n`);
  assertErrorShape(assert, r, 431, 'headers_too_large');
});

test('a long URI: 414', async () => {
  const r = await request(shim, '/api/v1/health?x=' + 'a'.repeat(1100));
  assertErrorShape(assert, r, 414, 'uri_too_long');
});

test('per-address connection cap: the connection over it gets 429 and is closed', async () => {
  const held = [];
  // an address of its own: the other tests' keep-alive connections from
  // 127.0.0.1 come and go meanwhile
  const from = '127.0.93.2';
  try {
    // three connections each served once and kept alive hold the three slots
    for (let i = 0; i < 3; i++) {
      const s = net.connect({ port: shim.port, host: '127.0.0.1', localAddress: from });
      await new Promise((res) => s.on('connect', res));
      s.write('GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n');
      await new Promise((res) => s.once('data', res));
      held.push(s);
    }
    const r = await rawRequest(shim, 'GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n', { localAddress: from });
    assertErrorShape(assert, r, 429, 'too_many_connections');
    assert.equal(r.headers.connection, 'close');
  } finally {
    held.forEach((s) => s.destroy());
  }
  // freed slots are usable again, once the shim has seen the connections close
  await eventually(async () => (await rawRequest(shim, 'GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
                                                 { localAddress: from })).status === 200, { timeout: 3000 });
});

test('slow client (slowloris): cut off after request_timeout_ms with 408', async () => {
  let timer;
  const r = await rawRequest(shim, 'GET /api/v1/health HTTP/1.1\r\nHost: x\r\n', {
    timeout: 5000,
    onSocket: (s) => { timer = setInterval(() => { if (!s.destroyed) s.write('X-Drip: a\r\n'); }, 200); },
  });
  clearInterval(timer);
  assertErrorShape(assert, r, 408, 'timeout');
  assert.ok(r.elapsed >= 700 && r.elapsed < 3000, `elapsed ${r.elapsed}`);
});

test('an idle keep-alive connection is closed after keepalive_timeout_ms', async () => {
  const s = net.connect(shim.port, '127.0.0.1');
  await new Promise((res) => s.on('connect', res));
  s.write('GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n');
  await new Promise((res) => s.once('data', res));
  const t0 = Date.now();
  await new Promise((res) => { s.on('close', res); s.on('end', () => s.destroy()); setTimeout(res, 4000); });
  const idle = Date.now() - t0;
  assert.ok(s.destroyed, 'server closed the idle connection');
  assert.ok(idle < 3000, `closed after ${idle} ms`);
});
