// Faults while the simulated plugins keep sending; TAP.
//
//   PostgreSQL restarted fast, then immediate   -> JSON 503 while down, the
//                                                  same shim recovers by itself
//   pg_terminate_backend of the shim's backends -> replaced
//   shim SIGKILLed and restarted                -> no half-applied submission
//   statement_timeout hit (a shim with 1 ms)    -> JSON 504, nothing written
// and at the end: every acknowledged submission is in the database, and what
// is there beyond them is whole batches of those whose outcome was unknown.
// Recovery times are printed as TAP comments.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { spawn } from 'node:child_process';
import { startShim, request, SHIM_BIN } from '../http/lib.mjs';
import { Load, psql } from '../load/loadgen.mjs';

const ROOT = process.env.LATTICE_ROOT ?? new URL('../..', import.meta.url).pathname;
let n = 0;
const ok = (cond, name, diag = []) => {
  n++;
  console.log(`${cond ? 'ok' : 'not ok'} ${n} - ${name}`);
  if (!cond) for (const d of [].concat(diag).slice(0, 20)) console.log(`#   ${d}`);
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const recoveries = [];

console.log('1..16');
const PLUGINS = 60;
const shimEnv = { LATTICE_SHIM_THREADS: String(PLUGINS + 16), LATTICE_SHIM_POOL_SIZE: '6', LATTICE_SHIM_ACCESS_LOG: 'off' };
let shim = await startShim({ env: shimEnv });
const port = shim.port;
// plan load-fast: these plugins send faster than the real plan's ingest
// budget allows for long, so that traffic is in flight at every fault
const load = new Load({ url: shim.url, plugins: PLUGINS, tenants: 15, greedy: 0, tag: 'fault', plan: 'load-fast',
  intervals: { metadata: 3000, traces: 1000, errors: 4000 } });
await load.setup();
load.start();
await sleep(4000);

// Watches the answers from `from` on: resolves with the first 2xx of a
// request sent at or after `after`, and collects every status meanwhile.
function watch(from) {
  const seen = {};
  const bad = [];
  let after = Infinity, resolveOk;
  const firstOk = new Promise((r) => { resolveOk = r; });
  const off = load.onResult((r) => {
    if (r.started < from) return;
    const s = r.status || 'network';
    seen[s] = (seen[s] ?? 0) + 1;
    if (r.status === 503 && !(r.json?.error?.code === 'unavailable' && r.headers['retry-after'])) bad.push(JSON.stringify(r.json));
    if (r.status >= 200 && r.status < 300 && r.started >= after) resolveOk(Date.now());
  });
  return {
    seen, bad,
    okAfter(t) { after = t; return Promise.race([firstOk, sleep(30000).then(() => null)]); },
    stop: off,
  };
}

// Starts the shim again on its old port (startShim picks a new one).
async function restartShim(onPort) {
  const proc = spawn(SHIM_BIN, [], { stdio: 'ignore', env: { ...process.env, LATTICE_SHIM_LISTEN: '127.0.0.1',
    LATTICE_SHIM_PORT: String(onPort), LATTICE_SHIM_TEST_ROUTES: '1', ...shimEnv } });
  const exited = new Promise((r) => proc.on('exit', (code, signal) => r({ code, signal })));
  const url = `http://127.0.0.1:${onPort}`;
  for (let i = 0; i < 200; i++) {
    try { if ((await fetch(`${url}/api/v1/health`, { signal: AbortSignal.timeout(500) })).status === 200) break; } catch { /* not yet */ }
    await sleep(25);
  }
  return { port: onPort, url, proc, exited,
    stop(signal = 'SIGTERM') { if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal); return exited; } };
}

async function pgRestart(mode) {
  const pid = shim.proc.pid;
  const t0 = Date.now();
  const w = watch(t0);
  // async: the plugins keep sending while the database is down
  await promisify(execFile)(`${ROOT}/scripts/cluster.sh`, ['restart', process.env.LATTICE_CLUSTER, mode]);
  const up = Date.now();
  const okAt = await w.okAfter(up);
  w.stop();
  const nonOk = Object.entries(w.seen).filter(([s]) => !(s >= 200 && s < 300));
  console.log(`# restart ${mode}: database down->up ${up - t0} ms, first acknowledged submission ${okAt ? okAt - up : 'never'} ms after it is up; answers meanwhile ${JSON.stringify(w.seen)}`);
  recoveries.push([`PostgreSQL restart ${mode}`, okAt ? okAt - up : null, w.seen[503] ?? 0]);
  ok(okAt !== null && okAt - up < 10000, `restart ${mode}: ingest acknowledged again ${okAt ? okAt - up : '-'} ms after the database is up`);
  ok(nonOk.every(([s]) => s === '503') && w.bad.length === 0 && shim.proc.pid === pid && shim.proc.exitCode === null,
    `restart ${mode}: only JSON 503 unavailable + Retry-After meanwhile (${JSON.stringify(Object.fromEntries(nonOk))}), same shim process`, w.bad);
}

await pgRestart('fast');
await sleep(2000);
await pgRestart('immediate');
await sleep(2000);

// --- the shim's connections killed from the server side ---
{
  const before = psql("SELECT pid FROM pg_catalog.pg_stat_activity WHERE application_name = 'lattice-shim' ORDER BY pid").split('\n').filter(Boolean);
  const t0 = Date.now();
  const w = watch(t0);
  const killed = Number(psql("SELECT count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity WHERE application_name = 'lattice-shim'"));
  const okAt = await w.okAfter(Date.now());
  await sleep(1500);
  w.stop();
  const after = psql("SELECT pid FROM pg_catalog.pg_stat_activity WHERE application_name = 'lattice-shim' ORDER BY pid").split('\n').filter(Boolean);
  console.log(`# pg_terminate_backend: ${killed} of ${before.length} connections killed; first acknowledged ${okAt ? okAt - t0 : 'never'} ms later; now ${after.length} connections, none of the old; answers meanwhile ${JSON.stringify(w.seen)}`);
  recoveries.push(['pg_terminate_backend (all shim connections)', okAt ? okAt - t0 : null, w.seen[503] ?? 0]);
  ok(killed > 0 && okAt !== null, `terminated backends: ingest acknowledged again after ${okAt ? okAt - t0 : '-'} ms`);
  ok(after.length > 0 && after.every((p) => !before.includes(p)), `terminated backends replaced by new ones (${after.length})`);
  ok(Object.keys(w.seen).every((s) => s < 300 || s === '503') && w.bad.length === 0, 'terminated backends: only JSON 503 besides 2xx', w.bad);
}

// --- the shim SIGKILLed mid-load and started again on its port ---
{
  await sleep(1000);
  const t0 = Date.now();
  const w = watch(t0);
  shim.proc.kill('SIGKILL');
  await shim.exited;
  shim = await restartShim(port);
  const up = Date.now();
  const okAt = await w.okAfter(up);
  w.stop();
  console.log(`# shim SIGKILL: restarted in ${up - t0} ms, first acknowledged ${okAt ? okAt - up : 'never'} ms after; answers meanwhile ${JSON.stringify(w.seen)}`);
  recoveries.push(['shim SIGKILL + restart', okAt ? okAt - t0 : null, w.seen.network ?? 0]);
  ok(okAt !== null, `shim killed: the plugins are acknowledged again ${okAt ? okAt - t0 : '-'} ms after the kill`);
}

// --- statement_timeout: a second shim whose normal class allows 1 ms ---
{
  const slow = await startShim({ env: { LATTICE_SHIM_STATEMENT_TIMEOUT_NORMAL_MS: '1', LATTICE_SHIM_ACCESS_LOG: 'off', LATTICE_SHIM_POOL_SIZE: '1' } });
  const p = load.plugins[0];
  const body = p.metadataBody();
  body.service.version = 'timeout-probe';
  const r = await request(slow, '/api/v1/ingest/metadata', { method: 'POST', body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json', 'X-Lattice-API-Key': p.tenant.key } });
  ok(r.status === 504 && r.json?.error?.code === 'timeout' && !/statement|cancel|SQL|ERROR/i.test(r.json.error.message),
    `statement_timeout: JSON 504 timeout without internals (${r.status} ${r.text.slice(0, 160)})`);
  const stored = Number(psql(`SELECT count(*) FROM lattice.service_changes c JOIN lattice.services s ON s.id = c.service_id
    WHERE s.user_id = '${p.tenant.id}' AND c.new_value = 'timeout-probe'`));
  ok(stored === 0, 'statement_timeout: the timed-out snapshot wrote nothing');
  const after = await request(slow, '/api/v1/usage', { headers: { 'X-Lattice-API-Key': p.tenant.readKey } });
  ok(after.status === 200, `statement_timeout: the same pooled connection serves the next request (${after.status})`);
  await slow.stop();
}

await sleep(3000);
await load.stop();
const v = load.verify();
const unknown = load.total('unknown', 'metadata') + load.total('unknown', 'traces') + load.total('unknown', 'errors');
console.log(`# ${load.requests} requests in ${((load.stoppedAt - load.startedAt) / 1000).toFixed(0)} s; statuses ${JSON.stringify(load.statuses)}`);
console.log(`# acknowledged ${load.total('acked', 'metadata')} snapshots, ${load.total('acked', 'traces')} traces, ${load.total('acked', 'errors')} errors; outcome unknown ${unknown} items; verified ${v.checked}`);
ok(v.missing.length === 0, `nothing acknowledged was lost across the faults (${v.checked} checked)`, v.missing);
ok(v.phantom.length === 0, 'beyond the acknowledged, only whole batches whose outcome was unknown (no half-applied submission)', v.phantom);

// A snapshot is applied whole: every registered service has its 7 routes and its packages.
const partial = psql(`SELECT s.name || ' ' || (SELECT count(*) FROM lattice.routes r WHERE r.service_id = s.id AND r.removed_at IS NULL)
                        || '/' || (SELECT count(*) FROM lattice.dependencies d WHERE d.service_id = s.id AND d.removed_at IS NULL)
                        FROM lattice.services s JOIN lattice.users u ON u.id = s.user_id
                       WHERE u.email LIKE 'fault-%' AND NOT s.is_external`).split('\n').filter(Boolean);
const shapes = new Set(partial.map((l) => l.split(' ')[1]));
ok(partial.length === PLUGINS && shapes.size === 1 && [...shapes][0].startsWith('7/'), `every service holds a whole snapshot (routes/packages: ${[...shapes].join(', ')})`, partial.slice(0, 10));
const fives = Object.entries(load.statuses).filter(([s]) => s >= 500 && s !== '503');
ok(fives.length === 0, `no 5xx other than 503 during the faults (${JSON.stringify(Object.fromEntries(fives))})`, load.notes);
ok(psql('SELECT count(*) FROM lattice.services') > 0 && psql("SELECT 'ok'") === 'ok', 'the database answers after the faults');

console.log('# recovery times (ms from the database being up, or from the fault for terminate/SIGKILL):');
for (const [what, ms, meanwhile] of recoveries) console.log(`#   ${what.padEnd(46)} ${String(ms).padStart(6)} ms  (${meanwhile} refused or failed meanwhile)`);
await shim.stop();
