#!/usr/bin/env bash
# Beam Prism runner as a standing job service (portable runner, local, streaming-capable):
#   job endpoint 127.0.0.1:$PRISM_JOB_PORT (PortableRunner --job_endpoint), web UI :$PRISM_WEB_PORT
#   infra/prism.sh start|stop|status
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
source "$HERE/lib.sh"
PIDF="$RUN_DIR/prism.pid"
case "${1:-}" in
  start)
    [[ -x "$PRISM_BIN" ]] || die "prism not installed at $PRISM_BIN; run infra/install.sh (needs go)"
    if pid_alive "$PIDF"; then echo "prism: already running (pid $(cat "$PIDF"))"; exit 0; fi
    port_open 127.0.0.1 "$PRISM_JOB_PORT" && die "port $PRISM_JOB_PORT busy but no prism pid file"
    mkdir -p "$RUN_DIR" "$LOG_DIR"
    nohup "$PRISM_BIN" -job_port "$PRISM_JOB_PORT" -web_port "$PRISM_WEB_PORT" -serve_http=true \
      >"$LOG_DIR/prism.log" 2>&1 </dev/null &
    echo $! >"$PIDF"
    wait_for 30 port_open 127.0.0.1 "$PRISM_JOB_PORT" || { tail -20 "$LOG_DIR/prism.log" >&2; die "prism did not start"; }
    echo "prism: job endpoint 127.0.0.1:$PRISM_JOB_PORT, web UI http://127.0.0.1:$PRISM_WEB_PORT (pid $(cat "$PIDF"))" ;;
  stop) stop_pid prism "$PIDF" 10 ;;
  status)
    if pid_alive "$PIDF" && port_open 127.0.0.1 "$PRISM_JOB_PORT"; then echo "prism: running (pid $(cat "$PIDF")) job endpoint 127.0.0.1:$PRISM_JOB_PORT"; else echo "prism: stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
