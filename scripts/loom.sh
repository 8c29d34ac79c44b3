#!/usr/bin/env bash
# Loom models of the watermark's publish and wake-up paths (io-real `watermark`, and the
# store's `LogState` behind it): every interleaving of a writer publishing against readers and
# long-poll waiters. Builds in its own target directory (the cfg changes every crate's flags,
# so sharing one would rebuild the normal build from scratch each time). The cfg is
# `ampere_loom`, not loom's customary `loom`: tokio compiles `tokio::net` out under `cfg(loom)`,
# and io-real's dependencies (tokio-postgres) need it.
# Usage: scripts/loom.sh [more `cargo test` args, e.g. `-- --nocapture`]
# LOOM_MAX_PREEMPTIONS bounds the search if a model grows (unset: exhaustive).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ampere-target}-loom"
export RUSTFLAGS="--cfg ampere_loom ${RUSTFLAGS:-}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

cargo test --release -p ampere-io-real --lib loom "$@"
