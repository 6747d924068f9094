//! The one place gpuctl writes what people and scripts read: a command's result on stdout
//! (text, one JSON document, or JSON Lines events with the global `--json`) and messages
//! for people on stderr. Diagnostics (`-v`, `RUST_LOG`) are `tracing`'s, not this.
//!
//! A closed or failing stdout never aborts a command: `gpuctl up | head -1` must still
//! stop and prove the stop of what it started, so write errors are dropped here instead
//! of panicking as `println!` does.

use std::fmt;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::{json, Value};

pub struct Printer {
    json: bool,
    /// The spinner of the step `up` is in, on a terminal: lines for people go above it.
    spinner: Mutex<Option<ProgressBar>>,
}

static PRINTER: OnceLock<Printer> = OnceLock::new();

/// Set the output mode once, from the command line (`--json`). Later calls change nothing.
pub fn init(json: bool) {
    let _ = PRINTER.set(Printer::new(json));
}

/// The process's printer (text mode when `init` was never called: library use, tests).
pub fn printer() -> &'static Printer {
    PRINTER.get_or_init(|| Printer::new(false))
}

/// Whether scripts asked for JSON (`--json`).
pub fn json() -> bool {
    printer().json
}

/// A line of the command's result on stdout.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::printer().out(format_args!($($arg)*)) };
}

/// A line for people on stderr (above the spinner, if one turns).
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => { $crate::output::printer().note(format_args!($($arg)*)) };
}

/// `warning: ...` on stderr.
#[macro_export]
macro_rules! warning {
    ($($arg:tt)*) => { $crate::output::printer().note(format_args!("warning: {}", format_args!($($arg)*))) };
}

/// `error: ...` on stderr.
#[macro_export]
macro_rules! error_line {
    ($($arg:tt)*) => { $crate::output::printer().note(format_args!("error: {}", format_args!($($arg)*))) };
}

impl Printer {
    fn new(json: bool) -> Printer {
        Printer {
            json,
            spinner: Mutex::new(None),
        }
    }

    pub fn out(&self, line: fmt::Arguments) {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}").and_then(|_| stdout.flush());
    }

    /// Text as it is (no newline added): a rendered card, a completion script.
    pub fn out_text(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_all(text.as_bytes())
            .and_then(|_| stdout.flush());
    }

    /// Stdout for a long result written piece by piece (a million audit rows), buffered.
    /// A reader that went away ends the writing with an error, never a panic.
    pub fn stream(&self) -> std::io::BufWriter<std::io::StdoutLock<'static>> {
        std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock())
    }

    /// One JSON document on stdout (a command's whole result with `--json`).
    pub fn doc<T: Serialize + ?Sized>(&self, value: &T) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(value)?;
        self.out(format_args!("{text}"));
        Ok(())
    }

    /// One JSON Lines event on stdout: `{"at", "event", "session_id"?, ...fields}`.
    pub fn event(&self, event: &str, session: Option<&str>, fields: Value) {
        let mut obj = json!({ "at": chrono::Utc::now().to_rfc3339(), "event": event });
        if let Some(o) = obj.as_object_mut() {
            if let Some(s) = session {
                o.insert("session_id".into(), json!(s));
            }
            if let Value::Object(f) = fields {
                o.extend(f);
            }
        }
        self.out(format_args!("{obj}"));
    }

    pub fn note(&self, line: fmt::Arguments) {
        let spinner = self.spinner.lock().ok().and_then(|s| s.clone());
        match spinner {
            Some(bar) => bar.println(line.to_string()),
            None => {
                let mut stderr = std::io::stderr().lock();
                let _ = writeln!(stderr, "{line}");
            }
        }
    }

    /// Text for people as it is (no newline added).
    pub fn note_text(&self, text: &str) {
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }

    /// Show `bar` until `end_spinner`; notes meanwhile print above it.
    pub fn start_spinner(&self, bar: ProgressBar) {
        if let Ok(mut s) = self.spinner.lock() {
            *s = Some(bar);
        }
    }

    /// Clear the spinner and give back the message it showed.
    pub fn end_spinner(&self) -> Option<String> {
        let bar = self.spinner.lock().ok().and_then(|mut s| s.take())?;
        let msg = bar.message();
        bar.finish_and_clear();
        Some(msg)
    }
}
