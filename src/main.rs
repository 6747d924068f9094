use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    gpuctl_providers::install_tls();
    let cli = gpuctl::cli::Cli::parse();
    gpuctl::diagnostics::init(cli.verbose);
    match gpuctl::commands::run(cli) {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            gpuctl::exit::Exit::Failed.into()
        }
    }
}
