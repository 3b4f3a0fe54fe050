#!/usr/bin/env bash
# make run: a local Lattice in the working tree, with a living demo.
#
# Starts (or reuses) the cluster in .run/pg with the extension, makes the demo
# account once (scripts/demo_seed.sql) and fresh demo API keys (one
# ingest-only for plugins, one read-only for API scripts), a local mail
# catcher (scripts/demo_mail.py: mail lands in .run/mail/*.eml), and the shim
# on 127.0.0.1:8080 with its access log in .run/access.log.  Then the demo
# shop reports itself through the shim's ingest API like its plugins would
# (scripts/demo_seed.mjs) and keeps doing so while this runs
# (scripts/demo_live.mjs).  Ctrl-C stops everything.
#
#   LATTICE_PORT=8080          the shim's port
#   LATTICE_RUN_DIR=.run       cluster, logs, mail, demo state
#   LATTICE_DEMO=on|seed|off   (or make run DEMO=...) on: seed + live traffic;
#                              seed: seed only; off: the account and keys only
#   LATTICE_SMTP_URL           set: mail goes there instead of the catcher
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
port=${LATTICE_PORT:-8080}
run=$(realpath -m "${LATTICE_RUN_DIR:-$root/.run}")
cluster="$run/pg"
demo=${LATTICE_DEMO:-${DEMO:-on}}
case "$demo" in on|seed|off) ;; *) echo "run.sh: LATTICE_DEMO must be on, seed or off (not '$demo')" >&2; exit 2 ;; esac
shown=$run; [ "${run#"$root"/}" != "$run" ] && shown=${run#"$root"/}   # .run/... when inside the tree

if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "run.sh: port $port is in use (another make run?); LATTICE_PORT=... picks another" >&2; exit 1
fi
mkdir -p "$run" "$run/mail"
chmod 0755 "$run"      # the cluster directory inside must be reachable by postgres
old_port=$(sed -n 's/.*PGPORT=\([0-9]*\).*/\1/p' "$cluster/env" 2>/dev/null || true)
scripts/cluster.sh start "$cluster" ${old_port:+"$old_port"} >/dev/null
# shellcheck disable=SC1091
. "$cluster/env"

stop() {
    trap '' INT TERM
    local p
    for p in ${live_pid:-} ${shim_pid:-} ${mail_pid:-}; do kill -TERM "$p" 2>/dev/null || true; done
    for p in ${live_pid:-} ${shim_pid:-} ${mail_pid:-}; do wait "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true          # the shim's stderr filter ends with it
    scripts/cluster.sh stop "$cluster"
    echo "stopped"
}
trap stop EXIT
trap 'exit 0' INT TERM

psql -XAtq -v ON_ERROR_STOP=1 -f scripts/demo_seed.sql >/dev/null
demo_id=$(psql -XAtq -c "SELECT id FROM lattice.users WHERE email = 'demo@lattice.local'")
psql -XAtq -c "UPDATE lattice.api_keys SET revoked_at = now()
                WHERE user_id = '$demo_id' AND name IN ('make run', 'make run (read)') AND revoked_at IS NULL" >/dev/null
key=$(psql -XAtq -c "SELECT lattice.create_api_key('$demo_id', 'make run', ARRAY['ingest'])")
read_key=$(psql -XAtq -c "SELECT lattice.create_api_key('$demo_id', 'make run (read)', ARRAY['read'])")

# Mail: the local catcher unless an SMTP server is configured.
mail_line="$shown/mail/NNN.eml (local catcher on"
if [ -z "${LATTICE_SMTP_URL:-}" ]; then
    rm -f "$run/mail.port"
    /usr/bin/python3 scripts/demo_mail.py "$run/mail" "$run/mail.port" "$shown/mail" &
    mail_pid=$!
    for _ in $(seq 50); do [ -s "$run/mail.port" ] && break; sleep 0.1; done
    if [ -s "$run/mail.port" ]; then
        mail_port=$(cat "$run/mail.port")
        export LATTICE_SMTP_URL="smtp://127.0.0.1:$mail_port" LATTICE_SMTP_TLS=none
        mail_line="$mail_line smtp://127.0.0.1:$mail_port)"
    else
        mail_line="nowhere: the mail catcher did not start (python3-aiosmtpd?); e-mail stays queued"
    fi
else
    mail_line="${LATTICE_SMTP_URL%%://*}://${LATTICE_SMTP_URL#*@}"   # never its credentials
    [ "${LATTICE_SMTP_URL#*@}" = "$LATTICE_SMTP_URL" ] && mail_line=$LATTICE_SMTP_URL
fi
export LATTICE_MAIL_FROM=${LATTICE_MAIL_FROM:-Lattice <hello@lattice.local>}

# The shim: access log to a file; its stderr (JSON lines) to shim.log, and
# only errors and non-JSON lines (start-up failures) on the terminal.
export LATTICE_SHIM_LISTEN=127.0.0.1 LATTICE_SHIM_PORT=$port \
       LATTICE_SHIM_CONNINFO="host=$PGHOST port=$PGPORT dbname=lattice user=lattice_shim" \
       LATTICE_SHIM_WEB_ROOT="$root/web/dist" LATTICE_SHIM_ACCESS_LOG="$run/access.log"
[ -d "$root/web/dist" ] || LATTICE_SHIM_WEB_ROOT="$root/web"
shim/lattice-shim 2> >(tee -a "$run/shim.log" | grep --line-buffered -E '^[^{]|"level":"(error|fatal)"' | sed -u 's/^/shim: /' >&2) &
shim_pid=$!
up=
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$port/api/v1/health" >/dev/null 2>&1 && { up=1; break; }
    kill -0 "$shim_pid" 2>/dev/null || break
    sleep 0.1
done
[ -n "$up" ] || { echo "run.sh: the shim did not start (see $shown/shim.log)" >&2; exit 1; }

base="http://127.0.0.1:$port"
if [ "$demo" != off ]; then
    LATTICE_DEMO_KEY=$key LATTICE_DEMO_READ_KEY=$read_key node scripts/demo_seed.mjs "$base" "$run/demo-state.json" \
        || echo "run.sh: seeding the demo shop failed (above); the server runs on" >&2
fi
stopped="
                              legacy-reports stopped reporting (inactive 15 min after its last report)"
case "$demo" in
on)   demo_line="live: traces every 5 s per service, deploys and incidents now and then (DEMO=off: none)$stopped" ;;
seed) demo_line="seeded at start, no live traffic (DEMO=seed)$stopped" ;;
off)  demo_line="off: nothing reported (DEMO=off)" ;;
esac

cat <<MSG

  Lattice is running at       $base/
  Dashboard login             demo@lattice.local / lattice-demo-password
  Demo ingest key (plugins)   $key
  Demo read key (API)         $read_key
  Plugin setting              apiEndpoint: "$base/api/v1"
  Demo shop                   $demo_line
  Mail                        $mail_line
  Logs                        $shown/access.log (requests), $shown/shim.log (shim), $shown/pg/postgres.log
  PostgreSQL                  psql "host=$PGHOST port=$PGPORT dbname=lattice user=postgres"

  Ctrl-C stops it.
MSG

if [ "$demo" = on ]; then
    LATTICE_DEMO_KEY=$key node scripts/demo_live.mjs "$base" "$run/demo-state.json" &
    live_pid=$!
fi
wait "$shim_pid" || true
