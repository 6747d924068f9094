//! The SSH link cut and restored while a session serves: a "remote host" in a network
//! namespace this test creates (its own sshd on 10.200.N.2), the veth link taken down long
//! enough for the SSH keepalives to give up, then brought back: the tunnel reconnects by
//! itself, says so, and the session still ends stopped and proven.

mod common;

use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};

use common::{free_port, model_path, Ctx};

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .expect("ip (iproute2)")
        .success();
    assert!(
        ok,
        "ip {args:?} failed (this test needs root and network namespaces)"
    );
}

struct FakeHost {
    ns: String,
    veth: String,
    subnet: String,
    sshd: Option<std::process::Child>,
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        if let Some(mut s) = self.sshd.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args([
                "route",
                "del",
                "blackhole",
                &format!("{}.0/24", self.subnet),
            ])
            .status();
    }
}

/// A fake host in a network namespace this test creates, with its own sshd, and a plan
/// that serves there (after_eval = false).
fn fake_host_session(ctx: &Ctx) -> (FakeHost, std::path::PathBuf, u16) {
    let tag = free_port() % 200 + 20;
    let subnet = format!("10.200.{tag}");
    let host = FakeHost {
        ns: format!("gpuctl-t{tag}"),
        veth: format!("gct{tag}h"),
        subnet: subnet.clone(),
        sshd: None,
    };
    let peer = format!("gct{tag}r");
    let _ = Command::new("ip").args(["netns", "del", &host.ns]).status();
    ip(&["netns", "add", &host.ns]);
    ip(&[
        "link", "add", &host.veth, "type", "veth", "peer", "name", &peer,
    ]);
    ip(&["link", "set", &peer, "netns", &host.ns]);
    ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", &host.veth]);
    ip(&["link", "set", &host.veth, "up"]);
    ip(&[
        "-n",
        &host.ns,
        "addr",
        "add",
        &format!("{subnet}.2/24"),
        "dev",
        &peer,
    ]);
    ip(&["-n", &host.ns, "link", "set", &peer, "up"]);
    ip(&["-n", &host.ns, "link", "set", "lo", "up"]);
    // While the link is down, packets for the subnet must not leak to the default route.
    ip(&[
        "route",
        "add",
        "blackhole",
        &format!("{subnet}.0/24"),
        "metric",
        "4000",
    ]);
    let mut host = host;

    // sshd inside the namespace, keys and config as the loopback harness makes them.
    let d = ctx.path("fakehost");
    std::fs::create_dir_all(d.join("home")).expect("mkdir");
    for k in ["host_key", "client_key"] {
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", ""])
            .arg("-f")
            .arg(d.join(k))
            .status()
            .expect("keygen");
        assert!(ok.success());
    }
    std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).expect("copy");
    std::fs::write(
        d.join("sshd_config"),
        format!(
            "Port 22\nListenAddress {subnet}.2\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
             AllowTcpForwarding yes\nSubsystem sftp internal-sftp\nSetEnv HOME={d}/home\n",
            d = d.display()
        ),
    )
    .expect("config");
    let _ = std::fs::create_dir_all("/run/sshd");
    host.sshd = Some(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &host.ns,
                "/usr/sbin/sshd",
                "-D",
                "-e",
                "-f",
            ])
            .arg(d.join("sshd_config"))
            .stderr(std::fs::File::create(d.join("sshd.log")).expect("log"))
            .spawn()
            .expect("sshd"),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let fp = String::from_utf8_lossy(
        &Command::new("ssh-keygen")
            .arg("-lf")
            .arg(d.join("host_key.pub"))
            .output()
            .expect("keygen")
            .stdout,
    )
    .split_whitespace()
    .nth(1)
    .unwrap_or_default()
    .to_string();

    let (local, remote) = (free_port(), free_port());
    let plan = ctx.write(
        "cut.toml",
        format!(
            r#"schema = 1
[plan]
name = "ssh-link-cut"
goal = "survive a cut link"
route = "rented_gpu"
why = "I need SSH access to a host, within a small budget"
can_prove = "the tunnel comes back"
cannot_prove = "GPU serving"
[model]
id = "smollm2"
runtime = "candle"
path = "{model}"
[instance]
provider = "ssh"
host = "{subnet}.2"
port = 22
user = "root"
host_key = "{fp}"
gpus = 0
hourly_price_usd = 0.5
[budget]
hourly_usd = 1.0
max_total_usd = 2.0
[stop]
max_duration = "3m"
grace = "5s"
[fallback]
route = "local_cpu"
[access]
method = "ssh_key"
identity_file = "{key}"
ports = [{{ local = {local}, remote = {remote} }}]
[evidence]
copy_back = ["environment_report.txt"]
shutdown_proof = "process_exited"
dir = "{bundles}"
"#,
            model = model_path().display(),
            key = d.join("client_key").display(),
            bundles = ctx.path("bundles").display(),
        ),
    );
    (host, plan, local)
}

/// Run `up --json` and follow it until it serves: the child, its remaining lines, those seen.
fn serve(
    ctx: &Ctx,
    plan: &std::path::Path,
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    Vec<String>,
) {
    let mut child = ctx
        .command()
        .args(["up", "--json"])
        .arg(plan)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("up");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let started = std::time::Instant::now();
    while !seen
        .iter()
        .any(|l: &String| l.contains("\"step\":\"serve\""))
    {
        assert!(
            started.elapsed().as_secs() < 120,
            "up never reached serving: {seen:?}"
        );
        if let Ok(l) = rx.recv_timeout(std::time::Duration::from_secs(1)) {
            seen.push(l);
        }
    }
    (child, rx, seen)
}

#[test]
fn the_tunnel_reconnects_after_the_link_is_cut_and_restored() {
    let ctx = Ctx::new();
    let (host, plan, local) = fake_host_session(&ctx);
    let (mut child, rx, mut seen) = serve(&ctx, &plan);
    let health = |port: u16| -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
        let _ = s.write_all(b"GET /v1/models HTTP/1.0\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 401") || out.starts_with("HTTP/1.0 401") || out.contains(" 401 ")
    };
    assert!(health(local), "the tunnel answers before the cut");

    // Cut the link well past the keepalives (3 x 5 s), so the SSH session is given up, then restore it.
    ip(&["link", "set", &host.veth, "down"]);
    std::thread::sleep(std::time::Duration::from_secs(35));
    ip(&["link", "set", &host.veth, "up"]);
    let mut back = false;
    for _ in 0..30 {
        if health(local) {
            back = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    while let Ok(l) = rx.try_recv() {
        seen.push(l);
    }
    assert!(
        back,
        "the tunnel did not come back after the link was restored: {seen:?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("reconnected")),
        "up did not say it reconnected: {seen:?}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = child.wait().expect("wait");
    while let Ok(l) = rx.recv_timeout(std::time::Duration::from_secs(2)) {
        seen.push(l);
    }
    assert_eq!(status.code(), Some(0), "{seen:?}");
    let r = common::result_event(&seen.join("\n"));
    assert_eq!(r["state"], "stopped", "{r}");
}

#[test]
fn a_host_unreachable_at_the_stop_leaves_the_session_stop_unconfirmed() {
    let ctx = Ctx::new();
    let (host, plan, _local) = fake_host_session(&ctx);
    let (mut child, rx, mut seen) = serve(&ctx, &plan);
    // The host drops off the network for good, then the engineer stops the session.
    ip(&["link", "set", &host.veth, "down"]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = child.wait().expect("wait");
    while let Ok(l) = rx.recv_timeout(std::time::Duration::from_secs(2)) {
        seen.push(l);
    }
    assert_eq!(
        status.code(),
        Some(4),
        "exit 4: the stop is not confirmed: {seen:?}"
    );
    let r = common::result_event(&seen.join("\n"));
    assert_eq!(r["state"], "stop_unconfirmed", "{r}");
    let ls = ctx.run(["ls"]);
    assert!(
        ls.stdout.contains("STOP_UNCONFIRMED") && ls.stderr.contains("may still bill"),
        "{}{}",
        ls.stdout,
        ls.stderr
    );
}
