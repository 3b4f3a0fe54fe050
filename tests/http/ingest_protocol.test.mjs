// The plugin protocol end to end through a real shim and
// PostgreSQL: every captured request replayed with a real key, the periodic
// re-send, 401s, the bad-input matrix (400 with paths, nothing written),
// two environments, tenants, entitlement, and the read API.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startShim } from './lib.mjs';
import { execFileSync } from 'node:child_process';
import { capturedRequests, CAPTURED_DIR } from '../fixtures/captured.mjs';
import { randomUUID } from 'node:crypto';

const sql = (q) => execFileSync('psql', ['-XAtq', '-v', 'ON_ERROR_STOP=1', '-c', q], { encoding: 'utf8' }).trim();
const PLACEHOLDER_KEY = 'ltc_0000000000000000000000000000000000000000000000000000000000000000';
let shim;
let base;


// Sends raw bytes with the given headers; answers {status, json, headers}.
async function send(method, path, { raw, headers = {} } = {}) {
  const res = await fetch(base + path, { method, headers, body: raw });
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = { unparsed: text }; }
  return { status: res.status, json, headers: res.headers };
}
const post = (path, key, body, extra = {}) => send('POST', path, {
  raw: typeof body === 'string' ? body : JSON.stringify(body),
  headers: { 'Content-Type': 'application/json', ...(key ? { 'X-Lattice-API-Key': key } : {}), ...extra } });
const get = (path, key) => send('GET', path, { headers: { 'X-Lattice-API-Key': key } });

function newAccount(tag) {
  const email = `ingest-${tag}-${randomUUID().slice(0, 8)}@example.com`;
  const id = sql(`SELECT lattice.create_user('${email}', 'correct horse battery staple', 'Ingest ${tag}')`);
  const key = sql(`SELECT lattice.create_api_key('${id}', 'plugin')`);  // ingest and read, as SQL makes them
  return { id, key, email };
}
// A dashboard session of the account: headers for unsafe methods (cookie + CSRF).
async function sessionOf(a) {
  const r = await post('/api/v1/auth/login', null, { email: a.email, password: 'correct horse battery staple' });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  const c = Object.fromEntries(r.headers.getSetCookie().map((x) => x.split(';')[0].split('=')));
  return { Cookie: `lattice_session=${c.lattice_session}; lattice_csrf=${c.lattice_csrf}`, 'X-CSRF-Token': c.lattice_csrf };
}
// Counts rows of a tenant table for one account (as superuser).
const count = (table, userId, where = 'true') =>
  Number(sql(`SELECT count(*) FROM lattice.${table} WHERE user_id = '${userId}' AND ${where}`));

const captured = capturedRequests;
// Replays one captured request with its own headers, the key replaced.
function replay(req, key) {
  const headers = {};
  for (const [name, value] of req.raw_headers) {
    const n = name.toLowerCase();
    if (['host', 'connection', 'content-length', 'accept-encoding'].includes(n)) continue;
    headers[name] = n === 'x-lattice-api-key' ? key : value;
  }
  return send(req.method, req.path, { raw: req.body_raw || undefined, headers });
}

before(async () => {
  shim = await startShim();
  base = shim.url;
});
after(async () => { await shim?.stop(); });

test('every captured request, replayed with a real key, gets the answer the plugin expects', async () => {
  const a = newAccount('replay');
  const answers = [];
  for (const req of captured()) answers.push([req, await replay(req, a.key)]);

  let serviceId;
  for (const [req, res] of answers) {
    if (req.path === '/api/v1/health') { assert.equal(res.status, 200); continue; }
    if (req.path === '/api/v1/ingest/metadata') {
      assert.equal(res.status, 200, JSON.stringify(res.json));
      assert.equal(res.json.success, true);
      assert.equal(res.json.routesProcessed, req.replied_body.routesProcessed);
      assert.equal(res.json.dependenciesProcessed, req.replied_body.dependenciesProcessed);
      assert.match(res.json.serviceId, /^[0-9a-f-]{36}$/);
      serviceId ??= res.json.serviceId;
      assert.equal(res.json.serviceId, serviceId, 'every snapshot of the service answers its one id');
    } else {
      assert.equal(res.status, 201, JSON.stringify(res.json));
      assert.equal(res.json.success, true);
      assert.equal(res.json.processed, req.replied_body.processed);
      assert.equal(res.json.failed, 0);
      assert.equal(res.json.results.length, res.json.processed, 'one result per item');
    }
  }
  // the periodic re-sends (005-007) changed nothing but last_seen
  assert.deepEqual(answers.filter(([q]) => q.seq >= 5).map(([, r]) => r.json.unchanged), [true, true, true]);

  assert.equal(count('services', a.id, 'NOT is_external'), 1);
  assert.equal(count('services', a.id, "is_external AND name = 'checkout-web'"), 1, 'the caller is an external node');
  assert.equal(count('routes', a.id, 'removed_at IS NULL'), 7);
  assert.equal(count('dependencies', a.id, 'removed_at IS NULL'), 4);
  assert.equal(count('service_changes', a.id), 1, 'only the registration is history');
  assert.equal(sql(`SELECT call_count || '/' || error_count || '/' || client_error_count FROM lattice.connections WHERE user_id = '${a.id}'`),
    '8/1/1', 'the traces made the edge checkout-web -> capture-demo');
  assert.equal(Number(sql(`SELECT sum(request_count) FROM lattice.route_stats WHERE user_id = '${a.id}'`)), 8);
  assert.equal(count('error_groups', a.id), 1);
  assert.equal(sql(`SELECT occurrence_count FROM lattice.error_groups WHERE user_id = '${a.id}'`), '1');
});

test('the placeholder key of the captures, a missing key and an empty key are 401 and write nothing', async () => {
  const before = Number(sql('SELECT count(*) FROM lattice.services'));
  for (const req of captured(`${CAPTURED_DIR}/forced-status-401`)) {
    if (req.method !== 'POST') continue;
    const res = await replay(req, PLACEHOLDER_KEY);
    assert.equal(res.status, 401, `${req.path} with an unknown key`);
    assert.ok(res.json.error.code);
  }
  const body = JSON.parse(captured()[0].body_raw);
  assert.equal((await post('/api/v1/ingest/metadata', null, body)).status, 401, 'no key');
  assert.equal((await post('/api/v1/errors/batch', '', { errors: [] })).status, 401, 'empty key (the plugin sends one)');
  assert.equal(Number(sql('SELECT count(*) FROM lattice.services')), before);
});

test('the bad-input matrix: each a 400 (413, 415) naming the problem, and nothing written', async () => {
  const a = newAccount('matrix');
  const good = JSON.parse(captured()[0].body_raw);
  const mutate = (f) => { const b = structuredClone(good); f(b); return JSON.stringify(b); };
  const cases = [
    ['empty body', '', 400, 'body'],
    ['not JSON', '{"service": ', 400, 'body'],
    ['trailing bytes', JSON.stringify(good) + 'x', 400, 'body'],
    ['deep nesting', mutate((b) => { b.service.metadata = {}; let o = b.service.metadata; for (let i = 0; i < 40; i++) { o.x = {}; o = o.x; } }), 400, 'body'],
    ['huge number', JSON.stringify(good).replace('"middlewareChain"', '"avgResponseTimeMs":1e400,"middlewareChain"'), 400, 'routes[0].avgResponseTimeMs'],
    ['huge integer', mutate((b) => { b.routes[1].handlerLocation = { line: 1e30 }; }), 400, 'routes[1].handlerLocation.line'],
    ['bad method', mutate((b) => { b.routes[3].method = 'FETCH'; }), 400, 'routes[3].method'],
    ['path without /', mutate((b) => { b.routes[0].path = 'users'; }), 400, 'routes[0].path'],
    ['bad name', mutate((b) => { b.service.name = 'Capture Demo'; }), 400, 'service.name'],
    ['missing field', mutate((b) => { delete b.service.framework; }), 400, 'service.framework'],
    ['wrong type', mutate((b) => { b.dependencies = 'express'; }), 400, 'dependencies'],
    ['too many routes', mutate((b) => { b.routes = Array.from({ length: 2001 }, (_, i) => ({ id: 'r', serviceId: 's', method: 'GET', path: `/p${i}` })); }), 400, 'routes'],
    ['long string', mutate((b) => { b.service.description = 'x'.repeat(9000); }), 400, 'service.description'],
    ['escaped NUL', mutate((b) => { b.service.description = '\u0000'; }), 400, 'body'],
  ];
  for (const [name, raw, status, path] of cases) {
    const res = await post('/api/v1/ingest/metadata', a.key, raw);
    assert.equal(res.status, status, `${name}: ${JSON.stringify(res.json)}`);
    assert.ok(res.json.error.details.some((d) => d.path === path), `${name} names ${path}: ${JSON.stringify(res.json.error.details)}`);
  }
  // several problems at once are all listed
  const many = await post('/api/v1/ingest/metadata', a.key, mutate((b) => { b.routes[0].method = 'X'; b.service.status = 'up'; }));
  assert.deepEqual(many.json.error.details.map((d) => d.path).sort(), ['routes[0].method', 'service.status']);
  // invalid UTF-8 bytes and a wrong content type
  const bad = Buffer.concat([Buffer.from('{"service": {"name": "'), Buffer.from([0xc3, 0x28]), Buffer.from('"}}')]);
  assert.equal((await send('POST', '/api/v1/ingest/metadata', { raw: bad, headers: { 'Content-Type': 'application/json', 'X-Lattice-API-Key': a.key } })).status, 400);
  assert.equal((await post('/api/v1/ingest/metadata', a.key, JSON.stringify(good), { 'Content-Type': 'text/plain' })).status, 415);
  // batches
  assert.equal((await post('/api/v1/performance/traces/batch', a.key, { traces: [] })).status, 400);
  const t = await post('/api/v1/performance/traces/batch', a.key, { traces: [{ service_id: 'x', duration_ms: 'slow' }] });
  assert.deepEqual(t.json.error.details.map((d) => d.path), ['traces[0].duration_ms']);

  for (const table of ['services', 'routes', 'dependencies', 'route_stats', 'connections', 'service_changes'])
    assert.equal(count(table, a.id), 0, `nothing written to ${table}`);
});

test('two environments are two services; another tenant\'s same name is never touched', async () => {
  const a = newAccount('envs');
  const b = newAccount('other');
  const dev = JSON.parse(captured()[0].body_raw);
  const prod = structuredClone(dev); prod.service.environment = 'production';
  const r1 = await post('/api/v1/ingest/metadata', a.key, dev);
  const r2 = await post('/api/v1/ingest/metadata', a.key, prod);
  assert.notEqual(r1.json.serviceId, r2.json.serviceId);
  const rb = await post('/api/v1/ingest/metadata', b.key, dev);
  assert.equal(rb.status, 200);
  assert.notEqual(rb.json.serviceId, r1.json.serviceId);

  const listA = await get('/api/v1/services', a.key);
  assert.deepEqual(listA.json.services.map((s) => s.environment), ['development', 'production']);
  assert.equal((await get(`/api/v1/services/${r1.json.serviceId}`, b.key)).status, 404, 'B cannot read A\'s service');
  assert.equal((await get(`/api/v1/services/${r1.json.serviceId}/changes`, b.key)).status, 404);
  // B's traces name the same service: they land on B's service only
  await post('/api/v1/performance/traces/batch', b.key, { traces: [{ service_id: 'capture-demo', duration_ms: 5, status_code: 200, method: 'GET', path: '/users', caller_service: 'b-caller' }] });
  assert.equal(count('route_stats', a.id), 0);
  assert.equal(count('connections', a.id), 0);
  assert.equal(count('connections', b.id), 1);
});

test('an account without trial or subscription is refused with 402 subscription_required', async () => {
  const c = newAccount('expired');
  sql(`UPDATE lattice.users SET trial_ends_at = now() - interval '1 day' WHERE id = '${c.id}'`);
  const res = await post('/api/v1/ingest/metadata', c.key, JSON.parse(captured()[0].body_raw));
  assert.equal(res.status, 402);
  assert.equal(res.json.error.code, 'subscription_required');
  assert.equal(count('services', c.id), 0);
});

test('read API: services, one service with route traffic, changes, errors, resolve and re-open, metrics', async () => {
  const a = newAccount('read');
  const reqs = captured();
  for (const req of reqs.filter((r) => r.seq <= 4)) await replay(req, a.key);
  const meta = JSON.parse(reqs[0].body_raw);

  const list = await get('/api/v1/services?environment=development&status=active', a.key);
  assert.equal(list.status, 200);
  assert.equal(list.json.total, 1);
  assert.equal(list.json.services[0].routeCount, 7);
  assert.equal(list.json.services[0].dependencyCount, 4);
  assert.equal(list.json.services[0].status, 'active');
  const id = list.json.services[0].id;
  assert.equal((await get('/api/v1/services?status=inactive', a.key)).json.total, 0);
  assert.equal((await get('/api/v1/services?include_external=true', a.key)).json.total, 2);
  assert.equal((await get('/api/v1/services?search=capt', a.key)).json.total, 1);

  const one = await get(`/api/v1/services/${id}`, a.key);
  assert.equal(one.status, 200);
  const byRoute = Object.fromEntries(one.json.routes.map((r) => [`${r.method} ${r.path}`, r]));
  assert.equal(byRoute['GET /users/:id'].stats.requestCount, 2);
  assert.equal(byRoute['GET /users/:id'].stats.clientErrorCount, 1);
  assert.equal(byRoute['GET /boom'].stats.errorCount, 1);
  assert.deepEqual(byRoute['GET /users'].middlewareChain, ['anonymous']);
  assert.equal(one.json.connections.incoming[0].name, 'checkout-web');
  assert.equal(one.json.connections.incoming[0].requestCount, 8);
  assert.equal(one.json.dependencies.length, 4);

  // a deploy: one route less, express upgraded -> history
  const v2 = structuredClone(meta);
  v2.routes = v2.routes.filter((r) => r.path !== '/boom');
  v2.dependencies.find((d) => d.packageName === 'express').version = '4.22.0';
  await post('/api/v1/ingest/metadata', a.key, v2);
  const changes = await get(`/api/v1/services/${id}/changes`, a.key);
  assert.deepEqual(changes.json.changes.map((c) => c.kind).sort(),
    ['dependency_version_changed', 'route_removed', 'service_registered']);
  const upgrade = changes.json.changes.find((c) => c.kind === 'dependency_version_changed');
  assert.deepEqual([upgrade.subject, upgrade.oldValue, upgrade.newValue], ['express', '4.21.2', '4.22.0']);

  // errors: list, detail, resolve, recur -> re-opened
  const errs = await get(`/api/v1/errors?service_id=${id}`, a.key);
  assert.equal(errs.json.total, 1);
  const gid = errs.json.errors[0].id;
  assert.equal(errs.json.errors[0].errorType, 'TypeError');
  const detail = await get(`/api/v1/errors/${gid}`, a.key);
  assert.equal(detail.json.occurrenceCount, 1);
  assert.ok(Array.isArray(detail.json.sampleStack));
  // triage is the dashboard's: a key (even with both scopes) may not change an error's status
  const byKey = await send('PATCH', `/api/v1/errors/${gid}`, { raw: JSON.stringify({ status: 'resolved' }),
    headers: { 'Content-Type': 'application/json', 'X-Lattice-API-Key': a.key } });
  assert.equal(byKey.status, 403, JSON.stringify(byKey.json));
  assert.equal(byKey.json.error.code, 'insufficient_scope');
  assert.deepEqual(byKey.json.error.details, { required_scope: 'session' });
  assert.equal((await get(`/api/v1/errors/${gid}`, a.key)).json.status, 'open', 'the refused PATCH changed nothing');
  const session = await sessionOf(a);
  const resolved = await send('PATCH', `/api/v1/errors/${gid}`, { raw: JSON.stringify({ status: 'resolved' }),
    headers: { 'Content-Type': 'application/json', ...session } });
  assert.equal(resolved.status, 200, JSON.stringify(resolved.json));
  assert.equal(resolved.json.status, 'resolved');
  const bad = await send('PATCH', `/api/v1/errors/${gid}`, { raw: JSON.stringify({ status: 'gone' }),
    headers: { 'Content-Type': 'application/json', ...session } });
  assert.equal(bad.status, 400);
  const again = await replay(reqs.find((r) => r.path === '/api/v1/errors/batch'), a.key);
  assert.equal(again.json.results[0].reopened, true);
  assert.equal((await get(`/api/v1/errors/${gid}`, a.key)).json.status, 'open');
  assert.equal((await get('/api/v1/errors?status=resolved', a.key)).json.total, 0);

  const m = await get(`/api/v1/performance/metrics?service_id=${id}&interval=1h`, a.key);
  assert.equal(m.status, 200, JSON.stringify(m.json));
  assert.equal(m.json.totals.requestCount, 8);
  assert.equal(m.json.totals.errorCount, 1);
  assert.equal(m.json.intervalSeconds, 3600);
  assert.ok(m.json.slowestRoutes.length > 0);
  assert.ok(m.json.buckets.every((bk) => 'p95Ms' in bk && 'requestCount' in bk));
  assert.equal((await get('/api/v1/performance/metrics?interval=7m', a.key)).status, 400);
  assert.equal((await get('/api/v1/services/not-a-uuid', a.key)).status, 404);
});

test('browser SDK: a single error and the breadcrumbs of its session', async () => {
  const a = newAccount('browser');
  const meta = JSON.parse(captured()[0].body_raw);
  meta.service.framework = 'nextjs';
  await post('/api/v1/ingest/metadata', a.key, meta);
  const e = await post('/api/v1/errors', a.key, { service_id: 'capture-demo', environment: 'development', error_type: 'Error',
    message: 'boom in the browser', session_id: 'lq1-x', stack_trace: [{ filename: 'page.js', line_number: 3, function_name: 'f' }],
    context: { type: 'unhandled_error' } });
  assert.equal(e.status, 201, JSON.stringify(e.json));
  assert.equal(e.json.success, true);
  assert.equal(e.json.is_new, true);
  const b = await post('/api/v1/breadcrumbs', a.key, { breadcrumbs: [
    { session_id: 'lq1-x', category: 'navigation', message: 'to /checkout', level: 'info', timestamp: new Date(Date.now() - 1000).toISOString() }] });
  assert.equal(b.status, 201);
  assert.deepEqual(b.json, { success: true, stored: 1 });
  const d = await get(`/api/v1/errors/${e.json.id}`, a.key);
  assert.deepEqual(d.json.breadcrumbs.map((x) => x.message), ['to /checkout']);
  const legacy = await post('/api/v1/metrics', a.key, { serviceName: 'capture-demo',
    metrics: [{ method: 'GET', path: '/users/5', statusCode: 200, responseTime: 4, timestamp: new Date().toISOString() }] });
  assert.equal(legacy.status, 201);
  assert.equal(legacy.json.results[0].route, 'GET /users/:id');
});
