#!/usr/bin/env bash
# Observability checks against real consumers: promtool lints a scrape of the running
# server and the compose/ Prometheus files, a real Prometheus scrapes the server and
# answers a PromQL query over an actor metric, every metric the dashboards and alert
# rules use exists in the scrape, and the compose file is valid.
# Usage: .ci/observability.sh <path to the tally binary>
set -euo pipefail
cd "$(dirname "$0")/.."
binary="$(realpath "${1:?usage: .ci/observability.sh <tally binary>}")"
work="$(mktemp -d)"
tally_port=18231
prometheus_port=19231
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "-- promtool on compose/ files"
promtool check config compose/prometheus/prometheus.yml
promtool check rules compose/prometheus/alerts.yml
promtool test rules compose/prometheus/alerts.test.yml

echo "-- docker-compose config"
JWT_SECRET=ci-check-ci-check-ci-check-ci-check-0 TALLY_ADMIN_PASSWORD=ci-check-password \
    docker-compose -f compose/docker-compose.yml config -q
echo "compose file valid"

echo "-- compose/Dockerfile's dependency layer names every member and target of the workspace"
# The layer builds the manifests with stub sources: cargo refuses to load a workspace
# whose member manifest or declared target path is missing, so each must be there.
python3 - <<'PY'
import sys, tomllib
docker = open("compose/Dockerfile").read()
members = tomllib.load(open("Cargo.toml", "rb"))["workspace"]["members"]
missing = []
for member in members:
    prefix = "" if member == "." else member + "/"
    manifest = tomllib.load(open(prefix + "Cargo.toml", "rb"))
    if prefix and f"COPY {prefix}Cargo.toml" not in docker:
        missing.append(f"COPY {prefix}Cargo.toml")
    for kind in ("bin", "test", "bench"):
        for target in manifest.get(kind, []):
            if "path" in target and prefix + target["path"] not in docker:
                missing.append(prefix + target["path"])
if missing:
    sys.exit("compose/Dockerfile lacks: " + ", ".join(missing))
print("Dockerfile stubs cover the workspace")
PY

echo "-- a running Tally"
(cd "$work" && exec env HOST=127.0.0.1 PORT=$tally_port DATABASE_URL="sqlite://$work/tally.db" \
    REDIS_URL=redis://127.0.0.1:6379 TALLY_REDIS_PREFIX="tally-ci-$$" \
    JWT_SECRET=ci-observability-secret-ci-observability \
    TALLY_ADMIN_USERNAME=root TALLY_ADMIN_PASSWORD=admin-password-1 LOG_FORMAT=json RUST_LOG=warn \
    "$binary" > "$work/tally.log" 2>&1) &
pids+=($!)
if curl -fsS "http://127.0.0.1:$tally_port/healthz" >/dev/null 2>&1; then
    echo "port $tally_port is already taken by another server"; exit 1
fi
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$tally_port/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
api="http://127.0.0.1:$tally_port/api/v1"
token() { sed -E 's/.*"access_token":"([^"]+)".*/\1/'; }
admin=$(curl -fsS -X POST "$api/auth/login" -H 'content-type: application/json' \
    -d '{"username":"root","password":"admin-password-1"}' | token)
for name in alice bob; do
    curl -fsS -X POST "$api/auth/register" -H 'content-type: application/json' \
        -d "{\"username\":\"$name\",\"email\":\"$name@example.com\",\"password\":\"long enough pw\"}" >/dev/null
done
alice=$(curl -fsS -X POST "$api/auth/login" -H 'content-type: application/json' \
    -d '{"username":"alice","password":"long enough pw"}' | token)
curl -fsS -X POST "$api/transactions/credit" -H "authorization: Bearer $admin" -H 'content-type: application/json' \
    -d '{"user_id":2,"amount":"10.00"}' >/dev/null
curl -fsS -X POST "$api/transactions/transfer" -H "authorization: Bearer $alice" -H 'content-type: application/json' \
    -d '{"from_user_id":2,"to_user_id":3,"amount":"1.00"}' >/dev/null
curl -fsS "$api/transactions/history" -H "authorization: Bearer $alice" >/dev/null

echo "-- promtool check metrics on a scrape"
curl -fsS "http://127.0.0.1:$tally_port/metrics" > "$work/scrape.txt"
promtool check metrics < "$work/scrape.txt"
echo "scrape lint clean ($(grep -c '^# TYPE' "$work/scrape.txt") families)"

echo "-- every metric used by the dashboards and alert rules exists"
python3 - "$work/scrape.txt" compose/prometheus/alerts.yml compose/grafana/dashboards/*.json <<'PY'
import re, sys
scrape = open(sys.argv[1]).read()
families = set(re.findall(r"^# TYPE (\S+)", scrape, re.M))
samples = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", scrape, re.M))
missing = []
for path in sys.argv[2:]:
    for name in sorted(set(re.findall(r"\btally_[a-z0-9_]+", open(path).read()))):
        if name in samples or name in families:
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base in families:
            continue
        missing.append(f"{path}: {name}")
if missing:
    print("metrics used but not exported:\n  " + "\n  ".join(missing))
    sys.exit(1)
print("all referenced metrics are exported")
PY

echo "-- a real Prometheus scrapes Tally"
cat > "$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: tally
    metrics_path: /metrics
    static_configs:
      - targets: ["127.0.0.1:$tally_port"]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prometheus_port" > "$work/prometheus.log" 2>&1 &
pids+=($!)
answer=""
for _ in $(seq 1 60); do
    answer=$(curl -fsS "http://127.0.0.1:$prometheus_port/api/v1/query" \
        --data-urlencode 'query=sum(tally_actor_activations_total{job="tally"})' 2>/dev/null || true)
    if echo "$answer" | grep -q '"result":\[{'; then break; fi
    sleep 1
done
echo "$answer"
echo "$answer" | grep -q '"result":\[{' || { echo "Prometheus did not return actor data"; tail -20 "$work/prometheus.log"; exit 1; }
echo "observability checks passed"
