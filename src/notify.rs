//! Alerts: a JSON POST to the webhook a plan's `[notify] webhook_env` names, on the 80 %
//! budget mark, a fallback, a stop, a failure and every unconfirmed stop (the daemon's
//! retries repeat it, with their backoff).
//!
//! The URL is a secret: read from this process's environment when an alert goes out,
//! never printed, stored or put in an error (reqwest's errors carry the URL; it is cut).
//! Delivery runs on a thread of its own with a timeout: a webhook that hangs or fails never
//! delays a stop. `up` waits a bounded moment for alerts in flight before it exits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;

/// One delivery attempt's limit.
const TIMEOUT: Duration = Duration::from_secs(5);

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// What an alert says (the documented shape; `text` is what Slack's incoming webhooks show).
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub text: String,
    /// budget | fallback | stop | failure | stop_unconfirmed
    pub event: &'static str,
    pub session_id: String,
    pub plan: String,
    pub owner: Option<String>,
    pub provider: String,
    pub message: String,
    pub at: chrono::DateTime<Utc>,
    pub gpuctl_version: &'static str,
}

/// Who alerts are about, and where they go.
#[derive(Debug, Clone)]
pub struct Alerter {
    /// The environment variable holding the webhook URL (None: the plan has no [notify]).
    webhook_env: Option<String>,
    session_id: String,
    plan: String,
    owner: Option<String>,
    provider: String,
}

impl Alerter {
    pub fn for_plan(plan: &crate::plan::Plan, session_id: &str) -> Alerter {
        Alerter {
            webhook_env: plan.notify.as_ref().map(|n| n.webhook_env.clone()),
            session_id: session_id.to_string(),
            plan: plan.name.clone(),
            owner: plan.owner.clone(),
            provider: plan.instance.provider.as_str().to_string(),
        }
    }

    /// From a session row (the daemon): `[notify]` read from the plan text it ran.
    pub fn for_record(s: &crate::db::SessionRecord) -> Alerter {
        let webhook_env = toml::from_str::<toml::Value>(&s.plan_text)
            .ok()
            .and_then(|v| {
                v.get("notify")?
                    .get("webhook_env")?
                    .as_str()
                    .map(String::from)
            });
        Alerter {
            webhook_env,
            session_id: s.id.clone(),
            plan: s.plan_name.clone(),
            owner: s.owner.clone(),
            provider: s.provider.clone(),
        }
    }

    /// Why alerts cannot go out from this process, if the plan asks for them (said once
    /// by `up` before it starts anything).
    pub fn problem(&self) -> Option<String> {
        self.webhook()?.err()
    }

    /// The webhook URL from this process's environment (None: the plan has no [notify]),
    /// or why there is none usable.
    fn webhook(&self) -> Option<Result<String, String>> {
        let env = self.webhook_env.as_ref()?;
        Some(match crate::settings::secret(env).ok_or(()) {
            Err(()) => Err(format!(
                "[notify] webhook_env names {env}, which is not set here: no alerts will be sent from this process (export {env}=<the webhook URL>)"
            )),
            Ok(url) if !(url.starts_with("https://") || url.starts_with("http://")) => Err(
                format!("{env} does not hold an http(s) URL: no alerts will be sent"),
            ),
            Ok(url) => Ok(url),
        })
    }

    /// Send `event` in the background; returns at once.
    pub fn send(&self, event: &'static str, message: &str) {
        let (Some(env), Some(Ok(url))) = (&self.webhook_env, self.webhook()) else {
            return;
        };
        let alert = Alert {
            text: format!(
                "gpuctl: session {} ({}, {}): {event}: {message}",
                self.session_id, self.plan, self.provider
            ),
            event,
            session_id: self.session_id.clone(),
            plan: self.plan.clone(),
            owner: self.owner.clone(),
            provider: self.provider.clone(),
            message: message.to_string(),
            at: Utc::now(),
            gpuctl_version: env!("CARGO_PKG_VERSION"),
        };
        let env = env.clone();
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name("gpuctl-alert".into())
            .spawn(move || {
                if let Err(e) = deliver(&url, &alert) {
                    crate::warning!(
                        "the {} alert for session {} was not delivered to ${env}: {e}",
                        alert.event,
                        alert.session_id
                    );
                }
                IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// One POST, bounded by `TIMEOUT`; errors never name the URL.
fn deliver(url: &str, alert: &Alert) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    gpuctl_providers::install_tls();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .user_agent(concat!("gpuctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.without_url().to_string())?;
        let answer = client
            .post(url)
            .json(alert)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if answer.status().is_success() {
            Ok(())
        } else {
            Err(format!("the webhook answered {}", answer.status()))
        }
    })
}

/// Wait up to `max` for alerts still being delivered (before the process exits).
pub fn flush(max: Duration) {
    let start = Instant::now();
    while IN_FLIGHT.load(Ordering::SeqCst) > 0 && start.elapsed() < max {
        std::thread::sleep(Duration::from_millis(20));
    }
}
