//! Processes on this machine, identified by PID *and* start time: PIDs wrap quickly
//! (pid_max is often 32768), and a stale PID must never be mistaken for a live controller.

use crate::db::{Controller, ControllerKind};

/// Start time of `pid` in clock ticks since boot (/proc/PID/stat, field 22).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state); field 22 is the 20th from there.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a process is a zombie or gone (a zombie has exited; only its parent's wait is missing).
pub fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|s| s == "Z" || s == "X"),
    }
}

/// This process, as the controller of a session.
pub fn me(kind: ControllerKind) -> Controller {
    let pid = std::process::id();
    Controller {
        pid,
        start: start_time(pid).unwrap_or(0),
        kind,
    }
}

/// Whether the recorded controller is still the same live process.
pub fn alive(c: &Controller) -> bool {
    !exited(c.pid) && start_time(c.pid) == Some(c.start)
}

/// Whether `pid` is a live process whose command line contains `needle` (checked before
/// signalling a PID read from a record).
pub fn cmdline_contains(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).contains(needle))
        .unwrap_or(false)
        && !exited(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_made_up_one_is_not() {
        let me = me(ControllerKind::Up);
        assert!(me.start > 0);
        assert!(alive(&me));
        let stale = Controller {
            start: me.start + 1,
            ..me
        };
        assert!(
            !alive(&stale),
            "same PID, other start time: not the same process"
        );
    }
}
