#!/usr/bin/env bash
# make run: a local Lattice in the working tree.  Starts (or reuses) the
# cluster in .run/pg with the extension, seeds the demo tenant once, issues
# fresh demo API keys (one ingest-only for plugins, one read-only for API
# scripts), and runs the shim on 127.0.0.1:8080 in the foreground.
# Ctrl-C stops the shim and the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cluster="$root/.run/pg"
port=${LATTICE_PORT:-8080}

mkdir -p .run
old_port=$(sed -n 's/.*PGPORT=\([0-9]*\).*/\1/p' "$cluster/env" 2>/dev/null || true)
scripts/cluster.sh start "$cluster" $old_port >/dev/null
# shellcheck disable=SC1091
. "$cluster/env"

stop() {
    [ -n "${shim_pid:-}" ] && kill -TERM "$shim_pid" 2>/dev/null && wait "$shim_pid" 2>/dev/null
    scripts/cluster.sh stop "$cluster"
    echo "stopped"
}
trap stop EXIT
trap 'exit 0' INT TERM

psql -XAtq -v ON_ERROR_STOP=1 -f scripts/demo_seed.sql >/dev/null
demo=$(psql -XAtq -c "SELECT id FROM lattice.users WHERE email = 'demo@lattice.local'")
psql -XAtq -c "UPDATE lattice.api_keys SET revoked_at = now()
                WHERE user_id = '$demo' AND name IN ('make run', 'make run (read)') AND revoked_at IS NULL" >/dev/null
key=$(psql -XAtq -c "SELECT lattice.create_api_key('$demo', 'make run', ARRAY['ingest'])")
read_key=$(psql -XAtq -c "SELECT lattice.create_api_key('$demo', 'make run (read)', ARRAY['read'])")

export LATTICE_SHIM_LISTEN=127.0.0.1 LATTICE_SHIM_PORT=$port \
       LATTICE_SHIM_CONNINFO="host=$PGHOST port=$PGPORT dbname=lattice user=lattice_shim" \
       LATTICE_SHIM_WEB_ROOT="$root/web/dist"
[ -d "$root/web/dist" ] || LATTICE_SHIM_WEB_ROOT="$root/web"
shim/lattice-shim &
shim_pid=$!
for _ in $(seq 50); do
    curl -fsS "http://127.0.0.1:$port/api/v1/health" >/dev/null 2>&1 && break
    sleep 0.1
done

cat <<MSG

  Lattice is running at       http://127.0.0.1:$port/
  Dashboard login             demo@lattice.local / lattice-demo-password
  Demo ingest key (plugins)   $key
  Demo read key (API)         $read_key
  Plugin setting              apiEndpoint: "http://127.0.0.1:$port/api/v1"
  PostgreSQL                  psql "host=$PGHOST port=$PGPORT dbname=lattice user=postgres"

  Ctrl-C stops it.
MSG
wait "$shim_pid"
