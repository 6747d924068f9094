use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    gpuctl_providers::install_tls();
    let cli = gpuctl::cli::Cli::parse();
    gpuctl::diagnostics::init(cli.verbose);
    gpuctl::output::init(cli.json);
    match gpuctl::commands::run(cli) {
        Ok(exit) => exit.into(),
        Err(e) => {
            gpuctl::error_line!("{e}");
            for cause in e.chain().skip(1) {
                gpuctl::note!("  caused by: {cause}");
            }
            gpuctl::exit::Exit::Failed.into()
        }
    }
}
