#!/usr/bin/env bash
# `make bench` (issues 8, 18): the raw case pipeline (tongban's case on the same Kafka and
# PostgreSQL with no framework: the limit), then tongban end to end with REPLICAS=1 and
# REPLICAS=2, then (c) the cost per member of bundles, then (d) the runtime's own CPU per
# applied and published event (issue 18's budget, in the bench's one process) and intake's per HTTP submission, then the report
# (table, $RUN_DIR/bench/bench.json and bench.png; with the results of `make bench-soak` and
# `make bench-xregion` if they were run: they are not part of this one).
# Submissions come from a compiled load generator (Go, services/bench/loadgen/), built first
# into $CACHE_DIR/bin: the bench fails at once, saying so, if Go is missing.
#
# Starts the stack if it is not up (and stops it at the end only then); always starts and stops
# the services itself, so services already running from this run folder are restarted.
#
# Env:   BENCH_REPLICAS     replica counts to compare (default "1 2")
#        BENCH_RAW_ARGS     extra options for `python -m services.bench raw`
#        BENCH_E2E_ARGS     extra options for `python -m services.bench e2e`
#        BENCH_RUNTIME_ARGS extra options for `python -m services.bench runtime`
#        BENCH_HTTP_SUBMISSIONS  submissions of (d)'s HTTP figure (default 500)
#        BENCH_TRACING_RATES  offered rates of the tracing-off run (default 25,50)
#        BENCH_MEMBERS_ARGS extra options for `python -m services.bench members`
#        SERVICES_PORT_OFFSET, TONGBAN_RUN_DIR, TONGBAN_KAFKA_PORT_BASE, TONGBAN_PG_PORT,
#        KAFKA_BROKERS      as for stack.sh and services.sh (a second stack beside the default)
#        TONGBAN_RATE_LIMIT_PER_S / _BURST  intake's per-client limit for the bench's services
#                           (default 100000: one load generator plays every counter of the city)
# shellcheck source-path=SCRIPTDIR disable=SC2034  # SCRIPT_NAME is read by lib.sh
set -uo pipefail
SCRIPT_NAME=bench
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO" || exit 1

read -r -a REPLICA_COUNTS <<<"${BENCH_REPLICAS:-1 2}"
read -r -a RAW_ARGS <<<"${BENCH_RAW_ARGS:-}"
read -r -a E2E_ARGS <<<"${BENCH_E2E_ARGS:-}"
read -r -a RUNTIME_ARGS <<<"${BENCH_RUNTIME_ARGS:-}"
read -r -a MEMBERS_ARGS <<<"${BENCH_MEMBERS_ARGS:-}"
# shellcheck source=bench-lib.sh
source "$LOCAL_DIR/bench-lib.sh"

t0=$(now)
bench_prepare
rm -f "$OUT"/raw.json "$OUT"/e2e-r*.json "$OUT"/runtime.json

status=0
say "(a) raw case pipeline (no framework)"
"$BIN/python" -m services.bench raw --out "$OUT/raw.json" "${RAW_ARGS[@]}" || status=1

for replicas in "${REPLICA_COUNTS[@]}"; do
  say "(b) tongban end to end, REPLICAS=$replicas"
  if REPLICAS=$replicas bash "$LOCAL_DIR/services.sh" up; then
    "$BIN/python" -m services.bench e2e --label "replicas=$replicas" \
      --out "$OUT/e2e-r$replicas.json" "${E2E_ARGS[@]}" || status=1
  else
    warn "services did not start with REPLICAS=$replicas"
    status=1
  fi
  bash "$LOCAL_DIR/services.sh" down
done

# The cost of tracing: the first setup again with spans off (traceparent passed through).
say "(b') tongban end to end, REPLICAS=${REPLICA_COUNTS[0]}, tracing off"
rm -f "$OUT/e2e-untraced.json"
if REPLICAS=${REPLICA_COUNTS[0]} TONGBAN_TRACING_ENABLED=false bash "$LOCAL_DIR/services.sh" up; then
  "$BIN/python" -m services.bench e2e --label "replicas=${REPLICA_COUNTS[0]} tracing off" \
    --rates "${BENCH_TRACING_RATES:-25,50}" --out "$OUT/e2e-untraced.json" "${E2E_ARGS[@]}" || status=1
fi
bash "$LOCAL_DIR/services.sh" down

# The cost per member (issue 18): bundles of instant items against single cases of the same
# items at the same member rate, on the first setup.
say "(c) cost per member: bundles against single cases, REPLICAS=${REPLICA_COUNTS[0]}"
rm -f "$OUT/members.json"
if REPLICAS=${REPLICA_COUNTS[0]} bash "$LOCAL_DIR/services.sh" up; then
  "$BIN/python" -m services.bench members --out "$OUT/members.json" "${MEMBERS_ARGS[@]}" || status=1
else
  warn "services did not start for the cost per member"
  status=1
fi
bash "$LOCAL_DIR/services.sh" down

say "(d) the runtime's own CPU per applied and published event, intake's per submission"
http_args=(--http-submissions "${BENCH_HTTP_SUBMISSIONS:-500}")
if ! REPLICAS=1 bash "$LOCAL_DIR/services.sh" up; then
  warn "services did not start: (d) without the HTTP figure"
  http_args=()
  status=1
fi
"$BIN/python" -m services.bench runtime --out "$OUT/runtime.json" "${http_args[@]}" \
  "${RUNTIME_ARGS[@]}" || status=1
bash "$LOCAL_DIR/services.sh" down

bench_report || status=1
say "done in $(since "$t0")s: $OUT/bench.json, $OUT/bench.png"
exit $status
