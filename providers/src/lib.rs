//! Providers: where a session's compute comes from and how it is proven gone.
//!
//! Every provider answers the same questions (what does it cost, launch it, read it
//! back, terminate it, how do I reach it over SSH) so that the controller's stop logic
//! is written once. `local` and `ssh` are the first two kinds; the clouds follow.

mod kind;
mod provider;

pub use kind::{ProviderKind, UnknownProvider};
pub use provider::{BillingGranularity, InstanceState, Provider, ProviderError, SshTarget};
