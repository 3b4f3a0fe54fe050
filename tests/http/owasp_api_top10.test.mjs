// The OWASP API Security Top 10 (2023) as a matrix, one test per risk that
// applies to Lattice, through a real shim and PostgreSQL.  (API6 sensitive
// business flows, API7 SSRF and API9 inventory: the outbound calls go only to
// the configured Stripe and SMTP, and the route table is the inventory.)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { startShim, psql } from './lib.mjs';
import { send, tenant, digest, changedTables, isJsonError, captured } from './owasp_lib.mjs';
import { createTestFunctions } from './shim_fixtures.mjs';

let shim, A, B;
before(async () => {
  createTestFunctions(); // _test_fail: an unexpected SQLSTATE, for the 500 body
  shim = await startShim({ env: { LATTICE_SHIM_BODY_MAX: '65536' } });
  A = await tenant(shim, 'a');
  B = await tenant(shim, 'b');
});
after(async () => { await shim?.stop(); });

const json = { 'Content-Type': 'application/json' };

test('API1 broken object level authorisation: every endpoint taking an id, with the other tenant\'s id -> 404, nothing changed', async () => {
  // session: routes that manage the account take a dashboard session only;
  // B's key and token are refused them by scope (403) before any lookup
  const rows = [
    ['GET', `/api/v1/services/${A.serviceId}`],
    ['GET', `/api/v1/services/${A.serviceId}/changes`],
    ['GET', `/api/v1/services/${A.serviceId}/impact`],
    ['GET', `/api/v1/graph/dependencies/${A.serviceId}`],
    ['GET', `/api/v1/graph/dependents/${A.serviceId}`],
    ['GET', `/api/v1/errors/${A.errorId}`],
    ['PATCH', `/api/v1/errors/${A.errorId}`, JSON.stringify({ status: 'resolved' }), 'session'],
    ['POST', `/api/v1/keys/${A.keyId}/rotate`, '{}', 'session'],
    ['DELETE', `/api/v1/keys/${A.keyId}`, undefined, 'session'],
    ['DELETE', `/api/v1/auth/sessions/${A.sessionId}`, undefined, 'session'],
  ];
  const before = digest();
  const wrong = [];
  for (const [method, path, body, need] of rows) {
    for (const [kind, headers] of [['api key', B.auth], ['session', B.cookie], ['bearer', { Authorization: `Bearer ${B.token}` }]]) {
      const r = await send(shim, method, path, { body, headers: { ...json, ...headers } });
      const expected = need === 'session' && kind !== 'session' ? 403 : 404;
      if (r.status !== expected || !isJsonError(r) || r.text.includes(A.id)) wrong.push(`${kind} ${method} ${path}: ${r.status} ${r.text.slice(0, 120)}`);
      else if (expected === 403 && r.json.error.details?.required_scope !== 'session') wrong.push(`${kind} ${method} ${path}: ${r.text.slice(0, 120)}`);
    }
  }
  // the graph path between two of A's nodes, asked by B
  const p = await send(shim, 'GET', `/api/v1/graph/path?from=${A.serviceId}&to=${A.serviceId}`, { headers: B.auth });
  if (![400, 404].includes(p.status) || p.text.includes(A.serviceId)) wrong.push(`graph/path: ${p.status} ${p.text.slice(0, 120)}`);
  assert.deepEqual(wrong, []);
  assert.deepEqual(changedTables(before, digest()), [], 'no table changed');
  assert.equal((await send(shim, 'GET', `/api/v1/errors/${A.errorId}`, { headers: A.auth })).status, 200, 'A still reads its own');
});

test('API2 broken authentication: every credential kind, every failure -> JSON 401/403 with its own code, no data', async () => {
  const jwt = A.token.split('.');
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const claims = JSON.parse(Buffer.from(jwt[1], 'base64url'));
  const revoked = psql(`SELECT lattice.create_api_key('${A.id}', 'to revoke')`);
  psql(`UPDATE lattice.api_keys SET revoked_at = now() WHERE user_id = '${A.id}' AND name = 'to revoke'`);
  const cases = [
    ['no credential', {}],
    ['empty API key', { 'X-Lattice-API-Key': '' }],
    ['malformed API key', { 'X-Lattice-API-Key': 'not-a-key' }],
    ['unknown API key', { 'X-Lattice-API-Key': 'ltc_' + 'A'.repeat(43) }],
    ['API key with a changed last character', { 'X-Lattice-API-Key': A.key.slice(0, -1) + (A.key.endsWith('A') ? 'B' : 'A') }],
    ['revoked API key', { 'X-Lattice-API-Key': revoked }],
    ['empty bearer', { Authorization: 'Bearer ' }],
    ['bearer not a JWT', { Authorization: 'Bearer abc' }],
    ['bearer with forged claims', { Authorization: `Bearer ${jwt[0]}.${b64({ ...claims, sub: B.id })}.${jwt[2]}` }],
    ['bearer expired (re-signed claims)', { Authorization: `Bearer ${jwt[0]}.${b64({ ...claims, exp: 1 })}.${jwt[2]}` }],
    ['bearer alg none', { Authorization: `Bearer ${b64({ alg: 'none', typ: 'JWT' })}.${jwt[1]}.` }],
    ['bearer HS256 signed with a guessed secret', { Authorization: `Bearer ${jwt[0]}.${jwt[1]}.${createHmac('sha256', 'secret').update(`${jwt[0]}.${jwt[1]}`).digest('base64url')}` }],
    ['Basic auth', { Authorization: 'Basic ' + Buffer.from(`${A.email}:${A.password}`).toString('base64') }],
    ['unknown session', { Cookie: `lattice_session=${'x'.repeat(43)}` }],
    ['session of another format', { Cookie: 'lattice_session=1' }],
  ];
  const wrong = [];
  const codes = new Set();
  for (const [name, headers] of cases) {
    const r = await send(shim, 'GET', '/api/v1/services', { headers });
    codes.add(r.json?.error?.code);
    if (r.status !== 401 || !isJsonError(r) || r.text.includes('owasp-a')) wrong.push(`${name}: ${r.status} ${r.text.slice(0, 100)}`);
  }
  // a session on an unsafe method: the CSRF token is required and must match
  const noCsrf = await send(shim, 'POST', '/api/v1/keys', { body: '{"name":"x"}', headers: { ...json, Cookie: A.cookie.Cookie } });
  const badCsrf = await send(shim, 'POST', '/api/v1/keys', { body: '{"name":"x"}', headers: { ...json, ...A.cookie, 'X-CSRF-Token': 'x'.repeat(43) } });
  for (const [name, r] of [['session without CSRF header', noCsrf], ['session with a wrong CSRF header', badCsrf]])
    if (r.status !== 403 || !isJsonError(r)) wrong.push(`${name}: ${r.status} ${r.text.slice(0, 100)}`);
  // ingest takes API keys only
  const viaSession = await send(shim, 'POST', '/api/v1/ingest/metadata', { body: captured('ingest_metadata'), headers: { ...json, ...A.cookie } });
  if (![401, 403].includes(viaSession.status)) wrong.push(`ingest with a session: ${viaSession.status}`);
  // a logged-out session is dead
  const s = await send(shim, 'POST', '/api/v1/auth/login', { body: JSON.stringify({ email: B.email, password: B.password }), headers: json, from: '127.0.66.2' });
  const c = Object.fromEntries([].concat(s.headers['set-cookie']).map((x) => x.split(';')[0].split('=')));
  const cookie = { Cookie: `lattice_session=${c.lattice_session}; lattice_csrf=${c.lattice_csrf}`, 'X-CSRF-Token': c.lattice_csrf };
  assert.equal((await send(shim, 'POST', '/api/v1/auth/logout', { headers: cookie })).status < 300, true);
  const dead = await send(shim, 'GET', '/api/v1/auth/me', { headers: cookie });
  if (dead.status !== 401) wrong.push(`logged-out session: ${dead.status}`);
  // wrong password: 401, and the same answer as an unknown account
  const wrongPw = await send(shim, 'POST', '/api/v1/auth/login', { body: JSON.stringify({ email: A.email, password: 'wrong password here' }), headers: json, from: '127.0.66.2' });
  const noUser = await send(shim, 'POST', '/api/v1/auth/login', { body: JSON.stringify({ email: 'nobody-' + A.email, password: 'wrong password here' }), headers: json, from: '127.0.66.2' });
  if (wrongPw.status !== 401 || noUser.status !== 401 || wrongPw.json.error.code !== noUser.json.error.code) wrong.push(`login: ${wrongPw.status}/${noUser.status}`);
  assert.deepEqual(wrong, []);
  assert.ok(codes.size >= 3, `distinct codes: ${[...codes].join(', ')}`);
});

test('API3 property level: no hash, secret or other tenant\'s field in any answer; user_id in a payload is ignored', async () => {
  const paths = ['/api/v1/auth/me', '/api/v1/auth/sessions', '/api/v1/keys', '/api/v1/usage', '/api/v1/services',
    `/api/v1/services/${A.serviceId}`, `/api/v1/services/${A.serviceId}/changes`, '/api/v1/errors', `/api/v1/errors/${A.errorId}`,
    '/api/v1/graph', '/api/v1/performance/metrics', '/api/v1/billing', '/api/v1/billing/invoices'];
  // a key reads what the read scope allows; the account's own pages (sessions,
  // keys, billing) answer a key 403 and are read with the session
  const sessionOnly = new Set(['/api/v1/auth/sessions', '/api/v1/keys', '/api/v1/billing', '/api/v1/billing/invoices']);
  const forbiddenKey = /hash|secret|password|pepper|salt|^key$|token_hash/i;
  const bad = [];
  const walk = (v, where) => {
    if (Array.isArray(v)) v.forEach((x, i) => walk(x, `${where}[${i}]`));
    else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) { if (forbiddenKey.test(k)) bad.push(`${where}.${k}`); walk(x, `${where}.${k}`); }
  };
  for (const p of paths) {
    for (const [kind, headers] of [['key', A.auth], ['session', { Cookie: A.cookie.Cookie }]]) {
      const r = await send(shim, 'GET', p, { headers });
      if (kind === 'key' && sessionOnly.has(p)) assert.equal(r.status, 403, `${p} with a key: ${r.status}`);
      else assert.ok(r.status === 200 || r.status === 402 || r.status === 404, `${p} with a ${kind}: ${r.status}`);
      walk(r.json, p);
      for (const s of [B.id, B.email, B.key, A.key, A.session, B.session, '$argon2']) if (s && r.text.includes(s)) bad.push(`${p} contains ${s.slice(0, 12)}…`);
    }
  }
  assert.deepEqual(bad, []);

  // user_id (and other ownership fields) in payloads change nothing of B
  const before = psql(`SELECT count(*) FROM lattice.services WHERE user_id = '${B.id}'`);
  const meta = JSON.parse(captured('ingest_metadata'));
  meta.user_id = B.id; meta.service.user_id = B.id; meta.service.userId = B.id; meta.service.name = 'owasp-a-smuggled';
  const r = await send(shim, 'POST', '/api/v1/ingest/metadata', { body: JSON.stringify(meta), headers: { ...json, ...A.auth } });
  assert.ok(r.status === 200 || r.status === 400, `${r.status}`);
  assert.equal(psql(`SELECT count(*) FROM lattice.services WHERE user_id = '${B.id}'`), before, 'nothing created for B');
  if (r.status === 200) assert.equal(psql(`SELECT user_id FROM lattice.services WHERE id = '${r.json.serviceId}'`), A.id);
  const p = await send(shim, 'PATCH', `/api/v1/errors/${A.errorId}`, { body: JSON.stringify({ status: 'ignored', user_id: B.id }), headers: { ...json, ...A.cookie } });
  assert.ok(p.status === 200 || p.status === 400, `${p.status}`);
  assert.equal(psql(`SELECT user_id FROM lattice.error_groups WHERE id = '${A.errorId}'`), A.id);
  const k = await send(shim, 'POST', '/api/v1/keys', { body: JSON.stringify({ name: 'owasp', user_id: B.id }), headers: { ...json, ...A.cookie } });
  assert.equal(k.status, 201, k.text);
  if (k.status === 201 || k.status === 200) assert.equal(psql(`SELECT user_id FROM lattice.api_keys WHERE id = '${k.json.id ?? k.json.key?.id}'`), A.id);
});

test('API4 unrestricted resource consumption: each limit answers a JSON 4xx', async () => {
  const big = await send(shim, 'POST', '/api/v1/ingest/metadata', { body: 'x'.repeat(65537), headers: { ...json, ...A.auth } });
  assert.equal(big.status, 413);
  assert.ok(isJsonError(big));
  const longUri = await send(shim, 'GET', '/api/v1/services?' + 'a'.repeat(5000), { headers: A.auth });
  assert.equal(longUri.status, 414);
  const bigHeaders = await send(shim, 'GET', '/api/v1/services', { headers: { ...A.auth, 'X-Big': 'b'.repeat(20000) } }).catch(() => ({ status: 431 }));
  assert.equal(bigHeaders.status, 431);
  const deep = await send(shim, 'POST', '/api/v1/errors/batch', { body: '{"errors":' + '['.repeat(5000) + ']'.repeat(5000) + '}', headers: { ...json, ...A.auth } });
  assert.ok(deep.status === 400 || deep.status === 413, `deep nesting: ${deep.status}`);
  assert.ok(isJsonError(deep));
  const graph = await send(shim, 'GET', `/api/v1/graph/dependencies/${A.serviceId}?depth=100000`, { headers: A.auth });
  assert.ok(graph.status === 400 || graph.status === 200, `depth bound: ${graph.status}`);
  // the tenant quota: a plan of 3 an hour
  psql(`INSERT INTO lattice.plans (id, name, price_cents, rate_limit_per_hour) VALUES ('owasp-3', 'Tiny', 0, 3) ON CONFLICT (id) DO NOTHING`);
  const id = psql(`SELECT lattice.create_user('owasp-quota-${Date.now()}@example.com', 'correct horse battery staple', 'Q')`);
  psql(`UPDATE lattice.users SET plan_id = 'owasp-3' WHERE id = '${id}'`);
  const key = psql(`SELECT lattice.create_api_key('${id}', 'q')`);
  const st = [];
  for (let i = 0; i < 5; i++) st.push(await send(shim, 'GET', '/api/v1/services', { headers: { 'X-Lattice-API-Key': key } }));
  assert.deepEqual(st.map((r) => r.status), [200, 200, 200, 429, 429]);
  assert.ok(Number(st[3].headers['retry-after']) > 0 && isJsonError(st[3]));
});

test('API5 broken function level authorisation: lattice_admin functions are unreachable through the API', async () => {
  // the shim's role can run nothing outside lattice_http / lattice_worker
  const reachable = psql(`SELECT n.nspname || '.' || p.proname FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname LIKE 'lattice%' AND n.nspname NOT IN ('lattice_http', 'lattice_worker')
       AND pg_catalog.has_function_privilege('lattice_shim', p.oid, 'EXECUTE')
       AND pg_catalog.has_schema_privilege('lattice_shim', n.oid, 'USAGE')`);
  assert.equal(reachable, '', 'functions the API role may call outside its schemas');
  for (const f of ['lattice.act_as_tenant', 'lattice.test_set_tenant', 'lattice.create_user', 'lattice.webhook_secret_add'])
    assert.throws(() => psql(`SET ROLE lattice_shim; SELECT ${f}(NULL${f.endsWith('tenant') && f.includes('act') ? ', NULL' : f === 'lattice.create_user' ? ', NULL, NULL' : ''})`), /permission denied/, f);
  // and no path or method reaches them
  const probes = [['GET', '/api/v1/admin'], ['POST', '/api/v1/act_as_tenant'], ['GET', '/api/v1/../../lattice/act_as_tenant'],
    ['POST', '/api/v1/services'], ['DELETE', `/api/v1/services/${A.serviceId}`], ['PUT', '/api/v1/keys'], ['GET', '/api/v1/_test/../keys']];
  for (const [m, p] of probes) {
    const r = await send(shim, m, p, { headers: { ...A.auth, 'X-HTTP-Method-Override': 'DELETE' } });
    assert.ok([400, 404, 405].includes(r.status) && isJsonError(r), `${m} ${p}: ${r.status}`);
  }
  const override = await send(shim, 'POST', `/api/v1/keys/${A.keyId}`, { headers: { ...A.auth, 'X-HTTP-Method-Override': 'DELETE' } });
  assert.equal(override.status, 405, 'no method override');
  assert.equal(psql(`SELECT revoked_at IS NULL FROM lattice.api_keys WHERE id = '${A.keyId}'`), 't');
});

test('API8 security misconfiguration: headers, CORS, error bodies without internals', async () => {
  const ok = await send(shim, 'GET', '/api/v1/services', { headers: { ...A.auth, Origin: 'https://evil.example' } });
  assert.equal(ok.headers['x-content-type-options'], 'nosniff');
  assert.match(ok.headers['content-type'], /^application\/json/);
  assert.equal(ok.headers['access-control-allow-origin'], undefined, 'no CORS for unknown origins');
  assert.ok(!/civetweb|postgres/i.test(ok.headers.server ?? ''), `Server header: ${ok.headers.server}`);
  assert.ok(ok.headers['cache-control'] === undefined || /no-store|private/.test(ok.headers['cache-control']), 'tenant data not cached publicly');
  const answers = [
    await send(shim, 'GET', '/api/v1/_test/fail?sqlstate=XX000', { headers: A.auth }),
    await send(shim, 'GET', '/api/v1/nope', { headers: A.auth }),
    await send(shim, 'GET', `/api/v1/services/not-a-uuid`, { headers: A.auth }),
    await send(shim, 'POST', '/api/v1/ingest/metadata', { body: '{"service":', headers: { ...json, ...A.auth } }),
    await send(shim, 'GET', '/api/v1/services', { headers: { 'X-Lattice-API-Key': "' OR 1=1 --" } }),
  ];
  for (const r of answers) {
    assert.ok(r.status >= 400 && isJsonError(r), `${r.status} ${r.text.slice(0, 80)}`);
    assert.doesNotMatch(r.text, /SQLSTATE|ERROR:|syntax error at|lattice_http\.|pg_catalog|stack|\.c:\d+|CONTEXT|PL\/pgSQL|at character/i, r.text);
  }
  assert.equal(answers[0].status, 500);
  assert.equal(answers[0].json.error.message, 'internal error');
});

test('API10 unsafe consumption of APIs: forged Stripe webhooks are refused and change nothing', async () => {
  const payload = JSON.stringify({ id: 'evt_owasp', type: 'customer.subscription.updated', created: Math.floor(Date.now() / 1000),
    data: { object: { id: 'sub_x', customer: 'cus_x', status: 'active', metadata: { user_id: A.id } } } });
  const ts = Math.floor(Date.now() / 1000);
  const sig = (secret, t = ts, body = payload) => `t=${t},v1=${createHmac('sha256', secret).update(`${t}.${body}`).digest('hex')}`;
  // a real secret is configured (run alone, no billing file added one): the forgeries must fail on their own
  psql(`SELECT lattice.webhook_secret_add('whsec_owasp_${process.pid}_${Date.now()}')`);
  const before = digest();
  const cases = [
    ['no signature', {}],
    ['empty signature', { 'Stripe-Signature': '' }],
    ['garbage signature', { 'Stripe-Signature': 'nonsense' }],
    ['signed with a guessed secret', { 'Stripe-Signature': sig('whsec_guess') }],
    ['v0 scheme only', { 'Stripe-Signature': `t=${ts},v0=${'0'.repeat(64)}` }],
    ['timestamp from last year', { 'Stripe-Signature': sig('whsec_guess', ts - 365 * 86400) }],
    ['many v1 entries', { 'Stripe-Signature': `t=${ts},` + Array.from({ length: 50 }, () => `v1=${'a'.repeat(64)}`).join(',') }],
  ];
  for (const [name, headers] of cases) {
    const r = await send(shim, 'POST', '/api/v1/webhooks/stripe', { body: payload, headers: { ...json, ...headers }, from: '127.0.66.3' });
    assert.ok(r.status >= 400 && r.status < 500 && isJsonError(r), `${name}: ${r.status} ${r.text.slice(0, 100)}`);
  }
  assert.deepEqual(changedTables(before, digest()), [], 'nothing recorded');
  assert.equal(psql("SELECT count(*) FROM lattice.stripe_events WHERE id = 'evt_owasp'"), '0');
});
