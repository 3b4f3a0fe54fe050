#!/usr/bin/env bash
# The shim's cost over the database's own limit, on loopback:
#   (a) GET /api/v1/health                       wrk, no database
#   (b) GET /api/v1/auth/me with an API key      wrk, one SQL function (one indexed lookup)
#   (c) the same SQL function                    pgbench -M prepared, same client concurrency
# Prints req/s, p50, p99 and the ratio (b)/(c).  Goals: (a) >= 20k req/s, (b) >= 0.5 x (c).
# Run by bench/run.sh (PGHOST/PGPORT/LATTICE_SHIM_BIN/LATTICE_WORK exported).
#   LATTICE_BENCH_SECONDS (10)  LATTICE_BENCH_CONNECTIONS (16)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${LATTICE_BENCH_SECONDS:-10}
conns=${LATTICE_BENCH_CONNECTIONS:-16}
work=${LATTICE_WORK:-$(mktemp -d)}
bin=${LATTICE_SHIM_BIN:-shim/lattice-shim}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# A tenant with an API key on a plan whose quota the benchmark cannot exhaust.
key=$(psql -XAtq -v ON_ERROR_STOP=1 <<'SQL'
INSERT INTO lattice.plans (id, name, price_cents, rate_limit_per_hour) VALUES ('bench', 'Bench', 0, 2000000000)
    ON CONFLICT (id) DO UPDATE SET rate_limit_per_hour = EXCLUDED.rate_limit_per_hour;
SELECT lattice.create_user('bench-' || pg_catalog.gen_random_uuid() || '@example.com', 'bench password 123', 'Bench')
    AS uid \gset
UPDATE lattice.users SET plan_id = 'bench' WHERE id = :'uid';
SELECT lattice.create_api_key(:'uid', 'bench');
SQL
)

LATTICE_SHIM_PORT=$port LATTICE_SHIM_ACCESS_LOG=off LATTICE_SHIM_THREADS=$((conns + 16)) LATTICE_SHIM_POOL_SIZE=$conns \
    LATTICE_SHIM_PER_ADDRESS_MAX=$((conns + 16)) "$bin" >"$work/shim-bench.log" 2>&1 &
shim=$!
trap 'kill $shim 2>/dev/null; wait $shim 2>/dev/null' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/api/v1/health" >/dev/null && break; sleep 0.05; done
status=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Lattice-API-Key: $key" "http://127.0.0.1:$port/api/v1/auth/me")
[ "$status" = 200 ] || { echo "GET /api/v1/auth/me answered $status; log:"; tail -5 "$work/shim-bench.log"; exit 1; }

# wrk -> "req/s p50_ms p99_ms non2xx"
run_wrk() {
    local out
    out=$(wrk -t2 -c"$conns" -d"${secs}s" --latency "$@")
    awk '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /Requests\/sec/ { rps = $2 }
        /^ *50%/ { p50 = ms($2) }
        /^ *99%/ { p99 = ms($2) }
        /Non-2xx/ { bad = $NF }
        END { printf "%.0f %.2f %.2f %d\n", rps, p50, p99, bad }' <<<"$out"
}

read -r a_rps a_p50 a_p99 a_bad < <(run_wrk "http://127.0.0.1:$port/api/v1/health")
read -r b_rps b_p50 b_p99 b_bad < <(run_wrk -H "X-Lattice-API-Key: $key" "http://127.0.0.1:$port/api/v1/auth/me")

# (c): the shim's own statement, as the shim's role, same concurrency.
printf 'SELECT r.status, r.headers::text, r.body FROM lattice_http.auth_me(%s::jsonb, NULL) r;\n' \
    "'{\"api_key\": \"$key\", \"method\": \"GET\", \"client_addr\": \"127.0.0.1\"}'" >"$work/auth_me.sql"
rm -f "$work"/pgbench_log.*
(cd "$work" && pgbench -n -M prepared -U lattice_shim -c "$conns" -j 2 -T "$secs" -l --log-prefix=pgbench_log \
     -f auth_me.sql >"$work/pgbench.out" 2>&1) || { cat "$work/pgbench.out"; exit 1; }
c_rps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/pgbench.out" | tail -1)
read -r c_p50 c_p99 < <(cat "$work"/pgbench_log.* | awk '{print $3}' | sort -n |
    awk '{v[NR] = $1} END { printf "%.2f %.2f\n", v[int(NR * 0.5)] / 1000, v[int(NR * 0.99)] / 1000 }')
rm -f "$work"/pgbench_log.*

printf '%-44s %10s %9s %9s %8s\n' "shim, $conns connections, ${secs}s each" "req/s" "p50 ms" "p99 ms" "non-2xx"
printf '%-44s %10s %9s %9s %8s\n' "(a) GET /api/v1/health" "$a_rps" "$a_p50" "$a_p99" "$a_bad"
printf '%-44s %10s %9s %9s %8s\n' "(b) GET /api/v1/auth/me (API key)" "$b_rps" "$b_p50" "$b_p99" "$b_bad"
printf '%-44s %10.0f %9s %9s %8s\n' "(c) pgbench -M prepared lattice_http.auth_me" "$c_rps" "$c_p50" "$c_p99" "-"
awk -v a="$a_rps" -v b="$b_rps" -v c="$c_rps" 'BEGIN {
    printf "ratio (b)/(c) = %.2f   (goal >= 0.50)\n", b / c
    printf "(a) = %.0f req/s     (goal >= 20000)\n", a }'
