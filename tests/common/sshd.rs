//! A real OpenSSH server (Debian's openssh-server) on 127.0.0.1 at a free port, with host
//! and client keys generated in a temp dir and its own config: no PAM, no passwords, its
//! own authorized_keys. Stopped by its PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub user: String,
    pub client_key: PathBuf,
    /// The host key's SHA256 fingerprint, as `ssh-keygen -lf` prints it.
    pub host_fingerprint: String,
    child: Child,
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "gpuctl-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen");
    assert!(ok.success());
}

impl Sshd {
    pub fn start() -> Sshd {
        Sshd::start_with_env("")
    }

    /// A server whose sessions get these extra `NAME=value` environment entries (space
    /// separated; sshd's `SetEnv`): e.g. libfaketime, for a host whose clock is off.
    pub fn start_with_env(extra_env: &str) -> Sshd {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "/usr/sbin/sshd is missing: scripts/install-test-deps.sh installs openssh-server"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))
            .expect("authorized_keys");
        let port = super::free_port();
        let user =
            String::from_utf8_lossy(&Command::new("id").arg("-un").output().expect("id").stdout)
                .trim()
                .to_string();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n\
             PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             PermitRootLogin prohibit-password\nAllowTcpForwarding yes\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n\
             SetEnv HOME={d}/home GPUCTL_INSTANCE_ENV={d}/instance.env {extra_env}\n",
            d = d.display()
        );
        // Each server gets its own remote home, so tests running side by side share nothing.
        std::fs::create_dir_all(d.join("home")).expect("remote home");
        std::fs::write(d.join("sshd_config"), config).expect("config");
        if user == "root" {
            // sshd as root needs its privilege separation folder (/run is a tmpfs).
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let log = std::fs::File::create(d.join("sshd.log")).expect("log");
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        // Ready when the banner comes, not when the port merely opens.
        let mut ready = false;
        for _ in 0..100 {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::Read;
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let mut buf = [0u8; 4];
                if s.read_exact(&mut buf).is_ok() && &buf == b"SSH-" {
                    ready = true;
                    break;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let fp = String::from_utf8_lossy(
            &Command::new("ssh-keygen")
                .arg("-lf")
                .arg(d.join("host_key.pub"))
                .output()
                .expect("keygen -l")
                .stdout,
        )
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
        let sshd = Sshd {
            client_key: d.join("client_key"),
            dir,
            port,
            user,
            host_fingerprint: fp,
            child,
        };
        assert!(
            ready,
            "sshd did not answer: {}",
            std::fs::read_to_string(sshd.dir.path().join("sshd.log")).unwrap_or_default()
        );
        sshd
    }

    /// Where the agent on this "host" finds the instance environment a provider would have
    /// given its container (`GPUCTL_INSTANCE_ENV`, the test hook): the test writes it.
    pub fn instance_env_file(&self) -> PathBuf {
        self.dir.path().join("instance.env")
    }

    /// The home folder sessions on this server see (`$HOME` on the "host").
    pub fn remote_home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A provider-ssh plan for the bundled model on this test server, its host key pinned:
/// `stop` is the [stop] section's body (max_duration, grace, after_eval...).
pub fn ssh_plan(
    ctx: &super::Ctx,
    sshd: &Sshd,
    name: &str,
    ports: (u16, u16),
    stop: &str,
) -> PathBuf {
    let (local, remote) = ports;
    let text = format!(
        r#"schema = 1
[plan]
name = "{name}"
goal = "a session over SSH to the test's own sshd"
route = "rented_gpu"
why = "I need SSH access to a host I rent, within a small budget"
can_prove = "what this test checks of a session over SSH"
cannot_prove = "GPU serving"
[model]
id = "smollm2"
runtime = "candle"
path = "{model}"
[instance]
provider = "ssh"
host = "127.0.0.1"
port = {sshd_port}
user = "{user}"
host_key = "{pin}"
gpus = 0
hourly_price_usd = 0.50
[budget]
hourly_usd = 1.00
max_total_usd = 2.00
[stop]
{stop}
[fallback]
route = "local_cpu"
[access]
method = "ssh_key"
identity_file = "{key}"
ports = [{{ local = {local}, remote = {remote} }}]
[evidence]
copy_back = ["environment_report.txt", "first_run.md", "eval_results.csv", "requests.jsonl"]
shutdown_proof = "process_exited"
dir = "{evidence}"
[[eval.case]]
id = "digits"
prompt = "What is 2 + 2?"
expect_regex = "\\d"
max_tokens = 8
"#,
        model = super::model_path().display(),
        sshd_port = sshd.port,
        user = sshd.user,
        pin = sshd.host_fingerprint,
        key = sshd.client_key.display(),
        evidence = ctx.path("bundles").display(),
    );
    ctx.write(&format!("{name}-{local}.toml"), text)
}
