#!/usr/bin/env bash
# `make faults`: the full fault suite. Starts three brokers (RF 3, min ISR 2, unclean leader
# election off) and PostgreSQL, every service as two processes, runs the scenarios of
# tests/faults (thousands of cases each), prints one table row per scenario, writes
# .run/faults/report.json, and stops everything it started. Exit 1 on any lost case,
# duplicate effect or order violation.
# Usage: deploy/local/run-faults.sh [python -m tests.faults options, e.g. --only brokers]
# shellcheck source-path=SCRIPTDIR disable=SC2034  # SCRIPT_NAME, SCRIPT_OWN_HELP are read by lib.sh
set -uo pipefail
SCRIPT_NAME=run-faults
SCRIPT_OWN_HELP=1  # its help adds a line to the header (lib.sh prints the header)
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  print_script_help
  echo; (cd "$REPO" && "$VENV_PY" -m tests.faults --help)
  exit 0
fi
cd "$(dirname "$0")/../.."
BIN=.venv/bin

cleanup() {
  bash deploy/local/services.sh down >/dev/null 2>&1 || true
  bash deploy/local/stack.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT

KAFKA_BROKERS=3 bash deploy/local/stack.sh up || { echo "error: the three-broker stack did not start" >&2; exit 1; }
# shellcheck disable=SC1091
source .run/env
$BIN/tongban migrate && $BIN/tongban topics || exit 1
REPLICAS=2 bash deploy/local/services.sh up || exit 1
$BIN/python -m tests.faults --size full --replicas 2 "$@"
