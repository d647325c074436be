//! Dating a hold off the fast path: the state word's transitions that the dating depends on (the
//! uncontended lock, the unlock, and a reader's first sighting of a hold), generic over the
//! atomic word so that the loom model (`sighting_model.rs`, `cargo test -p lock-mem --lib
//! model`) runs this code.
//!
//! The uncontended lock is one compare-exchange and reads no clock (on this project's
//! reference host a coarse clock read costs more than parking_lot's whole lock+unlock pair). A
//! hold is dated instead:
//! 1. by its taker when it was taken after waiting: the word then has the waiters bit, and the
//!    taker stores the time right after its compare-exchange;
//! 2. by the first reader that finds it undated ([`sight`]): the reader sets the waiters bit
//!    (so that the hold's unlock takes the contended path), records the time (a
//!    compare-exchange from 0), then reads the word again, and takes its time back unless the
//!    word is still the one it marked;
//! 3. the contended unlock ([`release`]) first takes the waiters bit off (`mine | WAITERS ->
//!    mine`), then clears the time, then frees the word (`mine -> FREE`), starting again if the
//!    bit came back meanwhile.
//!
//! Why no time outlives its hold: a reader's time survives only if its re-read finds the word it
//! marked, with the waiters bit. The unlock takes the bit off before it clears the time, and a
//! `SeqCst` fence sits between each side's two steps (the reader's record and re-read, the
//! unlock's unmarking and clearing), so either the re-read sees the unmarked word (the reader
//! takes its time back) or the unlock's clear comes after the reader's record (and erases it).
//! Without the unmarking, a reader could record between the clear and the free, re-read a word
//! still held, and leave its time to the next fast-path hold, which nothing would clear: the
//! model's planted bug (c), which is how lock-shm's own sighting still works (ARCHITECTURE). What
//! is left: a time can precede its hold by the reader's own delay between its clock read and its
//! re-read (a hold of the same owner taken meanwhile, and marked by a waiter).

use std::sync::atomic::Ordering;

/// Nobody holds the lock.
pub(crate) const FREE: u64 = 0;
/// Someone sleeps on the word, or a reader dated its hold: the unlock takes the slow path.
pub(crate) const WAITERS: u64 = 1;

/// The atomic word: `AtomicU64` in production, loom's in the model.
pub(crate) trait Word {
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, value: u64, order: Ordering);
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
    /// A `SeqCst` fence of the same world (std's, or loom's).
    fn fence();
}

/// The steps a planted bug leaves out (in the model); production takes every one.
pub(crate) trait Steps {
    /// (a) A sighting takes its time back unless the word is still the one it marked.
    const TAKE_BACK: bool = true;
    /// (b) A contended unlock clears the time.
    const CLEAR: bool = true;
    /// (c) A contended unlock takes the waiters bit off before it clears the time.
    const UNMARK: bool = true;
    /// (d) A contended unlock that took the waiters bit off and then lost the word to another
    /// thread of the owner (whose fast path saw no bit) says the sleepers need waking.
    const WAKE_WHEN_BEATEN: bool = true;
}

/// Every step.
pub(crate) struct Production;

impl Steps for Production {}

/// The uncontended lock: `FREE -> mine`, no clock.
#[inline(always)]
pub(crate) fn try_acquire<W: Word>(state: &W, mine: u64) -> bool {
    state
        .compare_exchange(FREE, mine, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
}

/// What an unlock did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Released {
    /// Freed the word, which had no waiters bit.
    Quiet,
    /// Freed the word, which had the waiters bit: sleepers may need a wake-up.
    Wake,
    /// The word was not this owner's (another thread of the owner unlocked first); `wake` when
    /// this unlock took the waiters bit off before it found out, so the other one, which saw no
    /// bit, woke nobody.
    NotOurs { wake: bool },
}

/// Unlocks a hold whose word is `mine` (the owner's bits) or `mine | WAITERS`.
#[inline(always)]
pub(crate) fn release<W: Word, S: Steps>(state: &W, since: &W, mine: u64) -> Released {
    let mut current = match state.compare_exchange(mine, FREE, Ordering::Release, Ordering::Relaxed)
    {
        Ok(_) => return Released::Quiet,
        Err(current) => current,
    };
    // Whether this unlock took a waiters bit off: its sleepers are then its to wake.
    let mut taken_off = false;
    // Rare: a sleeper or a reader set the waiters bit, and each sets it once per round here.
    loop {
        if current != mine | WAITERS {
            return Released::NotOurs {
                wake: taken_off && S::WAKE_WHEN_BEATEN,
            };
        }
        let unmarked = if S::UNMARK { mine } else { current };
        if unmarked != current {
            // Only this owner's own word is changed: a CAS, so that two threads of one owner
            // unlocking at once cannot erase a hold a woken waiter just took.
            if let Err(now) =
                state.compare_exchange(current, unmarked, Ordering::SeqCst, Ordering::Relaxed)
            {
                current = now;
                continue;
            }
            taken_off = true;
        }
        W::fence();
        if S::CLEAR {
            since.store(0, Ordering::SeqCst);
        }
        match state.compare_exchange(unmarked, FREE, Ordering::SeqCst, Ordering::Relaxed) {
            Ok(_) => return Released::Wake,
            // The waiters bit came back: a new sleeper, or a reader that may have dated us.
            Err(now) => current = now,
        }
    }
}

/// Dates a hold taken after waiting (rule 1); its word has the waiters bit.
pub(crate) fn date<W: Word>(since: &W, now: u64) {
    since.store(now, Ordering::SeqCst);
}

/// The holder's word and when its hold began (`0`: not known) as a reader sees it, dating the
/// hold with `now()` (never 0) if it has no time yet (rule 2); `None` when the lock is free.
pub(crate) fn sight<W: Word, S: Steps>(
    state: &W,
    since: &W,
    now: impl Fn() -> u64,
) -> Option<(u64, u64)> {
    // Each round follows a change of the word: bounded, so that a lock taken and released
    // without pause cannot keep a reader here; it is then shown without a time.
    let mut seen = state.load(Ordering::SeqCst);
    for _ in 0..64 {
        if seen == FREE {
            return None;
        }
        let recorded = since.load(Ordering::SeqCst);
        if recorded != 0 {
            return Some((seen, recorded));
        }
        let marked = seen | WAITERS;
        if seen != marked
            && let Err(current) =
                state.compare_exchange(seen, marked, Ordering::SeqCst, Ordering::SeqCst)
        {
            seen = current;
            continue;
        }
        let at = now();
        let (dated, ours) = match since.compare_exchange(0, at, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => (at, true),
            Err(theirs) => (theirs, false),
        };
        W::fence();
        let again = state.load(Ordering::SeqCst);
        if again == marked {
            return Some((seen, dated));
        }
        if ours && S::TAKE_BACK {
            let _ = since.compare_exchange(at, 0, Ordering::SeqCst, Ordering::Relaxed);
        }
        seen = again;
    }
    Some((seen, 0))
}

/// Implements [`Word`] for an atomic type with `AtomicU64`'s methods: std's, and loom's in the
/// model check.
macro_rules! impl_word {
    ($atomic:ty, $fence:path) => {
        impl $crate::sighting::Word for $atomic {
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
            fn fence() {
                $fence(::std::sync::atomic::Ordering::SeqCst);
            }
        }
    };
}
#[cfg(test)]
pub(crate) use impl_word;

impl_word!(std::sync::atomic::AtomicU64, std::sync::atomic::fence);
