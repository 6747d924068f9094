#!/usr/bin/env bash
# What the H200 calls carry, made here (the device has no cargo and no network):
#   .device/bin/gpuctl-agent.xz  the agent with candle's CUDA path (scripts/build-cuda-agent.sh)
#   .device/bin/gpuctl.xz        the controller (release, stripped)
#   .device/assets/              the default model's tokenizer and chat template
#   .device/parts/gguf.part1|2   the default model's GGUF in two parts: a call carries at
#                                most 64 MiB with the binaries, the model is 94 MiB
# usage: bench/device/prepare.sh [--skip-agent]; then carry .device (git-ignored via
# .git/info/exclude) in call 1 with parts/gguf.part1 moved into .device/, in call 2 with
# only parts/gguf.part2 (h200_7b.sh and h200_gguf.sh say which).
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.device/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.device/' >> .git/info/exclude; }
[ "${1:-}" = "--skip-agent" ] || scripts/build-cuda-agent.sh
cargo build --release --locked -p gpuctl -p gpuctl-agent
mkdir -p .device/bin .device/assets .device/parts
strip -o .device/bin/gpuctl target/release/gpuctl && xz -f -T2 -6 .device/bin/gpuctl
target/release/gpuctl-agent export-tokenizer --model models/SmolLM2-135M-Instruct.Q4_1.gguf --out .device/assets
# The first part is the larger that fits beside the binaries; the second travels alone.
head -c 44000000 models/SmolLM2-135M-Instruct.Q4_1.gguf > .device/parts/gguf.part1
tail -c +44000001 models/SmolLM2-135M-Instruct.Q4_1.gguf > .device/parts/gguf.part2
du -sh .device/bin/* .device/parts/*
