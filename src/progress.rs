//! What `up` (and the daemon, per session) shows while it works: a spinner per step on a
//! terminal, plain lines otherwise, or JSON Lines events on stdout with `--json`. Written
//! through the process's `output::Printer`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::output::printer;

pub struct Reporter {
    json: bool,
    /// Whether this step shows a spinner (a terminal, and one session per process).
    spinning: bool,
    step: Option<(String, Instant)>,
    /// The session these lines are about, where one process reports on many (the daemon).
    session: Option<String>,
}

impl Reporter {
    /// Progress in the process's output mode.
    pub fn new() -> Reporter {
        Reporter {
            json: crate::output::json(),
            spinning: false,
            step: None,
            session: None,
        }
    }

    /// Plain lines (never a spinner) tagged with the session id: for the daemon's log.
    pub fn for_session(id: &str) -> Reporter {
        Reporter {
            session: Some(id.to_string()),
            ..Reporter::new()
        }
    }

    fn tag(&self) -> String {
        self.session
            .as_ref()
            .map(|s| format!("[{s}] "))
            .unwrap_or_default()
    }

    fn emit(&self, event: &str, fields: serde_json::Value) {
        printer().event(event, self.session.as_deref(), fields);
    }

    /// Begin a step; the previous one, if any, is closed as done.
    pub fn step(&mut self, name: &str, message: &str) {
        self.done("");
        tracing::info!(session = self.session.as_deref(), step = name, "{message}");
        if self.json {
            self.emit("step", json!({ "step": name, "message": message }));
        } else if self.session.is_none() && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(message.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            printer().start_spinner(bar);
            self.spinning = true;
        } else {
            crate::note!("{}==> {message}", self.tag());
        }
        self.step = Some((name.to_string(), Instant::now()));
    }

    /// Close the current step.
    pub fn done(&mut self, note: &str) {
        let Some((name, started)) = self.step.take() else {
            return;
        };
        let ms = started.elapsed().as_millis() as u64;
        let spun = std::mem::take(&mut self.spinning)
            .then(|| printer().end_spinner())
            .flatten();
        if self.json {
            self.emit("done", json!({ "step": name, "ms": ms, "note": note }));
        } else if let Some(msg) = spun {
            let note = if note.is_empty() {
                String::new()
            } else {
                format!(": {note}")
            };
            crate::note!("ok  {msg} ({ms} ms){note}");
        } else if !note.is_empty() {
            crate::note!("{}    {note} ({ms} ms)", self.tag());
        }
    }

    pub fn info(&self, message: &str) {
        if self.json {
            self.emit("info", json!({ "message": message }));
        } else {
            crate::note!("{}    {message}", self.tag());
        }
    }

    pub fn warn(&self, message: &str) {
        tracing::warn!(session = self.session.as_deref(), "{message}");
        if self.json {
            self.emit("warning", json!({ "message": message }));
        } else {
            crate::note!("{}warning: {message}", self.tag());
        }
    }

    /// A JSON Lines event of its own kind (nothing in text mode).
    pub fn event(&self, event: &str, fields: serde_json::Value) {
        if self.json {
            self.emit(event, fields);
        }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    pub fn result(&mut self, fields: serde_json::Value) {
        self.done("");
        if self.json {
            self.emit("result", fields);
        }
    }
}

impl Default for Reporter {
    fn default() -> Reporter {
        Reporter::new()
    }
}
