#!/usr/bin/env bash
# Lateness of layer 1 ending billing: `up` SIGKILLed while serving, no daemon, the agent
# terminates its own instance with the instance-scoped key at the deadline. Measured
# against the emulator's ledger (when the terminate request reached the "provider") and
# the session's recorded deadline, by the test that asserts the behaviour
# (tests/billing_without_laptop.rs prints each figure), run N times.
#
# usage: bench/layer1_lateness.sh [runs, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
export PATH="${GPUCTL_TEST_VENV:-$HOME/.cache/gpuctl/test-venv}/bin:$PATH"
cargo build --workspace --locked -q
for i in $(seq "$runs"); do
  cargo test -q --locked --test billing_without_laptop -- --nocapture --test-threads=1 2>&1 \
    | grep -o 'layer 1 lateness [a-z]*: -\?[0-9]* ms' || { echo "run $i failed" >&2; exit 1; }
done | python3 -c '
import re, statistics, sys
by = {}
for line in sys.stdin:
    m = re.match(r"layer 1 lateness (\w+): (-?\d+) ms", line)
    if m:
        by.setdefault(m[1], []).append(int(m[2]))
for p, v in sorted(by.items()):
    print(f"{p}: runs {len(v)}, min {min(v)} ms, median {statistics.median(v):.0f} ms, max {max(v)} ms")
'
