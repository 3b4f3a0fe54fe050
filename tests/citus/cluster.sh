#!/usr/bin/env bash
# A throwaway Citus cluster on loopback: one coordinator and two workers, each
# its own PostgreSQL 15 data directory, port and socket directory under DIR,
# with citus and lattice preloaded.
#
#   tests/citus/cluster.sh start DIR    initdb (once), start, join the workers; writes DIR/env
#   tests/citus/cluster.sh stop DIR     fast shutdown of the three
#   tests/citus/cluster.sh stop-node DIR NAME / start-node DIR NAME   (coord, w1, w2)
#
# DIR/env exports PGHOST/PGPORT of the coordinator and W1_PORT, W2_PORT,
# W1_HOST, W2_HOST for the workers.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
cmd=${1:?usage: cluster.sh start|stop|stop-node|start-node DIR [NAME]}
dir=$(realpath -m "${2:?cluster directory}")
nodes=(coord w1 w2)

as_pg() { runuser -u postgres -- "$@"; }

# shellcheck source=../../scripts/lib/free_port.bash
. "$(dirname "$0")/../../scripts/lib/free_port.bash"

init_node() {
    local n=$1 d="$dir/$1"
    mkdir -p "$d"; chown postgres:postgres "$d"; chmod 0700 "$d"
    [ -f "$d/data/PG_VERSION" ] && return 0
    as_pg "$PGBIN/initdb" -D "$d/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$d/initdb.log"
    cat >>"$d/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$d'
shared_preload_libraries = 'citus,lattice'
max_connections = 200
max_prepared_transactions = 200
fsync = ${LATTICE_PG_FSYNC:-on}
log_min_messages = warning
port = $(free_port)
CONF
}

port_of() { sed -n 's/^port = //p' "$dir/$1/data/postgresql.conf" | tail -1; }

start_node() {
    as_pg "$PGBIN/pg_ctl" -D "$dir/$1/data" status >/dev/null 2>&1 && return 0
    as_pg "$PGBIN/pg_ctl" -D "$dir/$1/data" -l "$dir/$1/postgres.log" -w -t 60 start >/dev/null
}

stop_node() {
    [ -f "$dir/$1/data/postmaster.pid" ] || return 0
    as_pg "$PGBIN/pg_ctl" -D "$dir/$1/data" -m "${2:-fast}" -w stop >/dev/null
}

q() { local n=$1; shift; PGOPTIONS="-c client_min_messages=warning" psql -XAtq -h "$dir/$n" -p "$(port_of "$n")" -U postgres -v ON_ERROR_STOP=1 "$@"; }

case "$cmd" in
start)
    mkdir -p "$dir"
    for n in "${nodes[@]}"; do init_node "$n"; start_node "$n"; done
    if ! q coord -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'lattice'" | grep -q 1; then
        for n in "${nodes[@]}"; do
            q "$n" -d postgres -c "CREATE DATABASE lattice"
            q "$n" -d lattice -c "CREATE EXTENSION citus"
        done
        q coord -d lattice -c "SELECT citus_set_coordinator_host('127.0.0.1', $(port_of coord))" >/dev/null
        for n in w1 w2; do
            q coord -d lattice -c "SELECT citus_add_node('127.0.0.1', $(port_of "$n"))" >/dev/null
        done
        # Citus runs CREATE EXTENSION on the workers too
        q coord -d lattice -c "CREATE EXTENSION lattice" \
            -c "SELECT count(*) FROM lattice.cluster_setup(${LATTICE_CITUS_SHARDS:-8})" >/dev/null
        q coord -d lattice -c "CREATE ROLE lattice_shim LOGIN IN ROLE lattice_api"
    fi
    cat >"$dir/env" <<ENV
export PGHOST='$dir/coord' PGPORT=$(port_of coord) PGUSER=postgres PGDATABASE=lattice
export W1_HOST='$dir/w1' W1_PORT=$(port_of w1) W2_HOST='$dir/w2' W2_PORT=$(port_of w2)
ENV
    echo "$dir"
    ;;
stop)
    for n in "${nodes[@]}"; do stop_node "$n" "${3:-fast}"; done ;;
stop-node)
    stop_node "${3:?node}" "${4:-fast}" ;;
start-node)
    start_node "${3:?node}" ;;
*)
    echo "usage: cluster.sh start|stop|stop-node|start-node DIR [NAME]" >&2; exit 2 ;;
esac
