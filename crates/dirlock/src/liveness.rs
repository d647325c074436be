//! Who we are (boot, pid namespace, pid, start time, host) and whether a record's holder is dead.
//!
//! The rule is "stale only when certain": a holder is dead only when it ran on this host, in
//! this boot and this pid namespace, and its pid is gone (`kill(pid, 0)` fails with `ESRCH`),
//! every one of its threads has exited (a zombie), or the pid now belongs to a process with
//! another start time (the pid was reused); or when it ran on this host in another boot.
//! Everything else, including every case where `/proc` cannot tell, counts as held.
//!
//! The pid and start time survive `exec`, so they alone would keep a holder that called `exec`
//! alive until the new program exits, where lock-shm and lock-file holders lose their locks
//! with their close-on-exec descriptors. A version-2 record that says `ofd_lock 1` adds the
//! kernel's word: its writer keeps an OFD lock on the record file through a close-on-exec
//! descriptor for as long as it holds a level with it (`ofd.rs`), so a published record whose
//! file nobody has locked belongs to a writer that has exited or called `exec`. The lock is
//! asked about (`F_OFD_GETLK`) through the descriptor the record was read from. Under the same
//! host, boot and pid namespace, the holder is dead when either test says so: the pid test is
//! sound on its own (the lock may outlive the holder in a forked child that inherited the
//! descriptor) and so is the lock test (exec keeps the pid). A record without the promise, or
//! a file system that cannot answer, leaves the pid test alone, as before.
//!
//! The pid and start-time test is `lock_api::process_state`, which also tells a zombie leader
//! whose other threads run on (alive, holding the lock) from a process that has ended.

use std::io;
use std::sync::Arc;

use lock_api::{Error, PerProcess, ProcessState, Result, process_start_time, process_state};
use std::os::fd::OwnedFd;

use rustix::process::{Pid, PidfdFlags, getuid, pidfd_open};

use crate::ofd::Probe;
use crate::record::{Record, checked_word};
use crate::wipeonfork::{self, getpid};

const PID_NS: &str = "/proc/self/ns/pid";

/// The identity of this process, as written into its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) boot_id: String,
    pub(crate) pid_ns: u64,
    pub(crate) pid: Pid,
    pub(crate) start_time: u64,
    pub(crate) host: String,
    /// The real uid when the identity was cached (informational only in records).
    pub(crate) uid: u32,
    /// The lines of every record of this process that never change (magic to `uid`),
    /// rendered once.
    head: String,
}

/// The identity of the current process, cached per pid (a forked child computes its own).
///
/// The host name is read once per process: a holder renamed while it runs keeps its old name
/// in records it has already written anyway.
///
/// # Errors
///
/// [`Error::Io`] when `/proc` cannot be read (dirlock needs Linux with `/proc` mounted);
/// [`Error::InvalidArgument`] when the host name or boot id cannot be stored in a record.
#[allow(
    clippy::unnecessary_cast,
    reason = "st_ino is narrower than u64 on some targets"
)]
pub(crate) fn current() -> Result<Arc<Identity>> {
    // A forked child starts with an empty cache (and never locks its parent's copy).
    static CACHE: PerProcess<Option<Arc<Identity>>> = PerProcess::new();
    let pid = getpid();
    let mut cache = CACHE.lock(wipeonfork::pid());
    if let Some(identity) = cache.as_ref() {
        return Ok(Arc::clone(identity));
    }
    let boot_id = checked_word(&lock_api::boot_id()?, "boot_id").map_err(Error::invalid)?;
    let pid_ns = rustix::fs::stat(PID_NS)
        .map_err(|e| Error::io("stat", PID_NS, e.into()))?
        .st_ino;
    let start_time = match process_start_time(pid.as_raw_nonzero().get() as u32)? {
        Some(start_time) => start_time,
        None => {
            return Err(Error::io(
                "read",
                format!("/proc/{}/stat", pid.as_raw_nonzero()),
                io::ErrorKind::NotFound.into(),
            ));
        }
    };
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy();
    let host = checked_word(&host, "host name").map_err(Error::invalid)?;
    let mut identity = Identity {
        boot_id,
        pid_ns: pid_ns as u64,
        pid,
        start_time,
        host,
        uid: getuid().as_raw(),
        head: String::new(),
    };
    identity.head = record_head(&identity.record());
    let identity = Arc::new(identity);
    *cache = Some(Arc::clone(&identity));
    Ok(identity)
}

/// The bytes of `record` up to and including its `uid` line.
fn record_head(record: &Record) -> String {
    let bytes = record.to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    let end = text.find("\ntime_ns ").map_or(text.len(), |i| i + 1);
    text[..end].to_owned()
}

/// Now, in nanoseconds since the Unix epoch (0 before it).
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Identity {
    /// A fresh record of this process, stamped now, as bytes: the same bytes as
    /// [`Record::to_bytes`] of [`record`](Identity::record) with `ofd_lock` set, without
    /// formatting the fields that never change again.
    pub(crate) fn record_bytes(&self, ofd_lock: bool) -> Vec<u8> {
        use std::io::Write as _;
        let mut bytes = Vec::with_capacity(self.head.len() + 64);
        bytes.extend_from_slice(self.head.as_bytes());
        // Writing to a Vec cannot fail.
        let _ = write!(
            bytes,
            "time_ns {}\nnonce {:016x}\nofd_lock {}\n",
            now_ns(),
            rand::random::<u64>(),
            u8::from(ofd_lock)
        );
        bytes
    }

    /// A fresh record of this process, stamped now.
    pub(crate) fn record(&self) -> Record {
        let time_ns = now_ns();
        Record {
            boot_id: self.boot_id.clone(),
            pid_ns: self.pid_ns,
            pid: self.pid.as_raw_nonzero().get() as u32,
            start_time: self.start_time,
            host: self.host.clone(),
            uid: self.uid,
            time_ns,
            nonce: rand::random(),
            // Set by whoever writes the record, once it knows whether the file is locked.
            ofd_lock: false,
        }
    }
}

/// What a record says about its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The holder is alive, or cannot be proven dead.
    Held(HeldBecause),
    /// The holder is certainly dead; the level may be reclaimed.
    Stale(StaleBecause),
}

/// Why a record counts as held. More reasons may come with later record formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeldBecause {
    /// The holding process is alive (same pid and start time, a thread still running, and its
    /// record file still locked when the record promises that).
    Alive,
    /// The record was written on another host: its process cannot be checked from here.
    ForeignHost,
    /// The record was written in another pid namespace: its pid means nothing here.
    ForeignPidNamespace,
    /// The pid exists but `/proc` does not show its start time (for example `hidepid`).
    Unverifiable,
}

/// Why a record counts as stale. More reasons may come with later record formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StaleBecause {
    /// No process has the pid (`kill(pid, 0)` fails with `ESRCH`).
    NoSuchProcess,
    /// The pid belongs to a process all of whose threads have exited, not yet reaped. (A
    /// zombie main thread alone is not enough: a process with a live thread is alive.)
    Zombie,
    /// The pid belongs to a process with another start time: the holder died, its pid was reused.
    PidReused,
    /// The record was written on this host in another (hence earlier) boot.
    EarlierBoot,
    /// The record promises an OFD lock on its file (format 2, `ofd_lock 1`) and nobody holds
    /// one: the descriptor that held it is closed, so the holder has called `exec` or exited.
    DescriptorClosed,
}

/// Decides whether `record`'s holder is alive, from the point of view of `me`; `lock` is what
/// `F_OFD_GETLK` said about the record's file when it was read.
///
/// # Errors
///
/// [`Error::Io`] when `kill(2)` fails with anything but `ESRCH` or `EPERM`, or `/proc/<pid>/stat`
/// cannot be parsed.
pub(crate) fn judge(record: &Record, lock: Probe, me: &Identity) -> Result<Verdict> {
    let verdict = judge_pid(record, me)?;
    // Only the same host, boot and pid namespace: the lock test is no wider than the pid test
    // (a foreign record stays held until an operator breaks it).
    if let Verdict::Held(HeldBecause::Alive | HeldBecause::Unverifiable) = verdict
        && record.ofd_lock
        && lock == Probe::Unlocked
    {
        return Ok(Verdict::Stale(StaleBecause::DescriptorClosed));
    }
    Ok(verdict)
}

/// The verdict of the host, boot, namespace, pid and start-time tests alone.
fn judge_pid(record: &Record, me: &Identity) -> Result<Verdict> {
    if record.host != me.host {
        return Ok(Verdict::Held(HeldBecause::ForeignHost));
    }
    if record.boot_id != me.boot_id {
        // Same host name, another boot: this boot is running, so that one is over.
        return Ok(Verdict::Stale(StaleBecause::EarlierBoot));
    }
    if record.pid_ns != me.pid_ns {
        return Ok(Verdict::Held(HeldBecause::ForeignPidNamespace));
    }
    Ok(match process_state(record.pid, record.start_time)? {
        ProcessState::Alive => Verdict::Held(HeldBecause::Alive),
        ProcessState::Gone => Verdict::Stale(StaleBecause::NoSuchProcess),
        ProcessState::Zombie => Verdict::Stale(StaleBecause::Zombie),
        ProcessState::Reused => Verdict::Stale(StaleBecause::PidReused),
        // Also a pid that Record::parse refuses: a forged record in memory is not "stale".
        ProcessState::Unverifiable => Verdict::Held(HeldBecause::Unverifiable),
    })
}

/// What [`holder_pidfd`] found of a record's process.
#[derive(Debug)]
pub(crate) enum HolderPidfd {
    /// A pidfd of the record's very process, judged held for this reason.
    Verified(OwnedFd, HeldBecause),
    /// The process is gone (or its pid was reused): the record is stale.
    Gone,
    /// No pidfd (a kernel before 5.3, a seccomp filter, a pid the record cannot name), or a
    /// verdict that leaves the process unwatchable here.
    Unavailable,
}

/// A pidfd of the process `record` names, verified to be the record's: after `pidfd_open`, the
/// record's pid is judged again, and if it still has the record's start time, it was the
/// holder's the whole time (a pid number belongs to one process at a time), so the pidfd
/// refers to the holder. Where `/proc` hides the start time (`HeldBecause::Unverifiable`) the
/// check cannot be made, which the verdict says.
///
/// Call it for a record already judged held by a process of this host, boot and pid namespace.
pub(crate) fn holder_pidfd(record: &Record, me: &Identity) -> HolderPidfd {
    let Some(pid) = i32::try_from(record.pid).ok().and_then(Pid::from_raw) else {
        return HolderPidfd::Unavailable;
    };
    match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(pidfd) => match judge(record, Probe::Unknown, me) {
            Ok(Verdict::Held(why @ (HeldBecause::Alive | HeldBecause::Unverifiable))) => {
                HolderPidfd::Verified(pidfd, why)
            }
            Ok(Verdict::Stale(_)) => HolderPidfd::Gone,
            // Cannot happen for a record that was judged local and alive; an error leaves the
            // process unwatched.
            Ok(Verdict::Held(_)) | Err(_) => HolderPidfd::Unavailable,
        },
        Err(rustix::io::Errno::SRCH) => HolderPidfd::Gone,
        Err(_) => HolderPidfd::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_bytes_are_a_record_of_ours() {
        let me = current().unwrap();
        for ofd_lock in [false, true] {
            let bytes = me.record_bytes(ofd_lock);
            let parsed = Record::parse(&bytes, "test").unwrap();
            let expected = Record {
                time_ns: parsed.time_ns,
                nonce: parsed.nonce,
                ofd_lock,
                ..me.record()
            };
            assert_eq!(parsed, expected);
            assert_eq!(parsed.to_bytes(), bytes);
        }
    }

    #[test]
    fn own_identity_is_alive_and_a_reused_pid_is_stale() {
        let me = current().unwrap();
        let mine = me.record();
        assert_eq!(
            judge(&mine, Probe::Unknown, &me).unwrap(),
            Verdict::Held(HeldBecause::Alive)
        );
        let reused = Record {
            start_time: mine.start_time + 1,
            ..mine.clone()
        };
        assert_eq!(
            judge(&reused, Probe::Unknown, &me).unwrap(),
            Verdict::Stale(StaleBecause::PidReused)
        );
        let earlier = Record {
            boot_id: "another-boot".into(),
            ..mine.clone()
        };
        assert_eq!(
            judge(&earlier, Probe::Unknown, &me).unwrap(),
            Verdict::Stale(StaleBecause::EarlierBoot)
        );
        let foreign = Record {
            host: "elsewhere".into(),
            boot_id: "another-boot".into(),
            ..mine.clone()
        };
        assert_eq!(
            judge(&foreign, Probe::Unknown, &me).unwrap(),
            Verdict::Held(HeldBecause::ForeignHost)
        );
        let namespaced = Record {
            pid_ns: mine.pid_ns + 1,
            start_time: 1,
            ..mine
        };
        assert_eq!(
            judge(&namespaced, Probe::Unknown, &me).unwrap(),
            Verdict::Held(HeldBecause::ForeignPidNamespace)
        );
    }

    #[test]
    fn an_unlocked_file_is_stale_only_when_promised_and_only_here() {
        let me = current().unwrap();
        let promised = Record {
            ofd_lock: true,
            ..me.record()
        };
        // A live pid with the right start time, but nobody holds the promised lock: exec.
        assert_eq!(
            judge(&promised, Probe::Unlocked, &me).unwrap(),
            Verdict::Stale(StaleBecause::DescriptorClosed)
        );
        assert_eq!(
            judge(&promised, Probe::Locked, &me).unwrap(),
            Verdict::Held(HeldBecause::Alive)
        );
        // The file system could not tell: the pid test alone.
        assert_eq!(
            judge(&promised, Probe::Unknown, &me).unwrap(),
            Verdict::Held(HeldBecause::Alive)
        );
        // No promise (version 1, or the lock was refused): an unlocked file means nothing.
        let unpromised = Record {
            ofd_lock: false,
            ..promised.clone()
        };
        assert_eq!(
            judge(&unpromised, Probe::Unlocked, &me).unwrap(),
            Verdict::Held(HeldBecause::Alive)
        );
        // A locked file does not revive a dead pid (a forked child may keep the lock).
        let reused = Record {
            start_time: promised.start_time + 1,
            ..promised.clone()
        };
        assert_eq!(
            judge(&reused, Probe::Locked, &me).unwrap(),
            Verdict::Stale(StaleBecause::PidReused)
        );
        // Foreign records stay held whatever the lock says.
        let foreign = Record {
            host: "elsewhere".into(),
            ..promised.clone()
        };
        assert_eq!(
            judge(&foreign, Probe::Unlocked, &me).unwrap(),
            Verdict::Held(HeldBecause::ForeignHost)
        );
        let namespaced = Record {
            pid_ns: promised.pid_ns + 1,
            ..promised
        };
        assert_eq!(
            judge(&namespaced, Probe::Unlocked, &me).unwrap(),
            Verdict::Held(HeldBecause::ForeignPidNamespace)
        );
    }
}
