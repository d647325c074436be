//! Biased slots: the moves out of a long phase without a read-modify-write while one thread
//! alone uses a slot.
//!
//! The phase word (`slot.rs`) makes an owner's threads take turns with two compare-exchanges
//! a lock+unlock, and they were the whole of the uncontended pair's cost over a bare `flock`
//! pair: with both replaced by a plain load and store (a throwaway, safe only with one thread)
//! `file-lock-unlock-interleaved` went from 1.11 to 1.00 × the bare pair and
//! `file-contended-2proc` from 1.13-1.28 to 1.07-1.14 in one sitting. Most slots are only
//! ever used by one thread, so each slot is *biased* to the first thread that moves its phase
//! word out of a long phase: that thread (the *owner* here) makes those moves with a plain
//! load and store, and so do nothing else. Any other thread that wants to move the word first
//! *revokes* the bias, for good, and from then on every thread uses the read-modify-writes of
//! `slot.rs`.
//!
//! # The protocol (an asymmetric Dekker handshake)
//!
//! Three words per slot: `owner` (the biased thread's key, 0 before the first move, `SHARED`
//! once revoked), `busy` (1 while the owner makes a plain move) and `state` (`BIASED`,
//! `REVOKING`, `REVOKED`).
//!
//! - The owner, to move: stores `busy = 1`, then loads `state`; `BIASED`: it moves with a
//!   plain load and store and then stores `busy = 0` (release); otherwise it stores `busy = 0`
//!   and uses the read-modify-write.
//! - Another thread, before it writes the word at all: if `state` is not `REVOKED`, it stores
//!   `REVOKING`, runs `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, waits until it reads
//!   `busy == 0` (acquire), and stores `REVOKED` and then `owner = SHARED` (release), which every
//!   thread's next move reads first (acquire) and takes as "use the read-modify-write", with
//!   no store of `busy` and no call out of line.
//!
//! The owner's store of `busy` and load of `state` are in program order but x86 lets the load
//! pass the store (the store buffer), so with plain instructions on both sides each could miss
//! the other. `membarrier` makes every running thread of the process execute a full barrier
//! before it returns: so either the owner's `busy = 1` was made before that barrier, and the
//! revoker reads it (and waits for the move to end), or the owner's load of `state` comes after
//! the barrier, and it reads `REVOKING` (and does not move plainly). The owner pays two plain
//! stores and two loads a move; the revoker pays one system call, once per slot.
//!
//! Only one thread is the owner: `owner` is set once, by compare-exchange from 0. A thread's
//! key is the address of a thread-local, unique among live threads; a thread that starts after
//! the owner ended may get the same key and become the owner in its place, which is still one
//! thread at a time.
//!
//! Where `membarrier` cannot be used (a kernel before 4.14, a seccomp filter that refuses it),
//! slots start `REVOKED`: the read-modify-writes, as before. If it stops working after a slot
//! was made (a filter installed later), a revoker sleeps 2 ms instead of the barrier.
//!
//! The protocol is generic over [`BiasSys`] so that `slot_model.rs` runs it under loom with
//! the phase word, and a planted bug (a revocation without the barrier) is caught there as two
//! threads holding the lock at once.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::adopt::Word;

/// The owner may move the word with plain instructions.
const BIASED: u64 = 0;
/// Another thread is revoking the bias: the owner makes no plain move any more.
const REVOKING: u64 = 1;
/// Every thread uses read-modify-writes.
const REVOKED: u64 = 2;

/// `owner` of a slot whose bias is revoked or was never given: no thread's key.
const SHARED: u64 = u64::MAX;

/// What the protocol needs of the system: its words, the barrier, and a pause.
pub(crate) trait BiasSys {
    /// The atomic word.
    type Word: Word;

    /// Planted bug, set only by the model check: a revocation without the barrier.
    const NO_BARRIER: bool = false;

    /// Between the owner's store of `busy` and its load of `state`. Production: a compiler
    /// fence only (the processor's reordering is what the barrier answers). The model check:
    /// `fence(SeqCst)`, standing for the barrier `membarrier` makes the owner execute, which
    /// loom cannot express otherwise.
    fn owner_fence();

    /// The revoker's barrier: after it, every thread of the process has passed a full memory
    /// barrier. False if it failed.
    fn barrier() -> bool;

    /// Lets the owner's move end: the `round`th pause of one wait.
    fn pause(round: u32);

    /// A slot's bias was revoked (counted: see [`biasing`]).
    fn revoked() {}
}

/// Production: `AtomicU64`, and `membarrier(2)`.
#[derive(Debug)]
pub(crate) struct Std;

impl BiasSys for Std {
    type Word = AtomicU64;

    #[inline(always)]
    fn owner_fence() {
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
    }

    fn barrier() -> bool {
        barrier()
    }

    fn pause(round: u32) {
        if round < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }

    fn revoked() {
        REVOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Revocations in this process after which new slots start revoked (see [`biasing`]).
const MAX_REVOCATIONS: u32 = 64;

/// How many slots of this process have had their bias revoked.
static REVOCATIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// One slot's bias.
pub(crate) struct Bias<S: BiasSys = Std> {
    owner: S::Word,
    busy: S::Word,
    state: S::Word,
}

impl<S: BiasSys> std::fmt::Debug for Bias<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bias")
            .field("owner", &self.owner.load(Ordering::Relaxed))
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<S: BiasSys> Bias<S> {
    /// A bias not given to any thread yet; or, when `enabled` is false (no barrier), revoked
    /// from the start.
    pub(crate) fn new(enabled: bool) -> Bias<S> {
        let bias: Bias<S> = Bias {
            owner: S::Word::default(),
            busy: S::Word::default(),
            state: S::Word::default(),
        };
        if !enabled {
            bias.state.store(REVOKED, Ordering::Relaxed);
            bias.owner.store(SHARED, Ordering::Relaxed);
        }
        bias
    }

    /// Called by the thread `me` (its [`key`]) before it moves the word out of a long phase.
    /// True: it may make the move with a plain load and store, and must call
    /// [`leave`](Self::leave) right after. False: it must use the read-modify-write (the bias
    /// is revoked, by this call if `me` is not the owner).
    #[inline(always)]
    pub(crate) fn enter(&self, me: u64) -> bool {
        // Acquire: a revoker's store of `SHARED` (release) comes after it saw the owner's last
        // plain move end, which this thread's read-modify-writes must follow.
        let owner = self.owner.load(Ordering::Acquire);
        if owner == me {
            self.busy.store(1, Ordering::Relaxed);
            S::owner_fence();
            if self.state.load(Ordering::Relaxed) == BIASED {
                return true;
            }
            self.busy.store(0, Ordering::Release);
            return false;
        }
        if owner == SHARED {
            return false;
        }
        self.enter_other(me)
    }

    /// The end of the owner's plain move.
    #[inline(always)]
    pub(crate) fn leave(&self) {
        self.busy.store(0, Ordering::Release);
    }

    /// [`enter`](Self::enter) for a thread that is not the owner: it becomes the owner if
    /// there is none yet, else it revokes the bias.
    #[cold]
    #[inline(never)]
    fn enter_other(&self, me: u64) -> bool {
        if self
            .owner
            .compare_exchange(0, me, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            return self.enter(me);
        }
        self.revoke();
        false
    }

    /// Revokes the bias for good: after this returns, the owner makes no plain move, and every
    /// plain move it made happened before (the acquire load of `busy == 0`).
    fn revoke(&self) {
        if self.state.load(Ordering::Acquire) == REVOKED {
            return;
        }
        if self
            .state
            .compare_exchange(BIASED, REVOKING, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            S::revoked();
        }
        if !S::NO_BARRIER && !S::barrier() {
            // `membarrier` worked when the slot was made (else it would have started revoked)
            // and fails now: a seccomp filter installed since. The fallback is time: a store
            // buffer drains in nanoseconds, and a thread switched out drains it, so after a
            // sleep the owner's `busy = 1` is visible if it was made before `REVOKING` was.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let mut round = 0;
        while self.busy.load(Ordering::Acquire) != 0 {
            S::pause(round);
            round = round.saturating_add(1);
        }
        self.state.store(REVOKED, Ordering::Release);
        self.owner.store(SHARED, Ordering::Release);
    }

    /// Whether the bias is revoked (for tests).
    #[cfg(test)]
    pub(crate) fn is_revoked(&self) -> bool {
        self.state.load(Ordering::Acquire) == REVOKED
    }
}

/// This thread's key: the address of a thread-local, never 0.
#[inline(always)]
pub(crate) fn key() -> u64 {
    thread_local! {
        static KEY: u8 = const { 0 };
    }
    KEY.with(|k| std::ptr::from_ref(k) as usize as u64)
}

/// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`: true when every running thread of this
/// process has passed a full barrier.
fn barrier() -> bool {
    use rustix::thread::{MembarrierCommand, membarrier};
    membarrier(MembarrierCommand::PrivateExpedited).is_ok()
}

/// Whether a new slot starts biased: the barrier works here ([`enabled`]) and this process has
/// not revoked many biases already. A revocation costs one `membarrier`, about 0.1 µs when the
/// process runs one thread and 9-19 µs with one to three others running (interrupts to their
/// CPUs, on this project's 2-vCPU VM), against a lock+unlock of 0.3 µs: a process whose threads
/// share their locks (a thread pool) would pay it for every slot it makes, and slots are made
/// again after the cache closes idle ones. After [`MAX_REVOCATIONS`] such a process makes its
/// slots shared from the start, as before biasing.
pub(crate) fn biasing() -> bool {
    REVOCATIONS.load(Ordering::Relaxed) < MAX_REVOCATIONS && enabled()
}

/// Whether `membarrier` is registered for this process (once per process and fork generation:
/// a child needs its own registration) and seen to work.
pub(crate) fn enabled() -> bool {
    /// The fork generation the registration was tried in, plus one, shifted left by one, with
    /// its outcome in the low bit; 0: never tried.
    static REGISTERED: AtomicU64 = AtomicU64::new(0);
    let generation = (u64::from(lockyard_fork::current()) + 1) << 1;
    let registered = REGISTERED.load(Ordering::Relaxed);
    if registered & !1 == generation {
        return registered & 1 == 1;
    }
    use rustix::thread::{MembarrierCommand, membarrier};
    let works = membarrier(MembarrierCommand::RegisterPrivateExpedited).is_ok() && barrier();
    REGISTERED.store(generation | u64::from(works), Ordering::Relaxed);
    works
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first thread to move owns the bias and moves plainly; another thread's first move
    /// revokes it for good, and then neither moves plainly.
    #[test]
    fn the_first_thread_owns_the_bias_until_another_moves() {
        let bias = Bias::<Std>::new(true);
        let me = key();
        assert!(bias.enter(me), "the first move makes this thread the owner");
        bias.leave();
        assert!(bias.enter(me), "and the owner keeps moving plainly");
        bias.leave();
        let other = std::thread::scope(|s| s.spawn(|| (key(), bias.enter(key()))).join());
        let (other_key, other_plain) = other.expect("other thread");
        assert_ne!(other_key, me, "threads alive at once have different keys");
        assert!(!other_plain, "another thread never moves plainly");
        assert!(bias.is_revoked());
        assert!(!bias.enter(me), "nor does the owner, once revoked");
    }

    /// A revoker waits for the owner's plain move to end.
    #[test]
    fn a_revoker_waits_for_the_owners_move() {
        let bias = Bias::<Std>::new(true);
        let me = key();
        assert!(bias.enter(me));
        let revoked = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let revoker = s.spawn(|| {
                assert!(!bias.enter(key()));
                revoked.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(
                !revoked.load(Ordering::SeqCst),
                "the revocation ended while the owner was moving"
            );
            bias.leave();
            revoker.join().expect("revoker");
        });
        assert!(revoked.load(Ordering::SeqCst));
        assert!(bias.is_revoked());
    }

    /// Without the barrier no slot is biased: nobody moves plainly.
    #[test]
    fn a_slot_made_without_the_barrier_is_never_biased() {
        let bias = Bias::<Std>::new(false);
        assert!(bias.is_revoked());
        assert!(!bias.enter(key()));
        assert!(!bias.enter(key()));
    }

    /// On this project's machines the barrier is there (Linux 4.14 and later), so slots are
    /// biased; if this fails, lock-file runs on its read-modify-writes alone.
    #[test]
    fn the_barrier_is_available_here() {
        assert!(
            enabled(),
            "membarrier(PRIVATE_EXPEDITED) is not usable here"
        );
        assert!(enabled(), "and the answer is kept");
    }
}
