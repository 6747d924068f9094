#!/usr/bin/env python3
"""Lateness of the hard stop at each enforcement layer, over many short sessions.

usage: bench/stop_lateness.py [--runs 10] [--parallel 3] [--bin target/release]

Every session serves the bundled model on the local route (or on the emulated Vast cloud,
over SSH to a throwaway sshd) with a hard stop a few seconds away, and is measured against
the deadline recorded in the session database:

  agent   `up` is SIGKILLed once serving: the agent's watchdog alone closes the port.
          deadline -> port refused (polled every 2 ms from here).
  up      `up` stays alive: deadline -> port refused, and deadline -> stop recorded.
  daemon  `up` is SIGKILLed, `gpuctl daemon` runs: deadline -> stop recorded (the daemon's
          proof: process gone, port refused).
  cloud   `up` alive on the emulated Vast (terminate takes the emulator 500 ms):
          deadline -> the provider reads the instance back as terminated (ended_at).
"""
import argparse, concurrent.futures as cf, json, os, shutil, signal, socket, sqlite3, statistics, subprocess, sys, tempfile, time
from datetime import datetime, timezone, timedelta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ssh_bench import Sshd, free_port, MODEL, ROOT  # noqa: E402

BIN = os.path.join(ROOT, "target", "release")


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.05).close()
        return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def plan_text(port, deadline, evidence, cloud=None):
    hs = deadline.strftime("%Y-%m-%dT%H:%M:%SZ")
    if cloud is None:
        return f'''schema = 1
[plan]
name = "lateness"
goal = "measure the stop"
route = "local_cpu"
[model]
id = "smollm2"
runtime = "candle"
path = "{MODEL}"
[instance]
provider = "local"
[stop]
hard_stop_time = "{hs}"
grace = "2s"
[fallback]
route = "none"
[access]
ports = [{{ local = {port}, remote = {port} }}]
[evidence]
copy_back = ["environment_report.txt"]
shutdown_proof = "process_exited"
dir = "{evidence}"
'''
    sshd = cloud
    return f'''schema = 1
[plan]
name = "lateness-cloud"
goal = "measure the stop on the emulated cloud"
route = "rented_gpu"
why = "I need a rented instance to measure the stop against the provider"
can_prove = "deadline to terminate confirmed"
cannot_prove = "anything about GPUs"
[model]
id = "smollm2"
runtime = "candle"
path = "{MODEL}"
[instance]
provider = "vast"
instance_type = "RTX 3090"
user = "root"
gpus = 0
[budget]
hourly_usd = 1.0
max_total_usd = 2.0
[stop]
hard_stop_time = "{hs}"
grace = "2s"
[fallback]
route = "local_cpu"
[access]
method = "ssh_key"
identity_file = "{sshd.d}/client"
ports = [{{ local = {port}, remote = {free_port()} }}]
[evidence]
copy_back = ["environment_report.txt"]
shutdown_proof = "provider_terminated"
dir = "{evidence}"
'''


def db_times(home, sid):
    con = sqlite3.connect(os.path.join(home, "sessions.db"))
    row = con.execute("SELECT deadline, ended_at, state FROM sessions WHERE id = ?", (sid,)).fetchone()
    con.close()
    return row


def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def one(mode, home, env, lead, cloud=None):
    port = free_port()
    deadline = (datetime.now(timezone.utc) + timedelta(seconds=lead)).replace(microsecond=0)
    work = tempfile.mkdtemp(dir=home)
    path = os.path.join(work, "plan.toml")
    with open(path, "w") as f:
        f.write(plan_text(port, deadline, os.path.join(work, "ev"), cloud))
    err = open(os.path.join(work, "up.err"), "w")
    up = subprocess.Popen([os.path.join(BIN, "gpuctl"), "up", "--json", path], env=env, stdout=subprocess.PIPE,
                          stderr=err, text=True)
    sid = None
    for line in up.stdout:
        ev = json.loads(line) if line.startswith("{") else {}
        if ev.get("event") == "session":
            sid = ev["session_id"]
        if ev.get("event") == "step" and ev.get("step") == "serve":
            break
    if sid is None:
        up.wait()
        raise SystemExit(f"up recorded no session: {open(os.path.join(work, 'up.err')).read()[-2000:]}")
    if mode in ("agent", "daemon"):
        up.kill()
        up.wait()
    watch = port if cloud is None else None
    closed_at = None
    if watch:
        while time.time() < deadline.timestamp() + 30:
            if refused(watch):
                closed_at = datetime.now(timezone.utc)
                break
            time.sleep(0.002)
    if mode in ("up", "cloud"):
        up.wait(timeout=120)
    end = time.time() + 90
    row = db_times(home, sid)
    while mode != "agent" and row[2] not in ("stopped", "failed", "stop_unconfirmed") and time.time() < end:
        time.sleep(0.05)
        row = db_times(home, sid)
    d = ts(row[0])
    out = {"mode": mode}
    if closed_at:
        out["port_closed_ms"] = (closed_at - d).total_seconds() * 1000
    if mode != "agent" and row[1]:
        out["state"] = row[2]
        if row[2] == "stopped":
            out["recorded_ms"] = (ts(row[1]) - d).total_seconds() * 1000
        else:
            con = sqlite3.connect(os.path.join(home, "sessions.db"))
            out["failure"] = con.execute("SELECT failure_reason FROM sessions WHERE id = ?", (sid,)).fetchone()[0]
            con.close()
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    global BIN
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--parallel", type=int, default=3)
    ap.add_argument("--lead", type=int, default=12, help="seconds from up to the hard stop")
    ap.add_argument("--bin", default=BIN)
    ap.add_argument("--modes", default="agent,up,daemon,cloud")
    a = ap.parse_args()
    BIN = a.bin
    results = {}
    for mode in a.modes.split(","):
        home = tempfile.mkdtemp(prefix=f"lateness-{mode}-")
        env = dict(os.environ, GPUCTL_HOME=home)
        daemon = emu = sshd = None
        if mode == "daemon":
            daemon = subprocess.Popen([os.path.join(BIN, "gpuctl"), "daemon"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        if mode == "cloud":
            sshd = Sshd(tempfile.mkdtemp())
            emu = subprocess.Popen([os.path.join(BIN, "gpuctl-cloud-emulator"), "--ssh-port", str(sshd.port),
                                    "--boot-ms", "500", "--terminate-ms", "500"], stdout=subprocess.PIPE, text=True)
            url = emu.stdout.readline().strip()
            env.update(GPUCTL_VAST_API=f"{url}/vast/api/v0", VAST_API_KEY="emulator-key")
        with cf.ThreadPoolExecutor(a.parallel) as pool:
            rows = list(pool.map(lambda i: one(mode, home, env, a.lead + i % a.parallel, sshd), range(a.runs)))
        results[mode] = rows
        for p in (daemon, emu):
            if p:
                p.terminate(); p.wait()
        if sshd:
            sshd.stop()
        shutil.rmtree(home, ignore_errors=True)
    print(f"{a.runs} sessions per layer, {a.parallel} at a time, on {os.cpu_count()} CPUs; lateness after the deadline in the database")
    print("| layer | measured | p50 | p99 | max | sessions |")
    print("| --- | --- | --- | --- | --- | --- |")
    for mode, rows in results.items():
        failed = [r for r in rows if r.get("state") not in (None, "stopped")]
        if failed:
            print(f"| {mode} | sessions that did not reach their deadline serving (excluded) | {len(failed)}: {failed[0].get('failure')} | | | |")
        for key, what in (("port_closed_ms", "deadline -> port refused"), ("recorded_ms", "deadline -> stop confirmed and recorded")):
            xs = [r[key] for r in rows if key in r]
            if xs:
                print(f"| {mode} | {what} | {pct(xs, 50):.0f} ms | {pct(xs, 99):.0f} ms | {max(xs):.0f} ms | {len(xs)} |")
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
