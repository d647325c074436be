//! The in-process table: one atomic state word per lock and a few shared parking spots.
//!
//! A lock's state word is `0` when free, otherwise `owner << 1`, with [`WAITERS`] set while
//! someone sleeps on it. Owners are numbered per [`MemManager`] from 1, so no owner is `0`.
//! Sleepers park on one of [`SPOTS`] mutex/condvar pairs chosen by id; an unlocker that clears
//! a word with `WAITERS` set takes that spot's mutex before notifying, and a sleeper re-checks the
//! word under the same mutex, so no wake-up is lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lock_api::{Acquired, Error, HeldLock, Holder, LockId, Locker, Manager, Result};

use crate::bitmap::FreeSet;

const FREE: u64 = 0; // nobody holds the lock
const WAITERS: u64 = 1; // someone sleeps on it (or did: a spurious wake is harmless)
const SPOTS: usize = 64;

/// The largest table lock-mem builds (8 bytes of state per lock, plus the bitmap).
pub const MAX_CAPACITY: u32 = 1 << 24;

static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
struct Table {
    capacity: u32,
    states: Box<[AtomicU64]>,
    spots: Box<[(Mutex<()>, Condvar)]>,
    allocation: Mutex<FreeSet>,
}

impl Table {
    fn spot(&self, id: u32) -> &(Mutex<()>, Condvar) {
        &self.spots[id as usize % SPOTS]
    }

    fn allocation(&self) -> MutexGuard<'_, FreeSet> {
        // The set is consistent after every operation, so a panic elsewhere cannot poison it.
        self.allocation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn check(&self, id: LockId) -> Result<()> {
        if id.get() < self.capacity {
            Ok(())
        } else {
            Err(Error::OutOfRange {
                id,
                capacity: self.capacity,
            })
        }
    }
}

/// An owner of an in-process lock table.
///
/// Cloning a manager gives the same owner; [`MemManager::new_owner`] gives another owner of the
/// same table.
#[derive(Debug, Clone)]
pub struct MemManager {
    table: Arc<Table>,
    owner: u64,
}

impl MemManager {
    /// A new table of `capacity` locks, all free and unallocated.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `capacity` is zero or above [`MAX_CAPACITY`].
    pub fn new(capacity: u32) -> Result<MemManager> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(Error::invalid(format!(
                "capacity {capacity}: a lock-mem table has 1 to {MAX_CAPACITY} locks"
            )));
        }
        let table = Table {
            capacity,
            states: (0..capacity).map(|_| AtomicU64::new(FREE)).collect(),
            spots: (0..SPOTS)
                .map(|_| (Mutex::new(()), Condvar::new()))
                .collect(),
            allocation: Mutex::new(FreeSet::full(capacity)),
        };
        Ok(MemManager {
            table: Arc::new(table),
            owner: next_owner(),
        })
    }

    /// Another owner of the same table, as another process opening a shared store would be.
    pub fn new_owner(&self) -> MemManager {
        MemManager {
            table: Arc::clone(&self.table),
            owner: next_owner(),
        }
    }

    fn locker(&self, id: LockId) -> MemLocker {
        MemLocker {
            table: Arc::clone(&self.table),
            mine: self.owner << 1,
            id: id.get(),
        }
    }
}

fn next_owner() -> u64 {
    NEXT_OWNER.fetch_add(1, Ordering::Relaxed)
}

impl Manager for MemManager {
    type Locker = MemLocker;

    fn allocate(&self) -> Result<MemLocker> {
        let id = self
            .table
            .allocation()
            .take_first()
            .ok_or(Error::Exhausted {
                capacity: self.table.capacity,
            })?;
        Ok(self.locker(LockId(id)))
    }

    fn retrieve(&self, id: LockId) -> Result<MemLocker> {
        self.table.check(id)?;
        Ok(self.locker(id))
    }

    fn allocate_and_retrieve(&self, id: LockId) -> Result<MemLocker> {
        self.table.check(id)?;
        if !self.table.allocation().take(id.get()) {
            return Err(Error::AlreadyAllocated(id));
        }
        Ok(self.locker(id))
    }

    fn free_all(&self) -> Result<()> {
        self.table.allocation().fill(self.table.capacity);
        Ok(())
    }

    fn capacity(&self) -> Option<u32> {
        Some(self.table.capacity)
    }

    fn available(&self) -> Result<Option<u32>> {
        Ok(Some(self.table.allocation().free()))
    }

    fn held(&self) -> Result<Vec<HeldLock>> {
        let pid = std::process::id();
        Ok(self
            .table
            .states
            .iter()
            .enumerate()
            .filter_map(|(id, state)| {
                let owner = state.load(Ordering::Acquire) >> 1;
                (owner != 0).then(|| {
                    let mut holder = Holder::with_pid(pid);
                    holder.owner = Some(format!("lock-mem owner {owner}"));
                    HeldLock::new(LockId(id as u32), Some(holder))
                })
            })
            .collect())
    }
}

/// A handle on one lock of a [`MemManager`]'s table, acting for that manager's owner.
#[derive(Debug, Clone)]
pub struct MemLocker {
    table: Arc<Table>,
    mine: u64, // owner << 1: the state word while this owner holds the lock
    id: u32,
}

impl MemLocker {
    #[inline]
    fn state(&self) -> &AtomicU64 {
        // `id < capacity == states.len()` was checked when the handle was made.
        &self.table.states[self.id as usize]
    }

    #[inline]
    fn try_acquire(&self) -> bool {
        self.state()
            .compare_exchange(FREE, self.mine, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Sleeps until the lock is taken or `deadline` passes; returns whether it was taken.
    #[cold]
    fn lock_contended(&self, deadline: Option<Instant>) -> bool {
        let state = self.state();
        let (mutex, condvar) = self.table.spot(self.id);
        let mut guard = mutex.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let current = state.load(Ordering::Relaxed);
            if current == FREE {
                // Keep WAITERS set on acquisition: others may still sleep on this word.
                if state
                    .compare_exchange(
                        FREE,
                        self.mine | WAITERS,
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    return true;
                }
                continue;
            }
            if current & WAITERS == 0
                && state
                    .compare_exchange(
                        current,
                        current | WAITERS,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_err()
            {
                continue;
            }
            guard = match deadline {
                None => condvar.wait(guard).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    condvar
                        .wait_timeout(guard, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    #[cold]
    fn wake(&self) {
        let (mutex, condvar) = self.table.spot(self.id);
        drop(mutex.lock().unwrap_or_else(PoisonError::into_inner));
        condvar.notify_all();
    }
}

impl Locker for MemLocker {
    fn id(&self) -> LockId {
        LockId(self.id)
    }

    #[inline]
    fn lock(&self) -> Result<Acquired> {
        if !self.try_acquire() {
            self.lock_contended(None);
        }
        Ok(Acquired::Clean)
    }

    #[inline]
    fn try_lock(&self) -> Result<Option<Acquired>> {
        Ok(self.try_acquire().then_some(Acquired::Clean))
    }

    fn try_lock_for(&self, timeout: Duration) -> Result<Acquired> {
        if self.try_acquire() {
            return Ok(Acquired::Clean);
        }
        // A timeout too large for Instant is as good as none.
        let deadline = Instant::now().checked_add(timeout);
        if self.lock_contended(deadline) {
            Ok(Acquired::Clean)
        } else {
            Err(Error::Timeout)
        }
    }

    #[inline]
    fn unlock(&self) -> Result<()> {
        let state = self.state();
        match state.compare_exchange(self.mine, FREE, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => Ok(()),
            Err(current) if current == self.mine | WAITERS => {
                state.store(FREE, Ordering::Release);
                self.wake();
                Ok(())
            }
            Err(_) => Err(Error::NotHeld(LockId(self.id))),
        }
    }

    fn free(&self) -> Result<()> {
        if self.table.allocation().put(self.id) {
            Ok(())
        } else {
            Err(Error::NotAllocated(LockId(self.id)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_capacities_are_invalid_arguments() {
        assert!(matches!(
            MemManager::new(0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            MemManager::new(MAX_CAPACITY + 1),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn owners_are_distinct_and_clones_share_one() {
        let manager = MemManager::new(2).expect("table");
        let clone = manager.clone();
        let other = manager.new_owner();
        let lock = manager.retrieve(LockId(0)).expect("retrieve");
        assert_eq!(lock.lock().expect("lock"), Acquired::Clean);
        assert!(matches!(
            other.retrieve(LockId(0)).expect("retrieve").unlock(),
            Err(Error::NotHeld(LockId(0)))
        ));
        clone
            .retrieve(LockId(0))
            .expect("retrieve")
            .unlock()
            .expect("same owner unlocks");
    }
}
