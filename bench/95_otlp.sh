#!/usr/bin/env bash
# OTLP ingest: spans per second through the shim for OTLP/HTTP protobuf and
# OTLP/HTTP JSON requests of 100 spans (POST /otlp/v1/traces) beside the
# plugin's trace batch (POST /api/v1/performance/traces/batch) carrying the
# same 100 spans, one entry a span, in the same run (alternating, best of
# ROUNDS).  Then the span-matching state: a sustained protobuf run at about
# SUSTAIN_RATE spans/s, and the size and row count of lattice.otlp_pending
# after it ('n/a' where the extension has no such table).
#
# The bodies are made once, up front, by the SDK's own serializers
# (@opentelemetry/otlp-transformer's ProtobufTraceSerializer and
# JsonTraceSerializer, what the OTLP exporters send) from spans made by the
# SDK's tracer: two services, bench-otel-a (SERVER with http.route, an express
# middleware and request handler, a CLIENT call) and bench-otel-b (the SERVER
# child of that call, its handler, pg-pool.connect and a pg.query db span,
# with the attributes instrumentation-http 0.223 / -express 0.71 / -pg 0.76
# give them); one request in 25 fails in the query (an exception event).  A
# request carries one service's batch: otel-a's batch k, then otel-b's batch k
# (the SERVER children of a's CLIENT spans) on the same connection.  Every
# trace id starts with the mark 7e1a7e1a, which the wrk script overwrites
# with a counter per pair of requests, so no span is ever sent twice.
# Run by bench/run.sh with the cluster's PG* environment exported; prints
# figures, asserts nothing.
#   SECS (4) ROUNDS (2) CONC (8) PAIRS (16) SUSTAIN_SECS (30) SUSTAIN_RATE (10000 spans/s)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-4}
ROUNDS=${ROUNDS:-2}
CONC=${CONC:-8}
PAIRS=${PAIRS:-16}
SUSTAIN_SECS=${SUSTAIN_SECS:-30}
SUSTAIN_RATE=${SUSTAIN_RATE:-10000}
work=${LATTICE_WORK:-$(mktemp -d)}/otlp
mkdir -p "$work"
chmod 0755 "$work"
shim_bin=${LATTICE_SHIM_BIN:-$PWD/shim/lattice-shim}
q() { psql -XAtq -v ON_ERROR_STOP=1 "$@"; }
[ -d tests/node_modules/@opentelemetry/otlp-transformer ] || (cd tests && npm ci --silent --no-audit --no-fund)

# Two accounts (OTLP, plugin) on a plan whose quotas the bench cannot exhaust.
q -c "INSERT INTO lattice.plans (id, name, price_cents, rate_limit_per_hour, max_services, ingest_per_service_per_hour)
      VALUES ('bench-otlp', 'Bench', 0, 2000000000, 100000, 2000000000) ON CONFLICT (id) DO NOTHING" >/dev/null
account() {
    local user
    user=$(q -c "SELECT lattice.create_user('bench-otlp-' || md5(random()::text) || '@example.com', 'bench password 1', 'Bench')")
    q -c "UPDATE lattice.users SET plan_id = 'bench-otlp' WHERE id = '$user'" >/dev/null
    q -c "SELECT lattice.create_api_key('$user', 'bench')"
}
otlp_key=$(account)
plugin_key=$(account)

# ---- the bodies: bodies/{proto,json,plugin}_NNN, even NNN otel-a, odd otel-b ----
cat >"$work/gen.mjs" <<'JS'
// node gen.mjs OUTDIR PAIRS
import { createRequire } from 'node:module';
import { mkdirSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
const require = createRequire(`${process.env.LATTICE_ROOT}/tests/package.json`);
const { SpanKind, SpanStatusCode, ROOT_CONTEXT, trace } = require('@opentelemetry/api');
const { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace-base');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { ProtobufTraceSerializer, JsonTraceSerializer } = require('@opentelemetry/otlp-transformer');

const [out, pairs] = [process.argv[2], Number(process.argv[3])];
const PER_BATCH = 25; // requests a batch, 4 spans each on each side
const MARK = '7e1a7e1a';
mkdirSync(out, { recursive: true });
const hex = (n) => randomBytes(n).toString('hex');
function service(name) {
  const exporter = new InMemorySpanExporter();
  const p = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': name, 'service.version': '1.4.2',
      'deployment.environment.name': 'production', 'telemetry.sdk.language': 'nodejs',
      'telemetry.sdk.name': 'opentelemetry', 'telemetry.sdk.version': '2.12.0', 'process.runtime.name': 'nodejs',
      'process.runtime.version': '20.20.2', 'host.name': `${name}-7d9f8b-x2kq` }),
    idGenerator: { generateTraceId: () => MARK + hex(12), generateSpanId: () => hex(8) },
    spanProcessors: [new SimpleSpanProcessor(exporter)],
  });
  return { name, exporter, http: p.getTracer('@opentelemetry/instrumentation-http', '0.223.0'),
           express: p.getTracer('@opentelemetry/instrumentation-express', '0.71.1'),
           pg: p.getTracer('@opentelemetry/instrumentation-pg', '0.76.0') };
}
const A = service('bench-otel-a'), B = service('bench-otel-b');
const ROUTES_A = [['GET', '/orders/:id', (i) => `/orders/${1000 + i}`], ['GET', '/carts/:id', (i) => `/carts/${i}`],
                  ['POST', '/orders', () => '/orders'], ['GET', '/users/:id/orders', (i) => `/users/${i % 97}/orders`]];
const ROUTES_B = [['GET', '/stock/:sku', (i) => `/stock/sku-${i}`], ['POST', '/stock/:sku/reserve', (i) => `/stock/sku-${i}/reserve`]];
const ctx = (span) => trace.setSpan(ROOT_CONTEXT, span);
function server(svc, parent, [method, route, path], i, t0, status, host, port) {
  const s = svc.http.startSpan(`${method} ${route}`, { kind: SpanKind.SERVER, startTime: t0, attributes: {
    'http.request.method': method, 'url.scheme': 'http', 'server.address': host, 'server.port': port,
    'network.peer.address': '10.1.4.17', 'network.peer.port': 40000 + (i % 20000), 'network.protocol.version': '1.1',
    'url.path': path(i), 'client.address': '10.1.4.17', 'user_agent.original': 'Mozilla/5.0 (X11; Linux x86_64)',
    'http.route': route, 'http.response.status_code': status } }, parent);
  if (status >= 500) s.setStatus({ code: SpanStatusCode.ERROR });
  return s;
}
const handler = (svc, route, t0, parent) => svc.express.startSpan(`request handler - ${route}`,
  { startTime: t0, attributes: { 'express.name': route, 'express.type': 'request_handler', 'http.route': route } }, parent);

const now = Date.now() - 3000;
for (let k = 0; k < pairs; k++) {
  for (let r = 0; r < PER_BATCH; r++) {
    const i = k * PER_BATCH + r;
    const fail = r === 7;
    const t0 = now + i * 2;
    const ra = ROUTES_A[i % ROUTES_A.length], rb = ROUTES_B[i % ROUTES_B.length];
    const aDur = 12 + (i % 23), bDur = 5 + (i % 11), qDur = 1 + (i % 4);
    const sa = server(A, ROOT_CONTEXT, ra, i, t0, fail ? 502 : 200, 'shop.example.com', 443);
    const mw = A.express.startSpan('middleware - jsonParser', { startTime: t0 + 0.2,
      attributes: { 'express.name': 'jsonParser', 'express.type': 'middleware', 'http.route': '/' } }, ctx(sa));
    mw.end(t0 + 0.4);
    const ha = handler(A, ra[1], t0 + 0.5, ctx(sa));
    const call = A.http.startSpan(rb[0], { kind: SpanKind.CLIENT, startTime: t0 + 1, attributes: {
      'http.request.method': rb[0], 'server.address': 'stock', 'server.port': 8080, 'url.full': `http://stock:8080${rb[2](i)}`,
      'network.peer.address': '10.1.7.3', 'network.peer.port': 8080, 'network.protocol.version': '1.1',
      'http.response.status_code': fail ? 500 : 200 } }, ctx(ha));
    if (fail) call.setStatus({ code: SpanStatusCode.ERROR });
    const sb = server(B, ctx(call), rb, i, t0 + 1.5, fail ? 500 : 200, 'stock', 8080);
    const hb = handler(B, rb[1], t0 + 1.7, ctx(sb));
    const pool = B.pg.startSpan('pg-pool.connect', { kind: SpanKind.CLIENT, startTime: t0 + 1.8,
      attributes: { 'db.system.name': 'postgresql', 'db.postgresql.idle.timeout.millis': 10000 } }, ctx(hb));
    pool.end(t0 + 1.9);
    const query = B.pg.startSpan('pg.query:SELECT stock', { kind: SpanKind.CLIENT, startTime: t0 + 2, attributes: {
      'db.system.name': 'postgresql', 'db.namespace': 'stock', 'server.address': 'db.internal', 'server.port': 5432,
      'db.query.text': 'SELECT sku, quantity, reserved FROM stock WHERE sku = $1 FOR UPDATE' } }, ctx(hb));
    if (fail) {
      const err = new Error('relation "stock" does not exist');
      query.setStatus({ code: SpanStatusCode.ERROR, message: err.message });
      hb.recordException(err, t0 + 2 + qDur);
      hb.setStatus({ code: SpanStatusCode.ERROR, message: err.message });
    }
    query.end(t0 + 2 + qDur);
    hb.end(t0 + 1.3 + bDur);
    sb.end(t0 + 1.5 + bDur);
    call.end(t0 + 2 + bDur);
    ha.end(t0 + aDur - 0.3);
    sa.end(t0 + aDur);
  }
  for (const svc of [A, B]) {
    const spans = svc.exporter.getFinishedSpans();
    svc.exporter.reset();
    const id = String(2 * k + (svc === B ? 1 : 0)).padStart(3, '0');
    const proto = Buffer.from(ProtobufTraceSerializer.serializeRequest(spans));
    const json = Buffer.from(JsonTraceSerializer.serializeRequest(spans));
    // every trace id carries the mark once, and nothing else does
    for (const [what, buf, mark] of [['protobuf', proto, Buffer.from(MARK, 'hex')], ['JSON', json, Buffer.from(MARK)]]) {
      let n = 0;
      for (let at = buf.indexOf(mark); at >= 0; at = buf.indexOf(mark, at + 1)) n++;
      if (spans.length !== 100 || n !== 100) throw new Error(`${svc.name} ${what} batch ${k}: ${spans.length} spans, ${n} marks`);
    }
    writeFileSync(`${out}/proto_${id}`, proto);
    writeFileSync(`${out}/json_${id}`, json);
    // the plugin's trace batch: one entry a span, with the fields the plugin has for it
    const traces = spans.map((s) => {
      const a = s.attributes;
      const e = { service_id: svc.name, start_time: new Date(s.startTime[0] * 1000 + s.startTime[1] / 1e6).toISOString(),
                  duration_ms: Math.round((s.duration[0] * 1000 + s.duration[1] / 1e6) * 1000) / 1000 };
      if (s.kind === SpanKind.SERVER) {
        Object.assign(e, { operation_name: `${a['http.request.method']} ${a['url.path']}`, operation_type: 'http_request',
          status_code: a['http.response.status_code'], method: a['http.request.method'], path: a['url.path'] });
        if (svc === B) e.caller_service = A.name;
      } else if (a['db.system.name']) {
        Object.assign(e, { operation_name: s.name, operation_type: 'db_query' });
      } else if (s.kind === SpanKind.CLIENT) {
        Object.assign(e, { operation_name: `${a['http.request.method']} ${a['url.full']}`, operation_type: 'external_call',
          status_code: a['http.response.status_code'], method: a['http.request.method'] });
      } else {
        Object.assign(e, { operation_name: s.name, operation_type: 'custom' });
      }
      return e;
    });
    writeFileSync(`${out}/plugin_${id}`, JSON.stringify({ traces }));
  }
}
JS
LATTICE_ROOT=$PWD node "$work/gen.mjs" "$work/bodies" "$PAIRS"
nbodies=$((2 * PAIRS))
avg_bytes() { cat "$work/bodies/$1"_* | wc -c | awk -v n="$nbodies" '{ printf "%.0f", $1 / n }'; }

# The plugin registers its services (with their routes) before it sends traces.
meta() {  # meta NAME 'METHOD PATH'...
    local name=$1; shift
    python3 - "$name" "$@" <<'PY'
import json, sys
name, routes = sys.argv[1], sys.argv[2:]
t = "2026-11-29T03:13:36.392Z"
sid = name.replace("-", "")
print(json.dumps({"service": {"id": sid, "name": name, "version": "1.4.2", "environment": "production",
    "language": "typescript", "framework": "express", "runtime": "node-v20.20.2", "status": "active",
    "firstSeen": t, "lastSeen": t,
    "discoveredBy": {"pluginName": "@lattice/plugin-express", "pluginVersion": "0.2.0", "schemaVersion": "1.0.0"}},
  "routes": [{"id": f"r{i}x", "serviceId": sid, "method": r.split()[0], "path": r.split()[1],
              "middlewareChain": ["jsonParser"], "firstSeen": t, "lastSeen": t} for i, r in enumerate(routes)],
  "dependencies": []}, separators=(",", ":")))
PY
}
for m in "$(meta bench-otel-a 'GET /orders/:id' 'GET /carts/:id' 'POST /orders' 'GET /users/:id/orders')" \
         "$(meta bench-otel-b 'GET /stock/:sku' 'POST /stock/:sku/reserve')"; do
    q -c "SELECT (lattice_http.ingest_metadata(jsonb_build_object('api_key', '$plugin_key', 'content_type', 'application/json'),
                  \$b\$$m\$b\$)).status" >/dev/null
done

# ---- the shim ----
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
LATTICE_SHIM_LISTEN=127.0.0.1 LATTICE_SHIM_PORT=$port LATTICE_SHIM_ACCESS_LOG=off \
LATTICE_SHIM_CONNINFO="host=$PGHOST port=$PGPORT dbname=${PGDATABASE:-lattice} user=lattice_shim" \
    "$shim_bin" >/dev/null 2>"$work/shim.log" &
shim_pid=$!
trap 'kill "$shim_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/api/v1/health" >/dev/null 2>&1 && break
    sleep 0.1
done

# wrk: KIND (proto | json | plugin), a run number (part of every trace id),
# requests per second per connection (0: as fast as it answers).
cat >"$work/post.lua" <<'LUA'
local kind, nbodies, run, rate, key, dir = "@KIND@", @NBODIES@, @RUN@, @RATE@, "@KEY@", "@DIR@"
local path, ctype, mark = "/otlp/v1/traces", "application/x-protobuf", "\126\26\126\26"
if kind == "json" then ctype, mark = "application/json", "7e1a7e1a" end
if kind == "plugin" then path, ctype, mark = "/api/v1/performance/traces/batch", "application/json", nil end
local headers = {["Content-Type"] = ctype, ["User-Agent"] = "OTel-OTLP-Exporter-JavaScript/0.223.0"}
if kind == "plugin" then headers["X-Lattice-API-Key"] = key else headers["x-lattice-api-key"] = key end
local threads = 0
function setup(thread) thread:set("me", threads); threads = threads + 1 end
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } lattice_ts; int clock_gettime(int, lattice_ts *); ]]
local ts = ffi.new("lattice_ts")
local function now_ms() ffi.C.clock_gettime(1, ts); return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6 end
function init(args)
  me = tonumber(me) or 0
  bodies, n = {}, 0
  -- wrk calls the first thread's request() once to check it, and drops what it
  -- gets: that call must not take otel-a's first batch from its otel-b pair
  verifying = me == 0
  for i = 0, nbodies - 1 do
    local f = io.open(string.format("%s/%s_%03d", dir, kind, i), "rb"); local b = f:read("*a"); f:close()
    -- the body cut at the marks, so a request is one table.concat
    local segs, pos = {}, 1
    while mark do
      local s, e = string.find(b, mark, pos, true)
      if not s then break end
      segs[#segs + 1] = b:sub(pos, s - 1); pos = e + 1
    end
    segs[#segs + 1] = b:sub(pos)
    bodies[i + 1] = segs
  end
end
function request()
  if verifying then verifying = false; return wrk.format("GET", "/api/v1/health") end
  local segs = bodies[n % nbodies + 1]
  local pair = math.floor(n / 2)  -- otel-a's batch and otel-b's share their trace ids
  n = n + 1
  if #segs == 1 then return wrk.format("POST", path, headers, segs[1]) end
  local v = (run * 64 + me) * 1048576 + pair % 1048576  -- run (6 bits), connection (6), pair (20)
  local rep
  if kind == "json" then rep = string.format("%08x", v)
  else rep = string.char(math.floor(v / 16777216) % 256, math.floor(v / 65536) % 256, math.floor(v / 256) % 256, v % 256) end
  return wrk.format("POST", path, headers, table.concat(segs, rep))
end
if rate > 0 then
  local period, next_t = 1000 / rate, nil
  function delay()
    local t = now_ms()
    next_t = (next_t or t) + period
    return next_t > t and next_t - t or 0
  end
end
function done(summary, latency, requests)
  local bad = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.stderr:write(string.format("non-2xx or socket errors: %d\n", bad))
end
LUA
run_no=0
wrk_run() {  # wrk_run KIND CONNECTIONS SECONDS RATE_PER_CONNECTION -> req/s; errors in $work/wrk.err
    local key=$otlp_key
    [ "$1" = plugin ] && key=$plugin_key
    run_no=$((run_no + 1))
    sed "s|@KIND@|$1|; s|@NBODIES@|$nbodies|; s|@RUN@|$run_no|; s|@RATE@|$4|; s|@KEY@|$key|; s|@DIR@|$work/bodies|" \
        "$work/post.lua" >"$work/run.lua"
    # one thread per connection: each connection sends its own pairs in order
    wrk -t "$2" -c "$2" -d "${3}s" -s "$work/run.lua" "http://127.0.0.1:$port" 2>"$work/wrk.err" \
        | sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p'
}
errors() { local e; e=$(sed -n 's/^non-2xx or socket errors: //p' "$work/wrk.err"); echo "${e:-0}"; }

# One request of each kind first: a kind the shim refuses is reported, not timed.
status() {  # status KIND -> HTTP status of one request
    local ct=application/x-protobuf url=/otlp/v1/traces hdr="x-lattice-api-key: $otlp_key"
    [ "$1" = json ] && ct=application/json
    [ "$1" = plugin ] && { ct=application/json; url=/api/v1/performance/traces/batch; hdr="X-Lattice-API-Key: $plugin_key"; }
    curl -s -o "$work/answer.$1" -w '%{http_code}' -H "Content-Type: $ct" -H "$hdr" \
        --data-binary "@$work/bodies/$1_000" "http://127.0.0.1:$port$url"
}
declare -A st best bad
kinds=(proto json plugin)
for k in "${kinds[@]}"; do st[$k]=$(status "$k"); best[$k]=0; bad[$k]=0; done
for _ in $(seq "$ROUNDS"); do
    for k in "${kinds[@]}"; do
        [[ ${st[$k]} == 2?? ]] || continue
        r=$(wrk_run "$k" "$CONC" "$SECS" 0)
        best[$k]=$(awk -v a="${best[$k]}" -v b="${r:-0}" 'BEGIN { print (a > b ? a : b) }')
        bad[$k]=$((bad[$k] + $(errors)))
    done
done

# ---- the span-matching state after a sustained protobuf run ----
pending() {  # rows and size of lattice.otlp_pending, or n/a
    if [ "$(q -c "SELECT to_regclass('lattice.otlp_pending') IS NOT NULL")" = t ]; then
        q -F ' ' -c "SELECT count(*), replace(pg_size_pretty(pg_total_relation_size('lattice.otlp_pending')), ' ', '')
                       FROM lattice.otlp_pending"
    else
        echo "n/a n/a"
    fi
}
read -r p0_rows p0_size < <(pending)
sustained=n/a sustained_bad=0
if [[ ${st[proto]} == 2?? ]]; then
    per_conn=$(awk -v r="$SUSTAIN_RATE" -v c="$CONC" 'BEGIN { printf "%.4f", r / 100 / c }')
    s=$(wrk_run proto "$CONC" "$SUSTAIN_SECS" "$per_conn")
    sustained=$(awk -v r="${s:-0}" 'BEGIN { printf "%.0f", r * 100 }')
    sustained_bad=$(errors)
fi
read -r p1_rows p1_size < <(pending)
sleep 5
read -r p2_rows p2_size < <(pending)
kill "$shim_pid" 2>/dev/null || true

# ---- figures ----
shown() { [[ ${st[$1]} == 2?? ]] && echo "${best[$1]}" || echo "n/a"; }
printf 'OTLP/HTTP against the plugin'"'"'s trace batch: 100 spans a request (otel-a'"'"'s and otel-b'"'"'s batches in turn, %d pairs);\n' "$PAIRS"
printf '%d clients, best of %d runs of %ds, alternating\n' "$CONC" "$ROUNDS" "$SECS"
printf '%-40s %9s %7s %10s %10s %10s %8s\n' "request (100 spans)" "bytes" "status" "req/s" "spans/s" "vs plugin" "non-2xx"
for k in "${kinds[@]}"; do
    case $k in proto) label="OTLP protobuf (application/x-protobuf)" ;; json) label="OTLP JSON (application/json)" ;;
                plugin) label="plugin trace batch (100 entries)" ;; esac
    awk -v l="$label" -v b="$(avg_bytes "$k")" -v s="${st[$k]}" -v r="$(shown "$k")" -v p="$(shown plugin)" -v e="${bad[$k]}" 'BEGIN {
        if (r == "n/a") { printf "%-40s %9d %7s %10s %10s %10s %8s\n", l, b, s, "n/a", "n/a", "n/a", "n/a"; exit }
        ratio = (p != "n/a" && p > 0) ? sprintf("%.2f", r / p) : "n/a";
        printf "%-40s %9d %7s %10.0f %10.0f %10s %8d\n", l, b, s, r, r * 100, ratio, e }'
done
if [[ ${st[proto]} == 2?? && ${st[json]} == 2?? ]]; then
    awk -v a="${best[proto]}" -v b="${best[json]}" 'BEGIN { printf "protobuf / JSON: %.2fx\n", (b > 0 ? a / b : 0) }'
fi
for k in "${kinds[@]}"; do
    [[ ${st[$k]} == 2?? ]] || printf '%s: the first request answered %s: %s\n' "$k" "${st[$k]}" "$(head -c 200 "$work/answer.$k" 2>/dev/null | tr -c '[:print:]' '.')"
done
printf 'sustained protobuf, %s spans/s asked for %ds (%d clients): %s spans/s, non-2xx %s\n' \
    "$SUSTAIN_RATE" "$SUSTAIN_SECS" "$CONC" "$sustained" "$sustained_bad"
printf '%-40s %12s %12s\n' "lattice.otlp_pending" "rows" "size"
printf '%-40s %12s %12s\n' "before the sustained run" "$p0_rows" "$p0_size"
printf '%-40s %12s %12s\n' "right after it" "$p1_rows" "$p1_size"
printf '%-40s %12s %12s\n' "5 s later" "$p2_rows" "$p2_size"
