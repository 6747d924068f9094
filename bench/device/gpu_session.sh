#!/usr/bin/env bash
# One whole run on the GPU machine (the `device` tool): NVML environment report, a session
# served by candle on CUDA, a session of a supervised GPU server that runs out of memory and
# falls back, and tokens/s on GPU against the same model on CPU. Everything comes back as
# one archive in $OUT.
#
# Carried in .device/ (bench/device/prepare.sh makes them): bin/gpuctl-agent.xz
# (built with --features cuda, stripped), bin/gpuctl.xz, and assets/ (tokenizer.json and
# tokenizer_config.json from `gpuctl-agent export-tokenizer`).
set -uo pipefail
OUT=${OUT:-/tmp/out}
W=/tmp/gpurun
. bench/device/unpack.sh
export GPUCTL_HOME=$W/home PYTHONUNBUFFERED=1
R=$W/report.md
say() { echo "$*" | tee -a "$R"; }

say "# GPU run $(date -u +%FT%TZ)"
say "host: $(hostname), $(. /etc/os-release; echo "$PRETTY_NAME"), glibc $(ldd --version | head -1 | awk '{print $NF}')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu: /' | tee -a "$R"
if command -v sshd >/dev/null || [ -x /usr/sbin/sshd ]; then say "sshd: present"; else say "sshd: not installed on this machine (nothing may be installed), so the sessions use provider local"; fi

say "agent libraries: $(ldd "$W/bin/gpuctl-agent" | grep -cv 'not found') found, missing: $(ldd "$W/bin/gpuctl-agent" | grep 'not found' | tr -d '\t' | tr '\n' ' ')"
say "## gpuctl-agent env-report"
"$W/bin/gpuctl-agent" env-report | tee "$W/env_report.txt" | tee -a "$R"

say "## model"
python3 bench/device/make_model.py .device/assets "$W/model" 2>&1 | tail -1 | tee -a "$R"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

plan() { # name runtime extra-model-lines if_oom
  local p; p=$(port)
  cat > "$W/$1.toml" <<PLAN
schema = 1
[plan]
name = "$1"
goal = "serve on a real GPU and prove the stop frees it"
route = "local_cpu"
[model]
id = "smollm2-135m-shape-random"
runtime = "$2"
$3
[instance]
provider = "local"
gpus = 1
[stop]
max_duration = "8m"
grace = "20s"
after_eval = true
[fallback]
route = "none"
$4
[access]
ports = [{ local = $p, remote = $p }]
[evidence]
copy_back = ["environment_report.txt", "first_run.md", "eval_results.csv", "requests.jsonl", "gpu_metrics.csv"]
shutdown_proof = "process_exited"
dir = "$W/bundles"
[[eval.case]]
id = "structure"
prompt = "Write one sentence about GPUs."
expect_regex = "."
max_tokens = 128
[[eval.case]]
id = "long"
prompt = "Write a long story."
expect_regex = "."
max_tokens = 512
PLAN
}

say "## session 1: candle on CUDA"
plan gpu-candle candle "path = \"$W/model\"" ""
"$W/bin/gpuctl" up --agent-bin "$W/bin/gpuctl-agent" --json "$W/gpu-candle.toml" > "$W/up-candle.jsonl" 2> "$W/up-candle.err"
say "exit: $?"; tail -3 "$W/up-candle.err" | tee -a "$R"; grep '"result"' "$W/up-candle.jsonl" | tee -a "$R"

say "## session 2: supervised GPU server, out of memory, then fallback.if_oom"
plan gpu-oom command "command = [\"python3\", \"$PWD/bench/device/hf_server.py\", \"--model-dir\", \"$W/model\", \"--served-name\", \"{model}\", \"--host\", \"{host}\", \"--port\", \"{port}\"]
args = [\"--reserve-gb\", \"400\"]" 'if_oom = { model = "smollm2-135m-shape-random", args = ["--reserve-gb", "2"] }'
"$W/bin/gpuctl" up --agent-bin "$W/bin/gpuctl-agent" --json "$W/gpu-oom.toml" > "$W/up-oom.jsonl" 2> "$W/up-oom.err"
say "exit: $?"; tail -3 "$W/up-oom.err" | tee -a "$R"; grep -E '"result"|out of memory' "$W/up-oom.jsonl" | tee -a "$R"

say "## tokens/s, same model and prompt, 256 greedy tokens: GPU then CPU (16 cores)"
for dev in cuda cpu; do
  GPUCTL_DEVICE=$dev "$W/bin/gpuctl-agent" bench --model "$W/model" --prompt "<|im_start|>user
Write a story.<|im_end|>
<|im_start|>assistant
" --tokens 256 | python3 -c "import json,sys; d=json.load(sys.stdin); print('$dev', {k: round(d[k],1) for k in ['load_ms','ttft_ms','decode_tok_s']})" | tee -a "$R"
done

say "## after both sessions"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv | tee -a "$R"
"$W/bin/gpuctl" ls | tee -a "$R"
"$W/bin/gpuctl" ls --json > "$W/ls.json"
# Small files only: the bundles without model weights, the report, the logs.
tar -czf "$OUT/gpu_run.tar.gz" -C "$W" report.md env_report.txt up-candle.jsonl up-candle.err up-oom.jsonl up-oom.err ls.json bundles
cp "$R" "$OUT/report.md"
