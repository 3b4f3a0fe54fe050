#!/usr/bin/env bash
# Builds and installs Citus 12.1.12 from vendor/ when the PostgreSQL 15
# server has no citus.so yet (Debian does not package Citus).  Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
[ -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q build-essential postgresql-server-dev-15 libcurl4-openssl-dev \
    liblz4-dev libzstd-dev libkrb5-dev >/dev/null
src=$(mktemp -d /tmp/citus-build.XXXXXX)
trap 'rm -rf "$src"' EXIT
tar xzf vendor/citus-12.1.12.tar.gz -C "$src"
cd "$src"/citus-*
./configure PG_CONFIG="$PG_CONFIG" >"$src/configure.log" 2>&1 || { tail -20 "$src/configure.log"; exit 1; }
make -j"$(nproc)" >"$src/make.log" 2>&1 || { tail -40 "$src/make.log"; exit 1; }
make install >/dev/null
echo "citus: built and installed from vendor/citus-12.1.12.tar.gz"
