"""A tiny llama with the default model's real tokenizer and chat template (exported from
the GGUF by `gpuctl-agent export-tokenizer`) and random, seeded weights: small enough for
the notebook test to load and run on a CPU in seconds.

usage: make_tiny_model.py ASSETS_DIR OUT_DIR
"""
import os, shutil, sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

assets, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(assets, name), out)
