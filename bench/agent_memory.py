#!/usr/bin/env python3
"""Peak resident memory of gpuctl-agent serving the default model: after load (idle) and
after serving requests, from /proc/PID/status (VmRSS, VmHWM).

usage: bench/agent_memory.py [--agent target/release/gpuctl-agent] [--requests 10] [--long-prompt]
                             [--env KEY=VALUE]...
--long-prompt makes each request's message about 1,000 tokens of text (prefill-heavy; the
agent's count of prompt tokens is printed); `--env GPUCTL_ENGINE=candle` measures candle's
engine instead of gpuctl's own.
"""
import argparse, json, os, socket, subprocess, tempfile, time, urllib.request
from datetime import datetime, timedelta, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


LONG_TEXT = ("The history of the printing press begins in the fifteenth century, when movable type, "
             "oil-based inks and the screw press came together in Mainz. Within fifty years presses "
             "worked in more than two hundred cities, and the price of a book fell by an order of "
             "magnitude. Scholars argue about how much of the Reformation, the scientific revolution "
             "and the rise of vernacular literature followed from it. ")


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
    ap.add_argument("--long-prompt", action="store_true", help="about 1,000 tokens per request")
    a = ap.parse_args()
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    token = "bench-token-0123456789abcdef"
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "token"), "w") as f:
            f.write(token)
        # The config protocol this agent speaks ("gpuctl-agent X (protocol N)").
        version = subprocess.run([a.agent, "version"], capture_output=True, text=True, check=True).stdout
        protocol = int(version.rsplit("protocol", 1)[1].strip(" )\n"))
        cfg = {"protocol": protocol, "session_id": "bench", "grace_secs": 1, "listen_port": port,
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
            prompt_tokens = []
            for i in range(a.requests):
                content = f"Tell me a fact about the number {i}."
                if a.long_prompt:
                    content = LONG_TEXT * 11 + content
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", method="POST",
                                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                                             data=json.dumps({"messages": [{"role": "user", "content": content}],
                                                              "max_tokens": 128, "temperature": 0}).encode())
                reply = json.loads(urllib.request.urlopen(req, timeout=300).read())
                prompt_tokens.append(reply["usage"]["prompt_tokens"])
            serving = status(p.pid)
        finally:
            p.terminate(); p.wait()
    size = os.path.getsize(MODEL) / (1 << 20)
    print(f"model file {size:.1f} MiB; env {a.env or 'default'}; prompt tokens per request "
          f"{min(prompt_tokens)}-{max(prompt_tokens)}")
    print("| moment | VmRSS | VmHWM (peak) | peak / file size |")
    print("| --- | --- | --- | --- |")
    print(f"| idle, after load | {idle['VmRSS']:.0f} MiB | {idle['VmHWM']:.0f} MiB | {idle['VmHWM'] / size:.2f}x |")
    print(f"| after {a.requests} requests of 128 tokens | {serving['VmRSS']:.0f} MiB | {serving['VmHWM']:.0f} MiB | {serving['VmHWM'] / size:.2f}x |")


if __name__ == "__main__":
    main()
