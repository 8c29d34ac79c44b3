#!/usr/bin/env bash
# Loom models of the watermark's publish and wake-up paths (io-real `watermark`, and the
# store's `LogState` behind it): every interleaving of a writer publishing against readers and
# long-poll waiters. io-real's `loom` feature swaps the watermark's mutex for loom's; only
# io-real's own unit tests are built with it, in the usual target directory (the test profile
# optimises io-real and its dependencies already), so the dependencies `cargo test` built are
# reused.
# Usage: scripts/loom.sh [more `cargo test` args, e.g. `-- --nocapture`]
# LOOM_MAX_PREEMPTIONS bounds the search if a model grows (unset: exhaustive).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ampere-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

cargo test --locked -p ampere-io-real --features loom --lib loom "$@"
