#!/usr/bin/env python3
"""The candle engine under concurrent requests: it serves one generation at a time and
queues the rest, so N requests at once take about N times one. Measures, through the
agent's OpenAI-compatible API (started here with `gpuctl-agent serve`, bound to 127.0.0.1):
N requests one after another, then N at once; aggregate completion tokens/s, and each
request's latency (p50, p99); then the stop: SIGTERM to the GPU's memory free (NVML). The README's advice on `runtime = "vllm"` comes from this.

usage: concurrency.py AGENT MODEL_PATH [--requests 8] [--max-tokens 128]
prints one JSON line per phase.
"""
import argparse, json, os, socket, subprocess, tempfile, threading, time, urllib.request
from datetime import datetime, timedelta, timezone


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def gpu_used_mib():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True).stdout.split()
    except FileNotFoundError:  # no NVIDIA driver: a CPU run of this script
        return 0
    return int(out[0]) if out else 0


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("agent")
    ap.add_argument("model")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    a = ap.parse_args()
    port, token = free_port(), "bench-token-0123456789abcdef"
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "token"), "w") as f:
            f.write(token)
        version = subprocess.run([a.agent, "version"], capture_output=True, text=True, check=True).stdout
        protocol = int(version.rsplit("protocol", 1)[1].strip(" )\n"))
        cfg = {"protocol": protocol, "session_id": "concurrency", "grace_secs": 1, "listen_port": port,
               "deadline": (datetime.now(timezone.utc) + timedelta(minutes=15)).isoformat(),
               "token_file": os.path.join(d, "token"), "evidence_dir": os.path.join(d, "ev"),
               "model": {"id": "bench", "runtime": "candle", "path": a.model}}
        with open(os.path.join(d, "agent.json"), "w") as f:
            json.dump(cfg, f)
        baseline = gpu_used_mib()
        agent = subprocess.Popen([a.agent, "serve", "--config", os.path.join(d, "agent.json")],
                                 stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 300
            while time.time() < deadline:
                try:  # the API, /health included, takes the session's bearer token
                    urllib.request.urlopen(urllib.request.Request(
                        f"http://127.0.0.1:{port}/health", headers={"Authorization": f"Bearer {token}"}),
                        timeout=2).read()
                    break
                except OSError:
                    if agent.poll() is not None:
                        raise SystemExit(f"the agent exited ({agent.returncode}) before it was healthy")
                    time.sleep(0.5)
            else:
                raise SystemExit("the agent was not healthy within 300 s")

            def ask(i, results):
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/chat/completions", method="POST",
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                    data=json.dumps({"messages": [{"role": "user", "content": f"Write a story about the number {i}."}],
                                     "max_tokens": a.max_tokens, "temperature": 0}).encode())
                t = time.perf_counter()
                reply = json.loads(urllib.request.urlopen(req, timeout=600).read())
                results[i] = (time.perf_counter() - t, reply["usage"]["completion_tokens"])

            ask(0, {})  # warm-up: the first CUDA launches of each kernel load it
            for phase in ("one_at_a_time", "all_at_once"):
                results = {}
                t = time.perf_counter()
                if phase == "one_at_a_time":
                    for i in range(a.requests):
                        ask(i, results)
                else:
                    threads = [threading.Thread(target=ask, args=(i, results)) for i in range(a.requests)]
                    for th in threads:
                        th.start()
                    for th in threads:
                        th.join()
                wall = time.perf_counter() - t
                lat = [v[0] for v in results.values()]
                toks = sum(v[1] for v in results.values())
                print(json.dumps({"phase": phase, "requests": len(results), "completion_tokens": toks,
                                  "wall_s": wall, "aggregate_tok_s": toks / wall,
                                  "latency_p50_s": pct(lat, 0.5), "latency_p99_s": pct(lat, 0.99)}), flush=True)
            # Stop to GPU free: SIGTERM, then NVML until the memory is back to the baseline.
            serving = gpu_used_mib()
            t = time.perf_counter()
            agent.terminate()
            agent.wait(timeout=60)
            exited = time.perf_counter() - t
            while gpu_used_mib() > baseline + 64 and time.perf_counter() - t < 60:
                time.sleep(0.05)
            print(json.dumps({"phase": "stop", "gpu_used_mib_serving": serving, "gpu_used_mib_before": baseline,
                              "sigterm_to_exit_s": exited, "sigterm_to_gpu_free_s": time.perf_counter() - t,
                              "gpu_used_mib_after": gpu_used_mib()}), flush=True)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()


if __name__ == "__main__":
    main()
