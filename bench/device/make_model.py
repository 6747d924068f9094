#!/usr/bin/env python3
"""Build the model the GPU run serves, on the GPU host itself: nothing can be downloaded
there and a call carries at most 64 MiB. It has SmolLM2-135M-Instruct's architecture and
its real tokenizer and chat template (carried, extracted from the GGUF), with random
weights (seeded): the tokens it writes are meaningless, the serving path is real.

usage: make_model.py ASSETS_DIR OUT_DIR
"""
import json, os, shutil, sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

assets, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                  rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
                  bos_token_id=1, eos_token_id=2)
model = LlamaForCausalLM(cfg)
model.save_pretrained(out, safe_serialization=True)
shutil.copy(os.path.join(assets, "tokenizer.json"), out)
shutil.copy(os.path.join(assets, "tokenizer_config.json"), out)
print(json.dumps({"model_dir": out, "parameters": sum(p.numel() for p in model.parameters())}))
