# Sourced by the H200 scripts after unpack.sh, with $W and $OUT set. At most 8 files come
# back from a call: everything goes to $D and is packed into $OUT after every step (a run
# cut off at its limit still returns what it had). `say` writes to the report and stdout.
export GPUCTL_HOME=$W/home PYTHONUNBUFFERED=1
D=$W/results; mkdir -p "$D"; R=$D/report.md
pack() { tar -czf "$OUT/results.tgz" -C "$D" . && cp "$R" "$OUT/report.md"; }
say() { echo "$*" | tee -a "$R"; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HF="python3 bench/device/hf_bench.py"
