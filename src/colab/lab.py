# %% cell: setup
# gpuctl free_colab notebook: generated from a plan; edit the plan, not this notebook.
import datetime, json, os, platform, re, subprocess, sys, time, zipfile

PLAN = json.loads(__PLAN_JSON__)
OUT = os.path.abspath(PLAN["out_dir"])
os.makedirs(OUT, exist_ok=True)
DEADLINE = datetime.datetime.fromisoformat(PLAN["deadline"].replace("Z", "+00:00"))
STATE = {"started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(), "steps": [], "stopped": None, "notes": {}}


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def step(name):
    """True when the step may run: the plan's hard stop is checked before every step."""
    if STATE["stopped"]:
        return False
    if now() >= DEADLINE:
        STATE["stopped"] = {"reason": "deadline", "at": now().isoformat(), "before_step": name}
        print(f"hard stop {PLAN['deadline']} reached before {name}: skipping the rest")
        return False
    STATE["steps"].append({"step": name, "at": now().isoformat()})
    return True


def write(name, text):
    with open(os.path.join(OUT, name), "w") as f:
        f.write(text)


print(f"plan {PLAN['name']}: hard stop {PLAN['deadline']}, evidence in {OUT}")

# %% cell: environment
if step("environment"):
    smi = subprocess.run("nvidia-smi || true", shell=True, capture_output=True, text=True)
    gpu = smi.returncode == 0 and "NVIDIA-SMI" in smi.stdout
    STATE["notes"]["gpu_visible"] = gpu
    STATE["notes"]["runtime"] = "GPU" if gpu else "CPU (no GPU assigned)"
    write("environment_report.txt", "\n".join([
        "# environment report (free_colab notebook)",
        f"generated_at: {now().isoformat()}",
        f"python: {sys.version.split()[0]}",
        f"platform: {platform.platform()}",
        f"gpu_visible: {'yes' if gpu else 'no'}",
        "nvidia-smi:",
        (smi.stdout or smi.stderr or "(not available)").strip(),
        "",
    ]))
    print("GPU visible:", "yes" if gpu else "no")

# %% cell: install
if step("install"):
    import importlib.metadata as md
    missing = []
    for pin in PLAN["packages"]:
        name, version = pin.split("==")
        try:
            if md.version(name) != version:
                missing.append(pin)
        except md.PackageNotFoundError:
            missing.append(pin)
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet"] + missing, check=True)
    STATE["notes"]["installed"] = missing or "all pinned packages were already present"
    print("pinned:", PLAN["packages"], "installed now:", missing)

# %% cell: model and first run
if step("first_run"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    SOURCE = PLAN["model_path"] or PLAN["model_id"]
    t = time.perf_counter()
    TOK = AutoTokenizer.from_pretrained(SOURCE)
    MODEL = AutoModelForCausalLM.from_pretrained(SOURCE).to(DEVICE)
    load_ms = (time.perf_counter() - t) * 1000

    def generate(prompt, max_tokens):
        if TOK.chat_template:
            ids = TOK.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt")
            if not torch.is_tensor(ids):
                ids = ids["input_ids"]
        else:
            ids = TOK(prompt, return_tensors="pt").input_ids
        ids = ids.to(DEVICE)
        t = time.perf_counter()
        with torch.no_grad():
            out = MODEL.generate(ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=TOK.pad_token_id or TOK.eos_token_id)
        ms = (time.perf_counter() - t) * 1000
        new = out[0][ids.shape[1]:]
        return TOK.decode(new, skip_special_tokens=True), len(ids[0]), len(new), ms

    REQUESTS = []
    prompt = PLAN["first_prompt"]
    text, n_in, n_out, ms = generate(prompt, 32)
    REQUESTS.append({"time": now().isoformat(), "route": "generate", "prompt": prompt, "output": text,
                     "prompt_tokens": n_in, "completion_tokens": n_out, "latency_ms": round(ms), "status": 200})
    STATE["notes"]["first_run_output"] = text
    write("first_run.md", f"# First run\n\n- model: {SOURCE} (transformers on {DEVICE})\n- load: {load_ms:.0f} ms\n- latency: {ms:.0f} ms\n- tokens: {n_in} prompt, {n_out} completion\n\n## Prompt\n\n{prompt}\n\n## Output\n\n{text}\n")
    print(text)

# %% cell: eval
if step("eval"):
    import csv, io
    rows = io.StringIO()
    w = csv.writer(rows)
    w.writerow(["id", "prompt", "output", "pass", "reason", "latency_ms", "tokens", "tokens_per_s"])
    for case in PLAN["cases"]:
        if not step(f"case {case['id']}"):
            break
        text, n_in, n_out, ms = generate(case["prompt"], case["max_tokens"])
        if case.get("expect_contains") is not None:
            ok = case["expect_contains"] in text
            reason = f"contains {case['expect_contains']!r}" if ok else f"does not contain {case['expect_contains']!r}"
        else:
            ok = re.search(case["expect_regex"], text) is not None
            reason = f"matches /{case['expect_regex']}/" if ok else f"does not match /{case['expect_regex']}/"
        if ok and case.get("max_latency_ms") and ms > case["max_latency_ms"]:
            ok, reason = False, f"{ms:.0f} ms > {case['max_latency_ms']} ms"
        REQUESTS.append({"time": now().isoformat(), "route": "generate", "prompt": case["prompt"], "output": text,
                         "prompt_tokens": n_in, "completion_tokens": n_out, "latency_ms": round(ms), "status": 200})
        w.writerow([case["id"], case["prompt"], text, str(ok).lower(), reason, round(ms), n_out, f"{n_out / max(ms / 1000, 1e-9):.2f}"])
        print("pass" if ok else "FAIL", case["id"], reason)
    write("eval_results.csv", rows.getvalue())

# %% cell: stop and package
# This cell always runs: it records how the notebook stopped and packs the evidence.
if "REQUESTS" in globals():
    write("requests.jsonl", "".join(json.dumps(r) + "\n" for r in REQUESTS))
stopped = STATE["stopped"] or {"reason": "completed", "at": now().isoformat()}
record = {"plan": PLAN["name"], "plan_sha256": PLAN["plan_sha256"], "deadline": PLAN["deadline"],
          "started_at": STATE["started_at"], "stopped_at": stopped["at"], "reason": stopped["reason"],
          "steps": STATE["steps"], "gpu_visible": STATE["notes"].get("gpu_visible")}
write("stop_record.json", json.dumps(record, indent=2))
files = sorted(n for n in os.listdir(OUT) if n != "colab_notes.md")
notes = STATE["notes"]
write("colab_notes.md", "\n".join([
    f"# Colab notes: {PLAN['name']}", "",
    f"- runtime type: {notes.get('runtime', 'unknown')}",
    f"- GPU visible: {'yes' if notes.get('gpu_visible') else 'no'}",
    f"- install cells: pinned {', '.join(PLAN['packages'])}; installed in this runtime: {notes.get('installed', 'not run')}",
    f"- first run output: {notes.get('first_run_output', '(not run)')!r}",
    f"- files downloaded back: {', '.join(files + ['colab_notes.md'])}",
    "- if the runtime resets: the model, the installed packages and every file above are lost; "
    "run all cells again (the hard stop still counts from the plan) and download the zip before the runtime is recycled",
    f"- stop: {stopped['reason']} at {stopped['at']}", ""]))
ZIP = os.path.join(os.path.dirname(OUT) or ".", f"gpuctl-evidence-{PLAN['name']}.zip")
with zipfile.ZipFile(ZIP, "w", zipfile.ZIP_DEFLATED) as z:
    for name in sorted(os.listdir(OUT)):
        z.write(os.path.join(OUT, name), name)
print("evidence:", ZIP, "- import it with: gpuctl evidence import PLAN", os.path.basename(ZIP))
try:
    from google.colab import files as colab_files  # only inside Colab
    colab_files.download(ZIP)
except ImportError:
    pass
