#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft: broker+controller in one JVM) on 127.0.0.1.
#
#   infra/kafka.sh start    # format storage on first start, start broker, wait until ready
#   infra/kafka.sh stop     # SIGTERM, wait, SIGKILL after 30 s
#   infra/kafka.sh status   # exit 0 when running and answering
#   infra/kafka.sh topics   # create $KAFKA_TOPICS (idempotent)
#   infra/kafka.sh reset    # stop and delete all data (fresh cluster id next start)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
source "$HERE/lib.sh"

KDATA="$DATA_DIR/kafka"
KCONF="$DATA_DIR/kafka-conf"     # written anew on every start
PIDF="$RUN_DIR/kafka.pid"
LOGF="$LOG_DIR/kafka.log"
CP="$KAFKA_LIB/*"

write_conf() {
  mkdir -p "$KCONF" "$KDATA" "$RUN_DIR" "$LOG_DIR"
  cat >"$KCONF/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KDATA/log
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
# transactions (Flink's exactly-once KafkaSink) on one node: the transaction log must not
# ask for more replicas than there are brokers; a producer's transaction.timeout.ms
# (flink_job: 600000) must be <= transaction.max.timeout.ms (900000 is Kafka's default,
# written out because the Flink sink depends on it).
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
transaction.max.timeout.ms=900000
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
# Keep everything: records carry their event time as CreateTime (kafka_client load-world),
# and a world's events are days or years old, so time-based retention (168 h by default)
# would delete a replay at the next retention check (every 5 min), even the active segment.
log.retention.ms=-1
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
EOF
  cat >"$KCONF/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $LOGF
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
}

jvm() {
  "$JAVA" -Xms64m -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
    -Dlog4j2.configurationFile="$KCONF/log4j2.properties" \
    -cp "$CP" "$@"
}

ready() { port_open 127.0.0.1 "$KAFKA_PORT"; }

start() {
  [[ -f "$KAFKA_LIB/kafka_2.13-$KAFKA_VERSION.jar" ]] || die "Kafka not installed; run infra/install.sh"
  if pid_alive "$PIDF"; then echo "kafka: already running (pid $(cat "$PIDF")) on $KAFKA_BOOTSTRAP"; return 0; fi
  port_open 127.0.0.1 "$KAFKA_PORT" && die "port $KAFKA_PORT busy but no kafka pid file; refusing to start"
  write_conf
  if [[ ! -f "$KDATA/log/meta.properties" ]]; then
    local cid
    cid="$(jvm kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
    jvm kafka.tools.StorageTool format -t "$cid" -c "$KCONF/server.properties" --ignore-formatted >"$LOG_DIR/kafka-format.log" 2>&1 \
      || { cat "$LOG_DIR/kafka-format.log" >&2; die "kafka storage format failed"; }
    echo "kafka: formatted storage (cluster id $cid)"
  fi
  local t0; t0=$(date +%s)
  nohup "$JAVA" -Xms256m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 ${KAFKA_JVM_OPTS:--XX:TieredStopAtLevel=1} \
    -Dlog4j2.configurationFile="$KCONF/log4j2.properties" -Dkafka.logs.dir="$LOG_DIR" \
    -cp "$CP" kafka.Kafka "$KCONF/server.properties" >"$LOG_DIR/kafka.out" 2>&1 </dev/null &
  echo $! >"$PIDF"
  wait_for 60 ready || { tail -20 "$LOG_DIR/kafka.out" "$LOGF" >&2 || true; die "kafka did not open $KAFKA_PORT within 60 s"; }
  echo "kafka: running (pid $(cat "$PIDF")) bootstrap=$KAFKA_BOOTSTRAP in $(( $(date +%s) - t0 ))s"
}

topics() {
  ready || die "kafka is not running"
  # fast path: one Python process (confluent-kafka) instead of one JVM per topic
  local py="${PYTHON:-$INFRA_DIR/../.venv/bin/python}"
  if [[ -x "$py" ]] && (cd "$INFRA_DIR/.." && "$py" -m kafka_client --bootstrap "$KAFKA_BOOTSTRAP" \
        create-topics --partitions "${KAFKA_PARTITIONS:-1}" $KAFKA_TOPICS 2>/dev/null | sed 's/^/kafka: /'); then
    return 0
  fi
  local existing
  existing="$(jvm org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" --list 2>/dev/null || true)"
  for t in $KAFKA_TOPICS; do
    if grep -qx "$t" <<<"$existing"; then echo "kafka: topic $t exists"; continue; fi
    jvm org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" --create --if-not-exists \
      --topic "$t" --partitions "${KAFKA_PARTITIONS:-1}" --replication-factor 1 >/dev/null
    echo "kafka: created topic $t"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop_pid kafka "$PIDF" 30 ;;
  status)
    if pid_alive "$PIDF" && ready; then echo "kafka: running (pid $(cat "$PIDF")) bootstrap=$KAFKA_BOOTSTRAP"; else echo "kafka: stopped"; exit 1; fi ;;
  topics) topics ;;
  reset) stop_pid kafka "$PIDF" 30; rm -rf "$KDATA"; echo "kafka: data removed" ;;
  *) echo "usage: $0 start|stop|status|topics|reset" >&2; exit 2 ;;
esac
