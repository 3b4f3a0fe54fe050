#!/usr/bin/env bash
# The HTTP suite's identity, ingest, OpenTelemetry, graph, billing, rate, account-lifecycle and alert cases through a
# real shim pointed at the Citus coordinator: the same tests as on one node
# (tests/http/), and a worker going down (worker_down.test.mjs), each test a
# TAP line here.  Needs LATTICE_CITUS_DIR.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
# shellcheck disable=SC1091
. "${LATTICE_CITUS_DIR:?a started cluster}/env"
export LATTICE_ROOT=$PWD LATTICE_CLUSTER=$LATTICE_CITUS_DIR/coord LATTICE_CITUS_DIR
files=(identity_auth authz_matrix ingest_protocol ingest_read_api graph_api billing_webhook owasp_api_top10 owasp_bad_input events_live metrics_ops
       billing_lifecycle rate_classes rate_headers account_lifecycle alerts otel_sdk)
paths=()
for f in "${files[@]}"; do paths+=("tests/http/$f.test.mjs"); done
paths+=(tests/citus/worker_down.test.mjs)
log=$(mktemp /tmp/lattice-citus-http.XXXXXX)
trap 'rm -f "$log"' EXIT
node --test --test-concurrency=1 --test-reporter=tap "${paths[@]}" >"$log" 2>&1
# the top-level results, renumbered as one plan
grep -E '^(not )?ok [0-9]+ - ' "$log" | awk '
    { n++; sub(/^ok [0-9]+ - /, "ok " n " - "); sub(/^not ok [0-9]+ - /, "not ok " n " - "); print }
    END { print "1.." n }' >"$log.tap"
cat "$log.tap"
if grep -q '^not ok' "$log.tap"; then
    grep -A25 '^not ok' "$log" | sed 's/^/# /' | head -150
fi
rm -f "$log.tap"
