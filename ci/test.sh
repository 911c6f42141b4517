#!/usr/bin/env bash
# The project's test command (README): formatting, lints, docs, every test, benches compiled,
# and a short run of each fuzz target. Needs only the Rust toolchain; it installs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
# No incremental caches: a clean run never reuses them, and they double the target's size.
export CARGO_INCREMENTAL=0

step() { printf '\n=== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc (-D warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"

step "loom (ring memory ordering)"
ci/loom.sh 2>&1 | tee -a "$log"

step "miri (shared-memory crate)"
ci/miri.sh 2>&1 | tee -a "$log"

step "examples run"
cargo run --locked --quiet -p postbox --example async_server
# The typed RPC example: a client process that starts its server process (built first).
cargo build --locked --quiet -p postbox --example add_server
cargo run --locked --quiet -p postbox --example add_client

step "benches compile"
cargo bench --workspace --locked --no-run

if [ -x ci/fuzz-smoke.sh ]; then
  step "fuzz smoke"
  ci/fuzz-smoke.sh
fi

# One closing line for the whole run: every test binary's counts added up.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
