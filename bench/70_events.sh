#!/usr/bin/env bash
# Live changes (GET /api/v1/events, shim/events.c), on loopback:
#   (a) latency bump -> client: one stream, N bumps one after the other, each
#       lattice.graph_bump() sent through a running psql; the time from sending
#       the bump to the psql answer (commit) and to the `graph` event arriving,
#       with events_merge_ms = 0 and with the default 200 ms window;
#   (b) fan-out: S streams of one tenant, one bump, time until the last one has it;
#   (c) memory: the shim's RSS with S streams open minus with none (warm threads),
#       divided by S.
# Run by bench/run.sh (PGHOST/PGPORT/LATTICE_SHIM_BIN/LATTICE_WORK exported).
#   LATTICE_BENCH_BUMPS (100)  LATTICE_BENCH_STREAMS (100)
set -euo pipefail
cd "$(dirname "$0")/.."
bumps=${LATTICE_BENCH_BUMPS:-100}
streams=${LATTICE_BENCH_STREAMS:-100}
work=${LATTICE_WORK:-$(mktemp -d)}
bin=${LATTICE_SHIM_BIN:-shim/lattice-shim}

read -r uid key < <(psql -XAtq -v ON_ERROR_STOP=1 <<'SQL'
INSERT INTO lattice.plans (id, name, price_cents, rate_limit_per_hour) VALUES ('bench', 'Bench', 0, 2000000000)
    ON CONFLICT (id) DO UPDATE SET rate_limit_per_hour = EXCLUDED.rate_limit_per_hour;
SELECT lattice.create_user('events-' || pg_catalog.gen_random_uuid() || '@example.com', 'bench password 123', 'Bench')
    AS uid \gset
UPDATE lattice.users SET plan_id = 'bench' WHERE id = :'uid';
SELECT :'uid' || ' ' || lattice.create_api_key(:'uid', 'bench');
SQL
)

spid=
trap '[ -n "$spid" ] && kill "$spid" 2>/dev/null; wait 2>/dev/null' EXIT
start_shim() {  # start_shim MERGE_MS: sets port and spid
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    LATTICE_SHIM_PORT=$port LATTICE_SHIM_ACCESS_LOG=off LATTICE_SHIM_THREADS=$((streams + 32)) \
        LATTICE_SHIM_EVENTS_MAX=$((streams + 8)) LATTICE_SHIM_EVENTS_PER_ADDRESS_MAX=$((streams + 8)) \
        LATTICE_SHIM_PER_ADDRESS_MAX=$((streams + 32)) LATTICE_SHIM_EVENTS_MERGE_MS=$1 \
        "$bin" >>"$work/shim-events.log" 2>&1 &
    spid=$!
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/api/v1/health" >/dev/null && break; sleep 0.05; done
}

cat >"$work/events_bench.mjs" <<'JS'
// node events_bench.mjs PORT PID KEY UID BUMPS STREAMS MODE (latency | fanout)
import net from 'node:net';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
const [port, pid, key, uid, bumps, streams, mode] = process.argv.slice(2);
const now = () => performance.now();

function stream() {
  return new Promise((resolve, reject) => {
    const s = net.connect(Number(port), '127.0.0.1');
    const st = { sock: s, waiters: [], buf: '', seen: [] };
    s.on('error', reject);
    s.on('connect', () => s.write(`GET /api/v1/events HTTP/1.1\r\nHost: x\r\nX-Lattice-API-Key: ${key}\r\n\r\n`));
    s.on('data', (c) => {
      st.buf += c.toString();
      if (!st.ok) {
        if (!st.buf.includes('\r\n\r\n')) return;
        if (!st.buf.startsWith('HTTP/1.1 200')) return reject(new Error(st.buf.split('\r\n')[0]));
      }
      let m;
      while ((m = /event: (\w+)\ndata: (.*)\n\n/.exec(st.buf))) {
        st.buf = st.buf.slice(m.index + m[0].length);
        if (m[1] === 'ready') { st.ok = true; resolve(st); }
        if (m[1] === 'graph') { const v = JSON.parse(m[2]).version; const t = now(); st.seen.push([v, t]); st.waiters = st.waiters.filter((w) => !w(v, t)); }
      }
    });
  });
}
// the time the first event with at least this version arrived (maybe already)
const next = (st, version) => new Promise((resolve) => {
  const had = st.seen.find(([v]) => v >= version);
  if (had) return resolve(had[1]);
  st.waiters.push((v, t) => (v >= version ? (resolve(t), true) : false));
});
const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
const pct = (a, p) => { const s = [...a].sort((x, y) => x - y); return s[Math.min(s.length - 1, Math.floor(p * s.length))]; };

// one psql for every bump: lines of versions on stdout
const psql = spawn('psql', ['-XAtq'], { stdio: ['pipe', 'pipe', 'inherit'] });
const answers = [];
let pending = '';
psql.stdout.on('data', (c) => { pending += c; let i; while ((i = pending.indexOf('\n')) >= 0) { answers.push([Number(pending.slice(0, i)), now()]); pending = pending.slice(i + 1); } });
const bump = () => psql.stdin.write(`SELECT lattice.graph_bump('${uid}');\n`);
const answer = async (n) => { while (answers.length < n) await new Promise((r) => setTimeout(r, 0.2)); return answers[n - 1]; };

if (mode === 'latency') {
  const st = await stream();
  const commit = [], deliver = [];
  for (let i = 1; i <= Number(bumps); i++) {
    const t0 = now();
    bump();
    const [v, tc] = await answer(i);
    const td = await next(st, v);
    commit.push(tc - t0);
    deliver.push(td - t0);
    await new Promise((r) => setTimeout(r, 5));
  }
  const f = (a) => [pct(a, 0.5), pct(a, 0.95), pct(a, 0.99), Math.max(...a)].map((x) => x.toFixed(2)).join(' ');
  console.log(`${f(commit)} ${f(deliver)}`);
  st.sock.destroy();
} else {
  // warm the worker threads once, measure, then the streams for real
  const warm = [];
  for (let i = 0; i < Number(streams); i++) warm.push(await stream());
  for (const s of warm) s.sock.destroy();
  await new Promise((r) => setTimeout(r, 500));
  const before = rss();
  const all = [];
  for (let i = 0; i < Number(streams); i++) all.push(await stream());
  await new Promise((r) => setTimeout(r, 300));
  const after = rss();
  const t0 = now();
  bump();
  const [v] = await answer(1);
  const times = await Promise.all(all.map((s) => next(s, v)));
  const spread = times.map((t) => t - t0);
  console.log(`${pct(spread, 0.5).toFixed(2)} ${Math.max(...spread).toFixed(2)} ${before} ${after}`);
  for (const s of all) s.sock.destroy();
}
psql.stdin.end();
JS

printf '%-34s %9s %9s %9s %9s\n' "(a) latency over $bumps bumps, ms" p50 p95 p99 max
for merge in 0 200; do
    start_shim "$merge"
    read -r c50 c95 c99 cmax d50 d95 d99 dmax < <(node "$work/events_bench.mjs" "$port" "$spid" "$key" "$uid" "$bumps" 0 latency)
    printf '%-34s %9s %9s %9s %9s\n' "bump -> commit (psql answer)" "$c50" "$c95" "$c99" "$cmax"
    printf '%-34s %9s %9s %9s %9s\n' "bump -> event, merge ${merge} ms" "$d50" "$d95" "$d99" "$dmax"
    kill "$spid"; wait "$spid" 2>/dev/null || true; spid=
    [ "$merge" = 0 ] && { c50_0=$c50; d50_0=$d50; }
done
start_shim 0
read -r f50 fmax rss0 rss1 < <(node "$work/events_bench.mjs" "$port" "$spid" "$key" "$uid" 0 "$streams" fanout)
kill "$spid"; wait "$spid" 2>/dev/null || true; spid=
echo
printf '(b) one bump to %d streams: p50 %s ms, last %s ms\n' "$streams" "$f50" "$fmax"
printf '(c) shim RSS: %d KiB idle (threads warm), %d KiB with %d streams: %.1f KiB per stream\n' \
    "$rss0" "$rss1" "$streams" "$(echo "($rss1 - $rss0) / $streams" | bc -l)"
printf '    ratio event p50 / commit p50 (merge 0): %s\n' "$(echo "scale=2; $d50_0 / $c50_0" | bc -l)"
