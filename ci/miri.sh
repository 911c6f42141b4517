#!/usr/bin/env bash
# Runs the shared-memory crate's tests under Miri (undefined behaviour in the unsafe code and
# its process-local backing). Needs a nightly toolchain with the miri component; installs them
# when it can, and says so plainly when it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo +nightly miri --version >/dev/null 2>&1; then
    if ! rustup toolchain list | grep -q '^nightly'; then
        rustup toolchain install nightly --profile minimal || true
    fi
    rustup component add --toolchain nightly miri rust-src || true
fi
if ! cargo +nightly miri --version >/dev/null 2>&1; then
    echo "miri: SKIPPED, no nightly toolchain with miri could be installed here"
    exit 0
fi
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/miri" cargo +nightly miri test -p postbox-shm --lib
