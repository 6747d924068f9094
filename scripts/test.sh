#!/usr/bin/env bash
# Install what the tests need, then run every check CI runs: format, lints, all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
scripts/fetch-model.sh
# The tests run `python3` with the pinned test packages.
. scripts/lib/test-venv.sh
export PATH="$GPUCTL_TEST_VENV/bin:$PATH"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests run the real agent binary beside gpuctl: build it first.
cargo build --workspace --locked
cargo test --workspace --locked
