#!/usr/bin/env bash
# make valgrind: tests/fuzz/valgrind.sh on a throwaway cluster, for longer
# runs than the one inside `make test` (LATTICE_VALGRIND_SECONDS="10 60").
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
work=$(mktemp -d /tmp/lattice-valgrind.XXXXXX)
chmod 0755 "$work"
trap 'scripts/cluster.sh stop "$work/pg" >/dev/null 2>&1; rm -rf "$work"' EXIT
scripts/cluster.sh start "$work/pg" >/dev/null || exit 1
# shellcheck disable=SC1091
. "$work/pg/env"
export LATTICE_ROOT=$PWD LATTICE_CLUSTER="$work/pg" LATTICE_WORK="$work"
prove -v tests/fuzz/valgrind.sh
