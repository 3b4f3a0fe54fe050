// GET /metrics, the database side and the new shim-side series (docs/shim.md,
// "Metrics"): pool waits, statement errors by SQLSTATE class, and what
// lattice_http.metrics_db() reads — outbox depth and oldest pending age,
// Stripe webhook events by outcome, this hour's refusals by quota class, the
// rate table — through a real shim.  The database figures are cached for a
// second, so checks after a change poll.  Last: with PostgreSQL stopped the
// shim's own series still answer and lattice_db_up is 0.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { startShim, request, psql, eventually, ROOT } from './lib.mjs';
import { createTestFunctions, dropTestFunctions } from './shim_fixtures.mjs';
import { send, captured } from './owasp_lib.mjs';

const FROM = `127.0.81.${(process.pid % 250) + 1}`;
const tag = `${process.pid}_${Date.now()}`;
let shim;
let user;

// The samples of a scrape: 'name{labels}' -> number
function samples(text) {
  const out = new Map();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}
async function scrape(s = shim) {
  const r = await request(s, '/metrics');
  assert.equal(r.status, 200);
  return samples(r.text);
}
const val = (m, key) => m.get(key) ?? 0;

before(async () => {
  createTestFunctions();
  shim = await startShim();
  user = psql(`SELECT lattice.create_user('metrics-ops-${randomUUID()}@example.com', 'correct horse battery staple', 'Metrics')`);
});
after(async () => {
  await shim?.stop();
  dropTestFunctions();
  if (user) psql(`DELETE FROM lattice.users WHERE id = '${user}'`);
});

test('the new series are there, with their types', async () => {
  const r = await request(shim, '/metrics');
  assert.equal(r.status, 200);
  const t = r.text;
  for (const [name, type] of [['lattice_db_up', 'gauge'], ['lattice_db_scrape_duration_seconds', 'gauge'],
                              ['lattice_pool_waits_total', 'counter'], ['lattice_pool_wait_seconds_total', 'counter'],
                              ['lattice_statement_errors_total', 'counter'], ['lattice_outbox_jobs', 'gauge'],
                              ['lattice_outbox_oldest_pending_seconds', 'gauge'], ['lattice_stripe_webhook_events', 'gauge'],
                              ['lattice_rate_used_this_hour', 'gauge'], ['lattice_rate_refused_this_hour', 'gauge'],
                              ['lattice_rate_table_size', 'gauge'], ['lattice_rate_table_entries', 'gauge'],
                              ['lattice_rate_table_evictions_total', 'counter']])
    assert.match(t, new RegExp(`^# TYPE ${name} ${type}$`, 'm'), name);
  const m = samples(t);
  assert.equal(m.get('lattice_db_up'), 1);
  for (const kind of ['stripe', 'email'])
    for (const state of ['pending', 'running', 'failed'])
      assert.ok(m.has(`lattice_outbox_jobs{kind="${kind}",state="${state}"}`), `${kind} ${state}`);
  for (const outcome of ['received', 'applied', 'stale', 'ignored', 'unmatched'])
    assert.ok(m.has(`lattice_stripe_webhook_events{outcome="${outcome}"}`), outcome);
  for (const c of ['api', 'ingest', 'dashboard', 'address']) {
    assert.ok(m.has(`lattice_rate_used_this_hour{class="${c}"}`), c);
    assert.ok(m.has(`lattice_rate_refused_this_hour{class="${c}"}`), c);
  }
  assert.equal(m.get('lattice_rate_table_size'), Number(psql('SHOW lattice.rate_table_size')));
  assert.ok(m.get('lattice_rate_table_entries') <= m.get('lattice_rate_table_size'));
  // aggregates only: no tenant, e-mail or address in any label
  assert.doesNotMatch(t, /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-/);
  assert.doesNotMatch(t, /@/);
});

test('an outbox job shows in the depth and the oldest pending age', async () => {
  const before = await scrape();
  // not due for a day, so the shim's worker leaves it pending
  const job = psql(`INSERT INTO lattice.outbox (account_id, kind, purpose, mail_to, mail_subject, mail_text, mail_html,
                                                created_at, next_attempt_at)
                    VALUES ('${user}', 'email', 'test.metrics', 'metrics@example.invalid', 's', 't', 'h',
                            now() - interval '20 minutes', now() + interval '1 day') RETURNING id`);
  try {
    const m = await eventually(async () => {
      const s = await scrape();
      return val(s, 'lattice_outbox_oldest_pending_seconds') >= 1200 ? s : null;
    }, { timeout: 5000, interval: 250 });
    assert.ok(val(m, 'lattice_outbox_jobs{kind="email",state="pending"}') >= 1);
    assert.ok(val(m, 'lattice_outbox_jobs{kind="email",state="pending"}') >=
              val(before, 'lattice_outbox_jobs{kind="email",state="pending"}') + 1 ||
              val(before, 'lattice_outbox_oldest_pending_seconds') < 1200);
  } finally {
    psql(`DELETE FROM lattice.outbox WHERE id = ${job}`);
  }
});

test('statement errors count by SQLSTATE class, PTnnn as class PT', async () => {
  const before = await scrape();
  assert.equal((await request(shim, '/api/v1/_test/fail?sqlstate=57014')).status, 504);
  assert.equal((await request(shim, '/api/v1/_test/fail?sqlstate=57014')).status, 504);
  assert.equal((await request(shim, '/api/v1/_test/fail?sqlstate=23505')).status, 409);
  assert.equal((await request(shim, '/api/v1/_test/fail?pt=404&code=nope')).status, 404);
  const m = await scrape();
  const d = (c) => val(m, `lattice_statement_errors_total{class="${c}"}`) - val(before, `lattice_statement_errors_total{class="${c}"}`);
  assert.equal(d('57'), 2);
  assert.equal(d('23'), 1);
  assert.equal(d('PT'), 1);
});

test('requests that wait for a pooled connection are counted, with their wait', async () => {
  const one = await startShim({ env: { LATTICE_SHIM_POOL_SIZE: '1' } });
  try {
    const before = await scrape(one);
    const rs = await Promise.all([0, 1, 2].map(() => request(one, '/api/v1/_test/sleep?ms=300')));
    assert.deepEqual(rs.map((r) => r.status), [200, 200, 200]);
    const m = await scrape(one);
    assert.ok(val(m, 'lattice_pool_waits_total') - val(before, 'lattice_pool_waits_total') >= 2);
    assert.ok(val(m, 'lattice_pool_wait_seconds_total') - val(before, 'lattice_pool_wait_seconds_total') >= 0.25,
              String(val(m, 'lattice_pool_wait_seconds_total')));
  } finally {
    await one.stop();
  }
});

test('a refused ingest request raises the ingest refusals of this hour', async () => {
  // counts are per clock hour: never straddle one
  const intoHour = Date.now() % 3600_000;
  if (intoHour > 3600_000 - 20_000) await sleep(3600_000 - intoHour + 1000);
  const plan = `metrics_ops_${tag}`;
  psql(`INSERT INTO lattice.plans (id, name, price_cents, ingest_per_service_per_hour) VALUES ('${plan}', 'm', 0, 3)`);
  psql(`UPDATE lattice.users SET plan_id = '${plan}' WHERE id = '${user}'`);
  const key = psql(`SELECT key FROM lattice.api_key_create('${user}', 'plugin', NULL, NULL, '{ingest}')`);
  const before = await scrape();
  const doc = JSON.parse(captured('ingest_metadata'));
  doc.service.name = `metrics-${tag}`;
  const statuses = [];
  for (let i = 0; i < 5; i++) {
    const r = await send(shim, 'POST', '/api/v1/ingest/metadata', { from: FROM,
      headers: { 'Content-Type': 'application/json', 'X-Lattice-API-Key': key }, body: JSON.stringify(doc) });
    statuses.push(r.status);
  }
  assert.equal(statuses.filter((s) => s === 429).length, 2, statuses.join(' '));
  const m = await eventually(async () => {
    const s = await scrape();
    return val(s, 'lattice_rate_refused_this_hour{class="ingest"}') >= val(before, 'lattice_rate_refused_this_hour{class="ingest"}') + 2 ? s : null;
  }, { timeout: 5000, interval: 250 });
  assert.ok(val(m, 'lattice_rate_used_this_hour{class="ingest"}') >= val(before, 'lattice_rate_used_this_hour{class="ingest"}') + 3);
  assert.ok(val(m, 'lattice_rate_table_entries') >= 1);
});

test('a scraping storm reads the database at most once a second', async () => {
  // every read has its own lattice_db_scrape_duration_seconds; cached answers repeat it
  // rounds of 12 at once: below the shim's 16 threads, which keep-alive clients hold
  const t0 = Date.now();
  const rs = [];
  for (let round = 0; round < 4; round++)
    rs.push(...await Promise.all(Array.from({ length: 12 }, () => request(shim, '/metrics'))));
  const elapsed = (Date.now() - t0) / 1000;
  assert.ok(rs.every((r) => r.status === 200 && /^lattice_db_up 1$/m.test(r.text)));
  const reads = new Set(rs.map((r) => r.text.match(/^lattice_db_scrape_duration_seconds (\S+)$/m)[1]));
  assert.ok(reads.size <= Math.ceil(elapsed) + 1, `${reads.size} reads for 48 scrapes in ${elapsed}s`);
});

test('PostgreSQL stopped: the shim-side series still answer, lattice_db_up 0; back up: 1', async () => {
  const cluster = process.env.LATTICE_CLUSTER;
  assert.ok(cluster, 'LATTICE_CLUSTER is set by tests/run.sh');
  await request(shim, '/ready');
  execFileSync(`${ROOT}/scripts/cluster.sh`, ['stop', cluster]);
  try {
    await sleep(1100); // past the cached read
    const t0 = Date.now();
    const r = await request(shim, '/metrics');
    assert.ok(Date.now() - t0 < 5000, 'answered without waiting for the database');
    assert.equal(r.status, 200);
    const m = samples(r.text);
    assert.equal(m.get('lattice_db_up'), 0);
    assert.equal(m.get('lattice_pool_size'), 4);
    assert.ok(m.get('lattice_http_requests_total{route="/ready",method="GET",status="200"}') >= 1);
    assert.ok(m.has('lattice_pool_waits_total') && m.has('lattice_http_connections_open'));
    assert.ok(![...m.keys()].some((k) => k.startsWith('lattice_outbox_') || k.startsWith('lattice_rate_')),
              'no database figure while it is down');
  } finally {
    execFileSync(`${ROOT}/scripts/cluster.sh`, ['start', cluster, process.env.PGPORT], { stdio: 'ignore' });
  }
  await eventually(async () => (await scrape()).get('lattice_db_up') === 1, { timeout: 15000, interval: 250 });
});
