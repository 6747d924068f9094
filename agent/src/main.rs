//! gpuctl-agent: the small binary gpuctl deploys to a host.
//!
//! For now it prints its version and an environment report; serving, the request log
//! and the watchdog build on this.

mod envreport;
mod gpu;

use std::process::ExitCode;

const USAGE: &str = "usage: gpuctl-agent <command>

commands:
  version      print the agent's version and protocol version
  env-report   print the environment report (OS, CPU, memory, disk, GPUs through NVML)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("version" | "--version" | "-V") => {
            println!(
                "gpuctl-agent {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                gpuctl_protocol::PROTOCOL_VERSION
            );
            ExitCode::SUCCESS
        }
        Some("env-report") => {
            print!(
                "{}",
                envreport::report(&std::env::current_dir().unwrap_or_else(|_| "/".into()))
            );
            ExitCode::SUCCESS
        }
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!(
                "error: {}\n\n{USAGE}",
                match other {
                    Some(cmd) => format!("unknown command {cmd:?}"),
                    None => "no command given".to_string(),
                }
            );
            ExitCode::from(2)
        }
    }
}
