#!/usr/bin/env bash
# `make bench-xregion` (issue 18): the cost of a case across regions (跨省通办) against a single
# case, on two regions linked by MirrorMaker 2 (deploy/local/federation.sh): cases of the
# partner's cross_region instant items taken at region 1's counters and single cases of region
# 1's items of the same codes, at the same rate; CPU per closed case of every process of both
# regions and MirrorMaker, the ratio against the target (<= 1.5), $RUN_DIR/bench/xregion.json,
# and the combined report (bench.json) with it.
#
# Starts both regions and the link (federation.sh up, no demo cases) if the link is not running,
# and then stops them all at the end (federation.sh down); two regions already linked are used
# as they are and left running.
#
# Env:   BENCH_XREGION_ARGS  options for `python -m services.bench xregion` (see its --help)
#        REGION2_RUN_DIR, REGION2_KAFKA_PORT_BASE, REGION2_PG_PORT,
#        REGION2_SERVICES_PORT_OFFSET, and region 1's SERVICES_PORT_OFFSET, TONGBAN_RUN_DIR,
#        TONGBAN_KAFKA_PORT_BASE, TONGBAN_PG_PORT: as for federation.sh
#
# Usage: deploy/local/bench-xregion.sh [--help]
# shellcheck source-path=SCRIPTDIR disable=SC2034  # SCRIPT_NAME is read by lib.sh
set -uo pipefail
SCRIPT_NAME=bench-xregion
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO" || exit 1

read -r -a XREGION_ARGS <<<"${BENCH_XREGION_ARGS:-}"
# shellcheck source=bench-lib.sh
source "$LOCAL_DIR/bench-lib.sh"

started_regions=0
stop_regions() {
  if (( started_regions )); then
    bash "$LOCAL_DIR/federation.sh" down || true
  fi
}
trap stop_regions EXIT
trap 'exit 130' INT TERM

t0=$(now)
say "building the load generator (Go; first build about 30 s, then cached)"
"$BIN/python" -m services.bench build-loadgen || die "the load generator did not build (see above)"
if pid_alive "$(cat "$RUN_DIR/mirror/mirror.pid" 2>/dev/null)"; then
  say "using the two regions already linked from $RUN_DIR (left running afterwards)"
else
  started_regions=1
  FEDERATION_CASES=0 bash "$LOCAL_DIR/federation.sh" up || die "the two regions did not start"
fi
# shellcheck disable=SC1091
source "$RUN_DIR/env"
mkdir -p "$OUT"
rm -f "$OUT/xregion.json"
status=0
say "cost across regions (${XREGION_ARGS[*]:-defaults})"
"$BIN/python" -m services.bench xregion --out "$OUT/xregion.json" "${XREGION_ARGS[@]}" || status=1
bench_report || status=1
say "done in $(since "$t0")s: $OUT/xregion.json, $OUT/bench.json"
exit $status
