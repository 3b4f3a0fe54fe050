// The RateLimit headers the shim writes from lattice_http.rate_state(): one
// set per answer that counted, none when nothing counted, and a function's
// own RateLimit-* headers win over them.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { startShim, rawRequest, request, psql } from './lib.mjs';
import { capturedBody } from '../fixtures/captured.mjs';
import { createTestFunctions, dropTestFunctions } from './shim_fixtures.mjs';

const FIXED = '/api/v1/_test/echo/1/items/fixed';
let shim, key, email;

before(async () => {
  createTestFunctions();
  // the fixed test route counts an address (class health) and, with ?own=1,
  // writes RateLimit headers of its own
  psql(`CREATE OR REPLACE FUNCTION lattice_http._test_fixed(req jsonb, body text)
        RETURNS lattice.http_response LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            PERFORM lattice.rate_enforce_address(req, 'health');
            RETURN ROW(200, CASE WHEN req->'query' ? 'own' THEN '{"RateLimit-Limit": "7", "RateLimit-Remaining": "6"}'
                                 ELSE '{}' END::jsonb, '{"fixed": true}')::lattice.http_response;
        END $$`);
  email = `rate-headers-${randomUUID()}@example.com`;
  const id = psql(`SELECT lattice.create_user('${email}', 'correct horse battery staple', 'R')`);
  key = psql(`SELECT lattice.create_api_key('${id}', 'rate headers')`);
  shim = await startShim();
});
after(async () => {
  await shim?.stop();
  dropTestFunctions();
});

const get = (path, headers = '') => rawRequest(shim, `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n${headers}\r\n`,
  { localAddress: '127.0.0.6' });
// every header line of an answer, names lower-cased, repeats kept
const lines = (r) => r.raw.slice(0, r.raw.indexOf('\r\n\r\n')).split('\r\n').slice(1)
  .map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]);
const RATE = ['ratelimit-limit', 'ratelimit-remaining', 'ratelimit-reset', 'ratelimit-policy', 'ratelimit-class',
  'x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset'];

test('an answer that counted carries each rate header once, consistent with each other', async () => {
  const r = await get('/api/v1/auth/me', `X-Lattice-API-Key: ${key}\r\n`);
  assert.equal(r.status, 200, r.body);
  const h = lines(r);
  for (const name of RATE)
    assert.equal(h.filter(([n]) => n === name).length, 1, `${name} once`);
  const v = Object.fromEntries(h);
  assert.equal(v['ratelimit-class'], 'api');
  assert.match(v['ratelimit-limit'], /^[1-9]\d*$/);
  assert.equal(v['ratelimit-policy'].split(';w=')[0], v['ratelimit-limit']);
  assert.match(v['ratelimit-policy'], /^\d+;w=[1-9]\d*$/);
  assert.ok(Number(v['ratelimit-remaining']) < Number(v['ratelimit-limit']));
  assert.equal(v['x-ratelimit-limit'], v['ratelimit-limit']);
  assert.equal(v['x-ratelimit-remaining'], v['ratelimit-remaining']);
  const reset = Number(v['x-ratelimit-reset']);
  assert.ok(Math.abs(reset - (Math.floor(Date.now() / 1000) + Number(v['ratelimit-reset']))) <= 2,
    `X-RateLimit-Reset ${reset} is now + RateLimit-Reset`);
  assert.equal(v['retry-after'], undefined);
});

test('an address count is class address', async () => {
  const r = await get(FIXED);
  assert.equal(r.status, 200, r.body);
  const v = Object.fromEntries(lines(r));
  assert.equal(v['ratelimit-class'], 'address');
  assert.equal(v['ratelimit-limit'], psql('SHOW lattice.rate_health_per_hour'));
});

test("a function's own RateLimit headers win: none are added or repeated", async () => {
  const r = await get(`${FIXED}?own=1`);
  assert.equal(r.status, 200, r.body);
  const h = lines(r);
  assert.deepEqual(h.filter(([n]) => n.includes('ratelimit')), [['ratelimit-limit', '7'], ['ratelimit-remaining', '6']]);
});

test('an answer that counted nothing has no rate headers', async () => {
  const r = await get('/api/v1/_test/echo/1/items/2');
  assert.equal(r.status, 200);
  assert.deepEqual(lines(r).filter(([n]) => n.includes('ratelimit')), []);
});

test('a session counts in the dashboard class, an ingest request in the ingest class, each with its own limit', async () => {
  const login = await request(shim, '/api/v1/auth/login', { method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email, password: 'correct horse battery staple' }) });
  assert.equal(login.status, 200, login.text);
  const cookie = login.headers.getSetCookie().map((c) => c.split(';')[0]).join('; ');
  const dash = await get('/api/v1/auth/me', `Cookie: ${cookie}\r\n`);
  assert.equal(dash.status, 200, dash.body);
  const d = Object.fromEntries(lines(dash));
  assert.equal(d['ratelimit-class'], 'dashboard');
  assert.equal(d['ratelimit-policy'], '7200;w=3600', 'the plan\'s dashboard_per_hour');
  assert.ok(Number(d['ratelimit-remaining']) < 600, 'within the dashboard burst (600)');

  const meta = JSON.parse(capturedBody('ingest_metadata'));
  meta.service.name = 'rate-headers-svc';
  const ing = await request(shim, '/api/v1/ingest/metadata', { method: 'POST', body: JSON.stringify(meta),
    headers: { 'Content-Type': 'application/json', 'X-Lattice-API-Key': key } });
  assert.equal(ing.status, 200, ing.text);
  assert.equal(ing.headers.get('ratelimit-class'), 'ingest');
  assert.equal(ing.headers.get('ratelimit-policy'), '3600;w=3600', 'the plan\'s ingest_per_service_per_hour');
  assert.equal(ing.headers.get('ratelimit-remaining'), '119', 'the first of the service\'s burst of 120');
  // the api class was not spent by either
  const api = Object.fromEntries(lines(await get('/api/v1/auth/me', `X-Lattice-API-Key: ${key}\r\n`)));
  assert.equal(api['ratelimit-class'], 'api');
});

test('an unauthenticated route that counts nothing answers without rate headers', async () => {
  const r = await rawRequest(shim, 'GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  assert.equal(r.status, 200);
  assert.deepEqual(lines(r).filter(([n]) => n.includes('ratelimit')), []);
});
