//! The `Locker` trait: one lock.

use std::time::Duration;

use crate::{LockGuard, LockId, Result};

/// How a lock was acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use = "OwnerDied means the protected data may be half-written"]
pub enum Acquired {
    /// The previous holder released the lock normally.
    Clean,
    /// The previous holder died holding the lock; whatever it protected may be half-written.
    /// The caller now holds the lock and should repair or verify that data.
    OwnerDied,
}

impl Acquired {
    /// Whether the previous holder died holding the lock.
    #[inline]
    pub fn owner_died(self) -> bool {
        self == Acquired::OwnerDied
    }
}

/// One lock of a table, or one named lock.
///
/// # Ownership
///
/// A lock is held by an *owner*. For the multiprocess table backends (lock-shm, lock-file,
/// lock-mem) the owner is the open manager: every handle retrieved from one manager acts for it,
/// so a lock taken on one thread may be unlocked from another (guards are `Send`). For dirlock and
/// lock-etcd the owner is the handle itself.
///
/// # Re-locking
///
/// Locks are not re-entrant. [`lock`](Locker::lock) of a lock its own owner already holds waits
/// like any other waiter, until some thread of that owner unlocks it: a single thread that locks
/// twice waits forever (or until [`try_lock_for`](Locker::try_lock_for) times out).
/// [`try_lock`](Locker::try_lock) of a lock its own owner holds returns `Ok(None)`.
///
/// # Freed locks
///
/// [`free`](Locker::free) only marks the id reusable by a later allocation. The handle stays
/// usable: locking a freed lock works and never re-allocates it (Podman locks a freed lock to
/// discover that a container was removed).
pub trait Locker: Send + Sync {
    /// The id of this lock.
    fn id(&self) -> LockId;

    /// Blocks until this owner holds the lock.
    ///
    /// # Errors
    ///
    /// [`Error::Lost`](crate::Error::Lost) or [`Error::Unavailable`](crate::Error::Unavailable)
    /// for remote backends, [`Error::Corrupt`](crate::Error::Corrupt) when the backing store is
    /// damaged, [`Error::Io`](crate::Error::Io) for OS errors.
    fn lock(&self) -> Result<Acquired>;

    /// Takes the lock if it is free (or its holder is dead) without waiting.
    ///
    /// Returns `Ok(None)` when someone holds it, including this owner.
    ///
    /// # Errors
    ///
    /// As for [`lock`](Locker::lock).
    fn try_lock(&self) -> Result<Option<Acquired>>;

    /// Waits at most `timeout` for the lock.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`](crate::Error::Timeout) when the time elapsed before the lock was taken;
    /// otherwise as for [`lock`](Locker::lock).
    fn try_lock_for(&self, timeout: Duration) -> Result<Acquired>;

    /// Releases the lock.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`](crate::Error::NotHeld) when this owner does not hold the lock (it is
    /// unlocked, or another owner holds it); nothing is changed then.
    fn unlock(&self) -> Result<()>;

    /// Marks the id free for a later allocation. The handle stays usable.
    ///
    /// # Errors
    ///
    /// [`Error::NotAllocated`](crate::Error::NotAllocated) when the id is not allocated (a double
    /// free); [`Error::Unsupported`](crate::Error::Unsupported) for single named locks.
    fn free(&self) -> Result<()>;

    /// Locks and returns a guard that unlocks when dropped.
    ///
    /// # Errors
    ///
    /// As for [`lock`](Locker::lock).
    fn guard(&self) -> Result<LockGuard<'_, Self>>
    where
        Self: Sized,
    {
        let acquired = self.lock()?;
        Ok(LockGuard::new(self, acquired))
    }

    /// Tries to lock without waiting and returns a guard when the lock was taken.
    ///
    /// # Errors
    ///
    /// As for [`try_lock`](Locker::try_lock).
    fn try_guard(&self) -> Result<Option<LockGuard<'_, Self>>>
    where
        Self: Sized,
    {
        Ok(self
            .try_lock()?
            .map(|acquired| LockGuard::new(self, acquired)))
    }
}

impl<L: Locker + ?Sized> Locker for Box<L> {
    #[inline]
    fn id(&self) -> LockId {
        (**self).id()
    }
    #[inline]
    fn lock(&self) -> Result<Acquired> {
        (**self).lock()
    }
    #[inline]
    fn try_lock(&self) -> Result<Option<Acquired>> {
        (**self).try_lock()
    }
    #[inline]
    fn try_lock_for(&self, timeout: Duration) -> Result<Acquired> {
        (**self).try_lock_for(timeout)
    }
    #[inline]
    fn unlock(&self) -> Result<()> {
        (**self).unlock()
    }
    #[inline]
    fn free(&self) -> Result<()> {
        (**self).free()
    }
}

impl<L: Locker + ?Sized> Locker for std::sync::Arc<L> {
    #[inline]
    fn id(&self) -> LockId {
        (**self).id()
    }
    #[inline]
    fn lock(&self) -> Result<Acquired> {
        (**self).lock()
    }
    #[inline]
    fn try_lock(&self) -> Result<Option<Acquired>> {
        (**self).try_lock()
    }
    #[inline]
    fn try_lock_for(&self, timeout: Duration) -> Result<Acquired> {
        (**self).try_lock_for(timeout)
    }
    #[inline]
    fn unlock(&self) -> Result<()> {
        (**self).unlock()
    }
    #[inline]
    fn free(&self) -> Result<()> {
        (**self).free()
    }
}
