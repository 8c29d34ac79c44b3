#!/usr/bin/env bash
# The mutation check: each deliberately wrong core (`ampere_core::mutant`, carried inactive by
# every build with the core's `sim` feature and picked by AMPERE_MUTANT) must be caught by the
# simulation's CI seed list. Prints the seed that caught each one; fails if one survives.
# The simulation binary is the one `cargo test --workspace` builds (same packages, same
# features: nothing is rebuilt after it; `-p ampere-sim-tests` alone would resolve other
# dependency features and rebuild half the tree).
# Usage: scripts/mutants.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ampere-target}"
cargo test --locked -q --workspace --test sim --no-run
for mutant in ack-before-fsync skip-xip-filter reuse-handle-after-purge forget-unrecovered-shapes; do
  printf '\n== mutant %s\n' "$mutant"
  AMPERE_MUTANT="$mutant" cargo test --locked -q --workspace \
    --test sim -- the_ci_seed_list_catches_this_mutant --exact --nocapture 2>&1 |
    grep -E "MUTANT|mutant active|test result|survived|panicked"
done
