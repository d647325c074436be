//! `ShmManager` and `ShmLocker`: the lock table over a segment.
#![allow(unsafe_code)] // reason: a locker keeps its lock word's address, checked once
//!
//! # Invariants
//!
//! 1. `ShmLocker::word` is the address of the locker's lock word, taken from the bounds- and
//!    alignment-checked reference `Shared::word(id)` when the locker was made; it points into the
//!    mapping of `shared.seg`, which lives exactly as long as that `Shared` (segment.rs,
//!    invariant 1), and every locker holds an `Arc` of it. So the fast paths dereference it
//!    without checking anything again.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use lock_api::{
    Acquired, Error, HeldLock, Holder, Inspect, LockId, LockState, Locker, Manager, Result, Store,
    StoreSpec, wrong_scheme,
};

use crate::bitmap::Bitmap;
use crate::client::{self, Probe};
use crate::futex;
use crate::layout::{Layout, field};
use crate::life::Sentinel;
use crate::segment::{self, Le32, Segment, SlotLock};
use crate::turn::Turn;
use crate::wait::LockWaiter;
use crate::watch::Watchers;
use lockyard_fork as fork;

/// How long a blocked `lock` waits before it checks for a deadlock, unless set otherwise
/// ([`Manager::set_deadlock_timeout`]); PostgreSQL's `deadlock_timeout` default.
pub const DEFAULT_DEADLOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// What every handle of one open manager shares: the mapping, its layout, and the client slot
/// that makes this manager an owner.
pub(crate) struct Shared {
    pub(crate) seg: Segment,
    pub(crate) layout: Layout,
    /// The thread whose exit marks this manager's life word (life.rs), if one could be started.
    /// Declared before `slot_lock`, so a dropped manager's death is told before its slot goes.
    #[allow(dead_code, reason = "held for its thread, stopped when it is dropped")]
    sentinel: Option<Sentinel>,
    /// The description that holds this manager's client slot (not mapped: segment.rs). Never
    /// read: it is held so that dropping the manager releases the slot.
    #[allow(
        dead_code,
        reason = "held for its OFD lock, released when it is dropped"
    )]
    slot_lock: SlotLock,
    /// The threads that watch the owners this manager waits for (watch.rs).
    pub(crate) watchers: Arc<Watchers>,
    name: String,
    pub(crate) slot: u32,
    pub(crate) token: u32,
    /// The fork generation this manager was opened in (fork.rs): any other means that this
    /// process is a forked child that inherited the manager.
    forks: u32,
    /// The process that opened it, for the error a forked child gets.
    pid: u32,
    /// The inode of that process's pid namespace (0: unknown), recorded in its slot: holders
    /// in another namespace are listed without a pid (client.rs, `pid_of`).
    pub(crate) pid_ns: u32,
    /// The segment's epoch (unix seconds), the origin of the since words.
    pub(crate) epoch: u64,
    /// The deadlock timeout in milliseconds; 0 turns detection off.
    pub(crate) deadlock_ms: AtomicU64,
    /// Which waiter entries of this manager's slot are taken (bit i: entry i), so that its
    /// threads never share one (client.rs, "Waiter entries").
    pub(crate) entries: AtomicU8,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closed, not killed: a new manager may take this slot before a dead one's (client.rs).
        // A forked child's copy is its parent's manager, which is not closing.
        if fork::current() == self.forks {
            let (slot, generation) = client::decode(self.token);
            let _ = client::mark_closed(&self.seg, &self.layout, slot, generation);
        }
    }
}

impl Shared {
    fn attach(name: &str, seg: Segment, layout: Layout) -> Result<Shared> {
        let forks = fork::generation()?;
        let slot_lock = seg.slot_description()?;
        let watchers = Watchers::new(&seg, &layout)?;
        let pid_ns = lockyard_fork::pid_namespace();
        let (slot, generation) = client::claim(&seg, &layout, &slot_lock, pid_ns)?;
        // After the claim: a remover that did not see it has unlinked the name, or is deciding.
        if let Err(e) = seg.not_removed() {
            let _ = client::mark_closed(&seg, &layout, slot, generation);
            return Err(e);
        }
        // Armed before any lock word can hold this manager's token.
        let sentinel = Sentinel::start(Arc::clone(&watchers), slot, forks);
        let epoch = seg.u64(field::EPOCH)?.load(Relaxed);
        let shared = Shared {
            seg,
            layout,
            sentinel,
            slot_lock,
            watchers,
            name: name.to_owned(),
            slot,
            token: client::token(slot, generation),
            forks,
            pid: std::process::id(),
            pid_ns,
            epoch,
            deadlock_ms: AtomicU64::new(DEFAULT_DEADLOCK_TIMEOUT.as_millis() as u64),
            entries: AtomicU8::new(0),
        };
        shared.repair_count()?;
        Ok(shared)
    }

    /// Fails when this process is a forked child of the one that opened the manager. One relaxed
    /// load and a compare: it sits on every operation, the uncontended lock and unlock included.
    #[inline]
    pub(crate) fn usable(&self) -> Result<()> {
        if fork::current() != self.forks {
            return Err(self.forked());
        }
        Ok(())
    }

    #[cold]
    fn forked(&self) -> Error {
        Error::invalid(format!(
            "this manager of segment {} was opened by process {} and inherited across fork(2) by process {}; \
             a forked child shares its parent's owner identity, so it must open its own manager \
             (ShmManager::open) and drop the inherited one",
            self.seg.path().display(),
            self.pid,
            std::process::id()
        ))
    }

    pub(crate) fn owner_dead(&self, owner: u32, probe: Probe) -> Result<bool> {
        if owner == self.token {
            return Ok(false);
        }
        client::owner_dead(&self.seg, &self.layout, owner, probe)
    }

    fn check(&self, id: LockId) -> Result<()> {
        self.usable()?;
        if id.get() >= self.layout.capacity {
            return Err(Error::OutOfRange {
                id,
                capacity: self.layout.capacity,
            });
        }
        Ok(())
    }

    #[inline]
    pub(crate) fn word(&self, id: u32) -> Result<&Le32> {
        self.seg.u32(self.layout.lock_offset(id))
    }

    /// Lock `id`'s since word (observe.rs).
    pub(crate) fn since_word(&self, id: u32) -> Result<&Le32> {
        self.seg.u32(self.layout.since_at(id))
    }

    /// Runs `f` under the segment-wide allocation lock. When the previous holder died inside its
    /// critical section, the summaries and the counter are rebuilt from the leaf bits first.
    fn with_alloc_lock<T>(&self, f: impl FnOnce(&Bitmap<'_>, &Le32) -> Result<T>) -> Result<T> {
        self.usable()?;
        let word = self.seg.u32(field::ALLOC_LOCK)?;
        let bitmap = Bitmap::new(&self.seg, &self.layout);
        let count = self.seg.u32(field::ALLOCATED)?;
        futex::with_lock(
            word,
            self.token,
            |o| self.owner_dead(o, Probe::Kernel),
            || self.alloc_lock_stolen(),
            || {
                let allocated = bitmap.rebuild()?;
                count.store(allocated, Relaxed);
                Ok(())
            },
            || f(&bitmap, count),
        )
    }

    #[cold]
    fn alloc_lock_stolen(&self) -> Error {
        Error::corrupt(format!(
            "segment {}: allocation lock was taken from a live holder",
            self.seg.path().display()
        ))
    }

    /// At open: repairs a wrong `allocated` counter from the leaf bits, when the allocation lock
    /// is free or its holder dead (a live holder may be between its bit and its count, and
    /// allocation repairs the counter whenever it is out of step anyway). Never waits.
    fn repair_count(&self) -> Result<()> {
        let word = self.seg.u32(field::ALLOC_LOCK)?;
        let Some(acquired) =
            futex::try_lock(word, self.token, |o| self.owner_dead(o, Probe::Kernel))?
        else {
            return Ok(());
        };
        let bitmap = Bitmap::new(&self.seg, &self.layout);
        let count = self.seg.u32(field::ALLOCATED)?;
        let result = (|| {
            let allocated = if acquired.owner_died() {
                bitmap.rebuild()?
            } else {
                bitmap.count()?
            };
            if count.load(Relaxed) != allocated {
                count.store(allocated, Relaxed);
            }
            Ok(())
        })();
        if !futex::unlock(word, self.token, || false)? {
            return Err(self.alloc_lock_stolen());
        }
        result
    }

    /// The deadlock timeout, `None` when detection is off.
    pub(crate) fn deadlock_timeout(&self) -> Option<Duration> {
        match self.deadlock_ms.load(Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

/// Moves the `allocated` counter one up (after a leaf bit was set) or down (after one was
/// cleared). A counter that cannot be right (it would pass the capacity or go below zero) is
/// recounted from the leaves instead, so it never exceeds the capacity and a wrong one heals.
fn step_count(bitmap: &Bitmap<'_>, count: &Le32, capacity: u32, up: bool) -> Result<()> {
    let c = count.load(Relaxed);
    let next = if up {
        c.checked_add(1).filter(|&n| n <= capacity)
    } else {
        c.checked_sub(1).filter(|_| c <= capacity)
    };
    let next = match next {
        Some(n) => n,
        None => bitmap.count()?,
    };
    count.store(next, Release);
    Ok(())
}

/// A lock table in a /dev/shm segment, shared by every process that opens it.
///
/// Each open manager is one *owner*: it claims a client slot in the segment for its lifetime,
/// and every [`ShmLocker`] retrieved from it (on any thread) acts for it. The manager is
/// `Send + Sync`: share it between threads by reference or in an `Arc`.
///
/// A process that forks must open its own manager in the child: the child shares the parent's
/// open file description, hence its client slot and its OFD lock, so the two would be one owner
/// and the child's death would go unnoticed while the parent lives. Every operation on an
/// inherited manager (and its lockers) in a forked child therefore fails with
/// [`Error::InvalidArgument`] saying so. The child should also drop the manager it inherited, or
/// the parent's death goes unnoticed while the child lives (the descriptor is close-on-exec, so
/// `exec` drops it).
pub struct ShmManager {
    shared: Arc<Shared>,
}

impl ShmManager {
    /// Creates segment `/dev/shm/<name>` with `capacity` locks and opens it (the same as
    /// [`Store::create`]).
    ///
    /// The segment is initialised under no name and published with one `linkat(2)`, so no
    /// process ever sees it half-made.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a bad name (empty, over [`MAX_NAME_LEN`](crate::MAX_NAME_LEN)
    /// bytes, with `/`, NUL or `..`) or a capacity of 0 or above
    /// [`MAX_CAPACITY`](crate::MAX_CAPACITY); `AlreadyExists` when the segment exists;
    /// `Unavailable` as for [`open`](ShmManager::open); `Io` for OS errors.
    pub fn create(name: &str, capacity: u32) -> Result<ShmManager> {
        segment::validate_name(name)?;
        let layout = Layout::for_capacity(capacity)?;
        let seg = Segment::create(name, &layout)?;
        Ok(ShmManager {
            shared: Arc::new(Shared::attach(name, seg, layout)?),
        })
    }

    /// Opens the existing segment `/dev/shm/<name>`, whatever its capacity (the same as
    /// [`Store::open`]); [`capacity`](Manager::capacity) says what it is.
    ///
    /// A failed open writes nothing to the segment.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a bad name; `NotFound` when it does not exist; `Incompatible` for
    /// another magic, version or size, or a symbolic link at the name (never followed);
    /// `Corrupt` when header fields do not add up; `Unavailable` when the segment's client table
    /// is full (1024 managers have it open, or its slots are used up: see the crate's limits);
    /// `Io` for OS errors.
    ///
    /// A wrong `allocated` counter is not an error: open recounts it from the allocation bitmap.
    pub fn open(name: &str) -> Result<ShmManager> {
        Self::open_checked(name, None)
    }

    fn open_checked(name: &str, capacity: Option<u32>) -> Result<ShmManager> {
        segment::validate_name(name)?;
        let (seg, layout) = Segment::open(name, capacity)?;
        Ok(ShmManager {
            shared: Arc::new(Shared::attach(name, seg, layout)?),
        })
    }

    /// Opens `/dev/shm/<name>`, creating it with `capacity` locks when it does not exist (the
    /// same as [`Store::open_or_create`]). Returns the manager and whether this call created
    /// the segment.
    ///
    /// Any number of processes may race on a fresh name: exactly one creates, all succeed.
    ///
    /// # Errors
    ///
    /// As for [`create`](ShmManager::create) and [`open`](ShmManager::open), and
    /// `Incompatible` when the existing segment has another capacity (nothing is written then).
    pub fn open_or_create(name: &str, capacity: u32) -> Result<(ShmManager, bool)> {
        segment::validate_name(name)?;
        Layout::for_capacity(capacity)?;
        // A segment removed between our failed create and our open sends us round again; a
        // handful of rounds only happens under a remover racing on purpose.
        let mut last = None;
        for _ in 0..8 {
            match Self::open_checked(name, Some(capacity)) {
                Ok(m) => return Ok((m, false)),
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            match Self::create(name, capacity) {
                Ok(m) => return Ok((m, true)),
                Err(Error::AlreadyExists { what }) => last = Some(Error::AlreadyExists { what }),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::corrupt("open_or_create gave up")))
    }

    /// Unlinks `/dev/shm/<name>` (the same as [`Store::remove`]). Managers that have it open
    /// keep working on the unlinked segment; later opens do not see it.
    ///
    /// Only a lock-shm segment is removed: a regular file that starts with the segment magic,
    /// of any format version and however damaged after the magic, so that an operator can
    /// clear a segment that `open` refuses.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a bad name; `NotFound` when nothing is there; `Incompatible` when
    /// what is there is a symbolic link, not a regular file, or a file without the magic (it is
    /// left alone); `Io` for OS errors.
    pub fn remove(name: &str) -> Result<()> {
        segment::remove(name)
    }

    /// Unlinks `/dev/shm/<name>` only if no manager has it open (the same as
    /// [`Store::remove_unused`]), deciding and unlinking in one step: a manager that opens the
    /// segment meanwhile is either seen, and nothing is removed, or fails with `NotFound`
    /// (`open_or_create` then creates a new segment), so no manager ever locks in a segment
    /// after this removed it.
    ///
    /// # Errors
    ///
    /// `InUse` naming how many managers have it open and their pids (or that another process
    /// is removing it); as [`open`](Self::open) for a segment that is missing, damaged or of
    /// another format ([`remove`](Self::remove) removes those); `Io` for OS errors.
    pub fn remove_unused(name: &str) -> Result<()> {
        let open = segment::remove_unused(name)?;
        if open.is_empty() {
            return Ok(());
        }
        Err(Error::InUse {
            what: format!(
                "segment {} ({})",
                segment::path_of(name).display(),
                lock_api::managers_open(&open)
            ),
        })
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The client slot this manager holds: its identity as an owner in the segment.
    pub fn client_slot(&self) -> u32 {
        self.shared.slot
    }

    /// This manager's owner key, as [`Holder::owner`] names it in `held()`, `snapshot()` and
    /// deadlock cycles: `shm slot S generation G`, unique for the life of the segment.
    pub fn owner(&self) -> String {
        crate::observe::owner_key(self.shared.token)
    }

    fn locker(&self, id: u32) -> Result<ShmLocker> {
        let word = NonNull::from(self.shared.word(id)?);
        Ok(ShmLocker {
            shared: Arc::clone(&self.shared),
            id,
            word,
            turn: Turn::default(),
        })
    }
}

impl Store for ShmManager {
    /// A segment name under `/dev/shm` (spec `shm:NAME`).
    type Address = str;

    fn address(spec: &StoreSpec) -> Result<String> {
        match spec {
            StoreSpec::Shm(name) => Ok(name.clone()),
            other => Err(wrong_scheme("shm", other)),
        }
    }

    fn create(name: &str, capacity: u32) -> Result<ShmManager> {
        ShmManager::create(name, capacity)
    }

    fn open(name: &str) -> Result<ShmManager> {
        ShmManager::open(name)
    }

    fn open_or_create(name: &str, capacity: u32) -> Result<(ShmManager, bool)> {
        ShmManager::open_or_create(name, capacity)
    }

    fn remove(name: &str) -> Result<()> {
        ShmManager::remove(name)
    }

    fn remove_unused(name: &str) -> Result<()> {
        ShmManager::remove_unused(name)
    }
}

impl Manager for ShmManager {
    type Locker = ShmLocker;

    fn allocate(&self) -> Result<ShmLocker> {
        let capacity = self.shared.layout.capacity;
        let id = self.shared.with_alloc_lock(|bitmap, count| {
            let id = match bitmap.lowest_free() {
                Ok(Some(id)) => id,
                // Every id taken, as the summaries tell it, or a summary that promised a free id
                // that is not there. The summaries are an index over the leaves, which are the
                // truth: a stray write to one would hide free ids (a false Exhausted) or fail
                // every allocation until free_all. Rebuild them (and the counter) and look
                // again: O(capacity / 64), on this path only. A table that really is full is
                // told by counting the leaves, which writes nothing: callers that keep asking a
                // full table do not rewrite every summary each time.
                Ok(None) if bitmap.count()? == capacity => {
                    if count.load(Relaxed) != capacity {
                        count.store(capacity, Release);
                    }
                    return Err(Error::Exhausted { capacity });
                }
                Ok(None) | Err(Error::Corrupt { .. }) => {
                    count.store(bitmap.rebuild()?, Release);
                    bitmap.lowest_free()?.ok_or(Error::Exhausted { capacity })?
                }
                Err(e) => return Err(e),
            };
            bitmap.set(id)?;
            step_count(bitmap, count, capacity, true)?;
            Ok(id)
        })?;
        self.locker(id)
    }

    fn retrieve(&self, id: LockId) -> Result<ShmLocker> {
        self.shared.check(id)?;
        self.locker(id.get())
    }

    fn allocate_and_retrieve(&self, id: LockId) -> Result<ShmLocker> {
        self.shared.check(id)?;
        let capacity = self.shared.layout.capacity;
        self.shared.with_alloc_lock(|bitmap, count| {
            if bitmap.is_set(id.get())? {
                return Err(Error::AlreadyAllocated(id));
            }
            bitmap.set(id.get())?;
            step_count(bitmap, count, capacity, true)
        })?;
        self.locker(id.get())
    }

    /// Frees every allocation; held locks stay held.
    ///
    /// Dangerous by design: every process still using an id it allocated now shares it with the
    /// next allocation. It exists for recovery (Podman's `system renumber`), right before the
    /// caller re-allocates every id with `allocate_and_retrieve`.
    fn free_all(&self) -> Result<()> {
        self.shared.with_alloc_lock(|bitmap, count| {
            bitmap.clear_all()?;
            count.store(0, Release);
            Ok(())
        })
    }

    fn capacity(&self) -> Option<u32> {
        Some(self.shared.layout.capacity)
    }

    fn available(&self) -> Result<Option<u32>> {
        self.shared.usable()?;
        let capacity = self.shared.layout.capacity;
        let allocated = self.shared.seg.u32(field::ALLOCATED)?.load(Acquire);
        capacity.checked_sub(allocated).map(Some).ok_or_else(|| {
            Error::corrupt(format!(
                "segment {}: allocated count {allocated} exceeds capacity {capacity}",
                self.shared.seg.path().display()
            ))
        })
    }

    /// Every held lock with its holder: pid, host, owner key, since and whether it is dead.
    /// Read from the lock words without locking anything. A lock whose holder died is listed
    /// until someone takes it over, with `dead` set; so is a word that holds only the waiters
    /// bit, which `lock` takes over as `OwnerDied`.
    ///
    /// `since` is exact for a hold taken after waiting; for a hold taken on the fast path it is
    /// the first moment any reader saw it (see [`Holder`] in the crate docs): the hold is at
    /// least that old.
    fn held(&self) -> Result<Vec<HeldLock>> {
        self.shared.usable()?;
        Ok(crate::observe::held(&self.shared)?
            .into_iter()
            .map(|l| HeldLock::new(l.id, l.holder))
            .collect())
    }

    /// Every held lock and every lock a live manager waits for, with holder and waiters, from
    /// one pass over the lock words and one over the 1024 client slots.
    fn snapshot(&self) -> Result<Vec<LockState>> {
        self.shared.usable()?;
        crate::observe::snapshot(&self.shared)
    }

    /// The other managers with the segment open, from one pass over the 1024 client slots: a
    /// slot claimed and not closed whose manager the kernel says lives (its OFD lock is held),
    /// with the pid the manager recorded. No `since`: a slot does not record when it was claimed.
    fn clients(&self) -> Result<Vec<Holder>> {
        self.shared.usable()?;
        crate::observe::clients(&self.shared)
    }

    fn deadlock_timeout(&self) -> Option<Duration> {
        self.shared.deadlock_timeout()
    }

    /// Sets how long a blocked `lock` or `try_lock_for` of this manager waits before it checks
    /// for a deadlock, and how often it checks again; zero turns detection off. The default is
    /// [`DEFAULT_DEADLOCK_TIMEOUT`]. Checks are serialised across processes by the segment's
    /// detection lock, and exactly one member of a cycle returns [`Error::Deadlock`].
    fn set_deadlock_timeout(&self, timeout: Duration) -> Result<()> {
        self.shared.usable()?;
        // At least 1 ms unless zero: a nonzero timeout below a millisecond must not turn
        // detection off.
        let ms = match timeout.as_millis() {
            0 if timeout.is_zero() => 0,
            0 => 1,
            ms => u64::try_from(ms).unwrap_or(u64::MAX),
        };
        self.shared.deadlock_ms.store(ms, Relaxed);
        Ok(())
    }
}

impl fmt::Debug for ShmManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmManager")
            .field("name", &self.shared.name)
            .field("capacity", &self.shared.layout.capacity)
            .field("client_slot", &self.shared.slot)
            .finish()
    }
}

/// One lock of a [`ShmManager`]'s table. Handles are cheap; every handle of one manager acts for
/// the same owner.
pub struct ShmLocker {
    shared: Arc<Shared>,
    id: u32,
    /// Lock `id`'s word in `shared`'s mapping (invariant 1).
    word: NonNull<Le32>,
    /// Where this handle's holds are in their turn under contention (turn.rs).
    turn: Turn,
}

// SAFETY: `word` points into the mapping that `shared` owns and this locker keeps alive
// (invariant 1), and the word behind it is only ever accessed atomically (`Le32` is `Sync`), so
// sending or sharing the locker shares no more than a `&Le32` and an `Arc<Shared>` would.
unsafe impl Send for ShmLocker {}
// SAFETY: as for `Send`.
unsafe impl Sync for ShmLocker {}

impl ShmLocker {
    /// The lock word, once this process is known to be the one that opened the manager.
    #[inline]
    fn word(&self) -> Result<&Le32> {
        self.shared.usable()?;
        self.shared.word(self.id)
    }

    /// The lock word for the fast paths: `None` in a forked child, which the slow paths then
    /// report. Nothing here builds an error, so the fast paths stay small enough to inline.
    #[inline(always)]
    fn fast_word(&self) -> Option<&Le32> {
        if fork::current() != self.shared.forks {
            return None;
        }
        // SAFETY: by invariant 1 `word` is a checked address in a mapping that `self.shared`,
        // held by `self`, keeps alive; the word is only accessed atomically.
        Some(unsafe { self.word.as_ref() })
    }

    /// `lock` when the fast path did not take the lock.
    #[cold]
    #[inline(never)]
    fn lock_slow(&self) -> Result<Acquired> {
        self.wait(None)?.ok_or(Error::Timeout)
    }

    /// `unlock` when the word was not exactly this manager's token.
    #[cold]
    #[inline(never)]
    fn unlock_slow(&self) -> Result<()> {
        let word = self.word()?;
        let turn = &self.turn;
        let counted = turn.counted();
        if counted {
            if crate::observe::hand_off_requested(&self.shared, self.id) {
                // The turn is over and someone asks for the lock: the waiters bit sends this
                // unlock down the contended path, which hands it over.
                crate::lockword::mark(word, self.shared.token);
            } else {
                turn.defer();
            }
        }
        if futex::unlock(word, self.shared.token, || {
            let over = counted || turn.expired();
            let hand = crate::observe::clear_since(&self.shared, self.id, over) && over;
            if hand {
                turn.hand_over();
            }
            hand
        })? {
            Ok(())
        } else {
            Err(Error::NotHeld(LockId(self.id)))
        }
    }

    #[cold]
    fn wait(&self, deadline: Option<Instant>) -> Result<Option<Acquired>> {
        let word = self.word()?;
        if futex::try_fast(word, self.shared.token) {
            return Ok(Some(Acquired::Clean));
        }
        let mut waiter = LockWaiter::new(&self.shared, self.id, deadline);
        let acquired = crate::lockword::lock_contended(word, self.shared.token, &mut waiter)?;
        // A hold taken after waiting carries the waiters bit, so its unlock takes the contended
        // path, which takes the record back (observe.rs, rule 1).
        if acquired.is_some() {
            self.turn.begin();
            if word.load(Relaxed) == self.shared.token | crate::lockword::WAITERS {
                waiter.record_hold()?;
            }
        }
        drop(waiter);
        Ok(acquired)
    }
}

impl Locker for ShmLocker {
    #[inline]
    fn id(&self) -> LockId {
        LockId(self.id)
    }

    /// Waits until this manager holds the lock; a dead holder's lock is taken over within a few
    /// milliseconds and reported as [`Acquired::OwnerDied`]. Not re-entrant: when this manager
    /// already holds the lock, this waits until some thread of it unlocks.
    ///
    /// # Errors
    ///
    /// [`Error::Deadlock`] when this wait closes a cycle of waits (checked once the manager's
    /// deadlock timeout has passed, and again each further timeout).
    #[inline]
    fn lock(&self) -> Result<Acquired> {
        if let Some(word) = self.fast_word()
            && futex::try_fast(word, self.shared.token)
        {
            return Ok(Acquired::Clean);
        }
        self.lock_slow()
    }

    /// Takes the lock if it is free or its holder is dead; `Ok(None)` when a live owner, this
    /// manager included, holds it.
    fn try_lock(&self) -> Result<Option<Acquired>> {
        let word = self.word()?;
        let acquired = futex::try_lock(word, self.shared.token, |o| {
            self.shared.owner_dead(o, Probe::Quick)
        })?;
        if acquired == Some(Acquired::OwnerDied) {
            crate::observe::record_since(&self.shared, self.id)?;
        }
        Ok(acquired)
    }

    fn try_lock_for(&self, timeout: Duration) -> Result<Acquired> {
        let deadline = Instant::now().checked_add(timeout);
        self.wait(deadline)?.ok_or(Error::Timeout)
    }

    #[inline]
    fn unlock(&self) -> Result<()> {
        if self.turn.count()
            && let Some(word) = self.fast_word()
            && futex::unlock_fast(word, self.shared.token)
        {
            return Ok(());
        }
        self.unlock_slow()
    }

    fn free(&self) -> Result<()> {
        let id = self.id;
        let capacity = self.shared.layout.capacity;
        self.shared.with_alloc_lock(|bitmap, count| {
            if !bitmap.is_set(id)? {
                return Err(Error::NotAllocated(LockId(id)));
            }
            bitmap.clear(id)?;
            step_count(bitmap, count, capacity, false)
        })
    }
}

impl Inspect for ShmLocker {
    /// The holder (pid, host, owner key, since, dead), read from the lock word without locking.
    fn holder(&self) -> Result<Option<Holder>> {
        let v = self.word()?.load(Acquire);
        if crate::lockword::is_free(v) {
            return Ok(None);
        }
        crate::observe::holder_of(&self.shared, self.id, v).map(Some)
    }
}

impl fmt::Debug for ShmLocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmLocker")
            .field("segment", &self.shared.name)
            .field("id", &self.id)
            .finish()
    }
}
