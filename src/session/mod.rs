//! Sessions: their states and identities.

mod agent_binary;
pub mod budget;
mod cloud;
mod finish;
mod handle;
mod host;
mod local_host;
pub mod remote_host;
pub mod takeover;
pub mod up;

pub use cloud::{candidates, live_quote};
pub use finish::retry_backoff;
pub use gpuctl_store::SessionState;
pub use handle::AgentHandle;
pub use local_host::{find_agent, peak_rss_kib, port_closed};
pub use remote_host::RemoteAgent;

use chrono::{DateTime, Utc};

/// A new session id: sortable by creation time, unique enough for one team's database.
pub fn new_session_id(now: DateTime<Utc>) -> String {
    let mut bytes = [0u8; 3];
    // /dev/urandom never blocks; the time-based fallback only matters if it is missing.
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    if !random {
        let nanos = now.timestamp_subsec_nanos().to_le_bytes();
        bytes.copy_from_slice(&nanos[..3]);
    }
    format!(
        "{}-{:02x}{:02x}{:02x}",
        now.format("%Y%m%d-%H%M%S"),
        bytes[0],
        bytes[1],
        bytes[2]
    )
}
