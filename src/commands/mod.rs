//! One module per subcommand, each with one entry function returning an exit status.

mod audit;
mod daemon;
mod db;
mod debug;
mod down;
mod eval;
mod evidence;
mod extend;
mod logs;
mod ls;
mod notebook;
mod offers;
mod plan;
mod ssh;
mod status;
mod up;

use crate::cli::{Cli, Command, PlanCommand};
use crate::exit::Exit;

pub fn run(cli: Cli) -> anyhow::Result<Exit> {
    if cli.json {
        if let Some(name) = without_json(&cli.command) {
            crate::error_line!(
                "`gpuctl {name}` writes no JSON (its output is for a person or a shell); run it without --json"
            );
            return Ok(Exit::Refused);
        }
    }
    match cli.command {
        Command::Plan(PlanCommand::New(args)) => plan::new(args),
        Command::Plan(PlanCommand::Check(args)) => plan::check(args),
        Command::Plan(PlanCommand::Show(args)) => plan::show(args),
        Command::Up(args) => up::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Evidence(args) => evidence::run(args),
        Command::Notebook(args) => notebook::run(args),
        Command::Offers(args) => offers::run(args),
        Command::Ls(args) => ls::run(args),
        Command::Status(args) => status::run(args),
        Command::Logs(args) => logs::run(args),
        Command::Ssh(args) => ssh::run(args),
        Command::Extend(args) => extend::run(args),
        Command::Down(args) => down::run(args),
        Command::Completions(args) => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(args.shell, &mut cmd, "gpuctl", &mut std::io::stdout());
            Ok(Exit::Done)
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(Exit::Done)
        }
        Command::Audit(args) => audit::run(args),
        Command::Daemon(args) => daemon::run(args),
        Command::Db(action) => db::run(action),
        Command::Debug(cmd) => debug::run(cmd),
    }
}

/// Commands whose output has no JSON form.
fn without_json(command: &Command) -> Option<&'static str> {
    match command {
        Command::Plan(PlanCommand::New(_)) => Some("plan new"),
        Command::Ssh(_) => Some("ssh"),
        Command::Completions(_) => Some("completions"),
        Command::Man => Some("man"),
        _ => None,
    }
}

fn open_db() -> anyhow::Result<crate::db::Db> {
    let home = crate::home::gpuctl_home()?;
    Ok(crate::db::Db::open(&home)?)
}

/// The async runtime for commands that talk to the network or child processes.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Money as dollars and cents, or a dash.
fn usd(v: Option<f64>) -> String {
    v.map(|v| format!("${v:.2}")).unwrap_or_else(|| "-".into())
}

/// `text` in bold red on a terminal (what may still bill must not be missed), plain otherwise.
fn alarm(text: &str, stream_is_terminal: bool) -> String {
    if stream_is_terminal && !crate::settings::settings().no_color {
        format!("\x1b[1;31m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Who drives a live session, and the retries of an unconfirmed stop.
fn driver_note(s: &crate::db::SessionRecord) -> Option<String> {
    if s.state.is_final() {
        return None;
    }
    let driver = match s.controller() {
        Some(c) => match crate::procs::gone(&c, s) {
            None if c.machine != crate::db::this_machine() => format!(
                "driven by gpuctl {} (pid {}) on another machine",
                c.kind.as_str(),
                c.pid
            ),
            None => format!("driven by gpuctl {} (pid {})", c.kind.as_str(), c.pid),
            Some(why) => format!(
                "its controller, gpuctl {} (pid {}), {why}: `gpuctl daemon` takes it over",
                c.kind.as_str(),
                c.pid
            ),
        },
        None => "no controller: `gpuctl daemon` takes it over".into(),
    };
    Some(
        if s.state == crate::session::SessionState::StopUnconfirmed {
            format!(
                "{driver}; stop attempts {}{}",
                s.stop_attempts,
                s.next_stop_attempt_at
                    .map(|t| format!(", next at {}", t.format("%H:%M:%S UTC")))
                    .unwrap_or_default()
            )
        } else {
            driver
        },
    )
}
