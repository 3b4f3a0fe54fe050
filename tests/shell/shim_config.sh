#!/usr/bin/env bash
# The shim refuses to start on a missing or malformed setting, from its file
# or its environment, with exit status 2 and a message naming the setting,
# and binds nothing.  TAP.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
bin=${LATTICE_SHIM_BIN:-shim/lattice-shim}
work=$(mktemp -d /tmp/lattice-shim-config.XXXXXX)
trap 'rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

cases=(
    # name | config file text | environment | the message must contain
    "unknown key|no_such_setting = 1||unknown key no_such_setting"
    "integer that is not one|threads = many||threads must be an integer"
    "integer out of range|threads = 0||threads must be an integer in"
    "boolean that is not one|test_routes = perhaps||test_routes must be a boolean"
    "line without =|threads 8||expected key = value"
    "string too long|trusted_proxies = $(printf '10.0.0.0/8,%.0s' $(seq 300))||trusted_proxies is too long"
    "line too long|trusted_proxies = $(printf '10.0.0.0/8,%.0s' $(seq 400))||:1: line longer than 4094 bytes"
    "malformed CIDR|trusted_proxies = 10.0.0.0/33||trusted_proxies: bad entry \"10.0.0.0/33\""
    "events_max not below threads|threads = 4
events_max = 4||events_max must be below threads"
    "malformed setting in the environment||LATTICE_SHIM_POOL_SIZE=lots|pool_size must be an integer"
    "missing config file|@missing||cannot open"
)
echo "1..$(( ${#cases[@]} * 2 ))"
t=0
for c in "${cases[@]}"; do
    IFS='|' read -r name text envset want <<<"$c"
    # a multi-line config text continues on the lines after the first
    if [[ $c == *$'\n'* ]]; then
        name=${c%%|*}; rest=${c#*|}; text=${rest%%||*}; envset=""; want=${rest##*||}
    fi
    conf="$work/shim.conf"
    if [ "$text" = "@missing" ]; then conf="$work/does-not-exist.conf"; else printf '%s\n' "$text" >"$conf"; fi
    out=$(env LATTICE_SHIM_PORT="$port" ${envset:+"$envset"} timeout 5 "$bin" --config "$conf" 2>&1 >/dev/null)
    status=$?
    t=$((t + 1))
    if [ "$status" = 2 ] && [[ $out == *"$want"* ]]; then echo "ok $t - $name: exit 2, \"$want\""
    else echo "not ok $t - $name: exit 2, \"$want\""; echo "# exit $status: $out"; fi
    t=$((t + 1))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "ok $t - $name: nothing listens"
    else echo "not ok $t - $name: nothing listens"; fi
done
