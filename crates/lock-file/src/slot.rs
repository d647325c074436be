//! One manager's view of one lock: its own open description of the lock file, and which phase
//! this owner is in, so that the owner's threads take turns.
//!
//! `flock` on one open description never conflicts with itself, so without this state a second
//! thread of the same owner would "acquire" a lock its owner already holds. Instead each slot is
//! `Idle`, `Acquiring` (one thread of this owner is inside a blocking or polling `flock`) or
//! `Held`; a thread of the owner that finds it not `Idle` waits on the slot's condvar like any
//! other waiter, and `try_lock` returns `None`. This is what makes same-owner re-locking wait
//! instead of succeeding re-entrantly.
//!
//! The cache keeps one slot per id this manager has touched while a handle exists or the lock is
//! held; idle slots without handles are closed once the cache grows, so a process that walks
//! over many ids does not run out of descriptors.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// Cached slots below this count are never evicted.
const MIN_CACHE: usize = 256;

/// Where this owner stands with one lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// This owner neither holds nor is taking the lock.
    Idle,
    /// One thread of this owner is inside `flock`, blocking or polling.
    Acquiring,
    /// This owner holds the lock.
    Held,
}

/// The in-process state of a slot, under its mutex.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) phase: Phase,
    /// Threads of this owner waiting for the phase to become `Idle`.
    pub(crate) waiters: u32,
}

/// One lock as seen by one manager.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) id: u32,
    /// This manager's own open description of the lock file: the `flock` is on it.
    pub(crate) file: File,
    state: Mutex<State>,
    changed: Condvar,
}

impl Slot {
    /// A fresh, idle slot on `file`.
    pub(crate) fn new(id: u32, file: File) -> Slot {
        Slot {
            id,
            file,
            state: Mutex::new(State {
                phase: Phase::Idle,
                waiters: 0,
            }),
            changed: Condvar::new(),
        }
    }

    /// Locks the state. A panic while it was held cannot leave it inconsistent (every update is
    /// a single assignment), so poisoning is ignored.
    #[inline]
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a change of phase.
    pub(crate) fn wait<'a>(&self, mut guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        guard.waiters += 1;
        let mut guard = self
            .changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner);
        guard.waiters -= 1;
        guard
    }

    /// Waits at most `timeout` for a change of phase.
    pub(crate) fn wait_timeout<'a>(
        &self,
        mut guard: MutexGuard<'a, State>,
        timeout: std::time::Duration,
    ) -> MutexGuard<'a, State> {
        guard.waiters += 1;
        let mut guard = self
            .changed
            .wait_timeout(guard, timeout)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        guard.waiters -= 1;
        guard
    }

    /// Sets the phase to `Idle` and wakes this owner's waiting threads, if any.
    #[inline]
    pub(crate) fn set_idle(&self, guard: &mut MutexGuard<'_, State>) {
        guard.phase = Phase::Idle;
        if guard.waiters > 0 {
            // Every waiter rechecks; waking all avoids losing the wake-up to one that times out.
            self.changed.notify_all();
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
            .retain(|_, slot| Arc::strong_count(slot) > 1 || slot.state().phase != Phase::Idle);
        self.limit = MIN_CACHE.max(self.slots.len() * 2);
    }
}
