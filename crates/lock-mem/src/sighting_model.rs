//! Model check of the dating protocol (`sighting.rs`) with loom: the same generic code that
//! production runs, over loom's atomic word and fence. Run it with
//! `cargo test -p lock-mem --lib model`.
//!
//! The property: no time outlives its hold. A holder takes the lock on the fast path, unlocks,
//! and takes it again (the second hold's start is a tick of a shared logical clock), while a
//! reader dates whatever hold it finds (its time is a tick of the same clock). Afterwards the
//! recorded time, if any, is not older than the second hold.
//!
//! Planted bugs, each of which loom must catch: (a) a sighting that keeps its time although the
//! word changed, (b) a contended unlock that does not clear the time, and (c) one that clears it
//! without first taking the waiters bit off, so a reader can record between the clear and the
//! free.
//!
//! A second property: two threads of one owner unlock its one hold, which has the waiters bit
//! (someone sleeps): exactly one succeeds, and at least one says the sleepers need waking. The
//! planted bug (d) is an unlock that took the bit off, lost the word to the other thread's fast
//! path (which saw no bit), and woke nobody: the sleeper would sleep on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;

use loom::sync::Arc;
use loom::sync::atomic::AtomicU64;
use loom::thread;

use crate::sighting::{self, Production, Released, Steps};

crate::sighting::impl_word!(AtomicU64, loom::sync::atomic::fence);

/// Preemptions explored per execution.
const PREEMPTIONS: usize = 3;

/// Planted bug (a).
struct NoTakeBack;

impl Steps for NoTakeBack {
    const TAKE_BACK: bool = false;
}

/// Planted bug (b).
struct NoClear;

impl Steps for NoClear {
    const CLEAR: bool = false;
}

/// Planted bug (c).
struct NoUnmark;

impl Steps for NoUnmark {
    const UNMARK: bool = false;
}

/// The holder's owner bits.
const MINE: u64 = 7 << 1;

fn scenario<S: Steps>() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(PREEMPTIONS);
    builder.check(|| {
        let state = Arc::new(AtomicU64::new(sighting::FREE));
        let since = Arc::new(AtomicU64::new(0));
        let clock = Arc::new(AtomicU64::new(0));
        let reader = {
            let (state, since, clock) = (state.clone(), since.clone(), clock.clone());
            thread::spawn(move || {
                let _ = sighting::sight::<_, S>(&*state, &*since, || {
                    clock.fetch_add(1, Ordering::SeqCst) + 1
                });
            })
        };
        assert!(sighting::try_acquire(&*state, MINE));
        let first = sighting::release::<_, S>(&*state, &*since, MINE);
        assert!(!matches!(first, Released::NotOurs { .. }), "first unlock");
        let second = clock.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(sighting::try_acquire(&*state, MINE));
        reader.join().unwrap();
        let left = since.load(Ordering::SeqCst);
        assert!(
            left == 0 || left >= second,
            "a time outlived its hold: {left} recorded, the hold began at {second}"
        );
    });
}

/// What a scenario panicked with ("" when it passed).
fn caught<S: Steps>() -> String {
    lock_conformance::panic_message(&catch_unwind(AssertUnwindSafe(scenario::<S>)))
}

/// No time outlives its hold, in every interleaving of the holder and the reader.
#[test]
fn model_no_time_outlives_its_hold() {
    scenario::<Production>();
}

/// Planted bug (a): a reader that keeps the time it recorded for a hold that ended meanwhile.
#[test]
fn model_catches_a_sighting_that_keeps_a_stale_time() {
    let message = caught::<NoTakeBack>();
    assert!(message.contains("outlived its hold"), "{message:?}");
}

/// Planted bug (b): an unlock that does not clear the time leaves it to the next hold.
#[test]
fn model_catches_an_unlock_that_keeps_the_time() {
    let message = caught::<NoClear>();
    assert!(message.contains("outlived its hold"), "{message:?}");
}

/// Planted bug (c): an unlock that clears the time while the word still looks marked lets a
/// reader record between the clear and the free.
#[test]
fn model_catches_a_clear_before_the_unmarking() {
    let message = caught::<NoUnmark>();
    assert!(message.contains("outlived its hold"), "{message:?}");
}

/// Planted bug (d).
struct NoWakeWhenBeaten;

impl Steps for NoWakeWhenBeaten {
    const WAKE_WHEN_BEATEN: bool = false;
}

/// Two threads of one owner unlock its one hold, whose word has the waiters bit.
fn two_unlocks<S: Steps>() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(PREEMPTIONS);
    builder.check(|| {
        let state = Arc::new(AtomicU64::new(MINE | sighting::WAITERS));
        let since = Arc::new(AtomicU64::new(0));
        let other = {
            let (state, since) = (state.clone(), since.clone());
            thread::spawn(move || sighting::release::<_, S>(&*state, &*since, MINE))
        };
        let mine = sighting::release::<_, S>(&*state, &*since, MINE);
        let theirs = other.join().unwrap();
        let ours = |r: Released| !matches!(r, Released::NotOurs { .. });
        let wakes = |r: Released| matches!(r, Released::Wake | Released::NotOurs { wake: true });
        assert!(
            ours(mine) ^ ours(theirs),
            "two unlocks of one hold: {mine:?} and {theirs:?}"
        );
        assert!(
            wakes(mine) || wakes(theirs),
            "nobody woke the sleepers: {mine:?} and {theirs:?}"
        );
        assert_eq!(state.load(Ordering::SeqCst), sighting::FREE);
    });
}

/// Exactly one of two unlocks of one hold succeeds, and the sleepers are woken.
#[test]
fn model_two_unlocks_of_one_hold_wake_the_sleepers() {
    two_unlocks::<Production>();
}

/// Planted bug (d): an unlock that took the waiters bit off and lost the word does not wake.
#[test]
fn model_catches_an_unlock_beaten_to_the_word_that_wakes_nobody() {
    let message = lock_conformance::panic_message(&catch_unwind(AssertUnwindSafe(
        two_unlocks::<NoWakeWhenBeaten>,
    )));
    assert!(message.contains("nobody woke the sleepers"), "{message:?}");
}
