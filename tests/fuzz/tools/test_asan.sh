#!/usr/bin/env bash
# make test-asan: the shim built with AddressSanitizer + UndefinedBehavior-
# Sanitizer (clang, into .build/asan/; shim/ stays untouched) runs the whole
# HTTP suite; the extension's PostgreSQL-free parts (the fuzz targets' code,
# built with the same sanitizers) replay every seed, regression and saved
# corpus input.  Any sanitizer report fails the run.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
root=$PWD
out=$root/.build/asan
san="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"
rm -rf "$out" && mkdir -p "$out/logs"
cp -r shim "$out/shim"
# clang, unlike gcc, counts a va_list wrapper (log.c) under -Wformat-nonliteral
if ! CFLAGS="$san" CPPFLAGS="-Wno-format-nonliteral" make -s -C "$out/shim" clean lattice-shim CC=clang >"$out/build.log" 2>&1; then
    cat "$out/build.log"; echo "test-asan: the sanitized shim did not build"; exit 1
fi
echo "test-asan: built $out/shim/lattice-shim ($san)"

status=0
# 1. the extension's and shim's pure-C parts: every input the fuzzers know
make -s -C tests/fuzz all >/dev/null || exit 1
for t in fuzz_stripe_signature fuzz_jwt fuzz_ingest_match fuzz_shim_request fuzz_ingest_validate fuzz_otlp_decode fuzz_otlp_flatten; do
    dirs=("$root/.build/fuzz/seeds/$t")
    [ -d "tests/fuzz/regressions/$t" ] && dirs+=("tests/fuzz/regressions/$t")
    [ -d "$root/.build/fuzz/corpus/$t" ] && dirs+=("$root/.build/fuzz/corpus/$t")
    inputs=$(find "${dirs[@]}" -type f | wc -l)
    if log=$("$root/.build/fuzz/$t" -runs=0 "${dirs[@]}" 2>&1); then
        echo "test-asan: $t: $inputs known inputs replayed, no sanitizer report"
    else
        echo "$log" | grep -E 'ERROR|runtime error|SUMMARY|#[0-9]+ ' | head -30
        echo "test-asan: $t: a sanitizer report on a known input"; status=1
    fi
done

# 2. the HTTP suite against the sanitized shim (tests/run.sh honours LATTICE_SHIM_BIN)
export LATTICE_SHIM_BIN="$out/shim/lattice-shim"
export ASAN_OPTIONS="log_path=$out/logs/asan:detect_leaks=1:abort_on_error=0:strict_string_checks=1"
export UBSAN_OPTIONS="log_path=$out/logs/ubsan:print_stacktrace=1:halt_on_error=1"
tests/run.sh http "$@" | tee "$out/http.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
reports=$(find "$out/logs" -type f | wc -l)
if [ "$reports" -gt 0 ]; then
    echo "test-asan: $reports sanitizer report(s):"
    for f in "$out"/logs/*; do echo "== $f"; grep -E 'ERROR|SUMMARY|runtime error|#[0-9]+ ' "$f" | head -30; done
    status=1
else
    echo "test-asan: no AddressSanitizer, LeakSanitizer or UBSan report from the shim"
fi
exit $status
