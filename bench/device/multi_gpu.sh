#!/usr/bin/env bash
# On a machine with 2 or more GPUs (device kind nvidia-h100-x2): the agent's report lists
# every GPU, two sessions of one GPU each serve side by side on different GPUs, a plan
# asking for more GPUs than the host has is refused, and the stops free both GPUs.
# Expects gpu_session.sh to have run first in the same call (it leaves $W with the binaries
# and the model). Results are appended to $W/report.md and come back in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
W=/tmp/gpurun
export GPUCTL_HOME=$W/home-multi PYTHONUNBUFFERED=1
R=$W/report.md
say() { echo "$*" | tee -a "$R"; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

say "# several GPUs"
nvidia-smi --query-gpu=index,name,uuid,memory.total --format=csv,noheader | tee -a "$R"
"$W/bin/gpuctl-agent" env-report | sed -n '/# GPUs/,$p' | tee -a "$R"

mkplan() { # name gpus max_tokens
  local p; p=$(port)
  cat > "$W/$1.toml" <<PLAN
schema = 1
[plan]
name = "$1"
goal = "two sessions side by side, one GPU each"
route = "local_cpu"
[model]
id = "smollm2-135m-shape-random"
runtime = "candle"
path = "$W/model"
[instance]
provider = "local"
gpus = $2
[stop]
max_duration = "8m"
grace = "20s"
after_eval = true
[fallback]
route = "none"
[access]
ports = [{ local = $p, remote = $p }]
[evidence]
copy_back = ["environment_report.txt", "first_run.md", "eval_results.csv", "requests.jsonl", "gpu_metrics.csv"]
shutdown_proof = "process_exited"
dir = "$W/bundles-multi"
[[eval.case]]
id = "long"
prompt = "Write a long story."
expect_regex = "."
max_tokens = $3
PLAN
}

mkplan side-a 1 2048
mkplan side-b 1 2048
"$W/bin/gpuctl" up --agent-bin "$W/bin/gpuctl-agent" --json "$W/side-a.toml" > "$W/up-a.jsonl" 2> "$W/up-a.err" &
A=$!
sleep 3
"$W/bin/gpuctl" up --agent-bin "$W/bin/gpuctl-agent" --json "$W/side-b.toml" > "$W/up-b.jsonl" 2> "$W/up-b.err" &
B=$!
# While both serve: which GPU holds which process.
for i in 1 2 3 4 5 6; do sleep 2; nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader | sed "s/^/t+${i}: /" | tee -a "$R"; done
wait $A; say "side-a exit: $?"
wait $B; say "side-b exit: $?"
for s in a b; do grep '"result"' "$W/up-$s.jsonl" | tee -a "$R"; done
for f in "$W"/home-multi/run/*/agent.json; do python3 -c "import json,sys; c=json.load(open(sys.argv[1])); print(c['session_id'], 'CUDA_VISIBLE_DEVICES=' + str(c.get('cuda_visible_devices')))" "$f" | tee -a "$R"; done

say "## a plan asking for 3 GPUs on this host"
mkplan too-many 3 16
"$W/bin/gpuctl" up --agent-bin "$W/bin/gpuctl-agent" "$W/too-many.toml" > /dev/null 2> "$W/up-too-many.err"
say "exit: $?"; tee -a "$R" < "$W/up-too-many.err"

say "## after the stops"
nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv | tee -a "$R"
"$W/bin/gpuctl" ls | tee -a "$R"
tar -czf "$OUT/multi_gpu.tar.gz" -C "$W" report.md up-a.jsonl up-a.err up-b.jsonl up-b.err up-too-many.err bundles-multi
cp "$R" "$OUT/report.md"
