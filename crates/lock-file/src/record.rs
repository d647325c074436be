//! Owner records: how the next acquirer learns that the previous holder died holding a lock.
//!
//! `flock(2)` locks vanish with their holder, so the kernel alone cannot tell a clean release
//! from a death. Each lock therefore has a two-word record in the mapped table:
//!
//! ```text
//! word 0  HELD (bit 63) | pid (bits 0..32)    0 when released cleanly
//! word 1  acquisition time, ns since the Unix epoch (meaningful only while word 0 is held)
//! ```
//!
//! The holder writes the record right after `flock` succeeds and clears word 0 right before it
//! unlocks. An acquirer that finds word 0 non-zero knows the previous holder never cleared it:
//! it died holding the lock (or unlocked through a dropped manager), so the acquirer reports
//! `OwnerDied`. Both windows are safe: dying after `flock` but before the record is written means
//! `lock()` never returned, so nothing was protected yet and `Clean` is right; dying after the
//! clear but before `flock(LOCK_UN)` gives a spurious but harmless `OwnerDied`.
//! Any other non-zero value (garbage) is also reported as `OwnerDied`: the caller is told to
//! check its data, and the record is overwritten.
//!
//! The records are plain memory in a shared mapping, so keeping them costs two stores and a load
//! per lock/unlock pair, not the three `pread`/`pwrite` calls a marker in the lock file would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lock_api::Holder;

use crate::table::{load, store};

/// Word 0 bit: the holder has not released the lock.
const HELD: u64 = 1 << 63;
/// Word 0 bits holding the holder's pid.
const PID_MASK: u64 = u32::MAX as u64;

/// The record of one lock, borrowed from the table (or a test's vector).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    held: &'a AtomicU64,
    since: &'a AtomicU64,
}

impl<'a> Record<'a> {
    /// The record in `words` (two words).
    #[inline]
    pub(crate) fn new(words: &'a [AtomicU64]) -> Self {
        Record {
            held: &words[0],
            since: &words[1],
        }
    }

    /// Claims the record for `pid`, just after `flock` succeeded; returns whether the previous
    /// holder left it claimed (died holding the lock).
    #[inline]
    pub(crate) fn claim(&self, pid: u32) -> bool {
        let previous = load(self.held, Ordering::Acquire);
        store(self.since, now_nanos(), Ordering::Relaxed);
        store(self.held, HELD | u64::from(pid), Ordering::Release);
        previous != 0
    }

    /// Clears the record, just before `flock(LOCK_UN)`.
    #[inline]
    pub(crate) fn release(&self) {
        store(self.held, 0, Ordering::Release);
    }

    /// Puts back a claim after `flock(LOCK_UN)` failed and the lock is still held.
    pub(crate) fn reclaim(&self, pid: u32) {
        store(self.held, HELD | u64::from(pid), Ordering::Release);
    }

    /// The holder this record names, or `None` when it says the lock was released.
    ///
    /// A claimed record may be stale (its holder died): the caller checks with a probe.
    pub(crate) fn holder(&self) -> Option<Holder> {
        let held = load(self.held, Ordering::Acquire);
        if held == 0 {
            return None;
        }
        let since = load(self.since, Ordering::Relaxed);
        let mut holder = Holder::default();
        if held & !(HELD | PID_MASK) == 0 && held & HELD != 0 {
            holder.pid = Some((held & PID_MASK) as u32);
            holder.since = UNIX_EPOCH.checked_add(Duration::from_nanos(since));
        }
        Some(holder)
    }
}

/// Now in ns since the Unix epoch (0 for a clock before 1970).
#[inline]
fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_reports_an_unreleased_record() {
        let words = [AtomicU64::new(0), AtomicU64::new(0)];
        let r = Record::new(&words);
        assert!(r.holder().is_none());
        assert!(!r.claim(42), "fresh record");
        let h = r.holder().expect("claimed");
        assert_eq!(h.pid, Some(42));
        assert!(h.since.is_some());
        r.release();
        assert!(r.holder().is_none());
        assert!(!r.claim(7), "released record");
        assert!(r.claim(8), "never released: the holder died");
    }

    #[test]
    fn garbage_counts_as_a_dead_holder_without_a_pid() {
        let words = [
            AtomicU64::new(0x1234_5678_9abc_def0),
            AtomicU64::new(u64::MAX),
        ];
        let r = Record::new(&words);
        assert_eq!(r.holder().map(|h| h.pid), Some(None));
        assert!(r.claim(1));
    }
}
