// The shim's route table and request/answer mapping (docs/http-contract.md).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startShim, request, rawRequest, assertErrorShape } from './lib.mjs';
import { createTestFunctions, dropTestFunctions } from './shim_fixtures.mjs';

let shim;
before(async () => {
  createTestFunctions();
  shim = await startShim({ env: { LATTICE_SHIM_CORS_ORIGINS: 'https://app.example' } });
});
after(async () => {
  await shim?.stop();
  dropTestFunctions();
});

test('GET /api/v1/health answers the plugins\' shape without the database', async () => {
  const r = await request(shim, '/api/v1/health');
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /^application\/json/);
  assert.equal(r.json.status, 'ok');
  assert.equal(r.json.schemaVersion, '1.0.0');
  assert.equal(typeof r.json.version, 'string');
  assert.ok(!Number.isNaN(Date.parse(r.json.timestamp)));
});

test('GET /ready checks the database', async () => {
  const r = await request(shim, '/ready');
  assert.equal(r.status, 200);
  assert.equal(r.json.status, 'ready');
  assert.equal(r.json.database, 'ok');
});

test('unknown API path: JSON 404', async () => {
  const r = await request(shim, '/api/v1/no/such/thing');
  assertErrorShape(assert, r, 404, 'not_found');
});

test('known path, wrong method: 405 with Allow', async () => {
  const r = await request(shim, '/ready', { method: 'DELETE' });
  assertErrorShape(assert, r, 405, 'method_not_allowed');
  assert.equal(r.headers.get('allow'), 'GET, HEAD');
  const r2 = await request(shim, '/api/v1/_test/echo', { method: 'DELETE' });
  assert.equal(r2.status, 405);
  assert.deepEqual(r2.headers.get('allow').split(', ').sort(), ['POST', 'PUT']);
});

test('path parameters, query parameters and the route pattern reach the function', async () => {
  const r = await request(shim, '/api/v1/_test/echo/abc-1/items/x%20y?depth=2&depth=3&q=caf%C3%A9');
  assert.equal(r.status, 200);
  const req = r.json.req;
  assert.equal(req.method, 'GET');
  assert.equal(req.route, '/api/v1/_test/echo/{id}/items/{item}');
  assert.equal(req.path, '/api/v1/_test/echo/abc-1/items/x y');
  assert.deepEqual(req.params, { id: 'abc-1', item: 'x y' });
  assert.deepEqual(req.query, { depth: '3', q: 'café' });
  assert.equal(req.client_addr, '127.0.0.1');
  assert.equal(req.tls, false);
  assert.equal(r.json.body, null);
});

test('a literal segment beats a parameter', async () => {
  const r = await request(shim, '/api/v1/_test/echo/abc/items/fixed');
  assert.equal(r.status, 200);
  assert.equal(r.json.fixed, true);
  assert.deepEqual(r.json.params, { id: 'abc' });
});

test('credentials are passed, header names case-insensitively', async () => {
  const r = await rawRequest(shim,
    'GET /api/v1/_test/echo/1/items/2 HTTP/1.1\r\nHost: x\r\nx-lattice-api-key: ltc_abc\r\n' +
    'AUTHORIZATION: bearer tok.en.x\r\nCookie: other=1; lattice_session=sess123; lattice_csrf=c1\r\n' +
    'x-csrf-token: c1\r\nUser-Agent: node-test\r\nX-TEST-ONE: one\r\nConnection: close\r\n\r\n');
  assert.equal(r.status, 200);
  const req = r.json.req;
  assert.equal(req.api_key, 'ltc_abc');
  assert.equal(req.bearer, 'tok.en.x');
  assert.equal(req.session, 'sess123');
  assert.equal(req.csrf_cookie, 'c1');
  assert.equal(req.csrf_header, 'c1');
  assert.equal(req.user_agent, 'node-test');
  // only the headers the route asks for, lower-case names
  assert.deepEqual(req.headers, { 'x-test-one': 'one' });
});

test('absent credentials are absent keys', async () => {
  const r = await request(shim, '/api/v1/_test/echo/1/items/2');
  for (const k of ['api_key', 'bearer', 'session', 'csrf_cookie', 'csrf_header'])
    assert.equal(k in r.json.req, false, k);
});

test('the function\'s status, headers (several Set-Cookie) and body are written as they are', async () => {
  const r = await rawRequest(shim, 'GET /api/v1/_test/echo/1/items/2?status=202 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  assert.equal(r.status, 202);
  assert.equal(r.headers['x-test'], 'yes');
  assert.equal(r.headers['set-cookie'], 'a=1; Path=/, b=2; Path=/');
  assert.match(r.raw, /\r\nSet-Cookie: a=1; Path=\/\r\nSet-Cookie: b=2; Path=\/\r\n/);
  // a header value with CR/LF is dropped, never injected
  assert.equal(r.headers['x-bad'], undefined);
  assert.equal(r.headers['injected'], undefined);
});

test('the body is passed raw to the function', async () => {
  const body = '{"a": [1, 2], "s": "é"}';
  const r = await request(shim, '/api/v1/_test/echo', {
    method: 'POST', headers: { 'Content-Type': 'application/json; charset=utf-8' }, body });
  assert.equal(r.status, 200);
  assert.equal(r.json.body, body);
  assert.equal(r.json.req.content_type, 'application/json; charset=utf-8');
});

test('HEAD runs the GET line and sends no body', async () => {
  const r = await rawRequest(shim, 'HEAD /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  assert.equal(r.status, 200);
  assert.ok(Number(r.headers['content-length']) > 0);
  assert.equal(r.body, '');
});

test('request id: a sane one is echoed and passed, others are replaced', async () => {
  const r = await request(shim, '/api/v1/_test/echo/1/items/2', { headers: { 'X-Request-Id': 'abc.DEF_123-x' } });
  assert.equal(r.headers.get('x-request-id'), 'abc.DEF_123-x');
  assert.equal(r.json.req.request_id, 'abc.DEF_123-x');
  const bad = await request(shim, '/api/v1/_test/echo/1/items/2', { headers: { 'X-Request-Id': 'has space<script>' } });
  const id = bad.headers.get('x-request-id');
  assert.match(id, /^[0-9a-f]{32}$/);
  assert.equal(bad.json.req.request_id, id);
  const long = await request(shim, '/api/v1/health', { headers: { 'X-Request-Id': 'a'.repeat(65) } });
  assert.match(long.headers.get('x-request-id'), /^[0-9a-f]{32}$/);
});

test('security headers on API answers', async () => {
  const r = await request(shim, '/ready');
  assert.equal(r.headers.get('x-content-type-options'), 'nosniff');
  assert.equal(r.headers.get('referrer-policy'), 'no-referrer');
  assert.match(r.headers.get('content-security-policy'), /frame-ancestors 'none'/);
  assert.equal(r.headers.get('cache-control'), 'no-store');
  assert.equal(r.headers.get('strict-transport-security'), null); // plain HTTP
});

test('CORS: none by default, the allow-list for the SDK\'s routes', async () => {
  const plain = await request(shim, '/ready', { headers: { Origin: 'https://app.example' } });
  assert.equal(plain.headers.get('access-control-allow-origin'), null);

  const pre = await request(shim, '/api/v1/_test/echo', {
    method: 'OPTIONS',
    headers: { Origin: 'https://app.example', 'Access-Control-Request-Method': 'POST' } });
  assert.equal(pre.status, 204);
  assert.equal(pre.headers.get('access-control-allow-origin'), 'https://app.example');
  assert.match(pre.headers.get('access-control-allow-headers'), /X-Lattice-API-Key/);

  const denied = await request(shim, '/api/v1/_test/echo', {
    method: 'OPTIONS', headers: { Origin: 'https://evil.example', 'Access-Control-Request-Method': 'POST' } });
  assertErrorShape(assert, denied, 403, 'cors_forbidden');
  assert.equal(denied.headers.get('access-control-allow-origin'), null);

  const post = await request(shim, '/api/v1/_test/echo', {
    method: 'POST', headers: { Origin: 'https://app.example', 'Content-Type': 'application/json' }, body: '{}' });
  assert.equal(post.headers.get('access-control-allow-origin'), 'https://app.example');
  const evil = await request(shim, '/api/v1/_test/echo', {
    method: 'POST', headers: { Origin: 'https://evil.example', 'Content-Type': 'application/json' }, body: '{}' });
  assert.equal(evil.headers.get('access-control-allow-origin'), null);
});

test('keep-alive: several requests on one connection', async () => {
  const req = 'GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n';
  const r = await rawRequest(shim, req + req + 'GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', {
    timeout: 3000, untilClose: true });
  assert.equal((r.raw.match(/HTTP\/1\.1 200 OK/g) ?? []).length, 3, r.raw);
});
