#!/usr/bin/env bash
# Suite "fuzz" inside `make test`: builds every libFuzzer target (tests/fuzz/
# Makefile: ASan + UBSan), replays the regression inputs of past findings
# (tests/fuzz/regressions/<target>/) and fuzzes each target for a bounded
# time from the seed corpora built from the captured requests.  TAP; the
# executions of each run are printed as comments.  `make fuzz` runs longer.
# fuzz_ingest_validate runs the validator's core in process (coverage-guided);
# fuzz_ingest_check calls the validator in the test cluster (tests/run.sh's
# PGHOST); without one it is skipped.
#
#   LATTICE_FUZZ_SECONDS=12   seconds per target
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
root=$PWD
seconds=${LATTICE_FUZZ_SECONDS:-12}
out=$root/.build/fuzz
targets=(fuzz_stripe_signature fuzz_jwt fuzz_ingest_match fuzz_shim_request fuzz_ingest_validate fuzz_ingest_check
         fuzz_otlp_decode fuzz_otlp_flatten)

echo "1..$((1 + 2 * ${#targets[@]}))"
if log=$(make -s -C tests/fuzz all 2>&1); then
    echo "ok 1 - the fuzz targets build with clang -fsanitize=fuzzer,address,undefined"
else
    echo "not ok 1 - the fuzz targets build with clang -fsanitize=fuzzer,address,undefined"
    echo "$log" | tail -20 | sed 's/^/# /'
    n=1; for _ in "${targets[@]}"; do echo "not ok $((n += 1)) - # skipped: no build"; echo "not ok $((n += 1)) - # skipped: no build"; done
    exit 0
fi

work=$(mktemp -d /tmp/lattice-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
n=1
for t in "${targets[@]}"; do
    if [ "$t" = fuzz_ingest_check ] && [ -z "${PGHOST:-}" ]; then
        echo "ok $((n + 1)) - $t # skip no test cluster (PGHOST)"; echo "ok $((n + 2)) - $t # skip no test cluster"
        n=$((n + 2)); continue
    fi
    # 1. every past finding, replayed (a fixed set of inputs: no mutation)
    n=$((n + 1))
    inputs=("tests/fuzz/regressions/$t"/*)
    if [ -e "${inputs[0]}" ]; then
        if log=$("$out/$t" -runs=1 "${inputs[@]}" 2>&1); then
            echo "ok $n - $t: ${#inputs[@]} regression inputs replay cleanly"
        else
            echo "not ok $n - $t: ${#inputs[@]} regression inputs replay cleanly"
            echo "$log" | grep -E 'ERROR|runtime error|SUMMARY|#[0-9]+ ' | head -20 | sed 's/^/# /'
        fi
    else
        echo "ok $n - $t: no regression inputs yet"
    fi

    # 2. a bounded fuzzing run from the seeds
    n=$((n + 1))
    mkdir -p "$work/$t"
    log=$("$out/$t" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=1024 \
          -artifact_prefix="$work/$t-" "$work/$t" "$out/seeds/$t" 2>&1)
    rc=$?
    execs=$(echo "$log" | sed -n 's/^stat::number_of_executed_units: *//p')
    added=$(echo "$log" | sed -n 's/^stat::new_units_added: *//p')
    cov=$(echo "$log" | grep -oE 'cov: [0-9]+' | tail -1)
    if [ $rc -eq 0 ]; then
        echo "ok $n - $t: ${seconds} s of fuzzing, no crash"
    else
        echo "not ok $n - $t: ${seconds} s of fuzzing, no crash"
        echo "$log" | grep -E 'ERROR|runtime error|SUMMARY|#[0-9]+ ' | head -30 | sed 's/^/# /'
        for a in "$work/$t"-*; do
            [ -e "$a" ] || continue
            mkdir -p "$out/crashes"; cp "$a" "$out/crashes/"
            echo "# crashing input kept: $out/crashes/$(basename "$a") ($(head -c 200 "$a" | od -An -c | tr -s ' ' | head -3 | tr '\n' ' '))"
        done
    fi
    echo "# $t: ${execs:-?} executions in ${seconds} s, ${added:-0} new corpus units, ${cov:-cov: ?} edges"
done
