#!/usr/bin/env bash
# What the bench scripts share (bench.sh, bench-soak.sh, bench-xregion.sh): the load generator
# built first, the stack started if it is not up (and stopped at the end only then), the
# services always started and stopped by the script itself, and the combined report of every
# result in $RUN_DIR/bench. Sourced after lib.sh, from the repository root.
# shellcheck shell=bash
BIN="$REPO/.venv/bin"
OUT="$RUN_DIR/bench"
# One load generator plays every counter of the city: intake's per-client limit out of the way.
export TONGBAN_RATE_LIMIT_PER_S=${TONGBAN_RATE_LIMIT_PER_S:-100000}
export TONGBAN_RATE_LIMIT_BURST=${TONGBAN_RATE_LIMIT_BURST:-100000}
export TONGBAN_RUN_DIR=$RUN_DIR

started_stack=0
bench_cleanup() {
  bash "$LOCAL_DIR/services.sh" down >/dev/null 2>&1 || true
  if (( started_stack )); then
    bash "$LOCAL_DIR/stack.sh" down || true
  fi
}

# The load generator, then the stack (started if not up), its schemas and topics, and no
# services left from this run folder; the cleanup trap set.
bench_prepare() {
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
  say "building the load generator (Go; first build about 30 s, then cached)"
  "$BIN/python" -m services.bench build-loadgen || die "the load generator did not build (see above)"
  if bash "$LOCAL_DIR/stack.sh" status >/dev/null 2>&1; then
    say "using the stack already running from $RUN_DIR (left running afterwards)"
  else
    bash "$LOCAL_DIR/stack.sh" up || die "the stack did not start"
    started_stack=1
  fi
  # shellcheck disable=SC1091
  source "$RUN_DIR/env"
  "$BIN/tongban" migrate >/dev/null && "$BIN/tongban" topics >/dev/null || die "migrate/topics failed"
  bash "$LOCAL_DIR/services.sh" down >/dev/null 2>&1 || true
  mkdir -p "$OUT"
}

# The combined report (table, bench.json, bench.png) of the results found in $OUT: those of
# `make bench` and of the separate soak and cross-region runs, whichever were made.
bench_report() {
  local runs=() f
  for f in "$OUT"/e2e-r*.json; do [[ -f $f ]] && runs+=("$f"); done
  "$BIN/python" -m services.bench report --raw "$OUT/raw.json" "${runs[@]}" \
    --tracing-off "$OUT/e2e-untraced.json" --members "$OUT/members.json" \
    --runtime "$OUT/runtime.json" --xregion "$OUT/xregion.json" --soak "$OUT/soak.json" \
    --out "$OUT/bench.json" --plot "$OUT/bench.png"
}
