// The authorisation matrix: every route of shim/routes.c (read from the file
// at test time) x every kind of credential, through a real shim and
// PostgreSQL, against ONE expectation table below.  A route in routes.c that
// the table does not decide fails the test, so no endpoint can be added
// without saying who may call it (lattice.authenticate's need: ingest, read,
// session or any; docs/http-contract.md, "Authentication").
//
// Credentials: none; a session (cookie + CSRF header); a session without the
// CSRF header (unsafe methods only); a bearer JWT traded for the session
// (scopes ingest and read); an ingest-only key and a read-only key (both made
// through POST /api/v1/keys); a revoked key; another tenant's key (both
// scopes), which on routes taking an {id} is sent the first tenant's object.
// Every 403 insufficient_scope names details.required_scope and is audited
// (lattice.audit_log, action auth.insufficient_scope, by request id).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { startShim, psql, ROOT } from './lib.mjs';
import { send, captured } from './owasp_lib.mjs';
import { openStream, EVENTS_ENV } from './events_lib.mjs';
import { startStripeStandin } from '../stripe_standin/server.mjs';

const FROM = `127.0.78.${(process.pid % 250) + 1}`; // this file's own address: login and sign-up count per address
const json = { 'Content-Type': 'application/json' };
const SERVICE = 'authz-svc';
const ingestBody = {
  metadata: () => { const m = JSON.parse(captured('ingest_metadata')); m.service.name = SERVICE; return JSON.stringify(m); },
  traces: () => {
    const t = JSON.parse(captured('traces_batch'));
    for (const x of t.traces) x.service_id = SERVICE;
    return JSON.stringify(t);
  },
  errors: () => {
    const e = JSON.parse(captured('errors_batch'));
    for (const x of e.errors) x.service_id = SERVICE;
    return JSON.stringify(e);
  },
  error: () => JSON.stringify({ service_id: SERVICE, environment: 'development', error_type: 'Error', message: 'authz matrix',
    session_id: 'authz-1', stack_trace: [{ filename: 'page.js', line_number: 3, function_name: 'f' }], context: { type: 'unhandled_error' } }),
  breadcrumbs: () => JSON.stringify({ breadcrumbs: [{ session_id: 'authz-1', category: 'navigation', message: 'to /authz',
    level: 'info', timestamp: new Date().toISOString() }] }),
  metrics: () => JSON.stringify({ serviceName: SERVICE,
    metrics: [{ method: 'GET', path: '/users/5', statusCode: 200, responseTime: 4, timestamp: new Date().toISOString() }] }),
};

// THE expectation table: "METHOD pattern" -> who may call it and what an
// authorised call answers.
//   need    ingest | read | session | any (lattice.authenticate), or none for
//           the unauthenticated routes (checked apart, without a credential:
//           `none` is their [status, code] for an empty body; the login's
//           401 is the wrong password's, not a missing credential's)
//   ok      the statuses of an authorised call (outbound billing: what the
//           billing suites accept without a subscription; the point is
//           401/403 or not)
//   body    the request body (a function: fresh each time)
//   query   a query string; (o) => ... gets the first tenant's objects
//   fresh   session | key | channel: the {id} is a throwaway object, made anew for each
//           cell that may succeed (logins are limited to 10 an account in
//           15 minutes, so refused cells share one spare session)
//   ownSession  the session credentials use a throwaway session (logout)
//   noBearer    a bearer token is refused with 401 credential_not_accepted
//   objects the route names the first tenant's objects (another tenant: 404)
const TABLE = {
  'GET /ready':                                { need: 'none', none: [200] },
  'POST /api/v1/auth/signup':                  { need: 'none', none: [400, 'invalid_email'], body: () => '{}' },
  'POST /api/v1/auth/login':                   { need: 'none', none: [401, 'invalid_credentials'], body: () => '{}' },
  'POST /api/v1/webhooks/stripe':              { need: 'none', none: [400, 'invalid_signature'], body: () => '{}' },
  'POST /api/v1/auth/password/forgot':         { need: 'none', none: [400, 'invalid_email'], body: () => '{}' },
  'POST /api/v1/auth/password/reset':          { need: 'none', none: [400, 'invalid_token'], body: () => '{}' },
  'POST /api/v1/auth/email/verify':            { need: 'none', none: [400, 'invalid_token'], body: () => '{}' },

  // the account: a wrong password keeps each change from happening
  'GET /api/v1/account':                       { need: 'session', ok: [200] },
  'GET /api/v1/account/audit':                 { need: 'session', ok: [200] },
  'GET /api/v1/account/export':                { need: 'session', ok: [200] },
  'POST /api/v1/account/email/verify':         { need: 'session', ok: [202, 409, 429], body: () => '{}' },
  'POST /api/v1/account/password':             { need: 'session', ok: [403],
                                                 body: () => '{"current_password":"not the password","new_password":"another long password"}' },
  'POST /api/v1/account/email':                { need: 'session', ok: [403],
                                                 body: () => '{"email":"authz-new@example.com","password":"not the password"}' },
  'POST /api/v1/account/2fa/setup':            { need: 'session', ok: [403], body: () => '{"password":"not the password"}' },
  'POST /api/v1/account/2fa/enable':           { need: 'session', ok: [409], body: () => '{"code":"000000"}' },
  'POST /api/v1/account/2fa/disable':          { need: 'session', ok: [409], body: () => '{"password":"x","code":"000000"}' },
  'POST /api/v1/account/2fa/recovery-codes':   { need: 'session', ok: [409], body: () => '{"password":"x","code":"000000"}' },
  'DELETE /api/v1/account':                    { need: 'session', ok: [403], body: () => '{"password":"not the password"}' },

  'GET /api/v1/usage':                         { need: 'read', ok: [200] },
  'POST /api/v1/auth/logout':                  { need: 'session', ok: [204], ownSession: true },
  'GET /api/v1/auth/me':                       { need: 'any', ok: [200] },
  'GET /api/v1/auth/sessions':                 { need: 'session', ok: [200] },
  'DELETE /api/v1/auth/sessions/{id}':         { need: 'session', ok: [204], fresh: 'session' },
  'POST /api/v1/auth/token':                   { need: 'any', ok: [200], body: () => '{}', noBearer: true },
  'GET /api/v1/keys':                          { need: 'session', ok: [200] },
  'POST /api/v1/keys':                         { need: 'session', ok: [201], body: () => '{"name":"authz matrix"}' },
  'POST /api/v1/keys/{id}/rotate':             { need: 'session', ok: [201], body: () => '{}', fresh: 'key' },
  'DELETE /api/v1/keys/{id}':                  { need: 'session', ok: [204], fresh: 'key' },

  'GET /api/v1/graph':                         { need: 'read', ok: [200] },
  'GET /api/v1/graph/dependencies/{id}':       { need: 'read', ok: [200] },
  'GET /api/v1/graph/dependents/{id}':         { need: 'read', ok: [200] },
  'GET /api/v1/services/{id}/impact':          { need: 'read', ok: [200] },
  'GET /api/v1/graph/path':                    { need: 'read', ok: [200], objects: true,
                                                 query: (o) => `from=${o.service}&to=${o.service}` },
  'GET /api/v1/graph/cycles':                  { need: 'read', ok: [200] },
  'GET /api/v1/graph/order':                   { need: 'read', ok: [200] },
  'GET /api/v1/graph/diff':                    { need: 'read', ok: [200], query: () => `from=${new Date(Date.now() - 3600_000).toISOString()}` },
  'GET /api/v1/events':                        { need: 'read', ok: [200] },

  'GET /api/v1/billing':                       { need: 'session', ok: [200] },
  'GET /api/v1/billing/invoices':              { need: 'session', ok: [200] },
  'POST /api/v1/billing/checkout':             { need: 'session', ok: [200], body: () => '{}' },
  'POST /api/v1/billing/portal':               { need: 'session', ok: [200, 409], body: () => '{}' },
  'POST /api/v1/billing/cancel':               { need: 'session', ok: [200, 409], body: () => '{}' },
  'POST /api/v1/billing/resume':               { need: 'session', ok: [200, 409], body: () => '{}' },

  'POST /api/v1/ingest/metadata':              { need: 'ingest', ok: [200], body: ingestBody.metadata },
  'POST /api/v1/performance/traces/batch':     { need: 'ingest', ok: [201], body: ingestBody.traces },
  'POST /api/v1/errors/batch':                 { need: 'ingest', ok: [201], body: ingestBody.errors },
  'POST /otlp/v1/traces':                      { need: 'ingest', ok: [200], body: () => '{}' },
  'POST /api/v1/errors':                       { need: 'ingest', ok: [201], body: ingestBody.error },
  'POST /api/v1/breadcrumbs':                  { need: 'ingest', ok: [201], body: ingestBody.breadcrumbs },
  'POST /api/v1/metrics':                      { need: 'ingest', ok: [201], body: ingestBody.metrics },
  'GET /api/v1/services':                      { need: 'read', ok: [200] },
  'GET /api/v1/services/{id}':                 { need: 'read', ok: [200] },
  'GET /api/v1/services/{id}/changes':         { need: 'read', ok: [200] },
  'GET /api/v1/errors':                        { need: 'read', ok: [200] },
  'GET /api/v1/errors/{id}':                   { need: 'read', ok: [200] },
  'PATCH /api/v1/errors/{id}':                 { need: 'session', ok: [200], body: () => '{"status":"resolved"}' },

  // alerts: the {id} of a channel is the first tenant's e-mail channel (its own
  // address: "send test" fails without SMTP here, 502), of an incident its incident
  'GET /api/v1/alerts/rules':                  { need: 'read', ok: [200] },
  'PUT /api/v1/alerts/rules':                  { need: 'session', ok: [200], body: () => '{"cooldown_minutes":30}' },
  'GET /api/v1/alerts/channels':               { need: 'read', ok: [200] },
  'POST /api/v1/alerts/channels':              { need: 'session', ok: [201],
                                                 body: () => '{"kind":"email","name":"authz","address":"authz-alerts@example.com"}' },
  'PATCH /api/v1/alerts/channels/{id}':        { need: 'session', ok: [200], body: () => '{"enabled":true}' },
  'DELETE /api/v1/alerts/channels/{id}':       { need: 'session', ok: [204], fresh: 'channel' },
  'POST /api/v1/alerts/channels/{id}/test':    { need: 'session', ok: [200, 502] },
  'POST /api/v1/alerts/channels/{id}/secret':  { need: 'session', ok: [409] },
  'GET /api/v1/alerts/channels/{id}/deliveries': { need: 'read', ok: [200] },
  'POST /api/v1/alerts/recipients/verify':     { need: 'none', none: [400, 'invalid_token'], body: () => '{}' },
  'GET /api/v1/alerts/incidents':              { need: 'read', ok: [200] },
  'POST /api/v1/alerts/incidents/{id}/acknowledge': { need: 'session', ok: [200] },
  'POST /api/v1/alerts/incidents/{id}/mute':   { need: 'session', ok: [200], body: () => '{"minutes":5}' },
  'GET /api/v1/performance/metrics':           { need: 'read', ok: [200] },
};

const CREDENTIALS = ['none', 'session', 'session_nocsrf', 'jwt', 'key_ingest', 'key_read', 'key_revoked', 'other_tenant'];
const UNSAFE = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

// The route table as the shim has it: every line but the test-only ones and
// the shim's own local endpoints (/api/v1/health, /metrics).
function routesOfShim() {
  const src = readFileSync(`${ROOT}/shim/routes.c`, 'utf8');
  const table = src.slice(src.indexOf('const struct route routes[]'), src.indexOf('const int nroutes'));
  const lines = [...table.matchAll(/\{\s*"([A-Z]+)",\s*"([^"]+)",\s*(NULL|"[^"]*"),\s*([^,]+),/g)];
  assert.ok(lines.length > 20, `parsed ${lines.length} lines of shim/routes.c`);
  return lines.filter(([, , , , flags]) => !/R_TEST|R_LOCAL_/.test(flags)).map(([, method, pattern, fn]) => ({
    key: `${method} ${pattern}`, method, pattern, fn: fn.replaceAll('"', ''),
  }));
}

// What a credential gets on a route, from the route's need alone.
const ALLOWED = { allowed: true };
const scope = (s) => ({ status: 403, code: 'insufficient_scope', required: s });
function expected(route, cred) {
  const { need } = route;
  switch (cred) {
    case 'none': return { status: 401, code: 'missing_credentials' };
    case 'key_revoked': return { status: 401, code: 'revoked_api_key' };
    case 'session_nocsrf': return { status: 403, code: 'csrf_failed' };
    case 'session': return need === 'ingest' ? scope('ingest') : ALLOWED;
    case 'jwt':
      if (need === 'ingest') return { status: 401, code: 'credential_not_accepted' };
      if (need === 'session') return scope('session');
      if (route.noBearer) return { status: 401, code: 'credential_not_accepted' };
      return ALLOWED;
    case 'key_ingest': return need === 'read' || need === 'session' ? scope(need) : ALLOWED;
    case 'key_read': return need === 'ingest' || need === 'session' ? scope(need) : ALLOWED;
    case 'other_tenant':
      if (need === 'session') return scope('session');
      if (route.pattern.includes('{id}') || route.objects) return { status: 404, code: 'not_found' };
      return ALLOWED;
    default: throw new Error(cred);
  }
}

let shim, stripe, A, B;
const cookieHeaders = (s, csrf = true) => ({ Cookie: `lattice_session=${s.session}; lattice_csrf=${s.csrf}`, ...(csrf ? { 'X-CSRF-Token': s.csrf } : {}) });

async function login(email, password) {
  const r = await send(shim, 'POST', '/api/v1/auth/login', { from: FROM, headers: json, body: JSON.stringify({ email, password }) });
  assert.equal(r.status, 200, r.text);
  const c = Object.fromEntries([].concat(r.headers['set-cookie']).map((x) => x.split(';')[0].split('=')));
  const s = { session: c.lattice_session, csrf: c.lattice_csrf };
  const list = await send(shim, 'GET', '/api/v1/auth/sessions', { from: FROM, headers: cookieHeaders(s) });
  s.id = list.json.sessions.find((x) => x.current).id;
  return s;
}

async function account(tag) {
  const email = `authz-${tag}-${process.pid}-${Date.now()}@example.com`;
  const password = 'correct horse battery staple';
  const id = psql(`SELECT lattice.create_user('${email}', '${password}', 'Authz ${tag}')`);
  return { id, email, password };
}

before(async () => {
  stripe = await startStripeStandin();
  psql(`SELECT lattice.billing_set_price('standard', 'price_test_standard')`);
  shim = await startShim({ env: { ...EVENTS_ENV, LATTICE_STRIPE_API_BASE: stripe.url, LATTICE_STRIPE_SECRET_KEY: stripe.secretKey,
                                  LATTICE_STRIPE_TIMEOUT_MS: '3000' } });
  A = await account('a');
  B = await account('b');
  A.main = await login(A.email, A.password);
  A.spare = await login(A.email, A.password); // the {id} and the logout session of cells that must be refused
  const s = cookieHeaders(A.main);
  const key = async (body) => {
    const r = await send(shim, 'POST', '/api/v1/keys', { from: FROM, headers: { ...json, ...s }, body: JSON.stringify(body) });
    assert.equal(r.status, 201, r.text);
    return r.json;
  };
  const ingestOnly = await key({ name: 'ingest only' });
  assert.deepEqual(ingestOnly.scopes, ['ingest']);
  const readOnly = await key({ name: 'read only', scopes: ['read'] });
  assert.deepEqual(readOnly.scopes, ['read']);
  const revoked = await key({ name: 'revoked', scopes: ['ingest', 'read'] });
  const del = await send(shim, 'DELETE', `/api/v1/keys/${revoked.id}`, { from: FROM, headers: s });
  assert.equal(del.status, 204, del.text);
  const t = await send(shim, 'POST', '/api/v1/auth/token', { from: FROM, headers: { ...json, ...s }, body: '{}' });
  assert.equal(t.status, 200, t.text);
  assert.equal(JSON.parse(Buffer.from(t.json.token.split('.')[1], 'base64url')).scope, 'ingest read');
  B.key = psql(`SELECT lattice.create_api_key('${B.id}', 'other tenant')`); // ingest and read
  A.creds = {
    none: {},
    session: s,
    session_nocsrf: cookieHeaders(A.main, false),
    jwt: { Authorization: `Bearer ${t.json.token}` },
    key_ingest: { 'X-Lattice-API-Key': ingestOnly.key },
    key_read: { 'X-Lattice-API-Key': readOnly.key },
    key_revoked: { 'X-Lattice-API-Key': revoked.key },
    other_tenant: { 'X-Lattice-API-Key': B.key },
  };
  // the first tenant's objects: a service with an error group, sent as its plugin would
  const k = { ...json, ...A.creds.key_ingest };
  const meta = await send(shim, 'POST', '/api/v1/ingest/metadata', { from: FROM, headers: k, body: ingestBody.metadata() });
  assert.equal(meta.status, 200, meta.text);
  const errs = await send(shim, 'POST', '/api/v1/errors/batch', { from: FROM, headers: k, body: ingestBody.errors() });
  assert.equal(errs.status, 201, errs.text);
  A.objects = { service: meta.json.serviceId, error: errs.json.results[0].id, channel: alertChannel(),
                incident: psql(`INSERT INTO lattice.alert_incidents (user_id, rule, subject_key, subject, status, summary,
                                                                    opened_at, notified)
                                VALUES ('${A.id}', 'service_down', 'authz', '{}', 'resolved', 'authz', now(), false)
                                RETURNING id`) };
});
after(async () => {
  await shim?.stop();
  await stripe?.close();
});

// An e-mail alert channel of the first tenant, to its own address
const alertChannel = () => psql(`INSERT INTO lattice.alert_channels (user_id, kind, name, target, verified_at)
                                 VALUES ('${A.id}', 'email', 'authz', '${A.email}', now()) RETURNING id`);

// The {id} of a route for a cell: the first tenant's object, or a throwaway one.
async function objectId(route, allowed) {
  if (route.fresh === 'session') return allowed ? (await login(A.email, A.password)).id : A.spare.id;
  if (route.fresh === 'key') {
    const name = `authz throwaway ${Math.random().toString(36).slice(2)}`;
    psql(`SELECT lattice.create_api_key('${A.id}', '${name}')`);
    return psql(`SELECT id FROM lattice.api_keys WHERE user_id = '${A.id}' AND name = '${name}'`);
  }
  if (route.fresh === 'channel') return alertChannel();
  if (route.pattern.startsWith('/api/v1/errors/')) return A.objects.error;
  if (route.pattern.startsWith('/api/v1/alerts/channels/')) return A.objects.channel;
  if (route.pattern.startsWith('/api/v1/alerts/incidents/')) return A.objects.incident;
  return A.objects.service;
}

async function call(route, cred, requestId, allowed) {
  let path = route.pattern.includes('{id}') ? route.pattern.replace('{id}', await objectId(route, allowed)) : route.pattern;
  if (route.query) path += `?${route.query(A.objects)}`;
  let headers = { ...A.creds[cred], 'X-Request-Id': requestId };
  if (route.ownSession && cred.startsWith('session'))
    headers = { ...cookieHeaders(allowed ? await login(A.email, A.password) : A.spare, cred === 'session'), 'X-Request-Id': requestId };
  if (route.pattern === '/api/v1/events') {
    const s = await openStream(shim, { headers });
    if (s.status === 200) s.close();
    return { status: s.status, json: s.json, text: s.text ?? '(stream)' };
  }
  const body = route.body?.();
  return send(shim, route.method, path, { from: FROM, body, headers: { ...(body !== undefined ? json : {}), ...headers } });
}

test('every route of shim/routes.c has an entry in the expectation table, and every entry a route', () => {
  const routes = routesOfShim();
  const keys = new Set(routes.map((r) => r.key));
  assert.deepEqual(routes.filter((r) => !TABLE[r.key]).map((r) => r.key), [],
    'routes without an authorisation decision: add them to TABLE in tests/http/authz_matrix.test.mjs');
  assert.deepEqual(Object.keys(TABLE).filter((k) => !keys.has(k)), [], 'entries for routes that no longer exist');
  for (const [k, v] of Object.entries(TABLE)) assert.ok(['none', 'ingest', 'read', 'session', 'any'].includes(v.need), k);
});

test('unauthenticated routes (sign-up, login, password reset, e-mail links, the Stripe webhook, readiness) answer without a credential', async () => {
  const open = routesOfShim().filter((r) => TABLE[r.key]?.need === 'none');
  assert.deepEqual(open.map((r) => r.key).sort(),
    ['GET /ready', 'POST /api/v1/alerts/recipients/verify', 'POST /api/v1/auth/email/verify', 'POST /api/v1/auth/login',
     'POST /api/v1/auth/password/forgot', 'POST /api/v1/auth/password/reset', 'POST /api/v1/auth/signup',
     'POST /api/v1/webhooks/stripe']);
  for (const r of open) {
    const e = TABLE[r.key];
    const body = e.body?.();
    const res = await send(shim, r.method, r.pattern, { from: FROM, body, headers: body !== undefined ? json : {} });
    assert.equal(res.status, e.none[0], `${r.key}: ${res.status} ${res.text.slice(0, 160)}`);
    assert.equal(res.json?.error?.code, e.none[1], r.key);
    assert.notEqual(res.json?.error?.code, 'missing_credentials', r.key);
  }
});

test('the matrix: every authenticated route x every credential answers as its need says', async () => {
  const routes = routesOfShim().filter((r) => TABLE[r.key] && TABLE[r.key].need !== 'none');
  const wrong = [];
  const refusedScope = [];   // [request id, tenant, required scope]
  let cells = 0;
  let n = 0;
  const stripeBefore = stripe.requests.length;
  let stripeBySession = 0;
  for (const r of routes) {
    const route = { ...r, ...TABLE[r.key] };
    for (const cred of CREDENTIALS) {
      if (cred === 'session_nocsrf' && !UNSAFE.has(route.method)) continue;
      cells++;
      const requestId = `authz-${process.pid}-${++n}`;
      const want = expected(route, cred);
      const sent = stripe.requests.length;
      const res = await call(route, cred, requestId, Boolean(want.allowed));
      const cell = `${route.key} as ${cred}`;
      const code = res.json?.error?.code;
      if (want.allowed) {
        if (!route.ok.includes(res.status)) wrong.push(`${cell}: ${res.status} ${String(res.text).slice(0, 140)} (want ${route.ok})`);
        if (cred === 'session') stripeBySession += stripe.requests.length - sent;
        continue;
      }
      if (res.status !== want.status || code !== want.code) {
        wrong.push(`${cell}: ${res.status} ${code} (want ${want.status} ${want.code}) ${String(res.text).slice(0, 120)}`);
        continue;
      }
      if (want.code === 'insufficient_scope') {
        if (JSON.stringify(res.json.error.details) !== JSON.stringify({ required_scope: want.required }))
          wrong.push(`${cell}: details ${JSON.stringify(res.json.error.details)} (want required_scope ${want.required})`);
        refusedScope.push([requestId, cred === 'other_tenant' ? B.id : A.id, want.required]);
      }
    }
  }
  const unsafe = routes.filter((r) => UNSAFE.has(r.method)).length;
  console.log(`authorisation matrix: ${routes.length} routes x ${CREDENTIALS.length} credentials (the CSRF-less session `
    + `on the ${unsafe} unsafe ones only) = ${cells} cells, ${refusedScope.length} of them 403 insufficient_scope`);
  assert.deepEqual(wrong, []);
  assert.equal(stripe.requests.length - stripeBefore, stripeBySession, 'no refused billing call reached Stripe');

  // every insufficient_scope refusal is in the audit trail, with its tenant and the scope it lacked
  psql('SELECT lattice.flush_deferred()');
  const ids = refusedScope.map(([id]) => `'${id}'`).join(',');
  const audited = Object.fromEntries(psql(`SELECT request_id, user_id || ' ' || target FROM lattice.audit_log
      WHERE action = 'auth.insufficient_scope' AND request_id IN (${ids})`).split('\n').filter(Boolean).map((l) => l.split('|')));
  const missing = refusedScope.filter(([id, user, need]) => audited[id] !== `${user} ${need}`);
  assert.deepEqual(missing, [], 'insufficient_scope refusals without their audit row');
});
