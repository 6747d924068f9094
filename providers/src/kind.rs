//! The provider names a plan may use, and what each one implies.

use std::fmt;
use std::str::FromStr;

/// The `instance.provider` of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// This machine: the agent runs as a child process.
    Local,
    /// A host the engineer rents by the hour and reaches by SSH key.
    Ssh,
    Lambda,
    Runpod,
    Vast,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 5] = [
        ProviderKind::Local,
        ProviderKind::Ssh,
        ProviderKind::Lambda,
        ProviderKind::Runpod,
        ProviderKind::Vast,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Ssh => "ssh",
            ProviderKind::Lambda => "lambda",
            ProviderKind::Runpod => "runpod",
            ProviderKind::Vast => "vast",
        }
    }

    /// Clouds have an API that launches and terminates instances and can be read back;
    /// their stop is proven by the provider's own answer.
    pub fn is_cloud(self) -> bool {
        matches!(
            self,
            ProviderKind::Lambda | ProviderKind::Runpod | ProviderKind::Vast
        )
    }

    /// Whether the session reaches its host over SSH (everything but `local`).
    pub fn uses_ssh(self) -> bool {
        self != ProviderKind::Local
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown provider {0:?}: expected one of local, ssh, lambda, runpod, vast")]
pub struct UnknownProvider(pub String);

impl FromStr for ProviderKind {
    type Err = UnknownProvider;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProviderKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| UnknownProvider(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in ProviderKind::ALL {
            assert_eq!(kind.as_str().parse::<ProviderKind>().ok(), Some(kind));
        }
        assert!("aws".parse::<ProviderKind>().is_err());
    }
}
