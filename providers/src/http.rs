//! The HTTP side shared by the cloud clients: rustls, a timeout on every request, paces
//! that keep under the provider's documented rate limits, 429 answered by backing off, and
//! a count of the calls made (reported per session).
//!
//! Paces are kept per process, per API base and per endpoint, not per client: a fallback
//! or a daemon that builds a new client for the same provider still waits its turn (a
//! fresh client per fallback once sent a Lambda request 9 ms after the last, and got 429).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::credentials::ApiKey;
use crate::ProviderError;

/// How many times a 429 is waited out before it is an error.
const MAX_429: u32 = 5;

/// A documented minimum interval between two requests of one kind ("any request",
/// "a launch", one endpoint), for one API base.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub name: &'static str,
    pub every: Duration,
}

impl Pace {
    pub const fn new(name: &'static str, millis: u64) -> Pace {
        Pace {
            name,
            every: Duration::from_millis(millis),
        }
    }
}

/// When each (base, pace) may next be used: a request reserves its slot under the lock and
/// sleeps outside it, so concurrent requests queue instead of bursting.
static NEXT_SLOT: LazyLock<Mutex<HashMap<(String, &'static str), Instant>>> =
    LazyLock::new(Default::default);

#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    pub base: String,
    key: ApiKey,
    calls: Arc<AtomicU64>,
}

/// The most of one answer that is read: a provider's list of instances is far smaller; an
/// endless or hostile body is cut off instead of filling memory.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// What came back: the status and the JSON body (Null when the body is not JSON).
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    /// Whether the body parsed as JSON at all (a proxy's HTML error page does not).
    pub is_json: bool,
}

impl Answer {
    /// A JSON object that has `key`, with whatever value (null included): the shape of a
    /// documented answer, as opposed to an error page or an empty body.
    pub fn has(&self, key: &str) -> bool {
        self.is_json && self.body.as_object().is_some_and(|o| o.contains_key(key))
    }
}

/// Whether a URL's host is this machine (127.0.0.1, ::1 or localhost).
pub fn is_loopback(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    let host = u.host_str().unwrap_or("").trim_matches(['[', ']']);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The request timeout: 30 s, or `GPUCTL_API_TIMEOUT_MS` (tests shorten it).
fn timeout() -> Duration {
    crate::settings::settings().api_timeout
}

impl Api {
    pub fn new(base: &str, key: ApiKey) -> Result<Api, ProviderError> {
        // ring, the provider russh already uses: no second crypto library.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout())
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("gpuctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProviderError::Io(format!("cannot build the HTTP client: {e}")))?;
        Ok(Api {
            client,
            base: base.trim_end_matches('/').to_string(),
            key,
            calls: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Benchmarks of gpuctl's own machinery run against the emulator with its rate limits
    /// off and `GPUCTL_EMULATOR_UNPACED=1`; the lift applies to a loopback API base only,
    /// so it can never send a real provider more than its documented limits allow.
    fn unpaced(&self) -> bool {
        crate::settings::settings().unpaced && is_loopback(&self.base)
    }

    /// API calls made so far through this client.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Wait until every pace in `paces` allows one more request, and take that slot.
    async fn wait_turn(&self, paces: &[Pace]) {
        if self.unpaced() {
            return;
        }
        let start = {
            let mut next = NEXT_SLOT.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let start = paces
                .iter()
                .filter_map(|p| next.get(&(self.base.clone(), p.name)))
                .fold(now, |a, b| a.max(*b));
            for p in paces {
                next.insert((self.base.clone(), p.name), start + p.every);
            }
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }

    /// One request to `path` under the API base (with its 429 retries), paced by `paces`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        paces: &[Pace],
    ) -> Result<Answer, ProviderError> {
        let url = format!("{}{path}", self.base);
        let mut throttled = 0;
        loop {
            self.wait_turn(paces).await;
            self.calls.fetch_add(1, Ordering::Relaxed);
            let mut req = self
                .client
                .request(method.clone(), &url)
                .bearer_auth(self.key.expose());
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|e| {
                if e.is_timeout() {
                    ProviderError::Timeout
                } else {
                    // Never the URL with its query: some APIs take the key there.
                    ProviderError::Io(format!("cannot reach {}: {}", self.base, e.without_url()))
                }
            })?;
            let status = resp.status();
            // The path without its query, the method and the status: never the key.
            tracing::debug!(
                api = %self.base,
                method = %method,
                path = path.split('?').next().unwrap_or(""),
                status = status.as_u16(),
                "provider request"
            );
            if status == StatusCode::TOO_MANY_REQUESTS && throttled < MAX_429 {
                throttled += 1;
                let wait = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(Duration::from_secs(1 << throttled));
                tracing::info!(api = %self.base, wait_s = wait.min(Duration::from_secs(30)).as_secs(), "HTTP 429: waiting before the next try");
                tokio::time::sleep(wait.min(Duration::from_secs(30))).await;
                continue;
            }
            let text = read_capped(resp).await?;
            let parsed: Option<Value> = serde_json::from_slice(&text).ok();
            let is_json = parsed.is_some();
            let body = parsed.unwrap_or(Value::Null);
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(ProviderError::Unauthorized);
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                return Err(ProviderError::Api(format!(
                    "rate limited {MAX_429} times in a row (HTTP 429)"
                )));
            }
            return Ok(Answer {
                status,
                body,
                is_json,
            });
        }
    }

    /// A short, stable fingerprint of the key (sha256 prefix): which key launched an
    /// instance is recorded, never the key itself.
    pub fn key_fingerprint(&self) -> String {
        self.key.fingerprint()
    }
}

/// The body, up to `MAX_ANSWER_BYTES`.
async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
    let mut out = Vec::new();
    loop {
        let chunk = resp.chunk().await.map_err(|e| {
            if e.is_timeout() {
                ProviderError::Timeout
            } else {
                ProviderError::Io(format!("reading the answer: {}", e.without_url()))
            }
        })?;
        let Some(chunk) = chunk else { return Ok(out) };
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(ProviderError::Api(format!(
                "the answer is larger than {} MiB; refused",
                MAX_ANSWER_BYTES / (1024 * 1024)
            )));
        }
        out.extend_from_slice(&chunk);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback_bases_can_be_unpaced() {
        assert!(super::is_loopback("http://127.0.0.1:8080/vast/api/v0"));
        assert!(super::is_loopback("http://[::1]:9/x"));
        assert!(super::is_loopback("http://localhost:9"));
        assert!(!super::is_loopback("https://console.vast.ai/api/v0"));
        assert!(!super::is_loopback("https://127.0.0.1.example.com/"));
        assert!(!super::is_loopback("not a url"));
    }
}
