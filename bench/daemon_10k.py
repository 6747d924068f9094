#!/usr/bin/env python3
"""`gpuctl daemon` with 10,000 live sessions on the emulated Vast cloud: sweep time, memory,
and the lateness of every deadline (deadline -> the provider reads the instance back as
terminated, recorded in the database).

usage: bench/daemon_10k.py [--sessions 10000] [--lead 90] [--spread 300] [--bin target/release]

The emulator holds one running instance per session (no boot or terminate delay, so the
figures are gpuctl's own); the sessions are written through the real schema by
`gpuctl debug seed`, with deadlines spread evenly over --spread seconds starting --lead
seconds after the seed; then one daemon takes them all over and stops each at its deadline.
"""
import argparse, json, os, sqlite3, statistics, subprocess, sys, tempfile, threading, time, urllib.request
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--lead", type=int, default=90)
    ap.add_argument("--spread", type=int, default=300)
    ap.add_argument("--parallel-stops", type=int, default=32)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
    a = ap.parse_args()
    home = tempfile.mkdtemp(prefix="daemon10k-")
    # Both rate limits lifted (the emulator's, and the client's own pace, for a loopback API
    # only): one Vast key allows a terminate every 3.1 s, and the figures are gpuctl's own.
    emu = subprocess.Popen([os.path.join(a.bin, "gpuctl-cloud-emulator"), "--boot-ms", "0", "--terminate-ms", "0",
                            "--vast-rate-limits", "off"],
                           stdout=subprocess.PIPE, text=True)
    url = emu.stdout.readline().strip()
    req = urllib.request.Request(f"{url}/_emulator/instances", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"provider": "vast", "instance_type": "RTX 3090", "count": a.sessions,
                                                  "name_prefix": "gpuctl-bench-"}).encode())
    ids = json.load(urllib.request.urlopen(req))
    with open(os.path.join(home, "instances.json"), "w") as f:
        json.dump(ids, f)
    env = dict(os.environ, GPUCTL_HOME=home, GPUCTL_VAST_API=f"{url}/vast/api/v0", VAST_API_KEY="emulator-key",
               GPUCTL_EMULATOR_UNPACED="1")
    t = time.time()
    subprocess.run([os.path.join(a.bin, "gpuctl"), "debug", "seed", "--count", str(a.sessions), "--instances",
                    os.path.join(home, "instances.json"), "--deadline-in", f"{a.lead}s", "--spread", f"{a.spread}s"],
                   env=env, check=True)
    seed_s = time.time() - t
    log = open(os.path.join(home, "daemon.jsonl"), "w")
    daemon = subprocess.Popen([os.path.join(a.bin, "gpuctl"), "daemon", "--json", "--log-sweeps", "--parallel-stops",
                               str(a.parallel_stops)], env=env, stdout=log, stderr=subprocess.DEVNULL)
    peak = {"hwm": 0, "rss": []}

    def sample():
        while daemon.poll() is None:
            try:
                with open(f"/proc/{daemon.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak["hwm"] = int(line.split()[1])
                        if line.startswith("VmRSS:"):
                            peak["rss"].append(int(line.split()[1]))
            except OSError:
                pass
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    db = os.path.join(home, "sessions.db")
    end = time.time() + a.lead + a.spread + 300
    while time.time() < end:
        con = sqlite3.connect(db)
        left = con.execute("SELECT count(*) FROM sessions WHERE state NOT IN ('stopped', 'failed')").fetchone()[0]
        con.close()
        if left == 0:
            break
        time.sleep(2)
    daemon.terminate()
    daemon.wait()
    log.close()
    con = sqlite3.connect(db)
    rows = con.execute("SELECT deadline, ended_at, state FROM sessions").fetchall()
    con.close()
    late = [(ts(e) - ts(d)).total_seconds() * 1000 for d, e, s in rows if e and s == "stopped"]
    states = {}
    for _, _, s in rows:
        states[s] = states.get(s, 0) + 1
    sweeps = []
    with open(os.path.join(home, "daemon.jsonl")) as f:
        for line in f:
            m = json.loads(line).get("message", "")
            if m.startswith("sweep: "):
                parts = m.split()
                sweeps.append((int(parts[1]), float(parts[5])))
    inst = json.load(urllib.request.urlopen(f"{url}/_emulator/instances"))["instances"]
    billing = sum(1 for i in inst if i["billing"])
    emu.terminate()
    emu.wait()
    busy = [ms for n, ms in sweeps if n >= a.sessions * 0.9]
    print(f"{a.sessions} live sessions on the emulated Vast, deadlines over {a.spread} s, {a.parallel_stops} stops at once, {os.cpu_count()} CPUs")
    print(f"seeded in {seed_s:.1f} s; final states {states}; instances still billing: {billing}")
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| first sweep (loads and takes over every session) | {sweeps[0][1]:.0f} ms |" if sweeps else "| first sweep | - |")
    if busy:
        print(f"| sweep with >= 90 % of the sessions live: median / max | {statistics.median(busy):.0f} / {max(busy):.0f} ms ({len(busy)} sweeps) |")
    print(f"| lateness, deadline -> terminate confirmed: p50 / p99 / max | {pct(late, 50):.0f} / {pct(late, 99):.0f} / {max(late):.0f} ms ({len(late)} sessions) |")
    print(f"| daemon peak memory (VmHWM) | {peak['hwm'] / 1024:.0f} MiB |")


if __name__ == "__main__":
    main()
