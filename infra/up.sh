#!/usr/bin/env bash
# Start everything: Kafka (+ topics), Beam KafkaIO expansion service + Java worker pool,
# Flink session cluster. Idempotent; prints the endpoints. Stop with infra/down.sh.
#   INFRA_SKIP_FLINK=1 infra/up.sh   # Kafka + xlang only
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
t0=$(date +%s)
# Services are independent: start them concurrently, each logging to its own file,
# then report in a fixed order.
mkdir -p "$LOG_DIR"
declare -A pids=()
launch() { local name="$1"; shift; "$@" >"$LOG_DIR/up-$name.txt" 2>&1 & pids[$name]=$!; }
launch kafka bash -c "bash '$HERE/kafka.sh' start && bash '$HERE/kafka.sh' topics"
launch xlang bash "$HERE/xlang.sh" start
[[ -x "$PRISM_BIN" ]] && launch prism bash "$HERE/prism.sh" start
[[ "${INFRA_SKIP_FLINK:-0}" == 1 ]] || launch flink bash "$HERE/flink.sh" start
command -v prometheus >/dev/null && launch prometheus bash "$HERE/prometheus.sh" start
failed=()
for name in kafka xlang prism flink prometheus; do
  [[ -n "${pids[$name]:-}" ]] || continue
  wait "${pids[$name]}" || failed+=("$name")
  cat "$LOG_DIR/up-$name.txt"
done
if (( ${#failed[@]} )); then
  echo "up: failed to start: ${failed[*]} (see infra/.cache/logs/); stopping the rest" >&2
  bash "$HERE/down.sh" >&2 || true
  exit 1
fi
cat <<EOT
up in $(( $(date +%s) - t0 ))s
  kafka bootstrap     $KAFKA_BOOTSTRAP   topics: $KAFKA_TOPICS
  expansion service   127.0.0.1:$EXPANSION_PORT   (Java worker pool 127.0.0.1:$JAVA_WORKER_PORT)
  prism job endpoint  $( [[ -x "$PRISM_BIN" ]] && echo "127.0.0.1:$PRISM_JOB_PORT (web UI http://127.0.0.1:$PRISM_WEB_PORT)" || echo "not installed")
  flink web UI / REST http://127.0.0.1:$FLINK_REST_PORT   flink_master=127.0.0.1:$FLINK_REST_PORT
  prometheus          $( command -v prometheus >/dev/null && echo "http://127.0.0.1:$PROMETHEUS_PORT (alerts: /alerts; rules infra/prometheus/tapfollow-rules.yml)" || echo "not installed (infra/install.sh)")
  job server jar      $( [[ -f "$FLINK_JOB_SERVER_JAR" ]] && echo "$FLINK_JOB_SERVER_JAR" || echo "not installed (not on Maven Central here)")
EOT
