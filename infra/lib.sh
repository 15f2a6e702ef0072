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
