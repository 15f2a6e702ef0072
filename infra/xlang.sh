#!/usr/bin/env bash
# Beam cross-language services for the Python SDK's KafkaIO (apache_beam.io.kafka):
#   * expansion service  (gRPC 127.0.0.1:$EXPANSION_PORT): expands ReadFromKafka /
#     WriteToKafka into Java transforms. Its default environment for those Java
#     transforms is EXTERNAL at the worker pool below (no Docker on this machine).
#   * Java SDK worker pool (gRPC 127.0.0.1:$JAVA_WORKER_PORT): starts a Java SDK
#     harness thread whenever a runner asks for a Java worker.
# Both run from the plain Maven classpath that infra/install.sh resolved. The worker pool
# already has every jar, so the expansion service stages only the tiny launcher jar as
# the Java environment's artifact (--filesToStage) instead of ~140 MB of classpath
# that every job submission would otherwise upload to the job service.
#
#   infra/xlang.sh start|stop|status
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
source "$HERE/lib.sh"

ES_PID="$RUN_DIR/expansion-service.pid"
JW_PID="$RUN_DIR/java-worker-pool.pid"
CP="$BEAM_XLANG_LIB/*"
JAVA_WORKER_ADDR="127.0.0.1:$JAVA_WORKER_PORT"
JVM_OPENS=(--add-opens=java.base/java.lang=ALL-UNNAMED --add-opens=java.base/java.nio=ALL-UNNAMED
  --add-opens=java.base/sun.nio.ch=ALL-UNNAMED --add-opens=java.base/java.util=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent=ALL-UNNAMED --add-opens=java.base/java.lang.invoke=ALL-UNNAMED
  --add-opens=java.base/java.io=ALL-UNNAMED --add-opens=java.base/java.net=ALL-UNNAMED)

start() {
  [[ -f "$BEAM_XLANG_LIB/beam-sdks-java-io-kafka-$BEAM_JAVA_VERSION.jar" ]] || die "Beam xlang classpath missing; run infra/install.sh"
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  local t0; t0=$(date +%s)
  if pid_alive "$JW_PID"; then echo "xlang: java worker pool already running (pid $(cat "$JW_PID"))"; else
    port_open 127.0.0.1 "$JAVA_WORKER_PORT" && die "port $JAVA_WORKER_PORT busy but no pid file"
    PIPELINE_OPTIONS="{\"options\":{\"defaultEnvironmentType\":\"EXTERNAL\",\"defaultEnvironmentConfig\":\"$JAVA_WORKER_ADDR\"}}" \
      nohup "$JAVA" -Xms128m -Xmx1g "${JVM_OPENS[@]}" -javaagent:"$(ls "$BEAM_XLANG_LIB"/jamm-*.jar | head -1)" \
      -cp "$CP" org.apache.beam.fn.harness.ExternalWorkerService >"$LOG_DIR/java-worker-pool.log" 2>&1 </dev/null &
    echo $! >"$JW_PID"
  fi
  if pid_alive "$ES_PID"; then echo "xlang: expansion service already running (pid $(cat "$ES_PID"))"; else
    port_open 127.0.0.1 "$EXPANSION_PORT" && die "port $EXPANSION_PORT busy but no pid file"
    nohup "$JAVA" -Xms128m -Xmx512m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC "${JVM_OPENS[@]}" -cp "$CP" \
      org.apache.beam.sdk.expansion.service.ExpansionService "$EXPANSION_PORT" \
      --defaultEnvironmentType=EXTERNAL --defaultEnvironmentConfig="$JAVA_WORKER_ADDR" \
      --filesToStage="$EXPANSION_SERVICE_JAR" \
      >"$LOG_DIR/expansion-service.log" 2>&1 </dev/null &
    echo $! >"$ES_PID"
  fi
  wait_for 60 port_open 127.0.0.1 "$JAVA_WORKER_PORT" || { tail -20 "$LOG_DIR/java-worker-pool.log" >&2; die "java worker pool did not start"; }
  wait_for 60 port_open 127.0.0.1 "$EXPANSION_PORT" || { tail -20 "$LOG_DIR/expansion-service.log" >&2; die "expansion service did not start"; }
  echo "xlang: expansion service 127.0.0.1:$EXPANSION_PORT (pid $(cat "$ES_PID")), java worker pool $JAVA_WORKER_ADDR (pid $(cat "$JW_PID")), up in $(( $(date +%s) - t0 ))s"
}

case "${1:-}" in
  start) start ;;
  stop) stop_pid expansion-service "$ES_PID" 15; stop_pid java-worker-pool "$JW_PID" 15 ;;
  status)
    rc=0
    if pid_alive "$ES_PID" && port_open 127.0.0.1 "$EXPANSION_PORT"; then echo "xlang: expansion service 127.0.0.1:$EXPANSION_PORT (pid $(cat "$ES_PID"))"; else echo "xlang: expansion service stopped"; rc=1; fi
    if pid_alive "$JW_PID" && port_open 127.0.0.1 "$JAVA_WORKER_PORT"; then echo "xlang: java worker pool $JAVA_WORKER_ADDR (pid $(cat "$JW_PID"))"; else echo "xlang: java worker pool stopped"; rc=1; fi
    exit $rc ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
