#!/usr/bin/env bash
# The second H200 call of issue #22, on the machine h200_7b.sh left warm:
# 1. the default model's REAL weights: its GGUF (98 MB) is more than one call carries, so
#    it comes in two parts (.device/gguf.part*, one per call, kept in /tmp/persist), joined
#    here and checked against the sha256 scripts/fetch-model.sh pins; served by the CUDA
#    agent through `gpuctl up` with the bundled plan's eval (real answers expected);
# 2. transformers with a static cache and torch.compile on the 7B-class model h200_7b.sh
#    built (rebuilt if this is a fresh machine);
# 3. a profile of candle's decode: kernels per token and which dominate (ncu, on a 2-layer
#    model of the same widths: the count per layer is the same as at 28).
# STEPS (default "real static profile") picks which of the three run.
set -uo pipefail
OUT=${OUT:-/tmp/out}
W=/tmp/h200b
P=/tmp/persist
. bench/device/unpack.sh
mkdir -p "$P" && cp .device/gguf.part* "$P/" 2>/dev/null
. bench/device/results_helpers.sh

say "# H200 run 2, $(date -u +%FT%TZ)"
pack
real() {
say "## real weights: $(ls "$P"/gguf.part* 2>/dev/null | xargs -n1 basename | tr '\n' ' ')"
cat "$P"/gguf.part* > "$W/model.gguf" 2>/dev/null
WANT=$(sed -n 's/^GGUF_SHA256=//p' scripts/fetch-model.sh)
if echo "$WANT  $W/model.gguf" | sha256sum -c --status; then
  say "joined: sha256 $WANT, $(stat -c %s "$W/model.gguf") bytes: verified"
  p=$(port)
  sed -e "s|^path = .*|path = \"$W/model.gguf\"|" -e "s|^gpus = 0|gpus = 1|" \
      -e "s|^ports = .*|ports = [{ local = $p, remote = $p }]|" \
      -e 's|^copy_back = .*|copy_back = ["environment_report.txt", "first_run.md", "eval_results.csv", "requests.jsonl", "gpu_metrics.csv"]|' \
      -e "s|^name = .*|name = \"h200-smollm2-real\"|" plans/local-cpu.toml > "$W/real.toml"
  sed -i "/^shutdown_proof/a dir = \"$W/bundles\"" "$W/real.toml"
  timeout 300 "$W/bin/gpuctl" up --agent-bin "$W/bin/gpuctl-agent" --json "$W/real.toml" > "$D/real_up.jsonl" 2> "$D/real_up.err"
  say "exit: $?"; grep '"result"' "$D/real_up.jsonl" | tee -a "$R"
  B=$(ls -d "$W"/bundles/*/ 2>/dev/null | head -1)
  if [ -n "$B" ]; then
    mkdir -p "$D/real"
    for f in report.html gpu_metrics.csv shutdown_proof.json eval_results.csv requests.jsonl environment_report.txt; do cp "$B/$f" "$D/real/" 2>/dev/null; done
    cat "$B/eval_results.csv" | tee -a "$R"
    grep -o '"name":"gpu_released"[^}]*' "$B/shutdown_proof.json" | tee -a "$R"
  fi
else
  say "the parts do not join to the pinned GGUF (a fresh machine lost the first part?): real-weights session skipped"
fi

}

M=/tmp/h200/qwen7b
static() {
say "## transformers static cache + torch.compile (round 0 compiles)"
[ -f "$M/config.json" ] || timeout 300 python3 bench/device/make_model.py .device/assets "$M" --shape qwen2.5-7b | tee -a "$R"
timeout 330 $HF run "$M" --mode static --prompt-lens 128 --tokens 256 --rounds 2 2>"$D/hf_static.err" | tee "$D/hf_static.jsonl" | cut -c1-220 | tee -a "$R"
grep -iE "error|warn" "$D/hf_static.err" | tail -3 | tee -a "$R"

}

profile() {
say "## profile: candle decode kernels on a 2-layer model of the 7B widths (ncu, 16-token prompt; 2 vs 10 tokens)"
M2=$W/qwen7b-2l
timeout 120 python3 bench/device/make_model.py .device/assets "$M2" --shape qwen2.5-7b --layers 2 | tee -a "$R"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
IDS=$($HF ids 16)
for engine in decoder candle; do
  [ $engine = candle ] && export GPUCTL_ENGINE=candle
  for n in 2 10; do
    timeout 150 "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv \
      "$W/bin/gpuctl-agent" bench --model "$M2" --prompt-ids "$IDS" --tokens $n > "$D/ncu_${engine}_$n.csv" 2>"$D/ncu_${engine}_$n.err"
    say "ncu $engine $n tokens: exit $?, $(grep -c gpu__time_duration "$D/ncu_${engine}_$n.csv") kernels"
  done
  "$W/bin/gpuctl-agent" bench --model "$M2" --prompt-ids "$IDS" --tokens 256 --rounds 2 | cut -c1-160 | tee -a "$R"
  unset GPUCTL_ENGINE
  say "### $engine: kernels per decoded token (2 layers)"
  python3 bench/device/kernel_profile.py "$D/ncu_${engine}_2.csv" "$D/ncu_${engine}_10.csv" 8 | tee "$D/profile_$engine.txt" | tee -a "$R"
done
}

# The prefill of a 2,048-token prompt, kernel by kernel (2 layers; the decoder).
prefill() {
say "## profile: prefill of 2,048 tokens, decoder, 2-layer model of the 7B widths (ncu)"
M2=$W/qwen7b-2l
[ -f "$M2/config.json" ] || timeout 120 python3 bench/device/make_model.py .device/assets "$M2" --shape qwen2.5-7b --layers 2 | tee -a "$R"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for n in 16 2048; do  # the difference of the two runs is the longer prompt's prefill
  timeout 200 "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv \
    "$W/bin/gpuctl-agent" bench --model "$M2" --prompt-ids "$($HF ids $n)" --tokens 1 > "$D/ncu_prefill_$n.csv" 2>"$D/ncu_prefill_$n.err"
  say "ncu prefill $n: exit $?"
done
"$W/bin/gpuctl-agent" bench --model "$M2" --prompt-ids "$($HF ids 2048)" --tokens 2 --rounds 3 | cut -c1-160 | tee -a "$R"
python3 bench/device/kernel_profile.py "$D/ncu_prefill_16.csv" "$D/ncu_prefill_2048.csv" 1 "2,048-token prefill beyond a 16-token one" | tee "$D/profile_prefill.txt" | tee -a "$R"
}

for step in ${STEPS:-real static profile}; do $step; pack; done
say "# done $(date -u +%FT%TZ)"
pack
