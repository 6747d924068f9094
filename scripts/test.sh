#!/usr/bin/env bash
# Install what the tests need, then run every check CI runs: format, lints, all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
scripts/fetch-model.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
