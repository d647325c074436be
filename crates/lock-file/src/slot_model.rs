//! Model checks of the phase word (`slot.rs`) with loom: the same generic code that production
//! runs, over loom's atomic and a modelled futex.
//!
//! Run them with `cargo test -p lock-file --lib model` (with the timer protocol's checks of
//! `model.rs`). Each check explores every interleaving of two threads of one owner, with no
//! bound on preemptions.
//!
//! The properties:
//! - S1, exclusion: at most one thread of the owner is between a lock and its unlock, whichever
//!   way it took the lock (at the first try, `TAKING` → `HELD`, or after a wait, `WAITING` →
//!   `HELD`).
//! - S2, no lost wake-up: a thread that waits for the slot to become idle is woken when it does.
//!   The modelled futex has no timeout, so a waiter that is never woken shows as loom's
//!   deadlock.
//! - S3, one release per hold: of two unlocks racing for one hold (one from a thread that does
//!   not hold it, which the API allows: ownership is the manager's), exactly one releases it and
//!   the other is told the lock is not held.
//!
//! What is modelled: the `flock` calls are left out (this owner's description never conflicts
//! with itself, and another owner only makes a wait longer), so a first try always takes the
//! lock, and a thread that waits for another owner yields where it would block. The word is a
//! value under a loom mutex (see [`ModelSys`] for why not loom's atomic). The futex is a loom
//! mutex and condition variable: a sleep looks at the word under the mutex and waits for a
//! wake-up, a wake-up takes the mutex and notifies all; since the word is changed before the
//! wake-up is sent, a sleeper either sees the change or is notified.
//!
//! Planted bugs, set through [`PhaseSys`]'s constants and caught as deadlocks (in a child process
//! of the test binary, since loom aborts on one): (a) a waiter that also sleeps in a short phase,
//! whose `SLEEPERS` bit the plain store ending the phase then wipes, and (b) `WAITING` → `HELD` by
//! a plain store, which drops the bit.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use loom::sync::atomic::{AtomicU64, AtomicUsize};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use crate::bias::BiasSys;
use crate::slot::{Phase, PhaseSys};

/// Preemptions explored per execution: no bound; the models are small enough to explore every
/// interleaving in about ten seconds.
const PREEMPTIONS: Option<usize> = None;

/// The protocol as production runs it.
const REAL: u8 = 0;
/// Planted bug (a): sleeping in a short phase.
const PLANT_SLEEP_IN_SHORT_PHASE: u8 = 1;
/// Planted bug (b): a plain store from `WAITING` to `HELD`.
const PLANT_PLAIN_HAND_OVER: u8 = 2;
/// Planted bug (c): a revocation of the bias without the barrier.
const PLANT_NO_BARRIER: u8 = 3;

/// The keys of the model's threads (`bias::key` in production).
const MAIN: u64 = 1;
const OTHER: u64 = 2;

/// The modelled word: a value under a loom mutex, and a futex made of a mutex and a condition
/// variable.
///
/// The word is one memory location, and on one location every thread sees the same order of
/// writes, each read-modify-write reading the last write before its own (coherence), whatever
/// the orderings: so a value under a mutex, every operation atomic and in one order, is exactly
/// what the protocol gets. Loom's atomics would add nothing true here and one thing false: loom
/// 0.7 lets a plain store land between the read and the write of another thread's
/// read-modify-write (tokio-rs/loom#254), which the hardware never does, and which planted bug
/// (b) runs into.
struct ModelSys<const P: u8> {
    word: Mutex<u32>,
    futex: Mutex<()>,
    woken: Condvar,
}

impl<const P: u8> Default for ModelSys<P> {
    fn default() -> Self {
        ModelSys {
            word: Mutex::new(0),
            futex: Mutex::new(()),
            woken: Condvar::new(),
        }
    }
}

impl<const P: u8> ModelSys<P> {
    /// Applies `f` to the word atomically; returns what it returns.
    fn with<T>(&self, f: impl FnOnce(&mut u32) -> T) -> T {
        f(&mut self.word.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The bias's words are loom's atomics, whose weak behaviours are the point: the owner's store
/// of `busy` and load of `state` may each miss the revoker's, unless both sides fence.
/// `membarrier` makes the owner execute a full barrier at some point of its program while the
/// revoker's call runs; loom cannot make one thread fence for another, so the owner's fence is
/// written where its compiler fence is, as `fence(SeqCst)`, and the revoker's barrier is
/// another: two `SeqCst` fences forbid exactly the outcome the barrier forbids (both loads
/// missing the other side's store), which is what the protocol relies on.
struct ModelBias<const P: u8>;

impl<const P: u8> BiasSys for ModelBias<P> {
    type Word = AtomicU64;

    const NO_BARRIER: bool = P == PLANT_NO_BARRIER;

    fn owner_fence() {
        loom::sync::atomic::fence(SeqCst);
    }

    fn barrier() -> bool {
        loom::sync::atomic::fence(SeqCst);
        true
    }

    fn pause(_round: u32) {
        thread::yield_now();
    }
}

impl<const P: u8> PhaseSys for ModelSys<P> {
    type Bias = ModelBias<P>;

    const SLEEP_IN_SHORT_PHASE: bool = P == PLANT_SLEEP_IN_SHORT_PHASE;
    const PLAIN_HAND_OVER: bool = P == PLANT_PLAIN_HAND_OVER;

    fn load(&self) -> u32 {
        self.with(|w| *w)
    }

    fn compare_exchange(&self, current: u32, new: u32) -> Result<u32, u32> {
        self.with(|w| {
            if *w == current {
                *w = new;
                Ok(current)
            } else {
                Err(*w)
            }
        })
    }

    fn store(&self, value: u32) {
        self.with(|w| *w = value);
    }

    fn fetch_xor(&self, bits: u32) -> u32 {
        self.with(|w| std::mem::replace(w, *w ^ bits))
    }

    fn swap(&self, value: u32) -> u32 {
        self.with(|w| std::mem::replace(w, value))
    }

    fn sleep(&self, expected: u32, timeout: Option<Duration>) {
        assert!(timeout.is_none(), "the model has no timeouts");
        let guard = self.futex.lock().unwrap_or_else(|e| e.into_inner());
        if self.load() != expected {
            return;
        }
        drop(self.woken.wait(guard).unwrap_or_else(|e| e.into_inner()));
    }

    fn wake_all(&self) {
        let _guard = self.futex.lock().unwrap_or_else(|e| e.into_inner());
        self.woken.notify_all();
    }

    fn pause(&self, _round: u32) {
        thread::yield_now();
    }
}

/// One owner's slot, and how many of its threads are between a lock and its unlock.
struct Owner<const P: u8> {
    phase: Phase<ModelSys<P>>,
    inside: AtomicUsize,
}

impl<const P: u8> Owner<P> {
    /// A slot biased to its first thread (`bias.rs`) if `biased`, else shared from the start.
    fn new(biased: bool) -> Self {
        Owner {
            phase: Phase::new(ModelSys::default(), biased),
            inside: AtomicUsize::new(0),
        }
    }

    /// `lock()`'s moves by the thread `me` with a first try that always takes the lock. The hold
    /// begins before the phase says `HELD`: from then on any thread of the owner may release it.
    fn lock(&self, me: u64) {
        while !self.phase.try_begin(me) {
            assert!(self.phase.wait_idle(None), "no deadline, no timeout");
        }
        self.enter();
        self.phase.take();
    }

    /// `lock()`'s moves when the first try finds another owner holding the lock: `WAITING`, a
    /// wait (a yield here), then the hand-over to `HELD`.
    fn lock_after_waiting(&self, me: u64) {
        while !self.phase.try_begin(me) {
            assert!(self.phase.wait_idle(None), "no deadline, no timeout");
        }
        self.phase.wait_for_others();
        thread::yield_now();
        self.enter();
        self.phase.waited(true);
    }

    /// `unlock()`'s moves; false when the owner does not hold the lock (`NotHeld`).
    fn unlock(&self, me: u64) -> bool {
        let Some(release) = self.phase.begin_release(me) else {
            return false;
        };
        self.leave();
        self.phase.released(release);
        true
    }

    /// S1: nobody else of the owner is inside.
    fn enter(&self) {
        assert_eq!(
            self.inside.fetch_add(1, SeqCst),
            0,
            "two threads hold the lock"
        );
    }

    fn leave(&self) {
        assert_eq!(
            self.inside.fetch_sub(1, SeqCst),
            1,
            "a release without a hold"
        );
    }
}

/// Runs `scenario` on a fresh owner in every interleaving, its slot biased if `biased`.
fn check<const P: u8>(biased: bool, scenario: impl Fn(Arc<Owner<P>>) + Sync + Send + 'static) {
    check_bounded(biased, PREEMPTIONS, scenario);
}

/// [`check`] with at most `preemptions` preemptions per execution.
fn check_bounded<const P: u8>(
    biased: bool,
    preemptions: Option<usize>,
    scenario: impl Fn(Arc<Owner<P>>) + Sync + Send + 'static,
) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = preemptions;
    builder.check(move || scenario(Arc::new(Owner::new(biased))));
}

fn join<T>(t: thread::JoinHandle<T>) -> T {
    t.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Another thread of the owner that locks and unlocks once.
fn lock_once_on_a_thread<const P: u8>(owner: &Arc<Owner<P>>) -> thread::JoinHandle<()> {
    let owner = owner.clone();
    thread::spawn(move || {
        owner.lock(OTHER);
        assert!(owner.unlock(OTHER));
    })
}

/// Two threads lock and unlock, one of them twice, so that a thread waits through each phase of
/// the other's: `TAKING`, `HELD` and `RELEASING`.
fn take_turns<const P: u8>(owner: Arc<Owner<P>>) {
    let other = lock_once_on_a_thread(&owner);
    for _ in 0..2 {
        owner.lock(MAIN);
        assert!(owner.unlock(MAIN));
    }
    join(other);
    assert!(owner.phase.is_idle());
}

/// S1, S2: threads taking turns at the first try.
#[test]
fn model_slot_threads_take_turns() {
    check::<REAL>(false, take_turns);
}

/// One thread takes the lock after waiting for another owner while another thread of its owner
/// waits for it, then the other way round.
fn hand_over<const P: u8>(owner: Arc<Owner<P>>) {
    let other = lock_once_on_a_thread(&owner);
    owner.lock_after_waiting(MAIN);
    assert!(owner.unlock(MAIN));
    join(other);
    assert!(owner.phase.is_idle());
}

/// S1, S2: a hold taken after a wait keeps the sleepers it had while waiting.
#[test]
fn model_slot_a_wait_hands_over_to_the_hold() {
    check::<REAL>(false, hand_over);
}

/// A thread that does not hold the lock unlocks while the main thread locks and unlocks:
/// exactly one of the two unlocks releases the hold, and the slot ends idle.
fn racing_unlocks<const P: u8>(owner: &Arc<Owner<P>>) {
    let stranger = {
        let owner = owner.clone();
        thread::spawn(move || owner.unlock(OTHER))
    };
    owner.lock(MAIN);
    let mine = owner.unlock(MAIN);
    let theirs = join(stranger);
    assert!(
        mine ^ theirs,
        "unlocks that released: mine {mine}, theirs {theirs}"
    );
    assert!(owner.phase.is_idle());
}

/// S3: one release per hold, the unlocks racing.
#[test]
fn model_slot_one_release_per_hold() {
    check::<REAL>(false, |owner| racing_unlocks(&owner));
}

/// Set in the child process of [`model_slot_catches_a_sleep_in_a_short_phase`].
const SHORT_PHASE_ENV: &str = "LOCK_FILE_MODEL_PLANTED_SHORT_PHASE_SLEEP";
/// Set in the child process of [`model_slot_catches_a_plain_hand_over`].
const HAND_OVER_ENV: &str = "LOCK_FILE_MODEL_PLANTED_PLAIN_HAND_OVER";

/// Planted bug (a): a waiter that sleeps while the slot is `RELEASING` has its `SLEEPERS` bit
/// wiped by the release's plain store and is never woken. Loom aborts the process on a deadlock,
/// so the planted model runs in a child process: this test binary, filtered to the child test.
#[test]
fn model_slot_catches_a_sleep_in_a_short_phase() {
    lock_conformance::child::assert_caught_as_deadlock(
        "slot_model::model_slot_planted_short_phase_child",
        SHORT_PHASE_ENV,
        "a waiter sleeping in a short phase",
    );
}

/// The planted bug of [`model_slot_catches_a_sleep_in_a_short_phase`]; it only runs in that
/// test's child process and passes trivially otherwise.
#[test]
fn model_slot_planted_short_phase_child() {
    if std::env::var_os(SHORT_PHASE_ENV).is_some() {
        check::<PLANT_SLEEP_IN_SHORT_PHASE>(false, take_turns);
    }
}

/// Planted bug (b): a plain store from `WAITING` to `HELD` drops the `SLEEPERS` bit that a thread
/// of the owner set while waiting, and the release does not wake it.
#[test]
fn model_slot_catches_a_plain_hand_over() {
    lock_conformance::child::assert_caught_as_deadlock(
        "slot_model::model_slot_planted_hand_over_child",
        HAND_OVER_ENV,
        "a hand-over that drops the sleepers",
    );
}

/// The planted bug of [`model_slot_catches_a_plain_hand_over`]; it only runs in that test's
/// child process and passes trivially otherwise.
#[test]
fn model_slot_planted_hand_over_child() {
    if std::env::var_os(HAND_OVER_ENV).is_some() {
        check::<PLANT_PLAIN_HAND_OVER>(false, hand_over);
    }
}

/// Preemptions explored per execution of the biased models: the bias adds three weakly
/// ordered words to the phase word, and without a bound the smallest biased model did not end
/// in five minutes; with six they take a few seconds, and the planted bug (c) is caught at the
/// first bound tried, two.
const BIASED_PREEMPTIONS: Option<usize> = Some(6);

/// The main thread becomes the slot's owner with a lock and unlock of its own, then locks and
/// unlocks again while another thread, whose first move revokes the bias, locks and unlocks once.
fn revoke_while_the_owner_works<const P: u8>(owner: Arc<Owner<P>>) {
    owner.lock(MAIN);
    assert!(owner.unlock(MAIN));
    let other = lock_once_on_a_thread(&owner);
    owner.lock(MAIN);
    assert!(owner.unlock(MAIN));
    join(other);
    assert!(owner.phase.is_idle());
}

/// S1, S2 across a revocation of the bias: plain moves by the owner, then read-modify-writes.
#[test]
fn model_slot_a_revoked_bias_keeps_threads_taking_turns() {
    check_bounded::<REAL>(true, BIASED_PREEMPTIONS, revoke_while_the_owner_works);
}

/// S3 on a biased slot: the owner locks and unlocks while another thread, revoking, unlocks
/// once: exactly one of the two unlocks releases the hold.
#[test]
fn model_slot_one_release_per_hold_biased() {
    check_bounded::<REAL>(true, BIASED_PREEMPTIONS, |owner| {
        // The main thread's first move makes it the owner.
        owner.lock(MAIN);
        assert!(owner.unlock(MAIN));
        racing_unlocks(&owner);
    });
}

/// Set in the child process of [`model_slot_catches_a_revocation_without_the_barrier`].
const NO_BARRIER_ENV: &str = "LOCK_FILE_MODEL_PLANTED_NO_BARRIER";

/// Planted bug (c): a revocation without the barrier lets the owner's plain move and the
/// revoker's compare-exchange both take the slot; the model sees it as two holders, or as the
/// lost wake-up that the clobbered word leads to (what loom finds first). Loom aborts the
/// process on either, so the planted model runs in a child process.
#[test]
fn model_slot_catches_a_revocation_without_the_barrier() {
    if std::env::var_os(NO_BARRIER_ENV).is_some() {
        return;
    }
    let (status, text) = lock_conformance::child::run_test_in_child(
        "slot_model::model_slot_planted_no_barrier_child",
        NO_BARRIER_ENV,
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("the planted-bug child: {e}"));
    assert!(
        !status.success()
            && (text.contains("two threads hold the lock") || text.contains("deadlock")),
        "a revocation without the barrier was not caught ({status}): {text}"
    );
}

/// The planted bug of [`model_slot_catches_a_revocation_without_the_barrier`]; it only runs in
/// that test's child process and passes trivially otherwise.
#[test]
fn model_slot_planted_no_barrier_child() {
    if std::env::var_os(NO_BARRIER_ENV).is_some() {
        check_bounded::<PLANT_NO_BARRIER>(true, BIASED_PREEMPTIONS, revoke_while_the_owner_works);
    }
}
