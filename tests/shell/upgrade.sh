#!/usr/bin/env bash
# Upgrades: for every released version A with an upgrade path to the current
# version, `CREATE EXTENSION lattice VERSION 'A'` then `ALTER EXTENSION lattice
# UPDATE` must yield the same catalog as a fresh install.  Released install
# scripts are frozen in extension/released/; upgrade scripts are
# extension/lattice--A--B.sql.  Also checks that the catalog digest itself
# sees a difference (so the comparison is not vacuous).  TAP.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
current=$(sed -n "s/^default_version = '\(.*\)'/\1/p" extension/lattice.control)
released=()
for f in extension/released/lattice--*.sql; do
    [ -e "$f" ] || continue
    v=${f##*/lattice--}; v=${v%.sql}
    [ "$v" = "$current" ] || released+=("$v")
done

# Every object of the extension, described by what defines it.
digest() {
    psql -XAt -d "$1" <<'SQL'
SELECT md5(string_agg(d, E'\n' ORDER BY d)) FROM (
  SELECT 'fn ' || p.oid::regprocedure || ' ' || md5(CASE WHEN p.prokind = 'a' THEN p.prosrc ELSE pg_get_functiondef(p.oid) END) || ' ' || coalesce(p.proacl::text, '')
    FROM pg_proc p WHERE p.pronamespace IN ('lattice'::regnamespace, 'lattice_http'::regnamespace)
  UNION ALL
  SELECT 'col ' || a.attrelid::regclass || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
         || ' ' || a.attnotnull || ' ' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '')
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
   WHERE c.relnamespace = 'lattice'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT 'rel ' || c.oid::regclass || ' ' || c.relkind::text || ' ' || c.relrowsecurity || c.relforcerowsecurity
         || ' ' || coalesce(c.relacl::text, '')
    FROM pg_class c WHERE c.relnamespace = 'lattice'::regnamespace
  UNION ALL
  SELECT 'con ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
    FROM pg_constraint WHERE connamespace = 'lattice'::regnamespace
  UNION ALL
  SELECT 'idx ' || indexrelid::regclass || ' ' || pg_get_indexdef(indexrelid)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'lattice'::regnamespace
  UNION ALL
  SELECT 'pol ' || polrelid::regclass || ' ' || polname || ' ' || polcmd::text
         || ' ' || coalesce(pg_get_expr(polqual, polrelid), '') || ' ' || coalesce(pg_get_expr(polwithcheck, polrelid), '')
    FROM pg_policy WHERE polrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'lattice'::regnamespace)
  UNION ALL
  SELECT 'trg ' || tgrelid::regclass || ' ' || pg_get_triggerdef(oid) || ' ' || tgenabled::text
    FROM pg_trigger WHERE NOT tgisinternal
     AND tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'lattice'::regnamespace)
  UNION ALL
  SELECT 'typ ' || t.oid::regtype FROM pg_type t WHERE t.typnamespace = 'lattice'::regnamespace
) s(d)
SQL
}

fresh=lattice_upgrade_fresh
# A released version is frozen: changing its install script means a new
# version and an upgrade script, never an edit in place.
frozen=extension/released/lattice--$current.sql
t=0
check() { t=$((t+1)); if eval "$2"; then echo "ok $t - $1"; else echo "not ok $t - $1"; fi; }
echo "1..$((3 + ${#released[@]}))"
check "the install script of released $current is unchanged (else bump the version)" \
      "[ ! -e '$frozen' ] || make -s -C extension lattice--$current.sql >/dev/null 2>&1 && { [ ! -e '$frozen' ] || cmp -s '$frozen' extension/lattice--$current.sql; }"
dropdb --if-exists $fresh 2>/dev/null
createdb $fresh && psql -Xq -d $fresh -c 'CREATE EXTENSION lattice'
want=$(digest $fresh)
check "a fresh install of $current has a catalog digest" "[ -n '$want' ]"
psql -Xq -d $fresh -c 'ALTER TABLE lattice.plans ADD COLUMN probe int' >/dev/null
changed=$(digest $fresh)
check "the digest sees a one-column difference" "[ '$want' != '$changed' ]"
dropdb $fresh

for v in "${released[@]}"; do
    db=lattice_upgrade_from_${v//./_}
    dropdb --if-exists "$db" 2>/dev/null
    createdb "$db"
    ok=1
    psql -Xq -v ON_ERROR_STOP=1 -d "$db" -c "CREATE EXTENSION lattice VERSION '$v'" \
        -c "ALTER EXTENSION lattice UPDATE" >/dev/null 2>&1 || ok=0
    got=$(digest "$db")
    check "upgrade $v -> $current equals a fresh install" "[ $ok = 1 ] && [ '$got' = '$want' ]"
    dropdb "$db"
done
[ ${#released[@]} -gt 0 ] || echo "# no released version before $current yet: nothing to upgrade from"
