#!/usr/bin/env bash
# The mutation check: each deliberately wrong core (a `mutant-*` feature of ampere-core) must
# be caught by the simulation's CI seed list. Prints the seed that caught each one.
# Usage: scripts/mutants.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ampere-target}"
for mutant in mutant-ack-before-fsync mutant-skip-xip-filter mutant-reuse-handle-after-purge; do
  printf '\n== %s\n' "$mutant"
  cargo test --locked -q -p ampere-sim-tests --features "$mutant" --test sim \
    -- the_ci_seed_list_catches_this_mutant --exact --nocapture 2>&1 | grep -E "MUTANT|test result|survived|panicked" 
done
