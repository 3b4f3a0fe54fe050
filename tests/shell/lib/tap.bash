# TAP helpers for tests/shell/*.sh (sourced; the caller sets $work, a
# scratch directory).
t=0
ok()     { t=$((t+1)); echo "ok $t - $1"; }
not_ok() { t=$((t+1)); echo "not ok $t - $1"; shift; for l in "$@"; do printf '%s\n' "$l" | sed 's/^/#   /'; done; }
# check DESC COMMAND...: ok when the command succeeds; its output is shown on failure
# (run in the caller's shell, not a subshell: checks may wait for its processes)
check() {
    local desc=$1; shift
    if "$@" >"${work:?}/check.out" 2>&1; then ok "$desc"; else not_ok "$desc" "$(cat "$work/check.out")"; fi
}
# free_port: a loopback TCP port nothing listens on
# shellcheck source=../../../scripts/lib/free_port.bash
. "$(dirname "${BASH_SOURCE[0]}")/../../../scripts/lib/free_port.bash"
