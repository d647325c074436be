//! The RAII guard returned by `Locker::guard`.

use std::fmt;

use crate::{Acquired, Locker, Result};

/// Holds a lock and unlocks it when dropped.
///
/// The guard is `Send` when the locker is `Sync`, because the multiprocess backends own locks per
/// manager, not per thread. Dropping cannot report an error; call [`LockGuard::unlock`] to see one.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a, L: Locker + ?Sized> {
    locker: &'a L,
    acquired: Acquired,
    released: bool,
}

impl<'a, L: Locker + ?Sized> LockGuard<'a, L> {
    /// Wraps a lock the caller has just acquired.
    ///
    /// Backends that add their own acquisition methods use this; everyone else calls
    /// [`Locker::guard`].
    pub fn new(locker: &'a L, acquired: Acquired) -> Self {
        LockGuard {
            locker,
            acquired,
            released: false,
        }
    }

    /// How the lock was acquired (check for [`Acquired::OwnerDied`]).
    #[inline]
    pub fn acquired(&self) -> Acquired {
        self.acquired
    }

    /// The locked lock.
    #[inline]
    pub fn locker(&self) -> &'a L {
        self.locker
    }

    /// Unlocks now and reports any error that dropping would swallow.
    ///
    /// # Errors
    ///
    /// As for [`Locker::unlock`], for example [`Error::Lost`](crate::Error::Lost) when a lease
    /// expired while the guard was held.
    pub fn unlock(mut self) -> Result<()> {
        self.released = true;
        self.locker.unlock()
    }
}

impl<L: Locker + ?Sized> Drop for LockGuard<'_, L> {
    fn drop(&mut self) {
        if !self.released {
            // A drop cannot report; `LockGuard::unlock` is the way to see this error.
            let _ = self.locker.unlock();
        }
    }
}

impl<L: Locker + ?Sized> fmt::Debug for LockGuard<'_, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("id", &self.locker.id())
            .field("acquired", &self.acquired)
            .finish()
    }
}
