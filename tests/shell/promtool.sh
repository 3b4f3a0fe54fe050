#!/usr/bin/env bash
# deploy/prometheus/: the alert rules pass `promtool check rules` and their
# unit tests (`promtool test rules`), the sample configuration `promtool check
# config`, and a live GET /metrics of a real shim on the suite's cluster is
# valid exposition format (`promtool check metrics`) with the database
# figures in it.  TAP.  Needs the cluster tests/run.sh starts (PG* set).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
root=$PWD
shim_bin=${LATTICE_SHIM_BIN:-$root/shim/lattice-shim}
work=$(mktemp -d /tmp/lattice-promtool.XXXXXX)
shim_pid=
cleanup() {
    [ -n "$shim_pid" ] && kill -TERM "$shim_pid" 2>/dev/null && wait "$shim_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

echo "1..8"
# shellcheck source=tests/shell/lib/tap.bash
. tests/shell/lib/tap.bash

check "promtool is installed (Debian package prometheus, scripts/deps.sh)" command -v promtool
check "promtool check rules deploy/prometheus/lattice-rules.yml" promtool check rules deploy/prometheus/lattice-rules.yml
check "promtool test rules deploy/prometheus/lattice-rules.test.yml" \
    sh -c 'cd deploy/prometheus && promtool test rules lattice-rules.test.yml'
check "promtool check config deploy/prometheus/prometheus.yml" \
    sh -c 'cd deploy/prometheus && promtool check config prometheus.yml'

# a real shim on the suite's cluster, with traffic of several kinds first
port=$(free_port)
LATTICE_SHIM_PORT=$port LATTICE_SHIM_LISTEN=127.0.0.1 LATTICE_SHIM_TEST_ROUTES=1 LATTICE_SHIM_ACCESS_LOG=off \
    LATTICE_SHIM_POOL_SIZE=2 "$shim_bin" >"$work/shim.log" 2>&1 &
shim_pid=$!
up() {
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$port/api/v1/health" >/dev/null && return 0
        sleep 0.1
    done
    cat "$work/shim.log"; return 1
}
check "a shim answers on the suite's cluster" up
for path in /ready /api/v1/health /api/v1/nowhere /api/v1/_test/missing /api/v1/services; do
    curl -s -o /dev/null "http://127.0.0.1:$port$path"
done
curl -s -o "$work/metrics.txt" -w '%{http_code}' "http://127.0.0.1:$port/metrics" >"$work/code"
check "GET /metrics answers 200" grep -qx 200 "$work/code"
check "promtool check metrics: the live scrape is valid exposition format" \
    sh -c "promtool check metrics <'$work/metrics.txt'"
database_side() {
    { grep -qx 'lattice_db_up 1' "$work/metrics.txt" &&
        grep -q '^lattice_outbox_jobs{kind="email",state="pending"} ' "$work/metrics.txt" &&
        grep -q '^lattice_rate_refused_this_hour{class="ingest"} ' "$work/metrics.txt" &&
        grep -q '^lattice_statement_errors_total{class="42"} ' "$work/metrics.txt" &&
        grep -q '^lattice_pool_waits_total ' "$work/metrics.txt"; } || { grep '^lattice_db\|^lattice_outbox\|^lattice_statement' "$work/metrics.txt"; return 1; }
}
check "the scrape holds the database figures (lattice_db_up 1) and the statement errors" database_side
