#!/usr/bin/env bash
# Runs every suite against a throwaway cluster (and a real shim for the HTTP
# and browser suites) and ends with one line: "N passed, N failed".
#
#   tests/run.sh               every suite
#   tests/run.sh pgtap http    only those suites
#   LATTICE_ONLY=rate_ tests/run.sh http    only the files whose name contains rate_
#
# Suites: regress (pg_regress), pgtap (pg_prove), http and browser (node's
# test runner, tests/http/*.test.mjs and tests/browser/*.test.mjs), and
# shell, fuzz, load, fault (prove; each tests/<suite>/*.sh prints TAP), and
# citus (tests/citus/run.sh: its own coordinator + 2 workers; skipped, with
# one line saying so, where Citus is not installed).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD

suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(regress pgtap shell http browser fuzz load fault citus)

work=$(mktemp -d /tmp/lattice-test.XXXXXX)
chmod 0755 "$work"
cluster="$work/pg"
passed=0
failed=0
cleanup() {
    scripts/cluster.sh stop "$cluster" >/dev/null 2>&1
    if [ "${LATTICE_KEEP:-}" = "" ]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT

count() {  # count SUITE PASSED FAILED
    printf '%-8s %s passed, %s failed\n' "$1:" "$2" "$3"
    passed=$((passed + $2)); failed=$((failed + $3))
}

scripts/cluster.sh start "$cluster" >/dev/null || { echo "could not start the test cluster"; echo "0 passed, 1 failed"; exit 1; }
# shellcheck disable=SC1091
. "$cluster/env"
export LATTICE_CLUSTER="$cluster" LATTICE_ROOT="$root" LATTICE_WORK="$work"
export LATTICE_SHIM_BIN="${LATTICE_SHIM_BIN:-$root/shim/lattice-shim}"  # make test-asan sets its own
psql -Xq -c 'CREATE EXTENSION IF NOT EXISTS pgtap' >/dev/null

run_regress() {
    local out="$work/regress.log" n f
    make -s installcheck >"$out" 2>&1
    n=$(grep -cE '^(ok|not ok) ' "$out"); f=$(grep -cE '^not ok ' "$out")
    if [ "$n" -eq 0 ]; then  # older pg_regress output
        n=$(grep -cE '^test .* \.\.\. ' "$out"); f=$(grep -cE '\.\.\. FAILED' "$out")
    fi
    [ "$f" -gt 0 ] && { cat "$out"; head -100 .build/regress/regression.diffs 2>/dev/null; }
    count regress $((n - f)) "$f"
}

# prove/pg_prove summary -> counts (a file that died before its plan is one failure)
count_tap() {  # count_tap SUITE LOG
    local out=$2 n f
    n=$(sed -n 's/^Files=[0-9]*, Tests=\([0-9]*\).*/\1/p' "$out"); n=${n:-0}
    f=$(grep -oE 'Failed [0-9]+/[0-9]+ subtests' "$out" | awk -F'[ /]' '{s+=$2} END {print s+0}')
    f=$((f + $(grep -cE 'Parse errors|Bad plan|Dubious' "$out")))
    grep -q 'Result: PASS' "$out" || [ "$f" -gt 0 ] || f=1
    [ "$f" -gt 0 ] && cat "$out"
    count "$1" $((n > f ? n - f : 0)) "$f"
}

run_pgtap() {
    pg_prove -d "$PGDATABASE" --ext .sql -r tests/pgtap >"$work/pgtap.log" 2>&1
    count_tap pgtap "$work/pgtap.log"
}

run_prove() {  # run_prove SUITE DIR: every DIR/*.sh prints TAP
    compgen -G "$2/*${LATTICE_ONLY:-}*.sh" >/dev/null || return 0
    prove -v "$2"/*"${LATTICE_ONLY:-}"*.sh >"$work/$1.log" 2>&1
    count_tap "$1" "$work/$1.log"
}

run_node() {  # run_node SUITE DIR
    local out="$work/$1.log" p f
    compgen -G "$2/*${LATTICE_ONLY:-}*.test.mjs" >/dev/null || return 0
    node --test --test-concurrency=1 --test-reporter=tap "$2"/*"${LATTICE_ONLY:-}"*.test.mjs >"$out" 2>&1
    p=$(sed -n 's/^# pass \([0-9]*\)/\1/p' "$out" | tail -1); p=${p:-0}
    f=$(sed -n 's/^# fail \([0-9]*\)/\1/p' "$out" | tail -1); f=${f:-1}
    [ "$f" -gt 0 ] && grep -B2 -A30 '^not ok\|^    not ok\|^        not ok' "$out" | head -200
    count "$1" "$p" "$f"
}

run_citus() {
    if [ ! -f "$(pg_config --pkglibdir)/citus.so" ]; then
        echo "citus: skipped (Citus not installed)"
        return 0
    fi
    tests/citus/run.sh >"$work/citus.log" 2>&1
    count_tap citus "$work/citus.log"
}

for s in "${suites[@]}"; do
    case "$s" in
    regress) run_regress ;;
    pgtap)   run_pgtap ;;
    shell|fuzz|load|fault)
             run_prove "$s" "tests/$s" ;;
    http)    run_node http tests/http ;;
    browser) run_node browser tests/browser ;;
    citus)   run_citus ;;
    *)       echo "unknown suite $s"; count "$s" 0 1 ;;
    esac
done

# a shim that died of a fatal signal during any suite (tests/http/lib.mjs)
if [ -s "$work/shim-crashes.log" ]; then
    echo "# lattice-shim crashed during the run:"
    sed 's/^/#   /' "$work/shim-crashes.log"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
