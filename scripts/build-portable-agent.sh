#!/usr/bin/env bash
# Build gpuctl-agent for hosts with an older glibc than this machine's: rented images are
# often Ubuntu 20.04 (glibc 2.31). cargo-zigbuild links against glibc 2.31's symbols with
# zig's cross toolchain (zig from PyPI's ziglang package).
#
# output: target/portable/x86_64-unknown-linux-gnu/release/gpuctl-agent (needs glibc >= 2.31)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import ziglang' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore ziglang
command -v cargo-zigbuild >/dev/null || cargo install cargo-zigbuild --locked
CARGO_TARGET_DIR=target/portable cargo zigbuild --release -p gpuctl-agent --target x86_64-unknown-linux-gnu.2.31
bin=target/portable/x86_64-unknown-linux-gnu/release/gpuctl-agent
need=$(grep -aoE 'GLIBC_2\.[0-9]+' "$bin" | sort -t. -k2 -n | tail -1)
echo "built $bin (highest glibc symbol version: $need)"
