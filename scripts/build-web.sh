#!/usr/bin/env bash
# Builds web/ into web/dist (served by the shim).  Idempotent and quick when
# nothing changed: `npm ci` runs only when package-lock.json changed, and the
# build only when a source file did (a hash of them is kept in dist/).
set -euo pipefail
cd "$(dirname "$0")/../web"

hash_of() { sha256sum "$@" | sha256sum | cut -c1-32; }

lock_hash=$(hash_of package.json package-lock.json)
if [ ! -f node_modules/.lattice-lock ] || [ "$(cat node_modules/.lattice-lock)" != "$lock_hash" ]; then
    echo "web: npm ci"
    npm ci --silent --no-audit --no-fund
    echo "$lock_hash" > node_modules/.lattice-lock
fi

mapfile -t sources < <(find . -path ./node_modules -prune -o -path ./dist -prune -o -type f -print | LC_ALL=C sort)
src_hash=$(hash_of "${sources[@]}")
if [ -f dist/.build-hash ] && [ "$(cat dist/.build-hash)" = "$src_hash" ]; then
    exit 0   # up to date
fi
echo "web: vite build"
node_modules/.bin/vite build --logLevel warn
echo "$src_hash" > dist/.build-hash
