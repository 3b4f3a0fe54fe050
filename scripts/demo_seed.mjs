// make run: fills the demo tenant through the real ingest path, the way the
// services' plugins would: each service's metadata (routes, packages, version)
// in production and, for some, staging; then its recent traffic as trace
// batches (caller_service gives the graph its edges) and its 5xx as error
// batches.  scripts/demo_seed.sql made the account and its keys.
//
//   LATTICE_DEMO_KEY=<ingest key> LATTICE_DEMO_READ_KEY=<read key> \
//       node scripts/demo_seed.mjs BASE_URL STATE_FILE
//
// LATTICE_DEMO_BACKFILL_MIN (default 120): minutes of past traffic to send.
import { SERVICES, CALLS, Plugin, traffic, loadState, saveState, byName } from './demo_shop.mjs';

const [base, stateFile] = process.argv.slice(2);
const key = process.env.LATTICE_DEMO_KEY;
const readKey = process.env.LATTICE_DEMO_READ_KEY;
if (!stateFile || !key || !readKey) {
  console.error('usage: LATTICE_DEMO_KEY=... LATTICE_DEMO_READ_KEY=... demo_seed.mjs BASE_URL STATE_FILE');
  process.exit(2);
}
const backfillMin = Number(process.env.LATTICE_DEMO_BACKFILL_MIN ?? 120);
const plugin = new Plugin(base, key);
const state = loadState(stateFile);
const t0 = Date.now();

// Which services the tenant has (read key, the API): the service that
// stopped reporting is registered once, on the first start, and never again.
const res = await fetch(`${base}/api/v1/services?limit=200`, { headers: { 'X-Lattice-API-Key': readKey } });
if (res.status !== 200) throw new Error(`GET /api/v1/services: ${res.status} ${await res.text()}`);
const known = new Set((await res.json()).services.filter((s) => !s.isExternal && s.status !== 'external').map((s) => s.name));
const fresh = (s) => !known.has(s.name);
const reporting = SERVICES.filter((s) => !s.stopped || fresh(s));

// 1. metadata: staging first, then production, so production is the newest
//    registration of each name (traces carry no environment and go to it)
const added = (s, env) => state[s.name].added.filter((a) => a[0] === env).map((a) => a.slice(1));
await Promise.all(reporting.map(async (s) => {
  if (s.staging) await plugin.metadata(s, 'staging', state[s.name].staging, added(s, 'staging'));
  await plugin.metadata(s, 'production', state[s.name].production, added(s, 'production'));
}));

// 2. the traffic since the demo last reported (make run was stopped) or of
//    the last LATTICE_DEMO_BACKFILL_MIN minutes, batched as the plugin
//    flushes it (at most 500 traces a request).  The stopped service's calls
//    end 10 minutes before now.
const now = Date.now();
const from = Math.max(now - backfillMin * 60_000, state.lastReport ?? 0);
const stoppedAt = now - Math.min(10, backfillMin / 3) * 60_000;
let nTraces = 0;
let nErrors = 0;
await Promise.all(reporting.map(async (s) => {
  const { traces, errors } = traffic(s.name, from, now, null,
    SERVICES.some((x) => x.stopped && fresh(x)) ? stoppedAt : 0, added(s, 'production'));
  for (let i = 0; i < traces.length; i += 500) await plugin.traces(s.name, traces.slice(i, i + 500));
  for (let i = 0; i < errors.length; i += 500) await plugin.errors(s.name, 'production', errors.slice(i, i + 500));
  nTraces += traces.length;
  nErrors += errors.length;
}));

// 3. a release candidate that fails in staging
await plugin.errors('orders', 'staging', [0, 1, 2].map((i) => ({
  type: 'TypeError', message: "Cannot read properties of null (reading 'currency')", file: 'src/orders/totals.ts',
  fn: 'sumLines', line: 27, method: 'POST', path: '/orders', at: now - i * 41_000 })));
nErrors += 3;

state.lastReport = Date.now();
saveState(stateFile, state);
const envs = SERVICES.filter((s) => s.staging).length;
const edges = CALLS.filter(([a, b]) => byName[a] && byName[b]).length;
console.log(`demo: ${reporting.length} services reported through ${base}/api/v1 (${envs} also in staging, ${edges} call paths): `
  + `${nTraces} traces, ${nErrors} errors, ${plugin.sent} requests, ${((Date.now() - t0) / 1000).toFixed(1)} s`);
