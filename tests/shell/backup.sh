#!/usr/bin/env bash
# pg_dump / pg_restore round trip: two tenants' data in every table of the
# extension comes back identical in a fresh database.  TAP output for prove.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
src=lattice_backup_src; dst=lattice_backup_dst
dump=$(mktemp /tmp/lattice-dump.XXXXXX)
trap 'rm -f "$dump"; dropdb --if-exists $src 2>/dev/null; dropdb --if-exists $dst 2>/dev/null' EXIT

echo "1..7"
t=0
check() { t=$((t+1)); if eval "$2"; then echo "ok $t - $1"; else echo "not ok $t - $1"; fi; }

dropdb --if-exists $src 2>/dev/null; dropdb --if-exists $dst 2>/dev/null
createdb $src && psql -Xq -d $src -c 'CREATE EXTENSION lattice' \
    && psql -Xq -v ON_ERROR_STOP=1 -d $src -f tests/fixtures/two_tenants.sql >/dev/null
rc=$?
check "source database seeded with two tenants" "[ $rc -eq 0 ]"

# every table of schema lattice, rows sorted, hashed
digest() {
    psql -XAt -d "$1" -c "
      SELECT string_agg(t, E'\n' ORDER BY t) FROM (
        SELECT c.relname || ' ' || (xpath('/row/c/text()',
               query_to_xml(format('SELECT count(*) || '':'' || coalesce(md5(string_agg(x::text, ''|'' ORDER BY x::text)), '''') AS c FROM %s x', c.oid::regclass),
                            false, true, '')))[1]::text AS t
          FROM pg_class c WHERE c.relnamespace = 'lattice'::regnamespace AND c.relkind = 'r') s"
}
# shellcheck disable=SC2034  # read by the check below: its condition is eval'd
before=$(digest $src)
pg_dump -Fc -d $src -f "$dump" 2>"$dump.err"
rc=$?
check "pg_dump succeeds" "[ $rc -eq 0 ] && [ -s '$dump' ]"
# the documented restore: triggers with side effects (welcome mails, graph
# history) stay quiet while the dumped rows load (docs/operations.md)
createdb $dst && PGOPTIONS='-c session_replication_role=replica' \
    pg_restore -d $dst --exit-on-error "$dump" 2>"$dump.err"
rc=$?
check "pg_restore into a fresh database succeeds" "[ $rc -eq 0 ] || { sed 's/^/# /' '$dump.err'; false; }"
after=$(digest $dst)
echo "# ${after//$'\n'/$'\n'# }"
check "every row of every table comes back" "[ \"\$before\" = \"\$after\" ] || { diff <(echo \"\$before\") <(echo \"\$after\") | sed 's/^/# /'; false; }"
n=$(psql -XAt -d $dst -c "SELECT count(*) FROM lattice.users")
check "both tenants restored (2 users)" "[ '$n' = 2 ]"

# the restored database still verifies what the old one issued: same pepper
n=$(psql -XAt -d $dst -c "SELECT count(*) FROM lattice.secrets d WHERE retired_at IS NULL")
check "one active secret of each kind after the restore" "[ '$n' = 2 ]"
key=$(psql -XAt -d $src -c "SELECT lattice.create_api_key('aaaaaaaa-0000-0000-0000-000000000001', 'before backup')")
pg_dump -Fc -d $src -f "$dump" 2>/dev/null && dropdb $dst && createdb $dst \
    && PGOPTIONS='-c session_replication_role=replica' pg_restore -d $dst --exit-on-error "$dump" 2>"$dump.err"
uid=$(psql -XAt -d $dst -c "SELECT lattice.authenticate(jsonb_build_object('api_key', '$key', 'method', 'POST'), 'any')" 2>&1 | head -1)
check "an API key issued before the backup verifies after the restore" "[ '$uid' = aaaaaaaa-0000-0000-0000-000000000001 ]"
rm -f "$dump.err"
