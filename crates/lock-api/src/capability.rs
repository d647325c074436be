//! Capability traits a backend implements only when it really can.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::{Holder, Locker, Result};

/// Locks whose every acquisition carries a fencing token.
///
/// A resource guarded by the lock remembers the highest token it has seen and rejects requests
/// with a lower one, so a holder that was paused past its lease cannot damage it.
pub trait Fenced: Locker {
    /// The token of this owner's current acquisition: it strictly increases with every
    /// acquisition of the lock, by any owner.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`](crate::Error::NotHeld) when this owner does not hold the lock.
    fn fencing_token(&self) -> Result<u64>;
}

/// Locks held through a lease that must be renewed, and can be lost.
pub trait Leased: Locker {
    /// The lease's time to live.
    fn ttl(&self) -> Duration;

    /// Time left on the current lease as last confirmed by the service, or `None` when the lock
    /// is not held.
    ///
    /// # Errors
    ///
    /// [`Error::Lost`](crate::Error::Lost) when the lease is gone.
    fn time_left(&self) -> Result<Option<Duration>>;

    /// A signal that fires when the current acquisition is lost (lease expired or revoked, key
    /// deleted, keepalive deadline passed).
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`](crate::Error::NotHeld) when the lock is not held.
    fn lost(&self) -> Result<LostSignal>;
}

/// Locks whose holder can be looked up by anyone.
pub trait Inspect: Locker {
    /// The current holder, or `None` when the lock is free.
    ///
    /// # Errors
    ///
    /// Backend errors only.
    fn holder(&self) -> Result<Option<Holder>>;
}

/// Locks that carry bytes readable by others (distlock's `Read`).
pub trait LockData: Locker {
    /// Stores `data` with the lock. Only the holder may write.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`](crate::Error::NotHeld) when this owner does not hold the lock;
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) when `data` is too large.
    fn write_data(&self, data: &[u8]) -> Result<()>;

    /// The data stored by the current holder, or `None` when the lock is free.
    ///
    /// # Errors
    ///
    /// Backend errors only.
    fn read_data(&self) -> Result<Option<Vec<u8>>>;
}

#[derive(Debug, Default)]
struct LostState {
    lost: Mutex<bool>,
    changed: Condvar,
}

/// The receiving side of a lost-lock signal: cheap to clone, waitable, never un-fires.
#[derive(Clone, Default)]
pub struct LostSignal(Arc<LostState>);

/// The firing side of a [`LostSignal`], held by the backend.
#[derive(Clone, Default)]
pub struct LostTrigger(Arc<LostState>);

impl LostTrigger {
    /// A new trigger and the signal it fires.
    pub fn new() -> (LostTrigger, LostSignal) {
        let state = Arc::new(LostState::default());
        (LostTrigger(Arc::clone(&state)), LostSignal(state))
    }

    /// Fires the signal; firing again does nothing.
    pub fn fire(&self) {
        let mut lost = self.0.lost.lock().unwrap_or_else(PoisonError::into_inner);
        *lost = true;
        self.0.changed.notify_all();
    }

    /// Another signal fired by this trigger.
    pub fn signal(&self) -> LostSignal {
        LostSignal(Arc::clone(&self.0))
    }
}

impl LostSignal {
    /// Whether the lock has been lost.
    pub fn is_lost(&self) -> bool {
        *self.0.lost.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits at most `timeout` for the loss; returns whether it happened. A timeout too long
    /// to add to the clock (`Duration::MAX`) waits until the loss.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut lost = self.0.lost.lock().unwrap_or_else(PoisonError::into_inner);
        while !*lost {
            lost = match deadline {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    self.0
                        .changed
                        .wait_timeout(lost, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .0
                    .changed
                    .wait(lost)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
        true
    }
}

impl fmt::Debug for LostSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LostSignal")
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl fmt::Debug for LostTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LostTrigger")
            .field("lost", &self.signal().is_lost())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_signal_fires_once_and_wakes_waiters() {
        let (trigger, signal) = LostTrigger::new();
        assert!(!signal.is_lost());
        assert!(!signal.wait_timeout(Duration::from_millis(10)));
        let waiter = {
            let signal = signal.clone();
            std::thread::spawn(move || signal.wait_timeout(Duration::from_secs(10)))
        };
        trigger.fire();
        trigger.fire();
        assert!(waiter.join().expect("waiter thread"));
        assert!(signal.is_lost());
    }

    /// A timeout past the clock's range waits until the loss (it panicked adding it).
    #[test]
    fn an_endless_wait_for_the_loss_ends_when_it_fires() {
        let (trigger, signal) = LostTrigger::new();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(signal.wait_timeout(Duration::MAX));
        });
        std::thread::sleep(Duration::from_millis(20));
        trigger.fire();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true));
    }
}
