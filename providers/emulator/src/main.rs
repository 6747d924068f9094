//! gpuctl-cloud-emulator: a TEST TOOL. It serves the Lambda, RunPod and Vast APIs on
//! 127.0.0.1 from their documented request and response shapes (see
//! `../shared/reference/cloud-apis.md`), with their errors, rate limits, boot and terminate
//! delays, and instances that bill until they are terminated. Every instance it "launches"
//! is reached at `--ssh-host:--ssh-port` (the test harness's real sshd), so that a whole
//! session runs end to end. Tests steer it through `/_emulator/*`.

mod control;
mod graphql;
mod lambda;
mod runpod;
mod state;
mod vast;
mod wire;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::Router;
use clap::Parser;

use state::{Cloud, State};

pub type Shared = Arc<Mutex<State>>;

#[derive(Parser)]
#[command(
    name = "gpuctl-cloud-emulator",
    about = "Emulated Lambda, RunPod and Vast APIs for tests (127.0.0.1 only)"
)]
struct Args {
    /// Port on 127.0.0.1 (0: any free port; the address is printed on stdout)
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Where launched instances are reached over SSH
    #[arg(long, default_value = "127.0.0.1")]
    ssh_host: String,
    #[arg(long, default_value_t = 22)]
    ssh_port: u16,
    /// Booting -> running after this many milliseconds
    #[arg(long, default_value_t = 1500)]
    boot_ms: u64,
    /// Terminating -> terminated after this many milliseconds
    #[arg(long, default_value_t = 1000)]
    terminate_ms: u64,
    /// The API key every request must carry (Bearer)
    #[arg(long, default_value = "emulator-key")]
    key: String,
    /// Lambda's limits (documented: one request/s, one launch per 12 s)
    #[arg(long, default_value_t = 1000)]
    lambda_pace_ms: u64,
    #[arg(long, default_value_t = 12_000)]
    lambda_launch_pace_ms: u64,
    /// Vast's per-endpoint minimum intervals (on: as the backend documents them)
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    vast_rate_limits: String,
    /// Write every request received to this file, one JSON line each (method, path,
    /// query, body; never the headers, where the key is)
    #[arg(long)]
    request_log: Option<std::path::PathBuf>,
}

/// Whether the request carries the key and the key is not revoked. All three take
/// `Authorization: Bearer <key>`; Lambda also takes Basic with the key as the user
/// (its OpenAPI securitySchemes), which is checked by decoding nothing: the raw form
/// `Basic <key>` it documents too.
pub fn authorized(st: &State, cloud: Cloud, headers: &HeaderMap) -> bool {
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let given = header
        .strip_prefix("Bearer ")
        .or_else(|| {
            (cloud == Cloud::Lambda)
                .then(|| header.strip_prefix("Basic "))
                .flatten()
        })
        .unwrap_or_default();
    given == st.key && !st.revoked.contains(&cloud)
}

/// The bearer key a request carries.
pub fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
}

/// A fault that delays the answer past any client timeout.
pub async fn hang() {
    tokio::time::sleep(Duration::from_secs(120)).await;
}

pub fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = runpod::SCHEMA.set(graphql::Schema::load()?);
    let request_log = match &args.request_log {
        Some(p) => Some(std::fs::File::create(p)?),
        None => None,
    };
    let shared: Shared = Arc::new(Mutex::new(State {
        boot: Duration::from_millis(args.boot_ms),
        terminate: Duration::from_millis(args.terminate_ms),
        ssh_host: args.ssh_host,
        ssh_port: args.ssh_port,
        key: args.key,
        instances: Default::default(),
        faults: Vec::new(),
        no_capacity: Default::default(),
        revoked: Default::default(),
        next_id: 0,
        lambda_pace: Duration::from_millis(args.lambda_pace_ms),
        lambda_launch_pace: Duration::from_millis(args.lambda_launch_pace_ms),
        lambda_last: None,
        lambda_last_launch: None,
        requests: 0,
        lambda_keys: Vec::new(),
        vast_limits: args.vast_rate_limits == "on",
        vast_last: Default::default(),
        violations: Vec::new(),
        throttled: 0,
        request_log,
    }));
    let app = Router::new()
        .route("/lambda/api/v1/instance-types", get(lambda::instance_types))
        .route(
            "/lambda/api/v1/instance-operations/launch",
            post(lambda::launch),
        )
        .route(
            "/lambda/api/v1/instance-operations/terminate",
            post(lambda::terminate),
        )
        .route("/lambda/api/v1/instances", get(lambda::list))
        .route("/lambda/api/v1/instances/{id}", get(lambda::get_one))
        .route(
            "/lambda/api/v1/ssh-keys",
            get(lambda::ssh_keys).post(lambda::add_ssh_key),
        )
        .route("/runpod/graphql", post(runpod::graphql))
        .route(
            "/vast/api/v0/bundles/",
            post(vast::search).get(vast::search_by_get),
        )
        .route("/vast/api/v0/asks/{offer}/", put(vast::create))
        .route("/vast/api/v0/instances/", get(vast::list_v0))
        .route("/vast/api/v1/instances/", get(vast::list_v1))
        .route(
            "/vast/api/v0/instances/{id}/",
            get(vast::get_one).delete(vast::destroy),
        )
        .route("/vast/api/v0/instances/{id}/ssh/", post(vast::attach_ssh))
        .route("/_emulator/violations", get(control::violations))
        .route("/_emulator/instances/{id}/env", get(control::instance_env))
        .route(
            "/_emulator/faults",
            post(control::add_fault).delete(control::clear_faults),
        )
        .route("/_emulator/capacity", post(control::capacity))
        .route("/_emulator/revoke", post(control::revoke))
        .route(
            "/_emulator/instances",
            get(control::instances).post(control::bulk_create),
        )
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            wire::faults,
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            wire::log,
        ))
        .with_state(shared);
    // Loopback only: this is a test tool.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    println!("http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
