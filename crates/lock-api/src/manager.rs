//! The `Manager` trait: a table of numbered locks, and its object-safe form.

use std::time::SystemTime;

use crate::{LockId, Locker, Result};

/// Who holds a lock, as far as the backend knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The holder's process id (in the pid namespace the holder recorded).
    pub pid: Option<u32>,
    /// The holder's host name, for backends that span hosts.
    pub host: Option<String>,
    /// A backend-specific owner description (a client slot, a lease id).
    pub owner: Option<String>,
    /// When the holder acquired the lock.
    pub since: Option<SystemTime>,
    /// When the holder's claim expires unless renewed (leased backends).
    pub expires: Option<SystemTime>,
}

impl Holder {
    /// A holder known only by its process id.
    pub fn with_pid(pid: u32) -> Self {
        Holder {
            pid: Some(pid),
            ..Holder::default()
        }
    }
}

/// One held lock, as reported by [`Manager::held`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeldLock {
    /// The held lock.
    pub id: LockId,
    /// Its holder, where the backend knows it.
    pub holder: Option<Holder>,
}

impl HeldLock {
    /// A held lock and, where known, its holder.
    pub fn new(id: LockId, holder: Option<Holder>) -> Self {
        HeldLock { id, holder }
    }
}

/// A table of numbered locks shared by every process that opens it.
///
/// Allocation state is separate from lock state: allocating marks an id as in use by some
/// container, pod or volume; locking serialises work on it.
pub trait Manager: Send + Sync {
    /// The handle type for one lock of this table.
    type Locker: Locker;

    /// Allocates the lowest free id and returns a handle on it.
    ///
    /// An id is never returned twice until it is freed, across threads and processes.
    ///
    /// # Errors
    ///
    /// [`Error::Exhausted`](crate::Error::Exhausted) when every lock is allocated.
    fn allocate(&self) -> Result<Self::Locker>;

    /// Returns a handle on lock `id`, allocated or not.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`](crate::Error::OutOfRange) when `id >= capacity`.
    fn retrieve(&self, id: LockId) -> Result<Self::Locker>;

    /// Marks `id` allocated and returns a handle on it (rebuilds allocations after a reboot).
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyAllocated`](crate::Error::AlreadyAllocated) when it is allocated;
    /// [`Error::OutOfRange`](crate::Error::OutOfRange) when `id >= capacity`.
    fn allocate_and_retrieve(&self, id: LockId) -> Result<Self::Locker>;

    /// Frees every allocation. Held locks stay held.
    ///
    /// This is dangerous by design: any process still using an id it allocated now shares it
    /// with the next allocation. It exists for recovery (Podman's `system renumber`), when the
    /// caller is about to re-allocate every id itself with
    /// [`allocate_and_retrieve`](Manager::allocate_and_retrieve).
    ///
    /// # Errors
    ///
    /// Backend errors only (a damaged store, an OS error).
    fn free_all(&self) -> Result<()>;

    /// The number of locks in the table, or `None` when it is unbounded.
    fn capacity(&self) -> Option<u32>;

    /// The number of locks that can still be allocated, or `None` when unbounded.
    ///
    /// # Errors
    ///
    /// Backend errors only.
    fn available(&self) -> Result<Option<u32>>;

    /// Every lock currently held by anyone, in id order, with its holder where known.
    ///
    /// The answer is a snapshot: locks may be taken or released while it is being read.
    ///
    /// # Errors
    ///
    /// Backend errors only.
    fn held(&self) -> Result<Vec<HeldLock>>;
}

/// A lock handle of any backend.
pub type DynLocker = Box<dyn Locker>;

/// A manager of any backend, picked at run time (Podman chooses its lock backend from
/// configuration). Build one with [`BoxedManager::boxed`].
pub type DynManager = dyn Manager<Locker = DynLocker>;

/// Adapts any [`Manager`] to [`DynManager`] by boxing its handles.
#[derive(Debug)]
pub struct BoxedManager<M>(pub M);

impl<M> BoxedManager<M>
where
    M: Manager + 'static,
    M::Locker: 'static,
{
    /// Wraps `manager` as a `Box<DynManager>`.
    pub fn boxed(manager: M) -> Box<DynManager> {
        Box::new(BoxedManager(manager))
    }
}

impl<M> Manager for BoxedManager<M>
where
    M: Manager,
    M::Locker: 'static,
{
    type Locker = DynLocker;

    fn allocate(&self) -> Result<DynLocker> {
        Ok(Box::new(self.0.allocate()?))
    }
    fn retrieve(&self, id: LockId) -> Result<DynLocker> {
        Ok(Box::new(self.0.retrieve(id)?))
    }
    fn allocate_and_retrieve(&self, id: LockId) -> Result<DynLocker> {
        Ok(Box::new(self.0.allocate_and_retrieve(id)?))
    }
    fn free_all(&self) -> Result<()> {
        self.0.free_all()
    }
    fn capacity(&self) -> Option<u32> {
        self.0.capacity()
    }
    fn available(&self) -> Result<Option<u32>> {
        self.0.available()
    }
    fn held(&self) -> Result<Vec<HeldLock>> {
        self.0.held()
    }
}
