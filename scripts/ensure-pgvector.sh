#!/usr/bin/env bash
# ensure-pgvector.sh — make the `vector` extension available to the local
# PostgreSQL server (Debian / apt based systems).
#
# Usage: scripts/ensure-pgvector.sh [PG_MAJOR]
#
#   PG_MAJOR  major version of the server to install into (e.g. 15). Default:
#             asked from the running server, else the newest one installed
#             under /usr/lib/postgresql.
#
# Strategy, cheapest first:
#   1. Already installed for PG_MAJOR -> exit 0 at once (no root needed).
#   2. The configured apt sources carry postgresql-PG_MAJOR-pgvector (Ubuntu,
#      Debian trixie+, apt.postgresql.org) -> install that package.
#   3. Debian without such a package (bookworm): fetch the pgvector *source*
#      package from Debian's trixie suite through a throwaway apt config and
#      build it against postgresql-server-dev-PG_MAJOR. Only source is taken
#      from trixie; no trixie binary package is ever installed, and the
#      machine's own apt configuration and package lists are left untouched.
#
# Exit status: 0 installed (or already was), 1 failed, 2 cannot do it here
# (not root / not Debian-like); stderr then says what to do instead.
#
# Environment (all optional):
#   PGVECTOR_SOURCE_SUITE   Debian suite to take the source from (trixie)
#   PGVECTOR_DEBIAN_MIRROR  Debian archive URI; default: the one this machine's
#                           apt sources already use for its own release
#   PGHOST/PGPORT/PGUSER    server used for detection and the final check
#                           (default 127.0.0.1 / 5432 / postgres)
set -euo pipefail

readonly SOURCE_SUITE="${PGVECTOR_SOURCE_SUITE:-trixie}"
readonly LOCK_FILE="/var/lock/switchyard-ensure-pgvector.lock"
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
# Never let a dead server or a password prompt hang the script.
export PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-5}"

log() { printf '[pgvector] %s\n' "$*"; }
err() { printf '[pgvector] %s\n' "$*" >&2; }
die() { err "error: $*"; exit 1; }

# What to do when this script cannot install anything itself.
cannot() {
  err "$1"
  cat >&2 <<EOF
[pgvector] Switchyard needs the pgvector extension ('vector') in PostgreSQL. Options:
[pgvector]   - re-run this script as root on Debian/Ubuntu: sudo $0 ${MAJOR:-}
[pgvector]   - install pgvector from your distribution or the PostgreSQL apt/yum
[pgvector]     repositories (package postgresql-${MAJOR:-NN}-pgvector / pgvector_${MAJOR:-NN}),
[pgvector]     or build it from source as the pgvector README describes
[pgvector]   - use the bundled database instead: docker compose up -d db
[pgvector]     (image pgvector/pgvector:pg16, see docker-compose.yml)
[pgvector]   - point DATABASE_URL at a managed PostgreSQL that offers pgvector
EOF
  exit 2
}

detect_major() {
  local num dir best=""
  # The running server is authoritative: several majors may be installed.
  if command -v psql >/dev/null 2>&1 &&
    num="$(psql -d postgres -XtAc 'show server_version_num' 2>/dev/null)" &&
    [[ "$num" =~ ^[0-9]+$ ]]; then
    echo $((num / 10000))
    return
  fi
  for dir in /usr/lib/postgresql/*/; do
    dir="${dir%/}"; dir="${dir##*/}"
    if [[ "$dir" =~ ^[0-9]+$ ]] && { [[ -z "$best" ]] || ((dir > best)); }; then
      best="$dir"
    fi
  done
  [[ -n "$best" ]] || return 1
  echo "$best"
}

MAJOR="${1:-}"
if [[ -z "$MAJOR" ]]; then
  MAJOR="$(detect_major)" || cannot "no PostgreSQL server found (not running at $PGHOST:$PGPORT, nothing in /usr/lib/postgresql); pass PG_MAJOR."
fi
[[ "$MAJOR" =~ ^[0-9]+$ ]] || die "PG_MAJOR must be a number, got '$MAJOR'"
readonly MAJOR
readonly CONTROL="/usr/share/postgresql/$MAJOR/extension/vector.control"
readonly PG_CONFIG="/usr/lib/postgresql/$MAJOR/bin/pg_config"

# Fast path: the common case on every run after the first.
if [[ -f "$CONTROL" ]]; then
  log "vector already installed for PostgreSQL $MAJOR"
  exit 0
fi

if [[ ! -f /etc/debian_version ]] || ! command -v apt-get >/dev/null 2>&1; then
  cannot "this is not a Debian/apt system, so pgvector cannot be installed automatically."
fi
((EUID == 0)) || cannot "installing pgvector needs root (apt-get, make install)."

# Serialise concurrent runs (parallel test setups): the loser waits, then
# finds the extension installed by the winner and exits 0.
exec 9>"$LOCK_FILE"
if ! flock -n 9; then
  log "another run is installing pgvector; waiting for it"
  flock -w 1200 9 || die "timed out waiting for $LOCK_FILE"
fi
if [[ -f "$CONTROL" ]]; then
  log "vector installed for PostgreSQL $MAJOR by a concurrent run"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
started=$SECONDS
TMP="$(mktemp -d /tmp/ensure-pgvector.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
# apt fetches as the unprivileged _apt user, which must be able to traverse.
chmod 755 "$TMP"
readonly TMP LOGFILE="$TMP/log"

# Keep apt/make chatter out of the way unless something fails.
quiet() {
  if ! "$@" >"$LOGFILE" 2>&1; then
    tail -n 40 "$LOGFILE" >&2
    die "failed: $*"
  fi
}

is_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

has_candidate() {
  local c
  c="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')"
  [[ -n "$c" && "$c" != "(none)" ]]
}

apt_updated=""
apt_install() {
  local pkg missing=()
  for pkg in "$@"; do is_installed "$pkg" || missing+=("$pkg"); done
  ((${#missing[@]})) || return 0
  # Refresh the lists only when they lack something we need (saves ~10 s).
  for pkg in "${missing[@]}"; do
    if [[ -z "$apt_updated" ]] && ! has_candidate "$pkg"; then
      log "apt-get update"
      quiet apt-get update
      apt_updated=1
    fi
  done
  log "apt-get install ${missing[*]}"
  quiet apt-get install -y --no-install-recommends "${missing[@]}"
}

verify() {
  local out
  # Inside a rolled-back transaction: proves CREATE EXTENSION works without
  # leaving anything behind, even if interrupted.
  if ! psql -d postgres -XtAc 'select 1' >/dev/null 2>&1; then
    log "installed; no server reachable at $PGHOST:$PGPORT to test it on (skipped)"
    return 0
  fi
  out="$(psql -d postgres -X -v ON_ERROR_STOP=1 -tA -c "begin; create extension if not exists vector; select '[1,2,3]'::vector <-> '[1,2,4]'::vector; rollback;" 2>&1)" ||
    { err "$out"; die "files installed, but CREATE EXTENSION vector failed (is the server PostgreSQL $MAJOR?)"; }
  log "verified: create extension vector works (test distance $(grep -xE '[0-9.]+' <<<"$out"))"
}

# 2. A ready-made package, if the configured sources have one.
pkg="postgresql-$MAJOR-pgvector"
if has_candidate "$pkg"; then
  apt_install "$pkg"
  [[ -f "$CONTROL" ]] || die "$pkg installed but $CONTROL is missing"
  verify
  log "done in $((SECONDS - started)) s"
  exit 0
fi

# 3. Build from Debian's source package. Building from trixie only makes sense
# on Debian itself (its archive carries the suite); derivatives go to step 1.
# shellcheck source=/dev/null
. /etc/os-release
[[ "${ID:-}" == "debian" ]] ||
  cannot "no $pkg package in the configured apt sources of this ${PRETTY_NAME:-system}."
[[ -n "${VERSION_CODENAME:-}" ]] || die "cannot tell the Debian release (VERSION_CODENAME unset)"

# dpkg-dev: apt-get source unpacks with dpkg-source. gcc/make/libc6-dev: the
# build (server-dev pulls clang/llvm for PGXS's JIT bitcode itself).
apt_install "postgresql-server-dev-$MAJOR" dpkg-dev make gcc libc6-dev
[[ -x "$PG_CONFIG" ]] || die "$PG_CONFIG missing after installing postgresql-server-dev-$MAJOR"

# Reuse the Debian mirror this machine already uses (it may be a local or
# snapshot mirror; it is the only one reachable in locked-down setups). Asked
# from apt itself so both sources.list and deb822 formats are covered;
# Origin=Debian skips third-party repos that also name their suite after the
# release. The lists are fresh enough to know Origin after apt_install.
mirror="${PGVECTOR_DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
  # shellcheck disable=SC2016 # $(...) is apt's format syntax, not the shell's
  mirror="$(apt-get indextargets --format '$(ORIGIN) $(REPO_URI)' \
    "Release: $VERSION_CODENAME" 'Target-Of: deb' 2>/dev/null |
    awk '$1 == "Debian" {print $2; exit}')"
fi
[[ -n "$mirror" ]] ||
  die "no Debian mirror for '$VERSION_CODENAME' found in the apt sources; set PGVECTOR_DEBIAN_MIRROR"

# Throwaway apt config: only a deb-src line for the source suite, with its
# own lists and caches, so the system's sources, lists and pkgcache.bin stay
# exactly as they were.
aptdir="$TMP/apt"
mkdir -p "$aptdir/sources.list.d" "$aptdir/lists/partial" "$aptdir/cache/archives/partial"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
opts=""
[[ -f "$keyring" ]] && opts="[signed-by=$keyring] "
echo "deb-src ${opts}${mirror%/} $SOURCE_SUITE main" >"$aptdir/sources.list"
apt_tmp=(
  -o "Dir::Etc::SourceList=$aptdir/sources.list"
  -o "Dir::Etc::SourceParts=$aptdir/sources.list.d"
  -o "Dir::State::Lists=$aptdir/lists"
  -o "Dir::Cache=$aptdir/cache"
  -o "APT::Get::List-Cleanup=false"
)

log "fetching pgvector source from Debian $SOURCE_SUITE"
quiet apt-get "${apt_tmp[@]}" update
src="$TMP/src"
mkdir -p "$src"
# apt downloads as the unprivileged _apt user; let it write here (otherwise
# it warns and falls back to downloading as root).
if id _apt >/dev/null 2>&1; then chown _apt "$src"; fi
(cd "$src" && quiet apt-get "${apt_tmp[@]}" source --only-source pgvector)
builddir=""
for d in "$src"/pgvector-*/; do [[ -d "$d" ]] && builddir="$d"; done
[[ -n "$builddir" ]] || die "apt-get source pgvector produced no source tree"
log "building ${builddir%/} against PostgreSQL $MAJOR"
# OPTFLAGS="": no -march=native, so the module still loads if this machine
# image moves to another CPU (pgvector dispatches SIMD at runtime anyway).
quiet make -C "$builddir" -j"$(nproc)" PG_CONFIG="$PG_CONFIG" OPTFLAGS=""
quiet make -C "$builddir" install PG_CONFIG="$PG_CONFIG" OPTFLAGS=""
[[ -f "$CONTROL" ]] || die "make install did not produce $CONTROL"

verify
log "done in $((SECONDS - started)) s"
