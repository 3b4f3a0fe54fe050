#!/usr/bin/env bash
# Ingest: a realistic metadata snapshot (50 routes, 120 dependencies) through
# the shim (wrk, a Lua script POSTing it) against pgbench calling the same SQL
# function directly; the periodic unchanged re-send against a changed
# snapshot; trace batches (10 traces, the plugin's batch size).  Also the
# validator's cost against a bare jsonb cast of the same body.
# Run by bench/run.sh with the cluster's PG* environment exported; prints
# figures, asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-4}
ROUNDS=${ROUNDS:-2}
CONC=${CONC:-8}
work=${LATTICE_WORK:-$(mktemp -d)}/ingest
mkdir -p "$work"
chmod 0755 "$work"
shim_bin=${LATTICE_SHIM_BIN:-$PWD/shim/lattice-shim}
q() { psql -XAtq -v ON_ERROR_STOP=1 "$@"; }

# An account on a plan whose quota the bench cannot exhaust (the check still runs).
q -c "INSERT INTO lattice.plans (id, name, price_cents, rate_limit_per_hour, max_services, ingest_per_service_per_hour)
      VALUES ('bench-ingest', 'Bench', 0, 2000000000, 100000, 2000000000) ON CONFLICT (id) DO NOTHING" >/dev/null
user=$(q -c "SELECT lattice.create_user('bench-ingest-' || md5(random()::text) || '@example.com', 'bench password 1', 'Bench')")
q -c "UPDATE lattice.users SET plan_id = 'bench-ingest' WHERE id = '$user'" >/dev/null
key=$(q -c "SELECT lattice.create_api_key('$user', 'bench')")

# The snapshot; __S__ (service suffix) and __V__ (a version) are filled per request.
python3 - "$work/meta.json" <<'PY'
import json, sys
routes, deps = [], []
res = ["users", "orders", "products", "carts", "payments", "invoices", "shipments", "reviews", "coupons", "accounts"]
for i, r in enumerate(res):
    for m, p in [("GET", f"/{r}"), ("POST", f"/{r}"), ("GET", f"/{r}/:id"), ("PUT", f"/{r}/:id"), ("DELETE", f"/{r}/:id")]:
        routes.append({"id": f"r{len(routes)}x", "serviceId": "svcx", "method": m, "path": p,
                       "middlewareChain": ["auth", "anonymous"], "firstSeen": "2026-11-29T03:13:36.392Z",
                       "lastSeen": "2026-11-29T03:13:36.392Z"})
routes[-1]["path"] = "/v__V__/accounts/:id"
for i in range(120):
    scoped = i % 7 == 0
    name = f"@acme/pkg-{i}" if scoped else f"package-{i}"
    d = {"id": f"d{i}x", "serviceId": "svcx", "packageName": name, "version": f"{i % 9}.{i % 13}.{i % 5}",
         "versionRange": f"^{i % 9}.{i % 13}.{i % 5}", "dependencyType": "dev" if i % 4 == 0 else "direct",
         "firstSeen": "2026-11-29T03:13:36.392Z", "lastSeen": "2026-11-29T03:13:36.392Z"}
    if scoped:
        d["scope"] = "@acme"
    deps.append(d)
deps[0]["version"] = "4.__V__.0"
body = {"service": {"id": "svcx", "name": "bench-__S__", "version": "1.2.3", "environment": "production",
                    "language": "typescript", "framework": "express", "runtime": "node-v20.20.2", "status": "active",
                    "firstSeen": "2026-11-29T03:13:36.391Z", "lastSeen": "2026-11-29T03:13:36.391Z",
                    "discoveredBy": {"pluginName": "@lattice/plugin-express", "pluginVersion": "0.2.0", "schemaVersion": "1.0.0"}},
        "routes": routes, "dependencies": deps}
open(sys.argv[1], "w").write(json.dumps(body, separators=(",", ":")))
PY
traces=$(python3 -c '
import json
t = [{"service_id": "bench-1", "operation_name": "GET /users/%d" % i, "operation_type": "http_request",
      "start_time": "2026-11-29T03:13:36.463Z", "duration_ms": 3 + i, "status_code": 200 if i % 5 else 500,
      "method": "GET", "path": "/users/%d" % i, "caller_service": "web-%d" % (i % 3)} for i in range(10)]
print(json.dumps({"traces": t}, separators=(",", ":")))')
printf '%s' "$traces" >"$work/traces.json"
chmod 0644 "$work"/*.json
bytes=$(wc -c <"$work/meta.json")

# Register the services every client uses, so both sides start from the same state.
for c in $(seq 0 $((CONC * 2))); do
    body=$(sed "s/__S__/$c/g; s/__V__/0/g" "$work/meta.json")
    q -c "SELECT (lattice_http.ingest_metadata(jsonb_build_object('api_key', '$key'), \$b\$$body\$b\$)).status" >/dev/null
done

# ---- pgbench: the SQL function directly (a non-2xx answer aborts the run) ----
req="jsonb_build_object('api_key', '$key', 'content_type', 'application/json')"
# pgbench would take the body's ":id" for variables: the colons travel as ~C~
tpl=$(sed 's/:/~C~/g' "$work/meta.json")
body_expr() { echo "replace(replace(replace(\$b\$$tpl\$b\$, '~C~', ':'), '__S__', :client_id::text), '__V__', $1)"; }
cat >"$work/unchanged.sql" <<SQL
SELECT 1 / ((r).status / 100 = 2)::int FROM (SELECT lattice_http.ingest_metadata($req, $(body_expr "'0'")) AS r) x;
SQL
cat >"$work/changed.sql" <<SQL
\set v random(1, 1000000000)
SELECT 1 / ((r).status / 100 = 2)::int FROM (SELECT lattice_http.ingest_metadata($req, $(body_expr ":v::text")) AS r) x;
SQL
cat >"$work/traces.sql" <<SQL
SELECT 1 / ((r).status / 100 = 2)::int FROM (SELECT lattice_http.ingest_traces($req, \$b\$$traces\$b\$) AS r) x;
SQL
pgb() {
    pgbench -n -M prepared -c "$CONC" -j 2 -T "$SECS" -f "$1" >"$work/pgbench.out" 2>&1 || { cat "$work/pgbench.out" >&2; }
    sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/pgbench.out"
}

# ---- wrk: the same through the shim ----
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
LATTICE_SHIM_LISTEN=127.0.0.1 LATTICE_SHIM_PORT=$port \
LATTICE_SHIM_CONNINFO="host=$PGHOST port=$PGPORT dbname=${PGDATABASE:-lattice} user=lattice_shim" \
    "$shim_bin" >/dev/null 2>"$work/shim.log" &
shim_pid=$!
trap 'kill "$shim_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/api/v1/health" >/dev/null 2>&1 && break
    sleep 0.1
done

cat >"$work/post.lua" <<LUA
-- Each connection is one plugin: its own service (__S__), and in "changed"
-- mode a new version on every request.
local mode, path, file = "MODE", "PATH", "FILE"
local f = io.open(file, "rb"); local tpl = f:read("*a"); f:close()
-- "me" is the global thread:set() gives each thread (a local would hide it)
local counter, fixed = 0, nil
local threads = 0
local headers = {["Content-Type"] = "application/json", ["X-Lattice-API-Key"] = "$key"}
function setup(thread) thread:set("me", threads); threads = threads + 1 end
function init(args)
  me = tonumber(me) or 0
  tpl = tpl:gsub("__S__", tostring(me))
  -- the periodic re-send is the same request every time: built once
  if mode ~= "changed" then fixed = wrk.format("POST", path, headers, (tpl:gsub("__V__", "0"))) end
end
function request()
  if fixed then return fixed end
  counter = counter + 1
  return wrk.format("POST", path, headers, (tpl:gsub("__V__", tostring(counter * 100 + me))))
end
function done(summary, latency, requests)
  local bad = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.stderr:write(string.format("non-2xx or socket errors: %d\n", bad))
end
LUA
wrk_run() {  # wrk_run MODE PATH FILE
    sed "s|MODE|$1|; s|PATH|$2|; s|FILE|$3|" "$work/post.lua" >"$work/run.lua"
    # one thread per connection: each connection is its own service
    wrk -t "$CONC" -c "$CONC" -d "${SECS}s" -s "$work/run.lua" "http://127.0.0.1:$port" 2>"$work/wrk.err" \
        | sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p'
    grep -v ': 0$' "$work/wrk.err" >&2 || true
}
# Direct and shim runs alternate, best of ROUNDS each, so that load from
# elsewhere on the machine hits both sides alike.
best() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { print (a > b ? a : b) }'; }
d_unchanged=0 d_changed=0 d_traces=0 s_unchanged=0 s_changed=0 s_traces=0
for _ in $(seq "$ROUNDS"); do
    d_unchanged=$(best "$d_unchanged" "$(pgb "$work/unchanged.sql")")
    s_unchanged=$(best "$s_unchanged" "$(wrk_run unchanged /api/v1/ingest/metadata "$work/meta.json")")
    d_changed=$(best "$d_changed" "$(pgb "$work/changed.sql")")
    s_changed=$(best "$s_changed" "$(wrk_run changed /api/v1/ingest/metadata "$work/meta.json")")
    d_traces=$(best "$d_traces" "$(pgb "$work/traces.sql")")
    s_traces=$(best "$s_traces" "$(wrk_run unchanged /api/v1/performance/traces/batch "$work/traces.json")")
done
kill "$shim_pid" 2>/dev/null || true

# ---- the validator against a bare jsonb cast of the same body (in the server) ----
N=${N:-2000}
body=$(sed "s/__S__/1/g; s/__V__/0/g" "$work/meta.json")
timed() {
    q -c "DO \$d\$ DECLARE t0 timestamptz := clock_timestamp(); b text := \$b\$$body\$b\$; BEGIN
            FOR i IN 1..$N LOOP PERFORM $1; END LOOP;
            RAISE NOTICE '%', extract(epoch FROM clock_timestamp() - t0); END \$d\$" 2>&1 | sed -n 's/.*NOTICE: *//p'
}
t_digest=$(timed "lattice.ingest_check_metadata(b)")
t_check=$(timed "lattice.ingest_check('metadata', b)")
t_cast=$(timed "b::jsonb")

awk -v du="$d_unchanged" -v dc="$d_changed" -v dt="$d_traces" -v su="$s_unchanged" -v sc="$s_changed" -v st="$s_traces" \
    -v n="$N" -v td="$t_digest" -v tc="$t_check" -v tj="$t_cast" -v bytes="$bytes" -v conc="$CONC" -v secs="$SECS" -v rounds="$ROUNDS" 'BEGIN {
    printf "payload: %d bytes (50 routes, 120 dependencies); %d clients, best of %d runs of %ds, alternating\n", bytes, conc, rounds, secs;
    printf "%-38s %14s %14s %10s\n", "request", "direct req/s", "shim req/s", "shim/direct";
    printf "%-38s %14.0f %14.0f %10.2f\n", "metadata, unchanged re-send", du, su, su / du;
    printf "%-38s %14.0f %14.0f %10.2f\n", "metadata, changed snapshot", dc, sc, sc / dc;
    printf "%-38s %14.0f %14.0f %10.2f\n", "trace batch (10 traces)", dt, st, st / dt;
    printf "unchanged / changed: direct %.1fx, shim %.1fx\n", du / dc, su / sc;
    printf "%-58s %8s\n", "per snapshot, in the server", "us";
    printf "%-58s %8.1f\n", "digest: PostgreSQL parser + BLAKE2b (every re-send)", 1e6 * td / n;
    printf "%-58s %8.1f\n", "full validation: json-c + PostgreSQL lexer (changes only)", 1e6 * tc / n;
    printf "%-58s %8.1f\n", "for scale: a bare body::jsonb cast", 1e6 * tj / n;
}'
