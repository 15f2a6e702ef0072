#!/usr/bin/env bash
# Idempotent installer for the local streaming infrastructure (Flink, Kafka, Beam
# cross-language KafkaIO expansion service). Everything lands in infra/.cache/
# (gitignored). Uses only pip (PyPI) and mvn (Maven Central).
#
#   bash infra/install.sh          # install what is missing
#   FORCE=1 bash infra/install.sh  # reinstall everything
#
# Versions can be overridden with the environment variables below.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=infra/env.sh
source "$HERE/env.sh"

FORCE="${FORCE:-0}"
PIP="${PIP:-python3 -m pip}"
MVN="${MVN:-mvn -B -q}"
mkdir -p "$INFRA_CACHE" "$INFRA_CACHE/run" "$INFRA_CACHE/logs"

say() { printf '[install] %s\n' "$*"; }
t0=$(date +%s)

need() { command -v "$1" >/dev/null 2>&1 || { echo "install.sh: '$1' not found on PATH" >&2; exit 1; }; }
need java
need mvn
need python3

# ---------------------------------------------------------------- Flink ----
# The apache-flink-libraries wheel carries lib/, opt/, plugins/; the apache-flink
# wheel carries bin/ and conf/. Both unpack into <target>/pyflink, which is a
# complete FLINK_HOME. --no-deps: the wheels pin apache-beam<=2.61, which must not
# touch the project env.
if [[ "$FORCE" == 1 || ! -x "$FLINK_HOME/bin/jobmanager.sh" || ! -f "$FLINK_HOME/lib/flink-dist-$FLINK_VERSION.jar" ]]; then
  say "Flink $FLINK_VERSION: pip install --no-deps --target $INFRA_CACHE/flink-$FLINK_VERSION"
  rm -rf "$INFRA_CACHE/flink-$FLINK_VERSION"
  $PIP install --quiet --no-deps --no-compile --target "$INFRA_CACHE/flink-$FLINK_VERSION" \
    "apache-flink==$FLINK_VERSION" "apache-flink-libraries==$FLINK_VERSION"
  chmod +x "$FLINK_HOME"/bin/*.sh "$FLINK_HOME/bin/flink" || true
  # keep a pristine copy of the shipped config; flink.sh writes its own config.yaml
  cp -n "$FLINK_HOME/conf/config.yaml" "$FLINK_HOME/conf/config.yaml.dist" 2>/dev/null || true
else
  say "Flink $FLINK_VERSION: already at $FLINK_HOME"
fi

# The wheels lack opt/flink-sql-gateway, which bin/sql-client.sh needs; the infra
# tests use the SQL client to run a plain Flink job (checkpointing / failover probe).
gw="$FLINK_HOME/opt/flink-sql-gateway-$FLINK_VERSION.jar"
if [[ "$FORCE" == 1 || ! -f "$gw" ]]; then
  say "Flink SQL gateway jar (for bin/sql-client.sh) -> $FLINK_HOME/opt"
  $MVN org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy \
    -Dartifact="org.apache.flink:flink-sql-gateway:$FLINK_VERSION" -DoutputDirectory="$FLINK_HOME/opt"
fi

# ------------------------------------------------------------ PyFlink venv --
# The venv the native PyFlink job runs in (client and Python workers): apache-flink
# 2.2.1 with its Beam 2.61 fn harness, plus what core/ needs. Rebuilt when
# pyflink-requirements.txt changes (the stamp holds its checksum) or FORCE=1.
pyflink_req="$HERE/pyflink-requirements.txt"
pyflink_sum="$(sha256sum "$pyflink_req" | cut -d' ' -f1)"
pyflink_stamp="$PYFLINK_VENV/.infra-stamp"
if [[ "$FORCE" == 1 || ! -x "$PYFLINK_PYTHON" || "$(cat "$pyflink_stamp" 2>/dev/null)" != "$pyflink_sum" ]]; then
  say "PyFlink venv: $PYFLINK_BASE_PYTHON -m venv $PYFLINK_VENV; pip install -r $pyflink_req"
  t_venv=$(date +%s)
  rm -rf "$PYFLINK_VENV"
  "$PYFLINK_BASE_PYTHON" -m venv "$PYFLINK_VENV"
  "$PYFLINK_PYTHON" -m pip install --quiet --upgrade pip
  "$PYFLINK_PYTHON" -m pip install --quiet -r "$pyflink_req"
  echo "$pyflink_sum" >"$pyflink_stamp"
  say "PyFlink venv: built in $(( $(date +%s) - t_venv ))s"
else
  say "PyFlink venv: already at $PYFLINK_VENV"
fi
# Verified on every run: a venv that lost a package (or gained pipeline_dp, whose dill
# Beam 2.61 refuses) fails here, not inside a TaskManager.
"$PYFLINK_PYTHON" - <<'PY' || { echo "install.sh: PyFlink venv $PYFLINK_VENV failed its check (FORCE=1 rebuilds it)" >&2; exit 1; }
import importlib.util, sys
import pyflink, h3, cryptography, pydp, apache_beam  # noqa: F401
from pyflink.datastream import StreamExecutionEnvironment  # noqa: F401
assert apache_beam.__version__.startswith("2.61."), f"apache_beam {apache_beam.__version__}, want 2.61.x"
assert importlib.util.find_spec("pipeline_dp") is None, "pipeline_dp must not be in the PyFlink venv"
print(f"[install] PyFlink venv ok: python {sys.version.split()[0]}, apache_beam {apache_beam.__version__}, h3 {h3.__version__}")
PY

# ---------------------------------------------------------------- Kafka ----
# classpath NAME POM VERSION_PROPERTY=VERSION LIB_DIR MARKER_JAR: a pom's runtime classpath
# copied into LIB_DIR from Maven Central, unless MARKER_JAR shows it is there already and
# the pom (with the property) has not changed since (LIB_DIR/.infra-stamp holds its
# checksum; a lib dir from before the stamp existed adopts the current one).
classpath() {
  local name=$1 pom=$2 property=$3 lib=$4 marker=$5 sum
  sum="$( (cat "$HERE/maven/$pom"; echo "$property") | sha256sum | cut -d' ' -f1)"
  [[ -f "$lib/$marker" && ! -f "$lib/.infra-stamp" ]] && echo "$sum" >"$lib/.infra-stamp"
  if [[ "$FORCE" == 1 || ! -f "$lib/$marker" || "$(cat "$lib/.infra-stamp")" != "$sum" ]]; then
    say "$name: mvn dependency:copy-dependencies -> $lib"
    rm -rf "$lib"
    $MVN -f "$HERE/maven/$pom" -D"$property" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$lib"
    echo "$sum" >"$lib/.infra-stamp"
  else
    say "$name: already at $lib"
  fi
}

classpath "Kafka $KAFKA_VERSION" kafka-pom.xml "kafka.version=$KAFKA_VERSION" "$KAFKA_LIB" \
  "kafka_2.13-$KAFKA_VERSION.jar"

# ------------------------------------------------------- Flink job jars ----
# Kafka connector, Parquet writer and the Hadoop classes it needs, for the native PyFlink
# job (env.sh: FLINK_JOB_JARS). See maven/flink-job-jars-pom.xml for why these.
classpath "Flink job jars (Kafka connector, Parquet + Hadoop)" flink-job-jars-pom.xml \
  "flink.kafka.version=$FLINK_KAFKA_CONNECTOR_VERSION" "$FLINK_JOB_JARS_DIR" \
  "flink-sql-connector-kafka-$FLINK_KAFKA_CONNECTOR_VERSION.jar"

# ------------------------------------------- Beam KafkaIO expansion service --
# Maven Central (as served here) has no shaded beam-sdks-java-io-expansion-service
# jar and no beam-runners-flink-* jars; it does serve the unshaded modules, so we
# resolve a plain classpath: expansion service + KafkaIO + Java SDK harness.
classpath "Beam Java $BEAM_JAVA_VERSION expansion service + KafkaIO classpath" expansion-service-pom.xml \
  "beam.version=$BEAM_JAVA_VERSION" "$BEAM_XLANG_LIB" "beam-sdks-java-io-kafka-$BEAM_JAVA_VERSION.jar"

# A launcher jar: only a manifest (Main-Class + relative Class-Path over libs/), so the
# classpath above can be used like Beam's shaded expansion-service jar: `java -jar
# $EXPANSION_SERVICE_JAR <port> ...` or apache_beam's JavaJarExpansionService(path).
if [[ "$FORCE" == 1 || ! -f "$EXPANSION_SERVICE_JAR" || "$EXPANSION_SERVICE_JAR" -ot "$BEAM_XLANG_LIB" ]]; then
  tmp="$(mktemp -d)"
  echo "Main-Class: org.apache.beam.sdk.expansion.service.ExpansionService" >"$tmp/manifest.txt"
  {
    printf 'Class-Path:'
    for j in "$BEAM_XLANG_LIB"/*.jar; do printf ' libs/%s' "$(basename "$j")"; done
    echo
  } | fold -w 70 | sed '2,$s/^/ /' >>"$tmp/manifest.txt"
  rm -f "$EXPANSION_SERVICE_JAR"
  (cd "$tmp" && jar --create --file "$EXPANSION_SERVICE_JAR" --manifest manifest.txt)
  rm -rf "$tmp"
  say "Beam KafkaIO expansion-service launcher jar: $EXPANSION_SERVICE_JAR"
fi

# ------------------------------------------------- Beam Flink job server ----
# Tried, in order, for Beam's Python FlinkRunner (--flink_job_server_jar). Not served
# by the Maven Central reachable from this machine (checked 2026-11-25 for
# 1.19/1.20/2.0/2.1/2.2 x 2.56..2.77); kept so the script picks it up the day it is.
if [[ -f "$FLINK_JOB_SERVER_JAR" && "$FORCE" != 1 ]]; then
  say "Beam Flink job server: already at $FLINK_JOB_SERVER_JAR"
else
  js_artifact="org.apache.beam:beam-runners-flink-$FLINK_MAJOR_MINOR-job-server:$BEAM_VERSION"
  if $MVN org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy \
      -Dartifact="$js_artifact" -DoutputDirectory="$INFRA_CACHE/jars" \
      >"$INFRA_CACHE/logs/job-server-fetch.log" 2>&1; then
    mv "$INFRA_CACHE/jars/beam-runners-flink-$FLINK_MAJOR_MINOR-job-server-$BEAM_VERSION.jar" "$FLINK_JOB_SERVER_JAR"
    say "Beam Flink job server: $FLINK_JOB_SERVER_JAR"
  else
    say "Beam Flink job server: $js_artifact NOT available from Maven Central here (see $INFRA_CACHE/logs/job-server-fetch.log); Beam-on-Flink is disabled, the Flink cluster itself still runs"
  fi
fi

# ---------------------------------------------------------- Prometheus ----
# Debian's package (the server and promtool); infra/prometheus.sh runs it per instance with
# a generated config. The package's own service (port 9090) is never used: stopped if the
# install started it.
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  say "Prometheus: already at $(command -v prometheus) ($(prometheus --version 2>&1 | head -1))"
else
  say "Prometheus: apt-get install -y prometheus"
  # another apt run (a second checkout's install) may hold dpkg's lock: wait for it
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    prometheus >/dev/null
  if command -v service >/dev/null 2>&1; then service prometheus stop >/dev/null 2>&1 || true; fi
fi

# Flink's Prometheus metrics reporter, a plugin (its own class loader) in plugins/: the wheel
# ships it; fetched from Maven Central at Flink's version when it does not.
prom_plugin="$FLINK_HOME/plugins/metrics-prometheus/flink-metrics-prometheus-$FLINK_VERSION.jar"
if [[ "$FORCE" == 1 || ! -f "$prom_plugin" ]]; then
  say "Flink Prometheus reporter: org.apache.flink:flink-metrics-prometheus:$FLINK_VERSION -> $(dirname "$prom_plugin")"
  $MVN org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy \
    -Dartifact="org.apache.flink:flink-metrics-prometheus:$FLINK_VERSION" -DoutputDirectory="$(dirname "$prom_plugin")"
else
  say "Flink Prometheus reporter: already at $prom_plugin"
fi

# --------------------------------------------------------------- Prism ----
# Beam's portable local runner (Go). apache_beam would download a release binary from
# GitHub (unreachable here); we build the same command from the Go module proxy.
# Used by tests/integration for unbounded Kafka->Kafka streaming smoke runs.
if [[ "${INFRA_SKIP_PRISM:-0}" == 1 ]]; then
  say "Prism: skipped (INFRA_SKIP_PRISM=1)"
elif [[ -x "$PRISM_BIN" && "$FORCE" != 1 ]]; then
  say "Prism: already at $PRISM_BIN"
elif command -v go >/dev/null 2>&1; then
  say "Prism v$BEAM_VERSION: go install github.com/apache/beam/sdks/v2/go/cmd/prism (first build takes a few minutes)"
  GOBIN="$(dirname "$PRISM_BIN")" GOFLAGS=-mod=mod go install "github.com/apache/beam/sdks/v2/go/cmd/prism@v$BEAM_VERSION"
else
  say "Prism: 'go' not found, skipped"
fi

say "done in $(( $(date +%s) - t0 ))s"
say "FLINK_HOME=$FLINK_HOME"
say "Kafka classpath=$KAFKA_LIB ($(ls "$KAFKA_LIB" | wc -l) jars)"
say "Beam xlang classpath=$BEAM_XLANG_LIB ($(ls "$BEAM_XLANG_LIB" | wc -l) jars)"
say "PyFlink venv=$PYFLINK_VENV ($(du -sm "$PYFLINK_VENV" | cut -f1) MB); Flink job jars=$FLINK_JOB_JARS_DIR ($(ls "$FLINK_JOB_JARS_DIR" | wc -l) jars, $(du -sm "$FLINK_JOB_JARS_DIR" | cut -f1) MB)"
