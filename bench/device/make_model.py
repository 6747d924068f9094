#!/usr/bin/env python3
"""Build a model folder for the GPU runs, on the GPU host itself: nothing can be downloaded
there and a call carries at most 64 MiB. The weights are RANDOM (seeded): the tokens such a
model writes are meaningless; the serving path, the memory and the timings are real. The
tokenizer and chat template are the default model's real ones (carried, extracted from the
GGUF with `gpuctl-agent export-tokenizer`), so the vocabulary is its 49,152 tokens.

Shapes:
  smollm2-135m  SmolLM2-135M-Instruct's (llama), f32, as the 2026-11 runs served
  qwen2.5-7b    Qwen2.5-7B's (qwen2: 28 layers, hidden 3584, 28 heads / 4 KV heads,
                intermediate 18944, untied head), bf16, built on the GPU
--layers N keeps the shape's widths with N layers (a profile needs one or two).

usage: make_model.py ASSETS_DIR OUT_DIR [--shape smollm2-135m|qwen2.5-7b] [--layers N]
prints one JSON line: the folder, the parameter count, the bytes of weights.
"""
import argparse, json, os, shutil, time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

VOCAB = 49152  # the carried tokenizer's


def config(shape, layers):
    if shape == "smollm2-135m":
        return LlamaForCausalLM, torch.float32, LlamaConfig(
            vocab_size=VOCAB, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers or 30,
            num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
            rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
            bos_token_id=1, eos_token_id=2)
    return Qwen2ForCausalLM, torch.bfloat16, Qwen2Config(
        vocab_size=VOCAB, hidden_size=3584, intermediate_size=18944, num_hidden_layers=layers or 28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False, use_sliding_window=False,
        sliding_window=32768, max_window_layers=layers or 28, hidden_act="silu",
        bos_token_id=1, eos_token_id=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("assets")
    ap.add_argument("out")
    ap.add_argument("--shape", choices=["smollm2-135m", "qwen2.5-7b"], default="smollm2-135m")
    ap.add_argument("--layers", type=int, default=0)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    started = time.time()
    torch.manual_seed(0)
    cls, dtype, cfg = config(a.shape, a.layers)
    cfg.torch_dtype = dtype
    device = "cuda" if torch.cuda.is_available() and dtype == torch.bfloat16 else "cpu"
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = cls(cfg)  # post_init draws every weight from N(0, 0.02), on the GPU for 7B
    model.eval()
    model.save_pretrained(a.out, max_shard_size="4GB")
    # candle (like transformers 4) reads rope_theta and sliding_window at the top level.
    path = os.path.join(a.out, "config.json")
    with open(path) as f:
        saved = json.load(f)
    saved.setdefault("rope_theta", cfg.rope_theta if hasattr(cfg, "rope_theta") else
                     saved.get("rope_parameters", {}).get("rope_theta"))
    with open(path, "w") as f:
        json.dump(saved, f, indent=1)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(a.assets, name), a.out)
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"model_dir": a.out, "shape": a.shape, "layers": cfg.num_hidden_layers,
                      "dtype": str(dtype).removeprefix("torch."), "parameters": params,
                      "weight_bytes": weight_bytes, "random_weights": True,
                      "seconds": round(time.time() - started, 1)}))


if __name__ == "__main__":
    main()
