#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster with lattice preloaded and created.
#
#   scripts/cluster.sh start DIR [PORT]   initdb (once) and start; writes DIR/env
#   scripts/cluster.sh stop DIR           fast shutdown
#   scripts/cluster.sh restart DIR [fast|immediate]
#
# The cluster runs as the postgres user on a free port with its socket in DIR,
# so parallel runs never collide.  DIR/env holds PGHOST, PGPORT, PGUSER and
# PGDATABASE for the callers (source it).  Local connections trust: the
# socket directory is private to this cluster.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
cmd=${1:?usage: cluster.sh start|stop|restart DIR [PORT]}
dir=$(realpath -m "${2:?cluster directory}")

as_pg() { runuser -u postgres -- "$@"; }

# shellcheck source=lib/free_port.bash
. "$(dirname "$0")/lib/free_port.bash"

case "$cmd" in
start)
    mkdir -p "$dir"
    chown postgres:postgres "$dir"
    chmod 0700 "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 \
            --locale=C.UTF-8 >"$dir/initdb.log"
        cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
shared_preload_libraries = 'lattice'
max_connections = 200
fsync = ${LATTICE_PG_FSYNC:-on}
log_min_messages = warning
log_min_error_statement = panic
CONF
    fi
    if as_pg "$PGBIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        port=$(sed -n 's/^port = //p' "$dir/data/postgresql.conf" | tail -1)   # already running
    else
        port=${3:-$(free_port)}
        sed -i "/^port = /d" "$dir/data/postgresql.conf"
        echo "port = $port" >>"$dir/data/postgresql.conf"
        as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null
    fi
    cat >"$dir/env" <<ENV
export PGHOST='$dir' PGPORT=$port PGUSER=postgres PGDATABASE=lattice
ENV
    export PGHOST="$dir" PGPORT=$port PGUSER=postgres
    if ! psql -XAtq -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'lattice'" | grep -q 1; then
        psql -Xq -d postgres -c "CREATE DATABASE lattice"
        psql -Xq -d lattice -v ON_ERROR_STOP=1 <<SQL
CREATE EXTENSION lattice;
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lattice_shim') THEN
    CREATE ROLE lattice_shim LOGIN IN ROLE lattice_api;
  END IF;
END \$\$;
SQL
    fi
    echo "$dir"
    ;;
stop)
    [ -f "$dir/data/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    true
    ;;
restart)
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m "${3:-fast}" -l "$dir/postgres.log" -w restart >/dev/null
    ;;
*)
    echo "usage: cluster.sh start|stop|restart DIR [PORT]" >&2; exit 2 ;;
esac
