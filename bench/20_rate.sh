#!/usr/bin/env bash
# Rate counters: the C check in a C loop, the SQL-level check against the same
# limit kept in a table (INSERT ... ON CONFLICT DO UPDATE, UNLOGGED and
# logged), shared memory per key, and the cost of the check in a request.
# Run by bench/run.sh with the cluster's PG* environment exported.
set -uo pipefail
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
secs=${RATE_BENCH_SECONDS:-5}
q() { psql -XAtq -v ON_ERROR_STOP=1 -c "$1"; }
tps() {  # tps SCRIPTFILE -> transactions per second, one client
    "$PGBIN/pgbench" -n -M prepared -c 1 -T "$secs" -f "$1" 2>/dev/null |
        sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | cut -d. -f1
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1fx", a / b; else print "n/a" }'; }
work=$(mktemp -d /tmp/lattice-bench-rate.XXXXXX)
trap 'rm -rf "$work"; q "DROP TABLE IF EXISTS bench_rate_unlogged, bench_rate_logged" >/dev/null 2>&1' EXIT
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"

q "DROP TABLE IF EXISTS bench_rate_unlogged, bench_rate_logged;
   CREATE UNLOGGED TABLE bench_rate_unlogged (key text PRIMARY KEY, n bigint NOT NULL);
   CREATE TABLE bench_rate_logged (key text PRIMARY KEY, n bigint NOT NULL);" >/dev/null

# 1. the check itself, looping inside C (lock, probe, GCRA, count)
c_loop=$(q "SELECT round(lattice.rate_bench(3000000, 1000))")

# 2. many checks in one SQL statement: C counter vs table counters
loop_n=200000
t_sql() {  # milliseconds of one statement
    local s e
    s=$(date +%s%N); q "$1" >/dev/null; e=$(date +%s%N)
    echo $(( (e - s) / 1000000 ))
}
ms_c=$(t_sql "SELECT count(*) FILTER (WHERE (lattice.rate_check('bench', (g % 1000)::text, 1000000000, 3600)).allowed)
              FROM generate_series(1, $loop_n) g")
ms_u=$(t_sql "DO \$\$ BEGIN FOR i IN 1..$loop_n LOOP
                INSERT INTO bench_rate_unlogged VALUES ((i % 1000)::text, 1)
                ON CONFLICT (key) DO UPDATE SET n = bench_rate_unlogged.n + 1; END LOOP; END \$\$")
ms_l=$(t_sql "DO \$\$ BEGIN FOR i IN 1..$loop_n LOOP
                INSERT INTO bench_rate_logged VALUES ((i % 1000)::text, 1)
                ON CONFLICT (key) DO UPDATE SET n = bench_rate_logged.n + 1; END LOOP; END \$\$")
per_s() { awk -v n="$loop_n" -v ms="$1" 'BEGIN { printf "%d", n * 1000 / (ms > 0 ? ms : 1) }'; }
loop_c=$(per_s "$ms_c"); loop_u=$(per_s "$ms_u"); loop_l=$(per_s "$ms_l")

# 3. one check per transaction, as a request does it (pgbench, 1 client)
cat >"$work/c.sql" <<'SQL'
\set k random(1, 1000)
SELECT allowed FROM lattice.rate_check('bench_tx', :k::text, 1000000000, 3600);
SQL
cat >"$work/u.sql" <<'SQL'
\set k random(1, 1000)
INSERT INTO bench_rate_unlogged VALUES (:k::text, 1) ON CONFLICT (key) DO UPDATE SET n = bench_rate_unlogged.n + 1;
SQL
cat >"$work/l.sql" <<'SQL'
\set k random(1, 1000)
INSERT INTO bench_rate_logged VALUES (:k::text, 1) ON CONFLICT (key) DO UPDATE SET n = bench_rate_logged.n + 1;
SQL
tx_c=$(tps "$work/c.sql"); tx_u=$(tps "$work/u.sql"); tx_l=$(tps "$work/l.sql")
# the bench cluster runs fsync=off; a real server flushes WAL at every commit
fsync_was=$(q "SHOW fsync")
q "ALTER SYSTEM SET fsync = on" >/dev/null; q "SELECT pg_reload_conf()" >/dev/null; sleep 0.3
tx_lf=$(tps "$work/l.sql")
q "ALTER SYSTEM RESET fsync" >/dev/null; q "SELECT pg_reload_conf()" >/dev/null

# 4. shared memory
IFS='|' read -r tsize entry_b table_b b100k <<<"$(q "SELECT table_size, entry_bytes, table_bytes, bytes_for_100k_keys FROM lattice.rate_memory()")"

# 5. a tenant request at SQL level: set the tenant, check its quota, read its rows
uid=$(q "INSERT INTO lattice.users (email, name) VALUES ('bench-' || gen_random_uuid() || '@rate.test', 'bench') RETURNING id")
q "UPDATE lattice.plans SET rate_limit_per_hour = 2000000000 WHERE id = 'standard'" >/dev/null
# the check runs inside authentication's statement, so it adds no round trip
cat >"$work/req_on.sql" <<SQL
BEGIN;
SELECT lattice.test_set_tenant('$uid'), (lattice.rate_enforce_tenant('$uid')).allowed;
SELECT count(*) FROM lattice.services;
COMMIT;
SQL
sed "s/, (lattice.rate_enforce_tenant('$uid')).allowed//" "$work/req_on.sql" >"$work/req_off.sql"
# the machine is shared: alternate short runs and keep each side's best
req_on=0; req_off=0
for _ in 1 2 3 4 5; do
    a=$(secs=1 tps "$work/req_on.sql"); b=$(secs=1 tps "$work/req_off.sql")
    [ "${a:-0}" -gt "$req_on" ] && req_on=$a
    [ "${b:-0}" -gt "$req_off" ] && req_off=$b
done
q "UPDATE lattice.plans SET rate_limit_per_hour = 1000 WHERE id = 'standard'" >/dev/null

printf '\n%-58s %14s\n' "rate checks" "per second"
printf '%-58s %14s\n' "C check, loop inside C (1000 keys)" "$c_loop"
printf '%-58s %14s\n' "SQL loop, one statement: lattice.rate_check (shared memory)" "$loop_c"
printf '%-58s %14s\n' "SQL loop: UNLOGGED table counter (ON CONFLICT DO UPDATE)" "$loop_u"
printf '%-58s %14s\n' "SQL loop: logged table counter" "$loop_l"
printf '%-58s %14s\n' "1 check per transaction: lattice.rate_check" "$tx_c"
printf '%-58s %14s\n' "1 check per transaction: UNLOGGED table counter" "$tx_u"
printf '%-58s %14s\n' "1 check per transaction: logged table counter (fsync=$fsync_was)" "$tx_l"
printf '%-58s %14s\n' "1 check per transaction: logged table counter (fsync=on)" "$tx_lf"
echo
echo "ratios (shared memory vs table):"
printf '  SQL loop        vs UNLOGGED %s, vs logged %s\n' "$(ratio "$loop_c" "$loop_u")" "$(ratio "$loop_c" "$loop_l")"
printf '  per transaction vs UNLOGGED %s, vs logged %s (fsync=%s), vs logged %s (fsync=on)\n' \
    "$(ratio "$tx_c" "$tx_u")" "$(ratio "$tx_c" "$tx_l")" "$fsync_was" "$(ratio "$tx_c" "$tx_lf")"
echo
printf 'shared memory: %s bytes per entry; table of %s keys = %s bytes (%s per key); 100k keys = %s bytes (%.1f MB)\n' \
    "$entry_b" "$tsize" "$table_b" "$(( table_b / tsize ))" "$b100k" "$(awk -v b="$b100k" 'BEGIN { print b / 1048576 }')"
echo
printf 'tenant request at SQL level (BEGIN; set tenant; [quota check]; read; COMMIT), best of 5 x 1 s:\n'
printf '  with check %s tps, without %s tps: overhead %s%%\n' "$req_on" "$req_off" \
    "$(awk -v a="$req_on" -v b="$req_off" 'BEGIN { if (b > 0) printf "%.1f", (b - a) * 100 / b; else print "n/a" }')"

q "DELETE FROM lattice.users WHERE id = '$uid'" >/dev/null

# 6. through the shim, with the quota check on and off
#    (lattice.rate_limits_enabled, a superuser setting: ALTER SYSTEM + reload
#    reaches the shim's pooled connections at their next statement), rounds
#    alternating on the shared machine; the tenant's plan allows more than
#    wrk can send.  Two routes: GET /api/v1/auth/me with a key (the api
#    class: one cell) and POST /api/v1/performance/traces/batch, the plugin's
#    most frequent request (the ingest class: the service's cell and the
#    account's ceiling, checked together).
shim_secs=${RATE_SHIM_SECONDS:-3}
shim_rounds=${RATE_SHIM_ROUNDS:-5}
conns=${RATE_SHIM_CONNECTIONS:-16}
bin=${LATTICE_SHIM_BIN:-shim/lattice-shim}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
key=$(psql -XAtq -v ON_ERROR_STOP=1 <<'SQL'
INSERT INTO lattice.plans (id, name, price_cents, rate_limit_per_hour, ingest_per_service_per_hour)
     VALUES ('bench', 'Bench', 0, 2000000000, 2000000000)
    ON CONFLICT (id) DO UPDATE SET rate_limit_per_hour = EXCLUDED.rate_limit_per_hour,
                                   ingest_per_service_per_hour = EXCLUDED.ingest_per_service_per_hour;
SELECT lattice.create_user('bench-rate-' || pg_catalog.gen_random_uuid() || '@example.com', 'bench password 123', 'Bench')
    AS uid \gset
UPDATE lattice.users SET plan_id = 'bench' WHERE id = :'uid';
SELECT lattice.create_api_key(:'uid', 'bench');
SQL
)
base="http://127.0.0.1:$port"
fixture() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["body_raw"], end="")' "tests/fixtures/captured/$1"; }
fixture 001-POST-api_v1_ingest_metadata.json >"$work/metadata.json"
fixture 003-POST-api_v1_performance_traces_batch.json >"$work/traces.json"
python3 - "$work/traces.json" "$work/traces.lua" <<'PY'
import json, sys
body = open(sys.argv[1]).read()
open(sys.argv[2], 'w').write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                             'wrk.body = %s\n' % json.dumps(body))
PY
LATTICE_SHIM_PORT=$port LATTICE_SHIM_ACCESS_LOG=off LATTICE_SHIM_THREADS=$((conns + 16)) \
    LATTICE_SHIM_PER_ADDRESS_MAX=$((conns + 16)) "$bin" >"$work/shim.log" 2>&1 &
shim=$!
trap 'kill $shim 2>/dev/null; wait $shim 2>/dev/null; q "ALTER SYSTEM RESET lattice.rate_limits_enabled" >/dev/null 2>&1;
      q "SELECT pg_reload_conf()" >/dev/null 2>&1; rm -rf "$work";
      q "DROP TABLE IF EXISTS bench_rate_unlogged, bench_rate_logged" >/dev/null 2>&1' EXIT
for _ in $(seq 100); do curl -fs "$base/api/v1/health" >/dev/null && break; sleep 0.05; done
me() { curl -s -D - -o /dev/null -H "X-Lattice-API-Key: $key" "$base/api/v1/auth/me"; }
curl -s -o /dev/null -H "X-Lattice-API-Key: $key" -H 'Content-Type: application/json' \
    --data-binary @"$work/metadata.json" "$base/api/v1/ingest/metadata"

# rate_checks on|off: set it, then wait until every pooled connection
# answers accordingly (RateLimit-Limit is there only when the check ran)
rate_checks() {
    local want=$1 seen=0
    if [ "$1" = on ]; then q "ALTER SYSTEM RESET lattice.rate_limits_enabled" >/dev/null
    else q "ALTER SYSTEM SET lattice.rate_limits_enabled = off" >/dev/null; fi
    q "SELECT pg_reload_conf()" >/dev/null
    for _ in $(seq 200); do
        if me | grep -qi '^ratelimit-limit:'; then [ "$want" = on ] && seen=$((seen + 1)) || seen=0
        else [ "$want" = off ] && seen=$((seen + 1)) || seen=0; fi
        [ "$seen" -ge 20 ] && return 0
        sleep 0.01
    done
    echo "lattice.rate_limits_enabled = $want did not reach the shim" >&2; return 1
}
stats() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { printf "%d %d", v[NR], v[int((NR + 1) / 2)] }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", (b - a) * 100 / b; else print "n/a" }'; }

# compare_shim LABEL STATUS WRK_ARGS...: rounds with the check on and off
compare_shim() {
    local label=$1 want=$2 status on_all=() off_all=() bad=0 rps nb r side
    shift 2
    status=$(wrk -t1 -c1 -d1s "$@" | awk '/Non-2xx/ { print "bad" }')
    if [ -n "$status" ]; then echo "shim: $label answered non-$want; not measured"; tail -3 "$work/shim.log"; return; fi
    wrk -t2 -c"$conns" -d1s "$@" >/dev/null  # warm the pool
    for r in $(seq "$shim_rounds"); do
        # alternate which side goes first, so drift in the machine's load cancels out
        for side in $( [ $((r % 2)) = 1 ] && echo "on off" || echo "off on"); do
            rate_checks "$side" || break 2
            read -r rps nb < <(wrk -t2 -c"$conns" -d"${shim_secs}s" "$@" |
                awk '/Requests\/sec/ { rps = $2 } /Non-2xx/ { bad = $NF } END { printf "%.0f %d\n", rps, bad }')
            bad=$((bad + nb))
            if [ "$side" = on ]; then on_all+=("$rps"); else off_all+=("$rps"); fi
        done
    done
    rate_checks on
    read -r on_best on_med <<<"$(stats "${on_all[@]}")"
    read -r off_best off_med <<<"$(stats "${off_all[@]}")"
    echo
    printf 'through the shim: %s, wrk %s connections, %s rounds x %ss each way, alternating:\n' \
        "$label" "$conns" "${#on_all[@]}" "$shim_secs"
    printf '  rounds, check on : %s req/s\n' "${on_all[*]}"
    printf '  rounds, check off: %s req/s\n' "${off_all[*]}"
    printf '  %-10s %12s %12s %10s\n' "" "check on" "check off" "overhead"
    printf '  %-10s %12s %12s %9s%%\n' "best" "$on_best" "$off_best" "$(pct "$on_best" "$off_best")"
    printf '  %-10s %12s %12s %9s%%\n' "median" "$on_med" "$off_med" "$(pct "$on_med" "$off_med")"
    [ "$bad" -eq 0 ] || echo "  WARNING: $bad non-2xx answers during the runs"
}
compare_shim "GET /api/v1/auth/me (API key, class api)" 200 \
    -H "X-Lattice-API-Key: $key" "$base/api/v1/auth/me"
compare_shim "POST /api/v1/performance/traces/batch (captured plugin batch, class ingest)" 201 \
    -s "$work/traces.lua" -H "X-Lattice-API-Key: $key" "$base/api/v1/performance/traces/batch"
echo "  (off skips the check and the RateLimit-*/X-RateLimit-* headers it adds to each answer; goal < 3 %)"
