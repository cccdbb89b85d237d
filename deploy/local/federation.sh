#!/usr/bin/env bash
# Two tongban regions on one machine, linked by Kafka MirrorMaker 2 (DESIGN.md §9): what
# `make federation` runs.
#   region 1  the usual stack (its Kafka, PostgreSQL and four services, as `make up` and
#             services.sh start them: default ports, or TONGBAN_KAFKA_PORT_BASE,
#             TONGBAN_PG_PORT, SERVICES_PORT_OFFSET, TONGBAN_RUN_DIR as for every script here),
#             catalog deploy/demo/catalog.yaml (云州市, YZ);
#   region 2  a second stack in a run folder of its own: Kafka 19092, PostgreSQL 15432,
#             services at offset 10000 (intake 18001, routing 18002, approval 18003,
#             delivery 18004), catalog deploy/demo/partner-catalog.yaml (澜州市, LZ);
#   the link  MirrorMaker 2 (mirror.sh) both ways: each region's catalog.v1 and xregion.out.v1
#             arrive on the other as region1.<topic> / region2.<topic>.
# Each catalog is loaded through its region's routing (POST /v1/catalog); then a table shows
# that each region sees the other's catalog over the link, and `tongban federation-demo` runs
# cases across regions (跨省通办) both ways to `closed` in both regions' views, with a table per
# case and one refused city-scope item. Everything keeps running.
#
# Usage: deploy/local/federation.sh up | down | status | clean | --help
#   up      start (or find running) both regions and the link, load both catalogs, wait up to
#           FEDERATION_WAIT s (default 60) for each region to see its partner's catalog and
#           print the table; exit 1 if one does not. Then FEDERATION_CASES cases each way
#           (default 5; 0 skips them) across regions; exit 1 if one does not close in both.
#   down    stop MirrorMaker, region 2 and region 1 (`make down` runs this). Fine when nothing runs.
#   status  both regions' stacks and services, and the link with its lag.
#   clean   remove region 2's PostgreSQL data kept outside its run folder (as root; after down).
#
# Env:   REGION2_RUN_DIR              (default <region 1's run folder>/region2)
#        REGION2_KAFKA_PORT_BASE      (default 19092)
#        REGION2_PG_PORT              (default 15432)
#        REGION2_SERVICES_PORT_OFFSET (default 10000)
#        MIRROR_ALIAS_1, MIRROR_ALIAS_2, MIRROR_TOPICS: see mirror.sh (aliases region1, region2)
#        FEDERATION_WAIT              seconds to wait for the catalogs to cross (default 60)
#        FEDERATION_CASES             cases across regions each way (default 5; 0: none)
#        FEDERATION_TIMEOUT           seconds for them to close in both regions (default 180)
# shellcheck source-path=SCRIPTDIR disable=SC2034  # SCRIPT_NAME is read by lib.sh
set -euo pipefail
SCRIPT_NAME=federation
SCRIPT_OWN_HELP=1  # its --help says more than its header (lib.sh leaves it alone)
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REGION2_RUN_DIR=${REGION2_RUN_DIR:-$RUN_DIR/region2}
REGION2_KAFKA_PORT_BASE=${REGION2_KAFKA_PORT_BASE:-19092}
REGION2_PG_PORT=${REGION2_PG_PORT:-15432}
REGION2_SERVICES_PORT_OFFSET=${REGION2_SERVICES_PORT_OFFSET:-10000}
export MIRROR_ALIAS_1=${MIRROR_ALIAS_1:-region1} MIRROR_ALIAS_2=${MIRROR_ALIAS_2:-region2}
TONGBAN="$REPO/.venv/bin/tongban"

usage() { sed -n '2,/^# shellcheck/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# Run a command as region N: its run folder and ports, and none of the other region's
# connection variables (a shell that sourced one region's env must not steer the other).
in_region() {  # in_region N COMMAND...
  local n=$1; shift
  (
    unset TONGBAN_KAFKA_BOOTSTRAP TONGBAN_KAFKA_BROKERS TONGBAN_KAFKA_REPLICATION TONGBAN_KAFKA_MIN_INSYNC \
      TONGBAN_DATABASE_URL TONGBAN_MIGRATION_DATABASE_URL \
      TONGBAN_INTAKE_DATABASE_URL TONGBAN_ROUTING_DATABASE_URL TONGBAN_APPROVAL_DATABASE_URL \
      TONGBAN_DELIVERY_DATABASE_URL TONGBAN_ROUTING_URL TONGBAN_STACK_LOCK_HELD
    if (( n == 2 )); then
      export TONGBAN_RUN_DIR=$REGION2_RUN_DIR TONGBAN_KAFKA_PORT_BASE=$REGION2_KAFKA_PORT_BASE \
        TONGBAN_PG_PORT=$REGION2_PG_PORT SERVICES_PORT_OFFSET=$REGION2_SERVICES_PORT_OFFSET
    else
      export TONGBAN_RUN_DIR=$RUN_DIR
    fi
    "$@"
  )
}

# The region's stack and services, then its schemas and topics (what `make up` and
# services.sh up do); each step is a no-op when it already runs.
region_up() {  # region_up N
  in_region "$1" bash -c '
    set -euo pipefail
    bash "$0/stack.sh" up
    source "$TONGBAN_RUN_DIR/env"
    "$1" migrate
    "$1" topics
    bash "$0/services.sh" up' "$LOCAL_DIR" "$TONGBAN"
}

region_down() {  # region_down N
  in_region "$1" bash -c 'rc=0; bash "$0/services.sh" down || rc=1; bash "$0/stack.sh" down || rc=1; exit $rc' "$LOCAL_DIR"
}

bootstrap_of() { in_region "$1" bash "$LOCAL_DIR/kafka.sh" bootstrap; }
routing_url_of() {  # routing replica 1 of region N (services.sh: 8002 + offset)
  local offset=${SERVICES_PORT_OFFSET:-0}
  (( $1 == 2 )) && offset=$REGION2_SERVICES_PORT_OFFSET
  echo "http://127.0.0.1:$(( 8002 + offset ))"
}

load_catalog() {  # load_catalog N FILE
  say "region $1: loading $2 through its routing ($(routing_url_of "$1")/v1/catalog)"
  in_region "$1" bash -c 'source "$TONGBAN_RUN_DIR/env" && "$0" catalog load --routing-url "$1" "$2"' \
    "$TONGBAN" "$(routing_url_of "$1")" "$REPO/$2"
}

step() { say "step $1/6: $2"; }

cmd_up() {
  local t0; t0=$(now)
  [[ -x $TONGBAN ]] || die "no $TONGBAN: run 'make install' first"
  step 1 "region 1 (run folder $RUN_DIR)"
  region_up 1
  step 2 "region 2 (run folder $REGION2_RUN_DIR; Kafka $REGION2_KAFKA_PORT_BASE, PostgreSQL $REGION2_PG_PORT, services +$REGION2_SERVICES_PORT_OFFSET)"
  region_up 2
  step 3 "MirrorMaker 2 between them"
  local b1; b1=$(bootstrap_of 1)
  # A three-broker region 1 (KAFKA_BROKERS=3) refuses writes to one-replica topics.
  [[ $b1 == *,* ]] && export MIRROR_REPLICATION_1=${MIRROR_REPLICATION_1:-3}
  MIRROR_BOOTSTRAP_1=$b1 MIRROR_BOOTSTRAP_2=$(bootstrap_of 2) \
    bash "$LOCAL_DIR/mirror.sh" up
  step 4 "each region's catalog, loaded through its routing"
  load_catalog 1 deploy/demo/catalog.yaml
  load_catalog 2 deploy/demo/partner-catalog.yaml
  step 5 "each region sees its partner's catalog over the link (waiting up to ${FEDERATION_WAIT:-60}s)"
  local rc=0
  "$VENV_PY" "$LOCAL_DIR/mirror_report.py" catalogs --wait "${FEDERATION_WAIT:-60}" \
    --cluster "$MIRROR_ALIAS_1=$(bootstrap_of 1)" --cluster "$MIRROR_ALIAS_2=$(bootstrap_of 2)" \
    || rc=$?
  if (( rc != 0 )); then
    die "a region does not see its partner's catalog after ${FEDERATION_WAIT:-60}s (MirrorMaker log: $LOG_DIR/mirror.log)"
  fi
  local cases=${FEDERATION_CASES:-5}
  if (( cases > 0 )); then
    step 6 "$cases cases each way across regions (跨省通办), to closed in both regions"
    # Region 1's env (the tongban command reads the dev auth settings; ports come as options).
    in_region 1 bash -c 'source "$TONGBAN_RUN_DIR/env" && "$0" federation-demo \
      --region1-offset "$1" --region2-offset "$2" --cases "$3" --timeout "$4"' \
      "$TONGBAN" "${SERVICES_PORT_OFFSET:-0}" "$REGION2_SERVICES_PORT_OFFSET" "$cases" \
      "${FEDERATION_TIMEOUT:-180}" \
      || die "a case across regions did not close in both regions (logs: $LOG_DIR, $REGION2_RUN_DIR/logs)"
  fi
  say "two regions up and linked in $(since "$t0")s; they keep running (make down stops both)"
}

cmd_down() {
  # Keep going if one part fails, so down always tries to stop everything.
  local rc=0
  if [[ -f $RUN_DIR/mirror/mirror.pid ]]; then bash "$LOCAL_DIR/mirror.sh" down || rc=1; fi
  if [[ -d $REGION2_RUN_DIR ]]; then
    say "region 2 ($REGION2_RUN_DIR)"
    region_down 2 || rc=1
  fi
  region_down 1 || rc=1
  return "$rc"
}

cmd_status() {
  local rc=0
  say "region 1 ($RUN_DIR)"
  in_region 1 bash "$LOCAL_DIR/stack.sh" status || rc=1
  in_region 1 bash "$LOCAL_DIR/services.sh" status
  say "region 2 ($REGION2_RUN_DIR)"
  in_region 2 bash "$LOCAL_DIR/stack.sh" status || rc=1
  in_region 2 bash "$LOCAL_DIR/services.sh" status
  bash "$LOCAL_DIR/mirror.sh" status || rc=1
  return "$rc"
}

cmd_clean() {
  [[ -d $REGION2_RUN_DIR ]] || return 0
  in_region 2 bash "$LOCAL_DIR/postgres.sh" clean
}

case "${1:-}" in
  up)     cmd_up ;;
  down)   cmd_down ;;
  status) cmd_status ;;
  clean)  cmd_clean ;;
  -h|--help) usage ;;
  *) echo "usage: $0 up|down|status|clean|--help" >&2; exit 2 ;;
esac
