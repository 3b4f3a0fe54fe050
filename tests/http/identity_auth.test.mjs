// The identity HTTP contract against a real shim and PostgreSQL:
// sign-up, login, logout, me, sessions, token, keys; each 401 cause
// distinct; cookie attributes; CSRF; revocation at once; rotation grace;
// tampered / alg:none JWTs; no hash in any answer; audit rows written.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startShim } from './lib.mjs';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';

const sql = (q) => execFileSync('psql', ['-XAtq', '-v', 'ON_ERROR_STOP=1', '-c', q], { encoding: 'utf8' }).trim();
let shim;
let base;
const bodies = [];   // every answer's text, checked for hashes at the end


async function call(method, path, { body, key, bearer, cookies, csrf } = {}) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (key) headers['X-Lattice-API-Key'] = key;
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (cookies) headers.Cookie = Object.entries(cookies).map(([k, v]) => `${k}=${v}`).join('; ');
  if (csrf) headers['X-CSRF-Token'] = csrf;
  const res = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  bodies.push(text);
  return { status: res.status, headers: res.headers, json: text ? JSON.parse(text) : null };
}
const code = (r) => r.json?.error?.code;

function cookiesOf(res) {
  const out = {};
  for (const c of res.headers.getSetCookie()) {
    const [pair, ...attrs] = c.split(';').map((s) => s.trim());
    const [name, value] = pair.split('=');
    out[name] = { value, attrs };
  }
  return out;
}

before(async () => {
  shim = await startShim();
  base = shim.url;
});

after(async () => { await shim?.stop(); });

const email = `http-${randomUUID()}@example.com`;
const password = 'a fine long password';
let user;
let session;
let csrf;

test('sign-up answers 201 with the user and both cookies', async () => {
  const r = await call('POST', '/api/v1/auth/signup', { body: { email: email.toUpperCase(), password, name: 'Http' } });
  assert.equal(r.status, 201);
  assert.deepEqual(Object.keys(r.json.user).sort(), ['email', 'id', 'name']);
  assert.equal(r.json.user.email, email);
  user = r.json.user.id;
  const c = cookiesOf(r);
  assert.match(c.lattice_session.value, /^[A-Za-z0-9_-]{43}$/);
  for (const a of ['HttpOnly', 'SameSite=Lax', 'Path=/']) assert.ok(c.lattice_session.attrs.includes(a), a);
  assert.ok(!c.lattice_session.attrs.includes('Secure'), 'no Secure without TLS');
  assert.ok(!c.lattice_csrf.attrs.includes('HttpOnly'), 'the CSRF cookie is readable');
  session = c.lattice_session.value;
  csrf = c.lattice_csrf.value;
});

test('bad sign-ups are refused with clear codes', async () => {
  assert.equal(code(await call('POST', '/api/v1/auth/signup', { body: { email, password, name: 'Again' } })), 'email_taken');
  assert.equal(code(await call('POST', '/api/v1/auth/signup', { body: { email: 'x' + email, password: 'short', name: 'S' } })), 'invalid_password');
  assert.equal(code(await call('POST', '/api/v1/auth/signup', { body: { email: 'nope', password, name: 'S' } })), 'invalid_email');
});

test('each missing or wrong credential has its own 401 code', async () => {
  assert.equal(code(await call('GET', '/api/v1/auth/me')), 'missing_credentials');
  assert.equal(code(await call('GET', '/api/v1/auth/me', { key: 'ltc_nope' })), 'invalid_api_key');
  assert.equal(code(await call('GET', '/api/v1/auth/me', { bearer: 'a.b.c' })), 'invalid_token');
  assert.equal(code(await call('GET', '/api/v1/auth/me', { cookies: { lattice_session: 'x'.repeat(43) } })), 'invalid_session');
  const wrong = await call('POST', '/api/v1/auth/login', { body: { email, password: 'not the password' } });
  const unknown = await call('POST', '/api/v1/auth/login', { body: { email: 'no-' + email, password } });
  assert.equal(wrong.status, 401);
  assert.deepEqual(wrong.json.error.code, 'invalid_credentials');
  assert.deepEqual({ ...unknown.json.error, request_id: 0 }, { ...wrong.json.error, request_id: 0 },
    'a wrong email and a wrong password answer the same');
});

test('the session cookie reads; writes need the CSRF token', async () => {
  const me = await call('GET', '/api/v1/auth/me', { cookies: { lattice_session: session } });
  assert.equal(me.status, 200);
  assert.equal(me.json.user.id, user);
  assert.equal(me.json.auth.method, 'session');
  assert.deepEqual(me.json.auth.scopes, ['ingest', 'read'], 'a session may do what either scope allows');
  const noCsrf = await call('POST', '/api/v1/keys', { body: { name: 'x' }, cookies: { lattice_session: session, lattice_csrf: csrf } });
  assert.equal(noCsrf.status, 403);
  assert.equal(code(noCsrf), 'csrf_failed');
});

let key;
let keyId;
test('keys: created once in full, listed without it', async () => {
  const r = await call('POST', '/api/v1/keys', { body: { name: 'plugin' }, cookies: { lattice_session: session, lattice_csrf: csrf }, csrf });
  assert.equal(r.status, 201);
  assert.match(r.json.key, /^ltc_[A-Za-z0-9_-]{43}$/);
  assert.equal(r.json.prefix, r.json.key.slice(0, 12));
  assert.deepEqual(r.json.scopes, ['ingest'], 'a key is the plugin\'s unless asked otherwise');
  key = r.json.key;
  keyId = r.json.id;
  const list = await call('GET', '/api/v1/keys', { cookies: { lattice_session: session } });
  assert.equal(list.status, 200);
  assert.equal(list.json.keys.length, 1);
  assert.equal(list.json.keys[0].id, keyId);
  assert.deepEqual(list.json.keys[0].scopes, ['ingest']);
  assert.equal(list.json.keys[0].key, undefined);
  assert.equal(list.json.keys[0].key_hash, undefined);
  // keys are managed from a session only: a key cannot list, create or revoke keys
  for (const [method, path, body] of [['GET', '/api/v1/keys'], ['POST', '/api/v1/keys', { name: 'minted by a key' }],
                                      ['DELETE', `/api/v1/keys/${keyId}`]]) {
    const refused = await call(method, path, { key, body });
    assert.equal(refused.status, 403, `${method} ${path} with a key`);
    assert.equal(code(refused), 'insufficient_scope');
    assert.deepEqual(refused.json.error.details, { required_scope: 'session' });
  }
  assert.equal(sql(`SELECT count(*) FROM lattice.api_keys WHERE user_id = '${user}'`), '1', 'the key minted nothing');
  assert.equal(sql(`SELECT revoked_at IS NULL FROM lattice.api_keys WHERE id = '${keyId}'`), 't', 'nor revoked itself');
});

test('keys: scopes are chosen at creation, and only ingest and read exist', async () => {
  const auth = { cookies: { lattice_session: session, lattice_csrf: csrf }, csrf };
  const both = await call('POST', '/api/v1/keys', { body: { name: 'reader', scopes: ['read', 'ingest'] }, ...auth });
  assert.equal(both.status, 201);
  assert.deepEqual([...both.json.scopes].sort(), ['ingest', 'read']);
  const me = await call('GET', '/api/v1/auth/me', { key: both.json.key });
  assert.equal(me.json.auth.method, 'api_key');
  assert.deepEqual([...me.json.auth.scopes].sort(), ['ingest', 'read']);
  for (const scopes of [[], ['admin'], ['ingest', 'billing'], 'read', [1], null]) {
    const bad = await call('POST', '/api/v1/keys', { body: { name: 'bad', scopes }, ...auth });
    assert.equal(bad.status, 400, `scopes ${JSON.stringify(scopes)}`);
    assert.equal(code(bad), 'invalid_scopes', `scopes ${JSON.stringify(scopes)}`);
  }
  assert.equal((await call('DELETE', `/api/v1/keys/${both.json.id}`, auth)).status, 204);
  assert.equal(sql(`SELECT count(*) FROM lattice.api_keys WHERE user_id = '${user}' AND revoked_at IS NULL`), '1',
    'no refused request created a key');
});

test('read-only use is kept: GETs stamp the key and slide the session, written by any backend', async () => {
  sql(`UPDATE lattice.api_keys SET last_used = NULL WHERE id = '${keyId}'`);
  sql(`UPDATE lattice.sessions SET last_seen_at = now() - interval '10 minutes' WHERE user_id = '${user}' AND revoked_at IS NULL`);
  const before = sql(`SELECT max(idle_expires_at) FROM lattice.sessions WHERE user_id = '${user}' AND revoked_at IS NULL`);
  assert.equal((await call('GET', '/api/v1/auth/me', { key })).status, 200);
  assert.equal((await call('GET', '/api/v1/auth/me', { cookies: { lattice_session: session } })).status, 200);
  // psql is none of the shim's backends: the queue is shared
  assert.ok(Number(sql('SELECT lattice.flush_deferred()')) >= 0);
  assert.equal(sql(`SELECT last_used > now() - interval '1 minute' FROM lattice.api_keys WHERE id = '${keyId}'`), 't',
    'the key shows its use');
  assert.equal(sql(`SELECT max(last_seen_at) > now() - interval '1 minute' FROM lattice.sessions WHERE user_id = '${user}' AND revoked_at IS NULL`), 't',
    'the session was seen');
  assert.equal(sql(`SELECT max(idle_expires_at) > '${before}'::timestamptz FROM lattice.sessions WHERE user_id = '${user}' AND revoked_at IS NULL`), 't',
    'and its idle expiry slid');
});

test('tokens: traded for a key, tampered and alg:none refused', async () => {
  const t = await call('POST', '/api/v1/auth/token', { key, body: {} });
  assert.equal(t.status, 200);
  assert.ok(t.json.expires_in <= 3600 && t.json.expires_in > 3500);
  const me = await call('GET', '/api/v1/auth/me', { bearer: t.json.token });
  assert.equal(me.json.auth.method, 'bearer');
  const [h, p, s] = t.json.token.split('.');
  const claims = JSON.parse(Buffer.from(p, 'base64url'));
  assert.equal(claims.scope, 'ingest', 'a token from a key carries the key\'s scopes, no more');
  assert.deepEqual(me.json.auth.scopes, ['ingest']);
  // ...so it may not read, and a token never ingests
  const read = await call('GET', '/api/v1/services', { bearer: t.json.token });
  assert.equal(read.status, 403);
  assert.deepEqual(read.json.error.details, { required_scope: 'read' });
  assert.equal(code(await call('POST', '/api/v1/ingest/metadata', { bearer: t.json.token, body: {} })), 'credential_not_accepted');
  // a session's token carries both
  const st = await call('POST', '/api/v1/auth/token', { cookies: { lattice_session: session, lattice_csrf: csrf }, csrf, body: {} });
  assert.equal(st.status, 200);
  assert.deepEqual(JSON.parse(Buffer.from(st.json.token.split('.')[1], 'base64url')).scope.split(' ').sort(), ['ingest', 'read']);
  assert.equal((await call('GET', '/api/v1/services', { bearer: st.json.token })).status, 200);
  const forged = Buffer.from(JSON.stringify({ ...claims, exp: claims.exp + 86400 })).toString('base64url');
  assert.equal(code(await call('GET', '/api/v1/auth/me', { bearer: `${h}.${forged}.${s}` })), 'invalid_token');
  const none = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url');
  assert.equal(code(await call('GET', '/api/v1/auth/me', { bearer: `${none}.${p}.` })), 'unsupported_alg');
  assert.equal(code(await call('POST', '/api/v1/auth/token', { bearer: t.json.token, body: {} })), 'credential_not_accepted');
});

test('rotation honours the old key until its grace ends', async () => {
  const refused = await call('POST', `/api/v1/keys/${keyId}/rotate`, { key, body: { grace_seconds: 2 } });
  assert.equal(refused.status, 403, 'a key cannot rotate itself');
  assert.deepEqual(refused.json.error.details, { required_scope: 'session' });
  const r = await call('POST', `/api/v1/keys/${keyId}/rotate`,
    { cookies: { lattice_session: session, lattice_csrf: csrf }, csrf, body: { grace_seconds: 2 } });
  assert.equal(r.status, 201);
  assert.ok(r.json.old_key_expires_at);
  assert.deepEqual(r.json.scopes, ['ingest'], 'the new key keeps the old one\'s scopes');
  assert.equal((await call('GET', '/api/v1/auth/me', { key })).status, 200, 'old key in its grace');
  assert.equal((await call('GET', '/api/v1/auth/me', { key: r.json.key })).status, 200, 'new key');
  await new Promise((res) => setTimeout(res, 2500));
  assert.equal(code(await call('GET', '/api/v1/auth/me', { key })), 'expired_api_key');
  key = r.json.key;
  keyId = r.json.id;
});

test('a revoked key is refused on the next request', async () => {
  const r = await call('DELETE', `/api/v1/keys/${keyId}`, { cookies: { lattice_session: session, lattice_csrf: csrf }, csrf });
  assert.equal(r.status, 204);
  assert.equal(code(await call('GET', '/api/v1/auth/me', { key })), 'revoked_api_key');
  sql('SELECT lattice.flush_deferred()');  // the refusal rolled back; its audit row waited
  assert.equal(sql(`SELECT count(*) > 0 FROM lattice.audit_log WHERE action = 'key.used_after_revocation' AND target = '${keyId}'`), 't',
    'the revoked key\'s use is audited');
  assert.equal((await call('DELETE', `/api/v1/keys/${randomUUID()}`, { cookies: { lattice_session: session, lattice_csrf: csrf }, csrf })).status, 404);
});

test('sessions: login, list, revoke one, logout revokes the current one', async () => {
  const login = await call('POST', '/api/v1/auth/login', { body: { email, password } });
  assert.equal(login.status, 200);
  const c = cookiesOf(login);
  const second = { lattice_session: c.lattice_session.value, lattice_csrf: c.lattice_csrf.value };
  const list = await call('GET', '/api/v1/auth/sessions', { cookies: second });
  assert.equal(list.json.sessions.length, 2);
  const other = list.json.sessions.find((s) => !s.current);
  const del = await call('DELETE', `/api/v1/auth/sessions/${other.id}`, { cookies: second, csrf: second.lattice_csrf });
  assert.equal(del.status, 204);
  assert.equal(code(await call('GET', '/api/v1/auth/me', { cookies: { lattice_session: session } })), 'invalid_session');
  const out = await call('POST', '/api/v1/auth/logout', { cookies: second, csrf: second.lattice_csrf });
  assert.equal(out.status, 204);
  assert.ok(cookiesOf(out).lattice_session.attrs.includes('Max-Age=0'), 'the cookie is cleared');
  assert.equal(code(await call('GET', '/api/v1/auth/me', { cookies: second })), 'invalid_session');
});

test('no answer carries a password hash or a key hash; the audit trail has it all', () => {
  for (const b of bodies) {
    assert.ok(!b.includes('$argon2id'), 'no password hash');
    assert.ok(!b.includes('key_hash') && !b.includes('token_hash') && !b.includes('password_hash'), 'no hash field');
  }
  sql('SELECT lattice.flush_deferred()');  // refusals roll back; their audit rows wait
  const actions = sql(`SELECT string_agg(DISTINCT action, ',' ORDER BY action) FROM lattice.audit_log WHERE user_id = '${user}'`);
  for (const a of ['user.signup', 'login.success', 'login.failure', 'logout', 'token.issued', 'key.created',
                   'key.rotated', 'key.revoked', 'session.revoked', 'auth.insufficient_scope']) {
    assert.ok(actions.split(',').includes(a), `audit has ${a} (${actions})`);
  }
});
