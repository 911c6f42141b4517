#!/usr/bin/env bash
# Model-checks the shared-memory ring's memory ordering with loom (every interleaving of a
# producer and a consumer thread, bounded preemptions). Stable toolchain; a separate target
# directory, since --cfg loom rebuilds everything.
set -euo pipefail
cd "$(dirname "$0")/.."
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom" \
    cargo test --locked -p postbox-shm --test loom --release
