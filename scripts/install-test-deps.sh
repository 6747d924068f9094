#!/usr/bin/env bash
# System packages the tests use (Debian/Ubuntu). Skipped when already present.
set -euo pipefail

need=()
# A real OpenSSH server for the SSH-route tests (the tests start their own, on 127.0.0.1).
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v git >/dev/null || need+=(git)
command -v python3 >/dev/null || need+=(python3 python3-pip)
command -v sha256sum >/dev/null || need+=(coreutils)
# Debian's chromium, headless, opens the HTML reports the way a reviewer would.
command -v chromium >/dev/null || need+=(chromium)
# The full-disk test mounts a tiny tmpfs in its own mount namespace.
command -v unshare >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing ${need[*]}; run as root or install them" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# OpenAI's own Python client, to check the agent's API against it.
if ! python3 -c 'import openai' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'openai>=1.50,<4'
fi
# A real third-party OpenAI-compatible server for the supervision tests: llama.cpp's, from
# llama-cpp-python (built from source by pip: about 5 minutes on 2 cores, once).
if ! python3 -c 'import llama_cpp.server' 2>/dev/null; then
  CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_OPENMP=ON" python3 -m pip install --quiet --disable-pip-version-check \
    --root-user-action=ignore 'llama-cpp-python[server]==0.3.36'
fi
# The free_colab notebook is executed headless on CPU: nbclient with a Python kernel, and
# the transformers it pins (torch from PyPI: about 3 GB with its CUDA libraries, ~1 minute).
if ! python3 -c 'import nbclient, nbformat, ipykernel, torch, transformers' 2>/dev/null \
  || [ "$(python3 -c 'import transformers; print(transformers.__version__)')" != "5.24.0" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    'torch==2.15.0' 'transformers==5.24.0' 'nbclient==0.11.0' 'nbformat==5.11.1' 'ipykernel==7.4.0'
fi
echo "test deps: ok"
