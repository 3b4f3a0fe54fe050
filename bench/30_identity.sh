#!/usr/bin/env bash
# Identity: API-key verifications per second through lattice.api_key_verify()
# (keyed BLAKE2b + constant-time compare, in C) against the naive check many
# services do (pgcrypto crypt() with bcrypt, cost 10), and the Argon2id cost
# of a login at our parameters (19 MiB, t=2).  Run by bench/run.sh with the
# cluster's PG* environment exported; prints figures, asserts nothing.
set -euo pipefail
KEY_N=${KEY_N:-20000}
BCRYPT_N=${BCRYPT_N:-20}
ARGON_N=${ARGON_N:-10}
q() { psql -XAtq -v ON_ERROR_STOP=1 "$@"; }

q -c 'CREATE EXTENSION IF NOT EXISTS pgcrypto' >/dev/null
user=$(q -c "SELECT lattice.create_user('bench-' || md5(random()::text) || '@example.com', 'bench password 1', 'Bench')")
key=$(q -c "SELECT lattice.create_api_key('$user', 'bench')")
bf=$(q -c "SELECT crypt('$key', gen_salt('bf', 10))")
argon=$(q -c "SELECT lattice.password_hash('bench password 1')")

# seconds of one statement, timed inside the server
timed() {
    q -c "DO \$\$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN PERFORM ($1); RAISE NOTICE '%', extract(epoch FROM clock_timestamp() - t0); END \$\$" 2>&1 \
        | sed -n 's/.*NOTICE: *//p'
}

# One verification first, in its own transaction: it stamps last_used, as
# the key's first request of a minute does.  The loop then measures the
# steady state (a stamp at most once a minute); without it every call of the
# one-statement loop would see its statement's stale snapshot and stamp again.
q -c "SELECT lattice.api_key_verify('$key')" >/dev/null
t_key=$(timed "SELECT count(lattice.api_key_verify('$key')) FROM generate_series(1, $KEY_N)")
# crypt() is IMMUTABLE: with constant arguments the planner would fold it to
# one call, so the key is made to depend on the row
t_bf=$(timed "SELECT count(*) FROM generate_series(1, $BCRYPT_N) g WHERE crypt(CASE WHEN g > 0 THEN '$key' END, '$bf') = '$bf'")
t_argon=$(timed "SELECT count(*) FROM generate_series(1, $ARGON_N) g WHERE lattice.password_verify('$argon', CASE WHEN g > 0 THEN 'bench password 1' END)")
t_hash=$(timed "SELECT count(lattice.password_hash('bench password ' || i)) FROM generate_series(1, $ARGON_N) i")

awk -v kn="$KEY_N" -v kt="$t_key" -v bn="$BCRYPT_N" -v bt="$t_bf" -v an="$ARGON_N" -v at="$t_argon" -v ht="$t_hash" 'BEGIN {
    kps = kn / kt; bps = bn / bt;
    printf "%-52s %12s %12s\n", "check", "per second", "ms each";
    printf "%-52s %12.0f %12.4f\n", "API key: lattice.api_key_verify (BLAKE2b, C)", kps, 1000 * kt / kn;
    printf "%-52s %12.1f %12.2f\n", "API key: pgcrypto crypt() bcrypt cost 10 (naive)", bps, 1000 * bt / bn;
    printf "%-52s %12.1f %12.2f\n", "login: Argon2id verify (19 MiB, t=2)", an / at, 1000 * at / an;
    printf "%-52s %12.1f %12.2f\n", "sign-up: Argon2id hash (19 MiB, t=2)", an / ht, 1000 * ht / an;
    printf "ratio API key C / bcrypt: %.0fx\n", kps / bps;
}'
