// Live changes through failures: a PostgreSQL restart (the one LISTEN
// connection comes back by itself and open streams are told to refetch), and
// SIGTERM (every stream is closed at once instead of holding the drain).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { startShim, psql, eventually, ROOT } from './lib.mjs';
import { openStream, tenant, metric, EVENTS_ENV } from './events_lib.mjs';

let shim;
let a;
before(async () => {
  shim = await startShim({ env: EVENTS_ENV });
  a = await tenant(shim, 'restart');
});
after(async () => { await shim?.stop(); });

test('PostgreSQL restart: the listener reconnects, streams get a refetch, then changes flow again', async () => {
  const s = await openStream(shim, { headers: { 'X-Lattice-API-Key': a.key } });
  assert.equal(s.status, 200, s.text);
  await s.waitFor((e) => e.event === 'ready');
  assert.equal(await metric(shim, 'lattice_events_listener_connected'), 1);
  const pid = shim.proc.pid;
  execFileSync(`${ROOT}/scripts/cluster.sh`, ['restart', process.env.LATTICE_CLUSTER]);
  const refetch = await s.waitFor((e) => e.event === 'refetch', 15000);
  assert.deepEqual(refetch.data, { reason: 'reconnected' });
  assert.ok(s.open, 'the stream itself stayed open');
  assert.equal(shim.proc.pid, pid);
  assert.ok(await metric(shim, 'lattice_events_listener_reconnects_total') >= 1);
  assert.equal(await metric(shim, 'lattice_events_listener_connected'), 1);
  const v = Number(psql(`SELECT lattice.graph_bump('${a.id}')`));
  await s.waitFor((e) => e.event === 'graph' && e.data.version === v);
  // and a new client subscribes as before (once the pool, or a pooler in
  // between, has its own connections back)
  const fresh = await eventually(async () => {
    const f = await openStream(shim, { headers: { 'X-Lattice-API-Key': a.key } });
    return f.status === 200 ? f : null;
  }, { timeout: 15000, interval: 200 });
  assert.equal(fresh.status, 200);
  s.close();
  fresh.close();
});

test('SIGTERM closes every stream at once and the shim stops cleanly', async () => {
  const own = await startShim({ env: { ...EVENTS_ENV, LATTICE_SHIM_SHUTDOWN_TIMEOUT_MS: '30000' } });
  try {
    const streams = await Promise.all([
      openStream(own, { headers: { 'X-Lattice-API-Key': a.key } }),
      openStream(own, { headers: { Cookie: a.cookie } }),
    ]);
    for (const s of streams) assert.equal(s.status, 200, s.text);
    for (const s of streams) await s.waitFor((e) => e.event === 'ready');
    const t0 = Date.now();
    own.proc.kill('SIGTERM');
    const closedAt = await Promise.all(streams.map((s) => s.ended));
    const exit = await own.exited;
    assert.equal(exit.code, 0);
    // the streams did not hold the drain until shutdown_timeout_ms
    assert.ok(own.stderr.some((l) => /"stopped"/.test(l)), own.stderr.join('\n'));
    assert.ok(!own.stderr.some((l) => /still running/.test(l)));
    console.log(`# streams closed ${Math.max(...closedAt) - t0} ms after SIGTERM; shim exited after ${Date.now() - t0} ms`);
  } finally {
    await own.stop('SIGKILL'); // a failure above must not leave a shim holding the test process
  }
});
