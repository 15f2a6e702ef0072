#!/usr/bin/env bash
# Stop everything infra/up.sh started (Flink, expansion service, Java worker pool,
# Kafka, Prometheus) and check that no process of ours is left. Data under infra/.cache/data is kept
# (infra/kafka.sh reset / rm -rf infra/.cache/data for a clean slate).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
source "$HERE/lib.sh"
bash "$HERE/flink.sh" stop
bash "$HERE/prism.sh" stop
bash "$HERE/xlang.sh" stop
bash "$HERE/kafka.sh" stop
bash "$HERE/prometheus.sh" stop
left=0
for f in "$RUN_DIR"/*.pid; do
  [[ -e "$f" ]] || continue
  if pid_alive "$f"; then echo "still running: $(basename "$f" .pid) pid $(cat "$f")"; left=1; else rm -f "$f"; fi
done
# processes of this instance started from this cache dir without a pid file (e.g. a crashed
# script) (only JVMs and prism: a `tail -f infra/.cache/logs/...` is not a stray)
strays="$(instance_pids "^[^ ]*java .*$INFRA_CACHE/|^$PRISM_BIN( |\$)|^prometheus --config.file=" | tr '\n' ' ')"
if [[ -n "$strays" ]]; then echo "stray processes using $INFRA_CACHE: $strays"; left=1; fi
# PyFlink Python workers outlive a TaskManager that died without stopping them
workers="$(pyflink_worker_pids | tr '\n' ' ')"
if [[ -n "$workers" ]]; then echo "PyFlink Python workers left ($PYFLINK_VENV): $workers"; left=1; fi
[[ $left == 0 ]] && echo "down: no infra process left" || { echo "down: processes left" >&2; exit 1; }
