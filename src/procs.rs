//! Processes on this machine, identified by PID *and* start time: PIDs wrap quickly
//! (pid_max is often 32768), and a stale PID must never be mistaken for a live controller.

use crate::db::{Controller, ControllerKind};

/// The fields of /proc/PID/stat from field 3 (state) on. The command name (field 2) may
/// hold spaces and parentheses, so parsing starts after the last ')'.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(String::from).collect())
}

/// Start time of `pid` in clock ticks since boot (/proc/PID/stat, field 22).
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Whether a process is a zombie or gone (a zombie has exited; only its parent's wait is missing).
pub fn exited(pid: u32) -> bool {
    stat_fields(pid)
        .and_then(|f| f.first().cloned())
        .is_none_or(|s| s == "Z" || s == "X")
}

/// The live members of process group `pgid` (/proc/PID/stat, field 5), each with its
/// command line.
pub fn group_members(pgid: i32) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat_fields(*pid).is_some_and(|f| {
                f.first().is_some_and(|s| s != "Z" && s != "X")
                    && f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
            })
        })
        .map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            (pid, cmd)
        })
        .collect()
}

/// This machine's name (shown to other hosts in the daemons table, and in events).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// This process, as the controller of a session.
pub fn me(kind: ControllerKind) -> Controller {
    let pid = std::process::id();
    Controller {
        pid,
        start: start_time(pid).unwrap_or(0),
        kind,
        machine: crate::db::this_machine(),
    }
}

/// Whether the recorded controller is still the same live process on this machine.
pub fn alive(c: &Controller) -> bool {
    c.machine == crate::db::this_machine() && !exited(c.pid) && start_time(c.pid) == Some(c.start)
}

/// Why a session's recorded controller no longer drives it, or None while it does. On
/// this machine: its process is gone, or it exists but its heartbeat is older than
/// `HEARTBEAT_STALE` (stopped or frozen). On another machine (a team's shared store) its
/// PID means nothing here: only the heartbeat (else the row's last update) says it lives.
pub fn gone(c: &Controller, s: &crate::db::SessionRecord) -> Option<String> {
    gone_given(c, s, alive)
}

/// `gone`, with whether a process on this machine is alive asked of `is_alive` (a daemon's
/// sweep asks it once per controller, not once per session: thousands of sessions share a
/// few controllers).
pub fn gone_given(
    c: &Controller,
    s: &crate::db::SessionRecord,
    is_alive: impl FnOnce(&Controller) -> bool,
) -> Option<String> {
    let now = chrono::Utc::now();
    let stale = |t: chrono::DateTime<chrono::Utc>| {
        (now - t).to_std().unwrap_or_default() > crate::session::up::HEARTBEAT_STALE
    };
    if c.machine != crate::db::this_machine() {
        let last = s.controller_heartbeat_at.unwrap_or(s.updated_at);
        return stale(last).then(|| {
            format!(
                "runs on another machine and has not said it is alive for {} s",
                (now - last).num_seconds()
            )
        });
    }
    if !is_alive(c) {
        return Some("is gone".into());
    }
    s.controller_heartbeat_at
        .is_some_and(stale)
        .then(|| "still exists but has stopped saying it is alive (stopped or frozen)".into())
}

/// Live processes whose command line contains `needle` (a `/proc` scan).
pub fn with_cmdline(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| cmdline_contains(*pid, needle))
        .collect()
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
