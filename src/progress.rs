//! What `up` shows while it works: a spinner per step on a terminal, plain lines
//! otherwise, or JSON Lines on stdout with `--json` (for scripts).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

pub struct Reporter {
    json: bool,
    bar: Option<ProgressBar>,
    step: Option<(String, Instant)>,
    /// The session these lines are about, where one process reports on many (the daemon).
    session: Option<String>,
}

impl Reporter {
    pub fn new(json: bool) -> Reporter {
        Reporter {
            json,
            bar: None,
            step: None,
            session: None,
        }
    }

    /// Plain lines (never a spinner) tagged with the session id: for the daemon's log.
    pub fn for_session(json: bool, id: &str) -> Reporter {
        Reporter {
            session: Some(id.to_string()),
            ..Reporter::new(json)
        }
    }

    fn tag(&self) -> String {
        self.session
            .as_ref()
            .map(|s| format!("[{s}] "))
            .unwrap_or_default()
    }

    fn emit(&self, event: &str, fields: serde_json::Value) {
        let mut obj = json!({ "at": chrono::Utc::now().to_rfc3339(), "event": event });
        if let (Some(o), Some(s)) = (obj.as_object_mut(), &self.session) {
            o.insert("session_id".into(), json!(s));
        }
        if let (Some(o), serde_json::Value::Object(f)) = (obj.as_object_mut(), fields) {
            o.extend(f);
        }
        println!("{obj}");
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
            self.bar = Some(bar);
        } else {
            eprintln!("{}==> {message}", self.tag());
        }
        self.step = Some((name.to_string(), Instant::now()));
    }

    /// Close the current step.
    pub fn done(&mut self, note: &str) {
        let Some((name, started)) = self.step.take() else {
            return;
        };
        let ms = started.elapsed().as_millis() as u64;
        if self.json {
            self.emit("done", json!({ "step": name, "ms": ms, "note": note }));
        } else if let Some(bar) = self.bar.take() {
            let msg = bar.message();
            bar.finish_and_clear();
            eprintln!(
                "ok  {msg} ({ms} ms){}",
                if note.is_empty() {
                    String::new()
                } else {
                    format!(": {note}")
                }
            );
        } else if !note.is_empty() {
            eprintln!("{}    {note} ({ms} ms)", self.tag());
        }
    }

    pub fn info(&self, message: &str) {
        if self.json {
            self.emit("info", json!({ "message": message }));
        } else if let Some(bar) = &self.bar {
            bar.println(format!("    {message}"));
        } else {
            eprintln!("{}    {message}", self.tag());
        }
    }

    pub fn warn(&self, message: &str) {
        tracing::warn!(session = self.session.as_deref(), "{message}");
        if self.json {
            self.emit("warning", json!({ "message": message }));
        } else if let Some(bar) = &self.bar {
            bar.println(format!("warning: {message}"));
        } else {
            eprintln!("{}warning: {message}", self.tag());
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
