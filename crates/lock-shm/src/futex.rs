//! The lock word: a 32-bit futex holding the owner's token and a waiters bit.
//!
//! `0` is unlocked. Otherwise the low 31 bits are the holder's token (never 0) and [`WAITERS`]
//! says that someone may sleep on the word. Lock is one compare-and-swap `0 -> token`; unlock is
//! one compare-and-swap `token -> 0`; only when the waiters bit is set does unlock make a
//! `FUTEX_WAKE` syscall. Waiters sleep with non-private `FUTEX_WAIT` (the word is in shared
//! memory, mapped at different addresses in different processes) for at most
//! [`PROBE_INTERVAL`], and after each interval ask the caller's probe whether the holder is
//! dead; a dead holder's lock is taken over with a compare-and-swap on the exact word observed,
//! so exactly one waiter wins and reports [`Acquired::OwnerDied`].

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use lock_api::{Acquired, Error, Result};
use rustix::thread::futex;

use crate::segment::Le32;

/// Set when someone sleeps, or is about to sleep, on the word.
pub(crate) const WAITERS: u32 = 1 << 31;
/// The holder's token.
pub(crate) const OWNER: u32 = !WAITERS;
/// How long a waiter sleeps before checking whether the holder is still alive.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// Spins on a contended word before sleeping.
const SPINS: u32 = 100;

/// Takes the word if it is unlocked.
#[inline]
pub(crate) fn try_fast(word: &Le32, token: u32) -> bool {
    word.compare_exchange(0, token, Acquire, Relaxed).is_ok()
}

/// Releases the word if `token` holds it; returns whether it did.
#[inline]
pub(crate) fn unlock(word: &Le32, token: u32) -> Result<bool> {
    if word.compare_exchange(token, 0, Release, Relaxed).is_ok() {
        return Ok(true);
    }
    unlock_contended(word, token)
}

#[cold]
fn unlock_contended(word: &Le32, token: u32) -> Result<bool> {
    let v = word.load(Relaxed);
    if v & OWNER != token {
        return Ok(false);
    }
    // Only this owner changes the owner bits while it lives (a takeover needs the probe to find
    // it dead), so between the load and the swap only the waiters bit can have been set.
    let old = word.swap(0, Release);
    if old & WAITERS != 0 {
        wake(word)?;
    }
    Ok(true)
}

#[cold]
fn wake(word: &Le32) -> Result<()> {
    futex::wake(word.futex_word(), futex::Flags::empty(), 1)
        .map(|_| ())
        .map_err(|e| Error::io("futex(FUTEX_WAKE)", "lock word", e.into()))
}

/// Tries once, without sleeping, taking the lock over when `dead` says its holder is gone.
/// Returns `None` when the lock is held by a live owner, this one included.
pub(crate) fn try_lock(
    word: &Le32,
    token: u32,
    dead: impl FnOnce(u32) -> Result<bool>,
) -> Result<Option<Acquired>> {
    loop {
        if try_fast(word, token) {
            return Ok(Some(Acquired::Clean));
        }
        let v = word.load(Relaxed);
        if v == 0 {
            continue;
        }
        if v & OWNER == token {
            return Ok(None);
        }
        if dead(v & OWNER)? {
            if word
                .compare_exchange(v, token | (v & WAITERS), Acquire, Relaxed)
                .is_ok()
            {
                return Ok(Some(Acquired::OwnerDied));
            }
            // Someone else moved first: released it or took it over. Look once more, but never
            // probe twice in one try.
            return Ok(try_fast(word, token).then_some(Acquired::Clean));
        }
        return Ok(None);
    }
}

/// Waits for the lock until `deadline` (forever when `None`). Returns `None` on timeout.
#[cold]
pub(crate) fn lock_contended(
    word: &Le32,
    token: u32,
    deadline: Option<Instant>,
    mut dead: impl FnMut(u32) -> Result<bool>,
) -> Result<Option<Acquired>> {
    for _ in 0..SPINS {
        let v = word.load(Relaxed);
        if v == 0 && try_fast(word, token) {
            return Ok(Some(Acquired::Clean));
        }
        std::hint::spin_loop();
    }
    let mut last_probe = Instant::now();
    loop {
        let v = word.load(Relaxed);
        if v == 0 {
            // Others may still sleep behind us: keep the waiters bit so our unlock wakes them.
            if word
                .compare_exchange(0, token | WAITERS, Acquire, Relaxed)
                .is_ok()
            {
                return Ok(Some(Acquired::Clean));
            }
            continue;
        }
        let now = Instant::now();
        if now.duration_since(last_probe) >= PROBE_INTERVAL {
            last_probe = now;
            if v & OWNER != token && dead(v & OWNER)? {
                if word
                    .compare_exchange(v, token | (v & WAITERS), Acquire, Relaxed)
                    .is_ok()
                {
                    return Ok(Some(Acquired::OwnerDied));
                }
                continue;
            }
        }
        if v & WAITERS == 0
            && word
                .compare_exchange(v, v | WAITERS, Relaxed, Relaxed)
                .is_err()
        {
            continue;
        }
        let mut sleep = PROBE_INTERVAL.saturating_sub(now.duration_since(last_probe));
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                // One last look, so a timeout shorter than the probe interval still finds a
                // dead holder, as `try_lock` would. The word now has the waiters bit.
                if v & OWNER != token
                    && dead(v & OWNER)?
                    && word
                        .compare_exchange(v | WAITERS, token | WAITERS, Acquire, Relaxed)
                        .is_ok()
                {
                    return Ok(Some(Acquired::OwnerDied));
                }
                return Ok(None);
            }
            sleep = sleep.min(left);
        }
        let ts = rustix::time::Timespec {
            tv_sec: sleep.as_secs() as i64,
            tv_nsec: i64::from(sleep.subsec_nanos()),
        };
        match futex::wait(
            word.futex_word(),
            futex::Flags::empty(),
            (v | WAITERS).to_le(),
            Some(&ts),
        ) {
            Ok(())
            | Err(
                rustix::io::Errno::AGAIN | rustix::io::Errno::TIMEDOUT | rustix::io::Errno::INTR,
            ) => {}
            Err(e) => return Err(Error::io("futex(FUTEX_WAIT)", "lock word", e.into())),
        }
    }
}
