//! The fixed evaluation: each case sent to the served endpoint, timed and judged.
//! A failing case is a result, not an error.

mod client;

use std::time::Instant;

pub use client::{AgentClient, ChatAnswer};

use crate::plan::{EvalCase, Expectation};

#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseResult {
    pub id: String,
    pub prompt: String,
    pub output: String,
    pub pass: bool,
    pub reason: String,
    pub latency_ms: u64,
    pub tokens: u64,
    pub tokens_per_s: f64,
}

pub async fn run_case(client: &AgentClient, case: &EvalCase) -> CaseResult {
    let started = Instant::now();
    let answer = client.chat(&case.prompt, case.max_tokens, 0.0).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let (output, tokens, error) = match answer {
        Ok(a) => (a.content, a.completion_tokens, None),
        Err(e) => (String::new(), 0, Some(format!("request failed: {e:#}"))),
    };
    let (mut pass, mut reason) = match (&error, &case.expect) {
        (Some(e), _) => (false, e.clone()),
        (None, Expectation::Contains(s)) if output.contains(s.as_str()) => {
            (true, format!("contains {s:?}"))
        }
        (None, Expectation::Contains(s)) => (false, format!("does not contain {s:?}")),
        (None, Expectation::Regex(r)) => match regex::Regex::new(r) {
            Ok(re) if re.is_match(&output) => (true, format!("matches /{r}/")),
            Ok(_) => (false, format!("does not match /{r}/")),
            Err(e) => (false, format!("bad regex: {e}")),
        },
    };
    if let Some(limit) = case.max_latency_ms {
        if latency_ms > limit {
            pass = false;
            reason = format!("{reason}; latency {latency_ms} ms is over the {limit} ms limit");
        }
    }
    let secs = latency_ms as f64 / 1000.0;
    CaseResult {
        id: case.id.clone(),
        prompt: case.prompt.clone(),
        output,
        pass,
        reason,
        latency_ms,
        tokens,
        tokens_per_s: if secs > 0.0 {
            (tokens as f64 / secs * 100.0).round() / 100.0
        } else {
            0.0
        },
    }
}

/// `eval_results.csv` (RFC 4180 quoting).
pub fn to_csv(results: &[CaseResult]) -> String {
    let mut out = String::from("id,prompt,output,pass,reason,latency_ms,tokens,tokens_per_s\n");
    for r in results {
        let row = [
            csv_field(&r.id),
            csv_field(&r.prompt),
            csv_field(&r.output),
            r.pass.to_string(),
            csv_field(&r.reason),
            r.latency_ms.to_string(),
            r.tokens.to_string(),
            format!("{:.2}", r.tokens_per_s),
        ];
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\"\n"), "\"say \"\"hi\"\"\n\"");
    }
}
