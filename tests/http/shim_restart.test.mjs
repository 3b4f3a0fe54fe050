// A PostgreSQL restart while requests flow: 503 JSON while the database is
// down, answers again after, the same shim process throughout.  Also the
// bounded pool wait (503 + Retry-After when every connection is busy).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { startShim, request, assertErrorShape, eventually, ROOT } from './lib.mjs';
import { createTestFunctions, dropTestFunctions } from './shim_fixtures.mjs';

let shim;
before(async () => {
  createTestFunctions();
  shim = await startShim({ env: { LATTICE_SHIM_POOL_SIZE: '2', LATTICE_SHIM_POOL_WAIT_MS: '200' } });
});
after(async () => {
  await shim?.stop();
  dropTestFunctions();
});

test('waiting for a connection is bounded: 503 with Retry-After, never a hang', async () => {
  const slow = [request(shim, '/api/v1/_test/sleep?ms=1200'), request(shim, '/api/v1/_test/sleep?ms=1200')];
  await sleep(150);
  const t0 = Date.now();
  const r = await request(shim, '/ready');
  assertErrorShape(assert, r, 503, 'unavailable');
  assert.equal(r.headers.get('retry-after'), '1');
  assert.ok(Date.now() - t0 < 1000);
  for (const s of await Promise.all(slow)) assert.equal(s.status, 200);
  assert.equal((await request(shim, '/ready')).status, 200);
});

test('PostgreSQL restart while requests flow: 503s while down, recovery after, no shim restart', async () => {
  const cluster = process.env.LATTICE_CLUSTER;
  assert.ok(cluster, 'LATTICE_CLUSTER is set by tests/run.sh');
  const pid = shim.proc.pid;
  assert.equal((await request(shim, '/ready')).status, 200);

  const statuses = [];
  const bad = [];
  let running = true;
  const flow = (async () => {
    while (running) {
      try {
        const r = await request(shim, '/ready', { timeout: 5000 });
        statuses.push(r.status);
        if (r.status !== 200) {
          if (r.status !== 503 || r.json?.error?.code !== 'unavailable' || !r.headers.get('retry-after')) bad.push(r);
        }
      } catch (e) {
        bad.push(String(e));
      }
      await sleep(20);
    }
  })();
  await sleep(200);
  // stop, hold the database down for a moment, start it again
  // 2 s: long enough for a pooler in between (PgBouncer checks its
  // query_wait_timeout about once a second) to give up and answer too
  execFileSync(`${ROOT}/scripts/cluster.sh`, ['stop', cluster]);
  await sleep(2000);
  execFileSync(`${ROOT}/scripts/cluster.sh`, ['start', cluster, process.env.PGPORT], { stdio: 'ignore' });
  await eventually(async () => (await request(shim, '/ready')).status === 200, { timeout: 15000, interval: 100 });
  await sleep(200);
  running = false;
  await flow;

  assert.deepEqual(bad, [], 'only 200 or JSON 503 with Retry-After');
  assert.ok(statuses.includes(503), 'some requests saw the database down');
  assert.equal(statuses.at(-1), 200, 'recovered');
  assert.equal(shim.proc.pid, pid);
  assert.equal(shim.proc.exitCode, null, 'the shim never exited');
  // after recovery, every pooled connection works again
  for (let i = 0; i < 6; i++) assert.equal((await request(shim, '/ready')).status, 200);
  const m = (await request(shim, '/metrics')).text;
  assert.match(m, /^lattice_pool_errors_total [1-9]\d*$/m);
});

test('scripts/cluster.sh restart: no request fails for a GET on a stale connection', async () => {
  assert.equal((await request(shim, '/ready')).status, 200);
  execFileSync(`${ROOT}/scripts/cluster.sh`, ['restart', process.env.LATTICE_CLUSTER]);
  // the pooled connections died with the old server; a GET retries once on a fresh one
  const r = await request(shim, '/ready');
  assert.equal(r.status, 200, r.text);
});
