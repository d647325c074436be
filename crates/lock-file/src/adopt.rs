//! Waits that arm their deadlock check only once they last: a blocked `lock()` registers here
//! and calls the blocking `flock` at once, and the manager's *scan*, a job on the process's
//! timer thread, *adopts* every wait it finds still blocked: it arms that wait's deadlock check
//! on the waiter's behalf (`wake.rs`), due when the waiter would have armed it.
//!
//! Arming a timer for every contended `lock()` (a clock read, the timer table's mutex twice, a
//! job) cost about a tenth of a 2-process pair, while nearly every such wait ends in
//! microseconds, long before its first check (`file-contended-2proc`, one sitting: 1.22-1.25 ×
//! a bare `flock` pair when each wait armed its check, 1.15-1.19 adopted). Registering costs a
//! few stores and one read-modify-write of a word of this manager's.
//!
//! # The protocol
//!
//! One *cell* per published wait (indexed like the waiter file's entries, so a wait owns its
//! cell while it is published), and one *scan word* per manager.
//!
//! Cell states: `IDLE`; `BLOCKED` (a wait is registered: its thread and start are written
//! before this release store); `ADOPTING` (the scan is arming the wait's check); `ADOPTED` (the
//! check is armed: its ticket is written before this release store).
//!
//! - The waiter, to block: fills its cell and stores `BLOCKED`, then sets `SEEN | ARMED` on the
//!   scan word with one `fetch_or`; when `ARMED` was clear, no scan is running and the waiter
//!   starts one. To end its wait, it compare-exchanges `BLOCKED` → `IDLE`; when that fails, the
//!   scan adopted it (or is adopting it: the waiter yields until `ADOPTED`), and the waiter
//!   takes the ticket, stores `IDLE` and disarms the timer.
//! - The scan, on each run: clears `SEEN` (`fetch_and`), adopts every `BLOCKED` cell (`BLOCKED`
//!   → `ADOPTING` by compare-exchange, so it never adopts a wait that ended), then stops only if
//!   `ARMED` → 0 succeeds, which fails when a wait registered since the run began: that wait's
//!   cell may have been read before it was filled, so the scan runs again.
//!
//! So every wait that stays blocked is adopted by a run that begins after it registered
//! (property A1), and no wait is adopted after its end: its thread never leaves `lock()` with a
//! timer armed for it (A2), which is what lets the timer thread signal it (`wake.rs`, invariant
//! 1). The scan word makes the hand-over between the last run and the next waiter a sequence of
//! read-modify-writes of one word, which every thread sees in one order: a waiter either finds
//! `ARMED` set by a run that has yet to try to stop (and then fails its attempt) or starts the
//! next run itself.
//!
//! The protocol is generic over [`Word`] so that `adopt_model.rs` runs this very code under
//! loom (`cargo test -p lock-file --lib model`), with two planted bugs it must catch
//! ([`AdoptSys::SEEN_AFTER_SCAN`], [`AdoptSys::PLAIN_END`]).

use std::sync::atomic::{AtomicU64, Ordering};

/// No wait in the cell.
const IDLE: u64 = 0;
/// A registered wait, not adopted.
const BLOCKED: u64 = 1;
/// The scan is arming the wait's check.
const ADOPTING: u64 = 2;
/// The wait's check is armed; the cell's ticket names it.
const ADOPTED: u64 = 3;

/// Scan word bit: a scan is scheduled or running.
const ARMED: u64 = 1;
/// Scan word bit: a wait registered since the current run began.
const SEEN: u64 = 2;

/// The atomic word the protocol is made of: `AtomicU64` in production, loom's in the model.
pub(crate) trait Word: Default {
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, value: u64, order: Ordering);
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
    fn fetch_or(&self, bits: u64, order: Ordering) -> u64;
    fn fetch_and(&self, bits: u64, order: Ordering) -> u64;
}

/// Implements [`Word`] for an atomic type with `AtomicU64`'s methods: std's, and loom's in the
/// model check.
macro_rules! impl_word {
    ($atomic:ty) => {
        impl $crate::adopt::Word for $atomic {
            #[inline(always)]
            fn load(&self, order: ::std::sync::atomic::Ordering) -> u64 {
                <$atomic>::load(self, order)
            }
            #[inline(always)]
            fn store(&self, value: u64, order: ::std::sync::atomic::Ordering) {
                <$atomic>::store(self, value, order);
            }
            #[inline(always)]
            fn compare_exchange(
                &self,
                current: u64,
                new: u64,
                success: ::std::sync::atomic::Ordering,
                failure: ::std::sync::atomic::Ordering,
            ) -> Result<u64, u64> {
                <$atomic>::compare_exchange(self, current, new, success, failure)
            }
            #[inline(always)]
            fn fetch_or(&self, bits: u64, order: ::std::sync::atomic::Ordering) -> u64 {
                <$atomic>::fetch_or(self, bits, order)
            }
            #[inline(always)]
            fn fetch_and(&self, bits: u64, order: ::std::sync::atomic::Ordering) -> u64 {
                <$atomic>::fetch_and(self, bits, order)
            }
        }
    };
}
#[cfg(test)]
pub(crate) use impl_word;

impl_word!(AtomicU64);

/// What the protocol runs on: its word, a way to let an adoption in progress finish, and two
/// planted bugs that only the model check switches on.
pub(crate) trait AdoptSys {
    /// The atomic word.
    type Word: Word;

    /// Planted bug (a), set only by the model check: the scan clears `SEEN` after reading the
    /// cells instead of before, so a wait that registers in between is neither read nor keeps
    /// the scan going.
    const SEEN_AFTER_SCAN: bool = false;
    /// Planted bug (b), set only by the model check: a wait ends by storing `IDLE` without
    /// looking, so an adoption in progress arms a timer for a thread that has left.
    const PLAIN_END: bool = false;

    /// Called while the scan holds the waiter's cell in `ADOPTING`.
    fn pause();
}

/// Production: `AtomicU64`, and a yield while an adoption finishes (it takes the timer table's
/// mutex once).
#[derive(Debug)]
pub(crate) struct Std;

impl AdoptSys for Std {
    type Word = AtomicU64;

    fn pause() {
        std::thread::yield_now();
    }
}

/// One wait's cell.
#[derive(Debug, Default)]
struct Cell<W> {
    state: W,
    /// The waiting thread (a `pthread_t`), written before `BLOCKED`.
    thread: W,
    /// When the wait began (coarse monotonic ms), written before `BLOCKED`.
    start: W,
    /// The adopted check's timer ticket, written before `ADOPTED`.
    ticket: W,
}

/// A registered wait the scan found blocked, to adopt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Blocked {
    /// The waiting thread.
    pub(crate) thread: u64,
    /// When the wait began (the waiter's clock, coarse monotonic ms).
    pub(crate) start: u64,
}

/// A manager's waits and its scan word, on the system `S`.
#[derive(Debug)]
pub(crate) struct Waits<S: AdoptSys = Std> {
    cells: Box<[Cell<S::Word>]>,
    scan: S::Word,
}

impl<S: AdoptSys> Waits<S> {
    /// `cells` idle cells and no scan.
    pub(crate) fn new(cells: usize) -> Waits<S> {
        Waits {
            cells: (0..cells).map(|_| Cell::default()).collect(),
            scan: S::Word::default(),
        }
    }

    /// Registers the wait of `thread` in cell `index` (idle, and this wait's alone until it
    /// ends), begun at `start`. Returns whether the caller must start a scan (none is running).
    ///
    /// # Panics
    ///
    /// On an index beyond the cells (a caller's bug: indexes are the waiter file's entries).
    #[inline]
    pub(crate) fn register(&self, index: usize, wait: Blocked) -> bool {
        let cell = &self.cells[index];
        cell.thread.store(wait.thread, Ordering::Relaxed);
        cell.start.store(wait.start, Ordering::Relaxed);
        cell.state.store(BLOCKED, Ordering::Release);
        self.scan.fetch_or(SEEN | ARMED, Ordering::AcqRel) & ARMED == 0
    }

    /// Ends the wait in cell `index`: `None` if it was not adopted, else the ticket of the timer
    /// the scan armed for it, which the caller must disarm.
    #[inline]
    pub(crate) fn end(&self, index: usize) -> Option<u64> {
        let cell = &self.cells[index];
        if S::PLAIN_END {
            cell.state.store(IDLE, Ordering::Release);
            return None;
        }
        loop {
            match cell
                .state
                .compare_exchange(BLOCKED, IDLE, Ordering::Relaxed, Ordering::Acquire)
            {
                Ok(_) => return None,
                Err(ADOPTED) => {
                    let ticket = cell.ticket.load(Ordering::Relaxed);
                    cell.state.store(IDLE, Ordering::Relaxed);
                    return Some(ticket);
                }
                // ADOPTING: the scan is arming the timer; it takes a moment.
                Err(_) => S::pause(),
            }
        }
    }

    /// One run of the scan: adopts every blocked wait through `adopt`, which arms the wait's
    /// check and returns its ticket (or `None` to leave the wait alone: detection was turned
    /// off). Returns whether to run again (a wait registered during this run), else the scan
    /// has stopped and the next wait starts it anew.
    pub(crate) fn scan(&self, mut adopt: impl FnMut(Blocked) -> Option<u64>) -> bool {
        if !S::SEEN_AFTER_SCAN {
            self.scan.fetch_and(!SEEN, Ordering::AcqRel);
        }
        for cell in &self.cells[..] {
            if cell.state.load(Ordering::Relaxed) != BLOCKED
                || cell
                    .state
                    .compare_exchange(BLOCKED, ADOPTING, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            let wait = Blocked {
                thread: cell.thread.load(Ordering::Relaxed),
                start: cell.start.load(Ordering::Relaxed),
            };
            match adopt(wait) {
                Some(ticket) => {
                    cell.ticket.store(ticket, Ordering::Relaxed);
                    cell.state.store(ADOPTED, Ordering::Release);
                }
                None => cell.state.store(BLOCKED, Ordering::Release),
            }
        }
        if S::SEEN_AFTER_SCAN {
            self.scan.fetch_and(!SEEN, Ordering::AcqRel);
        }
        self.scan
            .compare_exchange(ARMED, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    }
}

/// Now on the coarse monotonic clock, in ms: a wait's start (a few ns through the vDSO).
pub(crate) fn now_ms() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000).saturating_add(nanos / 1_000_000)
}

/// A `pthread_t` as a cell keeps it (the same width on 64-bit Linux, narrower on 32-bit).
#[allow(clippy::unnecessary_cast)]
pub(crate) fn thread_bits(thread: libc::pthread_t) -> u64 {
    thread as u64
}

/// The `pthread_t` that [`thread_bits`] gave.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn thread_of(bits: u64) -> libc::pthread_t {
    bits as libc::pthread_t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_wait_is_adopted_once_and_its_ticket_handed_back() {
        let waits = Waits::<Std>::new(4);
        let first = Blocked {
            thread: 7,
            start: 100,
        };
        let second = Blocked {
            thread: 8,
            start: 5,
        };
        assert!(waits.register(2, first), "the first wait starts the scan");
        assert!(!waits.register(3, second), "a scan is due already");
        let mut adopted = Vec::new();
        let again = waits.scan(|w| {
            adopted.push(w);
            Some(40 + w.thread)
        });
        assert!(!again, "no wait registered during the run: the scan stops");
        assert_eq!(adopted, vec![first, second]);
        assert_eq!(waits.end(3), Some(48));
        assert_eq!(waits.end(2), Some(47));
        // A wait that ends before the scan runs is not adopted.
        assert!(
            waits.register(2, first),
            "the scan had stopped: start it again"
        );
        assert_eq!(waits.end(2), None);
        assert!(!waits.scan(|_| panic!("the wait ended")));
    }

    #[test]
    fn a_wait_registered_during_a_run_keeps_the_scan_going() {
        let waits = Waits::<Std>::new(2);
        assert!(waits.register(
            1,
            Blocked {
                thread: 1,
                start: 0
            }
        ));
        let again = waits.scan(|w| {
            // A wait registers in a cell the run has read already.
            assert_eq!(w.thread, 1);
            assert!(!waits.register(
                0,
                Blocked {
                    thread: 2,
                    start: 3
                }
            ));
            Some(1)
        });
        assert!(again, "run again: the new wait was missed");
        let mut adopted = Vec::new();
        assert!(!waits.scan(|w| {
            adopted.push(w.thread);
            Some(2)
        }));
        assert_eq!(adopted, vec![2]);
    }

    #[test]
    fn a_wait_left_alone_stays_blocked() {
        let waits = Waits::<Std>::new(1);
        waits.register(
            0,
            Blocked {
                thread: 1,
                start: 0,
            },
        );
        assert!(!waits.scan(|_| None));
        assert_eq!(waits.end(0), None, "never adopted");
    }
}
