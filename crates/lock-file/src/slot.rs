//! One manager's view of one lock: its own open description of the lock file, and which phase
//! this owner is in, so that the owner's threads take turns.
//!
//! `flock` on one open description never conflicts with itself, so without this state a second
//! thread of the same owner would "acquire" a lock its owner already holds. Instead each slot has
//! a phase word, and a thread of the owner that finds the slot busy waits for it to become idle
//! like any other waiter, while `try_lock` returns `None`. This is what makes same-owner
//! re-locking wait instead of succeeding re-entrantly.
//!
//! # The phase word
//!
//! One 32-bit word per slot: a phase, and the `SLEEPERS` bit.
//!
//! - `IDLE`: this owner neither holds nor is taking the lock.
//! - `TAKING` (short): one thread tries `flock(LOCK_NB)` and, when it gets the lock, writes the
//!   owner record.
//! - `WAITING` (long): one thread waits for another owner in a blocking or polling `flock`.
//! - `HELD` (long): this owner holds the lock.
//! - `RELEASING` (short): one thread clears the record and calls `flock(LOCK_UN)`.
//!
//! Leaving `IDLE` and leaving `HELD` are compare-exchanges, made before the system call, so two
//! threads never both take or both release. The end of a short phase is a plain store, made
//! after the system call: an uncontended lock+unlock makes two read-modify-writes and none right
//! after a system call. (With a mutex around each step it made four, two of them right after the
//! call, where one costs about 15 ns on this project's machines. `file-lock-unlock-interleaved`
//! went from 1.16-1.17 to 1.10-1.12 × a bare `flock` pair, 300 to 282 ns a pair.) While the slot
//! is biased to one thread (`bias.rs`: no other thread has moved it), that thread leaves `IDLE`
//! and `HELD` with a plain load and store, and the pair makes no read-modify-write at all
//! (1.01-1.02 × the bare pair).
//!
//! A plain store at the end of a short phase loses nothing because nobody else writes the word
//! during one: a thread that finds a short phase does not sleep but spins a little and yields
//! until it ends (it lasts one system call). Only in a long phase does a thread set `SLEEPERS`
//! (a compare-exchange) and sleep on the word (`FUTEX_WAIT`, process-private). The
//! compare-exchange that starts a release returns the word, so the releaser knows about the
//! sleepers and wakes them all after its store of `IDLE`; `WAITING` becomes `HELD` by a
//! `fetch_xor` that keeps the bit, and a wait that ends without the lock wakes them with a swap
//! to `IDLE`.
//!
//! The protocol is generic over [`PhaseSys`] (the word's atomic operations, the futex, the
//! pause), so that `slot_model.rs` runs this very code under loom (`cargo test -p lock-file
//! --lib model`): threads of one owner taking turns, through `TAKING` and through `WAITING`,
//! unlocks from a thread that does not hold, and two planted bugs caught as lost wake-ups
//! ([`PhaseSys::SLEEP_IN_SHORT_PHASE`], [`PhaseSys::PLAIN_HAND_OVER`]).
//!
//! The cache keeps one slot per id this manager has touched while a handle exists or the lock is
//! held; idle slots without handles are closed once the cache grows, so a process that walks
//! over many ids does not run out of descriptors.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::thread::futex;

use crate::bias::{Bias, BiasSys};

/// Cached slots below this count are never evicted.
const MIN_CACHE: usize = 256;

/// The phase bits of the word.
const PHASE: u32 = 0b111;
/// This owner neither holds nor is taking the lock.
const IDLE: u32 = 0;
/// Short: one thread tries `flock(LOCK_NB)` and writes the claim.
const TAKING: u32 = 1;
/// Long: one thread waits for another owner.
const WAITING: u32 = 2;
/// Long: this owner holds the lock.
const HELD: u32 = 3;
/// Short: one thread is in `flock(LOCK_UN)`.
const RELEASING: u32 = 4;
/// Threads of this owner sleep on the word (set only in a long phase).
const SLEEPERS: u32 = 0b1000;

/// Pauses in a short phase spent spinning before a waiting thread starts to yield: a short
/// phase is one system call, a few hundred ns.
const SPINS: u32 = 32;

/// What the phase protocol needs of the system: the word's atomic operations, sleeping on it and
/// waking its sleepers, and a pause. Production runs it on [`Futex`]; the model check on a value
/// under a loom mutex and a modelled futex (`slot_model.rs` says why not loom's atomic).
pub(crate) trait PhaseSys {
    /// The slot's bias (`bias.rs`): its words, barrier and pause.
    type Bias: BiasSys;

    /// Planted bug (a), set only by the model check: a waiter sleeps in a short phase too, so
    /// its `SLEEPERS` bit is overwritten by the plain store that ends the phase.
    const SLEEP_IN_SHORT_PHASE: bool = false;
    /// Planted bug (b), set only by the model check: `WAITING` becomes `HELD` by a plain store,
    /// which drops the `SLEEPERS` bit.
    const PLAIN_HAND_OVER: bool = false;

    /// The word (acquire).
    fn load(&self) -> u32;
    /// Replaces `current` by `new` (acquire and release); the word as it was on failure.
    fn compare_exchange(&self, current: u32, new: u32) -> Result<u32, u32>;
    /// Stores `value` (release).
    fn store(&self, value: u32);
    /// Flips `bits` (acquire and release); the word before.
    fn fetch_xor(&self, bits: u32) -> u32;
    /// Stores `value` (acquire and release); the word before.
    fn swap(&self, value: u32) -> u32;
    /// Sleeps while the word is `expected`, at most `timeout`; may return early.
    fn sleep(&self, expected: u32, timeout: Option<Duration>);
    /// Wakes every thread sleeping on the word.
    fn wake_all(&self);
    /// Lets a short phase end: the `round`th pause of one wait.
    fn pause(&self, round: u32);
}

/// The production word: an atomic and a process-private futex.
#[derive(Debug, Default)]
pub(crate) struct Futex(AtomicU32);

impl PhaseSys for Futex {
    type Bias = crate::bias::Std;

    #[inline(always)]
    fn load(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }

    #[inline(always)]
    fn compare_exchange(&self, current: u32, new: u32) -> Result<u32, u32> {
        self.0
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
    }

    #[inline(always)]
    fn store(&self, value: u32) {
        self.0.store(value, Ordering::Release);
    }

    fn fetch_xor(&self, bits: u32) -> u32 {
        self.0.fetch_xor(bits, Ordering::AcqRel)
    }

    fn swap(&self, value: u32) -> u32 {
        self.0.swap(value, Ordering::AcqRel)
    }

    fn sleep(&self, expected: u32, timeout: Option<Duration>) {
        let timeout = timeout.map(|d| futex::Timespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        // EAGAIN (the word changed), EINTR and ETIMEDOUT all send the caller back to look.
        let _ = futex::wait(&self.0, futex::Flags::PRIVATE, expected, timeout.as_ref());
    }

    fn wake_all(&self) {
        // The count is an int to the kernel: i32::MAX wakes everyone.
        let _ = futex::wake(&self.0, futex::Flags::PRIVATE, i32::MAX.unsigned_abs());
    }

    fn pause(&self, round: u32) {
        if round < SPINS {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// The phase word of a slot and the moves between phases, on the system `S`.
#[derive(Debug)]
pub(crate) struct Phase<S: PhaseSys = Futex> {
    sys: S,
    /// Which thread may leave a long phase with a plain load and store (`bias.rs`).
    bias: Bias<S::Bias>,
}

/// The `SLEEPERS` bit a release carries from `HELD` to its end.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub(crate) struct Release(u32);

impl<S: PhaseSys> Phase<S> {
    /// A phase word on `sys`, idle; biased to the first thread that leaves a long phase if
    /// `biased` (`bias.rs`), else never.
    pub(crate) fn new(sys: S, biased: bool) -> Phase<S> {
        Phase {
            sys,
            bias: Bias::new(biased),
        }
    }

    /// `IDLE` → `TAKING` by the thread `me` (its `bias::key`); false when the slot is not idle.
    #[inline(always)]
    pub(crate) fn try_begin(&self, me: u64) -> bool {
        if self.bias.enter(me) {
            // Biased: nobody else writes the word.
            let idle = self.sys.load() == IDLE;
            if idle {
                self.sys.store(TAKING);
            }
            self.bias.leave();
            return idle;
        }
        self.sys.compare_exchange(IDLE, TAKING).is_ok()
    }

    /// `TAKING` → `HELD`: the lock was taken at the first try.
    #[inline(always)]
    pub(crate) fn take(&self) {
        self.sys.store(HELD);
    }

    /// `TAKING` → `WAITING`: the lock is busy and this thread will wait for it.
    pub(crate) fn wait_for_others(&self) {
        self.sys.store(WAITING);
    }

    /// `TAKING` → `IDLE`: the try did not take the lock (or failed) and this thread gives up.
    pub(crate) fn abandon(&self) {
        self.sys.store(IDLE);
    }

    /// `WAITING` → `HELD` when the wait took the lock, else → `IDLE`, waking the owner's
    /// sleepers.
    pub(crate) fn waited(&self, took: bool) {
        if took {
            if S::PLAIN_HAND_OVER {
                self.sys.store(HELD);
            } else {
                self.sys.fetch_xor(WAITING ^ HELD);
            }
        } else if self.sys.swap(IDLE) & SLEEPERS != 0 {
            self.sys.wake_all();
        }
    }

    /// `HELD` → `RELEASING` by the thread `me`; `None` when this owner does not hold the lock.
    #[inline(always)]
    pub(crate) fn begin_release(&self, me: u64) -> Option<Release> {
        if self.bias.enter(me) {
            // Biased: nobody else writes the word (the owner's own timed wait may have left
            // `SLEEPERS` set).
            let word = self.sys.load();
            let held = word & PHASE == HELD;
            if held {
                self.sys.store(RELEASING);
            }
            self.bias.leave();
            return held.then_some(Release(word & SLEEPERS));
        }
        let mut expected = HELD;
        loop {
            match self.sys.compare_exchange(expected, RELEASING) {
                Ok(_) => return Some(Release(expected & SLEEPERS)),
                Err(actual) if actual & PHASE == HELD => expected = actual,
                Err(_) => return None,
            }
        }
    }

    /// `RELEASING` → `IDLE`, waking the owner's sleepers if there were any.
    #[inline(always)]
    pub(crate) fn released(&self, release: Release) {
        self.sys.store(IDLE);
        if release.0 != 0 {
            self.sys.wake_all();
        }
    }

    /// `RELEASING` → `HELD`: the unlock failed and the lock is still held.
    pub(crate) fn still_held(&self, release: Release) {
        self.sys.store(HELD | release.0);
    }

    /// Whether the slot is idle.
    pub(crate) fn is_idle(&self) -> bool {
        self.sys.load() & PHASE == IDLE
    }

    /// Whether this owner holds the lock (and is not releasing it).
    pub(crate) fn is_held(&self) -> bool {
        self.sys.load() & PHASE == HELD
    }

    /// Waits until the slot is idle (true) or `deadline` passes (false). The caller then tries
    /// [`try_begin`](Self::try_begin), which another thread may win.
    pub(crate) fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        let mut round = 0;
        loop {
            let word = self.sys.load();
            let phase = word & PHASE;
            if phase == IDLE {
                return true;
            }
            let timeout = match deadline {
                None => None,
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    Some(deadline - now)
                }
            };
            if (phase == TAKING || phase == RELEASING) && !S::SLEEP_IN_SHORT_PHASE {
                // Nobody sleeps in a short phase: its end is a plain store.
                self.sys.pause(round);
                round = round.saturating_add(1);
                continue;
            }
            if word & SLEEPERS == 0 && self.sys.compare_exchange(word, word | SLEEPERS).is_err() {
                continue;
            }
            self.sys.sleep(word | SLEEPERS, timeout);
            round = 0;
        }
    }
}

/// One lock as seen by one manager.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) id: u32,
    /// This manager's own open description of the lock file: the `flock` is on it.
    pub(crate) file: File,
    /// Where this owner stands with the lock.
    pub(crate) phase: Phase,
}

impl Slot {
    /// A fresh, idle slot on `file`.
    pub(crate) fn new(id: u32, file: File) -> Slot {
        Slot {
            id,
            file,
            phase: Phase::new(Futex::default(), crate::bias::biasing()),
        }
    }
}

/// The slots of one manager.
#[derive(Debug)]
pub(crate) struct Cache {
    slots: HashMap<u32, Arc<Slot>>,
    /// Evict when the cache reaches this size.
    limit: usize,
}

impl Cache {
    /// An empty cache.
    pub(crate) fn new() -> Cache {
        Cache {
            slots: HashMap::new(),
            limit: MIN_CACHE,
        }
    }

    /// The slot for `id`, opening its file with `open` when it is not cached.
    pub(crate) fn get_or_open(
        &mut self,
        id: u32,
        open: impl FnOnce() -> lock_api::Result<File>,
    ) -> lock_api::Result<Arc<Slot>> {
        if let Some(slot) = self.slots.get(&id) {
            return Ok(Arc::clone(slot));
        }
        if self.slots.len() >= self.limit {
            self.evict();
        }
        let slot = Arc::new(Slot::new(id, open()?));
        self.slots.insert(id, Arc::clone(&slot));
        Ok(slot)
    }

    /// The cached slot for `id`, if any.
    pub(crate) fn get(&self, id: u32) -> Option<&Arc<Slot>> {
        self.slots.get(&id)
    }

    /// Closes idle slots that no handle refers to.
    ///
    /// Handles are only made from the cache, under its mutex, so a slot whose only reference is
    /// the cache's cannot gain one while this runs; such a slot is idle or held (acquiring needs
    /// a handle), and held slots are kept, or closing the file would drop the lock.
    fn evict(&mut self) {
        self.slots
            .retain(|_, slot| Arc::strong_count(slot) > 1 || !slot.phase.is_idle());
        self.limit = MIN_CACHE.max(self.slots.len() * 2);
    }
}
