//! gpuctl-agent: the small binary gpuctl deploys to a host.
//!
//! For now it prints its version and an environment report; serving, the request log
//! and the watchdog build on this.

mod api;
mod bench;
mod billing;
mod config;
mod engine;
mod envreport;
mod fetch;
mod gpu;
mod log;
mod memory;
mod metrics;
mod reqlog;
mod serve;
mod setup;
mod supervise;

use std::process::ExitCode;

const USAGE: &str = "usage: gpuctl-agent <command>

commands:
  serve --config FILE   serve the model the config names until its deadline
  bench --model FILE (--prompt-ids IDS | --prompt TEXT) [--tokens N]
               time to first token and decode speed (for bench/)
  membw [--threads N] [--mib M]
               memory read bandwidth (for bench/'s physical floor)
  version      print the agent's version and protocol version
  env-report   print the environment report (OS, CPU, memory, disk, GPUs through NVML)
  kernels      print the CPU engine's kernel levels this CPU runs, and the one it picks (JSON)
  gpu-procs    print the compute processes on every GPU (JSON), for the stop's check";

fn main() -> ExitCode {
    // reqwest is built without a TLS provider of its own (see gpuctl_providers::install_tls);
    // the agent talks plain HTTP on 127.0.0.1, but a client must still be buildable.
    let _ = rustls::crypto::ring::default_provider().install_default();
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
        Some("gpu-procs") => match serde_json::to_string(&gpu::processes()) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Some("env-report") => {
            print!(
                "{}",
                envreport::report(&std::env::current_dir().unwrap_or_else(|_| "/".into()))
            );
            ExitCode::SUCCESS
        }
        Some("serve") => {
            log::init();
            let config = match args.get(1..) {
                Some([flag, path]) if flag == "--config" => std::path::PathBuf::from(path),
                _ => {
                    eprintln!("usage: gpuctl-agent serve --config FILE");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let code = match runtime.block_on(serve::run(&config)) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e:#}");
                    1
                }
            };
            // Exit now: a model load still running in a blocking thread must not hold the process.
            std::process::exit(code)
        }
        Some("export-tokenizer") => match bench::export_tokenizer(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some("kernels") => {
            let supported: Vec<&str> = engine::KernelLevel::ALL
                .into_iter()
                .filter(|l| l.supported())
                .map(|l| l.name())
                .collect();
            let best = engine::KernelLevel::detect().name();
            println!(
                "{}",
                serde_json::json!({ "best": best, "supported": supported })
            );
            ExitCode::SUCCESS
        }
        Some("membw") => match bench::membw(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some("bench") => match bench::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
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
