//! `requests.jsonl`: one line per request (time, route, prompt, output, tokens, latency,
//! status). The bearer token never reaches it: headers are not logged, and a prompt or
//! output that contains the token has it replaced.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct RequestRecord {
    pub time: String,
    pub route: String,
    pub model: String,
    pub stream: bool,
    pub prompt: String,
    pub output: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub latency_ms: u64,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct RequestLog {
    file: Mutex<std::fs::File>,
    token: String,
}

impl RequestLog {
    pub fn create(path: &Path, token: String) -> std::io::Result<RequestLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(RequestLog {
            file: Mutex::new(file),
            token,
        })
    }

    pub fn write(&self, mut record: RequestRecord) {
        for text in [&mut record.prompt, &mut record.output] {
            if text.contains(&self.token) {
                *text = text.replace(&self.token, "****");
            }
        }
        let Ok(mut line) = serde_json::to_string(&record) else {
            return;
        };
        line.push('\n');
        if let Ok(mut f) = self.file.lock() {
            // A failed log write must not fail the request; the final record notes the log's size.
            let _ = f.write_all(line.as_bytes());
        }
    }

    pub fn flush(&self) {
        if let Ok(f) = self.file.lock() {
            let _ = f.sync_all();
        }
    }
}
