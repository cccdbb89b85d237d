#!/usr/bin/env bash
# The whole local stack: Kafka jars (fetch-kafka.sh), PostgreSQL (postgres.sh) and the
# Kafka cluster (kafka.sh), plus .run/env for Makefile/tests to `source`.
#
# Usage: deploy/local/stack.sh up | down | status | clean
#   up      fetch (cached), start PostgreSQL, start Kafka, write .run/env. Running it again
#           while the stack is up is a no-op (it only re-checks readiness).
#   down    stop Kafka and PostgreSQL, remove .run/env. Fine when nothing runs.
#   status  state of both; exit 0 only when both answer.
#   clean   down, then delete .run/ entirely (keeps the .cache/ jar cache).
#
# Env: KAFKA_BROKERS=1|3, TONGBAN_DATABASE_URL (external PostgreSQL), TONGBAN_KEEP_DATA=1,
#      and everything listed in the headers of kafka.sh, postgres.sh and fetch-kafka.sh.
#
# .run/env (written by up):
#   export TONGBAN_KAFKA_BOOTSTRAP=127.0.0.1:9092[,127.0.0.1:9094,127.0.0.1:9096]
#   export TONGBAN_KAFKA_BROKERS=1|3
#   export TONGBAN_DATABASE_URL=postgresql+asyncpg://tongban:tongban@127.0.0.1:5432/tongban
#   export TONGBAN_MIGRATION_DATABASE_URL=postgresql+asyncpg://tongban_owner:...   (embedded)
#   export TONGBAN_INTAKE_DATABASE_URL=postgresql+asyncpg://tongban_intake:...   (and ROUTING,
#          APPROVAL, DELIVERY; embedded)
# TONGBAN_DATABASE_URL is the administrator's (tests make throw-away schemas, the fault suite
# and the bench read every service's tables); `tongban migrate` runs as the schema owner;
# services.sh gives each service its own run-time role's URL as its TONGBAN_DATABASE_URL.
# With an external server the variables are passed on as they were given.
# shellcheck source-path=SCRIPTDIR disable=SC2034  # SCRIPT_NAME is read by lib.sh
set -euo pipefail
SCRIPT_NAME=stack
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ENV_FILE="$RUN_DIR/env"

# `export NAME=value`, bare when the value is shell-safe (readable, and also parseable by
# dotenv-style readers), in single quotes otherwise (e.g. an external URL with `?a=1&b=2`).
env_line() {
  if [[ $2 =~ ^[A-Za-z0-9_.:,/@+=%-]*$ ]]; then
    printf 'export %s=%s\n' "$1" "$2"
  else
    printf "export %s='%s'\n" "$1" "${2//\'/\'\\\'\'}"
  fi
}

cmd_up() {
  take_lock
  local t0 t; t0=$(now)
  # .run/env is only (re)written after everything answers; `down` removes it.

  t=$(now); "$LOCAL_DIR/fetch-kafka.sh";  local t_fetch; t_fetch=$(since "$t")
  t=$(now); "$LOCAL_DIR/postgres.sh" up;  local t_pg;    t_pg=$(since "$t")
  t=$(now); "$LOCAL_DIR/kafka.sh" up;     local t_kafka; t_kafka=$(since "$t")

  local bootstrap db_url brokers
  bootstrap=$("$LOCAL_DIR/kafka.sh" bootstrap)
  brokers=$(<"$RUN_DIR/kafka/brokers")
  db_url=$("$LOCAL_DIR/postgres.sh" url)

  # Write-then-rename so a reader never sees a half-written file.
  {
    echo "# Written by deploy/local/stack.sh up at $(date -Is); removed by stack.sh down."
    env_line TONGBAN_KAFKA_BOOTSTRAP "$bootstrap"
    env_line TONGBAN_KAFKA_BROKERS "$brokers"
    # Topics created by services on a cluster are replicated like production (RF 3, ISR 2).
    if [[ $brokers -ge 3 ]]; then
      env_line TONGBAN_KAFKA_REPLICATION 3
      env_line TONGBAN_KAFKA_MIN_INSYNC 2
    fi
    env_line TONGBAN_DATABASE_URL "$db_url"
    local owner_url
    if owner_url=$("$LOCAL_DIR/postgres.sh" url owner 2>/dev/null); then   # embedded server
      env_line TONGBAN_MIGRATION_DATABASE_URL "$owner_url"
      local svc
      for svc in intake routing approval delivery; do
        env_line "TONGBAN_${svc^^}_DATABASE_URL" "$("$LOCAL_DIR/postgres.sh" url "$svc")"
      done
    else
      local name
      for name in TONGBAN_MIGRATION_DATABASE_URL TONGBAN_{INTAKE,ROUTING,APPROVAL,DELIVERY}_DATABASE_URL; do
        [[ -z ${!name:-} ]] || env_line "$name" "${!name}"
      done
    fi
  } >"$ENV_FILE.tmp"
  mv "$ENV_FILE.tmp" "$ENV_FILE"

  say "stack up in $(since "$t0")s (fetch ${t_fetch}s, postgres ${t_pg}s, kafka ${t_kafka}s)"
  say "environment: source $ENV_FILE"
  sed -n 's/^export /  /p' "$ENV_FILE"
}

cmd_down() {
  take_lock
  local rc=0
  # Keep going if one part fails, so down always tries to stop everything.
  "$LOCAL_DIR/kafka.sh" down || rc=1
  "$LOCAL_DIR/postgres.sh" down || rc=1
  rm -f "$ENV_FILE"
  (( rc == 0 )) || die "some part of the stack did not stop cleanly (see above)"
  say "stack down"
}

cmd_status() {
  local rc=0
  "$LOCAL_DIR/postgres.sh" status || rc=1
  "$LOCAL_DIR/kafka.sh" status || rc=1
  if [[ -f $ENV_FILE ]]; then
    echo "env ($ENV_FILE):"; sed -n 's/^export /  /p' "$ENV_FILE"
  else
    echo "env: $ENV_FILE absent (stack not up)"
  fi
  return "$rc"
}

cmd_clean() {
  cmd_down
  "$LOCAL_DIR/postgres.sh" clean
  rm -rf "$RUN_DIR"
  echo "[stack] removed $RUN_DIR"
}

case "${1:-}" in
  up)     cmd_up ;;
  down)   cmd_down ;;
  status) cmd_status ;;
  clean)  cmd_clean ;;
  *) echo "usage: $0 up|down|status|clean   (env KAFKA_BROKERS=1|3)" >&2; exit 2 ;;
esac
