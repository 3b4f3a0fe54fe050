#!/usr/bin/env bash
# Suite "fault": PostgreSQL restarts, killed backends, a SIGKILLed shim and a
# statement_timeout while simulated plugins send (tests/fault/faults.mjs).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec node tests/fault/faults.mjs
