// The read API as the dashboard uses it: an account signed up
// through the shim, its plugin's captured requests replayed with a key made
// from the session, then GET /api/v1/performance/metrics exactly as
// web/src/dashboard/performance.js asks for it (session cookie, service_id,
// from/to from toISOString(), interval 5m/1h/6h).  A 500 was reported from
// there once; the dashboard's own queries never did here, and these pin
// their answers.  An interval in months did answer 500 (date_bin refuses
// it); it, infinite and odd-zoned times now answer 400 invalid_query.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { capturedRequests } from '../fixtures/captured.mjs';
import { randomUUID } from 'node:crypto';
import { startShim, psql, assertErrorShape } from './lib.mjs';
import { send } from './owasp_lib.mjs';

const FROM = '127.0.71.1'; // an address of this file's own: sign-up quotas are per address
const DASHBOARD_RANGES = [[3600, '5m', 300], [86400, '1h', 3600], [604800, '6h', 21600]];
let shim;
let account;

const captured = () => capturedRequests();

// A captured request with its own headers, our key, and (for traces) the
// start times moved so the newest is `shiftTo`, keeping their spacing:
// the dashboard's windows end now.
function replay(req, key, shiftTo) {
  const headers = {};
  for (const [name, value] of req.raw_headers) {
    const n = name.toLowerCase();
    if (['host', 'connection', 'content-length', 'accept-encoding'].includes(n)) continue;
    headers[name] = n === 'x-lattice-api-key' ? key : value;
  }
  let body = req.body_raw || undefined;
  if (shiftTo && req.path === '/api/v1/performance/traces/batch') {
    const doc = JSON.parse(body);
    const newest = Math.max(...doc.traces.map((t) => Date.parse(t.start_time)));
    for (const t of doc.traces) t.start_time = new Date(shiftTo - (newest - Date.parse(t.start_time))).toISOString();
    body = JSON.stringify(doc);
  }
  return send(shim, req.method, req.path, { body, headers, from: FROM });
}

async function signup(tag) {
  const email = `read-${tag}-${randomUUID().slice(0, 8)}@example.com`;
  const r = await send(shim, 'POST', '/api/v1/auth/signup', { from: FROM, headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email, password: 'a fine long password', name: `Read ${tag}` }) });
  assert.equal(r.status, 201, r.text);
  const cookies = Object.fromEntries([].concat(r.headers['set-cookie']).map((c) => c.split(';')[0].split('=')));
  const a = { id: r.json.user.id, cookie: `lattice_session=${cookies.lattice_session}; lattice_csrf=${cookies.lattice_csrf}`,
              csrf: cookies.lattice_csrf };
  const k = await send(shim, 'POST', '/api/v1/keys', { from: FROM, body: JSON.stringify({ name: 'plugin' }),
    headers: { 'Content-Type': 'application/json', Cookie: a.cookie, 'X-CSRF-Token': a.csrf } });
  assert.equal(k.status, 201, k.text);
  a.key = k.json.key;
  return a;
}

// What the dashboard's get() sends: same-origin cookies, Accept JSON.
const dashboardGet = (a, path) => send(shim, 'GET', `/api/v1${path}`, { from: FROM,
  headers: { Accept: 'application/json', ...(a ? { Cookie: a.cookie } : {}) } });

function metricsPath(serviceId, secs, interval, now = new Date()) {
  const from = new Date(now.getTime() - secs * 1000);
  return `/performance/metrics?service_id=${encodeURIComponent(serviceId)}&from=${from.toISOString()}&to=${now.toISOString()}&interval=${interval}`;
}

before(async () => {
  shim = await startShim();
  account = await signup('a');
  const now = Date.now() - 60_000;
  for (const req of captured()) {
    const r = await replay(req, account.key, now);
    assert.ok(r.status < 300, `${req.method} ${req.path}: ${r.status} ${r.text}`);
  }
  account.traces = JSON.parse(captured().find((r) => r.path === '/api/v1/performance/traces/batch').body_raw).traces;
  const list = await dashboardGet(account, '/services');
  assert.equal(list.status, 200, list.text);
  account.service = list.json.services.find((s) => s.name === 'capture-demo');
  assert.ok(account.service, 'the replayed service is listed');
});
after(async () => { await shim?.stop(); });

test('performance metrics: the dashboard\'s three ranges answer 200 with the replayed traffic', async () => {
  const served = account.traces.length;
  const serverErrors = account.traces.filter((t) => t.status_code >= 500).length;
  const clientErrors = account.traces.filter((t) => t.status_code >= 400 && t.status_code < 500).length;
  for (const [secs, interval, step] of DASHBOARD_RANGES) {
    const r = await dashboardGet(account, metricsPath(account.service.id, secs, interval));
    assert.equal(r.status, 200, `${interval}: ${r.text}`);
    assert.match(r.headers['content-type'], /^application\/json/);
    const m = r.json;
    assert.equal(m.serviceId, account.service.id);
    assert.equal(m.intervalSeconds, step, interval);
    assert.equal(Date.parse(m.to) - Date.parse(m.from), secs * 1000, 'from/to as sent, milliseconds kept');
    assert.ok(m.buckets.length >= 1 && m.buckets.length <= 2, `${interval}: ${m.buckets.length} buckets`);
    for (const b of m.buckets) {
      assert.equal(Date.parse(b.start) % (step * 1000), 0, 'bucket starts on the interval');
      assert.ok(Date.parse(b.start) < Date.parse(m.to));
    }
    const sum = (k) => m.buckets.reduce((n, b) => n + Number(b[k]), 0);
    assert.equal(sum('requestCount'), served, `${interval}: every replayed trace counted`);
    assert.equal(sum('errorCount'), serverErrors);
    assert.equal(sum('clientErrorCount'), clientErrors);
    assert.equal(Number(m.totals.requestCount), served);
    assert.equal(Number(m.totals.errorCount), serverErrors);
    assert.ok(Number(m.totals.p50Ms) <= Number(m.totals.p95Ms) && Number(m.totals.p95Ms) <= Number(m.totals.p99Ms));
    assert.ok(m.slowestRoutes.length > 0 && m.slowestRoutes.length <= 10);
    assert.ok(m.slowestRoutes.every((x) => x.serviceId === account.service.id && typeof x.method === 'string'));
    assert.ok(m.slowestRoutes.some((x) => x.method === 'GET' && x.path === '/users'), 'matched to the route template');
  }
});

test('performance metrics: a window without traffic answers 200 with no buckets', async () => {
  const r = await dashboardGet(account, metricsPath(account.service.id, 3600, '5m', new Date(Date.now() - 3 * 86400_000)));
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json.buckets, []);
  assert.equal(Number(r.json.totals.requestCount), 0);
  assert.deepEqual(r.json.slowestRoutes, []);
});

test('performance metrics: a new account with no service, every range', async () => {
  const fresh = await signup('empty');
  for (const [secs, interval] of DASHBOARD_RANGES) {
    const to = new Date();
    const r = await dashboardGet(fresh, `/performance/metrics?from=${new Date(to - secs * 1000).toISOString()}&to=${to.toISOString()}&interval=${interval}`);
    assert.equal(r.status, 200, `${interval}: ${r.text}`);
    assert.deepEqual(r.json.buckets, []);
  }
});

test('performance metrics: bad queries are 400 with the parameter\'s path, never 500', async () => {
  const id = account.service.id;
  const to = new Date().toISOString();
  const cases = [
    ['interval=1%20mon', 'query.interval'],       // date_bin refuses months: was a 500
    ['interval=1%20year', 'query.interval'],
    ['interval=7m', 'query.interval'],
    ['interval=-5m', 'query.interval'],
    ['from=infinity', 'query.from'],               // were 400s with PostgreSQL's own message, no path
    ['from=-infinity', 'query.from'],
    ['to=infinity', 'query.to'],
    ['from=2026-01-01T00:00:00%2B99', 'query.from'], // zone out of range
    ['from=2026-01-01%20America/Nowhere', 'query.from'], // unknown zone
    ['from=yesterday-ish', 'query.from'],
    [`from=${to}&to=${to}`, 'query.from'],
    ['from=1970-01-01T00:00:00.000Z&interval=5m', 'query.interval'],
  ];
  for (const [q, path] of cases) {
    const r = await dashboardGet(account, `/performance/metrics?service_id=${id}&${q}`);
    assertErrorShape(assert, r, 400, 'invalid_query');
    assert.equal(r.json.error.details[0].path, path, q);
  }
});

test('performance metrics: another tenant\'s service is 404, no credential is 401', async () => {
  const other = await signup('b');
  const r = await dashboardGet(other, metricsPath(account.service.id, 86400, '1h'));
  assertErrorShape(assert, r, 404, 'not_found');
  const bad = await dashboardGet(account, metricsPath('not-a-uuid', 86400, '1h'));
  assertErrorShape(assert, bad, 404, 'not_found');
  const anon = await dashboardGet(null, metricsPath(account.service.id, 86400, '1h'));
  assertErrorShape(assert, anon, 401);
  // the other tenant's own metrics stay empty: nothing of A leaks into B's totals
  const own = await dashboardGet(other, '/performance/metrics?interval=1h');
  assert.equal(Number(own.json.totals.requestCount), 0);
});

test('the rest of the dashboard\'s reads for the replayed service answer 200 with a session', async () => {
  const svc = await dashboardGet(account, `/services/${account.service.id}`);
  assert.equal(svc.status, 200, svc.text);
  assert.equal(svc.json.name ?? svc.json.service?.name, 'capture-demo');
  const changes = await dashboardGet(account, `/services/${account.service.id}/changes`);
  assert.equal(changes.status, 200, changes.text);
  const errors = await dashboardGet(account, '/errors');
  assert.equal(errors.status, 200, errors.text);
  const stored = Number(psql(`SELECT count(*) FROM lattice.error_groups WHERE user_id = '${account.id}'`));
  assert.ok(stored > 0);
  assert.equal((errors.json.errors ?? errors.json.data).length, stored);
});
