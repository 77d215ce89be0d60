#!/usr/bin/env bash
# Stop what cluster/local/start.sh started for STATE_DIR: the Ray nodes and the MLflow server
# (their whole process sessions), leaving any other Ray on the machine alone.
set -uo pipefail
STATE=${1:-${UNET_SEARCH_HOME:-unet-search-runs}/cluster}
stopped=0
for name in worker head mlflow; do
  file="$STATE/$name.sid"
  [ -s "$file" ] || continue
  sid=$(cat "$file")
  pkill -TERM -s "$sid" 2>/dev/null && stopped=1
done
for _ in $(seq 10); do
  alive=0
  for name in worker head mlflow; do
    [ -s "$STATE/$name.sid" ] && pgrep -s "$(cat "$STATE/$name.sid")" > /dev/null && alive=1
  done
  [ $alive = 0 ] && break
  sleep 1
done
# Ray's agents ignore SIGTERM, and a process may fork while the others die: KILL until the
# sessions are empty.
for _ in $(seq 20); do
  alive=0
  for name in worker head mlflow; do
    [ -s "$STATE/$name.sid" ] || continue
    sid=$(cat "$STATE/$name.sid")
    if pgrep -s "$sid" > /dev/null; then alive=1; pkill -KILL -s "$sid" 2>/dev/null; fi
  done
  [ $alive = 0 ] && break
  sleep 0.5
done
for name in worker head mlflow; do rm -f "$STATE/$name.sid"; done
[ $stopped = 1 ] && echo "local cluster in $STATE stopped" || echo "no local cluster running in $STATE"
exit 0
