#!/usr/bin/env bash
# Measures Tally at a million accounts (the memory and restart targets of BENCHMARKS.md):
#   1. creates --accounts users on a fresh PostgreSQL database and has Tally activate
#      every one of their account actors (tally-loadtest setup reads each balance;
#      --initial-balance 0.00 moves no money);
#   2. reads Tally's resident memory with every actor active (VmRSS, and
#      tally_actors_active to show they are; passivation is set to a day so that none
#      is passivated while the setup runs);
#   3. stops Tally gracefully and starts it again on that store, timing from the start
#      of the process to the first 200 of /readyz (actors activate lazily, so this does
#      not grow with the number of accounts).
# Writes target/scale/report.md.
#
#   loadtests/scale.sh [--accounts N] [--skip-build]
set -euo pipefail
cd "$(dirname "$0")/.."
COMMAND="$0${*:+ $*}"

ACCOUNTS=1000000
BUILD=1
SERVER_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PORT=18482
while [ $# -gt 0 ]; do
    case "$1" in
        --accounts) ACCOUNTS="$2"; shift 2 ;;
        --skip-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "scale.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

TARGET="${CARGO_TARGET_DIR:-target}"
OUTPUT="$TARGET/scale"
DB="tally_scale_$(date -u +%Y%m%d%H%M%S)"
DB_URL="${SERVER_URL%/*}/$DB"
ADMIN_PASSWORD="scale-admin-password"
TALLY_PID=""
stop_tally() {
    if [ -n "$TALLY_PID" ] && kill -0 "$TALLY_PID" 2>/dev/null; then
        kill -TERM "$TALLY_PID"
        wait "$TALLY_PID" 2>/dev/null || true
    fi
    TALLY_PID=""
}
cleanup() {
    stop_tally
    psql -q "$SERVER_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

start_tally() { # log name; sets READY_SECONDS, from the start of the process to ready
    local started
    started=$(date +%s.%N)
    HOST=127.0.0.1 PORT="$PORT" DATABASE_URL="$DB_URL" \
        JWT_SECRET="scale-secret-scale-secret-0123456789ab" TALLY_PASSIVATION_IDLE_SECONDS=86400 \
        TALLY_ADMIN_USERNAME=admin TALLY_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
        TALLY_RATE_LIMIT_IP_PER_SECOND=1000000 TALLY_RATE_LIMIT_IP_BURST=1000000 \
        TALLY_RATE_LIMIT_USER_PER_SECOND=1000000 TALLY_RATE_LIMIT_USER_BURST=1000000 \
        LOG_FORMAT=json RUST_LOG=warn "$TARGET/release/tally" >"$OUTPUT/$1.log" 2>&1 &
    TALLY_PID=$!
    until curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do
        kill -0 "$TALLY_PID" 2>/dev/null || { tail -20 "$OUTPUT/$1.log" >&2; exit 1; }
        sleep 0.01
    done
    READY_SECONDS=$(python3 -c "import time; print(f'{time.time() - $started:.2f}')")
}
metric() { curl -fs "http://127.0.0.1:$PORT/metrics" | awk -v name="$1" '$1 == name {print $2}'; }

[ "$BUILD" = 1 ] && cargo build --release -p tally -p tally-loadtest
mkdir -p "$OUTPUT"
psql -q "$SERVER_URL" -c "CREATE DATABASE $DB"
start_tally first
first_ready=$READY_SECONDS
"$TARGET/release/tally-loadtest" setup --target "http://127.0.0.1:$PORT" --admin-password "$ADMIN_PASSWORD" \
    --database-url "$DB_URL" --prefix scale --users "$ACCOUNTS" --initial-balance 0.00 \
    --setup-concurrency 64 | grep -v ' accounts checked$'
active=$(metric tally_actors_active)
rss_kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$TALLY_PID/status")
stop_tally
rows=$(psql -tA "$DB_URL" -c "SELECT count(*) FROM balances")
start_tally restart
restart_ready=$READY_SECONDS
stop_tally
{
    echo "| accounts in the store | actors active | resident memory | ready after a restart |"
    echo "|---|---|---|---|"
    printf '| %s | %s | %.0f MiB | %s s |\n' "$rows" "${active%.*}" "$(python3 -c "print($rss_kib / 1024)")" "$restart_ready"
    echo
    echo "First start on the empty database: ready in $first_ready s. Measured $(date -u +%Y-%m-%d)"
    echo "at commit $(git rev-parse --short HEAD) by $COMMAND."
} >"$OUTPUT/report.md"
cat "$OUTPUT/report.md"
