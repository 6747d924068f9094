//! The session state machine of DESIGN.md. Each transition is written to the database
//! before its side effect, so a crash leaves a state that says what might be running.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Planned,
    Provisioning,
    Connecting,
    Deploying,
    Serving,
    Collecting,
    Stopping,
    /// Final: stopped, and the proof is recorded.
    Stopped,
    /// Final: something failed; the session was still stopped and the stop proven.
    Failed,
    /// The provider has not confirmed the stop: the instance may still bill. Retried until it does.
    StopUnconfirmed,
}

impl SessionState {
    pub const ALL: [SessionState; 10] = [
        SessionState::Planned,
        SessionState::Provisioning,
        SessionState::Connecting,
        SessionState::Deploying,
        SessionState::Serving,
        SessionState::Collecting,
        SessionState::Stopping,
        SessionState::Stopped,
        SessionState::Failed,
        SessionState::StopUnconfirmed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Planned => "planned",
            SessionState::Provisioning => "provisioning",
            SessionState::Connecting => "connecting",
            SessionState::Deploying => "deploying",
            SessionState::Serving => "serving",
            SessionState::Collecting => "collecting",
            SessionState::Stopping => "stopping",
            SessionState::Stopped => "stopped",
            SessionState::Failed => "failed",
            SessionState::StopUnconfirmed => "stop_unconfirmed",
        }
    }

    /// Final states need nothing more from anyone. `stop_unconfirmed` is not final.
    pub fn is_final(self) -> bool {
        matches!(self, SessionState::Stopped | SessionState::Failed)
    }

    /// Listing order: what may still bill comes first.
    pub fn display_rank(self) -> u8 {
        match self {
            SessionState::StopUnconfirmed => 0,
            s if !s.is_final() => 1,
            _ => 2,
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SessionState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown session state {s:?}"))
    }
}
