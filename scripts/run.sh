#!/usr/bin/env bash
# Runs ampere from source. With DATABASE_URL unset, ampere starts an embedded PostgreSQL from
# the installed binaries inside ELECTRIC_STORAGE_DIR (default ./persistent).
# Without ELECTRIC_SECRET this development launcher sets ELECTRIC_INSECURE=true (and says so).
#   scripts/run.sh [ampere flags…]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ampere-target}"
scripts/install-deps.sh
if [ -z "${ELECTRIC_SECRET:-}" ] && [ -z "${ELECTRIC_INSECURE:-}" ]; then
  echo "run.sh: ELECTRIC_SECRET unset: running with ELECTRIC_INSECURE=true (development only)" >&2
  export ELECTRIC_INSECURE=true
fi
cargo build --release --locked -p ampere-server --bin ampere
exec "$CARGO_TARGET_DIR/release/ampere" "$@"
