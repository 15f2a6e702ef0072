# Helpers for infra/*.sh (sourced).
die() { echo "error: $*" >&2; exit 1; }

# pid_alive PIDFILE -> 0 when the pid in the file is a live process
pid_alive() {
  local f="$1" pid
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f" 2>/dev/null)"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  # A killed process its parent has not reaped yet (here often init) is a zombie: not running.
  ! grep -qs '^State:[[:space:]]*Z' "/proc/$pid/status"
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# wait_for SECONDS CMD... -> poll CMD every 0.5 s
wait_for() {
  local limit="$1"; shift
  local end=$(( $(date +%s) + limit ))
  until "$@"; do
    (( $(date +%s) >= end )) && return 1
    sleep 0.5
  done
}

# stop_pid NAME PIDFILE GRACE_SECONDS: SIGTERM, wait, then SIGKILL; removes the pid file.
stop_pid() {
  local name="$1" f="$2" grace="${3:-30}" pid
  if ! pid_alive "$f"; then rm -f "$f"; echo "$name: not running"; return 0; fi
  pid="$(cat "$f")"
  kill -TERM "$pid" 2>/dev/null || true
  local end=$(( $(date +%s) + grace ))
  while kill -0 "$pid" 2>/dev/null; do
    if (( $(date +%s) >= end )); then
      echo "$name: still alive after ${grace}s, SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.5; break
    fi
    sleep 0.3
  done
  rm -f "$f"
  echo "$name: stopped (pid $pid)"
}

# instance_pids REGEX: live processes whose command line matches REGEX and which belong to
# this instance: their environment holds INFRA_INSTANCE=$RUN_DIR (env.sh exports it to
# everything the scripts start). A process without the marker (started before it existed)
# belongs to the default instance.
instance_pids() {
  local pid env
  for pid in $(pgrep -f -- "$1"); do
    env="$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null)" || continue
    if grep -qxF "INFRA_INSTANCE=$RUN_DIR" <<<"$env" \
       || { [[ "$RUN_DIR" == "$INFRA_CACHE/run" ]] && ! grep -q '^INFRA_INSTANCE=' <<<"$env"; }; then
      echo "$pid"
    fi
  done
}

# PyFlink Python workers (children of a TaskManager: pyflink-udf-runner.sh and the Beam
# fn-execution worker it starts) of this instance's Flink: they carry its FLINK_CONF_DIR.
# A local MiniCluster's workers (tests, drivers) carry the venv's own conf dir instead.
PYFLINK_WORKER_RE='pyflink-udf-runner\.sh|pyflink\.fn_execution\.beam'
pyflink_worker_pids() {
  local pid
  for pid in $(pgrep -f -- "$PYFLINK_WORKER_RE"); do
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "FLINK_CONF_DIR=$INFRA_FLINK_CONF_DIR"; then echo "$pid"; fi
  done
}
