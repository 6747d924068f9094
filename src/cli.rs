//! The command line, as clap sees it. One variant per subcommand; `commands` runs them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "gpuctl",
    version,
    about = "Run one bounded LLM experiment on rented compute and prove that it stopped"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write, check and render plans (gpu_plan.toml)
    #[command(subcommand)]
    Plan(PlanCommand),
    /// List sessions (what may still bill first)
    Ls(LsArgs),
    /// Show one session: state, deadline, cost and its events
    Status(StatusArgs),
    /// Internal tools for tests; not part of the interface
    #[command(subcommand, hide = true)]
    Debug(DebugCommand),
}

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Print a commented plan template with every field of the route card
    New(PlanNewArgs),
    /// Check plans against the refusal rules (exit 0 valid, 2 refused)
    Check(PlanCheckArgs),
    /// Render a plan as its route card (Markdown)
    Show(PlanShowArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum RouteArg {
    LocalCpu,
    FreeColab,
    RentedGpu,
}

#[derive(Debug, Args)]
pub struct PlanNewArgs {
    /// The compute route the template is for
    #[arg(long, value_enum, default_value = "local_cpu")]
    pub route: RouteArg,
    /// Write to this file instead of standard output
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Overwrite --output if it exists
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PlanCheckArgs {
    /// Plan files to check
    #[arg(required = true)]
    pub plans: Vec<PathBuf>,
    /// Print the result as JSON on standard output
    #[arg(long)]
    pub json: bool,
    /// Treat warnings as refusals
    #[arg(long)]
    pub deny_warnings: bool,
}

#[derive(Debug, Args)]
pub struct PlanShowArgs {
    pub plan: PathBuf,
    /// Print the validated plan as JSON instead of the route card
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[arg(long)]
    pub json: bool,
    /// Show at most this many sessions
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Session id or unique prefix (default: the most recent session)
    pub id: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Insert sessions one transaction at a time (used by the crash-safety test)
    WriteSessions {
        #[arg(long)]
        count: u64,
    },
}
