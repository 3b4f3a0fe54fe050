#!/usr/bin/env bash
# The tenant on a Citus cluster (coordinator + 2 workers, tests/citus/cluster.sh):
# every table placed as lattice.cluster_tables() says, workers without
# secrets or plans of their own, and the tenant token: through the
# coordinator a tenant sees exactly its own rows on every shard; straight on
# a worker nothing is seen, and a made-up, altered or replayed token is
# refused.  TAP.  Needs LATTICE_CITUS_DIR (a started cluster).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
work=$(mktemp -d /tmp/lattice-citus-token.XXXXXX)
trap 'rm -rf "$work"' EXIT
# shellcheck source=../shell/lib/tap.bash
. tests/shell/lib/tap.bash
# shellcheck disable=SC1091
. "${LATTICE_CITUS_DIR:?a started cluster}/env"

coord() { psql -XAtq -v ON_ERROR_STOP=1 "$@"; }
on() { local h=$1 p=$2; shift 2; psql -XAtq -h "$h" -p "$p" -v ON_ERROR_STOP=1 "$@"; }
workers=("$W1_HOST $W1_PORT" "$W2_HOST $W2_PORT")

echo "1..16"

# placement
got=$(coord -c "SELECT string_agg(DISTINCT c.kind || '=' || (p.partmethod IS NOT NULL)::text, ',' ORDER BY c.kind || '=' || (p.partmethod IS NOT NULL)::text)
                  FROM lattice.cluster_tables() c LEFT JOIN pg_dist_partition p ON p.logicalrelid = c.rel")
if [ "$got" = "distributed=true,local=false,reference=true" ]; then
    ok "every distributed and reference table is placed, the local ones stay local"
else
    not_ok "placement" "$got"
fi
got=$(coord -c "SELECT count(*) FROM pg_dist_partition p JOIN lattice.cluster_tables() c ON c.rel = p.logicalrelid
                 WHERE c.kind = 'distributed' AND p.colocationid <> (SELECT colocationid FROM pg_dist_partition
                                                                       WHERE logicalrelid = 'lattice.users'::regclass)")
if [ "$got" = 0 ]; then ok "every tenant table is co-located with users"; else not_ok "co-location" "$got"; fi
got=$(coord -c "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'lattice'::regnamespace")
if [ "$got" -ge 15 ]; then
    ok "the foreign keys are back after distributing ($got)"
else
    not_ok "foreign keys" "$got"
fi
for w in "${workers[@]}"; do
    # shellcheck disable=SC2086
    set -- $w
    got=$(on "$1" "$2" -c "SELECT (SELECT count(*) FROM lattice.secrets) || ' ' || (SELECT count(*) FROM lattice.plans)
                           || ' ' || (SELECT count(*) FROM lattice.cluster_key)")
    if [ "$got" = "0 0 1" ]; then
        ok "worker $2: no secrets or plans of its own, the cluster key"
    else
        not_ok "worker $2 secrets plans key" "$got"
    fi
done

# two tenants, rows on whichever shards their ids hash to
a=$(coord -c "SELECT gen_random_uuid()"); b=$(coord -c "SELECT gen_random_uuid()")
coord -c "INSERT INTO lattice.users (id, email, name) VALUES ('$a', 'a-$a@example.com', 'A'), ('$b', 'b-$b@example.com', 'B')" \
      -c "INSERT INTO lattice.services (user_id, name) SELECT '$a', 'a-' || i FROM generate_series(1, 3) i" \
      -c "INSERT INTO lattice.services (user_id, name) SELECT '$b', 'b-' || i FROM generate_series(1, 2) i"

as_tenant() {  # as_tenant UUID SQL: as lattice_app with the tenant set on the coordinator
    coord -c "BEGIN" -c "SELECT lattice.test_set_tenant('$1')" -c "SET LOCAL ROLE lattice_app" -c "$2" -c "COMMIT" | sed -n '2,$p' | grep -v '^$'
}
got=$(as_tenant "$a" "SELECT string_agg(name, ',' ORDER BY name) FROM lattice.services")
if [ "$got" = "a-1,a-2,a-3" ]; then
    ok "tenant A sees exactly its services, from every shard"
else
    not_ok "A's services" "$got"
fi
got=$(as_tenant "$b" "SELECT count(*) FROM lattice.services WHERE user_id = '$a'")
if [ "$got" = 0 ]; then ok "tenant B routed to A's shard sees nothing"; else not_ok "B on A's shard" "$got"; fi
got=$(as_tenant "$b" "UPDATE lattice.services SET name = 'x' WHERE user_id = '$a'" 2>&1; coord -c "SELECT count(*) FROM lattice.services WHERE user_id = '$a' AND name LIKE 'a-%'")
if [ "${got##*$'\n'}" = 3 ]; then ok "tenant B cannot change A's rows"; else not_ok "B writes A" "$got"; fi

# a DBA acting as a tenant: its audit row and its reads, one role, one transaction
coord -c "DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lattice_test_dba')
          THEN CREATE ROLE lattice_test_dba LOGIN IN ROLE lattice_admin; END IF; END\$\$"
got=$(coord -U lattice_test_dba -c "BEGIN" -c "SELECT lattice.act_as_tenant('$a', 'support ticket 7')" \
            -c "SELECT count(*) FROM lattice.services" -c "COMMIT" 2>&1 | grep -v '^$')
if [ "$got" = 3 ]; then
    ok "a DBA acting as tenant A reads A's services, from every shard"
else
    not_ok "act as tenant" "$got"
fi
got=$(coord -c "SELECT actor || ' ' || action FROM lattice.audit_log WHERE user_id = '$a' AND action = 'admin.act_as_tenant'")
if [ "$got" = "lattice_test_dba admin.act_as_tenant" ]; then
    ok "and it is audited under the DBA's name"
else
    not_ok "act as tenant audited" "$got"
fi

# straight on the workers
total=0
for w in "${workers[@]}"; do
    # shellcheck disable=SC2086
    set -- $w
    for shard in $(on "$1" "$2" -c "SELECT relname FROM pg_class WHERE relname ~ '^services_[0-9]+$' AND relkind = 'r'"); do
        n=$(on "$1" "$2" -U lattice_app -c "SELECT count(*) FROM lattice.$shard")
        total=$((total + n))
    done
done
if [ "$total" = 0 ]; then
    ok "lattice_app straight on the workers sees no row of any shard"
else
    not_ok "direct" "$total"
fi

token=$(coord -c "BEGIN" -c "SELECT lattice.test_set_tenant('$a')" -c "SHOW lattice.tenant_token" -c "COMMIT" | sed -n 2p)
if [ ${#token} -gt 80 ]; then
    ok "the coordinator issues a tenant token in the transaction"
else
    not_ok "token" "$token"
fi
set -- "$W1_HOST" "$W1_PORT"  # workers[0]
shard=$(on "$1" "$2" -c "SELECT relname FROM pg_class WHERE relname ~ '^services_[0-9]+$' AND relkind = 'r' LIMIT 1")
refused() {  # refused TOKEN DETAIL
    local out
    out=$(on "$W1_HOST" "$W1_PORT" -U lattice_app -c "SET lattice.tenant_token = '$1'" -c "SELECT count(*) FROM lattice.$shard" 2>&1)
    [[ "$out" == *"tenant token refused"*"$2"* ]]
}
# one character of the MAC changed (not the last, whose low bits are padding)
i=$(( ${#token} - 10 )); c=${token:$i:1}; [ "$c" = A ] && c=B || c=A
altered="${token:0:$i}$c${token:$((i + 1))}"
check "a replayed token is refused on a worker (another transaction)" refused "$token" "another transaction"
check "an altered token is refused (the MAC)" refused "$altered" "signature"
check "a made-up token is refused" refused "not-a-token" "malformed"

# the workers' set-up again (as after adding a worker): the same key, tenants unaffected
got=$(coord -c "SELECT lattice.cluster_sync_workers()")
again=$(as_tenant "$a" "SELECT count(*) FROM lattice.services")
if [ "$got" = 2 ] && [ "$again" = 3 ]; then
    ok "cluster_sync_workers() again: 2 workers, tenant A still sees its 3 services"
else
    not_ok "cluster_sync_workers" "$got / $again"
fi
