//! A lock handle's turn under contention: how many holds it has had, and for how long, since
//! it last took the lock from a waiter's side (lockword.rs, "Handing off").
//!
//! A holder that releases and takes the lock again on the fast path keeps it for as long as it
//! likes: a woken waiter arrives microseconds later and finds it taken. So a waiter that finds the
//! lock taken asks for a hand-off (a bit in the lock's since word, observe.rs), and the holder
//! hands the lock over at the end of its turn: once it has unlocked [`HOLDS`] times since the
//! turn began, or, at a contended unlock, once the turn has lasted [`TIME_NS`]. A turn ends
//! after a number of holds rather than a time, so that two processes that take turns do as many
//! holds each, whichever CPU runs faster; the time bounds the wait behind a holder whose holds
//! are long.
//!
//! The count costs the uncontended unlock a load and a store of this handle's own memory; the
//! since word is read only when the count runs out, and then again every [`RECHECK`] holds while
//! nobody asks.
//!
//! Measured in the comparison bench (P processes taking one lock in a loop, glibc's robust mutex
//! in the same runs): fairness (fewest ÷ most pairs per process) 0.98 [0.95–0.99] / 0.99
//! [0.97–0.99] / 0.96 [0.95–0.97] at 2 / 4 / 8 processes in the report at d614fe5, against
//! glibc's 0.90 [0.77–0.99] / 0.94 [0.84–0.99] / 0.82 [0.76–0.84], at 13-17 ns a pair against
//! glibc's 34-54. Before, with a hand-off after a waiter had starved 10 µs: 0.89 [0.87–0.91] /
//! 0.93 [0.90–0.96] / 0.88 [0.82–0.93] (report at 3534e31), at 13-14 ns a pair. With the
//! releaser asking for the next turn and a won-back hold a short turn ([`Turn::hand_over`]; the
//! report at 3a8a41a, another host): 0.99 [0.99–1.00] / 0.94 [0.93–0.98] / 0.93 [0.91–0.94]
//! against glibc's 0.91 [0.85–0.91] / 0.89 [0.69–0.93] / 0.86 [0.79–0.87], at 6-7 ns a pair
//! against glibc's 29-37.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// How many holds a turn lasts while someone asks for the lock: about 50 µs of the benches'
/// holds (13 ns a pair). Measured as above with 256, 1,024 and 4,096: fewer holds a turn cost
/// more hand-offs (26-32 ns a pair with 256 at 2 processes, 18-22 with 1,024), for no fairer
/// split.
pub(crate) const HOLDS: u32 = 4096;
/// How often, in holds, a holder whose count ran out with nobody asking looks again.
pub(crate) const RECHECK: u32 = 64;
/// How long a turn lasts at most, checked at contended unlocks: the longest a waiter that asked
/// waits behind a holder that keeps taking the lock back, plus one hold.
pub(crate) const TIME_NS: u64 = 500_000;

/// One handle's turn. Advisory: threads that unlock through one handle at once may lose a count,
/// which only moves the end of a turn.
#[derive(Debug, Default)]
pub(crate) struct Turn {
    /// Unlocks since the turn began.
    holds: AtomicU32,
    /// When the turn began: CLOCK_MONOTONIC, in ns.
    began: AtomicU64,
}

impl Turn {
    /// Counts an unlock; `true` while the turn goes on, when the unlock may take the fast path.
    #[inline(always)]
    pub(crate) fn count(&self) -> bool {
        let holds = self.holds.load(Relaxed).saturating_add(1);
        self.holds.store(holds, Relaxed);
        holds < HOLDS
    }

    /// Whether the count ran out: the unlock looks for a request.
    pub(crate) fn counted(&self) -> bool {
        self.holds.load(Relaxed) >= HOLDS
    }

    /// Nobody asked when the count ran out: look again [`RECHECK`] holds on.
    pub(crate) fn defer(&self) {
        self.holds.store(HOLDS - RECHECK, Relaxed);
    }

    /// Begins a turn: the handle took the lock after waiting.
    pub(crate) fn begin(&self) {
        self.holds.store(0, Relaxed);
        self.began.store(monotonic_ns(), Relaxed);
    }

    /// Ends a turn by handing the lock over. A hold this handle takes before it next waits is
    /// one it won back by a race (the taker released the word between two of its holds, and this
    /// handle's `lock` found it free), so that hold's turn is short: it looks for a request
    /// [`RECHECK`] holds on, and the taker, which asks as soon as it finds the word taken, gets
    /// its turn back. A full turn there gave the winner of each such race a turn more than its
    /// rival: a fifth of the hand-offs at 2 processes were won back so (counted in a throwaway
    /// build).
    pub(crate) fn hand_over(&self) {
        self.defer();
        self.began.store(monotonic_ns(), Relaxed);
    }

    /// Whether the turn has lasted [`TIME_NS`].
    pub(crate) fn expired(&self) -> bool {
        monotonic_ns().saturating_sub(self.began.load(Relaxed)) >= TIME_NS
    }
}

/// CLOCK_MONOTONIC in ns.
fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(now.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(now.tv_nsec).unwrap_or(0))
}
