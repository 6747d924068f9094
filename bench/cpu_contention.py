#!/usr/bin/env python3
"""Decode speed on a CPU shared with other work: N copies of an engine decoding at once (as
when several agents, or a test suite, share a machine), and one engine beside busy loops
(a noisy neighbour). Each engine runs with as many threads as the machine has cores, its
default, so N copies oversubscribe the CPU N times.

usage: bench/cpu_contention.py [--copies 1,2,6] [--hogs 1] [--tokens 64] [--rounds 3]
                               [--agent target/release/gpuctl-agent ...] [--no-llamacpp]
`--agent` may be given several times (say, two builds to compare). Run it with the tests'
Python (scripts/install-test-deps.sh): the prompt's token ids come from llama.cpp's
tokenizer, and llama.cpp is the tests' portable build, run through bench/cpu_decode.py's
child mode.
Prints a Markdown table; raw runs go to bench/results/cpu_contention.json.
"""
import argparse, json, os, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import cpu_decode  # noqa: E402  (the model, the prompt, llama.cpp's child mode)


def engine_cmds(a, ids):
    """(name, argv) for every engine measured."""
    id_arg = ",".join(map(str, ids))
    cmds = [(f"gpuctl engine ({os.path.relpath(p, ROOT)})",
             [p, "bench", "--model", cpu_decode.MODEL, "--prompt-ids", id_arg, "--tokens", str(a.tokens)])
            for p in a.agent]
    if not a.no_llamacpp:
        cmds.append(("llama.cpp (tests' portable build)",
                      [cpu_decode.portable_python(), os.path.join(ROOT, "bench", "cpu_decode.py"),
                       "--llamacpp-child", id_arg, "--tokens", str(a.tokens), "--threads", str(os.cpu_count())]))
    return cmds


def run_together(argv, copies, hogs):
    """`copies` processes of argv at once beside `hogs` busy loops: each one's decode tok/s."""
    hog_procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
    try:
        if hogs:
            time.sleep(0.5)  # the busy loops are running before the engines start
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for _ in range(copies)]
        rates = []
        for p in procs:
            out, _ = p.communicate(timeout=600)
            if p.returncode != 0:
                sys.exit(f"{argv[0]} exited with status {p.returncode}")
            rates.append(json.loads(out.strip().splitlines()[-1])["decode_tok_s"])
        return rates
    finally:
        for h in hog_procs:
            h.kill()
            h.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", default="1,2,6", help="how many engines decode at once, comma-separated")
    ap.add_argument("--hogs", type=int, default=1, help="busy loops beside one engine (0: skip that case)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--agent", action="append", help="a gpuctl-agent binary (repeatable)")
    ap.add_argument("--no-llamacpp", action="store_true")
    a = ap.parse_args()
    a.agent = [os.path.abspath(p) for p in (a.agent or [os.path.join(ROOT, "target", "release", "gpuctl-agent")])]
    ids = cpu_decode.prompt_ids()
    # One copy alone is always measured: every row is compared with it.
    copies = sorted({1} | {int(c) for c in a.copies.split(",")})
    cases = [(c, 0) for c in copies] + ([(1, a.hogs)] if a.hogs else [])
    cmds = engine_cmds(a, ids)
    runs = {name: {} for name, _ in cmds}
    for r in range(a.rounds):
        for copies, hogs in cases:
            for name, argv in cmds:  # engines alternate within a round
                runs[name].setdefault(f"{copies}x{hogs}", []).append(run_together(argv, copies, hogs))
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)

    cores = os.cpu_count()
    print(f"{cores} cores; {a.tokens} tokens greedy after the chat prompt; median of {a.rounds} rounds\n")
    print("| engine | at once | busy loops | decode tok/s, each (median) | all together | vs alone |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, by_case in runs.items():
        alone = statistics.median(statistics.median(x) for x in by_case["1x0"])
        for copies, hogs in cases:
            rounds = by_case[f"{copies}x{hogs}"]
            each = statistics.median(v for x in rounds for v in x)
            total = statistics.median(sum(x) for x in rounds)
            print(f"| {name} | {copies} | {hogs} | {each:.1f} | {total:.1f} | {total / alone:.2f}x |")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "cpu_contention.json"), "w") as f:
        json.dump({"cores": cores, "tokens": a.tokens, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
