// Shared by the OWASP API Security Top 10 files (owasp_*.test.mjs): tenants
// with data, raw requests from a loopback address of their own (so address
// quotas of other files are not touched), and a digest of every table.
import http from 'node:http';
import { psql } from './lib.mjs';
import { capturedBody as captured } from '../fixtures/captured.mjs';

export { captured };

// Sends one request on a connection of its own; body may be a string or
// Buffer (sent as is).  No keep-alive: between requests the tests block on
// psql, long enough for the shim to close an idle connection that node's
// agent would then reuse (ECONNRESET).
export function send(shim, method, path, { body, headers = {}, from = '127.0.66.1', timeout = 10000 } = {}) {
  const data = body === undefined ? null : Buffer.isBuffer(body) ? body : Buffer.from(body);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: shim.port, path, method, localAddress: from, timeout, agent: false,
      headers: { ...(data ? { 'Content-Length': data.length } : {}), ...headers } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        resolve({ status: res.statusCode, headers: res.headers, text, json });
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(data ?? undefined);
  });
}

// A tenant on a plan its tests cannot exhaust, with an API key, a session
// (+ CSRF) and a bearer token, and data of its own: a service (with routes,
// traces, an error group) sent through the shim as a plugin would.
export async function tenant(shim, tag) {
  psql(`INSERT INTO lattice.plans (id, name, price_cents, rate_limit_per_hour) VALUES ('owasp', 'OWASP', 0, 1000000)
        ON CONFLICT (id) DO NOTHING`);
  const email = `owasp-${tag}-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`;
  const password = 'correct horse battery staple';
  const id = psql(`SELECT lattice.create_user('${email}', '${password}', 'Owasp ${tag}')`);
  psql(`UPDATE lattice.users SET plan_id = 'owasp' WHERE id = '${id}'`);
  const key = psql(`SELECT lattice.create_api_key('${id}', 'owasp')`);
  const json = { 'Content-Type': 'application/json' };
  const login = await send(shim, 'POST', '/api/v1/auth/login', { body: JSON.stringify({ email, password }), headers: json, from: '127.0.66.2' });
  const cookies = Object.fromEntries([].concat(login.headers['set-cookie'] ?? []).map((c) => c.split(';')[0].split('=')));
  const token = (await send(shim, 'POST', '/api/v1/auth/token', { body: '{}', headers: { ...json, 'X-Lattice-API-Key': key } })).json?.token;
  const t = { id, email, password, key, session: cookies.lattice_session, csrf: cookies.lattice_csrf, token };
  const k = { ...json, 'X-Lattice-API-Key': key };
  const meta = JSON.parse(captured('ingest_metadata'));
  meta.service.name = `owasp-${tag}`;
  t.serviceId = (await send(shim, 'POST', '/api/v1/ingest/metadata', { body: JSON.stringify(meta), headers: k })).json.serviceId;
  const traces = JSON.parse(captured('traces_batch'));
  for (const tr of traces.traces) tr.service_id = meta.service.name;
  await send(shim, 'POST', '/api/v1/performance/traces/batch', { body: JSON.stringify(traces), headers: k });
  const errors = JSON.parse(captured('errors_batch'));
  for (const e of errors.errors) e.service_id = meta.service.name;
  t.errorId = (await send(shim, 'POST', '/api/v1/errors/batch', { body: JSON.stringify(errors), headers: k })).json.results[0].id;
  t.keyId = psql(`SELECT id FROM lattice.api_keys WHERE user_id = '${id}' LIMIT 1`);
  t.sessionId = psql(`SELECT id FROM lattice.sessions WHERE user_id = '${id}' LIMIT 1`);
  t.auth = { 'X-Lattice-API-Key': key };
  t.cookie = { Cookie: `lattice_session=${t.session}; lattice_csrf=${t.csrf}`, 'X-CSRF-Token': t.csrf };
  return t;
}

// md5 of every row of every table of the extension's schemas, except what a
// refused request may legitimately touch: the audit log (failed sign-ins are
// audited), usage roll-ups, last-used / last-seen stamps, and the delivery
// state of outbox jobs (the shim's worker retries them in the background;
// their rows themselves are compared).
const VOLATILE = new Set(['lattice.audit_log', 'lattice.audit_unattributed', 'lattice.usage_hourly']);
const VOLATILE_COLUMNS = ['last_used', 'last_seen_at', 'updated_at'];
const OUTBOX_DELIVERY = ['status', 'attempts', 'next_attempt_at', 'locked_until', 'last_error', 'response_status', 'response', 'done_at'];
export function digest() {
  const tables = psql(`SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                        WHERE c.relkind IN ('r', 'p') AND n.nspname LIKE 'lattice%' ORDER BY 1`).split('\n').filter((t) => !VOLATILE.has(t));
  const q = tables.map((t) => [t, [...VOLATILE_COLUMNS, ...(t === 'lattice.outbox' ? OUTBOX_DELIVERY : [])].map((c) => ` - '${c}'`).join('')])
    .map(([t, drop]) => `SELECT '${t}' || ' ' || coalesce(md5(string_agg((to_jsonb(x)${drop})::text, ',' ORDER BY (to_jsonb(x)${drop})::text)), '-') FROM ${t} x`).join(' UNION ALL ');
  return Object.fromEntries(psql(q).split('\n').map((l) => l.split(' ')));
}

export function changedTables(before, after) {
  return Object.keys({ ...before, ...after }).filter((t) => before[t] !== after[t]);
}

// The contract's error shape, as a boolean (for matrices).
export const isJsonError = (r) => r.headers['content-type']?.startsWith('application/json') && typeof r.json?.error?.code === 'string' &&
  typeof r.json.error.message === 'string' && typeof r.json.error.request_id === 'string';
