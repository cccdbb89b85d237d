#!/usr/bin/env bash
# The four tongban services as separate processes on the local stack (.run/env must exist:
# `stack.sh up` writes it). Each service runs REPLICAS processes (default 1); replica r of a
# service listens on its dev port + 10*(r-1) + SERVICES_PORT_OFFSET: intake 8001, routing 8002,
# approval 8003, delivery 8004 (offset 0).
#
# Usage: deploy/local/services.sh up | down | status
# Env:   REPLICAS=N, SERVICES_START_TIMEOUT (s, default 90),
#        SERVICES_PORT_OFFSET (default 0, added to every port; e.g. 10000 -> intake 18001, so a
#        second stack on the same machine does not collide). Intake's route preview goes to
#        routing replica 1 on the same offset unless TONGBAN_ROUTING_URL is set.
# shellcheck source-path=SCRIPTDIR disable=SC2034  # SCRIPT_NAME is read by lib.sh
set -euo pipefail
SCRIPT_NAME=services
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SERVICES=(intake routing approval delivery)
declare -A PORT=([intake]=8001 [routing]=8002 [approval]=8003 [delivery]=8004)
REPLICAS=${REPLICAS:-1}
TIMEOUT=${SERVICES_START_TIMEOUT:-90}
PORT_OFFSET=${SERVICES_PORT_OFFSET:-0}
[[ $PORT_OFFSET =~ ^[0-9]+$ ]] || die "SERVICES_PORT_OFFSET must be a non-negative integer, not '$PORT_OFFSET'"
SVC_DIR="$RUN_DIR/services"

pidfile() { echo "$SVC_DIR/$1-$2.pid"; }
port_of() { echo $(( ${PORT[$1]} + 10 * ($2 - 1) + PORT_OFFSET )); }

cmd_up() {
  [[ -f $RUN_DIR/env ]] || die "the stack is not up: run 'make up' (deploy/local/stack.sh up) first"
  # shellcheck disable=SC1091
  source "$RUN_DIR/env"
  export TONGBAN_ROUTING_URL=${TONGBAN_ROUTING_URL:-http://127.0.0.1:$(port_of routing 1)}
  mkdir -p "$SVC_DIR" "$LOG_DIR"
  local started=()
  for svc in "${SERVICES[@]}"; do
    for ((r = 1; r <= REPLICAS; r++)); do
      local pf port log
      pf=$(pidfile "$svc" "$r"); port=$(port_of "$svc" "$r"); log="$LOG_DIR/$svc-$r.log"
      if [[ -f $pf ]] && pid_matches "$(<"$pf")" "services.$svc"; then
        continue
      fi
      require_port_free "$port" "$svc replica $r" "stop it first (deploy/local/services.sh down)"
      (
        close_extra_fds
        export TONGBAN_HTTP_PORT=$port TONGBAN_SERVICE=$svc
        # The service works as its own run-time role (stack.sh: TONGBAN_<SVC>_DATABASE_URL)
        # and migrates as the schema owner (TONGBAN_MIGRATION_DATABASE_URL).
        local role_url="TONGBAN_${svc^^}_DATABASE_URL"
        [[ -z ${!role_url:-} ]] || export TONGBAN_DATABASE_URL=${!role_url}
        cd "$REPO"
        exec "$VENV_PY" -m "services.$svc" >>"$log" 2>&1 </dev/null
      ) &
      echo $! >"$pf"
      started+=("$svc:$r:$port")
      say "$svc replica $r started (pid $!, port $port, log $log)"
    done
  done
  local until; until=$(deadline_after "$TIMEOUT")
  for entry in "${started[@]}"; do
    IFS=: read -r svc r port <<<"$entry"
    until curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
      if ! pid_alive "$(<"$(pidfile "$svc" "$r")")"; then
        show_log_tail "$LOG_DIR/$svc-$r.log"
        die "$svc replica $r exited during start-up (log: $LOG_DIR/$svc-$r.log)"
      fi
      if past_deadline "$until"; then
        show_log_tail "$LOG_DIR/$svc-$r.log"
        die "$svc replica $r not ready after ${TIMEOUT}s (log: $LOG_DIR/$svc-$r.log)"
      fi
      sleep 0.3
    done
  done
  say "services ready"
}

cmd_down() {
  [[ -d $SVC_DIR ]] || return 0
  local pids=()
  for pf in "$SVC_DIR"/*.pid; do
    [[ -f $pf ]] || continue
    local pid; pid=$(<"$pf")
    if pid_matches "$pid" "services."; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  local until; until=$(deadline_after 30)
  for pid in "${pids[@]}"; do
    while pid_alive "$pid" && ! past_deadline "$until"; do sleep 0.2; done
    pid_alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
  done
  rm -f "$SVC_DIR"/*.pid
  say "services stopped"
}

cmd_status() {
  local any=0
  for pf in "$SVC_DIR"/*.pid; do
    [[ -f $pf ]] || continue
    local name; name=$(basename "$pf" .pid)
    if pid_matches "$(<"$pf")" "services."; then say "$name running (pid $(<"$pf"))"; any=1
    else say "$name not running"; fi
  done
  (( any )) || say "no services running"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
