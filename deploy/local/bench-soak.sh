#!/usr/bin/env bash
# `make bench-soak` (issue 18): sustained load on one region, one process per service by
# default: instant cases at one steady open-loop rate for ten minutes from the compiled load
# generator, the RSS and CPU of every process sampled every 10 s, a line a minute, then RSS at
# start, peak and end per process against the target (<= 150 MB per service process),
# $RUN_DIR/bench/soak.json and soak.png, and the combined report (bench.json) with it.
#
# Starts the stack if it is not up (and stops it at the end only then); always starts and stops
# the services itself, so services already running from this run folder are restarted.
#
# Env:   BENCH_SOAK_REPLICAS  processes per service (default 1)
#        BENCH_SOAK_ARGS      options for `python -m services.bench soak` (default
#                             "--minutes 10 --rate 50"; see its --help)
#        SERVICES_PORT_OFFSET, TONGBAN_RUN_DIR, TONGBAN_KAFKA_PORT_BASE, TONGBAN_PG_PORT,
#        KAFKA_BROKERS        as for stack.sh and services.sh (a second stack beside the default)
#
# Usage: deploy/local/bench-soak.sh [--help]
# shellcheck source-path=SCRIPTDIR disable=SC2034  # SCRIPT_NAME is read by lib.sh
set -uo pipefail
SCRIPT_NAME=bench-soak
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO" || exit 1

read -r -a SOAK_ARGS <<<"${BENCH_SOAK_ARGS:---minutes 10 --rate 50}"
# shellcheck source=bench-lib.sh
source "$LOCAL_DIR/bench-lib.sh"

t0=$(now)
bench_prepare
rm -f "$OUT/soak.json" "$OUT/soak.png"
status=0
replicas=${BENCH_SOAK_REPLICAS:-1}
say "sustained load, REPLICAS=$replicas (${SOAK_ARGS[*]})"
if REPLICAS=$replicas bash "$LOCAL_DIR/services.sh" up; then
  "$BIN/python" -m services.bench soak --out "$OUT/soak.json" --plot "$OUT/soak.png" \
    "${SOAK_ARGS[@]}" || status=1
else
  warn "services did not start with REPLICAS=$replicas"
  status=1
fi
bash "$LOCAL_DIR/services.sh" down
bench_report || status=1
say "done in $(since "$t0")s: $OUT/soak.json, $OUT/soak.png, $OUT/bench.json"
exit $status
