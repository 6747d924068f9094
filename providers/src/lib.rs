//! Providers: where a session's compute comes from and how it is proven gone.
//!
//! Every cloud answers the same questions (what does it cost, launch it, read it back,
//! terminate it, how do I reach it over SSH) so that the controller's stop logic is written
//! once. `local` and `ssh` need no API: their stop is proven on the host itself.

mod catalog;
mod credentials;
mod endpoint;
mod http;
mod kind;
mod lambda;
mod provider;
mod runpod;
pub mod settings;
mod vast;

pub use catalog::{catalog, price_of, Price};
pub use credentials::{api_key, credentials_file, env_var, ApiKey};
pub use endpoint::{HostKeyPolicy, SshEndpoint};
pub use http::is_loopback;
pub use kind::{ProviderKind, UnknownProvider};
pub use lambda::{ssh_key_name_for, Lambda};
pub use provider::{
    gone, instance_name, session_of, BillingGranularity, Instance, InstanceState, LaunchSpec,
    Launched, Offer, Provider, ProviderError,
};
pub use runpod::Runpod;
pub use vast::Vast;

/// Make ring rustls's crypto provider (the one russh already uses). Every binary of the
/// workspace calls this first: reqwest is built without a provider of its own, so that no
/// second crypto library (aws-lc) is compiled.
pub fn install_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One cloud client, whichever the plan names.
pub enum Cloud {
    Lambda(Lambda),
    Runpod(Runpod),
    Vast(Vast),
}

/// The API base of a cloud: `GPUCTL_<NAME>_API` when set (a proxy, or the emulator), else
/// the provider's documented address.
pub fn api_base(kind: ProviderKind) -> Option<String> {
    settings::settings().api_base(kind).map(str::to_string)
}

impl Cloud {
    /// The client for `kind`, with its key from the environment or the credentials file.
    pub fn connect(kind: ProviderKind) -> Result<Cloud, ProviderError> {
        let base = api_base(kind)
            .ok_or_else(|| ProviderError::Api(format!("{kind} is not a cloud provider")))?;
        let key = api_key(kind)?;
        Cloud::with_key(kind, &base, key)
    }

    pub fn with_key(kind: ProviderKind, base: &str, key: ApiKey) -> Result<Cloud, ProviderError> {
        Ok(match kind {
            ProviderKind::Lambda => Cloud::Lambda(Lambda::new(base, key)?),
            ProviderKind::Runpod => Cloud::Runpod(Runpod::new(base, key)?),
            ProviderKind::Vast => Cloud::Vast(Vast::new(base, key)?),
            _ => {
                return Err(ProviderError::Api(format!(
                    "{kind} is not a cloud provider"
                )))
            }
        })
    }
}

macro_rules! each {
    ($self:ident, $c:ident => $e:expr) => {
        match $self {
            Cloud::Lambda($c) => $e,
            Cloud::Runpod($c) => $e,
            Cloud::Vast($c) => $e,
        }
    };
}

impl Provider for Cloud {
    fn kind(&self) -> ProviderKind {
        each!(self, c => c.kind())
    }
    async fn live_offers(&self, t: &str, gpus: u32) -> Result<Vec<Offer>, ProviderError> {
        each!(self, c => c.live_offers(t, gpus).await)
    }
    async fn launch(&self, spec: &LaunchSpec) -> Result<Launched, ProviderError> {
        each!(self, c => c.launch(spec).await)
    }
    async fn get(&self, id: &str) -> Result<Instance, ProviderError> {
        each!(self, c => c.get(id).await)
    }
    async fn terminate(&self, id: &str) -> Result<(), ProviderError> {
        each!(self, c => c.terminate(id).await)
    }
    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        each!(self, c => c.list().await)
    }
    fn calls(&self) -> u64 {
        each!(self, c => c.calls())
    }
    fn key_fingerprint(&self) -> String {
        each!(self, c => c.key_fingerprint())
    }
}

/// A TCP port from a provider's answer: 1-65535, or nothing (never a wrapped number).
pub(crate) fn port_of(v: &serde_json::Value) -> Option<u16> {
    v.as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

/// Billing granularity by provider kind, the one place it is said. Lambda bills on-demand
/// instances in one-minute increments and RunPod per second (their billing docs, read
/// 2026-11-25); Vast bills on-demand per second (vast.ai/pricing, "On-Demand: Per-second
/// billing", as transcribed 2026-10-07; docs.vast.ai serverless pricing says the same of its
/// instances); `local` and `ssh` record per second.
pub fn billing_of(kind: ProviderKind) -> BillingGranularity {
    match kind {
        ProviderKind::Lambda => BillingGranularity::PerMinute,
        _ => BillingGranularity::PerSecond,
    }
}

/// The same, for a provider name as the session database stores it (an unknown name:
/// per second).
pub fn billing_of_name(name: &str) -> BillingGranularity {
    name.parse()
        .map(billing_of)
        .unwrap_or(BillingGranularity::PerSecond)
}
