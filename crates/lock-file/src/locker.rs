//! `FileLocker`: one lock of a store, acting for its manager.

use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use lock_api::{Acquired, Error, Holder, Inspect, LockId, Locker, Result};

use crate::flock;
use crate::manager::Shared;
use crate::slot::{Phase, Slot, State};

/// A handle on one lock of a [`FileManager`](crate::FileManager)'s store.
///
/// Handles are cheap to clone; every handle of one manager and id is the same lock held by the
/// same owner, so a lock taken through one handle or thread may be released through another.
///
/// Re-locking is not re-entrant: [`lock`](Locker::lock) of a lock this manager already holds
/// waits until some thread of the manager unlocks it, and [`try_lock`](Locker::try_lock)
/// returns `Ok(None)`.
#[derive(Debug, Clone)]
pub struct FileLocker {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
}

impl FileLocker {
    pub(crate) fn new(shared: Arc<Shared>, slot: Arc<Slot>) -> FileLocker {
        FileLocker { shared, slot }
    }

    /// The lock file's path, for errors only (building it allocates).
    fn path(&self) -> std::path::PathBuf {
        self.shared.lock_path(self.slot.id)
    }

    /// Takes the lock if this owner is idle on it and no other owner holds it: one mutex and
    /// one non-blocking `flock`. `None` means "go the slow way".
    ///
    /// Inlined into the caller on purpose, down to the system call: see
    /// `flock::try_lock_fast` for why every frame counts here.
    #[inline(always)]
    fn try_fast(&self) -> Option<(MutexGuard<'_, State>, bool)> {
        let slot = &*self.slot;
        let state = slot.state();
        if state.phase != Phase::Idle {
            return Some((state, false));
        }
        match flock::try_lock_fast(&slot.file) {
            Ok(taken) => Some((state, taken)),
            // Errors (even EINTR) are rare: the slow path retries and reports them.
            Err(_) => None,
        }
    }

    /// Takes the lock, waiting until `deadline` (`None`: for ever).
    #[cold]
    #[inline(never)]
    fn acquire(&self, deadline: Option<Instant>) -> Result<Acquired> {
        let slot = &*self.slot;
        let mut state = slot.state();
        // This owner's threads take turns: wait while another of them holds or is taking it.
        while state.phase != Phase::Idle {
            state = match deadline {
                None => slot.wait(state),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Error::Timeout);
                    }
                    slot.wait_timeout(state, deadline - now)
                }
            };
        }
        if flock::try_lock(&slot.file, &|| self.path())? {
            return Ok(self.claimed(&mut state));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::Timeout);
        }
        self.acquire_contended(state, deadline)
    }

    /// Waits for another owner to release the lock, with the slot marked `Acquiring` so this
    /// owner's other threads wait for this one.
    #[cold]
    fn acquire_contended(
        &self,
        mut state: MutexGuard<'_, State>,
        deadline: Option<Instant>,
    ) -> Result<Acquired> {
        let slot = &*self.slot;
        state.phase = Phase::Acquiring;
        drop(state);
        let path = || self.path();
        let taken = match deadline {
            None => flock::lock(&slot.file, &path).map(|()| true),
            Some(deadline) => flock::lock_until(&slot.file, &path, deadline),
        };
        let mut state = slot.state();
        match taken {
            Ok(true) => Ok(self.claimed(&mut state)),
            Ok(false) => {
                slot.set_idle(&mut state);
                Err(Error::Timeout)
            }
            Err(e) => {
                slot.set_idle(&mut state);
                Err(e)
            }
        }
    }

    /// Records the acquisition just made by `flock` and reports how the lock was left.
    #[inline(always)]
    fn claimed(&self, state: &mut MutexGuard<'_, State>) -> Acquired {
        state.phase = Phase::Held;
        if self.shared.owner_death && self.shared.record(self.slot.id).claim(self.shared.pid) {
            Acquired::OwnerDied
        } else {
            Acquired::Clean
        }
    }
}

impl FileLocker {
    /// `try_lock` after the fast path met an error: once more, reporting errors.
    #[cold]
    #[inline(never)]
    fn try_lock_slow(&self) -> Result<Option<Acquired>> {
        let slot = &*self.slot;
        let mut state = slot.state();
        if state.phase != Phase::Idle {
            return Ok(None);
        }
        if flock::try_lock(&slot.file, &|| self.path())? {
            Ok(Some(self.claimed(&mut state)))
        } else {
            Ok(None)
        }
    }

    /// `unlock` after `flock(LOCK_UN)` failed: once more (retrying `EINTR`), and if it still
    /// fails the lock is still held, so the claim is put back and the error returned.
    #[cold]
    #[inline(never)]
    fn unlock_slow(&self, mut state: MutexGuard<'_, State>) -> Result<()> {
        let slot = &*self.slot;
        match flock::unlock(&slot.file, &|| self.path()) {
            Ok(()) => {
                slot.set_idle(&mut state);
                Ok(())
            }
            Err(e) => {
                if self.shared.owner_death {
                    self.shared.record(slot.id).reclaim(self.shared.pid);
                }
                Err(e)
            }
        }
    }
}

impl Locker for FileLocker {
    #[inline]
    fn id(&self) -> LockId {
        LockId(self.slot.id)
    }

    // Always inlined: see `flock::try_lock_fast`.
    #[inline(always)]
    fn lock(&self) -> Result<Acquired> {
        if let Some((mut state, true)) = self.try_fast() {
            return Ok(self.claimed(&mut state));
        }
        self.acquire(None)
    }

    #[inline(always)]
    fn try_lock(&self) -> Result<Option<Acquired>> {
        match self.try_fast() {
            Some((mut state, true)) => Ok(Some(self.claimed(&mut state))),
            Some((_, false)) => Ok(None),
            None => self.try_lock_slow(),
        }
    }

    fn try_lock_for(&self, timeout: Duration) -> Result<Acquired> {
        // A timeout too large to add to now is as good as none.
        self.acquire(Instant::now().checked_add(timeout))
    }

    #[inline(always)]
    fn unlock(&self) -> Result<()> {
        let slot = &*self.slot;
        let mut state = slot.state();
        if state.phase != Phase::Held {
            return Err(Error::NotHeld(self.id()));
        }
        if self.shared.owner_death {
            self.shared.record(slot.id).release();
        }
        match flock::unlock_fast(&slot.file) {
            Ok(()) => {
                slot.set_idle(&mut state);
                Ok(())
            }
            Err(_) => self.unlock_slow(state),
        }
    }

    fn free(&self) -> Result<()> {
        let id = self.slot.id;
        if self.shared.with_bitmap(|b| b.clear(id))? {
            Ok(())
        } else {
            Err(Error::NotAllocated(self.id()))
        }
    }
}

impl Inspect for FileLocker {
    /// The holder's pid and acquisition time from its owner record, or an empty [`Holder`] when
    /// the store keeps no records; `None` when the lock is free or its holder died.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the lock file cannot be opened for the probe. A damaged lock file
    /// (`Corrupt`) cannot be probed: the record is reported as it stands.
    fn holder(&self) -> Result<Option<Holder>> {
        self.shared.holder(self.slot.id)
    }
}
