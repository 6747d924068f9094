#!/usr/bin/env bash
# One session served by candle on CUDA, whose bundle's report.html must show the GPU
# memory and utilisation charts from real NVML samples; the bundle comes back in $OUT.
# Carried in .device/ as for gpu_session.sh (bin/gpuctl-agent.xz with --features cuda,
# bin/gpuctl.xz, assets/ with the tokenizer files).
set -uo pipefail
OUT=${OUT:-/tmp/out}
W=/tmp/gpureport
. bench/device/unpack.sh
export GPUCTL_HOME=$W/home
python3 bench/device/make_model.py .device/assets "$W/model" | tail -1
p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$W/plan.toml" <<PLAN
schema = 1
[plan]
name = "gpu-report"
goal = "a report.html with real NVML samples"
route = "local_cpu"
[model]
id = "smollm2-135m-shape-random"
runtime = "candle"
path = "$W/model"
[instance]
provider = "local"
gpus = 1
[stop]
max_duration = "5m"
grace = "10s"
after_eval = true
[fallback]
route = "none"
[access]
ports = [{ local = $p, remote = $p }]
[evidence]
copy_back = ["environment_report.txt", "first_run.md", "eval_results.csv", "requests.jsonl", "gpu_metrics.csv"]
shutdown_proof = "process_exited"
dir = "$W/bundles"
[[eval.case]]
id = "long-1"
prompt = "Write a long story."
expect_regex = "."
max_tokens = 1024
[[eval.case]]
id = "long-2"
prompt = "Write another long story."
expect_regex = "."
max_tokens = 1024
PLAN
"$W/bin/gpuctl" up --agent-bin "$W/bin/gpuctl-agent" --json "$W/plan.toml" > "$OUT/up.jsonl" 2> "$OUT/up.err"
echo "exit: $?"
tail -3 "$OUT/up.err"
B=$(ls -d "$W"/bundles/*/ | head -1)
cp "$B"/report.html "$B"/gpu_metrics.csv "$B"/shutdown_proof.json "$OUT/"
wc -l "$OUT/gpu_metrics.csv"
