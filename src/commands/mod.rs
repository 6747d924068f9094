//! One module per subcommand, each with one entry function returning an exit status.

mod debug;
mod eval;
mod evidence;
mod ls;
mod plan;
mod status;
mod up;

use crate::cli::{Cli, Command, PlanCommand};
use crate::exit::Exit;

pub fn run(cli: Cli) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Plan(PlanCommand::New(args)) => plan::new(args),
        Command::Plan(PlanCommand::Check(args)) => plan::check(args),
        Command::Plan(PlanCommand::Show(args)) => plan::show(args),
        Command::Up(args) => up::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Evidence(args) => evidence::run(args),
        Command::Ls(args) => ls::run(args),
        Command::Status(args) => status::run(args),
        Command::Debug(cmd) => debug::run(cmd),
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
