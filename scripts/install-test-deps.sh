#!/usr/bin/env bash
# What the tests need: Debian packages, and a Python environment with every package pinned
# (scripts/test-requirements.txt names what the tests use, scripts/test-constraints.txt
# pins it and everything it pulls in). Skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/test-venv.sh

need=()
# A real OpenSSH server for the SSH-route tests (the tests start their own, on 127.0.0.1).
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v git >/dev/null || need+=(git)
command -v python3 >/dev/null || need+=(python3 python3-pip)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v sha256sum >/dev/null || need+=(coreutils)
# Debian's chromium, headless, opens the HTML reports the way a reviewer would.
command -v chromium >/dev/null || need+=(chromium)
# libfaketime: a host whose wall clock is minutes off, for the clock-safe deadline tests
# (preloaded into the test sshd's sessions only; the monotonic clock is left alone).
compgen -G '/usr/lib/*/faketime/libfaketime.so.1' >/dev/null || need+=(libfaketime)
# The full-disk test mounts a tiny tmpfs in its own mount namespace.
command -v unshare >/dev/null || need+=(util-linux)
# Team mode's tests start a throwaway PostgreSQL server (initdb, pg_ctl) from Debian's package.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing ${need[*]}; run as root or install them" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# The Python side, rebuilt whenever the pins, the build flags or the interpreter change.
stamp=$( { cat scripts/test-requirements.txt scripts/test-constraints.txt; echo "$GPUCTL_LLAMA_CMAKE_ARGS"; python3 -VV; } | sha256sum | cut -c1-16)
if [ "$(cat "$GPUCTL_TEST_VENV/.gpuctl-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "install-test-deps: building $GPUCTL_TEST_VENV (llama-cpp-python compiles from source: about 5 minutes on 2 cores)" >&2
  rm -rf "$GPUCTL_TEST_VENV"
  python3 -m venv "$GPUCTL_TEST_VENV"
  pip=("$GPUCTL_TEST_VENV/bin/python" -m pip install --quiet --disable-pip-version-check
       --no-input --constraint scripts/test-constraints.txt)
  # Build tools first, pinned, so llama-cpp-python builds without an unpinned isolated env.
  "${pip[@]}" scikit-build-core cmake ninja setuptools wheel
  # Built here with these flags, never taken from pip's wheel cache: a cached wheel may be a
  # build tuned to another CPU (the kind that crashed CI on an AMX machine).
  CMAKE_ARGS="$GPUCTL_LLAMA_CMAKE_ARGS" "${pip[@]}" --no-build-isolation --no-cache-dir \
    "$(grep -m1 '^llama-cpp-python' scripts/test-requirements.txt)"
  "${pip[@]}" --requirement scripts/test-requirements.txt
  echo "$stamp" > "$GPUCTL_TEST_VENV/.gpuctl-stamp"
fi
"$GPUCTL_TEST_VENV/bin/python" -c 'import llama_cpp.server, openai, nbclient, ipykernel, torch, transformers'
# What broke CI before: a llama.cpp build that dies on a prompt of more than one token.
scripts/fetch-model.sh >&2
rc=0
"$GPUCTL_TEST_VENV/bin/python" - models/SmolLM2-135M-Instruct.Q4_1.gguf <<'PY' || rc=$?
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_threads=2, verbose=False)
out = llm.create_chat_completion(messages=[{"role": "user", "content": "What is 2 + 2?"}], max_tokens=4, temperature=0)
assert out["usage"]["completion_tokens"] > 0, out
PY
if [ "$rc" -ne 0 ]; then
  sig=""; [ "$rc" -gt 128 ] && sig=" (signal $((rc - 128)))"
  echo "install-test-deps: llama.cpp from $GPUCTL_TEST_VENV failed a multi-token chat request: exit $rc$sig; CPU:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)" >&2
  exit 1
fi
echo "test deps: ok ($GPUCTL_TEST_VENV)"
