#!/usr/bin/env bash
# The pgTAP isolation matrix (tests/pgtap/tenancy_isolation.sql), unchanged,
# on the Citus coordinator: every tenant table distributed, the rows on the
# workers.  Its results become TAP lines here.  (Spoofing on Citus is
# tenant_token.test.sh.)  Needs LATTICE_CITUS_DIR.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
# shellcheck disable=SC1091
. "${LATTICE_CITUS_DIR:?a started cluster}/env"
psql -XAtq -c 'CREATE EXTENSION IF NOT EXISTS pgtap' >/dev/null 2>&1
out=$(mktemp /tmp/lattice-citus-pgtap.XXXXXX)
trap 'rm -f "$out"' EXIT
f=tests/pgtap/tenancy_isolation.sql
{
    psql -XAtq -v ON_ERROR_STOP=1 -f "$f" >"$out" 2>&1
    rc=$?
    grep -E '^(not )?ok [0-9]+' "$out" | sed "s|^\(not \)\{0,1\}ok [0-9]* - |&${f##*/}: |"
    if [ "$rc" -ne 0 ] || ! grep -q '^ok' "$out"; then
        echo "not ok - ${f##*/} ran to its end"
        sed 's/^/# /' "$out" | grep -v '^# ok' | head -30
    fi
} | awk '/^(not )?ok/ { n++; sub(/^ok [0-9]* -/, "ok " n " -"); sub(/^not ok [0-9]* -/, "not ok " n " -");
                            sub(/^not ok -/, "not ok " n " -") } { print } END { print "1.." n }'
