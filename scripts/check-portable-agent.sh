#!/usr/bin/env bash
# Prove the portable agent runs on glibc 2.31: a Debian 11 root made with debootstrap from
# Debian's packages, the agent and the default model copied in, and the agent run there
# (version, environment report, and a real generation with the model). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${DEB11_ROOT:-/opt/deb11}
bin=target/portable/x86_64-unknown-linux-gnu/release/gpuctl-agent
[ -x "$bin" ] || scripts/build-portable-agent.sh
if [ ! -x "$ROOT/bin/sh" ]; then
  command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap; }
  debootstrap --variant=minbase bullseye "$ROOT" http://deb.debian.org/debian
fi
cp "$bin" "$ROOT/gpuctl-agent"
cp models/SmolLM2-135M-Instruct.Q4_1.gguf "$ROOT/model.gguf"
echo "root: $(chroot "$ROOT" /bin/sh -c '. /etc/os-release; echo $PRETTY_NAME'), $(chroot "$ROOT" ldd --version | head -1)"
chroot "$ROOT" /gpuctl-agent version
chroot "$ROOT" /gpuctl-agent env-report | sed -n '1,12p'
chroot "$ROOT" /gpuctl-agent bench --model /model.gguf --prompt "Hello" --tokens 8 | head -c 300; echo
rm -f "$ROOT/gpuctl-agent" "$ROOT/model.gguf"
