//! `gpuctl up PLAN`.

use super::runtime;
use crate::cli::UpArgs;
use crate::exit::Exit;
use crate::session::up::{up, UpOptions};

pub fn run(args: UpArgs) -> anyhow::Result<Exit> {
    let opts = UpOptions {
        plan_path: args.plan,
        agent_bin: args.agent_bin,
        json: args.json,
        allow_public_ports: args.allow_public_ports,
        accept_new_host_key: args.accept_new_host_key,
    };
    runtime()?.block_on(up(opts))
}
