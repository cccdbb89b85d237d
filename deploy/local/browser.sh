#!/usr/bin/env bash
# What the operator console's browser test needs: Debian's Chromium (plus a CJK font, so the
# catalog's Chinese names render in screenshots) and playwright-core in tests/browser/.
#
# Playwright never downloads a browser here (no `npx playwright install`): the test launches
# /usr/bin/chromium through playwright-core's `executablePath`.
#
# Usage: deploy/local/browser.sh        (fast no-op when both are already in place)
# Env:   CHROMIUM (default /usr/bin/chromium): skip the apt step when it is executable.
# Output: /usr/bin/chromium, tests/browser/node_modules/ (gitignored), log .run/logs/browser.log
# shellcheck source-path=SCRIPTDIR disable=SC2034  # SCRIPT_NAME is read by lib.sh
set -euo pipefail
SCRIPT_NAME=browser
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
TESTS="$REPO/tests/browser"
MARKER="$TESTS/node_modules/.installed-lock"
LOG="$LOG_DIR/browser.log"
APT_PACKAGES=(chromium fonts-wqy-microhei)
mkdir -p "$LOG_DIR"
t0=$(now)

if [[ -x $CHROMIUM ]]; then
  say "Chromium present: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
else
  command -v apt-get >/dev/null 2>&1 || die "$CHROMIUM is missing and there is no apt-get: install Chromium and set CHROMIUM=/path/to/chromium"
  sudo=()
  if (( EUID != 0 )); then
    command -v sudo >/dev/null 2>&1 || die "$CHROMIUM is missing; installing it needs root: sudo apt-get install ${APT_PACKAGES[*]}"
    sudo=(sudo)
  fi
  say "installing ${APT_PACKAGES[*]} from Debian (log: $LOG) ..."
  t=$(now)
  if ! "${sudo[@]}" apt-get update >>"$LOG" 2>&1 </dev/null; then
    show_log_tail "$LOG"
    die "apt-get update failed; see $LOG"
  fi
  if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends \
       "${APT_PACKAGES[@]}" >>"$LOG" 2>&1 </dev/null; then
    show_log_tail "$LOG"
    die "apt-get install ${APT_PACKAGES[*]} failed; see $LOG"
  fi
  [[ -x $CHROMIUM ]] || die "apt-get installed chromium but $CHROMIUM is not there"
  say "installed $("$CHROMIUM" --version 2>/dev/null) in $(since "$t")s"
fi

command -v npm >/dev/null 2>&1 || die "npm not found: install Node.js 20+ with npm (e.g. apt-get install nodejs npm)"
want=$(sha256sum "$TESTS/package-lock.json" | cut -d' ' -f1)
if [[ -f $MARKER && $(<"$MARKER") == "$want" && -d $TESTS/node_modules/playwright-core ]]; then
  say "playwright-core already installed in tests/browser/node_modules"
else
  say "npm ci in tests/browser (playwright-core; no browser download) ..."
  t=$(now)
  # PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: belt and braces; playwright-core itself downloads nothing.
  if ! (cd "$TESTS" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund \
        --loglevel=error >>"$LOG" 2>&1 </dev/null); then
    show_log_tail "$LOG"
    die "npm ci failed in $TESTS; see $LOG"
  fi
  printf '%s' "$want" >"$MARKER"
  say "playwright-core $(node -p "require('$TESTS/node_modules/playwright-core/package.json').version") installed in $(since "$t")s"
fi
say "browser test prerequisites ready in $(since "$t0")s"
