#!/usr/bin/env bash
# Start a real multi-node Ray cluster on this machine (a head node and a worker node, each
# with its own CPUs and a resource naming it) plus an MLflow tracking server, all bound to
# 127.0.0.1 and protected by a Ray auth token. Used by the tests and for trying a cluster
# search on a laptop. Usage: cluster/local/start.sh [STATE_DIR]; then `source STATE_DIR/env.sh`.
#
# Settings (environment): HEAD_CPUS=1 WORKER_CPUS=1 RAY_PORT=6390 DASHBOARD_PORT=8290
# MLFLOW_PORT=5055 AGENT_PORT=52465 (head; the worker uses +1) CLIENT_PORT=20101. Stop everything with cluster/local/stop.sh STATE_DIR.
set -euo pipefail

STATE=$(mkdir -p "${1:-${UNET_SEARCH_HOME:-unet-search-runs}/cluster}" && cd "${1:-${UNET_SEARCH_HOME:-unet-search-runs}/cluster}" && pwd)
HEAD_CPUS=${HEAD_CPUS:-1}
WORKER_CPUS=${WORKER_CPUS:-1}
RAY_PORT=${RAY_PORT:-6390}
DASHBOARD_PORT=${DASHBOARD_PORT:-8290}
MLFLOW_PORT=${MLFLOW_PORT:-5055}
# Several Ray instances may share this machine (a test session's own Ray, two nodes here):
# every fixed port is set apart from Ray's defaults and between the two nodes.
AGENT_PORT=${AGENT_PORT:-52465}
CLIENT_PORT=${CLIENT_PORT:-20101}  # outside the worker port range 10002-19999
# The project's virtualenv if there is one, else whatever `ray` is on PATH.
REPO=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${BIN:-}" ]; then
  if [ -x "$REPO/.venv/bin/ray" ]; then BIN="$REPO/.venv/bin"; else BIN=$(dirname "$(command -v ray)"); fi
fi
# Ray's unix sockets live under --temp-dir and must stay short: one per state dir.
TEMP_DIR=/tmp/ray_us_$(printf '%s' "$STATE" | cksum | cut -d' ' -f1)

if [ -f "$STATE/head.sid" ] && kill -0 "$(cat "$STATE/head.sid")" 2>/dev/null; then
  echo "a local cluster is already running for $STATE (stop it with cluster/local/stop.sh)" >&2
  exit 1
fi
mkdir -p "$STATE/logs" "$STATE/mlartifacts" "$STATE/storage"
if [ ! -s "$STATE/auth_token" ]; then
  (umask 077 && "$BIN/python3" -c "import secrets; print(secrets.token_hex(32))" > "$STATE/auth_token")
fi

cat > "$STATE/env.sh" <<ENV
# source this file to talk to the local cluster
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$STATE/auth_token"
export RAY_ADDRESS=127.0.0.1:$RAY_PORT
export UNET_SEARCH_DASHBOARD=http://127.0.0.1:$DASHBOARD_PORT
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export UNET_SEARCH_STORAGE="$STATE/storage"
export RAY_USAGE_STATS_ENABLED=0
# Prometheus service discovery: every node's metrics endpoint (see dashboards/prometheus.yml)
export UNET_SEARCH_PROMETHEUS_SD="$TEMP_DIR/prom_metrics_service_discovery.json"
ENV
# shellcheck disable=SC1091
source "$STATE/env.sh"
export PATH="$BIN:$PATH"  # job entrypoints (`python -m unet_search.cli`) use this Python

# Each node (and the MLflow server) runs in a session of its own: stop.sh ends exactly those
# processes, never another Ray on the machine (`ray stop` would end them all).
session() {  # session NAME COMMAND...
  local name=$1; shift
  setsid bash -c 'echo $$ > "$0"; log=$1; shift; exec "$@" >> "$log" 2>&1' \
    "$STATE/$name.sid" "$STATE/logs/$name.log" "$@" < /dev/null &
  for _ in $(seq 50); do [ -s "$STATE/$name.sid" ] && break; sleep 0.1; done
}

session head "$BIN/ray" start --head --block --node-ip-address 127.0.0.1 --port "$RAY_PORT" \
  --num-cpus "$HEAD_CPUS" --resources '{"head_node": 1, "trial_slot": 100}' \
  --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" --temp-dir "$TEMP_DIR" \
  --dashboard-agent-listen-port "$AGENT_PORT" --ray-client-server-port "$CLIENT_PORT" \
  --disable-usage-stats
alive() { pgrep -s "$(cat "$STATE/$1.sid")" > /dev/null; }
for _ in $(seq 60); do
  alive head || { echo "the Ray head failed to start; see $STATE/logs/head.log" >&2; exit 1; }
  "$BIN/ray" status --address "127.0.0.1:$RAY_PORT" > /dev/null 2>&1 && break; sleep 1
done
session worker "$BIN/ray" start --block --address "127.0.0.1:$RAY_PORT" --node-ip-address 127.0.0.1 \
  --num-cpus "$WORKER_CPUS" --resources '{"worker_node": 1, "trial_slot": 100}' \
  --dashboard-agent-listen-port "$((AGENT_PORT + 1))" --disable-usage-stats

# MLflow 3's server also starts three job-runner processes (GenAI scorers); nothing here uses
# them, and on a 2-core machine they cost ~0.5 GB and seconds of start-up.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
  session mlflow "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" \
  --backend-store-uri "sqlite:///$STATE/mlflow.db" --artifacts-destination "$STATE/mlartifacts" \
  --workers 1

for _ in $(seq 60); do
  for name in head worker mlflow; do
    alive $name || { echo "$name failed to start; see $STATE/logs/$name.log" >&2; exit 1; }
  done
  nodes=$("$BIN/python3" - <<'PY' 2>/dev/null || true
import ray
ray.init(logging_level="ERROR")
print(sum(1 for n in ray.nodes() if n["Alive"]))
PY
)
  up=$(curl -fsS "http://127.0.0.1:$MLFLOW_PORT/health" 2>/dev/null || true)
  [ "${nodes:-0}" = "2" ] && [ "$up" = "OK" ] && break
  sleep 1
done
if [ "${nodes:-0}" != "2" ] || [ "$up" != "OK" ]; then
  echo "local cluster did not come up (nodes=${nodes:-0}, mlflow=$up); see $STATE/logs" >&2
  exit 1
fi
echo "local cluster up: 2 Ray nodes at 127.0.0.1:$RAY_PORT, dashboard/Jobs API" \
  "http://127.0.0.1:$DASHBOARD_PORT, MLflow http://127.0.0.1:$MLFLOW_PORT"
echo "source $STATE/env.sh"
