//! The real system under the lock-word protocol: `futex(2)` on words in the segment, the clock,
//! and the caller's liveness probe.
//!
//! The protocol itself is in `lockword.rs`. Here waiters sleep with non-private `FUTEX_WAIT`
//! (the word is in shared memory, mapped at different addresses in different processes) for at
//! most [`PROBE_INTERVAL`], and after each interval ask the probe whether the holder is dead;
//! unlock makes a `FUTEX_WAKE` syscall only when the waiters bit was set.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{self, Relaxed};
use std::time::{Duration, Instant};

use lock_api::{Acquired, Error, Result};
use rustix::thread::futex;

use crate::lockword::{self, Sys, Tick, Word};
use crate::segment::Le32;

/// How long a waiter sleeps before checking whether the holder is still alive.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// Spins on a contended word before sleeping.
pub(crate) const SPINS: u32 = 100;

impl Word for Le32 {
    #[inline]
    fn load(&self, order: Ordering) -> u32 {
        Le32::load(self, order)
    }

    #[inline]
    fn compare_exchange(
        &self,
        current: u32,
        new: u32,
        success: Ordering,
        failure: Ordering,
    ) -> std::result::Result<u32, u32> {
        Le32::compare_exchange(self, current, new, success, failure)
    }

    #[inline]
    fn fence() {
        std::sync::atomic::fence(Ordering::SeqCst);
    }
}

/// A waiter on the allocation lock: the clock, the deadline, and the probe `dead`. Waits for
/// table locks are `wait::LockWaiter`.
struct Waiter<F> {
    deadline: Option<Instant>,
    last_probe: Instant,
    now: Instant,
    dead: F,
}

impl<F: FnMut(u32) -> Result<bool>> Waiter<F> {
    fn new(deadline: Option<Instant>, dead: F) -> Self {
        let now = Instant::now();
        Waiter {
            deadline,
            last_probe: now,
            now,
            dead,
        }
    }
}

impl<F: FnMut(u32) -> Result<bool>> Sys<Le32> for Waiter<F> {
    fn spins(&self) -> u32 {
        SPINS
    }

    fn tick(&mut self) -> Tick {
        let now = Instant::now();
        self.now = now;
        let probe = now.duration_since(self.last_probe) >= PROBE_INTERVAL;
        if probe {
            self.last_probe = now;
        }
        let expired = self
            .deadline
            .is_some_and(|d| d.saturating_duration_since(now).is_zero());
        Tick { probe, expired }
    }

    /// The allocation lock is held for microseconds: its waiters poll the holder every
    /// [`PROBE_INTERVAL`] instead of watching it.
    type Seen = ();

    fn watch(&mut self, _owner: u32) -> Result<()> {
        Ok(())
    }

    fn dead(&mut self, owner: u32, full: bool) -> Result<bool> {
        if full { (self.dead)(owner) } else { Ok(false) }
    }

    fn wait(&mut self, word: &Le32, expected: u32, _seen: Option<()>) -> Result<()> {
        let mut sleep = PROBE_INTERVAL.saturating_sub(self.now.duration_since(self.last_probe));
        if let Some(deadline) = self.deadline {
            sleep = sleep.min(deadline.saturating_duration_since(self.now));
        }
        wait(word, expected, Some(sleep))
    }
}

/// Sleeps on `word` while it holds `expected`, at most `timeout` (forever when `None`):
/// `FUTEX_WAIT`, shared. Spurious returns, a changed word, a timeout and a signal all return
/// `Ok`.
///
/// # Errors
///
/// `Io` when `futex(2)` fails otherwise.
pub(crate) fn wait(word: &Le32, expected: u32, timeout: Option<Duration>) -> Result<()> {
    let ts = timeout.map(|t| rustix::time::Timespec {
        tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    match futex::wait(
        word.futex_word(),
        futex::Flags::empty(),
        expected.to_le(),
        ts.as_ref(),
    ) {
        Ok(())
        | Err(rustix::io::Errno::AGAIN | rustix::io::Errno::TIMEDOUT | rustix::io::Errno::INTR) => {
            Ok(())
        }
        Err(e) => Err(Error::io("futex(FUTEX_WAIT)", "lock word", e.into())),
    }
}

/// Whether `futex_waitv(2)` (Linux 5.16) was found missing; then waiters poll.
static NO_WAITV: AtomicBool = AtomicBool::new(false);

/// Whether `futex_waitv(2)` can be used (it has not failed with `ENOSYS`).
pub(crate) fn waitv_available() -> bool {
    !NO_WAITV.load(Relaxed)
}

/// Sleeps while every word of `words` holds the value given with it, until one changes and is
/// woken, or `timeout` passes (`futex_waitv(2)`, every futex shared; at most three words). The
/// values are as the segment stores them (little-endian), like [`wait`]'s. Spurious returns, a
/// changed value, a timeout and a signal all return `Ok(true)`; `Ok(false)` says that the kernel
/// has no `futex_waitv` (then nothing slept; the caller falls back to polling).
///
/// # Errors
///
/// `Io` when `futex_waitv(2)` fails otherwise.
pub(crate) fn wait_any(words: &[(&Le32, u32)], timeout: Option<Duration>) -> Result<bool> {
    let mut waiters = [futex::Wait::new(), futex::Wait::new(), futex::Wait::new()];
    let n = words.len().min(waiters.len());
    for (w, (atom, value)) in waiters.iter_mut().zip(words) {
        w.val = u64::from(value.to_le());
        w.uaddr = futex::WaitPtr::new(atom.futex_word().as_ptr().cast());
        w.flags = futex::WaitFlags::SIZE_U32;
    }
    let waiters = &waiters[..n];
    // The timeout of futex_waitv is absolute, on the clock it is given.
    let deadline = timeout.map(|t| {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let nanos = i64::from(t.subsec_nanos()) + now.tv_nsec;
        rustix::time::Timespec {
            tv_sec: now
                .tv_sec
                .saturating_add(i64::try_from(t.as_secs()).unwrap_or(i64::MAX))
                .saturating_add(nanos / 1_000_000_000),
            tv_nsec: nanos % 1_000_000_000,
        }
    });
    match futex::waitv(
        waiters,
        futex::WaitvFlags::empty(),
        deadline.as_ref(),
        rustix::time::ClockId::Monotonic,
    ) {
        Ok(_)
        | Err(rustix::io::Errno::AGAIN | rustix::io::Errno::TIMEDOUT | rustix::io::Errno::INTR) => {
            Ok(true)
        }
        Err(rustix::io::Errno::NOSYS) => {
            NO_WAITV.store(true, Relaxed);
            Ok(false)
        }
        Err(e) => Err(Error::io("futex_waitv", "lock word", e.into())),
    }
}

/// Wakes every sleeper on `word`, which is `what` (`FUTEX_WAKE`, shared).
///
/// # Errors
///
/// `Io` when `futex(2)` fails.
pub(crate) fn wake_all(word: &Le32, what: &'static str) -> Result<()> {
    futex::wake(word.futex_word(), futex::Flags::empty(), u32::MAX)
        .map(|_| ())
        .map_err(|e| Error::io("futex(FUTEX_WAKE)", what, e.into()))
}

/// Wakes one sleeper on the lock word `word` (`FUTEX_WAKE`, shared).
#[cold]
pub(crate) fn wake(word: &Le32) -> Result<()> {
    wake_one(word, "lock word")
}

/// Wakes one sleeper on `word`, which is `what` (`FUTEX_WAKE`, shared).
pub(crate) fn wake_one(word: &Le32, what: &'static str) -> Result<()> {
    futex::wake(word.futex_word(), futex::Flags::empty(), 1)
        .map(|_| ())
        .map_err(|e| Error::io("futex(FUTEX_WAKE)", what, e.into()))
}

/// Takes the word if it is unlocked: one compare-and-swap, no syscall.
#[inline(always)]
pub(crate) fn try_fast(word: &Le32, token: u32) -> bool {
    lockword::try_fast(word, token)
}

/// Releases the word if it holds exactly `token` (nobody waits): one compare-and-swap. `false`
/// sends the caller to [`unlock`], which handles the waiters bit and tells "not held".
#[inline(always)]
pub(crate) fn unlock_fast(word: &Le32, token: u32) -> bool {
    lockword::unlock_fast(word, token)
}

/// Releases the word if `token` holds it; returns whether it did. One compare-and-swap, and a
/// `FUTEX_WAKE` only when someone waits; `clear` runs first on the contended path only, and
/// returns whether to hand the lock over (lockword.rs, "Handing off").
#[inline]
pub(crate) fn unlock(word: &Le32, token: u32, clear: impl FnMut() -> bool) -> Result<bool> {
    lockword::unlock(word, token, clear, wake)
}

/// Tries once, without sleeping, taking the lock over when `dead` says its holder is gone.
/// Returns `None` when the lock is held by a live owner, this one included.
pub(crate) fn try_lock(
    word: &Le32,
    token: u32,
    dead: impl FnOnce(u32) -> Result<bool>,
) -> Result<Option<Acquired>> {
    lockword::try_lock(word, token, dead)
}

/// Runs `f` holding `word` (the allocation lock), after `repair` when its previous holder died.
pub(crate) fn with_lock<T>(
    word: &Le32,
    token: u32,
    dead: impl FnMut(u32) -> Result<bool>,
    stolen: impl FnOnce() -> Error,
    repair: impl FnOnce() -> Result<()>,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    lockword::with_lock(
        word,
        token,
        || Waiter::new(None, dead),
        wake,
        stolen,
        repair,
        f,
    )
}
