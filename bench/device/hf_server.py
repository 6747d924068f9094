#!/usr/bin/env python3
"""A small OpenAI-compatible server on the GPU host's own Python stack (transformers +
PyTorch on CUDA), for `runtime = "command"` on machines without vLLM.

Like vLLM, it reserves GPU memory for its cache at start (--reserve-gb): asking for more
than the card has fails with PyTorch's real out-of-memory error, which gpuctl-agent reports
and answers with the plan's `fallback.if_oom`.

usage: hf_server.py --model-dir DIR --port P [--host 127.0.0.1] [--served-name NAME] [--reserve-gb G]
"""
import argparse, json, threading, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--model-dir", required=True)
ap.add_argument("--host", default="127.0.0.1")
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--served-name", default=None)
ap.add_argument("--reserve-gb", type=float, default=1.0)
a = ap.parse_args()
name = a.served_name or a.model_dir

dev = "cuda" if torch.cuda.is_available() else "cpu"
print(f"loading {a.model_dir} on {dev}", flush=True)
tok = AutoTokenizer.from_pretrained(a.model_dir)
model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.bfloat16 if dev == "cuda" else torch.float32).to(dev)
model.eval()
# The cache reservation: allocated up front, as vLLM does with gpu_memory_utilization.
reserve = torch.empty(int(a.reserve_gb * (1 << 30)), dtype=torch.uint8, device=dev)
print(f"reserved {a.reserve_gb} GiB for the cache", flush=True)
lock = threading.Lock()


def generate(prompt_ids, max_tokens, temperature):
    with lock, torch.no_grad():
        ids = torch.tensor([prompt_ids], device=dev)
        out = model.generate(ids, max_new_tokens=max_tokens, do_sample=temperature > 0,
                             temperature=temperature if temperature > 0 else None, pad_token_id=tok.eos_token_id)
        new = out[0][len(prompt_ids):].tolist()
    return tok.decode(new, skip_special_tokens=True), len(new)


class H(BaseHTTPRequestHandler):
    def send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            return self.send(200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "hf_server"}]})
        self.send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        max_tokens = int(req.get("max_tokens") or 64)
        temperature = float(req.get("temperature", 1.0))
        if self.path == "/v1/chat/completions":
            ids = tok.apply_chat_template(req["messages"], add_generation_prompt=True, tokenize=True)
            if hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
        elif self.path == "/v1/completions":
            ids = tok(req["prompt"])["input_ids"]
        else:
            return self.send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
        text, n = generate(list(ids), max_tokens, temperature)
        usage = {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n}
        created = int(time.time())
        if self.path == "/v1/chat/completions":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length" if n >= max_tokens else "stop"}
            return self.send(200, {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": created,
                                   "model": name, "choices": [choice], "usage": usage})
        choice = {"index": 0, "text": text, "finish_reason": "length" if n >= max_tokens else "stop"}
        self.send(200, {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": created,
                        "model": name, "choices": [choice], "usage": usage})

    def log_message(self, fmt, *args):
        print(fmt % args, flush=True)


print(f"serving on http://{a.host}:{a.port}", flush=True)
ThreadingHTTPServer((a.host, a.port), H).serve_forever()
