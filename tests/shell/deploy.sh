#!/usr/bin/env bash
# The deployment artefacts of deploy/ (docs/deploy.md): the systemd units
# pass systemd-analyze, the sample shim config lists every key of
# shim/config.c, the PostgreSQL snippet starts a server with the extension,
# the nginx site passes nginx -t, and then the shim started from the sample
# config behind nginx started from the site (TLS with a certificate made here,
# loopback ports, a temporary prefix: nothing under /etc is touched) answers
# the smoke cases over HTTPS.  TAP output for prove; run by tests/run.sh shell
# (PGHOST/PGPORT/PGDATABASE: its throwaway cluster).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
root=$PWD
shim_bin=${LATTICE_SHIM_BIN:-$root/shim/lattice-shim}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
work=$(mktemp -d "${LATTICE_WORK:-/tmp}/deploy.XXXXXX")
chmod 0755 "$work"
# A copy of the binary, with compat/ next to it (its RUNPATH): a rebuild of
# shim/ while this runs cannot pull it away.
mkdir -p "$work/bin/compat" && cp "$shim_bin" "$work/bin/lattice-shim" &&
    if [ -e "$(dirname "$shim_bin")/compat/libssl.so" ]; then cp "$(dirname "$shim_bin")/compat/libssl.so" "$work/bin/compat/"; fi
shim_bin=$work/bin/lattice-shim
nginx_pid='' shim_pid='' shim_a='' shim_b='' pg_dir=''

cleanup() {
    [ -n "$nginx_pid" ] && kill -QUIT "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
    local p
    for p in "$shim_pid" "$shim_a" "$shim_b" "${smtp_pid:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    [ -n "$pg_dir" ] && [ -f "$pg_dir/data/postmaster.pid" ] &&
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$pg_dir/data" -m immediate -w stop >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=tests/shell/lib/tap.bash
. tests/shell/lib/tap.bash

echo "1..32"

# ---- systemd units -----------------------------------------------------------
# verify checks that ExecStart's binary exists: point it at this build.
units=$work/units
mkdir -p "$units"
for u in lattice-shim.service lattice-shim@.service; do
    sed "s|/usr/local/lib/lattice/lattice-shim|$shim_bin|" "deploy/systemd/$u" >"$units/$u"
done
cp "$units/lattice-shim@.service" "$units/lattice-shim@8081.service"

verify() {  # systemd-analyze verify, and any warning (an unknown key) fails too
    local out
    { out=$(cd "$units" && systemd-analyze verify "./$1" 2>&1) && [ -z "$out" ]; } || { echo "$out"; return 1; }
}
check "systemd-analyze verify lattice-shim.service" verify lattice-shim.service
check "systemd-analyze verify lattice-shim@8081.service (the template)" verify lattice-shim@8081.service

hardening() {
    local f=$1 missing=0 line
    for line in 'User=lattice' 'Group=lattice' 'ProtectSystem=strict' 'ProtectHome=yes' 'PrivateTmp=yes' \
                'NoNewPrivileges=yes' 'CapabilityBoundingSet=' 'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6' \
                'SystemCallFilter=@system-service' 'Restart=on-failure' 'KillSignal=SIGTERM' 'Type=exec' \
                'ExecStart=/usr/local/lib/lattice/lattice-shim --config /etc/lattice/lattice-shim.conf' \
                'EnvironmentFile=/etc/lattice/lattice-shim.env'; do
        grep -qxF "$line" "$f" || { echo "$f: no line '$line'"; missing=1; }
    done
    grep -qE '^RestartSec=[1-9][0-9]*s$' "$f" || { echo "$f: RestartSec (backoff) missing"; missing=1; }
    grep -qE '^StartLimitBurst=[0-9]+$' "$f" || { echo "$f: StartLimitBurst missing"; missing=1; }
    return $missing
}
both_hardened() { hardening deploy/systemd/lattice-shim.service && hardening 'deploy/systemd/lattice-shim@.service'; }
check "both units: dedicated user, ProtectSystem=strict, ProtectHome, PrivateTmp, NoNewPrivileges, no capabilities, AF_UNIX/INET/INET6, @system-service, restart with backoff" \
    both_hardened

# the drain: SIGTERM, then 2 x shutdown_timeout_ms (requests, then civetweb's
# stop) + the SMTP timeout (the outbox worker finishes its mail) + margin
stop_budget() {
    local drain smtp stop
    drain=$(sed -n 's/^shutdown_timeout_ms = \([0-9]*\)$/\1/p' deploy/lattice-shim.conf)
    smtp=$(sed -n 's/^LATTICE_SMTP_TIMEOUT_MS=\([0-9]*\)$/\1/p' deploy/lattice-shim.env)
    stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s$/\1/p' deploy/systemd/lattice-shim.service)
    echo "shutdown_timeout_ms=$drain LATTICE_SMTP_TIMEOUT_MS=$smtp TimeoutStopSec=${stop}s"
    [ -n "$drain" ] && [ -n "$smtp" ] && [ -n "$stop" ] && [ $((stop * 1000)) -ge $((2 * drain + smtp + 5000)) ] || return 1
    grep -qx "TimeoutStopSec=${stop}s" 'deploy/systemd/lattice-shim@.service'
}
check "TimeoutStopSec covers the SIGTERM drain (2 x shutdown_timeout_ms + SMTP timeout + 5 s)" stop_budget

check "systemd-analyze security --offline: exposure at most 2.0 (OK)" \
    sh -c "cd '$units' && systemd-analyze security --offline=yes --threshold=20 ./lattice-shim.service >/dev/null"

template_same() {  # the template is the unit plus the port: nothing else may drift
    diff <(grep -v '^#' deploy/systemd/lattice-shim.service | grep -vE '^(Description|SyslogIdentifier)=') \
         <(grep -v '^#' 'deploy/systemd/lattice-shim@.service' |
           grep -vE '^(Description|SyslogIdentifier|Conflicts)=|^Environment=LATTICE_SHIM_PORT=%i$')
}
check "lattice-shim@.service = lattice-shim.service + LATTICE_SHIM_PORT=%i" template_same

# ---- the sample shim configuration --------------------------------------------
conf=deploy/lattice-shim.conf
# the key table of shim/config.c: STR("listen", ...), INT("port", ...), ...
mapfile -t known < <(sed -n '/^static const struct key keys\[\] = {/,/^};/p' shim/config.c |
                     sed -n 's/^ *\(STR\|INT\|LONG\|BOOL\)("\([a-z_]*\)".*/\2/p')
every_key() {
    local k missing=0
    [ ${#known[@]} -ge 30 ] || { echo "only ${#known[@]} keys parsed from shim/config.c"; return 1; }
    for k in "${known[@]}"; do
        grep -qE "^$k =" "$conf" || { echo "$conf does not set $k"; missing=1; }
    done
    return $missing
}
check "the sample config sets every key of shim/config.c (${#known[@]} keys)" every_key

documented() {  # each key: a comment block right above it that states its default; no key config.c lacks
    awk -v known="${known[*]}" '
        BEGIN { n = split(known, a, " "); for (i = 1; i <= n; i++) k[a[i]] = 1 }
        /^#/ { block = block $0 "\n"; next }
        /^[a-z_]+ =/ { key = $1
                       if (!(key in k)) { print "unknown key " key; bad = 1 }
                       if (block !~ /Default/ && !(key in grouped)) { print key ": no comment with its default"; bad = 1 }
                       if (key ~ /^statement_timeout_/) grouped["statement_timeout_normal_ms"] = grouped["statement_timeout_slow_ms"] = 1
                       block = ""; next }
        /^$/ { block = "" }
        END { exit bad }' "$conf"
}
check "every key of the sample is commented with its default, and none is unknown" documented

env_sample() {  # every LATTICE_* variable shim/outbound.c reads is in the env sample; the file is KEY=value
    local v missing=0
    for v in $(grep -oE '"LATTICE_[A-Z_]+"' shim/outbound.c | tr -d '"' | sort -u); do
        grep -qE "^#?$v=|^# $v " deploy/lattice-shim.env || { echo "deploy/lattice-shim.env: no $v"; missing=1; }
    done
    if grep -vE '^(#.*)?$' deploy/lattice-shim.env | grep -vE '^[A-Z_]+=("[^"]*"|[^" ]*)$'; then missing=1; fi
    return $missing
}
check "the env sample names every LATTICE_* variable of shim/outbound.c, one KEY=value a line" env_sample

# ---- PostgreSQL: a scratch cluster with the snippet in conf.d ------------------
pg_dir=$work/pg
mkdir -p "$pg_dir/data" && chown -R postgres:postgres "$pg_dir" && chmod 0700 "$pg_dir/data"
pg_port=$(free_port)
q="runuser -u postgres -- psql -XAtq -h $pg_dir -p $pg_port"
pg_snippet() {
    # authentication as Debian's pg_createcluster sets it up
    runuser -u postgres -- "$PGBIN/initdb" -D "$pg_dir/data" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
        -N -E UTF8 --locale=C.UTF-8 >/dev/null || return 1
    # Debian's layout: postgresql.conf reads conf.d/
    runuser -u postgres -- mkdir "$pg_dir/data/conf.d"
    install -o postgres -m 0644 deploy/postgresql/lattice.conf "$pg_dir/data/conf.d/lattice.conf"
    echo "include_dir = 'conf.d'" >>"$pg_dir/data/postgresql.conf"
    # only the port and the socket directory differ from a real server
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w -t 30 \
        -o "-p $pg_port -k $pg_dir" start >/dev/null || { cat "$pg_dir/log"; return 1; }
    $q -d postgres -c 'CREATE DATABASE lattice' && $q -d lattice -c 'CREATE EXTENSION lattice' || return 1
    local got
    got=$($q -d lattice -c "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings
                             WHERE name IN ('shared_preload_libraries', 'lattice.rate_table_size', 'lattice.rate_usage_interval',
                                            'lattice.rate_database', 'lattice.billing_public_origin', 'listen_addresses')")
    echo "settings: $got"
    [ "$got" = "lattice.billing_public_origin=https://lattice.example.com lattice.rate_database=lattice lattice.rate_table_size=65536 lattice.rate_usage_interval=60 listen_addresses= shared_preload_libraries=lattice" ] || return 1
    # the roll-up worker (it waits one interval before connecting to
    # lattice.rate_database, so it shows as a process, not yet a session)
    local pm p n=0
    pm=$(head -1 "$pg_dir/data/postmaster.pid")
    for p in /proc/[0-9]*; do
        grep -qx "PPid:	$pm" "$p/status" 2>/dev/null && tr '\0' ' ' <"$p/cmdline" 2>/dev/null |
            grep -q 'lattice usage roll-up' && n=$((n + 1))
    done
    echo "roll-up worker processes: $n"
    [ $n = 1 ] && $q -d lattice -c 'SELECT lattice.rate_flush_usage()' >/dev/null
}
check "PostgreSQL 15 starts with conf.d/lattice.conf: lattice preloaded, rate settings, roll-up worker running, CREATE EXTENSION" pg_snippet

# The guide's login for the shim: its commands, word for word, except that
# the system user nobody stands in for lattice (no user is created here).
hba_line='local   lattice         lattice_shim                            peer map=lattice'
hba_sed="sed -i '/^local[[:space:]]\\+all[[:space:]]\\+all[[:space:]]/i $hba_line'"
ident_line='lattice         lattice                 lattice_shim'
role_sql='CREATE ROLE lattice_shim LOGIN IN ROLE lattice_api'
peer_map() {
    local cmd
    for cmd in "$hba_sed" "echo '$ident_line' >>/etc/postgresql/15/main/pg_ident.conf" "$role_sql"; do
        grep -qF -- "$cmd" docs/deploy.md || { echo "docs/deploy.md no longer says: $cmd"; return 1; }
    done
    eval "$hba_sed" '"$pg_dir/data/pg_hba.conf"' || return 1
    echo "${ident_line/lattice         lattice /lattice         nobody  }" >>"$pg_dir/data/pg_ident.conf"
    grep '^local' "$pg_dir/data/pg_hba.conf"; tail -1 "$pg_dir/data/pg_ident.conf"
    $q -d lattice -c "$role_sql" && $q -d postgres -c 'SELECT pg_reload_conf()' >/dev/null || return 1
    local as_shim="host=$pg_dir port=$pg_port user=lattice_shim"
    # the mapped user reaches the shim's functions, in database lattice only; nobody else is let in
    runuser -u nobody -- psql -XAtq "$as_shim dbname=lattice" -c "SELECT current_user, (lattice_http.ready('{}', NULL)).status" | tee "$work/peer.out"
    grep -qx 'lattice_shim|200' "$work/peer.out" || return 1
    ! runuser -u nobody -- psql -XAtq "$as_shim dbname=postgres" -c 'SELECT 1' &&
        ! runuser -u daemon -- psql -XAtq "$as_shim dbname=lattice" -c 'SELECT 1'
}
check "the guide's pg_hba.conf line and pg_ident.conf mapping: peer login as lattice_shim, to lattice only, for the mapped user only" peer_map
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$pg_dir/data" -m fast -w stop >/dev/null 2>&1

# ---- nginx ---------------------------------------------------------------------
ng=$work/nginx
mkdir -p "$ng/acme"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$ng/privkey.pem" \
    -out "$ng/fullchain.pem" -days 1 -subj /CN=lattice.example.com \
    -addext subjectAltName=DNS:lattice.example.com >/dev/null 2>&1
shim_port=$(free_port); tls_port=$(free_port); http_port=$(free_port)
while [ "$tls_port" = "$shim_port" ]; do tls_port=$(free_port); done
while [ "$http_port" = "$shim_port" ] || [ "$http_port" = "$tls_port" ]; do http_port=$(free_port); done
shim_port2=$(free_port)
while [ "$shim_port2" = "$shim_port" ] || [ "$shim_port2" = "$tls_port" ] || [ "$shim_port2" = "$http_port" ]; do shim_port2=$(free_port); done

# The site as shipped, but on loopback ports, with this run's certificate.
site_rewrite() {
    local site=deploy/nginx/lattice.conf pat
    for pat in '^    listen 80;$' '^    listen \[::\]:80;$' '^    listen 443 ssl http2;$' '^    listen \[::\]:443 ssl http2;$' \
               '^    server 127\.0\.0\.1:8080 max_fails=0;$' '/etc/letsencrypt/live/lattice\.example\.com/fullchain\.pem;$' \
               '/etc/letsencrypt/live/lattice\.example\.com/privkey\.pem;$' 'root /var/www/html;$' \
               '^    #server 127\.0\.0\.1:8081 max_fails=0;$'; do
        [ "$(grep -c "$pat" "$site")" -ge 1 ] || { echo "the site has no line matching $pat"; return 1; }
    done
    sed -e "s|^    listen 80;\$|    listen 127.0.0.1:$http_port;|" -e '/^    listen \[::\]:/d' \
        -e "s|^    listen 443 ssl http2;\$|    listen 127.0.0.1:$tls_port ssl http2;|" \
        -e "s|^    server 127\.0\.0\.1:8080 |    server 127.0.0.1:$shim_port |" \
        -e "s|/etc/letsencrypt/live/lattice\.example\.com/|$ng/|" -e "s|root /var/www/html;|root $ng/acme;|" \
        "$site" >"$ng/site.conf"
    if grep -v '^ *#' "$ng/site.conf" | grep -nE '/etc/|/var/|:8080|443|listen 80'; then return 1; fi
    cat >"$ng/nginx.conf" <<CONF
user root;
worker_processes 1;
pid $ng/nginx.pid;
error_log $ng/error.log notice;
events { worker_connections 256; }
http {
    access_log $ng/access.log;
    client_body_temp_path $ng/client_body;
    proxy_temp_path $ng/proxy;
    fastcgi_temp_path $ng/fastcgi;
    uwsgi_temp_path $ng/uwsgi;
    scgi_temp_path $ng/scgi;
    include $ng/site.conf;
}
CONF
}
nginx_t() { site_rewrite && nginx -t -p "$ng" -e "$ng/error.log" -c "$ng/nginx.conf"; }
check "nginx -t: a config including deploy/nginx/lattice.conf (loopback ports, a self-signed certificate)" nginx_t

# Debian's own nginx.conf (a copy: its pid, logs and temporary files moved
# here) with the site where sites-enabled/ would put it: no directive clashes.
debian_nginx() {
    local main=/etc/nginx/nginx.conf
    [ -r $main ] || { echo "no $main"; return 1; }
    grep -q '^\s*include /etc/nginx/sites-enabled/\*;' $main || { echo "$main does not include sites-enabled/"; return 1; }
    sed -e "s|^\(\s*\)include /etc/nginx/sites-enabled/\*;|\1include $ng/site.conf; client_body_temp_path $ng/client_body; proxy_temp_path $ng/proxy; fastcgi_temp_path $ng/fastcgi; uwsgi_temp_path $ng/uwsgi; scgi_temp_path $ng/scgi;|" \
        -e "s|^pid .*|pid $ng/debian.pid;|" -e "s|^\(\s*\)error_log .*|\1error_log $ng/error.log;|" \
        -e "s|^\(\s*\)access_log .*|\1access_log $ng/access.log;|" $main >"$ng/debian.conf"
    nginx -t -p "$ng" -e "$ng/error.log" -c "$ng/debian.conf"
}
if [ -r /etc/nginx/nginx.conf ]; then
    check "nginx -t: Debian's nginx.conf with the site in place of sites-enabled/*" debian_nginx
else
    ok "nginx -t: Debian's nginx.conf with the site in place of sites-enabled/* # SKIP no /etc/nginx/nginx.conf"
fi

# ---- the shim from the sample config, behind nginx ---------------------------------
# Overridden: the port, the database (this run's cluster) and the web root (this
# tree's build instead of /usr/local/share/lattice/web).  Everything else is the sample's.
# Under strace when it can trace here: the system calls the shim makes are
# checked against the unit's SystemCallFilter at the end.
web=$root/web/dist; [ -d "$web" ] || web=$root/web
tracer=()
command -v strace >/dev/null && strace -f -qq -o /dev/null true 2>/dev/null && tracer=(strace -f -qq -o "$work/shim.strace")
# Its environment: deploy/lattice-shim.env read as systemd's EnvironmentFile=
# does (KEY=value, quotes removed), then the outbound ends pointed here: the
# SMTP server is tests/stripe_standin/smtp_sink.py (no TLS, no login), and
# Stripe an address where nothing listens (no call leaves this machine).
smtp_port=$(free_port)
smtp_pid=''
/usr/bin/python3 tests/stripe_standin/smtp_sink.py "$smtp_port" "$work/smtp.jsonl" >"$work/smtp.log" 2>&1 &
smtp_pid=$!
(
    while IFS= read -r line; do
        case $line in ''|'#'*) continue ;; esac
        name=${line%%=*} value=${line#*=}
        case $value in \"*\") value=${value#\"}; value=${value%\"} ;; esac
        export "$name=$value"
    done <deploy/lattice-shim.env
    export LATTICE_SMTP_URL="smtp://127.0.0.1:$smtp_port" LATTICE_SMTP_TLS=none LATTICE_SMTP_USERNAME='' \
           LATTICE_SMTP_PASSWORD='' LATTICE_STRIPE_API_BASE=http://127.0.0.1:9 LATTICE_OUTBOX_POLL_MS=200
    export LATTICE_SHIM_PORT=$shim_port LATTICE_SHIM_WEB_ROOT=$web \
           LATTICE_SHIM_CONNINFO="host=$PGHOST port=$PGPORT dbname=${PGDATABASE:-lattice} user=lattice_shim"
    exec "${tracer[@]}" "$shim_bin" --config "$conf" >"$work/shim.out" 2>"$work/shim.err"
) &
shim_pid=$!    # strace's, when traced: it exits with the shim's status
nginx -p "$ng" -e "$ng/error.log" -c "$ng/nginx.conf" -g 'daemon off;' >"$ng/stdout" 2>&1 &
nginx_pid=$!

# curl to nginx as a client at its own loopback address, with the site's name
client=127.0.79.$(( $$ % 250 + 1 ))
https_url="https://lattice.example.com:$tls_port"
c() { curl -sS --max-time 10 --interface "$client" --resolve "lattice.example.com:$tls_port:127.0.0.1" \
           --resolve "lattice.example.com:$http_port:127.0.0.1" --cacert "$ng/fullchain.pem" "$@"; }

up=0
for _ in $(seq 100); do
    if [ "$(c -o /dev/null -w '%{http_code}' "$https_url/api/v1/health" 2>/dev/null)" = 200 ]; then up=1; break; fi
    { kill -0 "$shim_pid" 2>/dev/null && kill -0 "$nginx_pid" 2>/dev/null; } || break
    sleep 0.1
done
if [ $up = 1 ]; then ok "the shim starts from deploy/lattice-shim.conf behind nginx: GET /api/v1/health over TLS is 200"
else not_ok "the shim starts from deploy/lattice-shim.conf behind nginx: GET /api/v1/health over TLS is 200" \
        "$(tail -5 "$work/shim.err")" "$(tail -5 "$ng/error.log")"; fi

landing() {
    local h
    h=$(c -D - -o "$work/index.html" "$https_url/") || return 1
    echo "$h" | head -1; echo "$h" | grep -qiE '^HTTP/[0-9.]+ 200' && echo "$h" | grep -qi '^content-type: text/html' &&
        grep -qi '<html' "$work/index.html"
}
check "GET / (the landing page) through nginx: 200 text/html" landing

redirect() {
    local h
    h=$(c -D - -o /dev/null "http://lattice.example.com:$http_port/pricing?x=1") || return 1
    echo "$h" | head -3
    echo "$h" | grep -qE '^HTTP/[0-9.]+ 301' && echo "$h" | grep -qiF "location: https://lattice.example.com/pricing?x=1"
}
check "plain HTTP answers a redirect to https" redirect

email="deploy-$$-$RANDOM@example.com"
jar=$work/cookies
signup() {
    local h
    h=$(c -D - -o "$work/signup.json" -c "$jar" -H 'Content-Type: application/json' \
          --data "{\"email\":\"$email\",\"password\":\"a fine long deploy password\",\"name\":\"Deploy\"}" \
          "$https_url/api/v1/auth/signup") || return 1
    echo "$h" | grep -iE '^(HTTP|set-cookie|strict-transport)'; cat "$work/signup.json"; echo
    echo "$h" | grep -qE '^HTTP/[0-9.]+ 201' &&
        echo "$h" | grep -iE '^set-cookie: lattice_session=' | grep -qiE ';\s*Secure' &&
        echo "$h" | grep -iE '^set-cookie: lattice_csrf=' | grep -qiE ';\s*Secure' &&
        echo "$h" | grep -qiE '^strict-transport-security: max-age=[0-9]+'
}
check "POST /api/v1/auth/signup through nginx: 201, Secure session and CSRF cookies, HSTS" signup

me() {
    local h
    h=$(c -D - -o "$work/me.json" -b "$jar" "$https_url/api/v1/auth/me") || return 1
    echo "$h" | head -1; cat "$work/me.json"; echo
    echo "$h" | grep -qE '^HTTP/[0-9.]+ 200' && echo "$h" | grep -qiE '^strict-transport-security: max-age=[0-9]+' &&
        jq -e --arg e "$email" '(.email // .user.email) == $e' "$work/me.json" >/dev/null
}
check "GET /api/v1/auth/me with the cookies: 200, the account, HSTS" me

welcome_mail() {  # the outbox worker delivers the sign-up's mail with the env sample's sender
    for _ in $(seq 50); do
        [ -s "$work/smtp.jsonl" ] && jq -e --arg e "$email" 'select(.rcpt_tos == [$e])' "$work/smtp.jsonl" >/dev/null 2>&1 && break
        sleep 0.1
    done
    jq -c --arg e "$email" 'select(.rcpt_tos == [$e]) | {mail_from, rcpt_tos, from: (.data | capture("(?m)^From: (?<f>[^\r\n]*)").f)}' "$work/smtp.jsonl"
    jq -e --arg e "$email" 'select(.rcpt_tos == [$e]) | (.data | test("(?m)^From: Lattice <billing@lattice.example.com>\r?$"))' \
        "$work/smtp.jsonl" >/dev/null
}
check "the welcome mail goes out over SMTP, From as deploy/lattice-shim.env sets it" welcome_mail

client_seen() {  # trusted_proxies matches nginx: the session and the access log name the client, not nginx
    local addrs line
    addrs=$(psql -XAtq -c "SELECT string_agg(DISTINCT host(s.client_addr), ',') FROM lattice.sessions s
                           JOIN lattice.users u ON u.id = s.user_id WHERE u.email = '$email'")
    line=$(grep '"/api/v1/auth/me"' "$work/shim.out" | tail -1)
    echo "sessions: $addrs"; echo "access log: $line"
    [ "$addrs" = "$client" ] && echo "$line" | jq -e --arg c "$client" '.client == $c and .peer == "127.0.0.1" and .status == 200' >/dev/null
}
check "the shim sees the client behind nginx (sessions, access log), nginx as the peer" client_seen

ingest() {
    local uid key code
    uid=$(psql -XAtq -c "SELECT id FROM lattice.users WHERE email = '$email'")
    key=$(psql -XAtq -c "SELECT lattice.create_api_key('$uid', 'deploy', ARRAY['ingest'])") || return 1
    jq -r .body_raw tests/fixtures/captured/001-POST-api_v1_ingest_metadata.json >"$work/metadata.json"
    code=$(c -o "$work/ingest.json" -w '%{http_code}' -H "X-Lattice-API-Key: $key" -H 'X-Lattice-Schema-Version: 1.0.0' \
             -H 'Content-Type: application/json' --data-binary "@$work/metadata.json" "$https_url/api/v1/ingest/metadata")
    echo "$code $(cat "$work/ingest.json")"
    { [ "$code" = 200 ] || [ "$code" = 201 ]; } && jq -e '.success == true' "$work/ingest.json" >/dev/null
}
check "plugin ingest (POST /api/v1/ingest/metadata) with a key from lattice.create_api_key: 200/201" ingest

events() {  # Server-Sent Events pass unbuffered: the first event arrives while the stream is open
    c -N --max-time 3 -b "$jar" -o "$work/events.txt" "$https_url/api/v1/events"
    cat "$work/events.txt"
    grep -qx 'event: ready' "$work/events.txt"
}
check "GET /api/v1/events through nginx: the stream's first event arrives while it is open" events

metrics() {
    local via direct
    via=$(c -o /dev/null -w '%{http_code}' "$https_url/metrics")
    direct=$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$shim_port/metrics")
    echo "through nginx $via, direct $direct"
    [ "$via" = 404 ] && [ "$direct" = 200 ]
}
check "/metrics: 404 through nginx, 200 on the shim's loopback port" metrics

bodies() {  # nginx's client_max_body_size = the shim's body_max: at the limit the shim reads it, one byte more nginx refuses
    local max at over
    max=$(sed -n 's/^body_max = \([0-9]*\)$/\1/p' "$conf")
    { grep -qx '    client_max_body_size 1m;' "$ng/site.conf" && [ "$max" = 1048576 ]; } ||
        { echo "client_max_body_size 1m and body_max = $max are no longer equal"; return 1; }
    # valid JSON of exactly max bytes: {"email":"x@example.com","pad":"aaa...a"}
    local head='{"email":"x@example.com","pad":"' tail='"}'
    { printf '%s' "$head"; head -c $((max - ${#head} - ${#tail})) /dev/zero | tr '\0' a; printf '%s' "$tail"; } >"$work/at"
    { cat "$work/at"; printf ' '; } >"$work/over"
    echo "sizes: $(stat -c %s "$work/at") $(stat -c %s "$work/over")"
    [ "$(stat -c %s "$work/at")" = "$max" ] || return 1
    for _ in 1 2 3; do
        at=$(c -o "$work/at.json" -w '%{http_code}' -H 'Content-Type: application/json' --data-binary "@$work/at" "$https_url/api/v1/auth/login")
        over=$(c -D "$work/over.h" -o "$work/over.json" -w '%{http_code}' -H 'Content-Type: application/json' --data-binary "@$work/over" "$https_url/api/v1/auth/login")
        echo "at body_max: $at $(head -c 300 "$work/at.json")"; echo "one byte more: $over $(cat "$work/over.json")"
        # at the limit the shim reads the body and the login answers (no password: 400 or 401; never 413 or 502)
        { [ "$at" = 400 ] || [ "$at" = 401 ]; } && jq -e '.error.code != "too_large" and .error.request_id' "$work/at.json" >/dev/null || return 1
        [ "$over" = 413 ] && jq -e '.error.code == "too_large" and (.error.request_id | test("^[0-9a-f]{32}$"))' "$work/over.json" >/dev/null &&
            grep -qi '^x-request-id: [0-9a-f]\{32\}' "$work/over.h" || return 1
    done
}
check "body size: exactly body_max bytes reach the shim (its login answers), one byte more: nginx's JSON 413 with a request id (3 times)" bodies

bad_forward() {  # a client's Forwarded header is dropped by nginx, not passed on
    local code
    code=$(c -o "$work/fwd.json" -w '%{http_code}' -H 'Forwarded: for=203.0.113.7;proto=http' -b "$jar" "$https_url/api/v1/auth/me")
    echo "$code $(cat "$work/fwd.json")"
    [ "$code" = 200 ]
}
check "a client's own Forwarded header does not reach the shim (200, not 400 bad_forwarding_header)" bad_forward

# ---- SIGTERM drain, as systemd stops the unit ---------------------------------------
drain() {
    local start end rc ms targets=("$shim_pid")
    [ ${#tracer[@]} -gt 0 ] && read -ra targets <"/proc/$shim_pid/task/$shim_pid/children"
    start=$(date +%s%N)
    kill -TERM "${targets[@]}"
    wait "$shim_pid"; rc=$?
    end=$(date +%s%N)
    shim_pid=''
    ms=$(( (end - start) / 1000000 ))
    echo "exit status $rc after $ms ms"
    grep -E 'stopping|stopped' "$work/shim.err"
    [ $rc = 0 ] && [ $ms -lt 45000 ] && grep -q 'finishing requests in flight' "$work/shim.err" && grep -q '"stopped"' "$work/shim.err"
}
check "SIGTERM (KillSignal): the shim drains and exits 0 well inside TimeoutStopSec" drain

# ---- rolling two instances (docs/deploy.md, "No gap: two instances") ------------------
# Two shims from the sample config, the port set per instance as
# lattice-shim@.service does; the site's second upstream line enabled with
# the guide's own sed.  While one instance drains on SIGTERM, every GET
# through nginx is answered 200 (by the other, when the draining one says 503).
# The second instance runs confined as the unit confines it, where this
# machine lets root build that (a mount namespace): user nobody, no
# capabilities (empty bounding set), no_new_privs, / read-only
# (ProtectSystem=strict).  It reaches the cluster over TCP: the cluster's
# socket directory is private to postgres.
sandbox=()
if command -v setpriv >/dev/null && command -v unshare >/dev/null &&
   unshare -m sh -c 'mount --make-rprivate / && mount -o remount,bind,ro /' 2>/dev/null; then
    sandbox=(unshare -m sh -c 'mount --make-rprivate / && mount -o remount,bind,ro / &&
        exec setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs --bounding-set=-all --inh-caps=-all -- "$@"' sandbox)
fi
start_shim() {  # start_shim PORT NAME [confined]: the pid in $NAME
    local host=$PGHOST prefix=()
    [ "${3:-}" = confined ] && [ ${#sandbox[@]} -gt 0 ] && { host=127.0.0.1; prefix=("${sandbox[@]}"); }
    LATTICE_SHIM_PORT=$1 LATTICE_SHIM_WEB_ROOT=$web \
    LATTICE_SHIM_CONNINFO="host=$host port=$PGPORT dbname=${PGDATABASE:-lattice} user=lattice_shim" \
        "${prefix[@]}" "$shim_bin" --config "$conf" >"$work/$2.out" 2>"$work/$2.err" &
    printf -v "$2" '%s' $!
}
roll_setup() {
    start_shim "$shim_port" shim_a
    start_shim "$shim_port2" shim_b confined
    sed 's/^    #server 127.0.0.1:8081 max_fails=0;/    server 127.0.0.1:8081 max_fails=0;/' deploy/nginx/lattice.conf >"$ng/site2.conf"
    grep -q '^    server 127.0.0.1:8081 max_fails=0;$' "$ng/site2.conf" || { echo "the guide's sed did not enable 8081"; return 1; }
    # the same loopback substitutions as before, 8081 -> the second shim
    diff <(sed "s|^    server 127\.0\.0\.1:8081 |    server 127.0.0.1:$shim_port2 |" "$ng/site2.conf" |
           sed -e "s|^    listen 80;\$|    listen 127.0.0.1:$http_port;|" -e '/^    listen \[::\]:/d' \
               -e "s|^    listen 443 ssl http2;\$|    listen 127.0.0.1:$tls_port ssl http2;|" \
               -e "s|^    server 127\.0\.0\.1:8080 |    server 127.0.0.1:$shim_port |" \
               -e "s|/etc/letsencrypt/live/lattice\.example\.com/|$ng/|" -e "s|root /var/www/html;|root $ng/acme;|" \
           | tee "$ng/site.new") "$ng/site.conf"
    mv "$ng/site.new" "$ng/site.conf"
    nginx -t -p "$ng" -e "$ng/error.log" -c "$ng/nginx.conf" 2>&1 | tail -1 && kill -HUP "$nginx_pid" || return 1
    local p up
    for p in "$shim_port" "$shim_port2"; do
        up=0
        for _ in $(seq 50); do
            curl -fsS -o /dev/null "http://127.0.0.1:$p/ready" 2>/dev/null && { up=1; break; }
            sleep 0.1
        done
        [ $up = 1 ] || { echo "the shim on $p is not ready"; return 1; }
    done
    sleep 0.5   # nginx's new workers
    grep -c . "$ng/site.conf" >/dev/null
}
check "two instances (ports set as lattice-shim@.service does) behind the site with its second upstream line enabled" roll_setup

confined() {  # what the kernel says of instance B
    local st=/proc/$shim_b/status
    grep -E '^(Uid|CapEff|CapBnd|NoNewPrivs):' "$st"
    awk '$5 == "/" {print "mount /: " $6}' "/proc/$shim_b/mountinfo"
    grep -qE '^Uid:\s+65534\s+65534\s+65534\s+65534$' "$st" && grep -qx 'CapBnd:	0000000000000000' "$st" &&
        grep -qx 'CapEff:	0000000000000000' "$st" && grep -qx 'NoNewPrivs:	1' "$st" &&
        awk '$5 == "/" {print $6}' "/proc/$shim_b/mountinfo" | grep -q '^ro'
}
if [ ${#sandbox[@]} -gt 0 ]; then
    check "instance B serves confined as the unit confines it: user nobody, no capabilities, no_new_privs, / read-only" confined
else
    ok "instance B serves confined as the unit confines it # SKIP no mount namespace for root here"
fi

roll() {
    local rc
    for _ in $(seq 400); do echo "url = \"$https_url/api/v1/auth/me\""; echo 'output = "/dev/null"'; done >"$work/roll.curl"
    c -K "$work/roll.curl" -b "$jar" -w '%{stderr}%{http_code}\n' 2>"$work/roll.codes" &   # stderr: unbuffered
    local cpid=$!
    for _ in $(seq 100); do [ "$(grep -c . "$work/roll.codes")" -ge 50 ] && break; sleep 0.02; done
    kill -TERM "$shim_a"; local at; at=$(grep -c . "$work/roll.codes")
    wait "$shim_a"; rc=$?; shim_a=''
    local stopped; stopped=$(grep -c . "$work/roll.codes")
    wait "$cpid"
    echo "SIGTERM after $at answers, instance A gone after $stopped; its exit status $rc; answers: $(sort "$work/roll.codes" | uniq -c | tr '\n' ' ')"
    grep -h 'stopping\|stopped' "$work/shim_a.err"
    [ $rc = 0 ] && [ "$at" -lt 400 ] && [ "$(grep -c . "$work/roll.codes")" = 400 ] && ! grep -qv '^200$' "$work/roll.codes" &&
        grep -q 'finishing requests in flight' "$work/shim_a.err"
}
check "SIGTERM to one instance during 400 GETs through nginx: every answer 200, the instance exits 0" roll
echo "# $(head -1 "$work/check.out")"

after_stop() {  # with every upstream gone, nginx answers 502, not a hang
    local code
    kill -TERM "$shim_b" && wait "$shim_b"; shim_b=''
    code=$(c -o /dev/null -w '%{http_code}' "$https_url/api/v1/health")
    echo "$code"; [ "$code" = 502 ]
}
check "after the shims stopped, nginx answers 502 at once" after_stop

nginx_stop() {
    kill -QUIT "$nginx_pid" && wait "$nginx_pid"; local rc=$?
    nginx_pid=''
    grep -E '\[(emerg|alert|crit)\]' "$ng/error.log" && return 1
    return $rc
}
check "nginx stops cleanly, no emerg/alert/crit in its error log" nginx_stop

# ---- the system calls of the smoke run against the unit's SystemCallFilter -----------
syscalls() {
    local unit=deploy/systemd/lattice-shim.service
    # every group of systemd's table, nested groups expanded; the unit's allow
    # lines (SystemCallFilter=...) minus its deny lines (SystemCallFilter=~...)
    systemd-analyze syscall-filter >"$work/filters" || return 1
    grep '^SystemCallFilter=' "$unit" >"$work/unit-filters"
    awk 'FNR == NR { if ($0 ~ /^@/) g = $1; else if (g != "" && $1 != "" && $1 !~ /^#/) m[g] = m[g] " " $1; next }
         function add(x, set,   n, i, p) { if (x !~ /^@/) { set[x] = 1; return } n = split(m[x], p, " "); for (i = 1; i <= n; i++) add(p[i], set) }
         FILENAME ~ /unit-filters$/ { v = substr($0, length("SystemCallFilter=") + 1); deny = (v ~ /^~/); sub(/^~/, "", v)
                                     n = split(v, p, " "); for (i = 1; i <= n; i++) if (deny) add(p[i], no); else add(p[i], yes); next }
         { if (match($0, /^[0-9]+ +(<\.\.\. )?[a-z0-9_]+[( ]/)) { c = substr($0, RSTART, RLENGTH); sub(/^[0-9]+ +(<\.\.\. )?/, "", c); sub(/[( ]$/, "", c); used[c] = 1 } }
         END { for (c in used) { n++; if (!(c in yes) || (c in no)) { print "not allowed: " c; bad = 1 } }
               print n " distinct system calls traced"; if (n < 20) bad = 1; exit bad }' \
        "$work/filters" "$work/unit-filters" "$work/shim.strace"
}
if [ ${#tracer[@]} -gt 0 ]; then
    check "every system call of the shim in this run is allowed by the unit's SystemCallFilter" syscalls
    echo "# $(tail -1 "$work/check.out")"
else
    ok "every system call of the shim in this run is allowed by the unit's SystemCallFilter # SKIP strace cannot trace here"
fi
