#!/usr/bin/env bash
# Suite "fuzz": the shim under valgrind with a short simulated-plugin load
# (tests/fuzz/valgrind_load.mjs prints the TAP).  `make valgrind` runs it
# longer: LATTICE_VALGRIND_SECONDS="10 60".
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC2086
exec node tests/fuzz/valgrind_load.mjs ${LATTICE_VALGRIND_SECONDS:-5 15}
