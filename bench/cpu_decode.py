#!/usr/bin/env python3
"""Decode speed and time to first token of the default model on CPU: candle (gpuctl-agent
bench) against llama.cpp (llama-cpp-python) on the same GGUF file and the same token ids,
a fresh process per run, engines alternating round by round.

usage: bench/cpu_decode.py [--rounds 5] [--tokens 128] [--threads 2] [--agent target/release/gpuctl-agent]
                           [--llamacpp portable] [--prompt-tokens 1024]
Writes a Markdown table to stdout and the raw runs to bench/results/cpu_decode[-N].json.

Engines: gpuctl's own CPU engine at the best kernel level this CPU has, the same forced to
AVX2 (GPUCTL_CPU_KERNELS=avx2: what a CPU without AVX-512 runs), and candle 0.11's engine
(GPUCTL_ENGINE=candle). `--prompt-tokens N` replaces the short chat prompt with N tokens of
text (prefill-heavy). The physical floor is printed too: memory read bandwidth measured
here (`gpuctl-agent membw`: one reader per thread over 1 GiB) over the GGUF's bytes,
read once per token.

llama.cpp is measured at its best: built for this very CPU (GGML_NATIVE=ON) into a virtual
environment of the benchmark's own, bench/.llamacpp-native/ (git-ignored, built once, about
5 minutes on 2 cores), with the versions the tests pin. The tests use a portable build
instead (scripts/install-test-deps.sh): a native build crashed on an Intel Xeon with AMX.
Before any timing, a short multi-token generation checks the native build; if it crashes,
the benchmark says so and stops (`--llamacpp portable` measures the tests' build instead).
"""
import argparse, hashlib, json, os, platform, resource, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
          "<|im_start|>user\nWhat is the capital of France? Answer in one word.<|im_end|>\n<|im_start|>assistant\n")


def llamacpp_run(ids, tokens, threads):
    """One llama.cpp run in this (fresh) process: greedy, EOS ignored."""
    import numpy as np
    import llama_cpp
    llm = llama_cpp.Llama(model_path=MODEL, n_ctx=len(ids) + tokens + 64, n_threads=threads, n_threads_batch=threads, verbose=False)
    n_vocab = llm.n_vocab()

    def argmax():
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,))))

    t0 = time.perf_counter()
    llm.eval(ids)
    nxt = argmax()
    ttft = time.perf_counter() - t0
    out = [nxt]
    t1 = time.perf_counter()
    for _ in range(tokens - 1):
        llm.eval([nxt])
        nxt = argmax()
        out.append(nxt)
    decode = time.perf_counter() - t1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"engine": "llama.cpp", "ttft_ms": ttft * 1000, "decode_tok_s": (tokens - 1) / decode,
            "peak_rss_kib": rss, "tokens": out}


NATIVE_VENV = os.path.join(ROOT, "bench", ".llamacpp-native")


def native_python():
    """The benchmark's own llama.cpp, built for this CPU; built on first use."""
    py = os.path.join(NATIVE_VENV, "bin", "python")
    req = os.path.join(ROOT, "scripts", "test-requirements.txt")
    cons = os.path.join(ROOT, "scripts", "test-constraints.txt")
    with open(req, "rb") as a, open(cons, "rb") as b:
        stamp = hashlib.sha256(a.read() + b.read() + b"native").hexdigest()[:16]
    stamp_file = os.path.join(NATIVE_VENV, ".stamp")
    if os.path.exists(stamp_file) and open(stamp_file).read().strip() == stamp:
        return py
    print("building llama.cpp for this CPU in bench/.llamacpp-native (once; about 5 minutes on 2 cores)",
          file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", NATIVE_VENV], check=True)
    pip = [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--constraint", cons]
    subprocess.run(pip + ["scikit-build-core", "cmake", "ninja", "setuptools", "wheel", "numpy"], check=True)
    llama = next(l.strip() for l in open(req) if l.startswith("llama-cpp-python"))
    # --no-cache-dir: never the portable wheel the tests built, always this CPU's build.
    subprocess.run(pip + ["--no-build-isolation", "--no-cache-dir", llama], check=True,
                   env=dict(os.environ, CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_OPENMP=ON"))
    with open(stamp_file, "w") as f:
        f.write(stamp)
    return py


def portable_python():
    venv = os.environ.get("GPUCTL_TEST_VENV") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gpuctl", "test-venv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        sys.exit(f"no test environment at {venv}: run scripts/install-test-deps.sh first")
    return py


def smoke_test(py, threads):
    """A short multi-token generation: a build that crashes says so here, not mid-benchmark."""
    out = subprocess.run([py, __file__, "--llamacpp-child", "1,2,3,4,5,6,7,8", "--tokens", "4",
                          "--threads", str(threads)], capture_output=True, text=True)
    if out.returncode != 0:
        how = (f"was killed by signal {-out.returncode}" if out.returncode < 0
               else f"exited with status {out.returncode}")
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
        sys.exit(f"llama.cpp ({py}) {how} on an 8-token prompt on this CPU ({cpu}); nothing was timed.\n"
                 f"{out.stderr.strip()[-2000:]}\n"
                 "Measure the tests' portable build instead: bench/cpu_decode.py --llamacpp portable")


LONG_TEXT = ("The history of the printing press begins in the fifteenth century, when movable type, "
             "oil-based inks and the screw press came together in Mainz. Within fifty years presses "
             "worked in more than two hundred cities, and the price of a book fell by an order of "
             "magnitude. Scholars argue about how much of the Reformation, the scientific revolution "
             "and the rise of vernacular literature followed from it. ")


def prompt_ids(n=None):
    import llama_cpp
    vocab = llama_cpp.Llama(model_path=MODEL, vocab_only=True, verbose=False)
    if n is None:
        return vocab.tokenize(PROMPT.encode(), add_bos=False, special=True)
    ids = []
    while len(ids) < n:
        ids = vocab.tokenize((LONG_TEXT * (1 + len(ids) // 40 + n // 40)).encode(), add_bos=False, special=False)
    return ids[:n]


def read_bandwidth(agent, threads):
    """Bytes per second read from memory: `gpuctl-agent membw` (each thread sums its share of
    a 1 GiB buffer, best of 5 passes)."""
    out = subprocess.run([agent, "membw", "--threads", str(threads)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["read_bytes_per_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--agent", default=os.path.join(ROOT, "target", "release", "gpuctl-agent"))
    ap.add_argument("--llamacpp", choices=["native", "portable"], default="native",
                    help="which llama.cpp build to measure (default: built for this CPU)")
    ap.add_argument("--prompt-tokens", type=int, help="a text prompt of this many tokens instead of the chat prompt")
    ap.add_argument("--llamacpp-child", help=argparse.SUPPRESS)
    ap.add_argument("--in-venv", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.llamacpp_child:
        ids = [int(x) for x in a.llamacpp_child.split(",")]
        print(json.dumps(llamacpp_run(ids, a.tokens, a.threads)))
        return
    if not a.in_venv:
        # Run the whole benchmark under the chosen build's interpreter.
        py = native_python() if a.llamacpp == "native" else portable_python()
        smoke_test(py, a.threads)
        os.execv(py, [py, __file__, "--in-venv"] + sys.argv[1:])

    ids = prompt_ids(a.prompt_tokens)
    id_arg = ",".join(map(str, ids))
    variants = [
        ("gpuctl engine (best kernels here)", {}),
        ("gpuctl engine, AVX2 forced", {"GPUCTL_CPU_KERNELS": "avx2"}),
        ("candle 0.11 (GPUCTL_ENGINE=candle: Q4_1 re-encoded as Q8_0)", {"GPUCTL_ENGINE": "candle"}),
    ]
    runs = {name: [] for name in ["llama.cpp"] + [v[0] for v in variants]}
    base_env = dict(os.environ, CANDLE_NUM_THREADS=str(a.threads), RAYON_NUM_THREADS=str(a.threads),
                    GPUCTL_THREADS=str(a.threads))
    for r in range(a.rounds):
        for name, extra in variants:
            out = subprocess.run([a.agent, "bench", "--model", MODEL, "--prompt-ids", id_arg, "--tokens", str(a.tokens)],
                                 env=dict(base_env, **extra), capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout))
            out = subprocess.run([sys.executable, __file__, "--llamacpp-child", id_arg, "--tokens", str(a.tokens),
                                  "--threads", str(a.threads)], capture_output=True, text=True, check=True)
            runs["llama.cpp"].append(json.loads(out.stdout))
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)

    # Ratios pair by pair: each candle run against the llama.cpp run right after it.
    lc = runs["llama.cpp"]
    rows = []
    for name in runs:
        rs = runs[name]
        med = lambda k: statistics.median(x[k] for x in rs)
        if name == "llama.cpp":
            dec_ratio = ttft_ratio = [1.0]
        else:
            pairs = [lc[i * len(variants) + [v[0] for v in variants].index(name)] for i in range(len(rs))]
            dec_ratio = [x["decode_tok_s"] / y["decode_tok_s"] for x, y in zip(rs, pairs)]
            ttft_ratio = [x["ttft_ms"] / y["ttft_ms"] for x, y in zip(rs, pairs)]
        # How many leading generated tokens agree with llama.cpp's (quantized arithmetic may
        # drift later; the first ones must match).
        def prefix(x):
            n = 0
            for p, q in zip(x["tokens"], lc[0]["tokens"]):
                if p != q:
                    break
                n += 1
            return n
        agree = min(prefix(x) for x in rs)
        rows.append((name, med("ttft_ms"), med("decode_tok_s"), max(x["peak_rss_kib"] for x in rs) / 1024,
                     statistics.median(dec_ratio), min(dec_ratio), max(dec_ratio), statistics.median(ttft_ratio),
                     min(ttft_ratio), max(ttft_ratio), agree, rs[0].get("engine", "llama.cpp")))

    gguf = os.path.getsize(MODEL)
    bw = read_bandwidth(a.agent, a.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; threads {a.threads}; "
          f"prompt {len(ids)} tokens; {a.tokens} greedy tokens (EOS ignored); {a.rounds} rounds")
    print(f"GGUF {gguf / 2**20:.1f} MiB; peak-memory target 1.5x = {1.5 * gguf / 2**20:.0f} MiB")
    print(f"memory read bandwidth ({a.threads} readers): {bw / 1e9:.1f} GB/s; floor: the GGUF read once per "
          f"token = {bw / gguf:.0f} tok/s")
    print("| engine | TTFT (median) | decode tok/s (median) | peak RSS | decode ratio to llama.cpp (min-max) | TTFT ratio (min-max) | leading tokens equal to llama.cpp's (min) | decode / floor |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, t, d, rss, dr, dmin, dmax, tr, tmin, tmax, agree, engine in rows:
        print(f"| {n} [{engine}] | {t:.0f} ms | {d:.1f} | {rss:.0f} MiB | {dr:.2f} ({dmin:.2f}-{dmax:.2f}) | "
              f"{tr:.2f}x ({tmin:.2f}-{tmax:.2f}) | {agree}/{a.tokens} | {d / (bw / gguf):.2f} |")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    suffix = f"-{a.prompt_tokens}" if a.prompt_tokens else ""
    with open(os.path.join(ROOT, "bench", "results", f"cpu_decode{suffix}.json"), "w") as f:
        json.dump({"prompt_ids": ids, "runs": runs, "read_bandwidth_bytes_s": bw, "gguf_bytes": gguf}, f)


if __name__ == "__main__":
    main()
