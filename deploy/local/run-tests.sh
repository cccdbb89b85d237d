#!/usr/bin/env bash
# Runs the whole test suite against a real stack started once for the run:
#   1. one broker + PostgreSQL: unit, integration and e2e tests;
#   2. three brokers (RF 3, min ISR 2): the tests marked `cluster`.
# The stack is always stopped at the end; the exit code is non-zero if any phase failed.
# shellcheck source-path=SCRIPTDIR disable=SC2034  # SCRIPT_NAME, SCRIPT_OWN_HELP are read by lib.sh
set -uo pipefail
SCRIPT_NAME=run-tests
SCRIPT_OWN_HELP=1  # its help adds a line to the header (lib.sh prints the header)
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  print_script_help
  echo; echo "Options after the script name go to pytest (e.g. -k NAME, -x)."
  exit 0
fi
cd "$(dirname "$0")/../.."
BIN=.venv/bin
status=0

cleanup() {
  bash deploy/local/services.sh down >/dev/null 2>&1 || true
  bash deploy/local/stack.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT

phase() { echo; echo "=== $* ==="; }

phase "single broker: unit, integration, e2e"
if KAFKA_BROKERS=1 bash deploy/local/stack.sh up; then
  # shellcheck disable=SC1091
  source .run/env
  $BIN/pytest -m "not cluster" -q "$@" || status=$?
else
  echo "error: the single-broker stack did not start (see the messages above)" >&2
  status=1
fi
bash deploy/local/stack.sh down

phase "three brokers: cluster tests"
if KAFKA_BROKERS=3 bash deploy/local/stack.sh up; then
  # shellcheck disable=SC1091
  source .run/env
  $BIN/pytest -m cluster -q "$@" || status=$?
else
  echo "error: the three-broker stack did not start (see the messages above)" >&2
  status=1
fi

exit $status
