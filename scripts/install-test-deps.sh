#!/usr/bin/env bash
# System packages the tests use (Debian/Ubuntu). Skipped when already present.
set -euo pipefail

need=()
command -v git >/dev/null || need+=(git)
command -v python3 >/dev/null || need+=(python3 python3-pip)
command -v sha256sum >/dev/null || need+=(coreutils)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing ${need[*]}; run as root or install them" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
echo "test deps: ok"
