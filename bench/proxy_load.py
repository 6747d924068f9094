#!/usr/bin/env python3
"""The agent's proxy under concurrent streams: tokens/s and time to first token through the
agent against the same kind of server directly, at 1, 16 and 64 concurrent streams.

The server is bench/sse_server.py (a synthetic OpenAI-compatible server that streams a fixed
pattern as fast as it can), so the proxy is what is measured; `--llama` measures llama.cpp's
server (from the test venv, 4 parallel slots, the bundled model) the same way. The agent runs
it supervised under `gpuctl up` (runtime = "command"); "direct" is a second instance of the
same server on its own port. One client (asyncio, raw HTTP/1.1) drives both paths; it
counts token chunks without parsing JSON, so it stays cheap next to what it measures.

usage: bench/proxy_load.py [--bin target/release] [--tokens 2000] [--rounds 3] [--llama]
                           [--ttft-samples N] [--soak N]

--ttft-samples N: after the table, N one-stream requests of 16 tokens in a row to each path,
alternating: time to first token p50/p99 over N samples (the table's one-stream row has only
one sample a round).
--soak N: after the table, N more rounds of 64 streams through the agent, the agent's RSS
after each: whether its memory levels off (a high-water mark) or keeps growing (a leak).
"""
import re
import argparse, asyncio, json, os, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
SERVER = os.path.join(ROOT, "bench", "sse_server.py")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(port, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close(); return True
        except OSError:
            time.sleep(0.05)
    return False


CONTENT = re.compile(rb'"content": ?"(?!")')


def command(llama):
    if llama:
        return (f'["python3", "-m", "llama_cpp.server", "--model", "{MODEL}", "--model_alias", "{{model}}", '
                f'"--host", "{{host}}", "--port", "{{port}}", "--n_threads", "2", "--n_ctx", "8192", '
                f'"--interrupt_requests", "False"]')
    return f'["python3", "{SERVER}", "{{port}}", "--host", "{{host}}", "--model", "{{model}}"]'


def direct_server(llama, port):
    if llama:
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", MODEL, "--model_alias", "synthetic",
                "--host", "127.0.0.1", "--port", str(port), "--n_threads", "2", "--n_ctx", "8192",
                # By default a new request interrupts the one generating: queue them instead.
                "--interrupt_requests", "False"]
    else:
        argv = [sys.executable, SERVER, str(port)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def one_stream(port, token, tokens, n):
    body = json.dumps({"model": "synthetic", "stream": True, "max_tokens": tokens,
                       "messages": [{"role": "user", "content": f"bench-{n}: count"}]}).encode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    t0 = time.perf_counter()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write((f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n"
             f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
    await w.drain()
    first, chunks, tail = None, 0, b""
    while True:
        data = await r.read(1 << 16)
        if not data:
            break
        buf = tail + data
        # Token chunks carry a non-empty content; the role chunk's is "". (Servers differ on
        # the space after the colon: llama.cpp's Python server writes one.)
        c = len(CONTENT.findall(buf))
        if c and first is None:
            first = time.perf_counter() - t0
        chunks += c
        tail = buf[-16:]
        chunks -= len(CONTENT.findall(tail))
    w.close()
    return first or float("nan"), chunks


async def load(port, token, streams, tokens):
    t0 = time.perf_counter()
    # Bounded: a stream that does not end in 5 minutes fails the run.
    res = await asyncio.gather(*(asyncio.wait_for(one_stream(port, token, tokens, n), 300) for n in range(streams)))
    wall = time.perf_counter() - t0
    return sum(c for _, c in res) / wall, [f for f, _ in res], sum(c for _, c in res)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--llama", action="store_true")
    ap.add_argument("--ttft-samples", type=int, default=0, help="one-stream requests in a row, TTFT p50/p99")
    ap.add_argument("--soak", type=int, default=0, help="further rounds of 64 streams, RSS after each")
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    home = os.path.join(d, "home")
    port, direct_port = free_port(), free_port()
    plan = os.path.join(d, "plan.toml")
    with open(plan, "w") as f:
        f.write(f'''schema = 1
[plan]
name = "proxy-bench"
goal = "the agent's proxy under load"
route = "local_cpu"
[model]
id = "synthetic"
runtime = "command"
command = {command(a.llama)}
[instance]
provider = "local"
[stop]
max_duration = "30m"
grace = "5s"
[fallback]
route = "none"
[access]
ports = [{{ local = {port}, remote = {port} }}]
[evidence]
copy_back = ["environment_report.txt", "requests.jsonl"]
shutdown_proof = "process_exited"
dir = "{d}/bundles"
[[eval.case]]
id = "digits"
prompt = "What is 2 + 2?"
expect_regex = "\\\\d"
max_tokens = 8
''')
    env = dict(os.environ, GPUCTL_HOME=home, GPUCTL_AGENT_BIN=os.path.join(a.bin, "gpuctl-agent"))
    up = subprocess.Popen([os.path.join(a.bin, "gpuctl"), "up", "--json", plan], stdout=subprocess.PIPE, text=True, env=env)
    sid = None
    for line in up.stdout:
        e = json.loads(line)
        sid = e.get("session_id", sid)
        if e.get("event") == "step" and e.get("step") == "serve":
            break
    token = open(os.path.join(home, "run", sid, "token")).read().strip()
    config = os.path.join(home, "run", sid, "agent.json")
    pid = int(subprocess.run(["pgrep", "-f", f"serve --config {config}"], capture_output=True, text=True).stdout.split()[0])
    direct = direct_server(a.llama, direct_port)
    wait_port(direct_port)
    try:
        rss0 = rss_kib(pid)
        rows = []
        for streams in (1, 16, 64):
            tps = {"direct": [], "agent": []}
            ttft = {"direct": [], "agent": []}
            cpu = 0.0
            for _ in range(a.rounds):
                for name, p, tok in (("direct", direct_port, None), ("agent", port, token)):
                    c0 = cpu_s(pid)
                    rate, firsts, total = asyncio.run(load(p, tok, streams, a.tokens))
                    if name == "agent":
                        cpu += cpu_s(pid) - c0
                    assert total >= streams * a.tokens * 0.99 or a.llama, f"{name}: {total} chunks of {streams * a.tokens}"
                    tps[name].append(rate)
                    ttft[name] += firsts
            rows.append((streams, statistics.median(tps["direct"]), statistics.median(tps["agent"]),
                         pct(ttft["direct"], 50) * 1000, pct(ttft["agent"], 50) * 1000,
                         pct(ttft["direct"], 99) * 1000, pct(ttft["agent"], 99) * 1000,
                         cpu / (a.rounds * streams * a.tokens) * 1e6))
        rss1 = rss_kib(pid)
        firsts = {"direct": [], "agent": []}
        for _ in range(a.ttft_samples):
            for name, p, tok in (("direct", direct_port, None), ("agent", port, token)):
                firsts[name] += asyncio.run(load(p, tok, 1, 16))[1]
        soak = []
        for _ in range(a.soak):
            asyncio.run(load(port, token, 64, a.tokens))
            soak.append((rss_kib(pid) / 1024, len(os.listdir(f"/proc/{pid}/fd"))))
    finally:
        direct.terminate(); direct.wait()
        subprocess.run([os.path.join(a.bin, "gpuctl"), "down", sid], env=env, capture_output=True)
        up.wait()
    server = "llama.cpp server (llama-cpp-python)" if a.llama else "bench/sse_server.py"
    print(f"{os.cpu_count()} CPUs; server: {server}; {a.tokens} tokens per stream; {a.rounds} rounds, medians (TTFT over every stream)")
    print("| streams | direct tok/s | through agent tok/s | ratio | TTFT p50 direct / agent | TTFT p99 direct / agent | p99 added | agent CPU per token |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for s, td, ta, d50, a50, d99, a99, us in rows:
        print(f"| {s} | {td:.0f} | {ta:.0f} | {ta / td:.2f}x | {d50:.1f} / {a50:.1f} ms | {d99:.1f} / {a99:.1f} ms | {a99 - d99:+.1f} ms | {us:.1f} µs |")
    print(f"agent RSS: {rss0 / 1024:.1f} MiB after start, {rss1 / 1024:.1f} MiB after {a.rounds * (1 + 16 + 64)} streams")
    if a.ttft_samples:
        d50, d99 = pct(firsts["direct"], 50) * 1000, pct(firsts["direct"], 99) * 1000
        g50, g99 = pct(firsts["agent"], 50) * 1000, pct(firsts["agent"], 99) * 1000
        print(f"one stream, {a.ttft_samples} requests each: TTFT p50 direct {d50:.2f} / agent {g50:.2f} ms, "
              f"p99 direct {d99:.2f} / agent {g99:.2f} ms, p99 added {g99 - d99:+.2f} ms")
    if soak:
        print("agent RSS (MiB) and open files after each further round of 64 streams: "
              + ", ".join(f"{r:.1f} ({n})" for r, n in soak))


if __name__ == "__main__":
    main()
