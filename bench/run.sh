#!/usr/bin/env bash
# make bench: runs every bench/NN_*.sh against one throwaway cluster and
# writes their figures to .build/bench.txt.  Each script prints its own table
# and ratios; nothing here passes or fails on speed.
#
#   bench/run.sh            every benchmark
#   bench/run.sh shim rate  those whose file name contains a word
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
work=$(mktemp -d /tmp/lattice-bench.XXXXXX)
chmod 0755 "$work"
cleanup() { scripts/cluster.sh stop "$work/pg" >/dev/null 2>&1; cp "$work/pg/postgres.log" .build/bench-postgres.log 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
LATTICE_PG_FSYNC=off scripts/cluster.sh start "$work/pg" >/dev/null || exit 1
# shellcheck disable=SC1091
. "$work/pg/env"
export LATTICE_CLUSTER="$work/pg" LATTICE_ROOT=$PWD LATTICE_WORK="$work" \
       LATTICE_SHIM_BIN="$PWD/shim/lattice-shim"
mkdir -p .build
out=.build/bench.txt
: >"$out"
for b in bench/[0-9]*_*.sh; do
    [ -e "$b" ] || continue
    if [ $# -gt 0 ]; then
        match=0; for w in "$@"; do [[ $b == *"$w"* ]] && match=1; done
        [ $match = 1 ] || continue
    fi
    echo "== $b" | tee -a "$out"
    bash "$b" 2>&1 | tee -a "$out"
done
echo "figures written to $out"
