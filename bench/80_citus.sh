#!/usr/bin/env bash
# One node against Citus: the same ingest and read requests through the shim,
# once against the bench's single-node cluster and once against a Citus
# coordinator with 2 workers (tests/citus/cluster.sh, all on this machine),
# alternating, best of ROUNDS each.  The requests are the real plugin's
# (tests/fixtures/captured): the periodic metadata re-send, a trace batch,
# and the read API's service list.  On one machine the workers share its
# cores with the coordinator, so this shows what distribution costs per
# request, not what it gains.  Prints figures; asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f "$(pg_config --pkglibdir)/citus.so" ]; then
    echo "citus: skipped (Citus not installed; scripts/citus.sh builds it)"
    exit 0
fi
SECS=${SECS:-4}
ROUNDS=${ROUNDS:-2}
CONC=${CONC:-8}
SHARDS=${LATTICE_CITUS_SHARDS:-8}
work=${LATTICE_WORK:-$(mktemp -d)}/citus
mkdir -p "$work"
chmod 0755 "$work"
shim_bin=${LATTICE_SHIM_BIN:-$PWD/shim/lattice-shim}
single_host=$PGHOST single_port=$PGPORT

LATTICE_PG_FSYNC=off LATTICE_CITUS_SHARDS=$SHARDS tests/citus/cluster.sh start "$work/cluster" >/dev/null
shims=()
cleanup() {
    for p in "${shims[@]}"; do kill "$p" 2>/dev/null || true; done
    tests/citus/cluster.sh stop "$work/cluster" >/dev/null 2>&1 || true
}
trap cleanup EXIT
citus_host=$work/cluster/coord
citus_port=$(sed -n 's/^port = //p' "$work/cluster/coord/data/postgresql.conf" | tail -1)

# the captured requests' bodies; each wrk connection is its own service
python3 - "$work" <<'PY'
import json, os, sys
d = "tests/fixtures/captured"
for f in sorted(os.listdir(d)):
    if not f.endswith(".json"):
        continue
    req = json.load(open(os.path.join(d, f)))
    body = req.get("body_raw")
    if "ingest_metadata" in f and not os.path.exists(sys.argv[1] + "/meta.json"):
        doc = json.loads(body)
        doc["service"]["name"] = "bench-__S__"
        open(sys.argv[1] + "/meta.json", "w").write(json.dumps(doc, separators=(",", ":")))
    if "traces_batch" in f and not os.path.exists(sys.argv[1] + "/traces.json"):
        doc = json.loads(body)
        for t in doc["traces"]:
            t["service_id"] = "bench-__S__"
            t.pop("start_time", None)
        open(sys.argv[1] + "/traces.json", "w").write(json.dumps(doc, separators=(",", ":")))
PY
chmod 0644 "$work"/*.json

# An account on a plan the bench cannot exhaust, its key, its services; a shim.
setup() {  # setup NAME HOST PORT -> writes $work/NAME.{key,port}
    local name=$1 host=$2 port=$3 user key shim_port
    q() { psql -XAtq -h "$host" -p "$port" -U postgres -d lattice -v ON_ERROR_STOP=1 "$@"; }
    q -c "INSERT INTO lattice.plans (id, name, price_cents, rate_limit_per_hour, max_services,
                                     ingest_per_service_per_hour, dashboard_per_hour)
          VALUES ('bench-citus', 'Bench', 0, 2000000000, 100000, 2000000000, 2000000000)
          ON CONFLICT (id) DO NOTHING" >/dev/null
    user=$(q -c "SELECT lattice.create_user('bench-citus-' || md5(random()::text) || '@example.com', 'bench password 1', 'Bench')")
    q -c "UPDATE lattice.users SET plan_id = 'bench-citus' WHERE id = '$user'" >/dev/null
    key=$(q -c "SELECT lattice.create_api_key('$user', 'bench', '{ingest,read}')")
    for c in $(seq 0 "$CONC"); do
        q -c "SELECT (lattice_http.ingest_metadata(jsonb_build_object('api_key', '$key'),
                     replace(\$b\$$(cat "$work/meta.json")\$b\$, '__S__', '$c'))).status" >/dev/null
    done
    shim_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    LATTICE_SHIM_LISTEN=127.0.0.1 LATTICE_SHIM_PORT=$shim_port \
    LATTICE_SHIM_CONNINFO="host=$host port=$port dbname=lattice user=lattice_shim" \
        "$shim_bin" >/dev/null 2>"$work/$name-shim.log" &
    shims+=($!)
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$shim_port/api/v1/health" >/dev/null 2>&1 && break
        sleep 0.1
    done
    echo "$key" >"$work/$name.key"
    echo "$shim_port" >"$work/$name.port"
}
setup single "$single_host" "$single_port"
setup citus "$citus_host" "$citus_port"

cat >"$work/req.lua" <<'LUA'
-- METHOD PATH FILE KEY: each connection is one plugin with its own service
local method, path, file, key = "METHOD", "PATH", "FILE", "KEY"
local threads, fixed = 0, nil
function setup(thread) thread:set("me", threads); threads = threads + 1 end
function init(args)
  local body = nil
  if file ~= "" then
    local f = io.open(file, "rb"); body = f:read("*a"):gsub("__S__", tostring(tonumber(me) or 0)); f:close()
  end
  fixed = wrk.format(method, path, {["Content-Type"] = "application/json", ["X-Lattice-API-Key"] = key}, body)
end
function request() return fixed end
function done(summary)
  local bad = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.stderr:write(string.format("non-2xx or socket errors: %d\n", bad))
end
LUA
wrk_run() {  # wrk_run TARGET METHOD PATH FILE
    sed "s|METHOD|$2|; s|PATH|$3|; s|FILE|$4|; s|KEY|$(cat "$work/$1.key")|" "$work/req.lua" >"$work/run.lua"
    wrk -t "$CONC" -c "$CONC" -d "${SECS}s" -s "$work/run.lua" "http://127.0.0.1:$(cat "$work/$1.port")" \
        2>"$work/wrk.err" | sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p'
    grep -v ': 0$' "$work/wrk.err" >&2 || true
}
best() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { print (a > b ? a : b) }'; }
declare -A r
for k in single-meta citus-meta single-traces citus-traces single-read citus-read; do r[$k]=0; done
for _ in $(seq "$ROUNDS"); do
    for t in single citus; do
        r[$t-meta]=$(best "${r[$t-meta]}" "$(wrk_run "$t" POST /api/v1/ingest/metadata "$work/meta.json")")
        r[$t-traces]=$(best "${r[$t-traces]}" "$(wrk_run "$t" POST /api/v1/performance/traces/batch "$work/traces.json")")
        r[$t-read]=$(best "${r[$t-read]}" "$(wrk_run "$t" GET /api/v1/services "")")
    done
done

awk -v conc="$CONC" -v secs="$SECS" -v rounds="$ROUNDS" -v shards="$SHARDS" \
    -v sm="${r[single-meta]}" -v cm="${r[citus-meta]}" -v st="${r[single-traces]}" -v ct="${r[citus-traces]}" \
    -v sr="${r[single-read]}" -v cr="${r[citus-read]}" 'BEGIN {
    printf "%d clients, best of %d runs of %ds, alternating; Citus: coordinator + 2 workers, %d shards, one machine\n",
           conc, rounds, secs, shards;
    printf "%-36s %12s %12s %12s %14s %14s\n", "request (the plugin'"'"'s own)", "1 node r/s", "Citus r/s", "Citus/1",
           "1 node ms", "Citus ms";
    printf "%-36s %12.0f %12.0f %12.2f %14.2f %14.2f\n", "metadata, unchanged re-send", sm, cm, cm / sm, 1000 * conc / sm, 1000 * conc / cm;
    printf "%-36s %12.0f %12.0f %12.2f %14.2f %14.2f\n", "trace batch", st, ct, ct / st, 1000 * conc / st, 1000 * conc / ct;
    printf "%-36s %12.0f %12.0f %12.2f %14.2f %14.2f\n", "GET /api/v1/services", sr, cr, cr / sr, 1000 * conc / sr, 1000 * conc / cr;
    printf "(ms: time per request with %d in flight, on %d cores shared by every process)\n", conc, 2;
}'
