#!/usr/bin/env bash
# Point-in-time recovery with pgBackRest, configured by the artefacts of
# deploy/pgbackrest/ (docs/operations.md, "Backups and point-in-time
# recovery").  A cluster of its own (scripts/cluster.sh, plus the archive
# snippet, on its own port and temporary directories) archives its WAL into
# a temporary repository and gets a full backup; writes follow in three
# steps around a recorded target time and a named restore point; then
# restores into new data directories, to the time and to the name, must
# hold exactly the writes before the target, verify the API key issued
# before it, and (promoted) accept new writes.  The timings are TAP
# comments.  Nothing under /etc is read or written: the pgBackRest config,
# logs, locks and repository live in the temporary directory.
# TAP output for prove; run by tests/run.sh shell.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
root=$PWD
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
art=$root/deploy/pgbackrest
work=$(mktemp -d "${LATTICE_WORK:-/tmp}/pitr.XXXXXX")
chmod 0755 "$work"
src=$work/src; by_time=$work/by-time; by_name=$work/by-name; repo=$work/repo
started=$(date +%s.%N)

cleanup() {
    local d
    for d in "$src" "$by_time" "$by_name"; do
        [ -f "$d/data/postmaster.pid" ] &&
            runuser -u postgres -- "$PGBIN/pg_ctl" -D "$d/data" -m immediate -w stop >/dev/null 2>&1
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# pgBackRest and the clusters' archive/restore commands (children of the
# postmaster, which inherits this environment) find the test's config,
# logs and locks here: the artefacts' commands run unchanged.
export PGBACKREST_CONFIG=$work/pgbackrest.conf PGBACKREST_LOG_PATH=$work/log \
       PGBACKREST_LOCK_PATH=$work/lock PGBACKREST_SPOOL_PATH=$work/spool
pgbr() { runuser -u postgres -- pgbackrest --stanza=lattice "$@"; }

# shellcheck source=tests/shell/lib/tap.bash
. tests/shell/lib/tap.bash
elapsed() { echo "$(date +%s.%N) $1" | awk '{printf "%.1f", $1 - $2}'; }
mb() { du -sm "$1" 2>/dev/null | cut -f1; }

echo "1..19"

# ---- systemd units -------------------------------------------------------------
units=(pgbackrest-lattice-full.service pgbackrest-lattice-full.timer
       pgbackrest-lattice-diff.service pgbackrest-lattice-diff.timer)
verify_units() {  # any warning (an unknown key, a missing unit) fails too
    local out u
    command -v systemd-analyze >/dev/null || { echo "systemd-analyze is not installed"; return 1; }
    mkdir -p "$work/units"
    for u in "${units[@]}"; do cp "$art/$u" "$work/units/"; done
    for u in "${units[@]}"; do
        { out=$(cd "$work/units" && systemd-analyze verify "./$u" 2>&1) && [ -z "$out" ]; } || { echo "$u: $out"; return 1; }
    done
}
check "systemd-analyze verify: the full and differential backup services and their timers" verify_units

schedule() {  # the full backup weekly on Sunday, the differential on the other days, at the same time
    local f d
    f=$(sed -n 's/^OnCalendar=//p' "$art/pgbackrest-lattice-full.timer")
    d=$(sed -n 's/^OnCalendar=//p' "$art/pgbackrest-lattice-diff.timer")
    systemd-analyze calendar "$f" "$d" || return 1
    { [ "$f" = "Sun *-*-* 01:30:00" ] && [ "$d" = "Mon..Sat *-*-* 01:30:00" ]; } || { echo "full: $f, diff: $d"; return 1; }
    grep -qx 'ExecStart=/usr/bin/pgbackrest --stanza=lattice --type=full backup' "$art/pgbackrest-lattice-full.service" &&
    grep -qx 'ExecStart=/usr/bin/pgbackrest --stanza=lattice --type=diff backup' "$art/pgbackrest-lattice-diff.service" &&
    grep -qx 'User=postgres' "$art/pgbackrest-lattice-full.service" && grep -qx 'User=postgres' "$art/pgbackrest-lattice-diff.service"
}
check "timers: a full backup every Sunday, a differential Monday to Saturday, as postgres" schedule

# ---- the source cluster, archiving ----------------------------------------------
src_port=$(free_port)
start_source() {
    scripts/cluster.sh start "$src" "$src_port" >/dev/null || return 1
    # the conf.d snippet, verbatim (a later line wins, as in conf.d)
    { cat "$art/postgresql-backup.conf" >>"$src/data/postgresql.conf" &&
      scripts/cluster.sh restart "$src"; } || { tail -20 "$src/postgres.log"; return 1; }
}
# at DIR psql ARGS: psql into the cluster of DIR (its env file: socket, port)
# shellcheck source=/dev/null  # the cluster's env file, written by scripts/cluster.sh
at() { local dir=$1; shift; ( . "$dir/env" && "$@" ); }
q() { psql -XAtq -v ON_ERROR_STOP=1 "$@"; }
src_psql() { at "$src" q "$@"; }

# The deploy config with the paths and port of this test's cluster and
# repository substituted: each line must be found, so a changed artefact
# fails here instead of silently testing something else.
write_config() {
    local line missing=0
    for line in 'repo1-path=/var/lib/pgbackrest' 'pg1-path=/var/lib/postgresql/15/main' \
                'pg1-socket-path=/var/run/postgresql' 'pg1-port=5432' '[lattice]' \
                'repo1-retention-full=2' 'start-fast=y'; do
        grep -qxF "$line" "$art/pgbackrest.conf" || { echo "deploy/pgbackrest/pgbackrest.conf: no line '$line'"; missing=1; }
    done
    [ $missing = 0 ] || return 1
    sed -e "s|^repo1-path=.*|repo1-path=$repo|" -e "s|^pg1-path=.*|pg1-path=$src/data|" \
        -e "s|^pg1-socket-path=.*|pg1-socket-path=$src|" -e "s|^pg1-port=.*|pg1-port=$src_port|" \
        "$art/pgbackrest.conf" >"$PGBACKREST_CONFIG"
    mkdir -p "$repo" "$PGBACKREST_LOG_PATH" "$PGBACKREST_LOCK_PATH" "$PGBACKREST_SPOOL_PATH"
    chown postgres:postgres "$repo" "$PGBACKREST_LOG_PATH" "$PGBACKREST_LOCK_PATH" "$PGBACKREST_SPOOL_PATH"
    chmod 0750 "$repo"
    chmod 0644 "$PGBACKREST_CONFIG"
    [ "$(diff "$art/pgbackrest.conf" "$PGBACKREST_CONFIG" | grep -c '^>')" = 4 ]
}
check "pgbackrest.conf written from deploy/pgbackrest/ with only the repository, data directory, socket and port replaced" write_config

archiving() {
    start_source || return 1
    local want got
    want=$(sed -n "s/^archive_command = '\(.*\)'$/\1/p" "$art/postgresql-backup.conf")
    got=$(src_psql -c "SELECT current_setting('archive_mode') || ' ' || current_setting('wal_level') || ' ' || current_setting('archive_command')")
    echo "$got"
    [ "$got" = "on replica $want" ] && [ "$want" = 'pgbackrest --stanza=lattice archive-push %p' ] &&
    [ "$(src_psql -c "SELECT extversion FROM pg_extension WHERE extname = 'lattice'")" != '' ]
}
check "a cluster with lattice (scripts/cluster.sh) and the archive snippet: archive_mode on, archive_command pgbackrest archive-push" archiving

check "pgbackrest stanza-create and check (a WAL segment reaches the repository)" \
    eval 'pgbr stanza-create && pgbr check'

t0=$(date +%s.%N)
check "full backup" pgbr --type=full backup
backup_s=$(elapsed "$t0")
# pgbackrest info: the cluster as copied, and what the backup takes in the repository
pgbr --output=json info >"$work/info.json" 2>&1
size() { jq -r ".[0].backup[-1].info.$1 / 1048576 * 10 | floor / 10" "$work/info.json" 2>/dev/null; }
db_mb=$(src_psql -c "SELECT round(pg_database_size('lattice') / 1048576.0, 1)")
echo "# backup: $backup_s s for $(size size) MB (the cluster's files; the lattice database $db_mb MB), $(size repository.size) MB in the repository after zstd"

# ---- writes in three steps ------------------------------------------------------
body=$(jq -r .body_raw tests/fixtures/captured/001-POST-api_v1_ingest_metadata.json)
# ingest DIR UID SERVICE: the captured snapshot, its service renamed, as UID
ingest() {
    { at "$1" q -v body="$body" -v svc="$3" <<SQL
BEGIN;
SELECT lattice.test_set_tenant('$2');
SELECT lattice.ingest_metadata(jsonb_set(:'body'::jsonb, '{service,name}', to_jsonb(:'svc'::text))::text) ->> 'success';
COMMIT;
SQL
} | tail -1  # (test_set_tenant's void: an empty line)
}
step1() {
    uid_a=$(src_psql -c "SELECT lattice.create_user('pitr-before-a@example.com', 'pitr password a1', 'PITR before A')") &&
    uid_b=$(src_psql -c "SELECT lattice.signup_user('pitr-before-b@example.com', 'pitr password b1', 'PITR before B',
                               '{\"client_addr\": \"10.9.8.7\", \"request_id\": \"pitr-1\", \"method\": \"POST\"}')") &&
    key=$(src_psql -c "SELECT lattice.create_api_key('$uid_a', 'pitr', ARRAY['ingest'])") &&
    [ "$(ingest "$src" "$uid_a" pitr-before-svc)" = true ] &&
    [ -n "$uid_a" ] && [ -n "$uid_b" ] && [ -n "$key" ]
}
check "step 1: two sign-ups, an API key, an ingest" step1

# pgBackRest picks the backup for a time target by its stop time, in whole
# seconds, strictly before the target: a target in the second the backup
# ended finds none ("unable to find backup set with stop time less than")
stop=$(jq -r '.[0].backup[-1].timestamp.stop' "$work/info.json" 2>/dev/null)
while [[ $stop =~ ^[0-9]+$ ]] && [ "$(date +%s)" -le "$stop" ]; do sleep 0.1; done
sleep 0.2
target=$(src_psql -c "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
check "step 2: target time $target recorded, restore point pitr_target created, WAL switched" \
    src_psql -c "SELECT pg_create_restore_point('pitr_target'), pg_switch_wal()"
sleep 0.2

webhook() {
    local ev
    ev="{\"id\": \"evt_pitr_after\", \"object\": \"event\", \"type\": \"customer.created\", \"created\": $(date +%s), \"livemode\": false, \"data\": {\"object\": {\"id\": \"cus_pitr\", \"object\": \"customer\"}}}"
    src_psql -v ev="$ev" <<'SQL'
SELECT lattice.webhook_secret_add('whsec_pitr_test_secret_0123456789') > 0;
SELECT (r).status FROM (SELECT lattice.stripe_webhook_receive(
          lattice.stripe_signature_header(:'ev', 'whsec_pitr_test_secret_0123456789', now()), :'ev',
          '{"client_addr": "10.9.8.7", "method": "POST"}') AS r) s;
SQL
}
step3() {
    src_psql -c "SELECT lattice.create_user('pitr-after-c@example.com', 'pitr password c1', 'PITR after C')" >/dev/null &&
    [ "$(ingest "$src" "$uid_a" pitr-after-svc)" = true ] &&
    src_psql -c "SELECT lattice.create_api_key('$uid_a', 'pitr-after', ARRAY['ingest'])" >/dev/null &&
    [ "$(webhook)" = "$(printf 't\n200')" ] &&
    [ "$(src_psql -c "SELECT count(*) FROM lattice.users WHERE email LIKE 'pitr-%'")" = 3 ] &&
    [ "$(src_psql -c "SELECT count(*) FROM lattice.stripe_events WHERE id = 'evt_pitr_after'")" = 1 ]
}
check "step 3: another sign-up, another ingest and API key, a billing webhook (all in the source)" step3

# pgbackrest check switches WAL and waits until the segment is in the repository
# shellcheck disable=SC2016  # expanded by eval, inside check
check "the WAL of step 3 is archived (pgbackrest check), then the source stops" \
    eval 'pgbr check && scripts/cluster.sh stop "$src" && pgbr info'

# ---- restore to the time --------------------------------------------------------
# restore DIR TYPE TARGET [OPTION...]: pgbackrest restore into a new data directory,
# on its own port and socket (the restored postgresql.conf names the source's)
restored_mb='?'
restore() {
    local dir=$1 type=$2 target=$3; shift 3
    mkdir -p "$dir/data" && chown -R postgres:postgres "$dir" && chmod 0700 "$dir" "$dir/data" &&
    pgbr --pg1-path="$dir/data" --type="$type" --target="$target" "$@" restore || return 1
    restored_mb=$(mb "$dir/data")
    sed -i -e "/^unix_socket_directories = /d" "$dir/data/postgresql.conf" &&
    echo "unix_socket_directories = '$dir'" >>"$dir/data/postgresql.conf" &&
    grep -E "^(restore_command|recovery_target)" "$dir/data/postgresql.auto.conf"
}
t0=$(date +%s.%N)
check "pgbackrest restore --type=time --target='$target' into a new data directory" restore "$by_time" time "$target"
restore_s=$(elapsed "$t0")

# start DIR: start (recovery from the archive), wait until paused at the target
paused() {
    local s
    for _ in $(seq 300); do
        s=$(at "$1" q -c "SELECT CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE 'not in recovery' END" 2>/dev/null)
        [ "$s" = paused ] && return 0
        [ "$s" = 'not in recovery' ] && break
        sleep 0.1
    done
    echo "replay: ${s:-no answer}"; tail -20 "$1/postgres.log"; return 1
}
# Its archive-get (restore_command) and, once promoted, archive-push run with
# this cluster as pg1 (in production it is the same path as before).
start_restored() {
    local port
    [ -f "$1/data/PG_VERSION" ] || { echo "nothing restored in $1/data"; return 1; }  # (or cluster.sh would initdb)
    port=$(free_port) || return 1
    PGBACKREST_PG1_PATH=$1/data PGBACKREST_PG1_SOCKET_PATH=$1 PGBACKREST_PG1_PORT=$port \
        scripts/cluster.sh start "$1" "$port" >/dev/null || { tail -20 "$1/postgres.log"; return 1; }
    paused "$1"
}
t0=$(date +%s.%N)
check "the restored cluster starts on another port and pauses at the target" start_restored "$by_time"
replay_s=$(elapsed "$t0")
echo "# restore: $restore_s s (pgbackrest restore: $restored_mb MB written) + $replay_s s (start, replay of the archived WAL to the target)"

# what the test wrote before the target, and nothing after: one line per fact
contents() {
    at "$1" q <<'SQL'
SELECT 'users ' || string_agg(email, ',' ORDER BY email) FROM lattice.users WHERE email LIKE 'pitr-%';
SELECT 'services ' || string_agg(name, ',' ORDER BY name) FROM lattice.services WHERE name LIKE 'pitr-%';
SELECT 'api_keys ' || string_agg(name, ',' ORDER BY name) FROM lattice.api_keys WHERE name LIKE 'pitr%';
SELECT 'stripe_events ' || count(*) FROM lattice.stripe_events WHERE id = 'evt_pitr_after';
SELECT 'webhook_secrets ' || count(*) FROM lattice.webhook_secrets WHERE secret LIKE 'whsec_pitr%';
SQL
}
expected='users pitr-before-a@example.com,pitr-before-b@example.com
services pitr-before-svc
api_keys pitr
stripe_events 0
webhook_secrets 0'
same_as_expected() {
    local got; got=$(contents "$1") || return 1
    [ "$got" = "$expected" ] || { diff <(echo "$expected") <(echo "$got"); return 1; }
}
check "restored to the time: the sign-ups, key and service of step 1; nothing of step 3" same_as_expected "$by_time"

# ---- restore to the name (before the promotion below pushes a timeline 2) -----------
# beside the other, not archiving (docs/operations.md: a copy to take rows from)
by_name_restore() {
    restore "$by_name" name pitr_target --archive-mode=off >/dev/null && start_restored "$by_name" &&
    same_as_expected "$by_name" &&
    [ "$(at "$by_name" q -c "SHOW archive_mode")" = off ] && scripts/cluster.sh stop "$by_name"
}
check "pgbackrest restore --type=name --target=pitr_target --archive-mode=off: the same, step 1 and not step 3; not archiving" by_name_restore

# ---- promote the one restored to the time -------------------------------------
promote() {
    at "$by_time" q -c "SELECT pg_promote(true, 60)" | grep -qx t &&
    [ "$(at "$by_time" q -c "SELECT pg_is_in_recovery()")" = f ] &&
    [ "$(at "$by_time" q -c "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")" = 00000002 ]
}
check "promoted: out of recovery, on timeline 2" promote

verify_key() {
    local got; got=$(at "$by_time" q -c "SELECT lattice.api_key_verify('$key')")
    [ "$got" = "$uid_a" ] || { echo "api_key_verify: '$got', want '$uid_a'"; return 1; }
}
check "lattice.api_key_verify of the key issued before the target returns its user" verify_key

new_writes() {
    local d
    d=$(at "$by_time" q -c "SELECT lattice.create_user('pitr-restored-d@example.com', 'pitr password d1', 'PITR restored D')") &&
    [ "$(ingest "$by_time" "$d" pitr-restored-svc)" = true ] &&
    [ "$(at "$by_time" q -c "SELECT count(*) FROM lattice.services WHERE user_id = '$d'")" = 1 ]
}
check "the restored cluster accepts new writes (a sign-up, an ingest)" new_writes

# the promoted cluster archives its timeline 2 into the same stanza: the
# next scheduled backup continues from it
# shellcheck disable=SC2016  # expanded by eval (and sh -c), inside check
check "the promoted cluster archives into the same repository (pgbackrest check)" \
    eval 'at "$by_time" sh -c '"'"'runuser -u postgres -- pgbackrest --stanza=lattice --pg1-path="$PGHOST/data" --pg1-socket-path="$PGHOST" --pg1-port="$PGPORT" check'"'"

total=$(elapsed "$started")
echo "# total: $total s"
check "under 90 s" awk "BEGIN { exit !($total < 90) }"
