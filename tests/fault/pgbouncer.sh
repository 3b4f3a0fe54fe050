#!/usr/bin/env bash
# PgBouncer (Debian's, 1.18) in transaction-pooling mode between the shim and
# the test cluster.  TAP:
#   1    the whole HTTP suite (tests/http) passes with every shim behind it
#        (prepared_statements = 0: docs/shim.md, "Behind PgBouncer")
#   2-4  two tenants interleaved on one server connection
#        (tests/fault/pgbouncer_interleave.mjs)
#   5    the events listener's LISTEN through the pooler (against the docs):
#        PgBouncer 1.18 then hands other statements' answers to the outbox
#        worker; the shim refuses them and stays up
# Needs tests/run.sh's environment (PGHOST, PGPORT, LATTICE_CLUSTER, LATTICE_WORK).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
echo "1..5"

dir=${LATTICE_WORK:-$(mktemp -d)}/pgbouncer
mkdir -p "$dir"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
cat >"$dir/pgbouncer.ini" <<INI
[databases]
lattice = host=$PGHOST port=$PGPORT dbname=lattice pool_size=4
lattice_one = host=$PGHOST port=$PGPORT dbname=lattice pool_size=1
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
admin_users = postgres
pool_mode = transaction
max_client_conn = 500
server_reset_query =
# While PostgreSQL is down, fail fast so the shim answers 503 rather than
# queueing; after a restart, test a pooled server connection before use so a
# dead one is replaced rather than handed to a request.
server_login_retry = 0.5
query_wait_timeout = 0.5
server_check_delay = 0
stats_period = 1
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
printf '"lattice_shim" ""\n"postgres" ""\n' >"$dir/users.txt"
chown -R postgres "$dir"
runuser -u postgres -- pgbouncer -d "$dir/pgbouncer.ini" || { echo "Bail out! pgbouncer did not start"; exit 1; }
shim_pid=''
trap 'kill ${shim_pid:+"$shim_pid"} "$(cat "$dir/pgbouncer.pid")" 2>/dev/null' EXIT
for _ in $(seq 50); do psql -XAtq -h 127.0.0.1 -p "$port" -U lattice_shim -d lattice -c 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done
echo "# $(pgbouncer --version | head -1) on 127.0.0.1:$port, pool_mode = transaction"

# 1: every shim the HTTP suite starts reads LATTICE_SHIM_* from the environment;
# LISTEN needs a session, so the events listener goes to PostgreSQL itself
# (docs/shim.md, "Behind PgBouncer")
log="$dir/http.log"
started=$(date +%s)
LATTICE_SHIM_CONNINFO="host=127.0.0.1 port=$port dbname=lattice user=lattice_shim" LATTICE_SHIM_PREPARED_STATEMENTS=0 \
LATTICE_SHIM_EVENTS_CONNINFO="host=$PGHOST port=$PGPORT dbname=lattice user=lattice_shim" \
    node --test --test-concurrency=1 --test-reporter=tap tests/http/*.test.mjs >"$log" 2>&1
pass=$(sed -n 's/^# pass \([0-9]*\)/\1/p' "$log" | tail -1)
fail=$(sed -n 's/^# fail \([0-9]*\)/\1/p' "$log" | tail -1)
sleep 1.1
served=$(psql -XAtq -h 127.0.0.1 -p "$port" -U postgres -d pgbouncer -c 'SHOW STATS' | awk -F'|' '$1 == "lattice" { print $2 }')
if [ "${pass:-0}" -gt 0 ] && [ "${fail:-1}" -eq 0 ]; then
    echo "ok 1 - the HTTP suite through PgBouncer: $pass passed, 0 failed ($(( $(date +%s) - started )) s, $served transactions pooled)"
else
    echo "not ok 1 - the HTTP suite through PgBouncer: ${pass:-0} passed, ${fail:-?} failed"
    grep -B2 -A20 '^not ok\|^    not ok' "$log" | head -80 | sed 's/^/#   /'
fi

PGBOUNCER_PORT=$port TAP_FROM=1 node tests/fault/pgbouncer_interleave.mjs

# 5: LISTEN through the pooler while notifications flow and other clients
# run pipelines and short sessions: the outbox worker's claims get answers of
# the wrong shape (counted, when this PgBouncer misroutes them), each a logged
# error and a fresh connection, never a job or a crash
shim_port=$(free_port)
LATTICE_SHIM_PORT=$shim_port LATTICE_SHIM_LISTEN=127.0.0.1 LATTICE_SHIM_ACCESS_LOG=off \
LATTICE_SHIM_CONNINFO="host=127.0.0.1 port=$port dbname=lattice user=lattice_shim" LATTICE_SHIM_PREPARED_STATEMENTS=0 \
LATTICE_OUTBOX_POLL_MS=10 shim/lattice-shim >/dev/null 2>"$dir/listen.err" &
shim_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$shim_port/ready" >/dev/null && break; sleep 0.1; done
cat >"$dir/pipeline.sql" <<'SQL'
\startpipeline
SELECT pg_catalog.set_config('statement_timeout', '1000', true);
SELECT 1;
\endpipeline
SQL
echo 'SELECT 1;' >"$dir/one.sql"
echo "SELECT pg_notify('lattice_graph', '00000000-0000-0000-0000-000000000000:1');" >"$dir/notify.sql"
# (a pgbench client whose answer went elsewhere waits for ever: timeout)
timeout -s KILL 20 pgbench -n -h 127.0.0.1 -p "$port" -U lattice_shim -d lattice -M extended -c 8 -j 2 -T 10 \
    -f "$dir/pipeline.sql" >"$dir/pb1.log" 2>&1 &
pb1=$!
timeout -s KILL 20 pgbench -n -h 127.0.0.1 -p "$port" -U lattice_shim -d lattice -C -c 4 -j 1 -T 10 \
    -f "$dir/one.sql" >"$dir/pb2.log" 2>&1 &
pb2=$!
pgbench -n -U postgres -d lattice -c 2 -j 1 -T 10 -f "$dir/notify.sql" >"$dir/pb3.log" 2>&1
wait "$pb1" "$pb2"
refused=$(grep -c 'a claimed job has' "$dir/listen.err")
ready=0
for _ in $(seq 50); do
    ready=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$shim_port/ready")
    [ "$ready" = 200 ] && break
    sleep 0.1
done
if kill -0 "$shim_pid" 2>/dev/null && [ "$ready" = 200 ] && ! grep -q '"level":"fatal"' "$dir/listen.err"; then
    echo "ok 5 - LISTEN through the pooler: $refused claims of another statement's shape refused; the shim up, /ready 200"
else
    echo "not ok 5 - LISTEN through the pooler: the shim $(kill -0 "$shim_pid" 2>/dev/null && echo up || echo died), /ready $ready, $refused claims refused"
    grep -v '"outbox job"' "$dir/listen.err" | tail -20 | sed 's/^/#   /'
fi
