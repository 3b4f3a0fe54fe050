// Simulated plugins for the load and fault suites.
//
// Each plugin is one service of one tenant, on its own keep-alive connection
// from its own loopback address (as real plugins come from their own hosts),
// with its tenant's ingest-only key (scope ingest, as the onboarding issues);
// each tenant also has a read-only key (tenant.readKey) for the read API.
// Ingest counts per service (the service name of the body): each plugin is
// its own budget, the plan's ingest_per_service_per_hour.
// It sends what the captured plugin sent (tests/fixtures/captured/): a
// metadata snapshot every few seconds (each a new version, so every
// acknowledged one is checkable), trace batches and error batches.  Every
// answer is counted; verify() then checks the database holds every
// acknowledged submission, and nothing it was never sent.
//
//   const load = new Load({ url, plugins: 200, tenants: 50 });   // plan: 'standard'
//   await load.setup();  load.start();  ...;  await load.stop();
//   const v = load.verify();   // { ok, checked, missing: [...], phantom: [...] }
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { capturedBody } from '../fixtures/captured.mjs';
import { execFileSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { setMaxListeners } from 'node:events';


export function psql(sql) {
  return execFileSync('psql', ['-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', process.env.PGDATABASE ?? 'lattice', '-c', sql], {
    encoding: 'utf8', env: { ...process.env, PGUSER: process.env.PGUSER ?? 'postgres' }, maxBuffer: 64 << 20,
  }).trim();
}

const captured = (kind) => JSON.parse(capturedBody(kind));
const METADATA = captured('ingest_metadata');
const TRACES = captured('traces_batch').traces;
const ERRORS = captured('errors_batch').errors;

// Plans, as ingest requests per hour per service (the quota class plugins
// count in): 'standard' is the real plan, as shipped (3,600 per service,
// burst lattice.rate_ingest_burst): well-behaved plugins must never meet it;
// 'load-small' is met by the greedy ones; 'load-fast' (no practical limit) is
// for the fault suite, whose plugins send faster than any real one to have
// traffic in flight at each fault.  null: the plan as it is in the database.
export const PLANS = { standard: null, 'load-fast': 100000000, 'load-small': 20 };

// Creates n tenants on plan (lattice.create_user + create_api_key as
// superuser): each { id, key (scope ingest), readKey (scope read), plan,
// limit and burst of one service's ingest budget }.
export function createTenants(n, plan, tag) {
  if (PLANS[plan] != null)
    psql(`INSERT INTO lattice.plans (id, name, price_cents, max_services, ingest_per_service_per_hour)
          VALUES ('${plan}', '${plan}', 0, 1000, ${PLANS[plan]})
          ON CONFLICT (id) DO UPDATE SET ingest_per_service_per_hour = EXCLUDED.ingest_per_service_per_hour`);
  const [limit, burst] = psql(`SELECT ingest_per_service_per_hour, LEAST(ingest_per_service_per_hour,
                                      pg_catalog.current_setting('lattice.rate_ingest_burst')::integer)
                                 FROM lattice.plans WHERE id = '${plan}'`).split('|').map(Number);
  const rows = psql(`WITH u AS (SELECT g, lattice.create_user('${tag}-' || g || '-' || pg_catalog.gen_random_uuid() || '@example.com',
                                  'correct horse battery staple', '${tag} ' || g) AS id
                          FROM pg_catalog.generate_series(1, ${n}) g)
                     SELECT u.id || ' ' || lattice.create_api_key(u.id, 'load plugin', ARRAY['ingest'])
                                 || ' ' || lattice.create_api_key(u.id, 'load reader', ARRAY['read'])
                       FROM u ORDER BY g`);
  const tenants = rows.split('\n').map((l) => { const [id, key, readKey] = l.split(' '); return { id, key, readKey, plan, limit, burst }; });
  psql(`UPDATE lattice.users SET plan_id = '${plan}' WHERE id IN (${tenants.map((t) => `'${t.id}'`).join(',')})`);
  return tenants;
}

class Plugin {
  constructor(load, index, tenant, service, peer, greedy) {
    Object.assign(this, { load, index, tenant, service, peer, greedy });
    this.agent = new http.Agent({ keepAlive: true, maxSockets: 1,
      localAddress: `127.0.${1 + Math.floor(index / 250)}.${2 + (index % 250)}` });
    this.version = 0;
    this.acked = { metadata: [], traces: 0, errors: 0 };
    this.unknown = { metadata: [], traces: 0, errors: 0 };
    this.unknownBatches = { traces: [], errors: [] }; // sizes, for the all-or-nothing check
    // this service's ingest budget, as the plugin saw it
    this.quota = { requests: 0, ok: 0, refused: 0, firstAt: 0, firstRefusal: null, scopes: {} };
  }

  send(path, body) {
    const data = Buffer.from(JSON.stringify(body));
    const url = new URL(path, this.load.url);
    return new Promise((resolve) => {
      const started = Date.now();
      const req = http.request({ host: url.hostname, port: url.port, path: url.pathname, method: 'POST', agent: this.agent,
        timeout: 20000, headers: { 'Content-Type': 'application/json', 'Content-Length': data.length,
          'X-Lattice-API-Key': this.tenant.key, 'User-Agent': 'lattice-loadgen' } }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          let json;
          try { json = JSON.parse(Buffer.concat(chunks).toString('utf8')); } catch { json = undefined; }
          resolve({ status: res.statusCode, json, headers: res.headers, started });
        });
        res.on('error', (e) => resolve({ status: 0, error: e.message, started }));
      });
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', (e) => resolve({ status: 0, error: e.message, started }));
      req.end(data);
    });
  }

  metadataBody() {
    const m = structuredClone(METADATA);
    const now = new Date().toISOString();
    this.version++;
    m.service.name = this.service;
    m.service.version = `2.${this.index}.${this.version}`;
    m.service.environment = 'production';
    m.service.id = `inst${this.index}x${this.load.tag.replace(/[^a-z0-9]/g, '')}`;
    m.service.firstSeen = m.service.lastSeen = now;
    for (const r of m.routes) { r.serviceId = m.service.id; r.firstSeen = r.lastSeen = now; }
    for (const d of m.dependencies) { d.serviceId = m.service.id; d.firstSeen = d.lastSeen = now; }
    return m;
  }

  tracesBody() {
    const n = 1 + Math.floor(Math.random() * 10);
    const now = Date.now();
    const traces = [];
    for (let i = 0; i < n; i++) {
      const t = structuredClone(TRACES[i % TRACES.length]);
      t.service_id = this.service;
      t.caller_service = this.peer;
      t.start_time = new Date(now - i * 3).toISOString();
      traces.push(t);
    }
    return { traces };
  }

  errorsBody() {
    const n = 1 + Math.floor(Math.random() * 3);
    const errors = [];
    for (let i = 0; i < n; i++) {
      const e = structuredClone(ERRORS[0]);
      e.service_id = this.service;
      e.environment = 'production';
      e.error_type = ['TypeError', 'RangeError', 'Error'][i % 3];
      e.timestamp = new Date().toISOString();
      errors.push(e);
    }
    return { errors };
  }

  async submit(kind) {
    let path, body, items, version;
    if (kind === 'metadata') { body = this.metadataBody(); path = '/api/v1/ingest/metadata'; version = body.service.version; items = 1; }
    else if (kind === 'traces') { body = this.tracesBody(); path = '/api/v1/performance/traces/batch'; items = body.traces.length; }
    else { body = this.errorsBody(); path = '/api/v1/errors/batch'; items = body.errors.length; }
    const r = await this.send(path, body);
    this.load.record(this, kind, r);
    const acked = r.status >= 200 && r.status < 300;
    const surely_not = r.status >= 400 && r.status < 500; // refused before anything was written
    const target = acked ? this.acked : surely_not ? null : this.unknown;
    if (acked && kind !== 'metadata' && r.json?.failed !== 0)
      this.load.note(`plugin ${this.index}: ${kind} acknowledged with failures ${JSON.stringify(r.json).slice(0, 300)}`);
    if (target) {
      if (kind === 'metadata') target.metadata.push(version);
      else target[kind] += acked ? (r.json?.processed ?? 0) : items; // the answer says how many it applied
      if (!acked && kind !== 'metadata') this.unknownBatches[kind].push(items);
    }
    return r;
  }

  async loop(kind, every) {
    await this.load.pause(Math.random() * every);
    while (!this.load.stopping) {
      await this.submit(kind);
      await this.load.pause(every * (0.75 + Math.random() * 0.5));
    }
  }

  async run() {
    // register first, as a real plugin does at start; retry until it is in
    for (let i = 0; i < 50 && !this.load.stopping; i++) {
      const r = await this.submit('metadata');
      if (r.status === 200) break;
      await this.load.pause(200);
    }
    const iv = this.load.intervals;
    const g = this.greedy ? 0.25 : 1;
    await Promise.all([this.loop('metadata', iv.metadata * g), this.loop('traces', iv.traces * g), this.loop('errors', iv.errors * g)]);
    this.agent.destroy();
  }
}

export class Load {
  // url: the shim; plugins: how many; tenants: well-behaved tenants (the plugins
  // are spread over them, each plugin its own service) on plan; greedy: extra
  // tenants with one fast plugin each on a tiny plan; intervals in ms (the
  // default, about 2,900 requests an hour per service, is twice the real
  // plugin's default cadence of 1,452: tests/pgtap/rate_classes.sql).
  constructor({ url, plugins = 200, tenants = 50, greedy = 2, tag = 'load', plan = 'standard',
                intervals = { metadata: 5000, traces: 2000, errors: 10000 } }) {
    Object.assign(this, { url, nplugins: plugins, ntenants: tenants, ngreedy: greedy, tag, plan, intervals });
    this.stopping = false;
    this.abort = new AbortController();
    setMaxListeners(0, this.abort.signal); // one listener per sleeping plugin loop
    this.statuses = {};
    this.byKind = {};
    this.notes = [];
    this.listeners = [];
    this.classes = {};   // RateLimit-Class of the acknowledged answers
    this.requests = 0;
  }

  note(s) { if (this.notes.length < 50) this.notes.push(s); }

  async setup() {
    const good = createTenants(this.ntenants, this.plan, `${this.tag}-t`);
    const greedy = this.ngreedy ? createTenants(this.ngreedy, 'load-small', `${this.tag}-g`) : [];
    this.tenants = [...good, ...greedy];
    this.plugins = [];
    // plugin i: tenant i mod T, service svc-k; svc-k is called by svc-(k+1)
    // of the same tenant (the last one by an external "edge" caller)
    for (let i = 0; i < this.nplugins; i++) {
      const t = good[i % good.length];
      const k = Math.floor(i / good.length);
      const hasNext = i + good.length < this.nplugins;
      this.plugins.push(new Plugin(this, i, t, `svc-${k}`, hasNext ? `svc-${k + 1}` : 'edge', false));
    }
    greedy.forEach((t, j) => this.plugins.push(new Plugin(this, this.nplugins + j, t, 'svc-greedy', 'browser', true)));
  }

  record(plugin, kind, r) {
    this.requests++;
    const s = r.status || 'network';
    this.statuses[s] = (this.statuses[s] ?? 0) + 1;
    const k = (this.byKind[kind] ??= {});
    k[s] = (k[s] ?? 0) + 1;
    const q = plugin.quota;
    if (r.status !== 0 && r.status !== 503) { // counted by the quota (authenticated)
      if (!q.firstAt) q.firstAt = r.started;
      q.requests++;
      if (r.status === 429) {
        q.refused++;
        const scope = r.json?.error?.details?.scope ?? '?';
        q.scopes[scope] = (q.scopes[scope] ?? 0) + 1;
        if (!q.firstRefusal) q.firstRefusal = { at: r.started, after: q.ok, retryAfter: r.headers['retry-after'], scope };
      } else if (r.status < 300) {
        q.ok++;
        const c = r.headers['ratelimit-class'] ?? 'none';
        this.classes[c] = (this.classes[c] ?? 0) + 1;
      }
    }
    if (r.status >= 500 && r.status !== 503) this.note(`${kind} ${r.status} ${JSON.stringify(r.json ?? r.error).slice(0, 200)}`);
    for (const fn of this.listeners) fn(r, plugin, kind);
  }

  onResult(fn) { this.listeners.push(fn); return () => { this.listeners = this.listeners.filter((f) => f !== fn); }; }

  start() {
    this.startedAt = Date.now();
    this.done = Promise.all(this.plugins.map((p) => p.run()));
  }

  // a sleep that stop() cuts short
  pause(ms) { return sleep(ms, undefined, { signal: this.abort.signal }).catch(() => {}); }

  async stop() {
    this.stopping = true;
    this.abort.abort();
    await this.done;
    this.stoppedAt = Date.now();
  }

  total(what, kind) {
    let n = 0;
    for (const p of this.plugins) n += kind === 'metadata' ? p[what].metadata.length : p[what][kind];
    return n;
  }

  // Every acknowledged submission must be in the database; the database may
  // hold no more than acknowledged + outcome-unknown (timeouts, 503, resets).
  verify() {
    const ids = this.tenants.map((t) => `'${t.id}'`).join(',');
    const rows = (q) => (psql(q) || '').split('\n').filter(Boolean).map((l) => l.split('|'));
    const traces = new Map(rows(`SELECT s.user_id || '/' || s.name, COALESCE(sum(r.request_count), 0)
      FROM lattice.services s LEFT JOIN lattice.route_stats r ON r.service_id = s.id
      WHERE s.user_id IN (${ids}) AND NOT s.is_external GROUP BY 1`).map(([k, v]) => [k, Number(v)]));
    const errors = new Map(rows(`SELECT s.user_id || '/' || s.name, COALESCE(sum(g.occurrence_count), 0)
      FROM lattice.services s LEFT JOIN lattice.error_groups g ON g.service_id = s.id
      WHERE s.user_id IN (${ids}) AND NOT s.is_external GROUP BY 1`).map(([k, v]) => [k, Number(v)]));
    const versions = new Map();
    for (const [k, v] of rows(`SELECT s.user_id || '/' || s.name, c.new_value FROM lattice.services s
      JOIN lattice.service_changes c ON c.service_id = s.id
      WHERE s.user_id IN (${ids}) AND c.kind IN ('service_registered', 'service_version_changed')`)) {
      if (!versions.has(k)) versions.set(k, new Set());
      versions.get(k).add(v);
    }
    const missing = [], phantom = [];
    let checked = 0;
    for (const p of this.plugins) {
      const key = `${p.tenant.id}/${p.service}`;
      for (const kind of ['traces', 'errors']) {
        const db = (kind === 'traces' ? traces : errors).get(key) ?? 0;
        checked += p.acked[kind];
        if (db < p.acked[kind]) missing.push(`${key} ${kind}: ${p.acked[kind]} acknowledged, ${db} stored`);
        if (db > p.acked[kind] + p.unknown[kind]) phantom.push(`${key} ${kind}: ${db} stored > ${p.acked[kind]} acked + ${p.unknown[kind]} unknown`);
        // what was stored beyond the acknowledged must be whole batches of the unknown ones
        else if (db > p.acked[kind] && !subsetSum(p.unknownBatches[kind], db - p.acked[kind]))
          phantom.push(`${key} ${kind}: ${db - p.acked[kind]} extra items are no set of whole batches ${JSON.stringify(p.unknownBatches[kind])}`);
      }
      const have = versions.get(key) ?? new Set();
      for (const v of p.acked.metadata) { checked++; if (!have.has(v)) missing.push(`${key} metadata version ${v}`); }
      const known = new Set([...p.acked.metadata, ...p.unknown.metadata]);
      for (const v of have) if (!known.has(v)) phantom.push(`${key} metadata version ${v} never sent or refused`);
    }
    return { ok: missing.length === 0 && phantom.length === 0, checked, missing, phantom };
  }

  // 429 only where a service's ingest budget (GCRA: `burst` at once, then
  // limit/hour) really ran out: never before `burst` acknowledged requests
  // plus what refilled since its first request, and refused by the service's
  // own budget (details.scope ingest), not the account's ceiling.
  // refusedGood: well-behaved plugins that saw any 429.
  rateCheck() {
    const wrong = [], greedy = [], refusedGood = [];
    for (const p of this.plugins) {
      const s = p.quota, t = p.tenant, name = `${t.id}/${p.service}`;
      if (p.greedy) greedy.push({ id: t.id, service: p.service, ...s, limit: t.limit, burst: t.burst });
      else if (s.refused > 0) refusedGood.push(`${name}: ${s.refused} of ${s.requests} refused ${JSON.stringify(s.scopes)}, first after ${s.firstRefusal.after}`);
      if (!s.firstRefusal) continue;
      const refill = ((s.firstRefusal.at - s.firstAt) / 3600e3) * t.limit;
      if (s.firstRefusal.after < Math.floor(t.burst + refill) - 1) wrong.push(`${name}: refused after ${s.firstRefusal.after} (burst ${t.burst}, limit ${t.limit}/h)`);
      const window = (this.stoppedAt - s.firstAt) / 3600e3;
      if (s.ok > t.burst + window * t.limit + 2) wrong.push(`${name}: ${s.ok} accepted > burst ${t.burst} + ${window * t.limit}`);
      if (Object.keys(s.scopes).some((k) => k !== 'ingest')) wrong.push(`${name}: refused by ${JSON.stringify(s.scopes)}, not its service's budget`);
    }
    return { wrong, greedy, refusedGood };
  }

  // Requests per hour each well-behaved plugin sent (min, median, max).
  cadence() {
    const rates = this.plugins.filter((p) => !p.greedy && p.quota.firstAt)
      .map((p) => p.quota.requests / ((this.stoppedAt - p.quota.firstAt) / 3600e3)).sort((x, y) => x - y);
    const at = (f) => Math.round(rates[Math.min(rates.length - 1, Math.floor(f * rates.length))] ?? 0);
    return { min: at(0), median: at(0.5), max: at(1) };
  }
}

// Can some of sizes add up to exactly target?  (small numbers: a bitset)
function subsetSum(sizes, target) {
  let reach = 1n;
  for (const x of sizes) reach |= reach << BigInt(x);
  return ((reach >> BigInt(target)) & 1n) === 1n;
}

// RSS of a process (kB): { rss, anon } from /proc/<pid>/status.
export function rssOf(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (k) => Number((s.match(new RegExp(`^${k}:\\s+(\\d+)`, 'm')) ?? [0, 0])[1]);
    return { rss: kb('VmRSS'), anon: kb('RssAnon') };
  } catch { return null; }
}

// Samples the shim and its backends every `every` ms until stopped.
export class RssSampler {
  constructor(shimPid, every = 5000) {
    Object.assign(this, { shimPid, every, samples: [] });
  }
  sample() {
    const t = Date.now();
    const shim = rssOf(this.shimPid);
    let pids = [];
    try { pids = psql("SELECT pid FROM pg_catalog.pg_stat_activity WHERE application_name = 'lattice-shim'").split('\n').filter(Boolean); } catch { /* down */ }
    let rss = 0, anon = 0, n = 0;
    for (const pid of pids) { const r = rssOf(pid); if (r) { rss += r.rss; anon += r.anon; n++; } }
    this.samples.push({ t, shimRss: shim?.rss ?? 0, shimAnon: shim?.anon ?? 0, backends: n,
      backendAnon: n ? Math.round(anon / n) : 0, backendRss: n ? Math.round(rss / n) : 0 });
  }
  start() { this.sample(); this.timer = setInterval(() => this.sample(), this.every); }
  stop() { clearInterval(this.timer); this.sample(); }
  // Growth from the first sample after warm-up (20 % of the run) to the last.
  growth() {
    const s = this.samples;
    const w = s[Math.max(1, Math.floor(s.length * 0.2))] ?? s[0];
    const last = s[s.length - 1];
    return { shimKb: last.shimRss - w.shimRss, backendAnonKb: last.backendAnon - w.backendAnon, from: w, to: last };
  }
}
