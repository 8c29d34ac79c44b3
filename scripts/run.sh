#!/usr/bin/env bash
# Runs ampere from source: installs what running needs (scripts/install-deps.sh --run; root
# only, a normal user is told the apt-get command), builds the release binary, execs it.
# With DATABASE_URL unset, ampere starts an embedded PostgreSQL from the installed binaries
# inside ELECTRIC_STORAGE_DIR (default ./persistent), as the postgres OS user when run as root.
# Without ELECTRIC_SECRET this development launcher sets ELECTRIC_INSECURE=true (and says so).
# Build output: $CARGO_TARGET_DIR, else /var/tmp/ampere-target when this user may write there
# (root, CI), else ${XDG_CACHE_HOME:-~/.cache}/ampere/target.
#   scripts/run.sh [ampere flags…]
set -euo pipefail
cd "$(dirname "$0")/.."

shared_target=/var/tmp/ampere-target
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  # a normal user never creates the shared dir: root's later builds would leave files in it
  # that this user cannot overwrite
  if [ -d "$shared_target" ] && [ -w "$shared_target" ] \
    || { [ ! -e "$shared_target" ] && [ "$(id -u)" = 0 ]; }; then
    CARGO_TARGET_DIR=$shared_target
  else
    CARGO_TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/ampere/target"
  fi
fi
export CARGO_TARGET_DIR

scripts/install-deps.sh --run
if ! command -v cargo >/dev/null 2>&1; then
  echo "run.sh: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi
if [ -z "${ELECTRIC_SECRET:-}" ] && [ -z "${ELECTRIC_INSECURE:-}" ]; then
  echo "run.sh: ELECTRIC_SECRET unset: running with ELECTRIC_INSECURE=true (development only)" >&2
  export ELECTRIC_INSECURE=true
fi
echo "run.sh: building ampere (release) in $CARGO_TARGET_DIR; the first build takes minutes" >&2
cargo build --release --locked -p ampere-server --bin ampere
exec "$CARGO_TARGET_DIR/release/ampere" "$@"
