#!/usr/bin/env bash
# Build gpuctl-agent with candle's CUDA code path on a machine without CUDA installed:
# nvcc, NVVM and the CUDA headers and libraries come from NVIDIA's PyPI wheels (CUDA 13.0,
# which the 580 driver runs). The driver library (libcuda) is only linked against, so a
# stub with its symbols stands in at link time; the real one is the GPU host's.
#
# usage: scripts/build-cuda-agent.sh [COMPUTE_CAP]   (default 90: H100/H200)
# output: target/cuda/release/gpuctl-agent, and .device/bin/gpuctl-agent.xz (stripped) for
# the device runs of bench/device/.
set -euo pipefail
cd "$(dirname "$0")/.."
CAP=${1:-90}
CUDA=${CUDA_WHEEL_ROOT:-/opt/cuda13}
WHEELS=$CUDA/wheels

if [ ! -x "$CUDA/bin/nvcc" ]; then
  mkdir -p "$WHEELS"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2010_x86_64 --platform manylinux_2_12_x86_64 -d "$WHEELS" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-cccl==13.0.85 "nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*" "nvidia-cuda-nvrtc==13.0.*"
  tmp=$(mktemp -d)
  for w in "$WHEELS"/*.whl; do unzip -q -o "$w" -d "$tmp"; done
  cp -r "$tmp"/nvidia/cu13/. "$CUDA"/
  rm -rf "$tmp"
  chmod +x "$CUDA"/bin/* "$CUDA"/nvvm/bin/*
fi

# Unversioned names for the linker.
L=$CUDA/linklib
mkdir -p "$L"
for lib in nvrtc.so.13 curand.so.10 cublas.so.13 cublasLt.so.13 cudart.so.13; do
  ln -sf "$CUDA/lib/lib$lib" "$L/lib${lib%%.so*}.so"
done
# candle links the driver API directly: a stub libcuda.so.1 with the same symbols, read
# from cudarc's source (fetched first: a fresh machine has not downloaded it yet).
if [ ! -f "$L/libcuda.so" ]; then
  cargo fetch --locked
  grep -rhoE '\bcu[A-Z][A-Za-z0-9_]+\b' ~/.cargo/registry/src/*/cudarc-0.19.*/src/driver/sys/*.rs 2>/dev/null \
    | sort -u | awk '{print "void " $1 "(void) {}"}' > "$L/cuda_stub.c"
  gcc -shared -fPIC -o "$L/libcuda.so" -Wl,-soname,libcuda.so.1 "$L/cuda_stub.c"
fi

export PATH=$CUDA/bin:$PATH CUDA_ROOT=$CUDA CUDA_PATH=$CUDA CUDA_COMPUTE_CAP=$CAP
CARGO_TARGET_DIR=target/cuda RUSTFLAGS="-L $L" cargo build --release -p gpuctl-agent --features cuda
mkdir -p .device/bin
strip -o .device/bin/gpuctl-agent target/cuda/release/gpuctl-agent
xz -f -T2 -6 .device/bin/gpuctl-agent
echo "built target/cuda/release/gpuctl-agent (CUDA compute capability $CAP) and .device/bin/gpuctl-agent.xz"
