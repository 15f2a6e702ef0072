#!/usr/bin/env bash
# Submit the project, streaming from the Kafka topics, to the local cluster started by
# infra/up.sh. Loads a world into the input topics first when given one:
#   infra/submit.sh [WORLD_DIR] [extra pipelines.run options…]
#
# ENGINE=flink (default): the native PyFlink job (`pipelines.run --engine flink`, flink_job/)
#   on the Flink session cluster, exactly-once Kafka results, checkpoints every 10 s. The
#   launcher stays in the foreground while the job runs; Ctrl-C cancels it.
# ENGINE=beam: the Beam pipeline. On Flink (FlinkRunner via Beam's Flink job server) when the
#   job-server jar is installed; without it (Maven Central here does not serve it) on Beam's
#   Prism portable runner, the same pipeline and options otherwise. LOOPBACK workers run in
#   this process, so it stays in the foreground while the job runs.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
ROOT="$(cd "$HERE/.." && pwd)"
PY="$ROOT/.venv/bin/python"
ENGINE="${ENGINE:-flink}"
if [[ $# -gt 0 && -d "$1" ]]; then
  world="$1"; shift
  echo "loading $world into the input topics (event time = Kafka CreateTime)"
  "$PY" -m kafka_client load-world "$world"
fi
common=(--streaming --source kafka --results_sink kafka --kafka_bootstrap_servers "$KAFKA_BOOTSTRAP"
        --output "${OUTPUT:-$ROOT/out-stream}")
# The world's world.json gives the DP release schedule (events still come from Kafka); without
# a world, pass --dp_first_hour and --dp_last_hour.
if [[ -n "${world:-}" ]]; then common+=(--input "$world"); fi

case "$ENGINE" in
  flink)
    # what pipelines.flink_engine needs to run `flink run` (it reads infra/env.sh when absent)
    export FLINK_HOME FLINK_CONF_DIR="$INFRA_FLINK_CONF_DIR"
    echo "submitting the native PyFlink job to Flink: web UI http://127.0.0.1:$FLINK_REST_PORT"
    exec "$PY" -m pipelines.run --engine flink --flink_master "127.0.0.1:$FLINK_REST_PORT" \
      --checkpointing_interval 10000 "${common[@]}" "$@" ;;
  beam)
    common+=(--kafka_expansion_service "127.0.0.1:$EXPANSION_PORT" --environment_type=LOOPBACK)
    if [[ -f "$FLINK_JOB_SERVER_JAR" ]]; then
      echo "submitting the Beam pipeline to Flink: web UI http://127.0.0.1:$FLINK_REST_PORT"
      exec "$PY" -m pipelines.run --runner=FlinkRunner --flink_master="127.0.0.1:$FLINK_REST_PORT" \
        --flink_version="$FLINK_MAJOR_MINOR" --flink_job_server_jar="$FLINK_JOB_SERVER_JAR" \
        --parallelism=1 --checkpointing_interval=10000 "${common[@]}" "$@"
    fi
    echo "Beam's Flink job-server jar is not installed ($FLINK_JOB_SERVER_JAR: not served by" \
         "the Maven Central reachable here); submitting the Beam pipeline to Prism instead:" \
         "UI http://127.0.0.1:$PRISM_WEB_PORT" >&2
    exec "$PY" -m pipelines.run --runner=PortableRunner --job_endpoint="127.0.0.1:$PRISM_JOB_PORT" \
      "${common[@]}" "$@" ;;
  *) echo "submit.sh: ENGINE must be flink or beam, not '$ENGINE'" >&2; exit 2 ;;
esac
