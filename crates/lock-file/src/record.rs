//! Owner records: who holds each lock, and how the next acquirer learns that the previous
//! holder died holding it.
//!
//! `flock(2)` locks vanish with their holder, so the kernel alone cannot tell a clean release
//! from a death, nor say who holds a lock. Each lock therefore has a three-word record in the
//! mapped table:
//!
//! ```text
//! word 0  HELD (bit 63) | owner number (bits 0..63)       0 when released cleanly
//! word 1  acquisition time, ms since the Unix epoch (bits 22..64) | pid (bits 0..22)
//! word 2  inode number of the holder's pid namespace (bits 0..32; 0 unknown), 0 (bits 32..64)
//! ```
//!
//! The owner number is the manager's, unique for the life of the store (the table's counter);
//! the pid is the holder's in its own pid namespace (Linux pids are below 2^22; a larger one is
//! recorded as 0, unknown); the time comes from the coarse real-time clock (a few ns through the
//! vDSO, good to a few ms), and 42 bits of milliseconds last until the year 2109. A reader shows
//! the pid only when the holder's pid namespace is its own (`lock_api::pid_seen_here`): a holder
//! in a container is pid 1 there, and pid 1 here is another process.
//!
//! The holder writes the record right after `flock` succeeds (words 1 and 2, then word 0) and
//! clears word 0 right before it unlocks. An acquirer that finds word 0 non-zero knows the previous
//! holder never cleared it: it died holding the lock (or unlocked through a dropped manager), so
//! the acquirer reports `OwnerDied`. Both windows are safe: dying after `flock` but before the
//! record is written means `lock()` never returned, so nothing was protected yet and `Clean` is
//! right; dying after the clear but before `flock(LOCK_UN)` gives a spurious but harmless
//! `OwnerDied`. Any other non-zero value (garbage) is also reported as `OwnerDied`: the caller is
//! told to check its data, and the record is overwritten.
//!
//! The record also tells a reader who holds the lock, and whether that holder is dead: a record
//! that is claimed while the lock itself is free (a probe takes it) was left by a dead holder.
//! The probe holds the lock while it re-reads the record, and only a holder of the lock writes
//! it, so "claimed and free" is exact, never a holder caught between two steps.
//!
//! The records are plain memory in a shared mapping, so keeping them costs three stores and a load
//! per lock/unlock pair (and a coarse clock read), not the `pread`/`pwrite` calls a marker in the
//! lock file would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::table::{load, store};

/// Word 0 bit: the holder has not released the lock.
const HELD: u64 = 1 << 63;
/// Word 0 bits holding the owner number.
pub(crate) const OWNER_MASK: u64 = HELD - 1;
/// Word 1 bits holding the pid.
const PID_BITS: u32 = 22;
const PID_MASK: u64 = (1 << PID_BITS) - 1;

/// The pid as the second record word carries it (0, unknown, when it does not fit).
pub(crate) fn pid_bits(pid: u32) -> u64 {
    let pid = u64::from(pid);
    if pid <= PID_MASK { pid } else { 0 }
}

/// The second record word for a holder: now (coarse) and its [`pid_bits`].
#[inline(always)]
pub(crate) fn stamp(pid_bits: u64) -> u64 {
    lock_api::coarse_now_ms() << PID_BITS | pid_bits
}

/// What a claimed record says about its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Claim {
    /// The holder's owner number; `None` for a word that is not one lockyard writes (garbage).
    pub(crate) owner: Option<u64>,
    /// The holder's pid, when recorded.
    pub(crate) pid: Option<u32>,
    /// When the holder acquired the lock, when recorded.
    pub(crate) since: Option<SystemTime>,
    /// The inode number of the holder's pid namespace (0: unknown), which says whether `pid`
    /// names a process in the reader's.
    pub(crate) pid_ns: u32,
}

impl Claim {
    /// The holder's pid as a reader in pid namespace `here` may show it.
    pub(crate) fn pid_seen_from(&self, here: u32) -> Option<u32> {
        lock_api::pid_seen_here(self.pid?, self.pid_ns, here)
    }
}

/// The record of one lock, borrowed from the table (or a test's vector).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    held: &'a AtomicU64,
    stamp: &'a AtomicU64,
    pid_ns: &'a AtomicU64,
}

impl<'a> Record<'a> {
    /// The record in `words` (three words).
    #[inline]
    pub(crate) fn new(words: &'a [AtomicU64]) -> Self {
        Record {
            held: &words[0],
            stamp: &words[1],
            pid_ns: &words[2],
        }
    }

    /// Whether the record is claimed: the lock is held (or its holder died holding it). A hint
    /// only, read before `flock` to choose the path; it decides nothing.
    #[inline(always)]
    pub(crate) fn is_claimed(&self) -> bool {
        self.held.load(Ordering::Relaxed) != 0
    }

    /// Claims the record for `owner`, just after `flock` succeeded; `stamp` is
    /// [`stamp`]`(pid_bits(pid))` and `pid_ns` the inode number of the holder's pid namespace.
    /// Returns whether the previous holder left it claimed (died holding the lock).
    #[inline(always)]
    pub(crate) fn claim(&self, owner: u64, stamp: u64, pid_ns: u32) -> bool {
        let previous = load(self.held, Ordering::Acquire);
        store(self.stamp, stamp, Ordering::Relaxed);
        store(self.pid_ns, u64::from(pid_ns), Ordering::Relaxed);
        store(self.held, HELD | owner, Ordering::Release);
        previous != 0
    }

    /// Clears the record, just before `flock(LOCK_UN)`.
    #[inline(always)]
    pub(crate) fn release(&self) {
        store(self.held, 0, Ordering::Release);
    }

    /// Puts back a claim after `flock(LOCK_UN)` failed and the lock is still held.
    pub(crate) fn reclaim(&self, owner: u64) {
        store(self.held, HELD | owner, Ordering::Release);
    }

    /// The claim this record holds, or `None` when it says the lock was released.
    ///
    /// The words are read together: word 0, words 1 and 2, then word 0 again, retried while word
    /// 0 changes, so the pid, its namespace and the time belong to the owner returned (an owner
    /// that released and re-took the lock in between gives its own later time, which is as good).
    ///
    /// A claimed record may be stale (its holder died): the caller checks with a probe.
    pub(crate) fn read(&self) -> Option<Claim> {
        let mut held = load(self.held, Ordering::Acquire);
        for _ in 0..8 {
            if held == 0 {
                return None;
            }
            let stamp = load(self.stamp, Ordering::Acquire);
            let pid_ns = load(self.pid_ns, Ordering::Acquire);
            let again = load(self.held, Ordering::Acquire);
            if again == held {
                return Some(decode(held, stamp, pid_ns));
            }
            held = again;
        }
        // Changing under us all the time: report the owner without the other words.
        (held != 0).then(|| decode(held, 0, 0))
    }
}

/// The claim the three record words describe.
fn decode(held: u64, stamp: u64, pid_ns: u64) -> Claim {
    let owner = held & OWNER_MASK;
    if held & HELD == 0 || owner == 0 {
        return Claim {
            owner: None,
            pid: None,
            since: None,
            pid_ns: 0,
        };
    }
    let pid = (stamp & PID_MASK) as u32;
    let ms = stamp >> PID_BITS;
    // A word that is not a namespace's inode number (garbage) says nothing of the namespace,
    // and neither then can the pid beside it.
    let (pid, pid_ns) = match u32::try_from(pid_ns) {
        Ok(ns) => ((pid != 0).then_some(pid), ns),
        Err(_) => (None, 0),
    };
    Claim {
        owner: Some(owner),
        pid,
        since: (ms != 0).then(|| UNIX_EPOCH + Duration::from_millis(ms)),
        pid_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_reports_an_unreleased_record() {
        let words = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
        let r = Record::new(&words);
        assert!(r.read().is_none() && !r.is_claimed());
        assert!(!r.claim(42, stamp(pid_bits(1234)), 77), "fresh record");
        let c = r.read().expect("claimed");
        assert_eq!((c.owner, c.pid, c.pid_ns), (Some(42), Some(1234), 77));
        let since = c.since.expect("since");
        let age = SystemTime::now()
            .duration_since(since)
            .unwrap_or(Duration::ZERO);
        assert!(age < Duration::from_secs(60), "{age:?}");
        r.release();
        assert!(r.read().is_none());
        assert!(!r.claim(7, stamp(pid_bits(1)), 0), "released record");
        assert!(
            r.claim(8, stamp(pid_bits(1)), 0),
            "never released: the holder died"
        );
        assert_eq!(r.read().and_then(|c| c.owner), Some(8));
    }

    #[test]
    fn garbage_counts_as_a_dead_holder_without_an_owner() {
        let words = [
            AtomicU64::new(0x1234_5678_9abc_def0),
            AtomicU64::new(u64::MAX),
            AtomicU64::new(u64::MAX),
        ];
        let r = Record::new(&words);
        assert_eq!(
            r.read(),
            Some(Claim {
                owner: None,
                pid: None,
                since: None,
                pid_ns: 0,
            })
        );
        assert!(r.claim(1, stamp(pid_bits(1)), 0));
    }

    #[test]
    fn a_pid_too_large_for_the_record_is_unknown() {
        let words = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
        let r = Record::new(&words);
        r.claim(3, stamp(pid_bits(u32::MAX)), 0);
        assert_eq!(r.read().map(|c| c.pid), Some(None));
    }

    #[test]
    fn a_pid_is_shown_only_in_its_own_pid_namespace() {
        let words = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
        let r = Record::new(&words);
        r.claim(3, stamp(pid_bits(1)), 40);
        let c = r.read().expect("claimed");
        assert_eq!(c.pid_seen_from(40), Some(1), "the holder's own namespace");
        assert_eq!(c.pid_seen_from(41), None, "pid 1 here is another process");
        assert_eq!(c.pid_seen_from(0), Some(1), "a reader that cannot tell");
        r.claim(3, stamp(pid_bits(1)), 0);
        let c = r.read().expect("claimed");
        assert_eq!(c.pid_seen_from(41), Some(1), "a holder that could not tell");
        // A namespace word no holder writes: the pid beside it means nothing.
        words[2].store(u64::MAX, Ordering::Relaxed);
        let c = r.read().expect("claimed");
        assert_eq!((c.pid, c.pid_seen_from(0)), (None, None));
    }
}
