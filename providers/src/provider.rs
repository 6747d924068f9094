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
    /// The provider says it is terminated, or no longer knows it: billing has ended.
    Gone,
    /// Anything else, verbatim.
    Other(String),
}

/// Where to reach a running instance over SSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
}

#[derive(Debug, thiserror::Error)]
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
    #[error("{0}")]
    Io(String),
}

/// The operations every provider implements. Terminate is only half of a stop:
/// the controller calls `get` afterwards and records the stop only when it says `Gone`.
pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;
    fn billing(&self) -> BillingGranularity;
    fn get(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<InstanceState, ProviderError>> + Send;
    fn terminate(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
    fn ssh_target(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<Option<SshTarget>, ProviderError>> + Send;
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
