//! `gpuctl-agent serve --config FILE`: load the model, serve the API on 127.0.0.1, and
//! stop at the deadline on its own, whatever the controller does (layer 1 of the stop).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use gpuctl_protocol::{evidence_files, FinalRecord, StopAction, StopReason};
use tokio::sync::watch;

use crate::api::{self, AppState};
use crate::{config, engine, envreport, log, metrics};

/// How long in-flight responses get to finish once the stop begins; the port closes after it.
const DRAIN: Duration = Duration::from_millis(300);
const METRICS_EVERY: Duration = Duration::from_secs(2);

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let loaded = config::load(config_path)?;
    let cfg = loaded.config.clone();
    let evidence = loaded.evidence_dir.clone();
    log!(
        "session {} model {} deadline {}",
        cfg.session_id,
        cfg.model.id,
        cfg.deadline.to_rfc3339()
    );

    // Arm the watchdog before anything slow: the deadline holds even during model load.
    let (stop_tx, mut stop_rx) = watch::channel::<Option<StopReason>>(None);
    spawn_watchdog(
        cfg.deadline,
        Duration::from_secs(cfg.grace_secs),
        stop_tx.clone(),
    );
    spawn_signal_handler(stop_tx.clone());

    let report = envreport::report(&evidence);
    std::fs::write(evidence.join(evidence_files::ENVIRONMENT_REPORT), report)
        .context("writing the environment report")?;

    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler = metrics::spawn_sampler(
        evidence.join(evidence_files::GPU_METRICS),
        METRICS_EVERY,
        sampler_stop.clone(),
    );

    let model_path = cfg
        .model
        .path
        .clone()
        .context("the config names no model path")?;
    log!("loading {model_path}");
    let started = std::time::Instant::now();
    let load = tokio::task::spawn_blocking(move || engine::load(Path::new(&model_path)));
    let model = tokio::select! {
        res = load => res.context("the model loader panicked")??,
        reason = wait_stop(&mut stop_rx) => {
            finish(&cfg, &evidence, reason, vec!["model load (interrupted)".into()], &sampler_stop, sampler);
            return Ok(());
        }
    };
    log!("model loaded in {} ms", started.elapsed().as_millis());
    let engine = engine::spawn(model);

    let log_path = evidence.join(evidence_files::REQUESTS);
    let request_log = crate::reqlog::RequestLog::create(&log_path, loaded.token.clone())
        .context("opening requests.jsonl")?;
    let state = Arc::new(AppState {
        engine,
        token: loaded.token,
        model_id: cfg.model.id.clone(),
        session_id: cfg.session_id.clone(),
        deadline: cfg.deadline,
        started_at: Utc::now(),
        log: request_log,
        stopping: AtomicBool::new(false),
    });

    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], cfg.listen_port));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr}: is another server using port {}?",
            cfg.listen_port
        )
    })?;
    log!("serving on http://{addr}");

    let (drain_tx, drain_rx) = watch::channel(false);
    let server =
        axum::serve(listener, api::app(state.clone())).with_graceful_shutdown(async move {
            let mut rx = drain_rx;
            let _ = rx.wait_for(|d| *d).await;
        });
    let server = tokio::spawn(async move { server.await });

    let reason = wait_stop(&mut stop_rx).await;
    state.stopping.store(true, Ordering::SeqCst);
    let _ = drain_tx.send(true);
    // Graceful for in-flight requests, but never past DRAIN: the port must close on time.
    let _ = tokio::time::timeout(DRAIN, server).await;
    state.log.flush();
    finish(
        &cfg,
        &evidence,
        reason,
        vec![format!("api server on {addr}"), "engine".into()],
        &sampler_stop,
        sampler,
    );
    Ok(())
}

async fn wait_stop(rx: &mut watch::Receiver<Option<StopReason>>) -> StopReason {
    match rx.wait_for(|r| r.is_some()).await {
        Ok(r) => r.unwrap_or(StopReason::Requested),
        Err(_) => StopReason::Requested,
    }
}

fn spawn_watchdog(
    deadline: chrono::DateTime<Utc>,
    grace: Duration,
    stop: watch::Sender<Option<StopReason>>,
) {
    tokio::spawn(async move {
        let until = |t: chrono::DateTime<Utc>| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        let grace_at = deadline - chrono::Duration::from_std(grace).unwrap_or_default();
        tokio::time::sleep(until(grace_at)).await;
        log!("grace period: the deadline is {}", deadline.to_rfc3339());
        tokio::time::sleep(until(deadline)).await;
        log!("deadline reached: stopping");
        let _ = stop.send(Some(StopReason::Deadline));
    });
}

fn spawn_signal_handler(stop: watch::Sender<Option<StopReason>>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log!("cannot install signal handlers; the deadline still applies");
            return;
        };
        tokio::select! {
            _ = term.recv() => log!("SIGTERM: stopping"),
            _ = int.recv() => log!("SIGINT: stopping"),
        }
        let _ = stop.send(Some(StopReason::Signal));
    });
}

/// The agent's last acts: final NVML sample, final record, then the stop action.
fn finish(
    cfg: &gpuctl_protocol::AgentConfig,
    evidence: &Path,
    reason: StopReason,
    stopped: Vec<String>,
    sampler_stop: &AtomicBool,
    sampler: Option<std::thread::JoinHandle<()>>,
) {
    sampler_stop.store(true, Ordering::SeqCst);
    if let Some(s) = sampler {
        let _ = s.join();
    }
    let stop_action = match &cfg.stop_action {
        StopAction::Exit => None,
        StopAction::Command(argv) if reason == StopReason::Deadline => Some(run_stop_action(argv)),
        StopAction::Command(_) => Some("not run: the stop was not the deadline".to_string()),
    };
    let record = FinalRecord {
        session_id: cfg.session_id.clone(),
        stopped_at: Utc::now(),
        deadline: cfg.deadline,
        reason,
        stopped,
        stop_action,
    };
    match serde_json::to_string_pretty(&record) {
        Ok(json) => {
            if let Err(e) = std::fs::write(evidence.join(evidence_files::FINAL_RECORD), json) {
                log!("cannot write the final record: {e}");
            }
        }
        Err(e) => log!("cannot serialise the final record: {e}"),
    }
    log!("stopped ({reason:?})");
}

fn run_stop_action(argv: &[String]) -> String {
    let Some((cmd, args)) = argv.split_first() else {
        return "empty stop command".into();
    };
    match std::process::Command::new(cmd).args(args).status() {
        Ok(s) => format!("`{}` exited with {s}", argv.join(" ")),
        Err(e) => format!("`{}` could not run: {e}", argv.join(" ")),
    }
}
