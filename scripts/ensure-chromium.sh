#!/usr/bin/env bash
# ensure-chromium.sh — make Debian's chromium available at /usr/bin/chromium for the console's
# browser test (test/console/). Same rules as ensure-pgvector.sh: cheapest first, root only
# when something must be installed, a file lock so parallel test setups install it once.
#
# Exit status: 0 installed (or already was), 1 failed, 2 cannot do it here (not root / not
# Debian-like); stderr then says what to do instead.
set -euo pipefail

readonly BIN=/usr/bin/chromium
readonly LOCK_FILE=/var/lock/switchyard-ensure-chromium.lock
log() { printf '[chromium] %s\n' "$*"; }
err() { printf '[chromium] %s\n' "$*" >&2; }

if [[ -x "$BIN" ]]; then
  log "chromium already installed"
  exit 0
fi
if [[ ! -f /etc/debian_version ]] || ! command -v apt-get >/dev/null 2>&1; then
  err "this is not a Debian/apt system: install chromium yourself and make it $BIN (or a link to it)."
  exit 2
fi
if ((EUID != 0)); then
  err "installing chromium needs root: sudo $0 (or: sudo apt-get install -y chromium)."
  exit 2
fi

exec 9>"$LOCK_FILE"
if ! flock -n 9; then
  log "another run is installing chromium; waiting for it"
  flock -w 1200 9 || { err "timed out waiting for $LOCK_FILE"; exit 1; }
fi
if [[ -x "$BIN" ]]; then
  log "chromium installed by a concurrent run"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
started=$SECONDS
# The package lists may be missing or stale (a fresh container): refresh them only when the
# install cannot find the package, since an update is the slow part.
if ! apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; then
  log "refreshing the package lists"
  apt-get update -qq
  apt-get install -y --no-install-recommends chromium
fi
[[ -x "$BIN" ]] || { err "apt-get finished but $BIN is missing"; exit 1; }
log "chromium installed in $((SECONDS - started)) s: $("$BIN" --version 2>/dev/null || echo '?')"
