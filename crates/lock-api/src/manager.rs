//! The `Manager` trait: a table of numbered locks, and its object-safe form.

use std::time::{Duration, SystemTime};

use crate::{Error, LockId, Locker, Result};

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
    /// The holder is known to be dead: the next acquirer will get
    /// [`Acquired::OwnerDied`](crate::Acquired::OwnerDied).
    pub dead: bool,
    /// The lock's record of its holder cannot be read (damaged, or of another format): the lock
    /// is taken, by a holder nothing is known of, and only an operator can free it. The other
    /// fields are then `None`.
    pub damaged: bool,
}

impl Holder {
    /// A holder known only by its process id.
    pub fn with_pid(pid: u32) -> Self {
        Holder {
            pid: Some(pid),
            ..Holder::default()
        }
    }

    /// Sets the process id.
    #[must_use]
    pub fn pid(mut self, pid: u32) -> Self {
        self.pid = Some(pid);
        self
    }

    /// Sets the host name.
    #[must_use]
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Sets the owner description: the key that tells owners apart in a wait-for graph.
    #[must_use]
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Sets when the holder acquired the lock (or the waiter started waiting).
    #[must_use]
    pub fn since(mut self, since: SystemTime) -> Self {
        self.since = Some(since);
        self
    }

    /// Sets when the claim expires.
    #[must_use]
    pub fn expires(mut self, expires: SystemTime) -> Self {
        self.expires = Some(expires);
        self
    }

    /// Marks the holder dead (or alive).
    #[must_use]
    pub fn dead(mut self, dead: bool) -> Self {
        self.dead = dead;
        self
    }

    /// Marks the holder's record damaged (see [`damaged`](Holder::damaged)).
    #[must_use]
    pub fn damaged(mut self, damaged: bool) -> Self {
        self.damaged = damaged;
        self
    }
}

/// One lock that is held or waited for, as reported by [`Manager::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockState {
    /// The lock.
    pub id: LockId,
    /// Its holder, `None` when it is free (a waiter may be about to take it).
    pub holder: Option<Holder>,
    /// The owners waiting for it, each with `since` = when it started waiting.
    pub waiters: Vec<Holder>,
}

impl LockState {
    /// A lock, its holder and its waiters.
    pub fn new(id: LockId, holder: Option<Holder>, waiters: Vec<Holder>) -> Self {
        LockState {
            id,
            holder,
            waiters,
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

    /// Every lock that is held or waited for, in id order, with its holder and its waiters.
    ///
    /// A lock whose holder is known dead is listed with [`Holder::dead`] set. The answer is a
    /// snapshot: locks may be taken or released while it is being read. The default lists the
    /// locks of [`held`](Manager::held) with no waiters, for backends that do not record them.
    ///
    /// # Errors
    ///
    /// Backend errors only.
    fn snapshot(&self) -> Result<Vec<LockState>> {
        Ok(self
            .held()?
            .into_iter()
            .map(|h| LockState::new(h.id, h.holder, Vec::new()))
            .collect())
    }

    /// The other managers that have this store open now, in any process: one [`Holder`] each
    /// (pid, host, owner key; `since` where the backend records it), never this manager itself
    /// and never a manager known to be dead or closed. What an operator asks before removing a
    /// store: a manager that has it open keeps using the removed store, which the managers
    /// opened afterwards no longer see, so the two would not exclude each other.
    ///
    /// The answer is a snapshot: managers may open or close the store while it is being read.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for backends that do not know who has a store open (the default);
    /// backend errors otherwise.
    fn clients(&self) -> Result<Vec<Holder>> {
        Err(Error::Unsupported(
            "listing the managers that have the store open",
        ))
    }

    /// How long a blocked [`lock`](Locker::lock) waits before it checks for a deadlock.
    /// `None` when this manager does not detect deadlocks (or detection is turned off).
    fn deadlock_timeout(&self) -> Option<Duration> {
        None
    }

    /// Sets how long a blocked `lock` waits before it checks for a deadlock (default 1 s, as
    /// PostgreSQL's `deadlock_timeout`); zero turns detection off for this manager.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for backends that do not detect deadlocks.
    fn set_deadlock_timeout(&self, timeout: Duration) -> Result<()> {
        let _ = timeout;
        Err(Error::Unsupported("deadlock detection"))
    }
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
    fn snapshot(&self) -> Result<Vec<LockState>> {
        self.0.snapshot()
    }
    fn clients(&self) -> Result<Vec<Holder>> {
        self.0.clients()
    }
    fn deadlock_timeout(&self) -> Option<Duration> {
        self.0.deadlock_timeout()
    }
    fn set_deadlock_timeout(&self, timeout: Duration) -> Result<()> {
        self.0.set_deadlock_timeout(timeout)
    }
}
