#!/usr/bin/env python3
"""Controller overhead per cloud session on the emulator, and the API calls it makes.

usage: bench/cloud_overhead.py [--runs 3] [--boot-ms 1000] [--bin target/release]

Each run is `gpuctl up --json` on an after_eval plan for Lambda, RunPod and Vast against the
cloud emulator (instances reached at a throwaway sshd on 127.0.0.1). From the session's own
timings: overhead = wall time - waiting for the emulated boot - model load - first run -
eval. Lambda's client keeps to Lambda's documented pace (about 1 request/s, one launch per
10 s), so its overhead includes that pace; runs are spaced 10 s apart for the launch limit.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ssh_bench import Sshd, free_port, MODEL, ROOT  # noqa: E402

TYPES = {"lambda": ("gpu_1x_a10", 'region = "us-east-1"'), "runpod": ("NVIDIA RTX A5000", ""), "vast": ("RTX 3090", "")}


def plan(path, provider, sshd, ev):
    itype, region = TYPES[provider]
    with open(path, "w") as f:
        f.write(f'''schema = 1
[plan]
name = "overhead-{provider}"
goal = "measure the controller on the emulated {provider}"
route = "rented_gpu"
why = "I need a rented instance reached by SSH to measure the controller"
can_prove = "controller overhead and API calls per session"
cannot_prove = "anything about GPUs"
[model]
id = "smollm2"
runtime = "candle"
path = "{MODEL}"
[instance]
provider = "{provider}"
instance_type = "{itype}"
{region}
user = "root"
gpus = 0
[budget]
hourly_usd = 2.0
max_total_usd = 2.0
[stop]
max_duration = "10m"
grace = "5s"
after_eval = true
[fallback]
route = "local_cpu"
[access]
method = "ssh_key"
identity_file = "{sshd.d}/client"
ports = [{{ local = {free_port()}, remote = {free_port()} }}]
[evidence]
copy_back = ["environment_report.txt", "first_run.md", "eval_results.csv", "requests.jsonl"]
shutdown_proof = "provider_terminated"
dir = "{ev}"
[[eval.case]]
id = "digits"
prompt = "What is 2 + 2?"
expect_regex = "\\\\d"
max_tokens = 8
''')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--boot-ms", type=int, default=1000)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
    a = ap.parse_args()
    sshd = Sshd(tempfile.mkdtemp())
    emu = subprocess.Popen([os.path.join(a.bin, "gpuctl-cloud-emulator"), "--ssh-port", str(sshd.port), "--boot-ms",
                            str(a.boot_ms), "--terminate-ms", "500"], stdout=subprocess.PIPE, text=True)
    url = emu.stdout.readline().strip()
    home = tempfile.mkdtemp()
    env = dict(os.environ, GPUCTL_HOME=home, GPUCTL_LAMBDA_API=f"{url}/lambda/api/v1", GPUCTL_RUNPOD_API=f"{url}/runpod/graphql",
               GPUCTL_VAST_API=f"{url}/vast/api/v0", LAMBDA_API_KEY="emulator-key", RUNPOD_API_KEY="emulator-key",
               VAST_API_KEY="emulator-key")
    rows = {p: [] for p in TYPES}
    for i in range(a.runs):
        for p in TYPES:
            path = os.path.join(home, f"{p}-{i}.toml")
            plan(path, p, sshd, os.path.join(home, "ev"))
            t0 = time.perf_counter()
            out = subprocess.run([os.path.join(a.bin, "gpuctl"), "up", "--json", path], env=env, capture_output=True, text=True)
            wall = (time.perf_counter() - t0) * 1000
            r = next(json.loads(l) for l in out.stdout.splitlines() if '"event":"result"' in l)
            s = r["timings_ms"]
            boot = s.get("cloud_boot_wait", 0)
            work = s.get("model_load_to_healthy", 0) + s.get("first_run", 0) + s.get("eval", 0)
            rows[p].append({"state": r["state"], "wall": wall, "boot": boot, "work": work, "overhead": wall - boot - work,
                            "calls": r["provider_api_calls"]["session"], "stop_calls": r["provider_api_calls"]["stop"]})
        time.sleep(10)
    emu.terminate(); emu.wait(); sshd.stop()
    print(f"{a.runs} sessions per provider on the emulator (boot {a.boot_ms} ms, terminate 500 ms), {os.cpu_count()} CPUs")
    print("| provider | states | wall (median) | emulated boot wait | model load + generation | controller overhead (median / max) | API calls per session (of which at the stop) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for p, rs in rows.items():
        med = lambda k: statistics.median(r[k] for r in rs)
        print(f"| {p} | {','.join(sorted(set(r['state'] for r in rs)))} | {med('wall'):.0f} ms | {med('boot'):.0f} ms | {med('work'):.0f} ms | "
              f"{med('overhead'):.0f} / {max(r['overhead'] for r in rs):.0f} ms | {med('calls'):.0f} ({med('stop_calls'):.0f}) |")


if __name__ == "__main__":
    main()
