#!/usr/bin/env bash
# Installs what building, running and testing Lattice need, on Debian 12, and
# nothing when it is already there.  Run as root (make run / make test do).
set -euo pipefail

packages=(
    build-essential pkg-config postgresql-15 postgresql-server-dev-15 postgresql-15-pgtap
    libtap-parser-sourcehandler-pgtap-perl libpq-dev libcivetweb-dev libsodium-dev
    libjson-c-dev libcurl4-openssl-dev libssl-dev zlib1g-dev nodejs npm chromium wrk pgbouncer python3-aiosmtpd
    curl jq openssl valgrind cppcheck clang libclang-rt-14-dev nginx
)
# tests/shell/deploy.sh: systemd-analyze (verify, security) checks deploy/systemd/,
# strace records the shim's system calls for the unit's SystemCallFilter
packages+=(systemd strace)
# tests/shell/pitr.sh, deploy/pgbackrest/: WAL archiving, base backups, point-in-time restores
packages+=(pgbackrest)
# shim/otlp: protoc-c generates the OTLP protobuf C at build time, the shim links libprotobuf-c
packages+=(libprotobuf-c-dev protobuf-c-compiler)
# tests/shell/promtool.sh, deploy/prometheus/: promtool checks the alert rules and a live /metrics
# (Debian ships promtool only in the prometheus package; its service is not needed)
packages+=(prometheus)
# scripts/lint.sh (make lint, make format, tests/shell/lint.sh): clang-format (Debian's is 14; the
# .clang-format files are written for it) and shellcheck; cppcheck is above, eslint is a dev
# dependency in tests/package.json
packages+=(clang-format shellcheck)

missing=()
for p in "${packages[@]}"; do
    # node and npm may come from elsewhere than Debian on a developer's machine
    case $p in nodejs|npm) command -v "${p%js}" >/dev/null && continue ;; esac
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's postgresql package starts a main cluster on 5432; ours use their own.
# Likewise nginx: the HTTP suite runs its own (tests/http/proxy_nginx.test.mjs).
# Again when the lock is newer than the last install (a machine with an older
# node_modules gets the new packages); the stamp is written after npm ci.
if [ -d tests ] && [ -f tests/package.json ] && { [ ! -d tests/node_modules ] ||
        [ tests/package-lock.json -nt tests/node_modules/.lattice-deps-stamp ]; }; then
    (cd tests && npm ci --silent --no-audit --no-fund && touch node_modules/.lattice-deps-stamp)
fi
