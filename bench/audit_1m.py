#!/usr/bin/env python3
"""`gpuctl audit` over a database of 1,000,000 sessions: time and peak memory, for the
default table (one line per session, to /dev/null) and for `--by month`.

usage: bench/audit_1m.py [--sessions 1000000] [--runs 3] [--bin target/release] [--postgres]

With --postgres the store is a throwaway PostgreSQL server (bench/pg.py, Debian's
`postgresql`) reached through GPUCTL_DATABASE_URL, as a team's would be.

The sessions are written through the real schema by `gpuctl debug seed` (finished sessions
over 24 months, four plans and providers, three owners); each measurement runs gpuctl in a
fresh child process, and its peak memory is that child's ru_maxrss.
"""
import argparse, contextlib, os, resource, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(cmd, env):
    """Run `cmd` in a fresh Python child that reports its own child's wall time and peak RSS."""
    probe = ("import resource, subprocess, sys, time\n"
             "t = time.perf_counter()\n"
             "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)\n"
             "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", probe] + cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    wall, kib = out.stdout.split()
    return float(wall), int(kib)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--postgres", action="store_true")
    a = ap.parse_args()
    with contextlib.ExitStack() as stack:
        run(a, stack)


def run(a, stack):
    home = tempfile.mkdtemp(prefix="audit1m-")
    env = dict(os.environ, GPUCTL_HOME=home)
    env.pop("GPUCTL_DATABASE_URL", None)
    if a.postgres:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from pg import Postgres
        pg = stack.enter_context(Postgres())
        env["GPUCTL_DATABASE_URL"] = pg.database("audit")
    gpuctl = os.path.join(a.bin, "gpuctl")
    t = time.time()
    subprocess.run([gpuctl, "debug", "seed", "--count", str(a.sessions), "--id-prefix", "s-"], env=env, check=True, cwd=ROOT)
    seed = time.time() - t
    if a.postgres:
        size = int(pg.psql("audit", "SELECT pg_database_size('audit')")[0][0])
        where = "PostgreSQL"
    else:
        db = os.path.join(home, "sessions.db")
        size = sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))
        where = "SQLite"
    print(f"{a.sessions} sessions seeded in {seed:.0f} s ({size / 1e6:.0f} MB {where} database); {a.runs} runs each, {os.cpu_count()} CPUs")
    print("| command | wall (median) | wall (max) | peak memory (max) |")
    print("| --- | --- | --- | --- |")
    for args in (["audit"], ["audit", "--by", "month"], ["audit", "--format", "json"], ["audit", "--by", "plan", "--format", "csv"]):
        rows = [measure([gpuctl] + args, env) for _ in range(a.runs)]
        walls = [r[0] for r in rows]
        print(f"| `gpuctl {' '.join(args)}` | {statistics.median(walls):.2f} s | {max(walls):.2f} s | {max(r[1] for r in rows) / 1024:.0f} MiB |")


if __name__ == "__main__":
    main()
