"""A throwaway PostgreSQL server for the benchmarks, as the tests start one: Debian's
`initdb` and `pg_ctl` in a temp dir, on 127.0.0.1 and a free port, as the `postgres` user
when run as root. `with Postgres() as pg: url = pg.database("bench")`."""
import glob, os, shutil, socket, subprocess, tempfile


def _bin():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise SystemExit("no PostgreSQL server: run scripts/install-test-deps.sh (Debian's postgresql)")
    return os.path.dirname(found[-1])


class Postgres:
    def __enter__(self):
        self.bin = _bin()
        self.dir = tempfile.mkdtemp(prefix="gpuctl-pg-")
        self.data = os.path.join(self.dir, "data")
        os.mkdir(self.data)
        self.user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            os.chmod(self.dir, 0o755)
            subprocess.run(["chown", "-R", "postgres:postgres", self.dir], check=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        subprocess.run(self.user + [f"{self.bin}/initdb", "-D", self.data, "-U", "gpuctl", "--auth=trust", "-E", "UTF8",
                                    "--no-locale", "--no-sync"], check=True, capture_output=True)
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c max_connections=200"
        subprocess.run(self.user + [f"{self.bin}/pg_ctl", "-D", self.data, "-o", opts, "-l",
                                    os.path.join(self.dir, "server.log"), "-w", "start"], check=True, capture_output=True)
        return self

    def database(self, name):
        self.psql("postgres", f"CREATE DATABASE {name}")
        return self.url(name)

    def url(self, name):
        return f"postgres://gpuctl@127.0.0.1:{self.port}/{name}?sslmode=disable"

    def psql(self, db, sql):
        out = subprocess.run([f"{self.bin}/psql", self.url(db), "-v", "ON_ERROR_STOP=1", "-At", "-F", "\t", "-c", sql],
                             check=True, capture_output=True, text=True)
        return [line.split("\t") for line in out.stdout.splitlines() if line]

    def __exit__(self, *exc):
        subprocess.run(self.user + [f"{self.bin}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
