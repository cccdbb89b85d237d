#!/usr/bin/env bash
# Runs the whole test suite against a real stack started once for the run:
#   1. one broker + PostgreSQL: unit, integration and e2e tests;
#   2. three brokers (RF 3, min ISR 2): the tests marked `cluster`.
# The stack is always stopped at the end; the exit code is non-zero if any phase failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
  echo; echo "Options after the script name go to pytest (e.g. -k NAME, -x)."
  exit 0
fi
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
