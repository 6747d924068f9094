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
    /// Diagnostics on stderr: -v what gpuctl does, -vv in detail (provider requests, SSH,
    /// the store). RUST_LOG, when set, decides instead. Secrets are never in them.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Output for scripts on standard output: one JSON document per command, or JSON Lines
    /// events from `up` and the daemon. Messages for people stay on standard error
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write, check and render plans (gpu_plan.toml)
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Run a plan: record the session, serve, evaluate, stop, prove the stop
    Up(UpArgs),
    /// Run a fixed eval set against an OpenAI-compatible endpoint
    Eval(EvalArgs),
    /// Show a session's evidence bundle, verify it (`gpuctl evidence ID verify`), or import a
    /// notebook's (`gpuctl evidence import PLAN BUNDLE.zip`)
    Evidence(EvidenceArgs),
    /// Write the Jupyter notebook of a free_colab plan
    Notebook(NotebookArgs),
    /// What the plan's provider and fallbacks offer right now: live price, availability, fit
    /// to budget.hourly_usd (exit 0: something fits; 1: nothing does)
    Offers(OffersArgs),
    /// List sessions (what may still bill first)
    Ls(LsArgs),
    /// Show one session: state, deadline, cost and its events
    Status(StatusArgs),
    /// The agent's log of a session (the supervised server's lines with --server): from the
    /// host while it runs, from the evidence bundle after; -f follows until the stop
    Logs(LogsArgs),
    /// A shell (or one command, after --) on a live session's host: the plan's identity,
    /// the host key the session pinned (checked by gpuctl, then by OpenSSH)
    Ssh(SshArgs),
    /// Move a serving session's hard stop later (within its budget and the team's policy):
    /// the agent's watchdog, `up` and the daemon all take the new deadline
    Extend(ExtendArgs),
    /// Stop sessions now, in order, with evidence and proof (safe to run twice)
    Down(DownArgs),
    /// What was spent, on what, against which plan, and whether every stop was proven
    Audit(AuditArgs),
    /// The enforcement daemon: stops every session at its deadline, even when its `up` is gone
    Daemon(DaemonArgs),
    /// The session store: which one this machine uses and its schema (status), or bring
    /// its schema up to date (migrate). SQLite in GPUCTL_HOME unless GPUCTL_DATABASE_URL
    /// (or database_url in $XDG_CONFIG_HOME/gpuctl/config.toml) names a PostgreSQL server
    #[command(subcommand)]
    Db(DbAction),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(CompletionsArgs),
    /// Print the man page (roff): `gpuctl man > gpuctl.1`
    Man,
    /// Internal tools for tests; not part of the interface
    #[command(subcommand, hide = true)]
    Debug(DebugCommand),
}

#[derive(Debug, Subcommand)]
pub enum DbAction {
    /// Which store, where, its schema version and how many sessions it holds
    Status,
    /// Create the store or bring its schema up to date (every command does it on open)
    Migrate,
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
    /// Treat warnings as refusals
    #[arg(long)]
    pub deny_warnings: bool,
}

#[derive(Debug, Args)]
pub struct PlanShowArgs {
    pub plan: PathBuf,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The plan to run (gpu_plan.toml)
    pub plan: PathBuf,
    /// The gpuctl-agent binary to deploy (default: next to gpuctl)
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Accept a plan that opens public ports
    #[arg(long)]
    pub allow_public_ports: bool,
    /// Record an SSH host key seen for the first time in ~/.ssh/known_hosts instead of refusing it
    #[arg(long)]
    pub accept_new_host_key: bool,
    /// Run the session in the background, watched by the daemon (started if none runs)
    #[arg(long)]
    pub detach: bool,
    /// When no provider has capacity and the plan's fallback route is local_cpu, run that
    /// route at once (the bundled model, the same eval set)
    #[arg(long)]
    pub fallback: bool,
    /// Run a cloud session whose billing would depend on this machine alone (Lambda: no
    /// instance-scoped key for the agent); recorded with the session and shown by audit
    #[arg(long)]
    pub laptop_only: bool,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Session ids (or unique prefixes)
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub ids: Vec<String>,
    /// Every session that is not stopped yet (stop_unconfirmed included)
    #[arg(long)]
    pub all: bool,
    /// Give up waiting for a stop after this long (the stop itself goes on)
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Sessions created on or after this date (YYYY-MM-DD, UTC, or RFC 3339)
    #[arg(long)]
    pub since: Option<String>,
    /// Sessions created before this date (YYYY-MM-DD, UTC, or RFC 3339)
    #[arg(long)]
    pub until: Option<String>,
    /// Only this plan (plan.name)
    #[arg(long)]
    pub plan: Option<String>,
    /// Only this owner (plan.owner)
    #[arg(long)]
    pub owner: Option<String>,
    /// Totals per group instead of one line per session
    #[arg(long, value_enum)]
    pub by: Option<AuditBy>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: AuditFormat,
    /// Exit non-zero when a flag is raised (4 if a stop is unconfirmed, else 1): for cron and CI
    #[arg(long)]
    pub strict: bool,
    /// Also write the audit as a self-contained HTML page
    #[arg(long)]
    pub html: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AuditBy {
    Plan,
    Owner,
    Provider,
    Month,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditFormat {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(subcommand)]
    pub action: Option<DaemonAction>,
    /// When to sweep: a cron expression with seconds
    #[arg(long, default_value = "* * * * * *")]
    pub schedule: String,
    /// At most this many stops at once
    #[arg(long, default_value_t = 32)]
    pub parallel_stops: usize,
    /// Log every sweep with its duration and the number of live sessions (benchmarks)
    #[arg(long, hide = true)]
    pub log_sweeps: bool,
}

#[derive(Debug, Subcommand)]
pub enum DaemonAction {
    /// Write a systemd user unit that keeps the daemon running
    Install {
        /// Overwrite an existing unit
        #[arg(long)]
        force: bool,
        /// Print the unit instead of writing it
        #[arg(long)]
        print: bool,
    },
    /// Say whether a daemon runs for this GPUCTL_HOME (exit 0 yes, 1 no)
    Status,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Base URL of the server, e.g. http://127.0.0.1:8000
    pub url: String,
    /// A cases file of [[case]] tables, or a plan whose eval set to run
    #[arg(long)]
    pub cases: PathBuf,
    /// The model name to request (default: the first one /v1/models lists)
    #[arg(long)]
    pub model: Option<String>,
    /// Environment variable holding the bearer token
    #[arg(long, default_value = "GPUCTL_TOKEN")]
    pub token_env: String,
    /// Write eval_results.csv here
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EvidenceArgs {
    #[command(subcommand)]
    pub import: Option<EvidenceImport>,
    /// Session id or unique prefix
    #[arg(required = false)]
    pub id: Option<String>,
    /// `verify`: check MANIFEST.sha256 and that every file the plan asked for is there
    #[arg(value_parser = ["verify"])]
    pub action: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum EvidenceImport {
    /// Record a free_colab notebook's evidence zip as a session (checked whole first)
    Import {
        /// The plan the notebook was written from
        plan: PathBuf,
        /// The zip the notebook's last cell made
        zip: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct NotebookArgs {
    /// A plan with route = "free_colab"
    pub plan: PathBuf,
    /// Where to write the notebook
    #[arg(short, long, default_value = "lab.ipynb")]
    pub output: PathBuf,
    /// Overwrite --output if it exists
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct OffersArgs {
    pub plan: PathBuf,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// List cloud instances tagged by gpuctl that no live session owns (asks each provider
    /// whose API key is set)
    #[arg(long)]
    pub orphans: bool,
    /// Show at most this many sessions
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Session id or unique prefix (default: the most recent session)
    pub id: Option<String>,
    /// Keep printing new lines until the session is stopped
    #[arg(short, long)]
    pub follow: bool,
    /// Only the supervised server's lines (vLLM, SGLang, a command runtime)
    #[arg(long)]
    pub server: bool,
}

#[derive(Debug, Args)]
pub struct ExtendArgs {
    /// Session id or unique prefix
    pub id: String,
    /// How much later the hard stop comes (like 30m or 1h)
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "to", required_unless_present = "to")]
    pub by: Option<std::time::Duration>,
    /// The new hard stop (RFC 3339, like 2026-12-02T18:00:00Z)
    #[arg(long)]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write the script for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    /// Session id or unique prefix (default: the most recent session)
    pub id: Option<String>,
    /// A command to run instead of a shell (after --); its exit code is ssh's
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Session id or unique prefix (default: the most recent session)
    pub id: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Insert sessions one transaction at a time (used by the crash-safety test)
    WriteSessions {
        #[arg(long)]
        count: u64,
    },
    /// Seed sessions through the real schema for the benchmarks: live cloud sessions whose
    /// instances the emulator holds (`--instances`), or finished ones spread over months
    Seed {
        #[arg(long)]
        count: u64,
        /// Session ids are this prefix and a number (the emulator's names: gpuctl-<id>)
        #[arg(long, default_value = "bench-")]
        id_prefix: String,
        /// Live sessions: a JSON file `{"ids": [...]}` of the emulator's instance ids, in order
        #[arg(long)]
        instances: Option<PathBuf>,
        /// Live sessions: the first deadline this long from now...
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        deadline_in: std::time::Duration,
        /// ...and the others spread evenly over this window
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        spread: std::time::Duration,
        /// Finished sessions: spread over this many months back from now
        #[arg(long, default_value_t = 24)]
        months: u32,
    },
}
