// Rate limits through the real shim: RateLimit-* and X-RateLimit-* headers
// on allowed answers, 429 rate_limited with Retry-After, GET /api/v1/usage,
// tenants independent.  A plan of 5 requests an hour keeps it short.  The
// keys (made in SQL: ingest and read) count in the api class; the other
// classes (dashboard, ingest) are tests/http/rate_classes.test.mjs.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startShim } from './lib.mjs';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';

const sql = (q) => execFileSync('psql', ['-XAtq', '-v', 'ON_ERROR_STOP=1', '-c', q], { encoding: 'utf8' }).trim();
const plan = `rate_http_${process.pid}`;
let shim;
let base;
const users = [randomUUID(), randomUUID()];
const keys = [];


async function usage(key) {
  const res = await fetch(`${base}/api/v1/usage`, { headers: { 'X-Lattice-API-Key': key } });
  const text = await res.text();
  return { status: res.status, headers: res.headers, json: text ? JSON.parse(text) : null };
}

before(async () => {
  sql(`INSERT INTO lattice.plans (id, name, price_cents, rate_limit_per_hour) VALUES ('${plan}', 'five', 0, 5)`);
  for (const id of users) {
    sql(`INSERT INTO lattice.users (id, email, name, plan_id) VALUES ('${id}', '${id}@rate.test', 'r', '${plan}')`);
    keys.push(sql(`SELECT lattice.create_api_key('${id}', 'rate')`));
  }
  shim = await startShim();
  base = shim.url;
});

after(async () => {
  await shim?.stop();
  sql(`DELETE FROM lattice.users WHERE id IN ('${users.join("','")}'); DELETE FROM lattice.plans WHERE id = '${plan}'`);
});

test('an allowed answer carries the RateLimit-* and X-RateLimit-* headers', async () => {
  const r = await usage(keys[0]);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('ratelimit-limit'), '5');
  assert.equal(r.headers.get('ratelimit-remaining'), '4');
  assert.equal(r.headers.get('ratelimit-reset'), '720', 'one request of 5/hour is whole again in 720 s');
  assert.equal(r.headers.get('ratelimit-policy'), '5;w=3600');
  assert.equal(r.headers.get('ratelimit-class'), 'api', 'a key on a read route counts in the api class');
  assert.equal(r.headers.get('x-ratelimit-limit'), '5');
  assert.equal(r.headers.get('x-ratelimit-remaining'), '4');
  const reset = Number(r.headers.get('x-ratelimit-reset'));
  assert.ok(Math.abs(reset - (Math.floor(Date.now() / 1000) + 720)) <= 2, `X-RateLimit-Reset is a Unix time (${reset})`);
  assert.equal(r.headers.get('retry-after'), null, 'no Retry-After when allowed');
});

test('GET /api/v1/usage shows the tenant its quota and this hour', async () => {
  const r = await usage(keys[0]);
  assert.equal(r.status, 200);
  assert.equal(r.json.limit, 5);
  assert.equal(r.json.remaining, 3);
  assert.equal(r.json.period_seconds, 3600);
  assert.equal(r.json.reset_seconds, 1440);
  assert.equal(r.json.this_hour.requests, 2, 'this request counts too');
  assert.equal(r.json.this_hour.refused, 0);
  assert.ok(Array.isArray(r.json.history));
  // the same api class under classes, and the classes this key never touched
  const { api, dashboard, ingest } = r.json.classes;
  assert.deepEqual(api, { unit: 'account', limit: 5, burst: 5, period_seconds: 3600, used: 2, remaining: 3,
                          reset_seconds: 1440, refused_this_hour: 0, refused_24h: 0 });
  assert.equal(dashboard.unit, 'account');
  assert.equal(dashboard.used, 0);
  assert.equal(dashboard.limit, 7200, 'the plan\'s dashboard_per_hour (default)');
  assert.equal(ingest.unit, 'service');
  assert.equal(ingest.used, 0);
  assert.equal(ingest.limit, 3600, 'the plan\'s ingest_per_service_per_hour (default)');
  assert.equal(ingest.account_limit, 3600 * 100, 'per service x max_services');
  assert.deepEqual(ingest.services, []);
});

test('the request after the quota gets 429 rate_limited with Retry-After', async () => {
  for (const left of ['2', '1', '0']) {
    const r = await usage(keys[0]);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('ratelimit-remaining'), left);
  }
  const r = await usage(keys[0]);
  assert.equal(r.status, 429);
  assert.equal(r.json.error.code, 'rate_limited');
  assert.equal(r.headers.get('retry-after'), '720');
  assert.equal(r.headers.get('ratelimit-remaining'), '0');
  assert.equal(r.headers.get('ratelimit-limit'), '5');
  assert.equal(r.headers.get('x-ratelimit-remaining'), '0');
  assert.deepEqual(r.json.error.details, { scope: 'api', limit: 5, period_seconds: 3600, remaining: 0,
                                           reset_seconds: r.json.error.details.reset_seconds, retry_after_seconds: 720 });
  assert.ok(r.json.error.details.reset_seconds > 3000, `the whole hour's allowance is spent (${r.json.error.details.reset_seconds})`);
});

test('another tenant is not affected', async () => {
  const r = await usage(keys[1]);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('ratelimit-remaining'), '4');
});

test('rolled-up hours appear in the usage history', async () => {
  // tenant 0 is refused now, so tenant 1 reads its own history
  sql('SELECT lattice.rate_flush_usage()');
  const r = await usage(keys[1]);
  assert.equal(r.status, 200);
  assert.equal(r.json.history.length, 1);
  assert.equal(r.json.history[0].requests, 1, 'the one request rolled up before this one');
  assert.deepEqual(r.json.history[0].classes, { api: { requests: 1, refused: 0 } }, 'all of it in the api class');
  const rows = sql(`SELECT class || ':' || subject || ':' || requests || '/' || refused FROM lattice.usage_hourly
                     WHERE user_id = '${users[0]}'`);
  assert.equal(rows, 'api::5/1', 'tenant 0: 5 allowed and 1 refused in its api hour row');
});

test('an unauthenticated route is limited per address: 429 rate_limited with Retry-After', async () => {
  const { send } = await import('./owasp_lib.mjs');
  // an address of this test's own (counters live as long as the cluster)
  const from = `127.0.74.${(process.pid % 250) + 1}`;
  const signup = () => send(shim, 'POST', '/api/v1/auth/signup', { from, body: '{}', headers: { 'Content-Type': 'application/json' } });
  // 20 sign-ups an hour (lattice.rate_signup_per_hour): counted even when the body is refused
  let allowed = 0;
  let r = await signup();
  while (r.status === 400 && allowed < 25) { allowed++; r = await signup(); }
  assert.ok(allowed <= 20, `${allowed} allowed`);
  assert.equal(r.status, 429);
  assert.equal(r.headers['ratelimit-limit'], '20');
  assert.equal(r.headers['ratelimit-remaining'], '0');
  assert.equal(r.json.error.code, 'rate_limited');
  assert.equal(r.json.error.details.scope, 'addr_signup');
  assert.equal(r.headers['retry-after'], String(r.json.error.details.retry_after_seconds));
  assert.ok(Number(r.headers['retry-after']) > 0);
  // another address is not affected
  const other = await send(shim, 'POST', '/api/v1/auth/signup', { from: `127.0.75.${(process.pid % 250) + 1}`, body: '{}',
                                                                 headers: { 'Content-Type': 'application/json' } });
  assert.equal(other.status, 400);
});
