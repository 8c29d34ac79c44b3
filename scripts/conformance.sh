#!/usr/bin/env bash
# End-to-end conformance suite: the official @electric-sql/client (pinned in
# conformance/package-lock.json) against the ampere binary, under `node --test`.
#
#   scripts/conformance.sh                 # build ampere (release), run every test
#   scripts/conformance.sh conformance/test/03-restart.test.mjs   # chosen test files
#   scripts/conformance.sh bench           # the initial-sync benchmark (one JSON line)
#
# Each test starts its own throwaway Postgres cluster (initdb + postgres, as the `postgres` OS
# user when run as root) and its own ampere, and stops both by PID; see conformance/README.md.
#
# Env: AMPERE_BIN     ampere binary (default ${CARGO_TARGET_DIR:-target}/release/ampere,
#                     built here with `cargo build --release -p ampere-server` unless set)
#      PG_BIN         Postgres server binaries (default: newest /usr/lib/postgresql/*/bin)
#      CONFORMANCE_SKIP_BUILD=1   do not run cargo build
#      AMPERE_LOG_LEVEL           ELECTRIC_LOG_LEVEL given to ampere (default info)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

log() { echo "conformance: $*" >&2; }

# --- Node and the pinned client (npm ci only when the lockfile changed) --------------------------
command -v node >/dev/null || { log "node is required (Node 20+)"; exit 1; }
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then log "Node 20+ required, found $(node --version)"; exit 1; fi
stamp=conformance/node_modules/.conformance-lock
if ! cmp -s conformance/package-lock.json "$stamp" 2>/dev/null; then
  log "npm ci in conformance/"
  (cd conformance && npm ci --no-audit --no-fund --loglevel=error)
  cp conformance/package-lock.json "$stamp"
fi

# --- Postgres server binaries (initdb, postgres) and psql -----------------------------------------
have_pg() {
  if [ -n "${PG_BIN:-}" ]; then [ -x "$PG_BIN/initdb" ]; else ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; fi
}
if ! have_pg || ! command -v psql >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing postgresql-15 (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-client-15 >/dev/null
  else
    log "PostgreSQL server binaries not found: install postgresql-15 or set PG_BIN"; exit 1
  fi
fi

# --- the ampere binary ----------------------------------------------------------------------------
if [ -z "${AMPERE_BIN:-}" ]; then
  target=${CARGO_TARGET_DIR:-$ROOT/target}
  case "$target" in /*) ;; *) target=$ROOT/$target ;; esac
  export AMPERE_BIN=$target/release/ampere
  if [ "${CONFORMANCE_SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release -p ampere-server"
    cargo build --release -p ampere-server
  fi
fi
[ -x "$AMPERE_BIN" ] || { log "ampere binary not found or not executable: $AMPERE_BIN"; exit 1; }
log "AMPERE_BIN=$AMPERE_BIN"

# --- run ------------------------------------------------------------------------------------------
if [ "${1:-}" = bench ]; then
  shift
  exec node conformance/bench-initial-sync.mjs "$@"
fi
if [ $# -eq 0 ]; then set -- conformance/; fi
# one test file at a time: the latency assertions must not compete for the 2 cores.
# --test-force-exit: the client leaves a module-level timer of up to 60 s behind (UpToDateTracker
# throttling its localStorage save), which would otherwise hold each test process open.
exec node --test --test-force-exit --test-concurrency=1 "$@"
