//! The rented-GPU route over SSH against a real OpenSSH server on 127.0.0.1: the agent
//! uploaded and started over russh, reached through the localhost tunnel, evidence pulled
//! back over SFTP, the stop proven on the host; and the refusals that come first.

mod common;

use common::sshd::Sshd;
use common::{free_port, model_path, port_refuses, Ctx};

fn ssh_plan(
    ctx: &Ctx,
    sshd: &Sshd,
    local: u16,
    remote: u16,
    host_key: Option<&str>,
    user: &str,
) -> std::path::PathBuf {
    let pin = host_key
        .map(|k| format!("host_key = \"{k}\""))
        .unwrap_or_default();
    let text = format!(
        r#"schema = 1
[plan]
name = "ssh-loopback"
goal = "prove the SSH route against a real sshd"
route = "rented_gpu"
why = "I need SSH access to a host I rent, within a small budget"
can_prove = "deployment, tunnel, evidence and stop over SSH"
cannot_prove = "GPU serving"
[model]
id = "smollm2"
runtime = "candle"
path = "{model}"
[instance]
provider = "ssh"
host = "127.0.0.1"
port = {port}
user = "{user}"
{pin}
gpus = 0
hourly_price_usd = 0.50
[budget]
hourly_usd = 1.00
max_total_usd = 2.00
[stop]
max_duration = "10m"
grace = "5s"
after_eval = true
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
        model = model_path().display(),
        port = sshd.port,
        key = sshd.client_key.display(),
        evidence = ctx.path("bundles").display(),
    );
    ctx.write(&format!("ssh-{local}.toml"), text)
}

#[test]
fn up_over_ssh_deploys_tunnels_collects_and_proves_the_stop() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let (local, remote) = (free_port(), free_port());
    let plan = ssh_plan(
        &ctx,
        &sshd,
        local,
        remote,
        Some(&sshd.host_fingerprint),
        &sshd.user,
    );
    let run = ctx.run(["up".as_ref(), "--json".as_ref(), plan.as_os_str()]);
    assert_eq!(
        run.code,
        0,
        "{}\n{}\nsshd:\n{}",
        run.stdout,
        run.stderr,
        sshd.log()
    );
    let r = common::result_event(&run.stdout);
    assert_eq!(r["state"], "stopped");
    let bundle = std::path::PathBuf::from(r["bundle"].as_str().expect("bundle"));
    for f in [
        "environment_report.txt",
        "first_run.md",
        "eval_results.csv",
        "requests.jsonl",
        "agent.log",
        "final_record.json",
        "shutdown_proof.json",
        "MANIFEST.sha256",
    ] {
        assert!(bundle.join(f).is_file(), "the bundle lacks {f}");
    }
    let proof: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bundle.join("shutdown_proof.json")).expect("proof"),
    )
    .expect("json");
    assert_eq!(proof["confirmed"], true, "{proof:#}");
    let checks: Vec<&str> = proof["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| c["check"].as_str())
        .collect();
    for c in [
        "host_reachable",
        "process_exited",
        "port_closed",
        "gpu_released",
    ] {
        assert!(checks.contains(&c), "{c} missing: {checks:?}");
    }
    assert!(port_refuses(local), "the tunnel's port is still open");
    assert!(
        port_refuses(remote),
        "the agent's port is still open on the host"
    );
    let status = ctx
        .run(["status", "--json", r["session_id"].as_str().expect("id")])
        .json();
    assert_eq!(
        status["session"]["host_key_fingerprint"],
        sshd.host_fingerprint.as_str()
    );
    assert_eq!(status["session"]["provider"], "ssh");
}

#[test]
fn a_wrong_host_key_is_refused_before_anything_is_uploaded() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let wrong = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let plan = ssh_plan(
        &ctx,
        &sshd,
        free_port(),
        free_port(),
        Some(wrong),
        &sshd.user,
    );
    let run = ctx.run(["up".as_ref(), "--json".as_ref(), plan.as_os_str()]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let r = common::result_event(&run.stdout);
    let failure = r["failure"].as_str().unwrap_or("");
    assert!(
        failure.contains("pins") && failure.contains(&sshd.host_fingerprint),
        "{failure}"
    );
    assert!(
        !sshd.log().contains("Accepted publickey"),
        "nothing may be sent to a host whose key is refused"
    );

    // Unknown key, nothing pinned: refused with the fingerprint and the line to pin it.
    let plan = ssh_plan(&ctx, &sshd, free_port(), free_port(), None, &sshd.user);
    let run = ctx.run(["up".as_ref(), "--json".as_ref(), plan.as_os_str()]);
    assert_eq!(run.code, 1);
    let failure = common::result_event(&run.stdout)["failure"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        failure.contains("is not known")
            && failure.contains(&format!("host_key = \"{}\"", sshd.host_fingerprint)),
        "{failure}"
    );
}

#[test]
fn a_wrong_user_or_key_is_refused_clearly() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let plan = ssh_plan(
        &ctx,
        &sshd,
        free_port(),
        free_port(),
        Some(&sshd.host_fingerprint),
        "nobody-such-user",
    );
    let run = ctx.run(["up".as_ref(), "--json".as_ref(), plan.as_os_str()]);
    assert_eq!(run.code, 1);
    let failure = common::result_event(&run.stdout)["failure"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(failure.contains("refused every key"), "{failure}");
}

#[test]
fn a_taken_tunnel_port_is_refused_before_anything_starts() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr").port();
    let plan = ssh_plan(
        &ctx,
        &sshd,
        taken,
        free_port(),
        Some(&sshd.host_fingerprint),
        &sshd.user,
    );
    let run = ctx.run(["up".as_ref(), plan.as_os_str()]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("127.0.0.1:{taken} is already in use")),
        "{}",
        run.stderr
    );
    assert!(
        !sshd.log().contains("Accepted publickey"),
        "nothing was started, not even a connection"
    );
}

#[test]
fn a_plan_asking_for_gpus_the_host_lacks_fails_at_deploy_saying_what_it_has() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let (local, remote) = (free_port(), free_port());
    let plan = ssh_plan(
        &ctx,
        &sshd,
        local,
        remote,
        Some(&sshd.host_fingerprint),
        &sshd.user,
    );
    let text = std::fs::read_to_string(&plan)
        .expect("read")
        .replace("gpus = 0", "gpus = 1");
    let plan = ctx.write("ssh-gpu.toml", text);
    let run = ctx.run(["up".as_ref(), "--json".as_ref(), plan.as_os_str()]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let r = common::result_event(&run.stdout);
    let failure = r["failure"].as_str().unwrap_or("");
    assert!(
        failure.contains("asks for 1 GPU(s)") && failure.contains("the host has 0"),
        "{failure}"
    );
    assert_eq!(r["state"], "failed");
    assert!(port_refuses(local));
}

#[test]
fn a_deleted_agent_binary_is_uploaded_again() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    for round in 0..2 {
        let plan = ssh_plan(
            &ctx,
            &sshd,
            free_port(),
            free_port(),
            Some(&sshd.host_fingerprint),
            &sshd.user,
        );
        let run = ctx.run(["up".as_ref(), "--json".as_ref(), plan.as_os_str()]);
        assert_eq!(run.code, 0, "round {round}: {}\n{}", run.stdout, run.stderr);
        // The host loses the binary between sessions: the next session puts it back.
        let bin_dir = sshd.remote_home().join(".gpuctl/bin");
        if let Ok(entries) = std::fs::read_dir(&bin_dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[test]
fn with_the_controller_killed_the_agent_still_stops_at_its_deadline() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let (local, remote) = (free_port(), free_port());
    let plan = ssh_plan(
        &ctx,
        &sshd,
        local,
        remote,
        Some(&sshd.host_fingerprint),
        &sshd.user,
    );
    // Serve until a deadline 25 s away instead of stopping after the eval.
    let text = std::fs::read_to_string(&plan)
        .expect("read")
        .replace("max_duration = \"10m\"", "max_duration = \"25s\"")
        .replace("after_eval = true", "after_eval = false");
    let plan = ctx.write("ssh-kill.toml", text);
    let mut child = ctx
        .command()
        .args(["up", "--json"])
        .arg(&plan)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn up");
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut session = String::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        if let Some(id) = line
            .split("session ")
            .nth(1)
            .and_then(|s| s.split(':').next())
        {
            session = id.to_string();
        }
        if line.contains("\"step\":\"serve\"") {
            break;
        }
    }
    assert!(!port_refuses(local), "the tunnel serves while up runs");
    child.kill().expect("SIGKILL up");
    child.wait().expect("reap");
    // No controller now. The agent's watchdog stops it at the deadline, on the host.
    let status = ctx.run(["status", "--json", &session]).json();
    let deadline: chrono::DateTime<chrono::Utc> = status["session"]["deadline"]
        .as_str()
        .expect("deadline")
        .parse()
        .expect("time");
    let wait = (deadline - chrono::Utc::now()).to_std().unwrap_or_default()
        + std::time::Duration::from_secs(3);
    std::thread::sleep(wait);
    assert!(
        port_refuses(remote),
        "the agent still serves on the host after its deadline"
    );
    let record = sshd
        .remote_home()
        .join(".gpuctl/sessions")
        .join(&session)
        .join("evidence/final_record.json");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).expect("final record on the host"))
            .expect("json");
    assert_eq!(record["reason"], "deadline");
    // `status` shows what happened: the session never reached a final state.
    let after = ctx.run(["status", "--json", &session]).json();
    assert_eq!(after["session"]["state"], "serving");
}

/// A plan that serves until stopped (after_eval = false) and forwards a second port to
/// `remote_port` on the host; returns it with its API ports (local, remote) and the second
/// port's local end.
fn serving_plan_with_second_port(
    ctx: &Ctx,
    sshd: &Sshd,
    remote_port: u16,
) -> (std::path::PathBuf, u16, u16, u16) {
    let (local, remote, extra) = (free_port(), free_port(), free_port());
    let plan = ssh_plan(
        ctx,
        sshd,
        local,
        remote,
        Some(&sshd.host_fingerprint),
        &sshd.user,
    );
    let text = std::fs::read_to_string(&plan)
        .expect("read")
        .replace("after_eval = true", "after_eval = false")
        .replace(
            &format!("ports = [{{ local = {local}, remote = {remote} }}]"),
            &format!("ports = [{{ local = {local}, remote = {remote} }}, {{ local = {extra}, remote = {remote_port} }}]"),
        );
    (
        ctx.write(&format!("ssh-ports-{extra}.toml"), text),
        local,
        remote,
        extra,
    )
}

#[test]
fn every_forwarded_port_is_tunnelled_and_ctrl_c_stops_the_remote_session() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    // A server on the "host" side that only the tunnel should reach.
    let www = ctx.path("www");
    std::fs::create_dir_all(&www).expect("mkdir");
    std::fs::write(www.join("hello.txt"), "through the tunnel").expect("write");
    let server_port = free_port();
    let mut server = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            &server_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(&www)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("http.server");
    let (plan, local, remote, extra) = serving_plan_with_second_port(&ctx, &sshd, server_port);
    let mut child = ctx
        .command()
        .args(["up", "--json"])
        .arg(&plan)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn up");
    use std::io::{BufRead, Read, Write};
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        seen.push(line.clone());
        if line.contains("\"step\":\"serve\"") {
            break;
        }
    }
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", extra)).expect("connect to the second tunnel");
    s.write_all(b"GET /hello.txt HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    assert!(body.contains("through the tunnel"), "{body}");
    // OpenAI's own client reaches the model through the API tunnel, with the session's token
    // (kept, 0600, in the session's run folder while it serves).
    let session = seen
        .iter()
        .find_map(|l| l.split("session ").nth(1).and_then(|s| s.split(':').next()))
        .expect("session id")
        .to_string();
    let token = std::fs::read_to_string(ctx.home().join("run").join(&session).join("token"))
        .expect("token");
    let script = "import os, openai\nc = openai.OpenAI(base_url=os.environ['BASE'], api_key=os.environ['TOKEN'])\nr = c.chat.completions.create(model='smollm2', messages=[{'role': 'user', 'content': 'hi'}], max_tokens=4, temperature=0)\nassert r.usage.completion_tokens > 0\nparts = [ch.choices[0].delta.content or '' for ch in c.chat.completions.create(model='smollm2', messages=[{'role': 'user', 'content': 'hi'}], max_tokens=4, temperature=0, stream=True) if ch.choices]\nassert ''.join(parts) == r.choices[0].message.content\nprint('ok')\n";
    let py = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("BASE", format!("http://127.0.0.1:{local}/v1"))
        .env("TOKEN", token.trim())
        .output()
        .expect("python3");
    assert!(
        py.status.success(),
        "openai client through the tunnel: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    seen.extend(lines.map_while(Result::ok));
    let status = child.wait().expect("wait");
    let _ = server.kill();
    let _ = server.wait();
    let stdout = seen.join("\n");
    assert_eq!(status.code(), Some(0), "{stdout}");
    let r = common::result_event(&stdout);
    assert_eq!(r["state"], "stopped");
    assert!(
        port_refuses(local) && port_refuses(extra) && port_refuses(remote),
        "a tunnel or the agent outlived the session"
    );
}

fn keygen(path: &std::path::Path, kind: &str, passphrase: &str) {
    let ok = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", passphrase, "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen")
        .success();
    assert!(ok);
}

fn authorize(sshd: &Sshd, key: &std::path::Path) {
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
    let path = sshd.dir.path().join("authorized_keys");
    let mut keys = std::fs::read_to_string(&path).expect("authorized_keys");
    keys.push_str(&pubkey);
    std::fs::write(path, keys).expect("write");
}

#[test]
fn ecdsa_rsa_encrypted_keys_and_ssh_agent_authenticate() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let keys = ctx.path("keys");
    std::fs::create_dir_all(&keys).expect("mkdir");
    let cases = [
        ("ecdsa", "ecdsa", ""),
        ("rsa", "rsa", ""),
        ("encrypted", "ed25519", "correct horse"),
    ];
    for (name, kind, pass) in cases {
        let key = keys.join(name);
        keygen(&key, kind, pass);
        authorize(&sshd, &key);
        let plan = ssh_plan(
            &ctx,
            &sshd,
            free_port(),
            free_port(),
            Some(&sshd.host_fingerprint),
            &sshd.user,
        );
        let text = std::fs::read_to_string(&plan).expect("read").replace(
            &sshd.client_key.display().to_string(),
            &key.display().to_string(),
        );
        let plan = ctx.write(&format!("{name}.toml"), text);
        let run = ctx
            .command()
            .args(["up", "--json"])
            .arg(&plan)
            .env("GPUCTL_KEY_PASSPHRASE", pass)
            .output()
            .expect("up");
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert_eq!(run.status.code(), Some(0), "{name}: {stdout}");
    }
    // ssh-agent: no identity_file in the plan, the key is in the agent.
    let sock = ctx.path("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .args(["-D", "-a"])
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ssh-agent");
    for _ in 0..50 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let added = std::process::Command::new("ssh-add")
        .arg(keys.join("ecdsa"))
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .expect("ssh-add");
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let plan = ssh_plan(
        &ctx,
        &sshd,
        free_port(),
        free_port(),
        Some(&sshd.host_fingerprint),
        &sshd.user,
    );
    let text = std::fs::read_to_string(&plan).expect("read").replace(
        &format!("identity_file = \"{}\"\n", sshd.client_key.display()),
        "",
    );
    let plan = ctx.write("agent.toml", text);
    let run = ctx
        .command()
        .args(["up", "--json"])
        .arg(&plan)
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .expect("up");
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(
        run.status.code(),
        Some(0),
        "ssh-agent: {}",
        String::from_utf8_lossy(&run.stdout)
    );
}

#[test]
fn a_changed_host_key_is_refused_loudly() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let other = ctx.path("other_host_key");
    keygen(&other, "ed25519", "");
    let line = format!(
        "[127.0.0.1]:{} {}",
        sshd.port,
        std::fs::read_to_string(other.with_extension("pub")).expect("pub")
    );
    ctx.write(".ssh/known_hosts", line);
    let plan = ssh_plan(&ctx, &sshd, free_port(), free_port(), None, &sshd.user);
    let run = ctx.run(["up".as_ref(), "--json".as_ref(), plan.as_os_str()]);
    assert_eq!(run.code, 1);
    let failure = common::result_event(&run.stdout)["failure"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        failure.contains("HAS CHANGED") && failure.contains("known_hosts:1"),
        "{failure}"
    );
    assert!(!sshd.log().contains("Accepted publickey"));
}

#[test]
fn on_stop_command_runs_on_the_host_after_the_evidence_and_is_recorded() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let marker = sshd.remote_home().join("stopped-by-plan");
    let plan = ssh_plan(
        &ctx,
        &sshd,
        free_port(),
        free_port(),
        Some(&sshd.host_fingerprint),
        &sshd.user,
    );
    let text = std::fs::read_to_string(&plan).expect("read").replace(
        "after_eval = true",
        &format!(
            "after_eval = true\non_stop = \"command\"\nstop_command = [\"touch\", \"{}\"]",
            marker.display()
        ),
    );
    let plan = ctx.write("stop-command.toml", text);
    let run = ctx.run(["up".as_ref(), "--json".as_ref(), plan.as_os_str()]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(marker.exists(), "the stop command did not run on the host");
    let r = common::result_event(&run.stdout);
    let bundle = std::path::PathBuf::from(r["bundle"].as_str().expect("bundle"));
    let proof: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bundle.join("shutdown_proof.json")).expect("proof"),
    )
    .expect("json");
    assert!(
        proof["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .any(|c| c["check"] == "stop_command" && c["passed"] == true),
        "{proof:#}"
    );
    assert!(
        bundle.join("environment_report.txt").is_file(),
        "evidence is pulled before the stop command"
    );
}

#[test]
fn a_symlink_and_a_fifo_planted_in_the_remote_evidence_are_refused_not_followed() {
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let plan = ssh_plan(
        &ctx,
        &sshd,
        free_port(),
        free_port(),
        Some(&sshd.host_fingerprint),
        &sshd.user,
    );
    // Serve until stopped, and ask for two extra files that code on the host will plant.
    let text = std::fs::read_to_string(&plan)
        .expect("read")
        .replace("after_eval = true", "after_eval = false")
        .replace(
            "copy_back = [",
            "copy_back = [\"planted-secret.txt\", \"planted-pipe\", ",
        );
    let plan = ctx.write("ssh-planted.toml", text);
    let mut up = ctx
        .command()
        .args(["up", "--json"])
        .arg(&plan)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn up");
    let start = std::time::Instant::now();
    let id = loop {
        let ls = ctx.run(["ls", "--json"]).json();
        if ls[0]["state"] == "serving" {
            break ls[0]["id"].as_str().expect("id").to_string();
        }
        assert!(start.elapsed().as_secs() < 90, "not serving: {ls}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let evidence = sshd
        .remote_home()
        .join(".gpuctl/sessions")
        .join(&id)
        .join("evidence");
    let secret = ctx.write("secret-outside.txt", "a private key, say");
    std::os::unix::fs::symlink(&secret, evidence.join("planted-secret.txt")).expect("symlink");
    nix::unistd::mkfifo(
        &evidence.join("planted-pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    let down = ctx.run(["down", &id, "--json"]);
    assert_eq!(down.code, 0, "{}\n{}", down.stdout, down.stderr);
    let _ = up.wait();
    assert!(
        start.elapsed().as_secs() < 100,
        "the FIFO did not hold the stop"
    );
    let status = ctx.run(["status", &id, "--json"]).json();
    let bundle = std::path::PathBuf::from(
        status["session"]["evidence_dir"]
            .as_str()
            .expect("evidence dir"),
    );
    for planted in ["planted-secret.txt", "planted-pipe"] {
        assert!(
            std::fs::symlink_metadata(bundle.join(planted)).is_err(),
            "{planted} reached the bundle"
        );
    }
    let refused = status["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["kind"] == "evidence_refused")
        .unwrap_or_else(|| panic!("no evidence_refused event: {status:#}"));
    let msg = refused["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("planted-secret.txt (refused: a symbolic link)"),
        "{msg}"
    );
    assert!(msg.contains("planted-pipe (refused: a FIFO)"), "{msg}");
    assert_eq!(status["session"]["state"], "stopped", "{status:#}");
}

/// A host-side server for the test below: each connection gets `len` bytes after a short
/// header, then the server closes it. It serves `connections` connections and ends.
fn bulk_server(len: usize, connections: usize) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        for stream in listener.incoming().take(connections) {
            let Ok(mut s) = stream else { continue };
            let chunk = chunk.clone();
            std::thread::spawn(move || {
                let mut req = [0u8; 1024];
                let _ = s.read(&mut req);
                let _ = s.write_all(
                    format!("HTTP/1.0 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes(),
                );
                let mut left = len;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if s.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    left -= n;
                }
            });
        }
    });
    port
}

#[test]
fn eight_concurrent_downloads_through_the_tunnel_outlast_a_key_re_exchange() {
    // 8 x 160 MiB is more than russh's 1 GiB re-key limit, so the client re-keys while all
    // eight channels are busy. russh drops a connection that receives more than two
    // windows of channel data between its KEXINIT and the server's: with the default
    // window that cut every transfer of release binaries (bench/ssh_bench.py, which reads
    // fast enough to keep the windows full; this test's dev build does not, so it guards
    // the behaviour rather than reproducing the old cut); gpuctl's 8 MiB window keeps the
    // in-flight data under that bound.
    const LEN: usize = 160 << 20;
    const STREAMS: usize = 8;
    let ctx = Ctx::new();
    let sshd = Sshd::start();
    let server_port = bulk_server(LEN, STREAMS);
    let (plan, _, _, extra) = serving_plan_with_second_port(&ctx, &sshd, server_port);
    let (mut child, _id) = common::up_until_serving(ctx.command(), &plan);
    let downloads: Vec<_> = (0..STREAMS)
        .map(|_| {
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(("127.0.0.1", extra)).expect("connect");
                s.set_read_timeout(Some(std::time::Duration::from_secs(120)))
                    .expect("timeout");
                s.write_all(b"GET /bulk HTTP/1.0\r\n\r\n").expect("send");
                let mut total = 0usize;
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => total += n,
                        Err(e) => panic!("download cut after {total} bytes: {e}"),
                    }
                }
                total
            })
        })
        .collect();
    let header = format!("HTTP/1.0 200 OK\r\nContent-Length: {LEN}\r\n\r\n").len();
    let got: Vec<usize> = downloads
        .into_iter()
        .map(|d| d.join().expect("download thread"))
        .collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let _ = child.wait();
    assert!(
        got.iter().all(|n| *n == LEN + header),
        "every download whole ({} bytes each): got {got:?}",
        LEN + header
    );
}
