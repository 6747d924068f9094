#!/usr/bin/env bash
# One whole run on the H200 (the `device` tool), issue #22: a 7B-class model with RANDOM bf16
# weights (Qwen2.5-7B's shapes, built there by make_model.py) served by candle on CUDA
# through `gpuctl up`, then measured beside HF transformers and the HBM floor in the same
# run (its static-cache + torch.compile peer and the profile: h200_gguf.sh, the next call).
# Results: $OUT/report.md and $OUT/results.tgz (jsonl, the session bundle files).
#
# Carried in .device/: bin/gpuctl-agent.xz (scripts/build-cuda-agent.sh), bin/gpuctl.xz,
# assets/ (tokenizer.json, tokenizer_config.json from `gpuctl-agent export-tokenizer`), and
# optionally gguf.part* (kept in /tmp/persist for bench/device/h200_gguf.sh).
# Each step is bounded; a step that fails is written down and the run goes on.
# VARIANTS (default "decoder candle") picks the engines the bench compares; STEPS (default
# "floor model session bench concurrency eager") the parts that run, in that order.
set -uo pipefail
OUT=${OUT:-/tmp/out}
W=/tmp/h200
. bench/device/unpack.sh
mkdir -p /tmp/persist && cp .device/bin/*.xz /tmp/persist/ && cp .device/gguf.part* /tmp/persist/ 2>/dev/null
. bench/device/results_helpers.sh
M=$W/qwen7b

say "# H200 run, 7B-class model with random weights, $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu: /' | tee -a "$R"
say "host: $(nproc) cores, $(. /etc/os-release; echo "$PRETTY_NAME"), python $(python3 -c 'import torch, transformers; print(torch.__version__, "transformers", transformers.__version__)')"
"$W/bin/gpuctl-agent" env-report > "$D/env_report.txt" 2>&1

pack
floor() {
say "## HBM floor: device-to-device copy"
$HF copy | tee "$D/copy.json" | tee -a "$R"

}
model() {
say "## model (random bf16 weights, Qwen2.5-7B shapes, the carried 49,152-token tokenizer)"
timeout 300 python3 bench/device/make_model.py .device/assets "$M" --shape qwen2.5-7b 2>"$D/make_model.err" | tee "$D/model.json" | tee -a "$R"
du -sb "$M" | tee -a "$R"

}
session() {
say "## session: gpuctl up, candle on CUDA, bf16"
p=$(port)
LONG=$(python3 -c 'print(("The history of the printing press begins in the fifteenth century, when movable type, oil-based inks and the screw press came together in Mainz. " * 70).strip())')
cat > "$W/plan.toml" <<PLAN
schema = 1
[plan]
name = "h200-qwen7b-shape"
goal = "serve a 7B-class model on an H200 with known VRAM, latency and shutdown"
route = "local_cpu"
[model]
id = "qwen2.5-7b-shape-random-bf16"
runtime = "candle"
path = "$M"
[instance]
provider = "local"
gpus = 1
[stop]
max_duration = "6m"
grace = "20s"
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
id = "short-256"
prompt = "Write a story about a GPU."
expect_regex = "(?s)."
max_tokens = 256
[[eval.case]]
id = "long-prompt"
prompt = "$LONG Summarise this."
expect_regex = "(?s)."
max_tokens = 64
PLAN
timeout 420 "$W/bin/gpuctl" up --agent-bin "$W/bin/gpuctl-agent" --json "$W/plan.toml" > "$D/up.jsonl" 2> "$D/up.err"
say "exit: $?"; grep '"result"' "$D/up.jsonl" | tee -a "$R"
B=$(ls -d "$W"/bundles/*/ 2>/dev/null | head -1)
if [ -n "$B" ]; then
  for f in gpu_metrics.csv shutdown_proof.json eval_results.csv report.html; do cp "$B/$f" "$D/" 2>/dev/null; done
  tail -n +2 "$B/gpu_metrics.csv" | head -3 | tee -a "$R"
fi

}
bench() {
say "## bench: TTFT at 128 and 2,048 prompt tokens, 256 greedy tokens (round 0 warms up)"
# decoder: gpuctl's (agent/src/engine/decoder.rs, the default); candle: candle-transformers'
# qwen2 (GPUCTL_ENGINE=candle).
say "variants: ${VARIANTS:=decoder candle}"
for engine in $VARIANTS; do
  nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 200 > "$D/bench_vram_$engine.csv" &
  SMI=$!
  [ $engine = candle ] && export GPUCTL_ENGINE=candle
  timeout 200 "$W/bin/gpuctl-agent" bench --model "$M" --prompt-ids "$($HF ids 128)" --prompt-ids "$($HF ids 2048)" \
    --tokens 256 --rounds 3 2>"$D/bench_$engine.err" | python3 -c '
import json, sys
for line in sys.stdin:
    d = json.loads(line); d["tokens"] = d["tokens"][:32]; d.pop("prompt_ids")
    print(json.dumps(d), flush=True)' | tee "$D/bench_$engine.jsonl" | cut -c1-200 | tee -a "$R"
  unset GPUCTL_ENGINE
  kill $SMI
  say "$engine bench: VRAM peak MiB $(cut -d, -f2 "$D/bench_vram_$engine.csv" | sort -n | tail -1)"
done
}
concurrency() {
say "## concurrency: 8 requests one at a time, then at once; then SIGTERM to GPU free"
timeout 300 python3 bench/device/concurrency.py "$W/bin/gpuctl-agent" "$M" --requests 8 --max-tokens 128 | tee "$D/concurrency.jsonl" | tee -a "$R"

}
eager() {
say "## transformers eager (dynamic cache)"
timeout 200 $HF run "$M" --mode eager --prompt-lens 128,2048 --tokens 64 --rounds 2 2>"$D/hf_eager.err" | tee "$D/hf_eager.jsonl" | cut -c1-220 | tee -a "$R"
}

for step in ${STEPS:-floor model session bench concurrency eager}; do $step; pack; done
say "# done $(date -u +%FT%TZ)"
pack
