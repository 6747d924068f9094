//! `gpuctl eval URL --cases FILE`: the fixed eval set against any OpenAI-compatible server.

use std::time::Duration;

use anyhow::Context;

use super::runtime;
use crate::cli::EvalArgs;
use crate::eval::{self, AgentClient};
use crate::exit::Exit;
use crate::plan;

pub fn run(args: EvalArgs) -> anyhow::Result<Exit> {
    let cases = match plan::read_cases_file(&args.cases) {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => {
            crate::error_line!("{} holds no [[case]] tables", args.cases.display());
            return Ok(Exit::Refused);
        }
        Err(problems) => {
            for p in problems {
                crate::note!("{p}");
            }
            return Ok(Exit::Refused);
        }
    };
    let token = crate::settings::secret(&args.token_env).unwrap_or_default();
    runtime()?.block_on(async {
        let model = match args.model {
            Some(m) => m,
            None => first_model(&args.url, &token).await?,
        };
        let client = AgentClient::new(&args.url, &token, &model, Duration::from_secs(300))?;
        let mut results = Vec::new();
        for case in &cases {
            let r = eval::run_case(&client, case).await;
            if !crate::output::json() {
                crate::note!(
                    "{} {}: {} ({} ms, {} tokens)",
                    if r.pass { "pass" } else { "FAIL" },
                    r.id,
                    r.reason,
                    r.latency_ms,
                    r.tokens
                );
            }
            results.push(r);
        }
        if let Some(out) = &args.output {
            std::fs::write(out, eval::to_csv(&results))
                .with_context(|| format!("writing {}", out.display()))?;
        }
        if crate::output::json() {
            crate::output::printer().doc(&results)?;
        } else {
            let passed = results.iter().filter(|r| r.pass).count();
            crate::out!("{passed}/{} passed", results.len());
        }
        Ok(Exit::Done)
    })
}

async fn first_model(url: &str, token: &str) -> anyhow::Result<String> {
    let resp = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?
        .get(format!("{}/v1/models", url.trim_end_matches('/')))
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let v: serde_json::Value = resp
        .json()
        .await
        .context("/v1/models did not answer JSON")?;
    v["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("/v1/models answered {status} with no model; pass --model"))
}
