#!/usr/bin/env bash
# Tally against plain PostgreSQL on this machine, side by side: builds Tally in release,
# starts it on a fresh PostgreSQL database with strict durability and then relaxed, sets
# up N users, and runs Tally's load and the pgbench baseline (loadtests/baseline/) back
# to back for each shape (uniform over N accounts; a hot set of K), at one concurrency;
# then, strict and uniform, an open-loop run at half the closed-loop peak (p99 corrected
# for coordinated omission) and the same closed-loop run on the embedded SQLite store.
# The baseline also runs at fewer clients (--baseline-clients), because PostgreSQL peaks
# below 64 here: the ratios against its best client count are written beside the targets'.
# Writes the table, the targets, the machine and the command into BENCHMARKS.md.
#
#   loadtests/compare.sh [--users 100000] [--hot 10] [--concurrency 64] [--duration 15]
#                        [--baseline-clients "4 16 32"]
#                        [--database-url postgres://postgres@127.0.0.1:5432/postgres]
#                        [--port 18480] [--output target/compare] [--skip-build]
#
# The default run takes about 10 minutes after the build (add about 10 minutes for a
# clean release build on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=100000
HOT=10
CONCURRENCY=64
DURATION=15
BASELINE_CLIENTS="4 16 32"
SERVER_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PORT=18480
OUTPUT=""
BUILD=1
COMMAND="loadtests/compare.sh${*:+ $*}"
while [ $# -gt 0 ]; do
    case "$1" in
        --users) USERS="$2"; shift 2 ;;
        --hot) HOT="$2"; shift 2 ;;
        --concurrency) CONCURRENCY="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --baseline-clients) BASELINE_CLIENTS="$2"; shift 2 ;;
        --database-url) SERVER_URL="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --output) OUTPUT="$2"; shift 2 ;;
        --skip-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

TARGET="${CARGO_TARGET_DIR:-target}"
OUTPUT="${OUTPUT:-$TARGET/compare}"
TALLY="$TARGET/release/tally"
LOADTEST="$TARGET/release/tally-loadtest"
STAMP="$(date -u +%Y%m%d%H%M%S)"
TALLY_DB="tally_compare_$STAMP"
BASELINE_DB="tally_baseline_$STAMP"
ADMIN_PASSWORD="compare-admin-password"
# Tally's JWT secret, which the load tester also gets: it signs each user a token of
# their own and sends every transfer as the owner of the account it debits, as ordinary
# users do (an admin's transfer between two other users' accounts is an audited
# administrative action, one more row per transfer).
JWT_SECRET="compare-secret-compare-secret-0123456789"
# Each account starts with 1000.00, in Tally and in the baseline alike.
INITIAL_BALANCE_MINOR=100000
TALLY_PID=""

log() { printf '\n== %s\n' "$*"; }
# Every measured PostgreSQL cell, Tally's and pgbench's alike, starts right after a
# checkpoint: otherwise one cell and not another meets the checkpoint that the WAL
# written so far (the setup's included) brings on, with the burst of full-page writes
# that follows it, and the p99 of that cell says more about the timing than the system.
# The files a cell leaves behind (the load tester's run.json of every write, tens of MB;
# pgbench's per-transaction logs) are written back by the kernel about 30 s later, in the
# middle of the next cell: on a filesystem shared with PostgreSQL's WAL, that burst stalls
# its commits (200 ms seen here, enough to push an open-loop p99 past 100 ms). So they are
# flushed first, outside every measured cell.
checkpoint() {
    sync
    psql -q "$SERVER_URL" -c "CHECKPOINT" || echo "compare.sh: CHECKPOINT refused (needs a superuser or pg_checkpoint); cells may meet a checkpoint" >&2
}
database_url() { printf '%s' "${SERVER_URL%/*}/$1"; }

stop_tally() {
    if [ -n "$TALLY_PID" ] && kill -0 "$TALLY_PID" 2>/dev/null; then
        kill -TERM "$TALLY_PID"
        for _ in $(seq 1 300); do kill -0 "$TALLY_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$TALLY_PID" 2>/dev/null || true
    fi
    TALLY_PID=""
}
cleanup() {
    stop_tally
    psql -q "$SERVER_URL" -c "DROP DATABASE IF EXISTS $TALLY_DB WITH (FORCE)" \
        -c "DROP DATABASE IF EXISTS $BASELINE_DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

start_tally() { # durability [database URL]
    TALLY_DURABILITY="$1" HOST=127.0.0.1 PORT="$PORT" DATABASE_URL="${2:-$(database_url "$TALLY_DB")}" \
        JWT_SECRET="$JWT_SECRET" \
        TALLY_ADMIN_USERNAME=admin TALLY_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
        TALLY_RATE_LIMIT_IP_PER_SECOND=1000000 TALLY_RATE_LIMIT_IP_BURST=1000000 \
        TALLY_RATE_LIMIT_USER_PER_SECOND=1000000 TALLY_RATE_LIMIT_USER_BURST=1000000 \
        TALLY_RATE_LIMIT_LOGIN_PER_MINUTE=1000000 TALLY_RATE_LIMIT_LOGIN_BURST=1000000 \
        LOG_FORMAT=json RUST_LOG=warn "$TALLY" >"$OUTPUT/tally-$1${2:+-sqlite}.log" 2>&1 &
    TALLY_PID=$!
    for _ in $(seq 1 600); do
        curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && return 0
        kill -0 "$TALLY_PID" 2>/dev/null || { tail -20 "$OUTPUT/tally-$1.log"; exit 1; }
        sleep 0.1
    done
    echo "Tally did not become ready in 60 s" >&2; exit 1
}

# "throughput p99 refused-percent accepted-writes queued-at-end" of a Tally run's result.json.
tally_figures() {
    python3 - "$1/result.json" <<'PYTHON'
import json, sys
measurements = json.load(open(sys.argv[1]))["measurements"]
overall = measurements["overall"]
refused = sum(n for outcome, n in measurements["outcomes"].items() if outcome.startswith("refused:"))
queued = json.load(open(sys.argv[1]))["server"].get("queue_depth_at_end") or 0
print(f"{overall['per_second']:.0f} {overall['p99_ms']:.1f} {100 * refused / max(overall['count'], 1):.2f} "
      f"{measurements['accepted_writes']} {queued:.0f}")
PYTHON
}

mkdir -p "$OUTPUT"
if [ "$BUILD" = 1 ]; then
    log "building Tally and the load tester (release)"
    cargo build --release -p tally -p tally-loadtest
fi
pg_isready -q -d "$SERVER_URL"

declare -A THROUGHPUT P99 ACCEPTED QUEUED
REFUSED_MAX=0
SHAPES=(uniform hot)
shape_flags() { # shape
    case "$1" in
        uniform) echo "--shape uniform" ;;
        hot) echo "--shape hot-set --hot-accounts $HOT" ;;
    esac
}

log "Tally: fresh database $TALLY_DB"
psql -q "$SERVER_URL" -c "CREATE DATABASE $TALLY_DB"
for durability in strict relaxed; do
    log "Tally, $durability durability"
    start_tally "$durability"
    "$LOADTEST" setup --target "http://127.0.0.1:$PORT" --admin-password "$ADMIN_PASSWORD" \
        --jwt-secret "$JWT_SECRET" --database-url "$(database_url "$TALLY_DB")" --users "$USERS" --prefix cmp \
        --initial-balance 1000.00 --request-timeout 60s | grep -v ' accounts checked$'
    for shape in "${SHAPES[@]}"; do
        log "Tally $durability, $shape: $CONCURRENCY connections for ${DURATION}s"
        checkpoint
        # shellcheck disable=SC2046
        "$LOADTEST" run --target "http://127.0.0.1:$PORT" --admin-password "$ADMIN_PASSWORD" \
            --jwt-secret "$JWT_SECRET" --database-url "$(database_url "$TALLY_DB")" --users "$USERS" --prefix cmp \
            $(shape_flags "$shape") --concurrency "$CONCURRENCY" --duration "${DURATION}s" \
            --output "$OUTPUT/tally-$durability-$shape" --quiet --idle-timeout 120s
        read -r tps p99 refused accepted queued < <(tally_figures "$OUTPUT/tally-$durability-$shape")
        ACCEPTED["$durability-$shape"]=$accepted
        QUEUED["$durability-$shape"]=$queued
        REFUSED_MAX=$(python3 -c "print(max($REFUSED_MAX, $refused))")
        THROUGHPUT["$durability-$shape"]=$tps
        P99["$durability-$shape"]=$p99
    done
    if [ "$durability" = strict ]; then
        OPEN_RATE=$(( ${THROUGHPUT[strict-uniform]%.*} / 2 ))
        log "Tally strict, uniform, open loop at $OPEN_RATE requests/s (half the closed-loop peak) for ${DURATION}s"
        checkpoint
        "$LOADTEST" run --target "http://127.0.0.1:$PORT" --admin-password "$ADMIN_PASSWORD" \
            --jwt-secret "$JWT_SECRET" --database-url "$(database_url "$TALLY_DB")" --users "$USERS" --prefix cmp \
            --shape uniform --rate "$OPEN_RATE" --duration "${DURATION}s" \
            --output "$OUTPUT/tally-strict-open" --quiet --idle-timeout 120s
        read -r OPEN_TPS OPEN_P99 _ < <(tally_figures "$OUTPUT/tally-strict-open")
    fi
    stop_tally
done

SQLITE_FILE="$OUTPUT/tally-compare-$STAMP.db"
SQLITE_URL="sqlite:$SQLITE_FILE"
log "Tally strict on the embedded SQLite store ($SQLITE_FILE), uniform"
rm -f "$SQLITE_FILE"*
start_tally strict "$SQLITE_URL"
"$LOADTEST" setup --target "http://127.0.0.1:$PORT" --admin-password "$ADMIN_PASSWORD" \
    --jwt-secret "$JWT_SECRET" --database-url "$SQLITE_URL" --users "$USERS" --prefix cmp \
    --initial-balance 1000.00 --request-timeout 60s | grep -v ' accounts checked$'
"$LOADTEST" run --target "http://127.0.0.1:$PORT" --admin-password "$ADMIN_PASSWORD" \
    --jwt-secret "$JWT_SECRET" --database-url "$SQLITE_URL" --users "$USERS" --prefix cmp \
    --shape uniform --concurrency "$CONCURRENCY" --duration "${DURATION}s" \
    --output "$OUTPUT/tally-sqlite-uniform" --quiet --idle-timeout 120s
read -r SQLITE_TPS SQLITE_P99 _ < <(tally_figures "$OUTPUT/tally-sqlite-uniform")
stop_tally
rm -f "$SQLITE_FILE"*

log "plain PostgreSQL: fresh database $BASELINE_DB"
psql -q "$SERVER_URL" -c "CREATE DATABASE $BASELINE_DB"
psql -q "$(database_url "$BASELINE_DB")" -v accounts="$USERS" -v initial_balance="$INITIAL_BALANCE_MINOR" \
    -f loadtests/baseline/setup.sql
declare -A BASELINE_BY_CLIENTS BASELINE_BEST BASELINE_BEST_CLIENTS
for shape in "${SHAPES[@]}"; do
    range=$USERS
    [ "$shape" = hot ] && range=$HOT
    log "plain PostgreSQL, $shape: pgbench, $CONCURRENCY clients for ${DURATION}s"
    rm -f "$OUTPUT"/pgbench-"$shape".*
    checkpoint
    pgbench -n -M prepared -c "$CONCURRENCY" -j 2 -T "$DURATION" -D range="$range" \
        -f loadtests/baseline/transfer.sql -l --log-prefix "$OUTPUT/pgbench-$shape" \
        "$(database_url "$BASELINE_DB")" | tee "$OUTPUT/pgbench-$shape.txt"
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$OUTPUT/pgbench-$shape.txt" | tail -1)
    # The third column of pgbench's per-transaction log is the latency in microseconds.
    p99=$(cat "$OUTPUT"/pgbench-"$shape".[0-9]* | awk '{print $3}' | sort -n |
        awk '{v[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.1f", v[i]/1000}')
    THROUGHPUT["postgres-$shape"]=$(printf '%.0f' "$tps")
    P99["postgres-$shape"]=$p99
    BASELINE_BY_CLIENTS["$shape-$CONCURRENCY"]=${THROUGHPUT[postgres-$shape]}
    BASELINE_BEST[$shape]=${THROUGHPUT[postgres-$shape]}
    BASELINE_BEST_CLIENTS[$shape]=$CONCURRENCY
    # The same load from fewer clients: the most the baseline does on this machine.
    for clients in $BASELINE_CLIENTS; do
        log "plain PostgreSQL, $shape: pgbench, $clients clients for ${DURATION}s"
        checkpoint
        pgbench -n -M prepared -c "$clients" -j 2 -T "$DURATION" -D range="$range" \
            -f loadtests/baseline/transfer.sql "$(database_url "$BASELINE_DB")" |
            tee "$OUTPUT/pgbench-$shape-$clients-clients.txt"
        tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$OUTPUT/pgbench-$shape-$clients-clients.txt" | tail -1)
        BASELINE_BY_CLIENTS["$shape-$clients"]=$(printf '%.0f' "$tps")
        if [ "${BASELINE_BY_CLIENTS[$shape-$clients]}" -gt "${BASELINE_BEST[$shape]}" ]; then
            BASELINE_BEST[$shape]=${BASELINE_BY_CLIENTS[$shape-$clients]}
            BASELINE_BEST_CLIENTS[$shape]=$clients
        fi
    done
done
balance_check=$(psql -tA "$(database_url "$BASELINE_DB")" -c \
    "SELECT sum(balance) = $USERS::bigint * $INITIAL_BALANCE_MINOR AND min(balance) >= 0 FROM baseline_accounts")
[ "$balance_check" = t ] || { echo "the baseline broke conservation" >&2; exit 1; }

log "writing BENCHMARKS.md"
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
memory=$(free -g | awk '/^Mem:/ {print $2 " GiB"}')
postgres=$(psql -tA "$SERVER_URL" -c "SHOW server_version" | cut -d' ' -f1)
sync_commit=$(psql -tA "$SERVER_URL" -c "SHOW synchronous_commit")
row() { # label key
    printf '| %s | %s | %s | %s | %s |\n' "$1" "${THROUGHPUT[$2-uniform]}" "${P99[$2-uniform]}" \
        "${THROUGHPUT[$2-hot]}" "${P99[$2-hot]}"
}
{
    echo "# Benchmarks"
    echo
    echo "Tally against the same transfer in plain PostgreSQL (\`loadtests/baseline/\`), measured"
    echo "side by side on one machine by \`loadtests/compare.sh\`. Transfers only, amounts 0.01–10.00,"
    echo "every account starting at 1000.00; $CONCURRENCY concurrent clients, closed loop, ${DURATION} s per cell."
    echo
    echo "| system | uniform, $USERS accounts: transfers/s | uniform: p99 ms | hot set of $HOT: transfers/s | hot set: p99 ms |"
    echo "|---|---|---|---|---|"
    row "Tally, strict durability (HTTP, JSON, JWT; acknowledged once committed)" strict
    row "Tally, relaxed durability (acknowledged once applied in memory)" relaxed
    row "plain PostgreSQL (pgbench -M prepared, one SQL transaction per transfer)" postgres
    echo
    # Ratios and percentages are cut, not rounded: a figure never reads above what was measured.
    ratio() { python3 -c "import math; print(f'{math.floor(100 * $1 / max($2, 1)) / 100:.2f}')"; }
    echo "Against the targets (strict durability, PostgreSQL store, from the rows above):"
    echo
    echo "| target | measured |"
    echo "|---|---|"
    echo "| uniform: Tally ≥ 5× plain PostgreSQL | $(ratio "${THROUGHPUT[strict-uniform]}" "${THROUGHPUT[postgres-uniform]}")× |"
    echo "| hot set: Tally ≥ 10× plain PostgreSQL | $(ratio "${THROUGHPUT[strict-hot]}" "${THROUGHPUT[postgres-hot]}")× |"
    echo "| hot set ≥ 0.9 × uniform | $(ratio "${THROUGHPUT[strict-hot]}" "${THROUGHPUT[strict-uniform]}")× |"
    echo "| open loop at half the uniform peak ($OPEN_RATE requests/s): p99 ≤ 20 ms, corrected for coordinated omission | p99 $OPEN_P99 ms ($OPEN_TPS answered/s) |"
    echo "| embedded SQLite store ≥ 50 % of the PostgreSQL figure (uniform, strict) | $SQLITE_TPS transfers/s, p99 $SQLITE_P99 ms: $(python3 -c "import math; print(f'{math.floor(1000 * $SQLITE_TPS / max(${THROUGHPUT[strict-uniform]}, 1)) / 10:.1f}')") % |"
    echo
    clients_sorted=$(printf '%s\n' $BASELINE_CLIENTS "$CONCURRENCY" | sort -n | uniq | tr '\n' ' ')
    echo "The targets take the baseline at $CONCURRENCY clients, as Tally. The same baseline, same run, by"
    echo "client count (fewer clients wait less on one another's row locks and commits):"
    echo
    echo "| plain PostgreSQL, clients |$(for c in $clients_sorted; do printf ' %s |' "$c"; done)"
    echo "|---|$(for _ in $clients_sorted; do printf -- '---|'; done)"
    for shape in "${SHAPES[@]}"; do
        label="uniform: transfers/s"
        [ "$shape" = hot ] && label="hot set: transfers/s"
        echo "| $label |$(for c in $clients_sorted; do printf ' %s |' "${BASELINE_BY_CLIENTS[$shape-$c]}"; done)"
    done
    echo
    echo "Against the baseline at its best client count, Tally strict at $CONCURRENCY clients is"
    echo "$(ratio "${THROUGHPUT[strict-uniform]}" "${BASELINE_BEST[uniform]}")× on uniform traffic (best: ${BASELINE_BEST[uniform]} transfers/s at ${BASELINE_BEST_CLIENTS[uniform]} clients) and"
    echo "$(ratio "${THROUGHPUT[strict-hot]}" "${BASELINE_BEST[hot]}")× on the hot set (best: ${BASELINE_BEST[hot]} at ${BASELINE_BEST_CLIENTS[hot]} clients)."
    echo
    echo "* Tally's figures are whole HTTP requests from \`tally-loadtest run\` (release build) over"
    echo "  the loopback, JSON in and out, idempotency keys off. Each transfer is sent by the owner"
    echo "  of the account it debits, with that user's own JWT (signed by the tester with Tally's"
    echo "  secret as Tally signs at login, so no user pays an argon2 login), checked by Tally like"
    echo "  any other; set-up had each user read their balance once, so Tally had met them all."
    echo "  Every run was followed by its verification (all checks passed). Its throughput counts"
    echo "  every answered transfer; refused ones (insufficient funds) were at most $REFUSED_MAX % of a run."
    echo "* Relaxed durability acknowledges before the write is durable, so its throughput is what"
    echo "  Tally accepted, not what PostgreSQL committed: when the load stopped, ${QUEUED[relaxed-uniform]} of the"
    echo "  ${ACCEPTED[relaxed-uniform]} writes accepted in the uniform run and ${QUEUED[relaxed-hot]} of the ${ACCEPTED[relaxed-hot]} in the hot run were"
    echo "  still queued for the persister (\`tally_persister_queue_depth\`; all were durable before verification)."
    echo "* pgbench talks to PostgreSQL directly: no HTTP, no authentication, no JSON. Its p99 comes"
    echo "  from its per-transaction log (\`-l\`)."
    echo "* Every PostgreSQL cell (Tally's and pgbench's) starts right after a \`CHECKPOINT\`, so no"
    echo "  cell meets a checkpoint brought on by the WAL of the cells before it."
    echo "* Everything shares the same 2 cores: Tally, the load generator (\`tally-loadtest\` or"
    echo "  pgbench) and PostgreSQL. Figures move by up to a third between runs of this script on"
    echo "  this shared machine: compare the rows of one run, not figures across runs."
    echo
    echo "Machine: $(nproc) cores ($cpu), $memory memory, Linux $(uname -r);"
    echo "PostgreSQL $postgres on the same host (synchronous_commit=$sync_commit). Measured $(date -u +%Y-%m-%d)"
    echo "at commit $(git rev-parse --short HEAD)."
    echo
    echo "Reproduce (about 10 minutes after the release build; durations and sizes are flags):"
    echo
    echo '```sh'
    echo "$COMMAND"
    echo '```'
    echo
    echo "Each run's report, result.json, timeline.svg and pgbench output are left in \`$OUTPUT/\`."
    # The sections other scripts measured (from the first "## " heading on) stay as they are.
    if [ -f BENCHMARKS.md ] && grep -q '^## ' BENCHMARKS.md; then
        echo
        sed -n '/^## /,$p' BENCHMARKS.md
    fi
} > BENCHMARKS.md.new
mv BENCHMARKS.md.new BENCHMARKS.md
cat BENCHMARKS.md
