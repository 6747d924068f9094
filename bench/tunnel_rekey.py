#!/usr/bin/env python3
"""Eight downloads at once through gpuctl's SSH tunnel, 256 MiB each (2 GiB in all: past
russh's 1 GiB re-key limit, so the connection re-keys while every channel is busy), against
a throwaway sshd on 127.0.0.1 (run as root, as the tests do). Prints, per round, how many of
the eight arrived whole. Before gpuctl opened an 8 MiB channel window, the eight were cut
together at the re-key in most rounds (BENCHMARKS.md).

usage: bench/tunnel_rekey.py [--rounds 3] [--bin target/release]
"""
import argparse, os, signal, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ssh_bench import ROOT, Sshd, free_port, plan, wait_port  # noqa: E402

SIZE = 256 << 20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    sshd = Sshd(d)
    home = os.path.join(d, "gpuctl-home")
    www = os.path.join(d, "www")
    os.makedirs(www)
    with open(os.path.join(www, "big"), "wb") as f:
        f.write(os.urandom(1 << 20) * (SIZE >> 20))
    srv_port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "http.server", str(srv_port), "--bind", "127.0.0.1", "--directory", www],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(srv_port)
    results = []
    try:
        for r in range(a.rounds):
            tunnel = free_port()
            p = os.path.join(d, f"tunnel-{r}.toml")
            plan(p, sshd, free_port(), free_port(), extra=(tunnel, srv_port), after_eval=False)
            up = subprocess.Popen([os.path.join(a.bin, "gpuctl"), "up", "--json", "--agent-bin",
                                   os.path.join(a.bin, "gpuctl-agent"), p], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, env=dict(os.environ, GPUCTL_HOME=home, HOME=home))
            for line in up.stdout:
                if '"step":"serve"' in line:
                    break
            outs = [os.path.join(d, f"out-{r}-{i}") for i in range(8)]
            curls = [subprocess.Popen(["curl", "-sS", "-o", o, f"http://127.0.0.1:{tunnel}/big"], stderr=subprocess.DEVNULL)
                     for o in outs]
            for c in curls:
                c.wait()
            whole = sum(1 for o in outs if os.path.exists(o) and os.path.getsize(o) == SIZE)
            results.append(whole)
            for o in outs:
                if os.path.exists(o):
                    os.remove(o)
            up.send_signal(signal.SIGINT)
            up.wait()
            print(f"round {r + 1}: {whole}/8 downloads whole", flush=True)
    finally:
        srv.terminate()
        srv.wait()
        sshd.stop()
    print(f"whole downloads: {sum(results)}/{8 * len(results)} over {len(results)} rounds")


if __name__ == "__main__":
    main()
