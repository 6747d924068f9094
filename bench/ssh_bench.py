#!/usr/bin/env python3
"""Deploy time and tunnel performance of the SSH route, side by side with OpenSSH on the
same sshd (a throwaway one on 127.0.0.1, as the tests start it; run as root).

- deploy: `gpuctl up` (connect, upload, start, healthy through its tunnel) against
  `scp` of the same binary and config + `ssh host 'setsid agent ... &'` + `ssh -L` + health,
  cold (binary not on the host) and cached (binary already there: gpuctl skips the upload,
  OpenSSH skips the scp);
- tunnel: throughput of a 256 MiB download and the time of small requests (a new TCP
  connection each, so a new channel each) through gpuctl's tunnel and through `ssh -L`,
  with the direct connection as the floor.

usage: bench/ssh_bench.py [--runs 3] [--bin target/release]
"""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close(); return True
        except OSError:
            time.sleep(0.02)
    return False


class Sshd:
    def __init__(self, d):
        self.d, self.port, self.home = d, free_port(), os.path.join(d, "home")
        os.makedirs(self.home)
        for k in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/{k}"], check=True)
        shutil.copy(f"{d}/client.pub", f"{d}/authorized_keys")
        with open(f"{d}/sshd_config", "w") as f:
            f.write(f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {d}/host\nPidFile {d}/pid\nAuthorizedKeysFile {d}/authorized_keys\n"
                    "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
                    f"AllowTcpForwarding yes\nSubsystem sftp internal-sftp\nSetEnv HOME={self.home}\n")
        os.makedirs("/run/sshd", exist_ok=True)
        self.p = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", f"{d}/sshd_config"], stderr=subprocess.DEVNULL)
        wait_port(self.port)
        self.fp = subprocess.run(["ssh-keygen", "-lf", f"{d}/host.pub"], capture_output=True, text=True).stdout.split()[1]
        self.ssh = ["-i", f"{d}/client", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                    "-o", f"UserKnownHostsFile={d}/known_hosts", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]

    def stop(self):
        self.p.terminate(); self.p.wait()


def plan(path, sshd, local, remote, extra=None, after_eval=True):
    ports = f"{{ local = {local}, remote = {remote} }}" + (f", {{ local = {extra[0]}, remote = {extra[1]} }}" if extra else "")
    with open(path, "w") as f:
        f.write(f'''schema = 1
[plan]
name = "ssh-bench"
goal = "measure the SSH route"
route = "rented_gpu"
why = "I need SSH access to a host, within a small budget"
can_prove = "deploy and tunnel speed"
cannot_prove = "GPU serving"
[model]
id = "smollm2"
runtime = "candle"
path = "{MODEL}"
[instance]
provider = "ssh"
host = "127.0.0.1"
port = {sshd.port}
user = "root"
host_key = "{sshd.fp}"
gpus = 0
hourly_price_usd = 0.5
[budget]
hourly_usd = 1.0
max_total_usd = 2.0
[stop]
max_duration = "5m"
grace = "5s"
after_eval = {"true" if after_eval else "false"}
[fallback]
route = "local_cpu"
[access]
method = "ssh_key"
identity_file = "{sshd.d}/client"
ports = [{ports}]
[evidence]
copy_back = ["environment_report.txt"]
shutdown_proof = "process_exited"
dir = "{sshd.d}/bundles"
''')


def gpuctl_deploy(a, sshd, home, cold):
    if cold:
        shutil.rmtree(os.path.join(sshd.home, ".gpuctl", "bin"), ignore_errors=True)
    p = os.path.join(sshd.d, "plan.toml")
    plan(p, sshd, free_port(), free_port())
    out = subprocess.run([os.path.join(a.bin, "gpuctl"), "up", "--json", "--agent-bin", a.agent, p], capture_output=True, text=True,
                         env=dict(os.environ, GPUCTL_HOME=home, HOME=home), check=True).stdout
    ms = {e["step"]: e["ms"] for e in map(json.loads, out.splitlines()) if e.get("event") == "done"}
    STEPS.setdefault("cold" if cold else "cached", []).append((ms["connect"], ms["deploy"], ms["load"]))
    return (ms["connect"] + ms["deploy"] + ms["load"]) / 1000


def openssh_deploy(a, sshd, cold):
    d = os.path.join(sshd.home, "ossh")
    os.makedirs(d, exist_ok=True)
    if cold and os.path.exists(f"{d}/agent"):
        os.remove(f"{d}/agent")
    port, local = free_port(), free_port()
    token = "bench-token-0123456789abcdef"
    # The agent's config protocol, as this agent reports it ("gpuctl-agent X (protocol N)").
    protocol = int(subprocess.run([a.agent, "version"], capture_output=True, text=True).stdout.rsplit("protocol", 1)[1].strip(" )\n"))
    cfg = {"protocol": protocol, "session_id": "ossh", "grace_secs": 1, "listen_port": port, "deadline": "2099-01-01T00:00:00Z",
           "token_file": f"{d}/token", "evidence_dir": f"{d}/ev", "model": {"id": "smollm2", "runtime": "candle", "path": MODEL}}
    tmp = tempfile.mkdtemp()
    with open(f"{tmp}/agent.json", "w") as f:
        json.dump(cfg, f)
    with open(f"{tmp}/token", "w") as f:
        f.write(token)
    t0 = time.perf_counter()
    files = [f"{tmp}/agent.json", f"{tmp}/token"] + ([a.agent] if cold else [])
    subprocess.run(["scp", "-q", "-P", str(sshd.port)] + sshd.ssh + files + [f"root@127.0.0.1:{d}/"], check=True)
    if cold:
        subprocess.run(["ssh", "-p", str(sshd.port)] + sshd.ssh + ["root@127.0.0.1", f"mv {d}/gpuctl-agent {d}/agent"], check=True)
    pid = subprocess.run(["ssh", "-p", str(sshd.port)] + sshd.ssh + ["root@127.0.0.1", f"cd {d} && {{ setsid ./agent serve --config agent.json > agent.log 2>&1 < /dev/null & echo $!; }}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    fwd = subprocess.Popen(["ssh", "-N", "-p", str(sshd.port), "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{local}:127.0.0.1:{port}"] + sshd.ssh + ["root@127.0.0.1"])
    deadline = time.time() + 60  # bounded: an agent that never answers fails the run
    while True:
        if time.time() > deadline:
            raise SystemExit(f"the agent started over OpenSSH never answered; see {d}/agent.log on the test host")
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{local}/health", headers={"Authorization": f"Bearer {token}"})
            urllib.request.urlopen(req, timeout=1).read(); break
        except Exception:
            time.sleep(0.05)
    took = time.perf_counter() - t0
    fwd.terminate(); fwd.wait()
    os.kill(int(pid), signal.SIGTERM)
    shutil.rmtree(tmp)
    return took


STEPS = {}


def parallel(port, path, streams):
    """`streams` downloads at once (curl, so the client costs little); MiB/s of them all. A
    transfer cut short stops the benchmark: its rate would not be a rate."""
    t0 = time.perf_counter()
    ps = [subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", f"http://127.0.0.1:{port}{path}"],
                           stdout=subprocess.PIPE, text=True) for _ in range(streams)]
    sizes = [int(p.communicate()[0] or 0) for p in ps]
    took = time.perf_counter() - t0
    if any(s != 256 << 20 for s in sizes):
        raise SystemExit(f"{streams} parallel downloads on port {port}: {sum(s != 256 << 20 for s in sizes)} cut short "
                         f"(bytes: {sizes})")
    return 256 * streams / took


def fetch(port, path, n=1):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:
            while r.read(1 << 20):
                pass
        times.append(time.perf_counter() - t0)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
    a = ap.parse_args()
    a.agent = os.path.join(a.bin, "gpuctl-agent")
    d = tempfile.mkdtemp()
    sshd = Sshd(d)
    home = os.path.join(d, "gpuctl-home")
    try:
        rows = {}
        for cold in (True, False):
            print(f"deploy ({'cold' if cold else 'cached'})...", file=sys.stderr, flush=True)
            g = [gpuctl_deploy(a, sshd, home, cold) for _ in range(a.runs)]
            o = [openssh_deploy(a, sshd, cold) for _ in range(a.runs)]
            rows["cold" if cold else "cached"] = (statistics.median(g), statistics.median(o))
        # Tunnel: a file server on the host side, reached three ways.
        www = os.path.join(d, "www"); os.makedirs(www)
        with open(os.path.join(www, "big"), "wb") as f:
            f.write(os.urandom(1 << 20) * 256)
        with open(os.path.join(www, "small"), "w") as f:
            f.write("x" * 100)
        srv_port = free_port()
        srv = subprocess.Popen([sys.executable, "-m", "http.server", str(srv_port), "--bind", "127.0.0.1", "--directory", www],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(srv_port)
        l_ssh = free_port()
        fwd = subprocess.Popen(["ssh", "-N", "-p", str(sshd.port), "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{l_ssh}:127.0.0.1:{srv_port}"] + sshd.ssh + ["root@127.0.0.1"])
        wait_port(l_ssh)
        l_g = free_port()
        p = os.path.join(d, "tunnel.toml")
        plan(p, sshd, free_port(), free_port(), extra=(l_g, srv_port), after_eval=False)
        up = subprocess.Popen([os.path.join(a.bin, "gpuctl"), "up", "--json", "--agent-bin", a.agent, p], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, GPUCTL_HOME=home, HOME=home))
        for line in up.stdout:
            if '"step":"serve"' in line:
                break
        res = {}
        for name, port in (("direct", srv_port), ("ssh -L", l_ssh), ("gpuctl tunnel", l_g)):
            print(f"tunnel: {name}...", file=sys.stderr, flush=True)
            big = fetch(port, "/big", a.runs)
            small = fetch(port, "/small", 200)
            eight = statistics.median([parallel(port, "/big", 8) for _ in range(a.runs)])
            res[name] = (256 / statistics.median(big), statistics.median(small) * 1000, eight)
        up.send_signal(signal.SIGINT); up.wait()
        fwd.terminate(); fwd.wait(); srv.terminate(); srv.wait()
    finally:
        sshd.stop()
    print(f"{os.cpu_count()} CPUs; OpenSSH {subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()}; {a.runs} runs each, medians")
    print("| deploy (connect, upload, start, healthy) | gpuctl | OpenSSH scp + ssh + ssh -L | ratio |")
    print("| --- | --- | --- | --- |")
    for k, (g, o) in rows.items():
        print(f"| {k} | {g * 1000:.0f} ms | {o * 1000:.0f} ms | {g / o:.2f}x |")
    print("| gpuctl deploy | connect | deploy (probe, upload, config, start) | load (healthy through the tunnel) |")
    print("| --- | --- | --- | --- |")
    for k, steps in STEPS.items():
        c, d, l = (statistics.median(s[i] for s in steps) for i in range(3))
        print(f"| {k} | {c:.0f} ms | {d:.0f} ms | {l:.0f} ms |")
    print("| path | 256 MiB download | MiB/s | ratio to ssh -L | 8 parallel MiB/s | ratio to ssh -L | small request (new connection) | added over direct |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (mbps, ms, eight) in res.items():
        print(f"| {name} | {256 / mbps:.2f} s | {mbps:.0f} | {mbps / res['ssh -L'][0]:.2f}x | {eight:.0f} | {eight / res['ssh -L'][2]:.2f}x | {ms:.2f} ms | {ms - res['direct'][1]:+.2f} ms |")


if __name__ == "__main__":
    main()
