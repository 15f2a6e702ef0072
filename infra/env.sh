# Shared settings for infra/*.sh (sourced, not executed). Override any of them from
# the environment.
INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
INFRA_CACHE="${INFRA_CACHE:-$INFRA_DIR/.cache}"
# A second, throw-away instance of a service (a test's own broker, say) sets these and
# its own ports; the installed binaries stay shared.
RUN_DIR="${INFRA_RUN_DIR:-$INFRA_CACHE/run}"      # pid files
LOG_DIR="${INFRA_LOG_DIR:-$INFRA_CACHE/logs}"
DATA_DIR="${INFRA_DATA_DIR:-$INFRA_CACHE/data}"   # kafka log dirs, flink checkpoints
CONF_DIR="${INFRA_CONF_DIR:-$INFRA_CACHE/conf}"   # generated service configs
# Every process the scripts start inherits this marker, so down.sh can tell this
# instance's processes from another instance's (lib.sh: instance_pids).
export INFRA_INSTANCE="$RUN_DIR"

# Flink: the distribution shipped inside the apache-flink(-libraries) PyPI wheels.
FLINK_VERSION="${FLINK_VERSION:-2.2.1}"
FLINK_MAJOR_MINOR="${FLINK_VERSION%.*}"
FLINK_HOME="${FLINK_HOME_OVERRIDE:-$INFRA_CACHE/flink-$FLINK_VERSION/pyflink}"
FLINK_REST_PORT="${FLINK_REST_PORT:-8081}"
FLINK_RPC_PORT="${FLINK_RPC_PORT:-6123}"
# flink.sh writes config.yaml here; `flink run` needs it as FLINK_CONF_DIR (submit.sh).
INFRA_FLINK_CONF_DIR="$CONF_DIR/flink"

# The PyFlink venv (infra/pyflink-requirements.txt): the Python of the native Flink
# job's client (-pyclientexec) and of its Python workers (-pyexec, python.executable).
PYFLINK_BASE_PYTHON="${PYFLINK_BASE_PYTHON:-python3.11}"
export PYFLINK_VENV="${PYFLINK_VENV:-$INFRA_CACHE/pyflink-venv}"
export PYFLINK_PYTHON="$PYFLINK_VENV/bin/python"
# Connector jars for PyFlink jobs (Kafka, Parquet + Hadoop), resolved by install.sh
# from maven/flink-job-jars-pom.xml. FLINK_JOB_JARS: colon-separated absolute paths.
FLINK_KAFKA_CONNECTOR_VERSION="${FLINK_KAFKA_CONNECTOR_VERSION:-5.0.0-2.2}"
FLINK_JOB_JARS_DIR="$INFRA_CACHE/flink-job-jars"
FLINK_JOB_JARS="$(shopt -s nullglob; j=("$FLINK_JOB_JARS_DIR"/*.jar); IFS=:; echo "${j[*]}")"
export FLINK_JOB_JARS

# Kafka broker (KRaft, single node) from Maven Central jars.
KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_LIB="$INFRA_CACHE/kafka-$KAFKA_VERSION/libs"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
KAFKA_TOPICS="${KAFKA_TOPICS:-taps tweets pings users alerts follows}"

# Beam. Python SDK version is the project's (2.77.0); Java artifacts come from the
# newest release whose modules Maven Central serves here together (2.73.0).
BEAM_VERSION="${BEAM_VERSION:-2.77.0}"
BEAM_JAVA_VERSION="${BEAM_JAVA_VERSION:-2.73.0}"
BEAM_XLANG_LIB="$INFRA_CACHE/beam-xlang-$BEAM_JAVA_VERSION/libs"
EXPANSION_SERVICE_JAR="$INFRA_CACHE/beam-xlang-$BEAM_JAVA_VERSION/beam-kafka-expansion-service.jar"
EXPANSION_PORT="${EXPANSION_PORT:-8097}"      # KafkaIO expansion service (gRPC)
# pipelines.kafka_io never looks into infra/: it takes these from the environment.
export BEAM_KAFKA_EXPANSION_JAR="$EXPANSION_SERVICE_JAR"
export BEAM_KAFKA_EXPANSION_SERVICE="${BEAM_KAFKA_EXPANSION_SERVICE:-127.0.0.1:$EXPANSION_PORT}"
JAVA_WORKER_PORT="${JAVA_WORKER_PORT:-8099}"  # Java SDK harness worker pool (EXTERNAL env)
PRISM_BIN="$INFRA_CACHE/bin/prism"   # Beam Prism runner built from the Go module proxy
PRISM_JOB_PORT="${PRISM_JOB_PORT:-8073}"
PRISM_WEB_PORT="${PRISM_WEB_PORT:-8074}"
FLINK_JOB_SERVER_JAR="$INFRA_CACHE/jars/beam-runners-flink-$FLINK_MAJOR_MINOR-job-server-$BEAM_VERSION.jar"

JAVA="${JAVA:-java}"

# Prometheus (Debian's package; infra/prometheus.sh): its port, and the targets it scrapes.
# Flink's Prometheus reporter listens on FLINK_PROM_JM_PORT (JobManager) and the first free
# port of FLINK_PROM_TM_PORTS (TaskManagers); both follow FLINK_REST_PORT, so a second
# instance with its own REST port gets its own metric ports (8081 -> 9249, 9250-9253).
PROMETHEUS_PORT="${PROMETHEUS_PORT:-9090}"
FLINK_PROM_JM_PORT="${FLINK_PROM_JM_PORT:-$(( FLINK_REST_PORT + 1168 ))}"
FLINK_PROM_TM_PORTS="${FLINK_PROM_TM_PORTS:-$(( FLINK_PROM_JM_PORT + 1 ))-$(( FLINK_PROM_JM_PORT + 4 ))}"
GATEWAY_PORT="${GATEWAY_PORT:-8080}"                  # nfc_gateway serve --port
FIREHOSE_METRICS_PORT="${FIREHOSE_METRICS_PORT:-9464}" # the firehose client's /metrics (its --metrics-port default)
PORTAL_PORT="${PORTAL_PORT:-8088}"                    # python -m portal serve --port (its default; /metrics there)
# Rule evaluation: how often, and how long a condition must hold before its alert fires
# (tests shorten both).
PROMETHEUS_EVAL_INTERVAL="${PROMETHEUS_EVAL_INTERVAL:-15s}"
PROMETHEUS_ALERT_FOR="${PROMETHEUS_ALERT_FOR:-2m}"
