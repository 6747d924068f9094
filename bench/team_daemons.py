#!/usr/bin/env python3
"""Team mode: 3 daemons (3 homes, standing in for 3 always-on hosts) share one PostgreSQL
store holding N live sessions on the emulated Vast cloud; one daemon is SIGKILLed
mid-run. Reported: deadline lateness (deadline -> terminate confirmed and recorded) for the
sessions the survivors held all along, and for those the killed daemon held (taken over
once its lease went stale); how many stops each session got; instances left billing.

usage: bench/team_daemons.py [--sessions 10000] [--lead 60] [--spread 240] [--paced] [--bin target/release]

By default the client's own paces are lifted (GPUCTL_EMULATOR_UNPACED=1, honoured for a
loopback API only) along with the emulator's rate limits: the figures are gpuctl's own
machinery (claims, leases, takeover, stop, record). With --paced the Vast client keeps its
published per-endpoint pace (DELETE one per 3.1 s per process), which is what bounds a
team on one real Vast key.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time, urllib.request
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pg import Postgres  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--lead", type=int, default=60)
    ap.add_argument("--spread", type=int, default=240)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--paced", action="store_true")
    a = ap.parse_args()
    gpuctl = os.path.join(a.bin, "gpuctl")
    with Postgres() as pg:
        url = pg.database("team")
        # Rate limits off: three processes share one key here, and each paces itself alone
        # (README, limits); the figures are gpuctl's own.
        emu = subprocess.Popen([os.path.join(a.bin, "gpuctl-cloud-emulator"), "--boot-ms", "0", "--terminate-ms", "0",
                                "--vast-rate-limits", "off"],
                               stdout=subprocess.PIPE, text=True)
        api = emu.stdout.readline().strip()
        req = urllib.request.Request(f"{api}/_emulator/instances", method="POST",
                                     headers={"Content-Type": "application/json"},
                                     data=json.dumps({"provider": "vast", "instance_type": "RTX 3090",
                                                      "count": a.sessions, "name_prefix": "gpuctl-bench-"}).encode())
        ids = json.load(urllib.request.urlopen(req))
        homes = [tempfile.mkdtemp(prefix=f"team-{i}-") for i in range(3)]
        with open(os.path.join(homes[0], "instances.json"), "w") as f:
            json.dump(ids, f)
        base = dict(os.environ, GPUCTL_DATABASE_URL=url, GPUCTL_VAST_API=f"{api}/vast/api/v0",
                    VAST_API_KEY="emulator-key")
        if not a.paced:
            base["GPUCTL_EMULATOR_UNPACED"] = "1"
        t = time.time()
        subprocess.run([gpuctl, "debug", "seed", "--count", str(a.sessions), "--instances",
                        os.path.join(homes[0], "instances.json"), "--deadline-in", f"{a.lead}s",
                        "--spread", f"{a.spread}s"], env=dict(base, GPUCTL_HOME=homes[0]), check=True)
        seed_s = time.time() - t
        daemons = [subprocess.Popen([gpuctl, "daemon", "--json"], env=dict(base, GPUCTL_HOME=h),
                                    stdout=open(os.path.join(h, "daemon.jsonl"), "w"), stderr=subprocess.DEVNULL)
                   for h in homes]
        kill_at = t + a.lead + a.spread / 2  # deadlines run from the seed
        while time.time() < kill_at:
            time.sleep(1)
        killed = daemons[0]
        split = sorted(int(n) for _, n in pg.psql("team", "SELECT controller_pid, count(*) FROM sessions WHERE state NOT IN ('stopped','failed') GROUP BY controller_pid"))
        held = int(pg.psql("team", f"SELECT count(*) FROM sessions WHERE controller_pid = {killed.pid} AND state NOT IN ('stopped','failed')")[0][0])
        killed.kill()
        killed.wait()
        killed_at = datetime.now().astimezone()
        end = time.time() + a.spread + 300
        while time.time() < end:
            left = int(pg.psql("team", "SELECT count(*) FROM sessions WHERE state NOT IN ('stopped','failed')")[0][0])
            if left == 0:
                break
            time.sleep(2)
        for d in daemons[1:]:
            d.terminate()
            d.wait()
        rows = pg.psql("team", "SELECT s.id, s.deadline, s.ended_at, s.state, "
                               "(SELECT count(*) FROM events e WHERE e.session_id = s.id AND e.state IN ('stopped','failed')), "
                               f"(SELECT count(*) FROM events e WHERE e.session_id = s.id AND e.kind = 'takeover' AND e.message LIKE '%(pid {killed.pid}), is gone%') "
                               "FROM sessions s")
        inst = json.load(urllib.request.urlopen(f"{api}/_emulator/instances"))["instances"]
        billing = sum(1 for i in inst if i["billing"])
        emu.terminate()
        emu.wait()
    survivors, orphans, stops, states = [], [], [], {}
    for sid, deadline, ended, state, nstops, from_killed in rows:
        states[state] = states.get(state, 0) + 1
        stops.append(int(nstops))
        if ended and state == "stopped":
            late = (ts(ended) - ts(deadline)).total_seconds() * 1000
            (orphans if int(from_killed) > 0 else survivors).append(late)
    print(f"{a.sessions} live sessions, 3 daemons on one PostgreSQL store, deadlines over {a.spread} s, "
          f"client paces {'on' if a.paced else 'lifted'}; "
          f"daemon 1 SIGKILLed at {killed_at:%H:%M:%S} holding {held} live sessions; {os.cpu_count()} CPUs")
    print(f"live sessions per holder just before the kill: {split}")
    print(f"seeded in {seed_s:.1f} s; final states {states}; stops per session: min {min(stops)} max {max(stops)}; "
          f"instances still billing: {billing}")
    print("| sessions | count | lateness p50 / p99 / max |")
    print("| --- | --- | --- |")
    print(f"| held by the survivors | {len(survivors)} | {pct(survivors, 50):.0f} / {pct(survivors, 99):.0f} / {max(survivors, default=0):.0f} ms |")
    print(f"| taken over from the killed daemon | {len(orphans)} | {pct(orphans, 50):.0f} / {pct(orphans, 99):.0f} / {max(orphans, default=0):.0f} ms |")


if __name__ == "__main__":
    main()
