#!/usr/bin/env bash
# Measures Tally's read cache with Redis: the hit ratio of a read-heavy load (history
# reads 10:1 against writes) and how much faster a cached history read is than an
# uncached one. Starts Tally (release, PostgreSQL store, strict durability, Redis cache)
# on a fresh database and drives it with tally-loadtest:
#   1. cold: history reads only, over --users accounts, each page read for the first time
#      (misses, as the database answers them);
#   2. warm: the same requests again (same seed, so the same pages): every one a hit;
#   3. mixed: history=91 against transfer=9 (10:1) over --hot accounts; every transfer
#      invalidates both parties' cached pages, so the next read of them misses.
# Hit ratios come from the server's tally_cache_requests_total, read before and after
# each run. Writes target/cache/report.md (and each run's files beside it).
#
#   loadtests/cache.sh [--users N] [--hot N] [--requests N] [--concurrency N] [--skip-build]
set -euo pipefail
cd "$(dirname "$0")/.."
COMMAND="$0${*:+ $*}"

USERS=50000
HOT=1000
REQUESTS=40000
CONCURRENCY=32
BUILD=1
SERVER_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
REDIS="${REDIS_URL:-redis://127.0.0.1:6379}/7"
PORT=18481
while [ $# -gt 0 ]; do
    case "$1" in
        --users) USERS="$2"; shift 2 ;;
        --hot) HOT="$2"; shift 2 ;;
        --requests) REQUESTS="$2"; shift 2 ;;
        --concurrency) CONCURRENCY="$2"; shift 2 ;;
        --skip-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "cache.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

TARGET="${CARGO_TARGET_DIR:-target}"
OUTPUT="$TARGET/cache"
DB="tally_cache_$(date -u +%Y%m%d%H%M%S)"
DB_URL="${SERVER_URL%/*}/$DB"
ADMIN_PASSWORD="cache-admin-password"
TALLY_PID=""
cleanup() {
    [ -n "$TALLY_PID" ] && kill -TERM "$TALLY_PID" 2>/dev/null && wait "$TALLY_PID" 2>/dev/null || true
    psql -q "$SERVER_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

[ "$BUILD" = 1 ] && cargo build --release -p tally -p tally-loadtest
mkdir -p "$OUTPUT"
redis-cli -u "$REDIS" FLUSHDB >/dev/null
psql -q "$SERVER_URL" -c "CREATE DATABASE $DB"
HOST=127.0.0.1 PORT="$PORT" DATABASE_URL="$DB_URL" REDIS_URL="$REDIS" \
    JWT_SECRET="cache-secret-cache-secret-0123456789ab" \
    TALLY_ADMIN_USERNAME=admin TALLY_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
    TALLY_RATE_LIMIT_IP_PER_SECOND=1000000 TALLY_RATE_LIMIT_IP_BURST=1000000 \
    TALLY_RATE_LIMIT_USER_PER_SECOND=1000000 TALLY_RATE_LIMIT_USER_BURST=1000000 \
    LOG_FORMAT=json RUST_LOG=warn "$TARGET/release/tally" >"$OUTPUT/tally.log" 2>&1 &
TALLY_PID=$!
for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

LT=("$TARGET/release/tally-loadtest")
COMMON=(--target "http://127.0.0.1:$PORT" --admin-password "$ADMIN_PASSWORD" --database-url "$DB_URL" --prefix cache)
"${LT[@]}" setup "${COMMON[@]}" --users "$USERS" | tail -1

cache_counts() { # hits misses, history cache
    curl -fs "http://127.0.0.1:$PORT/metrics" | awk '
        /^tally_cache_requests_total\{cache="history",result="hit"\}/ {h=$2}
        /^tally_cache_requests_total\{cache="history",result="miss"\}/ {m=$2}
        END {printf "%d %d\n", h, m}'
}
history_p50_p99() { # run dir
    python3 - "$1/result.json" <<'PYTHON'
import json, sys
ops = json.load(open(sys.argv[1]))["measurements"]["per_operation"]
h = ops["history"]
print(f"{h['per_second']:.0f} {h['p50_ms']:.2f} {h['p99_ms']:.2f}")
PYTHON
}
run() { # name, extra flags...
    local name=$1; shift
    read -r h0 m0 < <(cache_counts)
    "${LT[@]}" run "${COMMON[@]}" --concurrency "$CONCURRENCY" --requests "$REQUESTS" --duration 10m \
        --output "$OUTPUT/$name" --quiet "$@" >"$OUTPUT/$name.txt"
    read -r h1 m1 < <(cache_counts)
    read -r rate p50 p99 < <(history_p50_p99 "$OUTPUT/$name")
    local hits=$((h1 - h0)) misses=$((m1 - m0))
    printf '| %s | %d | %d | %.1f %% | %s | %s | %s |\n' "$name" "$hits" "$misses" \
        "$(python3 -c "print(100 * $hits / max($hits + $misses, 1))")" "$rate" "$p50" "$p99" >>"$OUTPUT/report.md"
}
{
    echo "| run | history hits | misses | hit ratio | history reads/s | p50 ms | p99 ms |"
    echo "|---|---|---|---|---|---|---|"
} >"$OUTPUT/report.md"
run cold --users "$USERS" --mix history=100 --seed 7
run warm --users "$USERS" --mix history=100 --seed 7
run mixed --users "$HOT" --mix history=91,transfer=9 --seed 8
{
    echo
    echo "Tally release build, PostgreSQL store, strict durability, Redis cache; tally-loadtest"
    echo "closed loop, $CONCURRENCY clients, $REQUESTS requests per run; cold and warm read the same"
    echo "$USERS accounts' first history page (same seed), mixed runs over $HOT accounts."
    echo "Measured $(date -u +%Y-%m-%d) by $COMMAND."
} >>"$OUTPUT/report.md"
cat "$OUTPUT/report.md"
