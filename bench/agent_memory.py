#!/usr/bin/env python3
"""Peak resident memory of gpuctl-agent serving the default model: after load (idle) and
after serving requests, from /proc/PID/status (VmRSS, VmHWM).

usage: bench/agent_memory.py [--agent target/release/gpuctl-agent] [--requests 10]
"""
import argparse, json, os, socket, subprocess, tempfile, time, urllib.request
from datetime import datetime, timedelta, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) / 1024
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", default=os.path.join(ROOT, "target", "release", "gpuctl-agent"))
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the agent")
    a = ap.parse_args()
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    token = "bench-token-0123456789abcdef"
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "token"), "w") as f:
            f.write(token)
        cfg = {"protocol": 1, "session_id": "bench", "grace_secs": 1, "listen_port": port,
               "deadline": (datetime.now(timezone.utc) + timedelta(minutes=10)).isoformat(),
               "token_file": os.path.join(d, "token"), "evidence_dir": os.path.join(d, "ev"),
               "model": {"id": "smollm2", "runtime": "candle", "path": MODEL}}
        with open(os.path.join(d, "agent.json"), "w") as f:
            json.dump(cfg, f)
        env = dict(os.environ, **dict(kv.split("=", 1) for kv in a.env))
        p = subprocess.Popen([a.agent, "serve", "--config", os.path.join(d, "agent.json")], env=env,
                             stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            idle = status(p.pid)
            for i in range(a.requests):
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", method="POST",
                                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                                             data=json.dumps({"messages": [{"role": "user", "content": f"Tell me a fact about the number {i}."}],
                                                              "max_tokens": 128, "temperature": 0}).encode())
                urllib.request.urlopen(req, timeout=120).read()
            serving = status(p.pid)
        finally:
            p.terminate(); p.wait()
    size = os.path.getsize(MODEL) / (1 << 20)
    print(f"model file {size:.1f} MiB; env {a.env or 'default'}")
    print("| moment | VmRSS | VmHWM (peak) | peak / file size |")
    print("| --- | --- | --- | --- |")
    print(f"| idle, after load | {idle['VmRSS']:.0f} MiB | {idle['VmHWM']:.0f} MiB | {idle['VmHWM'] / size:.2f}x |")
    print(f"| after {a.requests} requests of 128 tokens | {serving['VmRSS']:.0f} MiB | {serving['VmHWM']:.0f} MiB | {serving['VmHWM'] / size:.2f}x |")


if __name__ == "__main__":
    main()
