#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a few seconds each (default 10): a smoke test that
# the decoders survive hostile input, not a fuzzing campaign.
#
#   ci/fuzz-smoke.sh            # every target, FUZZ_SECONDS (default 10) each
#   FUZZ_SECONDS=60 ci/fuzz-smoke.sh frame_decoder
#
# cargo fuzz wants a nightly toolchain for AddressSanitizer (-Zsanitizer=address). Where no
# nightly is installed and `rustup toolchain install nightly` fails, the targets are run on
# stable with `--sanitizer none`: still libFuzzer with coverage feedback (sancov), debug
# assertions and overflow checks, only without ASan, which matters little for postbox-core
# (#![forbid(unsafe_code)]). FUZZ_TOOLCHAIN=stable forces that path.
#
# Seeds are read from fuzz/corpus/<target>/; new inputs go to a temporary directory, so the
# run leaves the tree clean. A crash leaves its input in fuzz/artifacts/<target>/ and makes the
# script exit non-zero.
set -euo pipefail

cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-10}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

toolchain="${FUZZ_TOOLCHAIN:-}"
if [[ -z "$toolchain" ]]; then
    if rustup toolchain list | grep -q '^nightly'; then
        toolchain=nightly
    elif rustup toolchain install nightly --profile minimal; then
        toolchain=nightly
    else
        echo "fuzz-smoke: no nightly toolchain could be installed; falling back to stable"
        toolchain=stable
    fi
fi

sanitizer_args=()
if [[ "$toolchain" != nightly* ]]; then
    sanitizer_args=(--sanitizer none)
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo "+$toolchain" fuzz list --fuzz-dir fuzz)
fi
if [[ ${#targets[@]} -eq 0 ]]; then
    echo "fuzz-smoke: no fuzz targets found" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "fuzz-smoke: $(cargo "+$toolchain" fuzz --version), toolchain $toolchain," \
    "sanitizer ${sanitizer_args[1]:-address}, ${seconds}s per target"

cargo "+$toolchain" fuzz build --fuzz-dir fuzz "${sanitizer_args[@]}"

failed=()
for target in "${targets[@]}"; do
    seeds=()
    if [[ -d "fuzz/corpus/$target" ]]; then
        seeds=("fuzz/corpus/$target")
    fi
    mkdir -p "$work/$target"
    echo "fuzz-smoke: running $target for ${seconds}s"
    if cargo "+$toolchain" fuzz run --fuzz-dir fuzz "${sanitizer_args[@]}" "$target" \
        "$work/$target" "${seeds[@]}" -- -max_total_time="$seconds" -timeout=10 \
        -print_final_stats=1 >"$work/$target.log" 2>&1; then
        runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/$target.log" |
            grep -o '[0-9]*$' || true)"
        cov="$(grep -o 'cov: [0-9]*' "$work/$target.log" | tail -n 1 || true)"
        echo "fuzz-smoke: $target ok (${runs:-?} inputs, ${cov:-cov: ?})"
    else
        tail -n 40 "$work/$target.log"
        echo "fuzz-smoke: $target FAILED (crashing input under fuzz/artifacts/$target/)"
        failed+=("$target")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz-smoke: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz-smoke: all ${#targets[@]} target(s) ran ${seconds}s without a crash"
