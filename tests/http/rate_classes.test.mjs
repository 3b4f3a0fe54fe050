// Quota classes through the real shim (docs/http-contract.md, "Rate limits"):
// api (a key or token on a non-ingest route, per account), dashboard (a
// session, per account) and ingest (per service, with an account ceiling).
// Exhausting one class never refuses another: an ingest flood from one
// service leaves the key's other services, the dashboard and the API alone;
// an exhausted api class leaves ingest and the dashboard alone; GET
// /api/v1/usage shows each class and each service, and after the roll-up the
// last 24 hours.  Accounts are on plans of their own, set in SQL before their
// first request (the plan is cached per backend for rate_plan_cache_ms).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { startShim, psql } from './lib.mjs';
import { send, captured } from './owasp_lib.mjs';

const FROM = `127.0.79.${(process.pid % 250) + 1}`; // this file's own address (logins count per address)
const json = { 'Content-Type': 'application/json' };
const PASSWORD = 'correct horse battery staple';
const tag = `${process.pid}_${Date.now()}`;
const API_LIMIT = 3;
let shim;
let T;   // the account of the first tests: api 3 an hour, ingest and dashboard as the standard plan

// An account on a plan of its own ({column: value} of lattice.plans), with a
// session, an ingest-only key and a read-only key made as the dashboard does.
async function account(name, plan) {
  const planId = `rate_classes_${name}_${tag}`;
  const cols = { rate_limit_per_hour: 1000, ...plan };
  psql(`INSERT INTO lattice.plans (id, name, price_cents, ${Object.keys(cols).join(', ')})
        VALUES ('${planId}', '${name}', 0, ${Object.values(cols).join(', ')})`);
  const email = `rate-classes-${name}-${randomUUID()}@example.com`;
  const id = psql(`SELECT lattice.create_user('${email}', '${PASSWORD}', 'Rate ${name}')`);
  psql(`UPDATE lattice.users SET plan_id = '${planId}' WHERE id = '${id}'`);
  const login = await send(shim, 'POST', '/api/v1/auth/login', { from: FROM, headers: json, body: JSON.stringify({ email, password: PASSWORD }) });
  assert.equal(login.status, 200, login.text);
  const c = Object.fromEntries([].concat(login.headers['set-cookie']).map((x) => x.split(';')[0].split('=')));
  const a = { id, planId, session: { Cookie: `lattice_session=${c.lattice_session}; lattice_csrf=${c.lattice_csrf}`, 'X-CSRF-Token': c.lattice_csrf } };
  const key = async (body) => {
    const r = await send(shim, 'POST', '/api/v1/keys', { from: FROM, headers: { ...json, ...a.session }, body: JSON.stringify(body) });
    assert.equal(r.status, 201, r.text);
    return { 'X-Lattice-API-Key': r.json.key };
  };
  a.ingestKey = await key({ name: 'plugin' });
  a.readKey = await key({ name: 'script', scopes: ['read'] });
  return a;
}

const get = (path, headers) => send(shim, 'GET', path, { from: FROM, headers });
function metadata(a, service) {
  const doc = JSON.parse(captured('ingest_metadata'));
  doc.service.name = service;
  return send(shim, 'POST', '/api/v1/ingest/metadata', { from: FROM, headers: { ...json, ...a.ingestKey }, body: JSON.stringify(doc) });
}
const klass = (r) => r.headers['ratelimit-class'];

// A refusal by the rate counters: 429 rate_limited, Retry-After, the details of the class
function assertRefused(r, scope, limit) {
  assert.equal(r.status, 429, r.text);
  assert.equal(r.json.error.code, 'rate_limited');
  const d = r.json.error.details;
  assert.equal(d.scope, scope);
  assert.equal(d.limit, limit);
  assert.equal(d.period_seconds, 3600);
  assert.equal(d.remaining, 0);
  assert.ok(d.retry_after_seconds > 0 && d.reset_seconds >= d.retry_after_seconds, JSON.stringify(d));
  assert.equal(r.headers['retry-after'], String(d.retry_after_seconds));
  assert.equal(r.headers['ratelimit-remaining'], '0');
  assert.equal(r.headers['ratelimit-limit'], String(limit));
}

before(async () => {
  // counts are per clock hour: never straddle one
  const intoHour = Date.now() % 3600_000;
  if (intoHour > 3600_000 - 45_000) await sleep(3600_000 - intoHour + 1000);
  shim = await startShim();
  T = await account('t', { rate_limit_per_hour: API_LIMIT });
});
after(async () => { await shim?.stop(); });

const flood = { allowed: 0, refused: 0, last: null, started: 0, elapsed: 0 };

test('an ingest flood from one service: its burst of 120, then 429 rate_limited in the ingest class with Retry-After', async () => {
  flood.started = Date.now();
  let r;
  for (;;) {
    r = await metadata(T, 'flood');
    if (r.status !== 200) break;
    flood.allowed++;
    assert.equal(klass(r), 'ingest', `answer ${flood.allowed}`);
    assert.equal(r.headers['ratelimit-limit'], '3600', 'the plan\'s ingest_per_service_per_hour');
    assert.ok(flood.allowed <= 200, 'the service is refused at some point');
  }
  flood.ended = Date.now();
  flood.elapsed = (flood.ended - flood.started) / 1000;
  flood.refused = 1;
  flood.last = r;
  // 120 at once, then one a second (3,600 an hour) while the flood ran
  assert.ok(flood.allowed >= 120 && flood.allowed <= 120 + Math.ceil(flood.elapsed) + 1,
    `${flood.allowed} allowed in ${flood.elapsed} s`);
  assertRefused(r, 'ingest', 3600);
  assert.ok(Number(r.headers['retry-after']) <= 1, 'one request is allowed again within a second');
});

test('the refusal of the ingest flood names its class in RateLimit-Class', () => {
  assert.equal(klass(flood.last), 'ingest');
});

test('...while the same key\'s other service is accepted, and the dashboard and the API read', async () => {
  const calm = await metadata(T, 'calm');
  assert.equal(calm.status, 200, calm.text);
  assert.equal(klass(calm), 'ingest');
  assert.equal(calm.headers['ratelimit-remaining'], '119', 'a budget of its own, whole');

  const dash = await get('/api/v1/services', T.session);
  assert.equal(dash.status, 200, dash.text);
  assert.equal(klass(dash), 'dashboard');
  assert.equal(dash.headers['ratelimit-limit'], '7200');
  assert.deepEqual(dash.json.services.map((s) => s.name).sort(), ['calm', 'flood']);

  const api = await get('/api/v1/services', T.readKey);
  assert.equal(api.status, 200, api.text);
  assert.equal(klass(api), 'api');
  assert.equal(api.headers['ratelimit-limit'], String(API_LIMIT));
  assert.equal(api.headers['ratelimit-remaining'], String(API_LIMIT - 1));
});

test('GET /api/v1/usage: each class, each service; after the roll-up, the hour by class and refused_24h', async () => {
  // the flood refused once more (still within the second)
  const again = await metadata(T, 'flood');
  if (again.status === 429) flood.refused++;
  else { assert.equal(again.status, 200); flood.allowed++; }

  const u = await get('/api/v1/usage', T.session);
  assert.equal(u.status, 200, u.text);
  assert.equal(klass(u), 'dashboard', 'read with the session: the dashboard counts it');
  const { api, dashboard, ingest } = u.json.classes;
  assert.equal(api.used, 1, 'the read key\'s one request');
  assert.equal(api.limit, API_LIMIT);
  assert.equal(api.remaining, API_LIMIT - 1);
  assert.equal(api.refused_this_hour, 0);
  assert.equal(u.json.this_hour.requests, 1, 'the top level is the api class');
  assert.equal(u.json.limit, API_LIMIT);
  assert.equal(dashboard.limit, 7200);
  assert.equal(dashboard.burst, 600);
  assert.ok(dashboard.used >= 3, `session requests: keys, services, usage (${dashboard.used})`);
  assert.equal(ingest.unit, 'service');
  assert.equal(ingest.limit, 3600);
  assert.equal(ingest.burst, 120);
  assert.equal(ingest.used, flood.allowed + 1);
  assert.equal(ingest.refused_this_hour, flood.refused);
  assert.equal(ingest.refused_24h, flood.refused);
  assert.equal(ingest.account_limit, 3600 * 100);
  // the ceiling (burst 120 x 100 services, refilled at 100 a second) counted both services
  assert.ok(ingest.account_remaining <= 120 * 100 && ingest.account_remaining >= 120 * 100 - flood.allowed - 1,
    `${ingest.account_remaining}`);
  const [first, second, ...more] = ingest.services;
  assert.deepEqual(more, []);
  assert.equal(first.service, 'flood', 'the refused service first');
  assert.equal(first.used, flood.allowed);
  assert.equal(first.refused_this_hour, flood.refused);
  assert.equal(first.refused_24h, flood.refused);
  assert.ok(first.remaining <= Math.ceil((Date.now() - flood.ended) / 1000) + 1,
    `one a second back since the flood (${first.remaining})`);
  assert.deepEqual({ ...second, reset_seconds: 0 },
    { service: 'calm', used: 1, remaining: 119, reset_seconds: 0, refused_this_hour: 0, refused_24h: 0 });

  // rolled up: this hour in the history, by class
  psql('SELECT lattice.rate_flush_usage()');
  assert.equal(psql(`SELECT string_agg(class || ':' || subject || ':' || requests || '/' || refused, ',' ORDER BY class, subject)
                       FROM lattice.usage_hourly WHERE user_id = '${T.id}' AND class <> 'dashboard'`),
    `api::1/0,ingest:calm:1/0,ingest:flood:${flood.allowed}/${flood.refused}`);
  const h = await get('/api/v1/usage', T.session);
  assert.equal(h.status, 200, h.text);
  assert.equal(h.json.history.length, 1);
  const hour = h.json.history[0];
  assert.equal(Date.parse(hour.hour), Date.parse(u.json.this_hour.start));
  assert.deepEqual(hour.classes.api, { requests: 1, refused: 0 });
  assert.deepEqual(hour.classes.ingest, { requests: flood.allowed + 1, refused: flood.refused });
  assert.ok(hour.classes.dashboard.requests >= dashboard.used);
  assert.equal(hour.requests, hour.classes.api.requests + hour.classes.ingest.requests + hour.classes.dashboard.requests,
    'an hour\'s totals are the sum of its classes');
  assert.equal(hour.refused, flood.refused);
  // refused_24h: this hour's live count (the rolled-up hours before it add to it), not counted twice
  assert.equal(h.json.classes.ingest.refused_24h, flood.refused);
  assert.equal(h.json.classes.ingest.services[0].refused_24h, flood.refused);
});

test('an exhausted api class leaves ingest and the dashboard working', async () => {
  // a read key, a token traded for the session and an ingest key on a non-ingest route all count in api
  for (let i = 1; i < API_LIMIT; i++) {
    const r = await get('/api/v1/services', T.readKey);
    assert.equal(r.status, 200, r.text);
    assert.equal(klass(r), 'api');
  }
  const refused = await get('/api/v1/services', T.readKey);
  assertRefused(refused, 'api', API_LIMIT);
  const token = await send(shim, 'POST', '/api/v1/auth/token', { from: FROM, headers: { ...json, ...T.session }, body: '{}' });
  assert.equal(token.status, 200, token.text);
  assert.equal(klass(token), 'dashboard', 'trading a session counts for the session');
  assertRefused(await get('/api/v1/services', { Authorization: `Bearer ${token.json.token}` }), 'api', API_LIMIT);
  assertRefused(await get('/api/v1/auth/me', T.ingestKey), 'api', API_LIMIT);

  const ing = await metadata(T, 'calm');
  assert.equal(ing.status, 200, ing.text);
  assert.equal(klass(ing), 'ingest');
  const dash = await get('/api/v1/services', T.session);
  assert.equal(dash.status, 200, dash.text);
  assert.equal(klass(dash), 'dashboard');

  const u = await get('/api/v1/usage', T.session);
  assert.equal(u.status, 200, u.text);
  assert.equal(u.json.classes.api.used, API_LIMIT);
  assert.equal(u.json.classes.api.remaining, 0);
  assert.equal(u.json.classes.api.refused_this_hour, 3);
  assert.equal(u.json.classes.api.refused_24h, 3);
  assert.equal(u.json.remaining, 0);
  assert.deepEqual([u.json.this_hour.requests, u.json.this_hour.refused], [API_LIMIT, 3]);
  assert.equal(u.json.classes.ingest.services.find((s) => s.service === 'calm').used, 2);
  assert.equal(u.json.classes.dashboard.refused_this_hour, 0);
  psql('SELECT lattice.rate_flush_usage()');
  assert.equal(psql(`SELECT requests || '/' || refused FROM lattice.usage_hourly WHERE user_id = '${T.id}' AND class = 'api'`),
    `${API_LIMIT}/3`);
});

test('an exhausted dashboard leaves the API and ingest working', async () => {
  const D = await account('d', { dashboard_per_hour: 6 });
  // the account's own set-up (two keys) already spent two of the six
  let r;
  let allowed = 2;
  for (;;) {
    r = await get('/api/v1/auth/me', D.session);
    if (r.status !== 200) break;
    assert.equal(klass(r), 'dashboard');
    allowed++;
    assert.ok(allowed <= 6, `${allowed} dashboard requests allowed`);
  }
  assert.equal(allowed, 6);
  assertRefused(r, 'dashboard', 6);
  const api = await get('/api/v1/services', D.readKey);
  assert.equal(api.status, 200, api.text);
  assert.equal(klass(api), 'api');
  const ing = await metadata(D, 'svc');
  assert.equal(ing.status, 200, ing.text);
  assert.equal(klass(ing), 'ingest');
  const u = await get('/api/v1/usage', D.readKey);
  assert.equal(u.status, 200, u.text);
  assert.equal(u.json.classes.dashboard.used, 6);
  assert.equal(u.json.classes.dashboard.refused_this_hour, 1);
});

test('new service names cannot buy budget: the account\'s ceiling refuses with scope ingest_account', async () => {
  // 2 a service, 2 services: bursts of 2 per service and 4 for the account
  const C = await account('c', { ingest_per_service_per_hour: 2, max_services: 2 });
  for (const s of ['s1', 's1', 's2', 's2']) {
    const ok = await metadata(C, s);
    assert.equal(ok.status, 200, `${s}: ${ok.text}`);
  }
  assertRefused(await metadata(C, 's1'), 'ingest', 2);
  assertRefused(await metadata(C, 's3'), 'ingest_account', 4);
  const u = await get('/api/v1/usage', C.session);
  assert.equal(u.json.classes.ingest.account_limit, 4);
  assert.equal(u.json.classes.ingest.account_remaining, 0);
  assert.equal(u.json.classes.ingest.used, 4);
  assert.equal(u.json.classes.ingest.refused_this_hour, 2, 'both refusals, the service\'s and the account\'s');
  // the refused services first; the new name spent nothing of its own budget
  assert.deepEqual(u.json.classes.ingest.services.map((x) => [x.service, x.used, x.refused_this_hour, x.remaining]),
    [['s1', 2, 1, 0], ['s3', 0, 1, 2], ['s2', 2, 0, 0]]);
});
