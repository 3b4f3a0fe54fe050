#!/usr/bin/env bash
# make run (scripts/run.sh) end to end, on a private run directory and port:
# the header with both demo keys; the demo shop arriving through the shim's
# ingest API (routes, edges, two environments, traces, errors) with the
# access log in a file and none of it on the terminal; a sign-up's welcome
# mail caught as a .eml; the live generator adding traces; no 429 in any
# quota class; SIGINT leaving no process behind; and with LATTICE_DEMO=off,
# no services at all.  TAP.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
work=$(mktemp -d "${LATTICE_WORK:-/tmp}/make-run.XXXXXX")
chmod 0755 "$work"
pids_of_run=()
cleanup() {
    local p
    for p in "${pids_of_run[@]}"; do kill -KILL "$p" 2>/dev/null; done
    for d in "$work"/*/pg; do [ -d "$d" ] && scripts/cluster.sh stop "$d" >/dev/null 2>&1; done
    rm -rf "$work"
}
trap cleanup EXIT

echo "1..14"
t=0
check() { t=$((t+1)); if eval "$2"; then echo "ok $t - $1"; else echo "not ok $t - $1"; fi; }
note() { sed 's/^/# /'; }

# shellcheck source=../../scripts/lib/free_port.bash
. scripts/lib/free_port.bash
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${s#Z}" = "$s" ]; }   # zombies are gone
descendants() { local c; for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done; }

# start NAME DEMO: run.sh in the background (own process group, so SIGINT
# reaches it as it would from a terminal), waits for its header
start() {
    port=$(free_port)
    dir="$work/$1"
    out="$work/$1.out"
    set -m
    env -u LATTICE_SMTP_URL -u DEMO LATTICE_PORT="$port" LATTICE_RUN_DIR="$dir" LATTICE_DEMO="$2" \
        scripts/run.sh >"$out" 2>&1 &
    run_pid=$!
    set +m
    pids_of_run+=("$run_pid")
    for _ in $(seq 600); do
        grep -q 'Ctrl-C stops it' "$out" 2>/dev/null && break
        kill -0 "$run_pid" 2>/dev/null || break
        sleep 0.1
    done
    base="http://127.0.0.1:$port"
    read_key=$(sed -n 's/.*Demo read key (API) *\(ltc_[^ ]*\).*/\1/p' "$out")
}
# shellcheck source=/dev/null  # the cluster's env file, written by scripts/cluster.sh
q() { (. "$dir/pg/env" && psql -XAtq -c "$1"); }

# stop: SIGINT to run.sh; every process it started must be gone
stop() {
    local procs p left=
    procs="$(descendants "$run_pid") $(head -1 "$dir/pg/data/postmaster.pid" 2>/dev/null)"
    echo "# before SIGINT: $(ps -o comm= -p "$(xargs <<<"$procs" | tr ' ' ,)" | sort | uniq -c | tr -s ' \n' ' ')"
    kill -INT "$run_pid"
    for _ in $(seq 300); do alive "$run_pid" || break; sleep 0.1; done
    wait "$run_pid" 2>/dev/null
    sleep 0.5
    for p in $procs; do alive "$p" && left="$left,$p"; done
    [ -n "$left" ] && ps -o pid,stat,args -p "${left#,}" | note
    [ -z "$left" ] && grep -q '^stopped$' "$out"
}

# ---- the demo on --------------------------------------------------------------
start on on
check "run.sh prints its header with the demo ingest key and the demo read key" \
    "grep -qE 'Demo ingest key \(plugins\) +ltc_' '$out' && [ -n '$read_key' ] || { note <'$out'; false; }"

uid=$(q "SELECT id FROM lattice.users WHERE email = 'demo@lattice.local'")
figures() {
    q "SELECT (SELECT count(*) FROM lattice.services WHERE user_id = '$uid' AND NOT is_external),
              (SELECT count(*) FROM lattice.routes WHERE user_id = '$uid' AND removed_at IS NULL),
              (SELECT count(*) FROM lattice.dependencies WHERE user_id = '$uid'),
              (SELECT count(*) FROM lattice.connections WHERE user_id = '$uid' AND call_count > 0),
              (SELECT count(DISTINCT environment) FROM lattice.services WHERE user_id = '$uid' AND version IS NOT NULL),
              (SELECT COALESCE(sum(request_count), 0) FROM lattice.route_stats WHERE user_id = '$uid'),
              (SELECT COALESCE(sum(occurrence_count), 0) FROM lattice.error_groups WHERE user_id = '$uid')"
}
for _ in $(seq 30); do
    IFS='|' read -r n_svc n_routes n_deps n_edges n_envs n_traces n_errors <<<"$(figures)"
    [ "${n_errors:-0}" -gt 0 ] && [ "${n_edges:-0}" -gt 0 ] && break
    sleep 1
done
echo "# services $n_svc, routes $n_routes, packages $n_deps, edges $n_edges, environments $n_envs, traces $n_traces, errors $n_errors"
check "the demo tenant has services with routes and packages" "[ '${n_svc:-0}' -ge 10 ] && [ '${n_routes:-0}' -gt 0 ] && [ '${n_deps:-0}' -gt 0 ]"
check "calls between them: edges in the graph" "[ '${n_edges:-0}' -ge 10 ]"
check "versions in two environments (production, staging)" \
    "[ '${n_envs:-0}' -eq 2 ] && [ \"\$(q \"SELECT string_agg(DISTINCT environment, ',' ORDER BY environment) FROM lattice.services WHERE user_id = '$uid'\")\" = production,staging ]"
check "traces (performance buckets) and errors" "[ '${n_traces:-0}' -gt 0 ] && [ '${n_errors:-0}' -gt 0 ]"

log="$dir/access.log"
ingest_ok() { grep "\"route\":\"$1\"" "$log" 2>/dev/null | grep -cE '"status":20[01]'; }
echo "# access log: $(ingest_ok /api/v1/ingest/metadata) metadata, $(ingest_ok /api/v1/performance/traces/batch) trace batches, $(ingest_ok /api/v1/errors/batch) error batches"
check "all of it came through the shim: the access log file has the ingest requests" \
    "[ \$(ingest_ok /api/v1/ingest/metadata) -ge $n_svc ] && [ \$(ingest_ok /api/v1/performance/traces/batch) -gt 0 ] && [ \$(ingest_ok /api/v1/errors/batch) -gt 0 ]"
check "no JSON (access log or shim) lines on the terminal" "! grep -q '^{\\|\"request_id\"' '$out' || { grep '^{\\|\"request_id\"' '$out' | head -3 | note; false; }"

before=$(q "SELECT COALESCE(sum(request_count), 0) FROM lattice.route_stats WHERE user_id = '$uid'")
email="newcomer-$RANDOM$RANDOM@example.com"
status=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    -d "{\"email\":\"$email\",\"password\":\"a-long-enough-password-1\",\"name\":\"Newcomer\"}" "$base/api/v1/auth/signup")
eml=
for _ in $(seq 100); do
    eml=$(grep -l "$email" "$dir"/mail/*.eml 2>/dev/null | head -1)
    [ -n "$eml" ] && break
    sleep 0.1
done
check "a sign-up through the shim (201) delivers its welcome mail as a .eml in the mail folder" \
    "[ '$status' = 201 ] && [ -n '$eml' ] && grep -qi '^Subject:' '$eml'"
sleep 0.3
check "the mail catcher prints one line for it" "grep -qE '^mail: .* to $email -> .*/mail/[0-9]{3}\\.eml\$' '$out' || { note <'$out'; false; }"

after=$before
for _ in $(seq 150); do
    after=$(q "SELECT COALESCE(sum(request_count), 0) FROM lattice.route_stats WHERE user_id = '$uid'")
    [ "$after" -gt "$before" ] && break
    sleep 0.1
done
echo "# traces before $before, after $after"
check "the live generator adds traces within seconds" "[ '$after' -gt '$before' ]"

usage=$(curl -s -H "X-Lattice-API-Key: $read_key" "$base/api/v1/usage")
echo "$usage" | jq -c '.classes | map_values({used, refused_this_hour})' 2>&1 | note
check "no 429 for the demo key: refused_this_hour is 0 in every class" \
    "[ \"\$(echo '$usage' | jq '[.classes[] | .refused_this_hour] | length > 0 and all(. == 0)')\" = true ]"

check "SIGINT stops run.sh, the shim, the generator, the mail catcher and the cluster" stop

# ---- the demo off --------------------------------------------------------------
start off off
sleep 6
n=$(q "SELECT count(*) FROM lattice.services s JOIN lattice.users u ON u.id = s.user_id WHERE u.email = 'demo@lattice.local'")
check "LATTICE_DEMO=off: header says so, and no services are reported" \
    "grep -q 'DEMO=off' '$out' && [ '$n' = 0 ] && ! grep -q ingest '$dir/access.log' && ! pgrep -f '$dir/demo-state' >/dev/null"
check "LATTICE_DEMO=off: SIGINT leaves no process behind" stop
