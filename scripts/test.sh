#!/usr/bin/env bash
# The whole test suite: unit and integration tests (real throwaway PostgreSQL clusters,
# container scenarios, the simulation's seed list), a fresh clone's first run (scripts/run.sh
# as root and as a normal user), the mutation check, the loom models, then
# the conformance suite with the official @electric-sql/client under Node.
# Installs what it needs (idempotently). Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Build output outside the checkout, reused across runs when it exists.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ampere-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s (at %ds)\n' "$*" "$SECONDS"; }

step "dependencies"
scripts/install-deps.sh
if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi

step "docker engine + registry-free postgres image (container scenarios)"
scripts/docker-up.sh
scripts/build-pg-image.sh ampere-pg-local:15
# ampere's own image is built by the container test from the binary cargo builds for it; this
# installs what that needs (busybox-static, and docker-compose to run deploy/compose/*.yaml)
scripts/build-ampere-image.sh --deps-only

step "cargo test (unit, integration against real PostgreSQL, container scenarios, simulation seed list)"
cargo test --workspace --locked

step "first run: a fresh clone's scripts/run.sh, embedded PostgreSQL, as root and as a normal user"
scripts/test-fresh-clone.sh

step "mutation check: each deliberately wrong core is caught by the simulation's seed list"
scripts/mutants.sh

step "loom models: watermark publish and long-poll wake-up, every interleaving"
scripts/loom.sh

step "conformance: official @electric-sql/client against ampere"
# The binary `cargo test --workspace` built for the server's integration tests (a no-op here):
# `cargo build -p ampere-server` would resolve other dependency features and rebuild half the
# tree (7 min cold).
cargo test --workspace --locked --no-run
AMPERE_BIN="$CARGO_TARGET_DIR/debug/ampere" scripts/conformance.sh

step "PostgreSQL versions: Postgres-facing tests and conformance against PG 14, 16, 17, 18"
AMPERE_BIN="$CARGO_TARGET_DIR/debug/ampere" scripts/test-pg-versions.sh
step "done"
