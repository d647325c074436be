//! `ShmManager` and `ShmLocker`: the lock table over a segment.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use lock_api::{Acquired, Error, HeldLock, Holder, Inspect, LockId, Locker, Manager, Result};

use crate::bitmap::Bitmap;
use crate::client;
use crate::fork;
use crate::futex;
use crate::layout::{Layout, field};
use crate::lockword;
use crate::segment::{self, Le32, Segment};

/// What every handle of one open manager shares: the mapping, its layout, and the client slot
/// that makes this manager an owner.
struct Shared {
    seg: Segment,
    layout: Layout,
    name: String,
    slot: u32,
    token: u32,
    /// The fork generation this manager was opened in (fork.rs): any other means that this
    /// process is a forked child that inherited the manager.
    forks: u32,
    /// The process that opened it, for the error a forked child gets.
    pid: u32,
}

impl Shared {
    fn attach(name: &str, seg: Segment, layout: Layout) -> Result<Shared> {
        let forks = fork::generation()?;
        let (slot, generation) = client::claim(&seg, &layout)?;
        let shared = Shared {
            seg,
            layout,
            name: name.to_owned(),
            slot,
            token: client::token(slot, generation),
            forks,
            pid: std::process::id(),
        };
        shared.repair_count()?;
        Ok(shared)
    }

    /// Fails when this process is a forked child of the one that opened the manager. One relaxed
    /// load and a compare: it sits on every operation, the uncontended lock and unlock included.
    #[inline]
    fn usable(&self) -> Result<()> {
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

    fn owner_dead(&self, owner: u32) -> Result<bool> {
        if owner == self.token {
            return Ok(false);
        }
        client::owner_dead(&self.seg, &self.layout, self.slot, owner)
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

    fn word(&self, id: u32) -> Result<&Le32> {
        self.seg.u32(self.layout.lock_offset(id))
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
            |o| self.owner_dead(o),
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
        let Some(acquired) = futex::try_lock(word, self.token, |o| self.owner_dead(o))? else {
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
        if !futex::unlock(word, self.token)? {
            return Err(self.alloc_lock_stolen());
        }
        result
    }

    /// The holder named by lock word `v` (not 0). A word with only the waiters bit names no
    /// owner: it is a dead hold, like a dead owner's token (lockword.rs).
    fn holder(&self, v: u32) -> Result<Holder> {
        let owner = v & futex::OWNER;
        let dead = self.owner_dead(owner)?;
        let mut holder = Holder::default();
        holder.dead = dead;
        if lockword::dead_hold(v) {
            holder.owner = Some(
                "no owner: only the waiters bit is set (damaged word; the next acquirer gets OwnerDied)"
                    .to_owned(),
            );
            return Ok(holder);
        }
        let (slot, generation) = client::decode(owner);
        holder.pid = client::pid_of(&self.seg, &self.layout, owner)?;
        holder.owner = Some(if dead {
            format!(
                "client slot {slot} generation {generation} (dead: the next acquirer gets OwnerDied)"
            )
        } else {
            format!("client slot {slot} generation {generation}")
        });
        Ok(holder)
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
    /// Creates segment `/dev/shm/<name>` with `capacity` locks and opens it.
    ///
    /// The segment is initialised under no name and published with one `linkat(2)`, so no
    /// process ever sees it half-made.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a bad name (empty, over [`MAX_NAME_LEN`](crate::MAX_NAME_LEN)
    /// bytes, with `/`, NUL or `..`) or a capacity of 0 or above
    /// [`MAX_CAPACITY`](crate::MAX_CAPACITY); `AlreadyExists` when the segment exists; `Io` for
    /// OS errors.
    pub fn create(name: &str, capacity: u32) -> Result<ShmManager> {
        segment::validate_name(name)?;
        let layout = Layout::for_capacity(capacity)?;
        let seg = Segment::create(name, &layout)?;
        Ok(ShmManager {
            shared: Arc::new(Shared::attach(name, seg, layout)?),
        })
    }

    /// Opens the existing segment `/dev/shm/<name>`, which must have `capacity` locks.
    ///
    /// A failed open writes nothing to the segment.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a bad name; `NotFound` when it does not exist; `Incompatible` for
    /// another magic, version, size or capacity, or a symbolic link at the name (never
    /// followed); `Corrupt` when header fields do not add up; `Unavailable` when the segment's
    /// client table is full (1024 managers have it open, or its slots are used up: see the
    /// crate's limits); `Io` for OS errors.
    ///
    /// A wrong `allocated` counter is not an error: open recounts it from the allocation bitmap.
    pub fn open(name: &str, capacity: u32) -> Result<ShmManager> {
        Self::open_inner(name, Some(capacity))
    }

    /// Opens the existing segment `/dev/shm/<name>` whatever its capacity.
    ///
    /// # Errors
    ///
    /// As for [`open`](ShmManager::open), without the capacity check.
    pub fn open_existing(name: &str) -> Result<ShmManager> {
        Self::open_inner(name, None)
    }

    fn open_inner(name: &str, capacity: Option<u32>) -> Result<ShmManager> {
        segment::validate_name(name)?;
        if let Some(c) = capacity {
            Layout::for_capacity(c)?;
        }
        let (seg, layout) = Segment::open(name, capacity)?;
        Ok(ShmManager {
            shared: Arc::new(Shared::attach(name, seg, layout)?),
        })
    }

    /// Opens `/dev/shm/<name>`, creating it with `capacity` locks when it does not exist.
    /// Returns the manager and whether this call created the segment.
    ///
    /// Any number of processes may race on a fresh name: exactly one creates, all succeed.
    ///
    /// # Errors
    ///
    /// As for [`create`](ShmManager::create) and [`open`](ShmManager::open).
    pub fn open_or_create(name: &str, capacity: u32) -> Result<(ShmManager, bool)> {
        segment::validate_name(name)?;
        Layout::for_capacity(capacity)?;
        // A segment removed between our failed create and our open sends us round again; a
        // handful of rounds only happens under a remover racing on purpose.
        let mut last = None;
        for _ in 0..8 {
            match Self::open(name, capacity) {
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

    /// Unlinks `/dev/shm/<name>`. Returns whether it existed. Managers that have it open keep
    /// working on the unlinked segment; later opens do not see it.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a bad name; `Io` for OS errors.
    pub fn remove(name: &str) -> Result<bool> {
        segment::remove(name)
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The client slot this manager holds: its identity as an owner in the segment.
    pub fn client_slot(&self) -> u32 {
        self.shared.slot
    }

    fn locker(&self, id: u32) -> ShmLocker {
        ShmLocker {
            shared: Arc::clone(&self.shared),
            id,
        }
    }
}

impl Manager for ShmManager {
    type Locker = ShmLocker;

    fn allocate(&self) -> Result<ShmLocker> {
        let capacity = self.shared.layout.capacity;
        let id = self.shared.with_alloc_lock(|bitmap, count| {
            let Some(id) = bitmap.lowest_free()? else {
                if count.load(Relaxed) != capacity {
                    count.store(bitmap.count()?, Release);
                }
                return Err(Error::Exhausted { capacity });
            };
            bitmap.set(id)?;
            step_count(bitmap, count, capacity, true)?;
            Ok(id)
        })?;
        Ok(self.locker(id))
    }

    fn retrieve(&self, id: LockId) -> Result<ShmLocker> {
        self.shared.check(id)?;
        Ok(self.locker(id.get()))
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
        Ok(self.locker(id.get()))
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

    /// Every held lock with its holder's pid, read from the lock words without locking anything.
    /// A lock whose holder died is listed until someone takes it over, with `dead` set; so is a
    /// word that holds only the waiters bit, which `lock` takes over as `OwnerDied`.
    fn held(&self) -> Result<Vec<HeldLock>> {
        self.shared.usable()?;
        // One probe per owner, not per lock: a process may hold thousands.
        let mut holders: HashMap<u32, Holder> = HashMap::new();
        let mut out = Vec::new();
        for id in 0..self.shared.layout.capacity {
            let v = self.shared.word(id)?.load(Acquire);
            if v != 0 {
                // Keyed by the owner bits: the waiters bit does not change who holds it.
                let holder = match holders.entry(v & futex::OWNER) {
                    Entry::Occupied(e) => e.get().clone(),
                    Entry::Vacant(e) => e.insert(self.shared.holder(v)?).clone(),
                };
                out.push(HeldLock::new(LockId(id), Some(holder)));
            }
        }
        Ok(out)
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
}

impl ShmLocker {
    /// The lock word, once this process is known to be the one that opened the manager.
    #[inline]
    fn word(&self) -> Result<&Le32> {
        self.shared.usable()?;
        self.shared.word(self.id)
    }

    fn wait(&self, deadline: Option<Instant>) -> Result<Option<Acquired>> {
        let word = self.word()?;
        if futex::try_fast(word, self.shared.token) {
            return Ok(Some(Acquired::Clean));
        }
        futex::lock_contended(word, self.shared.token, deadline, |o| {
            self.shared.owner_dead(o)
        })
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
    #[inline]
    fn lock(&self) -> Result<Acquired> {
        let word = self.word()?;
        if futex::try_fast(word, self.shared.token) {
            return Ok(Acquired::Clean);
        }
        self.wait(None)?.ok_or(Error::Timeout)
    }

    /// Takes the lock if it is free or its holder is dead; `Ok(None)` when a live owner, this
    /// manager included, holds it.
    fn try_lock(&self) -> Result<Option<Acquired>> {
        let word = self.word()?;
        futex::try_lock(word, self.shared.token, |o| self.shared.owner_dead(o))
    }

    fn try_lock_for(&self, timeout: Duration) -> Result<Acquired> {
        let deadline = Instant::now().checked_add(timeout);
        self.wait(deadline)?.ok_or(Error::Timeout)
    }

    #[inline]
    fn unlock(&self) -> Result<()> {
        if futex::unlock(self.word()?, self.shared.token)? {
            Ok(())
        } else {
            Err(Error::NotHeld(LockId(self.id)))
        }
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
    /// The holder's pid and client slot, read from the lock word without locking.
    fn holder(&self) -> Result<Option<Holder>> {
        let v = self.word()?.load(Acquire);
        if v == 0 {
            return Ok(None);
        }
        self.shared.holder(v).map(Some)
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
