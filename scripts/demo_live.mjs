// make run's living demo: while make run runs, every service of the demo
// shop keeps reporting like its plugin would, through the shim's ingest API
// with the demo ingest key:
//   - trace batches every 5 s per service (lognormal latencies, rare slow
//     tails, ~0.1-1% 5xx and some 4xx), and the 5xx as error batches;
//   - metadata every 300 s per service and environment (staging first);
//   - now and then a deploy: a new version in staging, promoted to
//     production a minute later, sometimes with a new route;
//   - now and then an incident: one service slow and failing for 45 s;
//   - legacy-reports never reports (stopped: inactive once its last report
//     is older than lattice.ingest_inactive_after, 15 minutes).
// Per service that is at most 720 trace + 720 error + 24 metadata requests
// an hour (~1,464, the plugin's cadence) against the ingest budget of 3,600
// an hour with a burst of 120; in practice ~850.  Started only by
// scripts/run.sh (make run); LATTICE_DEMO=off / DEMO=off keeps it off.
//
//   LATTICE_DEMO_KEY=<ingest key> node scripts/demo_live.mjs BASE_URL STATE_FILE
import { SERVICES, Plugin, traffic, loadState, saveState, pick, sleep } from './demo_shop.mjs';

const [base, stateFile] = process.argv.slice(2);
const key = process.env.LATTICE_DEMO_KEY;
if (!stateFile || !key) { console.error('usage: LATTICE_DEMO_KEY=... demo_live.mjs BASE_URL STATE_FILE'); process.exit(2); }
const FLUSH_MS = 5_000;
const METADATA_MS = 300_000;
const plugin = new Plugin(base, key);
const state = loadState(stateFile);
const live = SERVICES.filter((s) => !s.stopped);
const incidents = new Map();   // service -> {factor, errors, until}
let stopping = false;
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { stopping = true; process.exit(0); });

let lastComplaint = 0;
function complain(err) {   // the shim going away at Ctrl-C is not news
  if (stopping || Date.now() - lastComplaint < 60_000) return;
  lastComplaint = Date.now();
  console.log(`demo: ${err.message.split('\n')[0]}`);
}
const added = (s, env) => state[s.name].added.filter((a) => a[0] === env).map((a) => a.slice(1));
const sendMetadata = async (s) => {
  if (s.staging) await plugin.metadata(s, 'staging', state[s.name].staging, added(s, 'staging'));
  await plugin.metadata(s, 'production', state[s.name].production, added(s, 'production'));
};

// One loop per service, like one plugin per process: flush what happened
// since the last flush, at most every FLUSH_MS; metadata every METADATA_MS.
async function service(s, offset) {
  await sleep(offset);
  let last = Date.now() - FLUSH_MS;
  let nextMetadata = Date.now() + METADATA_MS + offset * 10;
  for (;;) {
    const now = Date.now();
    const inc = incidents.get(s.name);
    const { traces, errors } = traffic(s.name, last, now, inc && inc.until > now ? inc : null, 0, added(s, 'production'));
    last = now;
    try {
      if (traces.length) await plugin.traces(s.name, traces.slice(-500));
      if (errors.length) await plugin.errors(s.name, 'production', errors.slice(-500));
      if (now >= nextMetadata) { await sendMetadata(s); nextMetadata = now + METADATA_MS; }
    } catch (err) { complain(err); }
    await sleep(FLUSH_MS);
  }
}

const bump = (v, minor) => {
  const [maj, min, pat] = v.split('-')[0].split('.').map(Number);
  return minor ? `${maj}.${min + 1}.0` : `${maj}.${min}.${pat + 1}`;
};

// A deploy every 2-4 minutes: services with a staging environment get the
// new version there first and in production a minute later.
async function deploys() {
  await sleep(45_000);
  while (!stopping) {
    const s = pick(live);
    const st = state[s.name];
    const from = s.staging ? st.staging : st.production;
    const minor = Math.random() < 0.4;
    const version = from.includes('-') ? from.split('-')[0] : bump(from, minor);   // an rc is released
    const known = new Set(st.added.map((a) => `${a[1]} ${a[2]}`));
    const route = minor ? s.later.find(([m, p]) => !known.has(`${m} ${p}`)) : null;
    const envs = s.staging ? ['staging', 'production'] : ['production'];
    try {
      for (const env of envs) {
        if (env === 'production' && s.staging) await sleep(60_000);
        if (route) st.added.push([env, ...route]);
        st[env] = version;
        saveState(stateFile, state);
        await sendMetadata(s);
        console.log(`demo: deploy ${s.name} ${version} to ${env}${route ? ` (new route ${route[0]} ${route[1]})` : ''}`);
      }
    } catch (err) { complain(err); }
    await sleep(120_000 + Math.random() * 120_000);
  }
}

// An incident every 3-6 minutes: one service slow and failing for 45 s.
async function trouble() {
  await sleep(90_000);
  while (!stopping) {
    const s = pick(live.filter((x) => x.name !== 'web-frontend'));
    incidents.set(s.name, { factor: 3 + Math.random() * 3, errors: 0.06 + Math.random() * 0.06, until: Date.now() + 45_000 });
    console.log(`demo: incident: ${s.name} slow and failing for 45 s`);
    await sleep(180_000 + Math.random() * 180_000);
  }
}

// what the next start's scripts/demo_seed.mjs fills in from
setInterval(() => { state.lastReport = Date.now(); saveState(stateFile, state); }, 15_000);

live.forEach((s, i) => service(s, Math.round((i * FLUSH_MS) / live.length)));
deploys();
trouble();
