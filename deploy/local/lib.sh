# shellcheck shell=bash disable=SC2034  # variables here are used by the sourcing scripts
# Shared helpers for deploy/local/*.sh. Sourced, never executed directly.
# The sourcing script sets SCRIPT_NAME first (used as the message prefix).

LOCAL_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$LOCAL_DIR/../.." && pwd)"
# Everything a running stack owns (pid files, data, logs, env) lives under RUN_DIR;
# downloaded artefacts live under CACHE_DIR. Both are gitignored.
RUN_DIR="${TONGBAN_RUN_DIR:-$REPO/.run}"
CACHE_DIR="${TONGBAN_CACHE_DIR:-$REPO/.cache}"
LOG_DIR="$RUN_DIR/logs"
VENV_PY="${TONGBAN_PYTHON:-$REPO/.venv/bin/python}"
PROBE="$LOCAL_DIR/probe.py"

# `<script> --help` (or -h): the script's header comment, and nothing else done. Every
# script sources this file with its own arguments in "$@", so each answers --help here,
# unless it sets SCRIPT_OWN_HELP (its own usage says more, e.g. kafka-cli.sh's tool list).
print_script_help() {
  awk 'NR == 1 { next } /^# shellcheck/ { exit } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}
if [[ -z ${SCRIPT_OWN_HELP:-} && ${BASH_SOURCE[1]:-} == "$0" && ( ${1:-} == -h || ${1:-} == --help ) ]]; then
  print_script_help
  exit 0
fi

say()  { printf '[%s] %s\n' "${SCRIPT_NAME:-local}" "$*"; }
warn() { printf '[%s] WARNING: %s\n' "${SCRIPT_NAME:-local}" "$*" >&2; }
die()  { printf '[%s] ERROR: %s\n' "${SCRIPT_NAME:-local}" "$*" >&2; exit 1; }

# Print the last lines of a log file to stderr, framed, with its path.
show_log_tail() {
  local file=$1 lines=${2:-40}
  if [[ -s $file ]]; then
    printf -- '----- last %s lines of %s -----\n' "$lines" "$file" >&2
    tail -n "$lines" "$file" >&2
    printf -- '----- end of %s -----\n' "$file" >&2
  else
    printf -- '(log file %s is empty or missing)\n' "$file" >&2
  fi
}

# Seconds since the epoch with sub-second precision (bash 5 builtin; no fork).
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
# Elapsed seconds since a now() stamp, one decimal.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

deadline_after() { echo $(( $(date +%s) + $1 )); }
past_deadline()  { (( $(date +%s) >= $1 )); }

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

# True when process $1 is alive and its command line contains the string $2.
# Guards against acting on a recycled pid left in a stale pid file.
pid_matches() {
  local pid=$1 needle=$2
  pid_alive "$pid" || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$needle"
}

# True when something listens on TCP port $1 (any local address).
port_busy() {
  local port=$1
  if command -v ss >/dev/null 2>&1; then
    [[ -n $(ss -Hltn "( sport = :$port )" 2>/dev/null) ]] && return 0
  fi
  # Fallback (and belt and braces): try to connect on loopback.
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

# Human-readable owner of a listening port, best effort (needs root for other users' pids).
port_owner() {
  local port=$1 out=""
  if command -v ss >/dev/null 2>&1; then
    out=$(ss -Hltnp "( sport = :$port )" 2>/dev/null | sed -n 's/.*users:((\(.*\)))/\1/p' | head -n1)
  fi
  if [[ -z $out ]] && command -v lsof >/dev/null 2>&1; then
    out=$(lsof -nP -iTCP:"$port" -sTCP:LISTEN 2>/dev/null | awk 'NR==2 { print $1 " pid=" $2 }')
  fi
  printf '%s' "${out:-unknown process}"
}

# Fail with a clear message if a port we are about to bind is taken.
require_port_free() {  # require_port_free PORT WHAT HOW-TO-MOVE
  local port=$1 what=$2 hint=${3:-}
  if port_busy "$port"; then
    die "port $port (needed for $what) is already in use by: $(port_owner "$port"). Stop that process${hint:+, or $hint}."
  fi
}

# Close every fd above 2 in the current (sub)shell before exec'ing a long-lived daemon, so
# it does not hold our lock or the caller's pipes open (a `make up | tee`, or a CI step
# that waits for its output pipe to close, would otherwise hang until the daemon exits).
close_extra_fds() {
  local fd
  for fd in /proc/"$BASHPID"/fd/*; do
    fd=${fd##*/}
    if [[ $fd =~ ^[0-9]+$ ]] && (( fd > 2 )); then eval "exec $fd>&-"; fi
  done
  return 0
}

# SIGTERM (or the signal given) to a daemon of ours, wait for it to exit, SIGKILL after the
# timeout. stop_process PID TIMEOUT-S WHAT LOG [SIGNAL]
stop_process() {
  local pid=$1 timeout_s=$2 what=$3 log=$4 signal=${5:-TERM} deadline
  kill -"$signal" "$pid" 2>/dev/null || true
  deadline=$(deadline_after "$timeout_s")
  while pid_alive "$pid"; do
    if past_deadline "$deadline"; then
      warn "$what (pid $pid) ignored SIG$signal for ${timeout_s}s; sending SIGKILL. Log: $log"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      return 0
    fi
    sleep 0.3
  done
}

# A Log4j 2 configuration for a JVM of ours (the broker, MirrorMaker) on standard output at
# INFO, which the caller sends to its log file; the <Logger .../> lines on stdin quieten
# what is too chatty. log4j2_console_config WRITTEN-BY-COMMENT <<'XML' ... XML
log4j2_console_config() {
  cat <<XML
<?xml version="1.0" encoding="UTF-8"?>
<!-- $1 -->
<Configuration status="warn">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d{ISO8601}] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="stdout"/></Root>
XML
  sed 's/^/    /'
  printf '  </Loggers>\n</Configuration>\n'
}

# Serialise mutating commands (up/down/...) so two `make up` runs cannot race.
# Child scripts started by stack.sh inherit the lock via TONGBAN_STACK_LOCK_HELD.
# fd 9 holds the lock; daemons are started after close_extra_fds so they don't keep it.
take_lock() {
  [[ -n ${TONGBAN_STACK_LOCK_HELD:-} ]] && return 0
  mkdir -p "$RUN_DIR"
  exec 9>"$RUN_DIR/.lock"
  local wait_s=${TONGBAN_LOCK_TIMEOUT:-300}
  if ! flock -w "$wait_s" 9; then
    die "another deploy/local script held $RUN_DIR/.lock for more than ${wait_s}s; is one still running? (ps -ef | grep deploy/local)"
  fi
  export TONGBAN_STACK_LOCK_HELD=1
}

# The venv Python (for the aiokafka/asyncpg readiness probes) with the given modules importable.
require_venv_python() {
  [[ -x $VENV_PY ]] || die "no Python at $VENV_PY: create the venv first ('make install'), or point TONGBAN_PYTHON at a Python that has ${*:-the project dependencies}."
  local mod
  for mod in "$@"; do
    "$VENV_PY" -c "import $mod" 2>/dev/null \
      || die "$VENV_PY cannot import '$mod'; run 'make install' (or pip install $mod into that venv)."
  done
}

# One bounded readiness probe (see probe.py); the hard timeout guards against a hung interpreter.
probe() { timeout --kill-after=2 30 "$VENV_PY" "$PROBE" "$@"; }
