#!/usr/bin/env bash
# The load run inside `make test` (suite "load"): 200 simulated plugins for
# 30 seconds against a shim of its own (tests/load/run.mjs prints the TAP).
# `make bench-load` runs the same for 10 minutes:
#   LATTICE_LOAD_SECONDS=600 LATTICE_LOAD_PLUGINS=200 tests/run.sh load
set -euo pipefail
cd "$(dirname "$0")/../.."
exec node tests/load/run.mjs --plugins "${LATTICE_LOAD_PLUGINS:-200}" --seconds "${LATTICE_LOAD_SECONDS:-30}"
