//! The provider trait as the controller sees it.

use std::future::Future;
use std::time::Duration;

use crate::ProviderKind;

/// How the provider rounds billed time. Cost so far = price x billed time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingGranularity {
    /// Billed per started second (and this is also what `local` and `ssh` record).
    PerSecond,
    /// Billed per started minute.
    PerMinute,
    /// Billed per started hour.
    PerHour,
}

impl BillingGranularity {
    /// The billed duration for `elapsed` of running time.
    pub fn billed(self, elapsed: Duration) -> Duration {
        let unit = match self {
            BillingGranularity::PerSecond => 1,
            BillingGranularity::PerMinute => 60,
            BillingGranularity::PerHour => 3600,
        };
        let secs = elapsed.as_secs() + u64::from(elapsed.subsec_nanos() > 0);
        Duration::from_secs(secs.div_ceil(unit) * unit)
    }
}

/// What the provider says about an instance when asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceState {
    Booting,
    Running,
    Stopping,
    /// Stopped but still allocated (a stopped disk may still bill).
    Stopped,
    /// It will never serve (Vast `exited`/`offline`/`unknown` while meant to run, Lambda
    /// `unhealthy`) but may still bill: terminate it, and try the next candidate.
    Failed(String),
    /// The provider says it is terminated, or gives its documented not-found answer for
    /// this very endpoint: billing has ended. Nothing else (an error page, a 5xx, an
    /// answer without the expected shape) is ever read as gone.
    Gone,
    /// Anything else, verbatim.
    Other(String),
}

/// What to launch. `name` carries the gpuctl tag (`gpuctl-<session id>`): it is how an
/// instance is found again after a launch whose answer was lost, and how orphans are found.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub instance_type: String,
    pub region: Option<String>,
    pub name: String,
    pub gpus: u32,
    pub disk_gb: Option<u32>,
    /// The plan's SSH public key (one OpenSSH line, never the private key): registered
    /// with Lambda, passed to RunPod as `PUBLIC_KEY`.
    pub ssh_public_key: Option<String>,
    /// Lambda: use this already registered key name instead of registering the public key.
    pub ssh_key_name: Option<String>,
    /// RunPod and Vast: the container image.
    pub image: Option<String>,
    /// Vast: the most the offer may cost per hour.
    pub max_usd_per_hour: Option<f64>,
}

/// What a provider offers right now for one instance type (`gpuctl offers`, and the
/// budget gate of `up`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Offer {
    pub instance_type: String,
    /// Where (a region, a Vast offer's location); None when the provider does not say.
    pub region: Option<String>,
    pub gpus: u32,
    pub vram_gib: Option<u32>,
    pub usd_per_hour: f64,
    /// Whether it can be launched now (Lambda: a region with capacity; RunPod: stock).
    pub available: bool,
}

#[derive(Debug, Clone)]
pub struct Launched {
    pub instance_id: String,
    /// The price the provider quotes for this instance, when it says.
    pub usd_per_hour: Option<f64>,
    /// Something the user should know that did not stop the launch.
    pub warning: Option<String>,
}

/// One instance as the provider describes it.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub state: InstanceState,
    pub usd_per_hour: Option<f64>,
    pub ssh: Option<crate::SshEndpoint>,
}

/// The tag every gpuctl instance carries in its name.
pub fn instance_name(session_id: &str) -> String {
    format!("gpuctl-{session_id}")
}

/// The session an instance name belongs to, when it is one of gpuctl's.
pub fn session_of(name: &str) -> Option<&str> {
    name.strip_prefix("gpuctl-")
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("the provider has no capacity for {0}")]
    NoCapacity(String),
    #[error("the provider refused the API key (check the key's environment variable or credentials file)")]
    Unauthorized,
    #[error("the provider's quota is exhausted: {0}")]
    Quota(String),
    #[error("the provider does not know {0}")]
    NotFound(String),
    #[error("the provider did not answer in time")]
    Timeout,
    #[error("the provider answered with an error: {0}")]
    Api(String),
    /// The launch was refused, but the provider created an instance anyway (Vast).
    #[error(
        "the launch failed ({message}), but the provider created instance {instance_id} anyway"
    )]
    CreatedAnyway {
        instance_id: String,
        message: String,
    },
    #[error("{0}")]
    Credentials(String),
    #[error("{0}")]
    Io(String),
}

/// The operations every cloud implements. Terminate is only half of a stop: the controller
/// calls `get` afterwards and records the stop only when it says `Gone`.
pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;
    fn billing(&self) -> BillingGranularity {
        crate::billing_of(self.kind())
    }
    /// Live offers for a type with `gpus` GPUs, cheapest first (empty: none now).
    fn live_offers(
        &self,
        instance_type: &str,
        gpus: u32,
    ) -> impl Future<Output = Result<Vec<Offer>, ProviderError>> + Send;
    fn launch(
        &self,
        spec: &LaunchSpec,
    ) -> impl Future<Output = Result<Launched, ProviderError>> + Send;
    /// The instance, or `Gone` when the provider no longer knows it.
    fn get(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<Instance, ProviderError>> + Send;
    fn terminate(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Every instance of the account (for orphans, and for a launch whose answer was lost).
    fn list(&self) -> impl Future<Output = Result<Vec<Instance>, ProviderError>> + Send;
    /// API calls made through this client so far.
    fn calls(&self) -> u64;
    /// Which API key this client uses, as a sha256 prefix (never the key).
    fn key_fingerprint(&self) -> String;
}

/// A `Gone` instance (the provider does not know the id any more).
pub fn gone(id: &str) -> Instance {
    Instance {
        id: id.to_string(),
        name: String::new(),
        state: InstanceState::Gone,
        usd_per_hour: None,
        ssh: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_rounds_up_to_the_unit() {
        let d = Duration::from_millis(61_500);
        assert_eq!(BillingGranularity::PerSecond.billed(d).as_secs(), 62);
        assert_eq!(BillingGranularity::PerMinute.billed(d).as_secs(), 120);
        assert_eq!(BillingGranularity::PerHour.billed(d).as_secs(), 3600);
        assert_eq!(
            BillingGranularity::PerMinute
                .billed(Duration::ZERO)
                .as_secs(),
            0
        );
    }
}
