#!/usr/bin/env python3
"""The peers of the agent's GPU bench, in the same run on the same GPU: HF transformers on
the same weights, prompt ids and token counts (greedy, bf16, batch 1, torch.inference_mode),
eager with its default dynamic cache, then with a static cache and torch.compile (what an
informed user would pick); and the physical floor, a device-to-device copy's bandwidth.

  hf_bench.py ids N                     prints the N prompt ids both sides use
  hf_bench.py copy                      HBM copy bandwidth (bytes read + written per second)
  hf_bench.py run MODEL_DIR --mode eager|static --prompt-lens 128,2048 --tokens 256

`run` prints one JSON line per measurement. TTFT is `generate(max_new_tokens=1)` (prefill
and the first token, synchronised); decode tok/s is (tokens - 1) over the time
`generate(max_new_tokens=tokens)` takes beyond that, end-of-sequence ignored. The first
round is a warm-up (and, for static, the compile) and is reported as round 0.
"""
import json, sys, time

import torch


def prompt_ids(n, vocab=49152):
    # Ordinary tokens spread over the vocabulary; the first 17 ids are special tokens.
    return [(i * 7919 + 13) % (vocab - 200) + 100 for i in range(n)]


def copy_bandwidth(gib=4, reps=10):
    n = gib << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        b.copy_(a)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / reps
    return {"what": "copy", "bytes": n, "seconds": seconds, "read_plus_write_bytes_s": 2 * n / seconds,
            "device": torch.cuda.get_device_name()}


def compiled_graphs():
    # How many graphs torch.compile made so far: 0 means generate did not compile.
    try:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 - a private counter; absent is "unknown"
        return None


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t, out


def run(model_dir, mode, lens, tokens, rounds):
    from transformers import AutoModelForCausalLM
    import transformers

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map="cuda")
    model.eval()
    load_s = time.perf_counter() - t0
    extra = {"cache_implementation": "static"} if mode == "static" else {}
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    per_token = weights - embed.numel() * embed.element_size()  # one embedding row is read

    def gen(ids, n):
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              pad_token_id=0, **extra)

    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        for r in range(rounds):
            for n in lens:
                ids = torch.tensor([prompt_ids(n)], device="cuda")
                ttft, _ = timed(lambda: gen(ids, 1))
                total, out = timed(lambda: gen(ids, tokens))
                print(json.dumps({
                    "engine": f"transformers {transformers.__version__} {mode}", "round": r,
                    "load_s": load_s, "prompt_tokens": n, "generated": out.shape[1] - n,
                    "ttft_ms": ttft * 1000, "decode_tok_s": (tokens - 1) / max(total - ttft, 1e-9),
                    "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
                    "weight_bytes": weights, "bytes_read_per_token": per_token,
                    "tokens": out[0, n:n + 32].tolist(),
                    "torch": torch.__version__, "compiled_graphs": compiled_graphs()}), flush=True)


def main():
    what = sys.argv[1]
    if what == "ids":
        print(",".join(map(str, prompt_ids(int(sys.argv[2])))))
    elif what == "copy":
        print(json.dumps(copy_bandwidth()))
    elif what == "run":
        args = dict(zip(sys.argv[3::2], sys.argv[4::2]))
        run(sys.argv[2], args.get("--mode", "eager"),
            [int(x) for x in args.get("--prompt-lens", "128,2048").split(",")],
            int(args.get("--tokens", "256")), int(args.get("--rounds", "2")))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
