//! `FileManager`: one open store, one owner; allocation under the table's lock.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lock_api::{Error, HeldLock, Holder, LockId, Manager, Result};

use crate::bitmap::Bitmap;
use crate::flock;
use crate::format::Marker;
use crate::locker::FileLocker;
use crate::record::Record;
use crate::slot::{Cache, Phase};
use crate::store::{self, Store};

/// How to create or open a store: its capacity and whether it keeps owner records.
///
/// ```no_run
/// use lock_file::StoreOptions;
///
/// # fn main() -> lock_api::Result<()> {
/// let (manager, created) = StoreOptions::new(2048).open_or_create("/var/lib/app/locks")?;
/// # let _ = (manager, created);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    capacity: u32,
    owner_death: bool,
}

impl StoreOptions {
    /// Options for a store of `capacity` locks (`1..=`[`MAX_CAPACITY`](crate::MAX_CAPACITY)), with owner-death
    /// detection on.
    pub fn new(capacity: u32) -> StoreOptions {
        StoreOptions {
            capacity,
            owner_death: true,
        }
    }

    /// Whether a new store keeps owner records, so that acquiring a lock whose holder died
    /// holding it returns [`Acquired::OwnerDied`](lock_api::Acquired::OwnerDied) (default: on).
    ///
    /// This is a property of the store, fixed at creation and written in its marker, so every
    /// process sharing the store agrees on it; on `open` the store's own setting applies.
    /// Turning it off saves two memory stores and a load per lock/unlock pair (measured in the
    /// benchmarks) and makes every acquisition `Clean`, and `held` must probe every lock file.
    pub fn owner_death(mut self, on: bool) -> StoreOptions {
        self.owner_death = on;
        self
    }

    /// Creates a store at `path` (a directory that must not exist; its parent must).
    ///
    /// Every lock file is created up front, in a temporary directory that is renamed into
    /// place, so no process ever sees a half-built store.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a capacity of 0 or above [`MAX_CAPACITY`](crate::MAX_CAPACITY), or a path whose
    /// last component is not a name; [`Error::AlreadyExists`] when anything is at `path`;
    /// [`Error::Io`] for OS errors.
    pub fn create(&self, path: impl AsRef<Path>) -> Result<FileManager> {
        let marker = Marker {
            capacity: self.capacity,
            owner_death: self.owner_death,
        };
        store::create(path.as_ref(), marker).map(FileManager::from_store)
    }

    /// Opens the store at `path`, which must have this capacity.
    ///
    /// # Errors
    ///
    /// As for [`FileManager::open`], and [`Error::Incompatible`] when its capacity differs.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<FileManager> {
        let manager = FileManager::open(path)?;
        if manager.capacity != self.capacity {
            return Err(Error::incompatible(
                format!("lock-file store {} capacity", manager.path().display()),
                self.capacity,
                manager.capacity,
            ));
        }
        Ok(manager)
    }

    /// Opens the store at `path`, creating it when missing; the flag says whether this call
    /// created it. Any number of processes may race on a fresh path: all succeed, one creates.
    ///
    /// # Errors
    ///
    /// As for [`create`](StoreOptions::create) and [`open`](StoreOptions::open).
    pub fn open_or_create(&self, path: impl AsRef<Path>) -> Result<(FileManager, bool)> {
        let path = path.as_ref();
        // Open, or create, or (someone created it meanwhile) open again. Only a concurrent
        // `remove` between the two can make the second open fail; a few rounds settle that.
        let mut last = None;
        for _ in 0..8 {
            match self.open(path) {
                Err(Error::NotFound { .. }) => {}
                other => return other.map(|m| (m, false)),
            }
            match self.create(path) {
                Err(e @ Error::AlreadyExists { .. }) => last = Some(e),
                other => return other.map(|m| (m, true)),
            }
        }
        Err(last.unwrap_or_else(|| Error::NotFound {
            what: format!("lock-file store {}", path.display()),
        }))
    }
}

/// What every handle of one manager shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) capacity: u32,
    pub(crate) owner_death: bool,
    /// This process, as written in owner records (a forked child must open its own manager).
    pub(crate) pid: u32,
    /// Serialises this manager's threads before the allocation `flock`, which does not exclude
    /// threads sharing one description.
    alloc: Mutex<()>,
    pub(crate) slots: Mutex<Cache>,
}

impl Shared {
    /// Runs `f` on the allocation bitmap under the allocation lock (this manager's mutex, then
    /// `flock` on the table file), and unlocks whatever `f` returned.
    pub(crate) fn with_bitmap<T>(&self, f: impl FnOnce(Bitmap<'_>) -> T) -> Result<T> {
        let _turn = self.alloc.lock().unwrap_or_else(PoisonError::into_inner);
        let table = &self.store.table;
        let path = || table.path().to_path_buf();
        flock::lock(table.file(), &path)?;
        let out = f(Bitmap::new(table.summary(), table.leaves(), self.capacity));
        flock::unlock(table.file(), &path)?;
        Ok(out)
    }

    /// The cache of slots.
    pub(crate) fn slots(&self) -> MutexGuard<'_, Cache> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The path of lock `id`'s file.
    pub(crate) fn lock_path(&self, id: u32) -> PathBuf {
        self.store.locks_path.join(store::lock_name(id))
    }

    /// Opens a new description of lock `id`'s file.
    pub(crate) fn open_lock_file(&self, id: u32) -> Result<std::fs::File> {
        store::open_file(
            &self.store.locks_dir,
            &self.lock_path(id),
            &store::lock_name(id),
            false,
        )
    }

    /// The owner record of lock `id`.
    #[inline]
    pub(crate) fn record(&self, id: u32) -> Record<'_> {
        Record::new(self.store.table.record(id))
    }

    /// Checks `id` against the capacity.
    pub(crate) fn check(&self, id: LockId) -> Result<u32> {
        if id.get() < self.capacity {
            Ok(id.get())
        } else {
            Err(Error::OutOfRange {
                id,
                capacity: self.capacity,
            })
        }
    }

    /// A handle on lock `id` (`id < capacity`).
    pub(crate) fn locker(self: &Arc<Self>, id: u32) -> Result<FileLocker> {
        let slot = self.slots().get_or_open(id, || self.open_lock_file(id))?;
        Ok(FileLocker::new(Arc::clone(self), slot))
    }

    /// Who holds lock `id`, if anyone: its record says who, and a probe confirms the holder is
    /// alive (a claimed record whose lock can be taken was left by a dead holder).
    pub(crate) fn holder(&self, id: u32) -> Result<Option<Holder>> {
        let record = if self.owner_death {
            match self.record(id).holder() {
                None => return Ok(None),
                Some(holder) => Some(holder),
            }
        } else {
            None
        };
        let ours = self.slots().get(id).map(Arc::clone);
        if let Some(slot) = ours {
            match slot.state().phase {
                Phase::Held => return Ok(Some(record.unwrap_or_default())),
                Phase::Acquiring => {}
                Phase::Idle => {}
            }
        }
        match self.probe(id) {
            Ok(true) => Ok(Some(record.unwrap_or_default())),
            Ok(false) => Ok(None),
            // A damaged lock file costs its own lock only, not the whole `held` list. Nobody
            // can take a lock through a damaged path, so without records it is not held; a
            // claimed record (a holder that opened the file before the damage, or a dead one)
            // cannot be checked, so it is reported as it stands rather than hidden.
            Err(Error::Corrupt { .. }) => Ok(record),
            Err(e) => Err(e),
        }
    }

    /// Whether some description holds lock `id`'s `flock`, found by briefly trying it on a fresh
    /// description (and releasing it at once when that succeeds).
    fn probe(&self, id: u32) -> Result<bool> {
        let file = self.open_lock_file(id)?;
        let path = || self.lock_path(id);
        if flock::try_lock(&file, &path)? {
            flock::unlock(&file, &path)?;
            Ok(false)
        } else {
            Ok(true)
        }
    }
}

/// A lock table in a directory of lock files: one open store, and the owner of the locks taken
/// through it.
///
/// Every handle retrieved from one manager acts for the same owner (the manager), from any
/// thread; another manager, in this process or another, is another owner. Locks are `flock(2)`s
/// on this manager's own descriptions of the lock files, so the kernel releases them when the
/// process dies, and the manager's owner records tell the next acquirer
/// ([`Acquired::OwnerDied`](lock_api::Acquired::OwnerDied)).
///
/// Cloning a manager gives another handle on the same owner, not a new owner: open the store
/// again for that. A forked child shares its parent's descriptions, hence its locks: a child
/// must open its own manager. Dropping the manager and all its handles while holding locks releases them, and as
/// the owner is gone their next acquirer gets `OwnerDied`.
#[derive(Debug, Clone)]
pub struct FileManager {
    shared: Arc<Shared>,
    capacity: u32,
}

impl FileManager {
    fn from_store(store: Store) -> FileManager {
        let capacity = store.marker.capacity;
        let owner_death = store.marker.owner_death;
        FileManager {
            shared: Arc::new(Shared {
                store,
                capacity,
                owner_death,
                pid: std::process::id(),
                alloc: Mutex::new(()),
                slots: Mutex::new(Cache::new()),
            }),
            capacity,
        }
    }

    /// Creates a store of `capacity` locks at `path`, with the default options
    /// (see [`StoreOptions::create`]).
    ///
    /// # Errors
    ///
    /// As for [`StoreOptions::create`].
    pub fn create(path: impl AsRef<Path>, capacity: u32) -> Result<FileManager> {
        StoreOptions::new(capacity).create(path)
    }

    /// Opens the store at `path`, whatever its capacity. Reads and checks the marker, the
    /// `locks` directory and the table; writes nothing, so a failed open changes nothing.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when nothing is at `path`; [`Error::Incompatible`] when it is not a
    /// lock-file store or is of another format version; [`Error::Corrupt`] when it is damaged
    /// (a table of the wrong size, a header that disagrees with the marker, a symlink where a
    /// file should be); [`Error::Io`] for OS errors such as a permission denied, with the path.
    pub fn open(path: impl AsRef<Path>) -> Result<FileManager> {
        store::open(path.as_ref()).map(FileManager::from_store)
    }

    /// Opens the store at `path`, creating it with `capacity` locks when missing.
    ///
    /// # Errors
    ///
    /// As for [`StoreOptions::open_or_create`].
    pub fn open_or_create(path: impl AsRef<Path>, capacity: u32) -> Result<(FileManager, bool)> {
        StoreOptions::new(capacity).open_or_create(path)
    }

    /// Removes the store at `path`: renames it out of the way at once, then deletes it.
    ///
    /// Processes that still have it open keep working on the removed files, apart from anyone
    /// who opens the path afterwards: remove a store only when nobody uses it.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when nothing is there; [`Error::Incompatible`] when it is not a
    /// lock-file store (then nothing is deleted); [`Error::Io`] for OS errors.
    pub fn remove(path: impl AsRef<Path>) -> Result<()> {
        store::remove(path.as_ref())
    }

    /// The store's directory, as given when it was opened.
    pub fn path(&self) -> &Path {
        &self.shared.store.path
    }

    /// Whether the store keeps owner records (reports `OwnerDied`).
    pub fn owner_death(&self) -> bool {
        self.shared.owner_death
    }

    /// Flushes the table (allocations and owner records) to disk with `fsync(2)`.
    ///
    /// Allocation state is shared through the page cache and survives any process's death
    /// without this; only a machine crash can lose recent changes, as it would lose a
    /// `/dev/shm` table entirely. Call it after changes that must survive power loss.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when `fsync` fails.
    pub fn sync(&self) -> Result<()> {
        let table = &self.shared.store.table;
        table
            .file()
            .sync_data()
            .map_err(|e| Error::io("fsync", table.path(), e))
    }
}

impl Manager for FileManager {
    type Locker = FileLocker;

    /// The lowest free id whose lock file opens.
    ///
    /// A free id whose lock file is damaged (missing, or a directory, a symlink or anything but a
    /// regular file in its place: `Corrupt`) is skipped and left free, so the damage costs that
    /// one lock and nothing else: allocation goes on with the next healthy id. Handing the
    /// damaged id out instead would give the caller (a container, say) a lock that fails on
    /// every use, for as long as the store lives; skipping gives it a working lock, and leaving
    /// the id free rather than marking it taken loses nothing: once the file is repaired, the id
    /// is allocatable again. `available` counts exactly the ids this can hand out.
    ///
    /// The lock file is opened under the allocation lock, before the id is marked, so a
    /// damaged id is never allocated, not even for a moment.
    ///
    /// # Errors
    ///
    /// [`Error::Exhausted`] when every id is allocated; [`Error::Corrupt`] naming the lowest
    /// damaged lock file when every free id has a damaged one; [`Error::Io`] when a lock file
    /// cannot be opened for another reason (permissions, too many open files): that is not
    /// damage to one file, so nothing is skipped and nothing allocated.
    fn allocate(&self) -> Result<FileLocker> {
        let shared = &self.shared;
        shared.with_bitmap(|b| {
            let mut from = 0;
            let mut damaged = None;
            while let Some(id) = b.lowest_free(from) {
                // `id < capacity <= MAX_CAPACITY`: no overflow.
                from = id + 1;
                match shared.locker(id) {
                    // `set` cannot fail here (the bit was clear under this same lock) unless
                    // another process scribbled on the table: then look further.
                    Ok(locker) => {
                        if b.set(id) {
                            return Ok(locker);
                        }
                    }
                    Err(Error::Corrupt { what }) => {
                        damaged.get_or_insert(what);
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(match damaged {
                None => Error::Exhausted {
                    capacity: self.capacity,
                },
                Some(what) => Error::corrupt(format!(
                    "lock-file store {}: no lock can be allocated, every free id has a damaged \
                     lock file; the lowest: {what}",
                    self.path().display()
                )),
            })
        })?
    }

    fn retrieve(&self, id: LockId) -> Result<FileLocker> {
        let id = self.shared.check(id)?;
        self.shared.locker(id)
    }

    fn allocate_and_retrieve(&self, id: LockId) -> Result<FileLocker> {
        let raw = self.shared.check(id)?;
        // Open the lock file first: a damaged store must not leave a fresh allocation behind.
        let locker = self.shared.locker(raw)?;
        if !self.shared.with_bitmap(|b| b.set(raw))? {
            return Err(Error::AlreadyAllocated(id));
        }
        Ok(locker)
    }

    fn free_all(&self) -> Result<()> {
        self.shared.with_bitmap(|b| b.clear_all())
    }

    fn capacity(&self) -> Option<u32> {
        Some(self.capacity)
    }

    /// The number of ids [`allocate`](Manager::allocate) can still hand out: free ids whose lock
    /// file is healthy (see `allocate`).
    ///
    /// Reads the `locks` directory once (`getdents(2)`, no `open` per lock), so it costs time
    /// in proportion to the capacity, as `held` does.
    fn available(&self) -> Result<Option<u32>> {
        let store = &self.shared.store;
        let healthy =
            store::healthy_lock_files(&store.locks_dir, &store.locks_path, self.capacity)?;
        let free = self.shared.with_bitmap(|b| b.count_free_in(&healthy))?;
        Ok(Some(free))
    }

    /// Every held lock with its holder's pid and acquisition time.
    ///
    /// With owner records, only locks whose record is claimed are probed (a brief
    /// `flock(LOCK_EX | LOCK_NB)` on a fresh description, to skip records left by dead
    /// holders); without them, every lock file is probed. A probe that finds a lock free holds
    /// it for a moment, so a concurrent `try_lock` of that lock may fail spuriously.
    ///
    /// A lock whose file is damaged cannot be probed: it is listed iff its record is claimed
    /// (without owner records, never), and the other locks are reported as usual.
    fn held(&self) -> Result<Vec<HeldLock>> {
        let mut out = Vec::new();
        for id in 0..self.capacity {
            if let Some(holder) = self.shared.holder(id)? {
                let holder = (holder != Holder::default()).then_some(holder);
                out.push(HeldLock::new(LockId(id), holder));
            }
        }
        Ok(out)
    }
}
