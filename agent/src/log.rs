//! The agent's log: `tracing` events on stderr, which the controller sends to `agent.log`
//! (and the bundle). One line each: the UTC time to the millisecond, the level, the
//! message, the event's fields (`deadline=...`). JSON lines instead when the agent's
//! environment has `GPUCTL_LOG_FORMAT=json`, for a log shipper. What is recorded is chosen
//! where it is written: tokens and keys are never a message or a field.

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::EnvFilter;

/// RFC 3339 in UTC with milliseconds: the stamp tests and people read the stop time from.
struct UtcMillis;

impl FormatTime for UtcMillis {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        write!(
            w,
            "{}",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )
    }
}

pub fn init() {
    // The agent's own events; a dependency's only when it warns.
    let filter = EnvFilter::new("warn,gpuctl_agent=info");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_timer(UtcMillis)
        .with_target(false)
        .with_ansi(false);
    let _ = if std::env::var("GPUCTL_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
