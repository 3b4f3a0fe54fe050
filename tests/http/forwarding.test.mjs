// Behind a reverse proxy: trusted_proxies and the forwarding headers
// (Forwarded, X-Forwarded-For, X-Forwarded-Proto) through the real shim.
// Loopback has all of 127.0.0.0/8, so client sockets bound to 127.0.0.2
// (trusted here) and 127.0.0.3 / 127.0.0.5 (not) act as distinct peers.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { randomUUID } from 'node:crypto';
import { startShim, rawRequest, psql, eventually, freePort, SHIM_BIN, assertErrorShape } from './lib.mjs';
import { createTestFunctions, dropTestFunctions } from './shim_fixtures.mjs';
import { EVENTS_ENV, metric } from './events_lib.mjs';

const PROXY = '127.0.0.2';
const STRANGER = '127.0.0.3';
const ECHO = '/api/v1/_test/echo/1/items/2';
let shim;

before(async () => {
  createTestFunctions();
  shim = await startShim({ env: { LATTICE_SHIM_TRUSTED_PROXIES: `${PROXY}/32, 10.0.0.0/8, 2001:db8:ffff::/48` } });
});
after(async () => {
  await shim?.stop();
  dropTestFunctions();
});

// One request from a given loopback address; headers as [name, value] pairs
// so that a name may repeat.  Answers rawRequest's shape plus the request id.
async function from(addr, path, headers = [], { method = 'GET', body } = {}) {
  const rid = `fwd-${randomUUID()}`;
  const lines = [[`X-Request-Id`, rid], ...headers, ...(body ? [['Content-Type', 'application/json'], ['Content-Length', Buffer.byteLength(body)]] : [])]
    .map(([n, v]) => `${n}: ${v}\r\n`).join('');
  const r = await rawRequest(shim, `${method} ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n${lines}\r\n${body ?? ''}`,
    { localAddress: addr });
  return { ...r, rid };
}
const logOf = (rid) => eventually(() => shim.accessLog().find((l) => l.request_id === rid));
const SPOOFS = [
  ['X-Forwarded-For', '203.0.113.7'],
  ['Forwarded', 'for=203.0.113.8;proto=https'],
  ['X-Forwarded-Proto', 'https'],
];

test('from an untrusted peer the forwarding headers change nothing', async () => {
  const r = await from(STRANGER, ECHO, SPOOFS);
  assert.equal(r.status, 200);
  assert.equal(r.json.req.client_addr, STRANGER);
  assert.equal(r.json.req.tls, false, 'a spoofed X-Forwarded-Proto is not https');
  assert.equal(r.headers['strict-transport-security'], undefined);
  const line = await logOf(r.rid);
  assert.equal(line.client, STRANGER);
  assert.equal(line.peer, undefined);
});

test('from an untrusted peer even malformed or repeated forwarding headers are ignored', async () => {
  const r = await from(STRANGER, ECHO, [['X-Forwarded-For', 'not an address'], ['X-Forwarded-For', '1.2.3.4'],
    ['Forwarded', 'for=???'], ['X-Forwarded-Proto', 'gopher']]);
  assert.equal(r.status, 200);
  assert.equal(r.json.req.client_addr, STRANGER);
});

test('a sign-up through a spoofed X-Forwarded-Proto from an untrusted peer gets no Secure cookie', async () => {
  const email = `fwd-${randomUUID()}@example.com`;
  const r = await from('127.0.0.5', '/api/v1/auth/signup', SPOOFS, { method: 'POST',
    body: JSON.stringify({ email, password: 'a fine long password', name: 'Fwd' }) });
  assert.equal(r.status, 201, r.body);
  assert.ok(r.headers['set-cookie'].includes('lattice_session='));
  assert.ok(!/;\s*Secure/i.test(r.headers['set-cookie']), r.headers['set-cookie']);
  assert.equal(r.headers['strict-transport-security'], undefined);
  assert.equal(psql(`SELECT host(client_addr) FROM lattice.audit_log WHERE request_id = '${r.rid}'`), '127.0.0.5');
});

test('from a trusted peer the right-most address that is not a trusted proxy is the client', async () => {
  const cases = [
    ['198.51.100.1, 203.0.113.5, 10.1.2.3', '203.0.113.5'],
    ['203.0.113.5', '203.0.113.5'],
    ['10.0.0.1, 10.0.0.2', '10.0.0.1'],                    // all trusted: the left-most
    ['2001:db8::7, 2001:db8:ffff::1', '2001:db8::7'],
    ['192.0.2.1:4711, [2001:db8::8]:80', '2001:db8::8'],   // ports as some proxies write them
  ];
  for (const [xff, client] of cases) {
    const r = await from(PROXY, ECHO, [['X-Forwarded-For', xff]]);
    assert.equal(r.status, 200, `${xff}: ${r.body}`);
    assert.equal(r.json.req.client_addr, client, xff);
    assert.equal(r.json.req.tls, false);
    const line = await logOf(r.rid);
    assert.equal(line.client, client);
    assert.equal(line.peer, PROXY);
  }
});

test('Forwarded (RFC 7239): quoted IPv6 with a port, proto, obfuscated and unknown hops', async () => {
  const cases = [
    ['for="[2001:db8:cafe::17]:4711";proto=https', '2001:db8:cafe::17', true],
    ['for=192.0.2.60;proto=http;by=203.0.113.43', '192.0.2.60', false],
    ['for=192.0.2.43, For=198.51.100.17;proto=https', '198.51.100.17', true],
    ['for=192.0.2.43, for=10.9.9.9', '192.0.2.43', false],
    ['for=unknown', PROXY, false],                          // hidden: the hop that reported it
    ['for=_hidden, for=10.9.9.9', '10.9.9.9', false],
    ['for="_gazonk:_port";proto=https', PROXY, true],
  ];
  for (const [fwd, client, tls] of cases) {
    const r = await from(PROXY, ECHO, [['Forwarded', fwd]]);
    assert.equal(r.status, 200, `${fwd}: ${r.body}`);
    assert.equal(r.json.req.client_addr, client, fwd);
    assert.equal(r.json.req.tls, tls, fwd);
    assert.equal(r.headers['strict-transport-security'] !== undefined, tls, `HSTS for ${fwd}`);
  }
});

test('Forwarded is preferred; X-Forwarded-For naming the same client is fine', async () => {
  const r = await from(PROXY, ECHO, [['Forwarded', 'for=203.0.113.9'], ['X-Forwarded-For', '203.0.113.9']]);
  assert.equal(r.status, 200);
  assert.equal(r.json.req.client_addr, '203.0.113.9');
});

test('a trusted proxy saying https: req.tls, HSTS, and a Secure cookie', async () => {
  const email = `fwd-${randomUUID()}@example.com`;
  const r = await from(PROXY, '/api/v1/auth/signup', [['X-Forwarded-For', '198.51.100.77'], ['X-Forwarded-Proto', 'https']],
    { method: 'POST', body: JSON.stringify({ email, password: 'a fine long password', name: 'Fwd' }) });
  assert.equal(r.status, 201, r.body);
  assert.match(r.headers['set-cookie'], /lattice_session=[^;]+;.*Secure/);
  assert.match(r.headers['strict-transport-security'], /max-age=\d+/);
  // the extension keys on the derived address (audit, per-address limits)
  assert.equal(psql(`SELECT host(client_addr) FROM lattice.audit_log WHERE request_id = '${r.rid}'`), '198.51.100.77');
  const echo = await from(PROXY, ECHO, [['X-Forwarded-Proto', 'https']]);
  assert.equal(echo.json.req.tls, true);
  assert.equal(echo.json.req.client_addr, PROXY, 'no address forwarded: the peer');
});

test('malformed, repeated or over-long forwarding headers from a trusted peer: 400 bad_forwarding_header', async () => {
  const hops = Array.from({ length: 33 }, (_, i) => `192.0.2.${i + 1}`).join(', ');
  const cases = [
    [[['X-Forwarded-For', '1.2.3.4'], ['X-Forwarded-For', '5.6.7.8']], /more than one X-Forwarded-For/],
    [[['Forwarded', 'for=1.2.3.4'], ['forwarded', 'for=5.6.7.8']], /more than one Forwarded/],
    [[['X-Forwarded-Proto', 'https'], ['X-Forwarded-Proto', 'http']], /more than one X-Forwarded-Proto/],
    [[['X-Forwarded-For', 'not-an-address']], /X-Forwarded-For.*not an address/],
    [[['X-Forwarded-For', '1.2.3.4,,5.6.7.8']], /not an address/],
    [[['Forwarded', 'for=garbage']], /for=.*not an address/],
    [[['Forwarded', 'for=2001:db8::1']], /Forwarded is malformed/],   // IPv6 must be quoted and bracketed
    [[['Forwarded', 'for=1.2.3.4;for=5.6.7.8']], /repeats for=/],
    [[['Forwarded', 'for=203.0.113.1'], ['X-Forwarded-For', '203.0.113.2']], /different clients/],
    [[['Forwarded', 'for=203.0.113.1;proto=https'], ['X-Forwarded-Proto', 'http']], /disagree/],
    [[['X-Forwarded-Proto', 'gopher']], /not http or https/],
    [[['X-Forwarded-For', hops]], /more than 32 hops/],
    [[['X-Forwarded-For', `203.0.113.1${' '.repeat(1100)}`]], /over 1024 bytes/],
  ];
  for (const [headers, message] of cases) {
    const r = await from(PROXY, '/api/v1/_test/write', headers, { method: 'POST', body: '{}' });
    assertErrorShape(assert, r, 400, 'bad_forwarding_header');
    assert.match(r.json.error.message, message, JSON.stringify(headers).slice(0, 200));
    assert.equal(psql(`SELECT count(*) FROM public.shim_test_writes WHERE request_id = '${r.rid}'`), '0',
      'nothing reached the database');
  }
  // the same headers from an untrusted peer write
  const ok = await from(STRANGER, '/api/v1/_test/write', cases[0][0], { method: 'POST', body: '{}' });
  assert.equal(ok.status, 201);
});

test('/metrics answers by the TCP peer, never a forwarded address', async () => {
  const r = await from(PROXY, '/metrics', [['X-Forwarded-For', '127.0.0.1']]);
  assert.equal(r.status, 403);
});

test('per_address_max does not count a trusted proxy (its connections carry many clients)', async () => {
  const s = await startShim({ env: { LATTICE_SHIM_TRUSTED_PROXIES: PROXY, LATTICE_SHIM_PER_ADDRESS_MAX: '1' } });
  try {
    const hold = (addr) => new Promise((resolve) => {
      // an open keep-alive connection holds its address's slot
      rawRequest(s, 'GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n', { localAddress: addr, timeout: 3000, untilClose: true,
        onSocket: (sock) => sock.once('data', () => resolve(sock)) }).catch(() => {});
    });
    const held = [await hold(PROXY), await hold(STRANGER)];
    const viaProxy = await rawRequest(s, 'GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', { localAddress: PROXY });
    assert.equal(viaProxy.status, 200);
    const direct = await rawRequest(s, 'GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', { localAddress: STRANGER });
    assertErrorShape(assert, direct, 429, 'too_many_connections');
    for (const sock of held) sock.destroy();
  } finally {
    await s.stop();
  }
});

test('event streams are capped per forwarded client, not per proxy', async () => {
  const s = await startShim({ env: { ...EVENTS_ENV, LATTICE_SHIM_TRUSTED_PROXIES: PROXY, LATTICE_SHIM_EVENTS_PER_ADDRESS_MAX: '1' } });
  const socks = [];
  try {
    const id = psql(`SELECT lattice.create_user('fwd-events-${randomUUID()}@example.com', 'correct horse battery staple', 'E')`);
    const key = psql(`SELECT lattice.create_api_key('${id}', 'events')`);
    await eventually(async () => (await metric(s, 'lattice_events_listener_connected')) === 1);
    // resolves with the status once the answer's headers arrived; a stream stays open
    const open = (xff) => new Promise((resolve, reject) => {
      const sock = net.connect({ port: s.port, host: '127.0.0.1', localAddress: PROXY });
      socks.push(sock);
      let head = '';
      sock.on('connect', () => sock.write(`GET /api/v1/events HTTP/1.1\r\nHost: x\r\nX-Lattice-API-Key: ${key}\r\n` +
        `X-Forwarded-For: ${xff}\r\n\r\n`));
      sock.on('data', (c) => {
        head += c.toString('latin1');
        if (head.includes('\r\n\r\n')) resolve(Number(head.split(' ')[1]));
      });
      sock.on('error', reject);
    });
    assert.equal(await open('203.0.113.10'), 200);
    assert.equal(await open('203.0.113.11'), 200, 'another client behind the same proxy');
    assert.equal(await open('203.0.113.10'), 429, 'the same client again');
  } finally {
    for (const sock of socks) sock.destroy();
    await s.stop();
  }
});

test('a malformed trusted_proxies entry stops the start with a message naming it', async () => {
  for (const [value, named, why] of [
    ['10.0.0.0/33', '10.0.0.0/33', /prefix length out of range/],
    ['127.0.0.1, not-an-ip', 'not-an-ip', /not an IPv4 or IPv6 address/],
    ['::1/129', '::1/129', /prefix length out of range/],
    ['10.0.0.0/8x', '10.0.0.0/8x', /not a number/],
    ['127.0.0.1,,10.0.0.1', '', /empty entry/],
  ]) {
    const port = await freePort();
    const proc = spawn(SHIM_BIN, [], { env: { ...process.env, LATTICE_SHIM_PORT: String(port), LATTICE_SHIM_TRUSTED_PROXIES: value },
      stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    proc.stderr.on('data', (c) => { stderr += c; });
    const code = await new Promise((resolve) => proc.on('exit', (c) => resolve(c)));
    assert.notEqual(code, 0, value);
    assert.ok(stderr.includes(`trusted_proxies: bad entry "${named}"`), stderr);
    assert.match(stderr, why);
  }
});
