//! Whether a process of this host that a record names by pid and start time is still the one
//! that wrote it, from `/proc`: what a backend whose records outlive their writers (dirlock's
//! record files, lock-etcd's client keys until their lease expires) asks before it calls a
//! writer dead.
//!
//! A record is only comparable when it was written on this host, in this boot and in this pid
//! namespace; the caller checks those first ([`boot_id`], [`pid_namespace`](crate::pid_namespace))
//! and asks [`process_state`] only then.
//!
//! A zombie thread-group leader is not a dead process: the main thread may have ended alone
//! (`SYS_exit`, `pthread_exit` from `main`) while another thread runs on. `/proc/<pid>/stat`
//! then shows the leader's state, `Z`, but its `num_threads` (field 20, the kernel's count of
//! the group's tasks not yet released, the zombie leader included) is above one. A process is
//! dead only when its leader is a zombie and that count is one (or zero, when the group is being
//! released): only a live task can start another one, so no thread can appear after that.

use std::io;

use rustix::process::{Pid, test_kill_process};

use crate::{Error, Result};

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// This boot's id (`/proc/sys/kernel/random/boot_id`, trimmed): two records of one host name
/// with different boot ids were written in different boots.
///
/// # Errors
///
/// [`Error::Io`] when it cannot be read (no `/proc`).
pub fn boot_id() -> Result<String> {
    let text = std::fs::read_to_string(BOOT_ID).map_err(|e| Error::io("read", BOOT_ID, e))?;
    Ok(text.trim().to_owned())
}

/// What `/proc` says about the process a record names by pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// A process with the pid and the start time exists, and a thread of it runs.
    Alive,
    /// No process has the pid (`kill(pid, 0)` fails with `ESRCH`).
    Gone,
    /// Every thread of the process has exited; it is not reaped yet.
    Zombie,
    /// The pid belongs to a process with another start time: the pid was reused.
    Reused,
    /// The pid exists but `/proc` does not show its start time (`hidepid`, say), or the pid is
    /// not one a process can have: nothing can be concluded.
    Unverifiable,
}

impl ProcessState {
    /// Whether the process that wrote the record has certainly ended.
    #[must_use]
    pub fn is_dead(self) -> bool {
        matches!(
            self,
            ProcessState::Gone | ProcessState::Zombie | ProcessState::Reused
        )
    }
}

/// The state of the process of this host, boot and pid namespace that a record names by `pid`
/// and `start_time` (field 22 of `/proc/<pid>/stat`, clock ticks after boot).
///
/// # Errors
///
/// [`Error::Io`] when `kill(2)` fails with anything but `ESRCH` or `EPERM`, or
/// `/proc/<pid>/stat` exists but cannot be parsed.
pub fn process_state(pid: u32, start_time: u64) -> Result<ProcessState> {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return Ok(ProcessState::Unverifiable);
    };
    if !exists(pid)? {
        return Ok(ProcessState::Gone);
    }
    match read_stat(pid)? {
        Some(stat) if stat.all_exited() => Ok(ProcessState::Zombie),
        Some(stat) if stat.start_time != start_time => Ok(ProcessState::Reused),
        Some(_) => Ok(ProcessState::Alive),
        // /proc/<pid> vanished after kill(2) saw it (the process just exited) or is hidden;
        // only a second ESRCH is certain.
        None if !exists(pid)? => Ok(ProcessState::Gone),
        None => Ok(ProcessState::Unverifiable),
    }
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`); `None` when `/proc` does
/// not show it. What a record writer stores beside its own pid.
///
/// # Errors
///
/// [`Error::Io`] when `/proc/<pid>/stat` exists but cannot be parsed.
pub fn process_start_time(pid: u32) -> Result<Option<u64>> {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return Ok(None);
    };
    Ok(read_stat(pid)?.map(|stat| stat.start_time))
}

/// `kill(pid, 0)`: whether a process with this pid exists. `EPERM` means it exists.
fn exists(pid: Pid) -> Result<bool> {
    match test_kill_process(pid) {
        Ok(()) | Err(rustix::io::Errno::PERM) => Ok(true),
        Err(rustix::io::Errno::SRCH) => Ok(false),
        Err(e) => Err(Error::io(
            "kill",
            format!("pid {}", pid.as_raw_nonzero()),
            e.into(),
        )),
    }
}

/// The fields of `/proc/<pid>/stat` that liveness needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    /// The thread-group leader (the main thread) has exited: state `Z`, `X` or `x`.
    leader_exited: bool,
    /// Field 20: the group's tasks not yet released, the leader included even as a zombie.
    threads: u64,
    /// Field 22: start time of the process, in clock ticks after boot.
    start_time: u64,
}

impl ProcStat {
    /// Whether every thread of the process has exited: the leader is a zombie and is the only
    /// task left (a count of zero means the group is being released).
    fn all_exited(&self) -> bool {
        self.leader_exited && self.threads <= 1
    }
}

/// Reads `/proc/<pid>/stat`; `None` when it does not exist or cannot be read.
///
/// # Errors
///
/// [`Error::Io`] (kind `InvalidData`) when the file exists but cannot be parsed.
fn read_stat(pid: Pid) -> Result<Option<ProcStat>> {
    let path = format!("/proc/{}/stat", pid.as_raw_nonzero());
    // One read for the whole line (a few hundred bytes): `fs::read` would start with 32-byte
    // probes, since /proc files have no size, and dirlock asks on every contended attempt.
    let read = || {
        use std::io::Read as _;
        let mut text = Vec::with_capacity(1024);
        std::fs::File::open(&path)?.read_to_end(&mut text)?;
        Ok::<_, io::Error>(text)
    };
    let text = match read() {
        Ok(text) => text,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) || e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error()) =>
        {
            // ESRCH: reading a /proc file of an exiting process may return it.
            return Ok(None);
        }
        Err(e) => return Err(Error::io("read", path, e)),
    };
    parse_stat(&text)
        .map(Some)
        .ok_or_else(|| Error::io("parse", path, io::ErrorKind::InvalidData.into()))
}

/// Parses the state (field 3), thread count (field 20) and start time (field 22) of a
/// `/proc/<pid>/stat` line.
///
/// The command name (field 2) is in parentheses and may itself contain `)` and spaces, so the
/// fields are counted from the last `)`.
fn parse_stat(text: &[u8]) -> Option<ProcStat> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    // Field 3 was just taken: field 20 is 17 further on, field 22 two after that.
    let threads = fields.nth(16)?.parse().ok()?;
    let start_time = fields.nth(1)?.parse().ok()?;
    Some(ProcStat {
        leader_exited: matches!(state, "Z" | "X" | "x"),
        threads,
        start_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_hostile_command_names() {
        let line =
            b"42 (a) b) c (d) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10\n";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                leader_exited: false,
                threads: 1,
                start_time: 987654
            })
        );
        let zombie = b"7 (x) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0\n";
        assert!(parse_stat(zombie).unwrap().all_exited());
        // The main thread exited alone; two tasks remain (the zombie leader and a live thread).
        let leader_gone = b"7 (x) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 2 0 55 0 0\n";
        let stat = parse_stat(leader_gone).unwrap();
        assert!(stat.leader_exited && !stat.all_exited());
        assert_eq!(stat.start_time, 55);
        assert_eq!(parse_stat(b"7 (x) S 1 2"), None);
        assert_eq!(parse_stat(b"no parenthesis"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_gone() {
        let me = std::process::id();
        let start = process_start_time(me).unwrap().expect("own start time");
        assert_eq!(process_state(me, start).unwrap(), ProcessState::Alive);
        assert_eq!(process_state(me, start + 1).unwrap(), ProcessState::Reused);
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait");
        // The pid may have been reused meanwhile, by a process with another start time.
        assert!(process_state(pid, 0).unwrap().is_dead());
        assert_eq!(process_state(0, 0).unwrap(), ProcessState::Unverifiable);
        assert!(!boot_id().unwrap().is_empty());
    }
}
