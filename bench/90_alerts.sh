#!/usr/bin/env bash
# Alerts: one evaluation tick (lattice.alert_tick) at 1k and 10k registered
# services with realistic traffic -- 100 tenants, 5 routes a service, the
# last hour of 5-minute buckets (and the same hour a week ago) for 30 % of
# the services, 2 edges each, ~1 % errors, a few services failing or slow, a
# handful falling out of the liveness window while the ticks run -- and
# what it costs trace ingest to have the tick run every second beside it.
# Also EXPLAIN (ANALYZE, BUFFERS) of each candidate query at the larger size,
# and whether the heaviest (latency) reads index ranges of route_stats and
# edge_stats rather than the whole tables.  A tick or EXPLAIN past TIMEOUT is
# cancelled and shown as "timeout".
# Run by bench/run.sh with the cluster's PG* environment exported (as a
# superuser); prints figures, asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-4}          # seconds of each pgbench round
ROUNDS=${ROUNDS:-2}      # ingest rounds per side, alternating off, on, off, on
CONC=${CONC:-8}          # pgbench clients (each its own tenant)
TICKS=${TICKS:-5}        # measured ticks per size (median), after one warm-up
TICK_BUDGET=${TICK_BUDGET:-30}  # ... fewer (at least one) once they have taken this many seconds
TIMEOUT=${TIMEOUT:-180}  # seconds: a tick or EXPLAIN taking longer is cancelled and shown as "timeout"
TENANTS=${TENANTS:-100}
SIZES=${SIZES:-"1000 10000"}
work=${LATTICE_WORK:-$(mktemp -d)}/alerts
mkdir -p "$work"
chmod 0755 "$work"
q() { psql -XAtq -v ON_ERROR_STOP=1 "$@"; }

tag=$(q -c "SELECT left(md5(random()::text), 8)")
loop_app="bench-alerts-loop-$tag"   # the background ticks' application_name
loop_pid=
stop_loop() {  # ends the background tick loop, cancelling a tick in progress
    [ -n "$loop_pid" ] || return 0
    touch "$work/stop"
    q -c "SELECT count(pg_cancel_backend(a.pid)) FROM pg_stat_activity a WHERE a.application_name = '$loop_app'" \
        >/dev/null 2>&1 || true
    for _ in $(seq 100); do kill -0 "$loop_pid" 2>/dev/null || break; sleep 0.1; done
    kill "$loop_pid" 2>/dev/null || true
    wait "$loop_pid" 2>/dev/null || true
    loop_pid=
}
cleanup() {
    stop_loop
    q -c "ALTER SYSTEM RESET lattice.alert_interval" -c "SELECT pg_reload_conf()" >/dev/null 2>&1 || true
}
trap cleanup EXIT
# The usage worker ticks every lattice.alert_interval seconds on its own: it
# is kept out of the measurements (and given back at the end).
q -c "ALTER SYSTEM SET lattice.alert_interval = 0" -c "SELECT pg_reload_conf()" >/dev/null

# ---- tenants: accounts on a plan the bench cannot exhaust, with channels ----
prefix="bench-alerts-$tag-"
q <<SQL >/dev/null
INSERT INTO lattice.plans (id, name, price_cents, rate_limit_per_hour, max_services, ingest_per_service_per_hour)
VALUES ('bench-alerts', 'Bench', 0, 2000000000, 100000, 2000000000) ON CONFLICT (id) DO NOTHING;
SELECT lattice.create_user('$prefix' || lpad(i::text, 4, '0') || '@example.com', 'bench password 1', 'Bench ' || i)
  FROM generate_series(0, $TENANTS - 1) i;
UPDATE lattice.users SET plan_id = 'bench-alerts' WHERE email LIKE '$prefix%';
-- every account: its own address, verified; every tenth also a webhook, another tenth Slack
INSERT INTO lattice.alert_channels (user_id, kind, name, target, verified_at)
SELECT u.id, 'email', 'On-call', u.email, now() FROM lattice.users u WHERE u.email LIKE '$prefix%';
INSERT INTO lattice.alert_channels (user_id, kind, name, target, secret_sealed, verified_at)
SELECT u.id, 'webhook', 'Pager', 'https://hooks.example.com/lattice/' || md5(u.email), (lattice.webhook_secret_new()).sealed, now()
  FROM lattice.users u WHERE u.email LIKE '$prefix%' AND u.email LIKE '%0@example.com';
INSERT INTO lattice.alert_channels (user_id, kind, name, target, verified_at)
SELECT u.id, 'slack', '#alerts', 'https://hooks.slack.com/services/T0000/B0000/' || md5(u.email), now()
  FROM lattice.users u WHERE u.email LIKE '$prefix%' AND u.email LIKE '%5@example.com';
SQL

# The tenants, numbered, for every session that loads or reads them.
tenants_view="CREATE OR REPLACE TEMP VIEW tn AS
    SELECT u.id AS uid, (row_number() OVER (ORDER BY u.email) - 1)::integer AS tn
      FROM lattice.users u WHERE u.email LIKE '$prefix%';"

# ---- load N services (replacing the previous set) ----
# Service g (tenant * per + k) is: active (traffic) when g % 10 < 3; down
# for days when g % 20 = 3; about to fall out of the liveness window (pushed
# there after the warm-up tick) when g % 200 = 7; otherwise idle but alive
# (metadata re-sends, refreshed again right before the measured ticks).
# Among the active: failing (20 % 5xx) when g % 500 = 1, slow (p95 > 1 s)
# when g % 1000 = 2, 5x slower than a week ago when g % 1000 = 502.
load() {
    local n=$1 per=$(($1 / TENANTS))
    q <<SQL
$tenants_view
SET client_min_messages = warning;
BEGIN;
DELETE FROM lattice.alert_incidents x USING tn WHERE x.user_id = tn.uid;
DELETE FROM lattice.outbox o USING tn WHERE o.account_id = tn.uid AND o.purpose LIKE 'alert.%';
DELETE FROM lattice.graph_events e USING tn WHERE e.user_id = tn.uid;
DELETE FROM lattice.services s USING tn WHERE s.user_id = tn.uid;
DELETE FROM lattice.alert_state;

CREATE TEMP TABLE sv ON COMMIT DROP AS
SELECT gen_random_uuid() AS id, tn.uid, tn.tn, k, tn.tn * $per + k AS g,
       (tn.tn * $per + k) % 10 < 3 AS active,
       (tn.tn * $per + k) % 500 = 1 AS failing,
       (tn.tn * $per + k) % 1000 = 2 AS slow,
       (tn.tn * $per + k) % 1000 = 502 AS regressed
  FROM tn, generate_series(0, $per - 1) k;
ANALYZE sv;

INSERT INTO lattice.services (id, user_id, name, environment, version, language, framework, runtime,
                              status, first_seen, last_seen, metadata)
SELECT sv.id, sv.uid, 'svc-' || sv.k, 'production', '1.0.' || (sv.g % 7), 'typescript', 'express', 'node-v20.20.2',
       'active', now() - interval '30 days',
       CASE WHEN sv.g % 200 = 7 THEN now() - interval '5 minutes'
            WHEN sv.g % 20 = 3 THEN now() - interval '2 days' - (sv.g % 17) * interval '1 day'
            ELSE now() - (sv.g % 120) * interval '1 second' END,
       jsonb_build_object('bench', CASE WHEN sv.g % 200 = 7 THEN 'dying' WHEN sv.g % 20 = 3 THEN 'gone'
                                        WHEN sv.active THEN 'active' ELSE 'idle' END)
  FROM sv;

CREATE TEMP TABLE rt ON COMMIT DROP AS
SELECT * FROM (VALUES (0, 'GET', '/items'), (1, 'POST', '/items'), (2, 'GET', '/items/:id'),
                      (3, 'PUT', '/items/:id'), (4, 'DELETE', '/items/:id')) r(ri, m, p);
INSERT INTO lattice.routes (user_id, service_id, method, path, first_seen, last_seen)
SELECT sv.uid, sv.id, rt.m, rt.p, now() - interval '30 days', now() FROM sv, rt;

-- Histograms, a few of each shape and volume: 0 normal (p95 ~ 55 ms),
-- 1 five times slower, 2 over a second.
CREATE TEMP TABLE hv ON COMMIT DROP AS
SELECT shape, c.n, v,
       lattice.hist_of(ARRAY(SELECT CASE shape WHEN 0 THEN 2 + random() ^ 2 * 60
                                               WHEN 1 THEN 10 + random() ^ 2 * 300
                                               ELSE 900 + random() * 3000 END
                               FROM generate_series(1, c.n + v * 0))) AS h
  FROM generate_series(0, 2) shape, (VALUES (40), (80), (120), (160)) c(n), generate_series(0, 3) v;
-- The last hour's 12 buckets (w = 0) and the same hour a week ago (w = 1).
CREATE TEMP TABLE bk ON COMMIT DROP AS
SELECT i, w, date_bin('5 minutes', now(), timestamptz '2000-01-01') - i * interval '5 minutes' - w * interval '7 days' AS bucket
  FROM generate_series(0, 11) i, generate_series(0, 1) w;

INSERT INTO lattice.route_stats (user_id, service_id, method, path, bucket, matched, request_count, error_count,
                                 client_error_count, total_duration_ms, max_duration_ms, latency_hist)
SELECT sv.uid, sv.id, rt.m, rt.p, bk.bucket, true, hv.n,
       CASE WHEN sv.failing AND bk.w = 0 THEN hv.n / 5 ELSE (hv.n + (sv.g * 7 + bk.i * 3 + rt.ri * 11) % 100) / 100 END,
       hv.n / 50, hv.n * 30.0, 900, hv.h
  FROM sv CROSS JOIN rt CROSS JOIN bk
  JOIN hv ON hv.shape = CASE WHEN bk.w = 0 AND sv.slow THEN 2 WHEN bk.w = 0 AND sv.regressed THEN 1 ELSE 0 END
         AND hv.n = 40 * (1 + (sv.g + rt.ri + bk.i) % 4) AND hv.v = (sv.g + bk.i + rt.ri) % 4
 WHERE sv.active;

-- Two edges per active service, to the next services of its tenant.
INSERT INTO lattice.edge_stats (user_id, source_service_id, target_service_id, bucket, call_count, error_count,
                                total_duration_ms, latency_hist)
SELECT sv.uid, sv.id, t.id, bk.bucket, hv.n,
       CASE WHEN sv.failing AND bk.w = 0 THEN hv.n / 5 ELSE (hv.n + (sv.g * 7 + bk.i * 3 + d * 13) % 100) / 100 END,
       hv.n * 30.0, hv.h
  FROM sv CROSS JOIN generate_series(1, 2) d CROSS JOIN bk
  JOIN sv t ON t.uid = sv.uid AND t.k = (sv.k + d) % $per
  JOIN hv ON hv.shape = CASE WHEN bk.w = 0 AND sv.slow THEN 2 WHEN bk.w = 0 AND sv.regressed THEN 1 ELSE 0 END
         AND hv.n = 40 * (1 + (sv.g + d + bk.i) % 4) AND hv.v = (sv.g + bk.i + d) % 4
 WHERE sv.active;

INSERT INTO lattice.connections (user_id, source_service_id, target_service_id, call_count, error_count,
                                 total_duration_ms, latency_hist, first_seen, last_seen)
SELECT e.user_id, e.source_service_id, e.target_service_id, sum(e.call_count), sum(e.error_count),
       sum(e.total_duration_ms), lattice.hist_sum(e.latency_hist), now() - interval '30 days', max(e.bucket)
  FROM lattice.edge_stats e JOIN tn ON tn.uid = e.user_id
 GROUP BY 1, 2, 3;
INSERT INTO lattice.graph_events (user_id, at, kind, source_service_id, target_service_id)
SELECT k.user_id, k.first_seen, 'edge_added', k.source_service_id, k.target_service_id
  FROM lattice.connections k JOIN tn ON tn.uid = k.user_id;
COMMIT;
ANALYZE lattice.services, lattice.routes, lattice.route_stats, lattice.edge_stats, lattice.connections,
        lattice.graph_events, lattice.alert_incidents;
SQL
}

# One tick, timed in the server: "ms|result" ("timeout|" past TIMEOUT).
tick() {
    q -c "SET statement_timeout = '${TIMEOUT}s'" \
      -c "SELECT round((extract(epoch FROM clock_timestamp() - now()) * 1000)::numeric, 1) || '|' || r
            FROM (SELECT lattice.alert_tick(now()) AS r OFFSET 0) x" 2>/dev/null || echo "timeout|"
}
# the median of the numbers read (a line "timeout" counts as the slowest; none: "-")
median() {
    sed "s/^timeout\$/1e99/" | sort -g | awk '{ v[NR] = $1 }
        END { m = NR ? (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) : "-"; print (m + 0 >= 1e99 ? "timeout" : m) }'
}

declare -A n_ticks t_load t_warm t_med rows_rs rows_es inc_open inc_total outbox down
for n in $SIZES; do
    s0=$(date +%s.%N)
    load "$n"
    t_load[$n]=$(awk -v a="$s0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    rows_rs[$n]=$(q -c "SELECT count(*) FROM lattice.route_stats")
    rows_es[$n]=$(q -c "SELECT count(*) FROM lattice.edge_stats")
    # warm-up: initialises the cursors and opens the incidents of the failing and slow
    t_warm[$n]=$(tick | cut -d'|' -f1)
    # the dying services now fall out of the 15-minute window while the ticks run, a
    # TICKS-th of them before each (a second apart); the idle ones re-sent their
    # metadata in the last two minutes
    q -c "$tenants_view
          UPDATE lattice.services s SET last_seen = now() - interval '15 minutes'
                 + (d.rn % $TICKS - 0.2) * interval '1 second'
            FROM (SELECT x.user_id, x.id, row_number() OVER (ORDER BY x.user_id, x.id) AS rn
                    FROM lattice.services x JOIN tn ON tn.uid = x.user_id
                   WHERE x.metadata ->> 'bench' = 'dying') d
           WHERE s.user_id = d.user_id AND s.id = d.id" \
      -c "$tenants_view
          UPDATE lattice.services s SET last_seen = now() - random() * interval '2 minutes'
            FROM tn WHERE s.user_id = tn.uid AND s.metadata ->> 'bench' = 'idle'" >/dev/null
    : >"$work/ticks.$n"
    t0=$(date +%s)
    for i in $(seq "$TICKS"); do
        tick >>"$work/ticks.$n"
        if [ "$i" = "$TICKS" ] || [ $(($(date +%s) - t0)) -ge "$TICK_BUDGET" ]; then break; fi
        sleep 1
    done
    n_ticks[$n]=$(wc -l <"$work/ticks.$n")
    t_med[$n]=$(cut -d'|' -f1 "$work/ticks.$n" | median)
    IFS='|' read -r a b c d < <(q -c "$tenants_view
        SELECT (SELECT count(*) FILTER (WHERE x.status = 'open') || '|' || count(*) || '|'
                       || count(*) FILTER (WHERE x.rule = 'service_down')
                  FROM lattice.alert_incidents x JOIN tn ON tn.uid = x.user_id)
               || '|' || (SELECT count(*) FROM lattice.outbox o JOIN tn ON tn.uid = o.account_id
                           WHERE o.purpose LIKE 'alert.%')")
    inc_open[$n]=$a inc_total[$n]=$b down[$n]=$c outbox[$n]=$d
    by_rule=$(q -c "$tenants_view
        SELECT string_agg(rule || ' ' || c, ', ' ORDER BY rule) FROM (
            SELECT x.rule, count(*) AS c FROM lattice.alert_incidents x JOIN tn ON tn.uid = x.user_id GROUP BY 1) y")
    echo "$n services: incidents by rule: $by_rule; tick results: $(cut -d'|' -f2- "$work/ticks.$n" | tail -1)"
done

# ---- the candidate queries, at the last size: time, buffers, scans ----
# The candidates are PL/pgSQL: auto_explain shows the plans of the statements
# inside them (as notices), appended after the outer plan.
explain() {  # explain NAME ARGS
    q -c "SET statement_timeout = '${TIMEOUT}s'" -c "LOAD 'auto_explain'" \
      -c "SET auto_explain.log_min_duration = 0" -c "SET auto_explain.log_nested_statements = on" \
      -c "SET auto_explain.log_analyze = on" -c "SET auto_explain.log_level = notice" \
      -c "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM lattice.alert_candidates_$1($2)" >"$work/plan.$1" 2>"$work/nested.$1" \
        || echo "Execution Time: timeout (> ${TIMEOUT} s)" >"$work/plan.$1"
    cat "$work/nested.$1" >>"$work/plan.$1"
    printf '%-10s %12s %s\n' "$1" "$(sed -n 's/^ *Execution Time: //p' "$work/plan.$1")" \
        "$(grep -m1 '^ *Buffers:' "$work/plan.$1" | sed 's/^ *Buffers: //')"
}
{
    printf '%-10s %12s %s\n' candidates execution "buffers (whole query)"
    explain down "now(), now() - interval '1 minute'"
    explain errors "now()"
    explain latency "now()"
    explain ingest "now(), now() - interval '1 minute'"
    explain topology "0, (SELECT max(id) FROM lattice.graph_events), 0, (SELECT COALESCE(max(id), 0) FROM lattice.service_changes)"
} >"$work/candidates.txt"
scan_summary() {  # the scan nodes of a plan, counted
    grep -E 'Scan' "$work/plan.$1" | sed -E 's/^ *(-> *)?//; s/  \(cost=.*//' | sort | uniq -c | sed 's/^ */    /'
}
seq_rs=no; grep -q 'Seq Scan on route_stats' "$work/plan.latency" && seq_rs=yes
seq_es=no; grep -q 'Seq Scan on edge_stats' "$work/plan.latency" && seq_es=yes
idx_rs=no; grep -q 'route_stats_bucket_idx' "$work/plan.latency" && idx_rs=yes
idx_es=no; grep -q 'edge_stats_bucket_idx' "$work/plan.latency" && idx_es=yes
# what the stats scans do per row read: their filters' function calls, rows, time
stats_scans() {  # stats_scans PLAN
    awk '/(Scan|Scan using [a-z_]+) on (route|edge)_stats/ { s = $0; sub(/^ *(-> *)?/, "", s); sub(/  \(cost=[^)]*\)/, "", s); f = ""; next }
         s != "" && /^ *Filter:/ { n = gsub(/lattice\.[a-z_]+\(/, "&"); f = n " lattice.* calls in the filter"; if ($0 ~ /alert_config_of/) f = f " (alert_config_of among them)"; next }
         s != "" && /Rows Removed by Filter/ { r = $0; sub(/^ */, "", r); print "    " s "; " f "; " r; s = ""; next }
         s != "" && /->/ { print "    " s; s = "" }' "$work/plan.$1"
}

# ---- ingest of trace batches, with and without the tick running every second ----
nk=$((CONC < TENANTS ? CONC : TENANTS))
keys=$(q -c "$tenants_view
    SELECT string_agg(quote_literal(lattice.create_api_key(tn.uid, 'bench')), ', ' ORDER BY tn.tn)
      FROM tn WHERE tn.tn < $nk")
# 10 traces of svc-1 (active), called by svc-5 and svc-6 of the same tenant
traces=$(python3 -c '
import json
routes = [("GET", "/items"), ("POST", "/items"), ("GET", "/items/%d"), ("PUT", "/items/%d"), ("DELETE", "/items/%d")]
t = []
for i in range(10):
    m, p = routes[i % 5]
    p = p % (100 + i) if "%d" in p else p
    t.append({"service_id": "svc-1", "operation_name": m + " " + p, "operation_type": "http_request",
              "duration_ms": 3 + 7 * i, "status_code": 404 if i == 7 else 200, "method": m, "path": p,
              "caller_service": "svc-%d" % (5 + i % 2)})
print(json.dumps({"traces": t}, separators=(",", ":")))')
cat >"$work/traces.sql" <<SQL
SELECT 1 / ((r).status / 100 = 2)::int
  FROM (SELECT lattice_http.ingest_traces(jsonb_build_object('api_key', (ARRAY[$keys])[:client_id % $nk + 1],
                                                             'content_type', 'application/json'),
                                          \$b\$$traces\$b\$) AS r) x;
SQL
pgb() {
    pgbench -n -M prepared -c "$CONC" -j 2 -T "$SECS" -f "$work/traces.sql" >"$work/pgbench.out" 2>&1 \
        || cat "$work/pgbench.out" >&2
    sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/pgbench.out"
}
start_loop() {
    rm -f "$work/stop"
    ( while [ ! -e "$work/stop" ]; do
          echo >>"$work/loop.started"
          PGAPPNAME=$loop_app q -c "SELECT round((extract(epoch FROM clock_timestamp() - now()) * 1000)::numeric, 1)
                                     FROM (SELECT lattice.alert_tick(now()) AS r OFFSET 0) x" \
              >>"$work/loop.ticks" 2>/dev/null || true
          sleep 1
      done ) &
    loop_pid=$!
}
: >"$work/loop.ticks"
: >"$work/loop.started"
off_all="" on_all=""
for _ in $(seq "$ROUNDS"); do
    off_all="$off_all $(pgb)"
    start_loop
    on_all="$on_all $(pgb)"
    stop_loop
done
loop_ticks=$(wc -l <"$work/loop.ticks")
loop_started=$(wc -l <"$work/loop.started")
loop_med=$(median <"$work/loop.ticks")

# ---- figures ----
read -ra sizes <<<"$SIZES"
n1=${sizes[0]} n2=${sizes[-1]}
printf 'tenants: %d; 5 routes a service; 30%% of services with traffic (12 buckets of the last hour + the same hour a week ago, 2 edges each)\n' "$TENANTS"
printf '%-9s %11s %10s %7s %10s %11s %6s %9s %6s %6s %7s\n' services route_stats edge_stats "load s" "warm-up ms" "tick ms p50" ticks incidents open down outbox
for n in $SIZES; do
    printf '%-9s %11s %10s %7s %10s %11s %6s %9s %6s %6s %7s\n' "$n" "${rows_rs[$n]}" "${rows_es[$n]}" "${t_load[$n]}" \
        "${t_warm[$n]}" "${t_med[$n]}" "${n_ticks[$n]}" "${inc_total[$n]}" "${inc_open[$n]}" "${down[$n]}" "${outbox[$n]}"
done
if [ "$n1" != "$n2" ]; then
    awk -v a="${t_med[$n1]}" -v b="${t_med[$n2]}" -v n1="$n1" -v n2="$n2" \
        'BEGIN { printf "tick time %s/%s services: %.2fx (services %.0fx)\n", n2, n1, b / a, n2 / n1 }'
fi
echo "candidate queries at $n2 services, EXPLAIN (ANALYZE, BUFFERS):"
sed 's/^/  /' "$work/candidates.txt"
echo "alert_candidates_latency: route_stats_bucket_idx used: $idx_rs; edge_stats_bucket_idx used: $idx_es;" \
     "Seq Scan on route_stats: $seq_rs; Seq Scan on edge_stats: $seq_es"
echo "  its scans:"
scan_summary latency
echo "  its reads of route_stats/edge_stats:"
stats_scans latency
echo "alert_candidates_errors, its reads of route_stats/edge_stats:"
stats_scans errors
awk -v off="$off_all" -v on="$on_all" -v conc="$CONC" -v secs="$SECS" -v rounds="$ROUNDS" -v n="$n2" \
    -v lt="$loop_ticks" -v ls="$loop_started" -v lm="$loop_med" 'BEGIN {
    k = split(off, a, " "); m = split(on, b, " "); so = 0; sn = 0;
    for (i = 1; i <= k; i++) so += a[i];
    for (i = 1; i <= m; i++) sn += b[i];
    so /= (k ? k : 1); sn /= (m ? m : 1);
    printf "trace batches (10 traces), %d clients, %d tenants of %s services, %d rounds of %ds each side, alternating\n", conc, conc, n, rounds, secs;
    printf "%-40s %12s   %s\n", "", "req/s (mean)", "rounds";
    printf "%-40s %12.0f   %s\n", "alert tick off", so, off;
    printf "%-40s %12.0f   %s\n", "alert tick every second", sn, on;
    printf "on / off: %.2f (ticks beside: %d started, %d finished, median %s ms; one in progress at the end is cancelled)\n",
           (so > 0 ? sn / so : 0), ls, lt, (lt ? lm : "-");
}'
