#!/usr/bin/env bash
# The Citus suite: a coordinator and two workers on loopback (their own
# ports and socket directories, under a scratch directory), both extensions
# installed and the tables distributed (tests/citus/cluster.sh), then every
# tests/citus/*.test.sh (TAP) against it.  Prints prove's summary.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
dir=$(mktemp -d /tmp/lattice-citus.XXXXXX)
chmod 0755 "$dir"
trap 'tests/citus/cluster.sh stop "$dir" >/dev/null 2>&1; rm -rf "$dir"' EXIT
if ! tests/citus/cluster.sh start "$dir/cluster" >"$dir/start.log" 2>&1; then
    cat "$dir/start.log"
    echo "Files=1, Tests=1"; echo "Failed 1/1 subtests"; exit 1
fi
LATTICE_CITUS_DIR="$dir/cluster" prove -v tests/citus/*"${LATTICE_ONLY:-}"*.test.sh
