#!/usr/bin/env bash
# A short chaos run for CI (under 3 minutes): Tally started by the load tester on a
# fresh PostgreSQL database, loaded with idempotency keys for 40 s while it is killed
# with SIGKILL and restarted 4 times and PostgreSQL is restarted once; then every
# acknowledged write must be in the store exactly once and the ledger's invariants hold.
#
#   loadtests/ci-chaos.sh [TALLY_BINARY]
#
# TALLY_BINARY defaults to the debug build (target/debug/tally), built if missing, as is
# the load tester. Needs PostgreSQL on DATABASE_URL (default 127.0.0.1:5432, user
# postgres) and permission to run pg_ctlcluster. Exits non-zero if any check fails; the
# report, the server logs and the plot are left in target/ci-chaos/.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET="${CARGO_TARGET_DIR:-target}"
BINARY="${1:-$TARGET/debug/tally}"
LOADTEST="$TARGET/debug/tally-loadtest"
OUTPUT="$TARGET/ci-chaos"
# The whole run, set-up and verification included, stays under the CI budget for it.
TIME_LIMIT_SECONDS=180

if [ ! -x "$BINARY" ] || [ ! -x "$LOADTEST" ]; then
    cargo build -p tally -p tally-loadtest
fi
rm -rf "$OUTPUT"
timeout --kill-after=10 "$TIME_LIMIT_SECONDS" "$LOADTEST" chaos \
    --tally-binary "$BINARY" \
    --database-url "${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" \
    --duration 40s --kills 4 \
    --users 200 --prefix ci --concurrency 16 \
    --mix transfer=80,credit=5,debit=5,history=5,balance=5 \
    --retry-time-max 30s --ready-timeout 30s --idle-timeout 30s \
    --output "$OUTPUT"
