#!/usr/bin/env python3
"""Time from `gpuctl up` to the first token on the local route, split into the
controller's own overhead and the agent's model load, over several sessions.

usage: bench/up_overhead.py [--runs 5] [--bin target/release]
Each run is `gpuctl up --json plans/local-cpu.toml` in a fresh GPUCTL_HOME; the split comes
from the bundle's timings.json (written by `up` from its own clock).
"""
import argparse, json, os, statistics, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
    a = ap.parse_args()
    rows = []
    for _ in range(a.runs):
        with tempfile.TemporaryDirectory() as home:
            t0 = time.perf_counter()
            out = subprocess.run([os.path.join(a.bin, "gpuctl"), "up", "--json", "plans/local-cpu.toml"], cwd=ROOT,
                                 env=dict(os.environ, GPUCTL_HOME=home), capture_output=True, text=True, check=True)
            wall = (time.perf_counter() - t0) * 1000
            events = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
            result = next(e for e in events if e["event"] == "result")
            steps = result["timings_ms"]
            with open(os.path.join(result["bundle"], "first_run.md")) as f:
                first = f.read()
            generation = steps["first_run"] + steps.get("eval", 0)
            load = steps["model_load_to_healthy"]
            rows.append({
                "wall_ms": wall,
                "model_load_ms": load,
                "first_run_ms": steps["first_run"],
                "generation_ms": generation,
                # Everything `up` does that is neither loading the model nor generating.
                "controller_overhead_ms": wall - load - generation,
                "to_first_answer_ms": sum(e.get("ms", 0) for e in events if e["event"] == "done" and e["step"] in ("deploy", "load", "first_run")),
            })
    med = lambda k: statistics.median(r[k] for r in rows)
    mx = lambda k: max(r[k] for r in rows)
    print(f"{a.runs} sessions of `gpuctl up plans/local-cpu.toml` ({os.cpu_count()} CPUs)")
    print("| measure | median | max |")
    print("| --- | --- | --- |")
    for k in ["wall_ms", "model_load_ms", "first_run_ms", "generation_ms", "controller_overhead_ms", "to_first_answer_ms"]:
        print(f"| {k} | {med(k):.0f} ms | {mx(k):.0f} ms |")


if __name__ == "__main__":
    main()
