// The load run, printing TAP and its figures as comments.
//
//   node tests/load/run.mjs [--plugins 200] [--seconds 30] [--tenants 50] [--greedy 2]
//
// Starts its own shim on the test cluster (tests/run.sh's environment),
// creates the tenants (well-behaved ones on the real plan, each plugin a
// service with its tenant's ingest-only key), runs the simulated plugins,
// then checks: no 5xx, every acknowledged submission stored (and nothing
// more), every acknowledgement counted in quota class ingest, 429 only for
// services over their ingest budget (never a well-behaved plugin), shim and
// backend memory flat.
import { parseArgs } from 'node:util';
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { startShim } from '../http/lib.mjs';
import { Load, RssSampler } from './loadgen.mjs';

const { values: a } = parseArgs({ options: {
  plugins: { type: 'string', default: process.env.LATTICE_LOAD_PLUGINS ?? '200' },
  seconds: { type: 'string', default: process.env.LATTICE_LOAD_SECONDS ?? '30' },
  tenants: { type: 'string', default: '50' },
  greedy: { type: 'string', default: '2' },
} });
const plugins = Number(a.plugins), seconds = Number(a.seconds);

// Everything printed also goes to LATTICE_LOAD_REPORT when set (make bench-load shows it).
const report = process.env.LATTICE_LOAD_REPORT;
if (report) { mkdirSync(dirname(report), { recursive: true }); writeFileSync(report, ''); }
const say = (line) => { console.log(line); if (report) appendFileSync(report, line + '\n'); };
let n = 0;
const ok = (cond, name, diag = []) => {
  n++;
  say(`${cond ? 'ok' : 'not ok'} ${n} - ${name}`);
  if (!cond) for (const d of diag.slice(0, 20)) say(`#   ${d}`);
};
const mb = (kb) => (kb / 1024).toFixed(1);

say('1..10');
const shim = await startShim({ env: {
  LATTICE_SHIM_THREADS: String(plugins + Number(a.greedy) + 16),
  LATTICE_SHIM_POOL_SIZE: '8',
  LATTICE_SHIM_ACCESS_LOG: 'off',
} });
const load = new Load({ url: shim.url, plugins, tenants: Math.min(Number(a.tenants), plugins), greedy: Number(a.greedy) });
const t0 = Date.now();
await load.setup();
ok(load.tenants.length === Math.min(Number(a.tenants), plugins) + Number(a.greedy), `${load.tenants.length} tenants created in ${Date.now() - t0} ms`);

const rss = new RssSampler(shim.proc.pid, Math.max(2000, seconds * 1000 / 30));
rss.start();
load.start();
const progress = setInterval(() => say(`# ${Math.round((Date.now() - load.startedAt) / 1000)} s: ${load.requests} requests ${JSON.stringify(load.statuses)}`),
  Math.max(10000, seconds * 1000 / 10));
await new Promise((r) => setTimeout(r, seconds * 1000));
clearInterval(progress);
await load.stop();
rss.stop();
const elapsed = (load.stoppedAt - load.startedAt) / 1000;

say(`# ${plugins} plugins + ${a.greedy} greedy, ${elapsed.toFixed(1)} s, ${load.requests} requests, ${(load.requests / elapsed).toFixed(1)} req/s`);
say(`# statuses ${JSON.stringify(load.statuses)}`);
for (const [k, v] of Object.entries(load.byKind)) say(`#   ${k}: ${JSON.stringify(v)}`);
const fivexx = Object.entries(load.statuses).filter(([s]) => Number(s) >= 500).reduce((x, [, c]) => x + c, 0);
ok(fivexx === 0, `no 5xx (${fivexx})`, load.notes);
ok((load.statuses.network ?? 0) === 0, `no connection failures (${load.statuses.network ?? 0})`, load.notes);

const v = load.verify();
say(`# acknowledged: ${load.total('acked', 'metadata')} snapshots, ${load.total('acked', 'traces')} traces, ${load.total('acked', 'errors')} errors; ` +
  `unknown outcome: ${load.total('unknown', 'metadata') + load.total('unknown', 'traces') + load.total('unknown', 'errors')}; verified ${v.checked} items in the database`);
ok(v.missing.length === 0, `every acknowledged submission is in the database (${v.checked} checked, ${v.missing.length} missing)`, v.missing);
ok(v.phantom.length === 0, `nothing stored beyond what was sent (${v.phantom.length})`, v.phantom);

ok(Object.keys(load.classes).length === 1 && load.classes.ingest > 0,
  `every acknowledged submission counted in quota class ingest (RateLimit-Class: ${JSON.stringify(load.classes)})`);
const rc = load.rateCheck();
const good = load.tenants.find((t) => t.plan === load.plan);
const cad = load.cadence();
say(`# well-behaved plugins on plan ${load.plan} (ingest ${good.limit}/h per service, burst ${good.burst}): sent ${cad.min}..${cad.max} requests/h per service (median ${cad.median}; the real plugin's default cadence is 1,452/h); ${rc.refusedGood.length} of them saw a 429`);
ok(rc.wrong.length === 0 && rc.refusedGood.length === 0, `429 only for services over their ingest budget (well-behaved plugins refused: ${rc.refusedGood.length})`, [...rc.wrong, ...rc.refusedGood]);
for (const g of rc.greedy) say(`# greedy service: budget ${g.limit}/h (burst ${g.burst}), ${g.ok} accepted, ${g.refused} refused ${JSON.stringify(g.scopes)}, first 429 after ${g.firstRefusal?.after} (Retry-After ${g.firstRefusal?.retryAfter})`);
ok(rc.greedy.length === 0 || rc.greedy.every((g) => g.refused > 0 && Number(g.firstRefusal.retryAfter) > 0 && g.firstRefusal.scope === 'ingest'),
  'the greedy services were refused by their ingest budget, with Retry-After');

say('# RSS (MB): t(s) shim | backends (count, mean RSS, mean private)');
const step = Math.max(1, Math.floor(rss.samples.length / 12));
rss.samples.forEach((s, i) => {
  if (i % step === 0 || i === rss.samples.length - 1)
    say(`#   ${String(Math.round((s.t - rss.samples[0].t) / 1000)).padStart(4)}  ${mb(s.shimRss).padStart(6)} | ${s.backends} ${mb(s.backendRss)} ${mb(s.backendAnon)}`);
});
const g = rss.growth();
// flat: after warm-up, growth within 25 % or 8 MB, whichever is larger
const flat = (from, grow) => grow <= Math.max(8192, from * 0.25);
ok(flat(g.from.shimRss, g.shimKb), `shim RSS flat after warm-up (${mb(g.from.shimRss)} -> ${mb(g.to.shimRss)} MB)`);
ok(flat(g.from.backendAnon, g.backendAnonKb), `backend private memory flat after warm-up (${mb(g.from.backendAnon)} -> ${mb(g.to.backendAnon)} MB per backend)`);

await shim.stop();
