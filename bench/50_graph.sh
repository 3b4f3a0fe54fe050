#!/usr/bin/env bash
# Graph traversal: the C graph (CSR cached per tenant and version) against the
# best WITH RECURSIVE we could write, on synthetic tenants of 1k, 10k and 100k
# services with ~10 calls each (random targets: one giant cycle, the worst
# case for impact).  Impact (full transitive closure of dependents), 3-hop
# dependents and cycles; cold (first call after a version bump: load + answer)
# and warm; memory per cached tenant graph; GET /graph through the shim for
# the 1k tenant.  Times are the best of several runs (the machine is shared;
# medians wander with the load), the CTE's runs are few where it is slow.
# Run by bench/run.sh with the cluster's PG* environment exported; prints
# figures, asserts nothing.
#   GRAPH_SIZES="1000 10000 100000"   GRAPH_DEGREE=10
set -euo pipefail
SIZES=${GRAPH_SIZES:-1000 10000 100000}
DEGREE=${GRAPH_DEGREE:-10}
ROOT=${LATTICE_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
q() { psql -XAtq -v ON_ERROR_STOP=1 "$@"; }

# One tenant of n services, each calling DEGREE random others (duplicates
# dropped), generated in SQL.
make_tenant() {  # make_tenant N -> user id
    local n=$1 user
    user=$(q -c "SELECT lattice.create_user('graph-bench-$n-' || md5(random()::text) || '@example.com', 'bench password 1', 'Bench')")
    q >/dev/null <<SQL
SELECT setseed(0.5);
INSERT INTO lattice.services (user_id, name) SELECT '$user', 's' || i FROM generate_series(0, $n - 1) i;
CREATE TEMP TABLE ids AS SELECT (substr(name, 2))::int AS i, id FROM lattice.services WHERE user_id = '$user';
CREATE INDEX ON ids (i);
INSERT INTO lattice.connections (user_id, source_service_id, target_service_id, call_count, error_count)
SELECT DISTINCT ON (s.id, t.id) '$user'::uuid, s.id, t.id, 1 + (random() * 1000)::int, (random() * 10)::int
  FROM (SELECT g.i, (g.i + 1 + floor(random() * ($n - 1))::int) % $n AS j
          FROM generate_series(0, $n - 1) g(i) CROSS JOIN generate_series(1, $DEGREE) k
        OFFSET 0) pairs
  JOIN ids s ON s.i = pairs.i
  JOIN ids t ON t.i = pairs.j
ON CONFLICT DO NOTHING;
ANALYZE lattice.services; ANALYZE lattice.connections;
SQL
    echo "$user"
}

# Prints one line per measurement: label|n|edges|side|ms (best of the runs).
measure() {  # measure USER N
    local user=$1 n=$2
    q <<SQL 2>&1 | sed -n 's/.*NOTICE: *//p'
BEGIN;
SELECT lattice.test_set_tenant('$user');
SET lattice.graph_max_depth = 1000000;      -- superuser settings, before SET ROLE
SET lattice.graph_max_results = 100000000;
SET lattice.graph_stats_max_age = 0;       -- "warm" is the cached graph: no reload by age
SET ROLE lattice_app;
SET statement_timeout = '120s';
CREATE FUNCTION pg_temp.ms(stmt text, runs int) RETURNS float8 LANGUAGE plpgsql AS \$f\$
DECLARE t0 timestamptz; times float8[] := '{}';
BEGIN
    FOR r IN 1 .. runs LOOP
        t0 := clock_timestamp();
        EXECUTE stmt;
        times := times || extract(epoch FROM clock_timestamp() - t0) * 1000;
    END LOOP;
    RETURN (SELECT min(x) FROM unnest(times) x);
END \$f\$;
CREATE FUNCTION pg_temp.cold(stmt text, runs int) RETURNS float8 LANGUAGE plpgsql AS \$f\$
DECLARE t0 timestamptz; times float8[] := '{}';
BEGIN
    FOR r IN 1 .. runs LOOP
        PERFORM lattice.bump_graph_version();
        t0 := clock_timestamp();
        EXECUTE stmt;
        times := times || extract(epoch FROM clock_timestamp() - t0) * 1000;
    END LOOP;
    RETURN (SELECT min(x) FROM unnest(times) x);
END \$f\$;
DO \$d\$
DECLARE
    s uuid := (SELECT id FROM lattice.services WHERE name = 's0');
    e bigint := (SELECT count(*) FROM lattice.connections);
    big boolean := $n > 20000;
    impact_c text := format('SELECT count(*) FROM lattice.graph_impact(%L)', s);
    impact_sum text := format('SELECT lattice.graph_impact_summary(%L)', s);
    impact_cte text := format('WITH RECURSIVE r(id) AS (SELECT %L::uuid UNION SELECT c.source_service_id FROM r
                                 JOIN lattice.connections c ON c.target_service_id = r.id) SELECT count(*) FROM r', s);
    hop3_c text := format('SELECT count(*) FROM lattice.graph_dependents(%L, 3)', s);
    hop3_cte text := format('WITH RECURSIVE r(id, d) AS (SELECT %L::uuid, 0 UNION SELECT c.source_service_id, r.d + 1 FROM r
                               JOIN lattice.connections c ON c.target_service_id = r.id WHERE r.d < 3)
                             SELECT count(DISTINCT id) FROM r', s);
    cycles_c text := 'SELECT count(*) FROM lattice.graph_cycles()';
    -- cycles in SQL: services that reach themselves, from the transitive closure
    cycles_cte text := 'WITH RECURSIVE reach(a, b) AS (SELECT source_service_id, target_service_id FROM lattice.connections
                          UNION SELECT r.a, c.target_service_id FROM reach r JOIN lattice.connections c ON c.source_service_id = r.b)
                        SELECT count(*) FROM reach WHERE a = b';
    json_c text := 'SELECT length(lattice.graph_json()::text)';
    json_sql text := 'SELECT length(jsonb_build_object(''nodes'', (SELECT jsonb_agg(to_jsonb(s)) FROM lattice.services s),
                                 ''edges'', (SELECT jsonb_agg(to_jsonb(c)) FROM lattice.connections c))::text)';
    info record;
BEGIN
    RAISE NOTICE 'impact cold|%|%|C|%', $n, e, pg_temp.cold(impact_c, CASE WHEN big THEN 3 ELSE 5 END);
    RAISE NOTICE 'impact warm (rows)|%|%|C|%', $n, e, pg_temp.ms(impact_c, 10);
    RAISE NOTICE 'impact warm (summary)|%|%|C|%', $n, e, pg_temp.ms(impact_sum, 10);
    RAISE NOTICE 'impact|%|%|CTE|%', $n, e, pg_temp.ms(impact_cte, CASE WHEN big THEN 1 ELSE 3 END);
    RAISE NOTICE '3-hop dependents warm|%|%|C|%', $n, e, pg_temp.ms(hop3_c, 50);
    RAISE NOTICE '3-hop dependents|%|%|CTE|%', $n, e, pg_temp.ms(hop3_cte, 10);
    RAISE NOTICE 'cycles warm|%|%|C|%', $n, e, pg_temp.ms(cycles_c, CASE WHEN big THEN 3 ELSE 10 END);
    IF $n <= 1000 THEN
        RAISE NOTICE 'cycles|%|%|CTE|%', $n, e, pg_temp.ms(cycles_cte, 1);
    ELSE
        RAISE NOTICE 'cycles|%|%|CTE|n/a', $n, e;   -- the closure is n^2 rows: hours
    END IF;
    RAISE NOTICE 'graph JSON warm|%|%|C|%', $n, e, pg_temp.ms(json_c, CASE WHEN big THEN 1 ELSE 5 END);
    IF big THEN
        RAISE NOTICE 'graph JSON|%|%|SQL jsonb_agg|n/a', $n, e;   -- tens of seconds
    ELSE
        RAISE NOTICE 'graph JSON|%|%|SQL jsonb_agg|%', $n, e, pg_temp.ms(json_sql, 1);
    END IF;
    info := lattice.graph_cache_info();
    RAISE NOTICE 'memory kB|%|%|C|%', $n, e, round(info.bytes / 1024.0);
END \$d\$;
COMMIT;
SQL
}

results=$(mktemp)
shim_user=""
for n in $SIZES; do
    t0=$(date +%s)
    user=$(make_tenant "$n")
    [ -z "$shim_user" ] && shim_user=$user
    echo "# tenant of $n services generated in $(( $(date +%s) - t0 )) s" >&2
    measure "$user" "$n" >>"$results"
done

# GET /graph through the shim for the smallest tenant (session-less: an API key)
shim_line=""
if [ -x "$ROOT/shim/lattice-shim" ] && command -v curl >/dev/null; then
    port=$(( 40000 + RANDOM % 20000 ))
    key=$(q -c "SELECT lattice.create_api_key('$shim_user', 'graph bench')")
    LATTICE_SHIM_LISTEN=127.0.0.1 LATTICE_SHIM_PORT=$port LATTICE_SHIM_POOL_SIZE=2 \
    LATTICE_SHIM_CONNINFO="host=$PGHOST port=$PGPORT dbname=${PGDATABASE:-lattice} user=lattice_shim" \
        "$ROOT/shim/lattice-shim" >/dev/null 2>&1 &
    shim_pid=$!
    for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/api/v1/health" >/dev/null 2>&1 && break; sleep 0.1; done
    times=()
    for _ in $(seq 12); do
        times+=("$(curl -s -o /dev/null -w '%{time_total}' -H "X-Lattice-API-Key: $key" "http://127.0.0.1:$port/api/v1/graph")")
    done
    kill "$shim_pid" 2>/dev/null || true
    wait "$shim_pid" 2>/dev/null || true
    # the first request warms the connection and the cache: median of the rest
    med=$(printf '%s\n' "${times[@]:1}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)] * 1000}')
    shim_line="GET /api/v1/graph through the shim ($(echo "$SIZES" | awk '{print $1}') services): median ${med} ms over 11 warm requests"
fi

awk -F'|' '
{ key = $1 "|" $2; if ($4 == "C") { c[key] = $5; e[$2] = $3; lab[key] = $1 } else { o[$1 "|" $2] = $5; how[$1 "|" $2] = $4 } order[++k] = $1 "|" $2 }
END {
    printf "%-24s %9s %9s %12s %14s %10s\n", "measure", "services", "edges", "C ms", "CTE/SQL ms", "ratio";
    for (i = 1; i <= k; i++) {
        key = order[i]; if (seen[key]++) continue;
        split(key, p, "|"); name = p[1]; n = p[2];
        base = name; sub(/ (cold|warm).*/, "", base);
        if (!(key in c)) continue;
        ref = (base "|" n) in o ? o[base "|" n] : "";
        if (name ~ /memory/) { printf "%-24s %9s %9s %12s %14s %10s\n", name, n, e[n], c[key], "", ""; continue }
        ratio = (ref != "" && ref != "n/a" && c[key] > 0) ? sprintf("%.0fx", ref / c[key]) : "";
        printf "%-24s %9s %9s %12.3f %14s %10s\n", name, n, e[n], c[key], ref, ratio;
    }
}' "$results"
[ -n "$shim_line" ] && echo "$shim_line"
rm -f "$results"
