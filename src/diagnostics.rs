//! Diagnostics through `tracing`, on stderr and apart from the output people and scripts
//! read: `-v` says what gpuctl does (steps, takeovers, stops), `-vv` adds the detail (each
//! provider request's method, path and status, SSH connections and commands, sweeps).
//! `RUST_LOG` decides instead when set (e.g. `RUST_LOG=gpuctl_providers=debug`).
//!
//! What is recorded is chosen where it is written: API keys, tokens and webhook URLs are
//! never fields of an event.

use tracing_subscriber::EnvFilter;

/// gpuctl's own crates: `-v`/`-vv` never turn on a dependency's internals.
const OURS: [&str; 4] = [
    "gpuctl",
    "gpuctl_providers",
    "gpuctl_store",
    "gpuctl_protocol",
];

pub fn init(verbose: u8) {
    let settings = crate::settings::settings();
    let filter = match &settings.rust_log {
        Some(spec) => EnvFilter::new(spec),
        None => {
            let level = match verbose {
                0 => return,
                1 => "info",
                _ => "debug",
            };
            EnvFilter::new(
                OURS.iter()
                    .map(|c| format!("{c}={level}"))
                    .collect::<Vec<_>>()
                    .join(","),
            )
        }
    };
    let json = settings.log_json;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
