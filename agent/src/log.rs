//! Timestamped lines on stderr; the controller sends them to `agent.log`.

#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("{} {}", chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true), format!($($arg)*))
    };
}
