//! `FileManager`: one open store, one owner; allocation under the table's lock; who holds and
//! who waits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::time::Duration;

use lock_api::{
    Error, HeldLock, Holder, LockId, LockState, Manager, Result, Store as StoreLifecycle,
    StoreSpec, host_name, wrong_scheme,
};

use crate::adopt::Waits;
use crate::bitmap::Bitmap;
use crate::clients;
use crate::flock;
use crate::format::Marker;
use crate::locker::FileLocker;
use crate::owner::{self, Entry, OwnerFile, Waiting};
use crate::record::{self, Claim, Record};
use crate::slot::Cache;
use crate::store::{self, Store};
use crate::wake::Waker;

/// How long a blocked `lock` waits before it checks for a deadlock, unless set otherwise
/// ([`Manager::set_deadlock_timeout`]), as PostgreSQL's `deadlock_timeout`.
pub const DEFAULT_DEADLOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// The owner key of owner number `owner`, the same in holder and waiter entries.
pub(crate) fn owner_key(owner: u64) -> String {
    format!("file owner {owner}")
}

/// The holder a claimed record names, to a reader in pid namespace `here`.
fn holder_of(claim: Claim, dead: bool, here: u32) -> Holder {
    let mut holder = Holder::default().host(host_name()).dead(dead);
    holder.owner = claim.owner.map(owner_key);
    holder.pid = claim.pid_seen_from(here);
    holder.since = claim.since;
    holder
}

/// A holder as [`Shared::find_holder`] finds it: its record's claim (none without owner
/// records), and whether it died holding the lock.
#[derive(Debug, Clone, Copy)]
struct Found {
    claim: Option<Claim>,
    dead: bool,
}

/// The waiter a published wait names, to a reader in pid namespace `here`.
fn waiter_of(wait: &Waiting, here: u32) -> Holder {
    let mut waiter = Holder::default()
        .host(host_name())
        .owner(owner_key(wait.owner));
    waiter.pid = wait
        .pid
        .and_then(|pid| lock_api::pid_seen_here(pid, wait.pid_ns, here));
    waiter.since = wait.since;
    waiter
}

/// Options for a new store: its capacity and whether it keeps owner records.
///
/// [`FileManager::create`] and [`FileManager::open_or_create`] use the defaults; these options
/// are for a store without owner records.
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
    /// Options for a store of `capacity` locks (`1..=`[`MAX_CAPACITY`](crate::MAX_CAPACITY)), with owner
    /// records on.
    pub fn new(capacity: u32) -> StoreOptions {
        StoreOptions {
            capacity,
            owner_death: true,
        }
    }

    /// Whether a new store keeps owner records (default: on). They are what makes acquiring a
    /// lock whose holder died holding it return
    /// [`Acquired::OwnerDied`](lock_api::Acquired::OwnerDied), what names each holder (pid,
    /// owner, since) in [`held`](Manager::held) and [`snapshot`](Manager::snapshot), and what
    /// deadlock detection follows from a waiter to the holder it waits for.
    ///
    /// This is a property of the store, fixed at creation and written in its marker, so every
    /// process sharing the store agrees on it; on `open` the store's own setting applies.
    /// Turning it off saves a load, two memory stores and a coarse clock read per lock/unlock
    /// pair, makes every acquisition `Clean`, leaves holders anonymous (`held` then probes
    /// every lock file), and turns deadlock detection off.
    pub fn owner_death(mut self, on: bool) -> StoreOptions {
        self.owner_death = on;
        self
    }

    /// Creates a store with these options at `path` (a directory that must not exist; its
    /// parent must).
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
        store::create(path.as_ref(), marker).and_then(FileManager::from_store)
    }

    /// Opens the store at `path`, creating it with these options when missing; the flag says
    /// whether this call created it. Any number of processes may race on a fresh path: all
    /// succeed, one creates.
    ///
    /// A failed call writes nothing: the capacity is checked before anything is created, and
    /// an existing store's capacity is compared with it before this call takes an owner number
    /// in the store's table (the one write of an open).
    ///
    /// # Errors
    ///
    /// As for [`create`](StoreOptions::create) and [`FileManager::open`]:
    /// [`Error::InvalidArgument`] for a capacity of 0 or above
    /// [`MAX_CAPACITY`](crate::MAX_CAPACITY), whether or not a store exists (no store can have
    /// it); [`Error::Incompatible`] when the existing store has another capacity.
    pub fn open_or_create(&self, path: impl AsRef<Path>) -> Result<(FileManager, bool)> {
        let path = path.as_ref();
        store::check_capacity(self.capacity)?;
        // Open, or create, or (someone created it meanwhile) open again. Only a concurrent
        // `remove` between the two can make the second open fail; a few rounds settle that.
        let mut last = None;
        for _ in 0..8 {
            // `store::open` writes nothing; only `from_store` takes an owner number, so the
            // capacities are compared in between.
            match store::open(path) {
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
                Ok(found) if found.marker.capacity != self.capacity => {
                    return Err(Error::incompatible(
                        format!("lock-file store {} capacity", path.display()),
                        self.capacity,
                        found.marker.capacity,
                    ));
                }
                Ok(found) => return FileManager::from_store(found).map(|m| (m, false)),
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
    /// This manager's owner number, from the table's counter: unique for the store's life.
    pub(crate) owner: u64,
    /// The pid as the owner record's second word carries it.
    pub(crate) stamp_pid: u64,
    /// The inode number of this process's pid namespace (0: unknown), written beside its pid
    /// in owner records and the waiter file, and compared with a record's when reading one.
    pub(crate) pid_ns: u32,
    /// Serialises this manager's threads before the allocation `flock`, which does not exclude
    /// threads sharing one description.
    alloc: Mutex<()>,
    pub(crate) slots: Mutex<Cache>,
    /// The deadlock timeout in milliseconds; 0 is off.
    deadlock_ms: AtomicU64,
    /// This manager's waiter file, made the first time it waits.
    owner_file: OnceLock<OwnerFile>,
    making_owner_file: Mutex<()>,
    /// Serialises this manager's threads before the detection `flock` (same reason as `alloc`).
    detecting: Mutex<()>,
    /// The process's timer thread, fetched the first time a wait needs one; `None`: poll.
    waker: OnceLock<Option<Arc<Waker>>>,
    /// This manager's blocked `lock()`s for the scan to adopt (`adopt.rs`), one cell per waiter
    /// file entry, made the first time one blocks.
    waits: OnceLock<Waits>,
    /// The fork generation the manager was opened in (`lockyard_fork`): another one means this
    /// process is a forked child, which shares the parent's descriptions, hence its locks.
    pub(crate) forks: u32,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // A forked child that drops its copy of the parent's manager must not remove the
        // parent's waiter file.
        if std::process::id() != self.pid {
            return;
        }
        if let Some(file) = self.owner_file.get() {
            // Remove the waiter file before its lock goes with the descriptor, so readers never
            // take a live owner for a dead one. Failing to remove it costs a reader's cleanup.
            let _ = rustix::fs::unlinkat(
                &self.store.owners_dir,
                file.name(),
                rustix::fs::AtFlags::empty(),
            );
        }
    }
}

impl Shared {
    /// Fails when this process is a forked child of the one that opened the manager: the child
    /// shares its parent's open file descriptions, so a `flock` would not exclude the parent
    /// (the child would take a lock its parent holds at once) and an unlock would release the
    /// parent's. One relaxed load and a compare, on every operation.
    #[inline(always)]
    pub(crate) fn usable(&self) -> Result<()> {
        if lockyard_fork::current() != self.forks {
            return Err(self.forked());
        }
        Ok(())
    }

    /// The error of an operation in a forked child ([`usable`](Self::usable)).
    #[cold]
    #[inline(never)]
    fn forked(&self) -> Error {
        Error::invalid(format!(
            "this manager of lock-file store {} was opened by process {} and inherited across \
             fork(2) by process {}; a forked child shares its parent's open files, hence its \
             locks, so it must open its own manager (FileManager::open) and drop the inherited one",
            self.store.path.display(),
            self.pid,
            std::process::id()
        ))
    }

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
    #[inline(always)]
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

    /// The deadlock timeout, `None` when detection is off (or impossible: no owner records).
    pub(crate) fn deadlock_timeout(&self) -> Option<Duration> {
        match self.deadlock_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// The process's timer thread, or `None` when waits must poll.
    pub(crate) fn waker(&self) -> Option<&Waker> {
        self.waker.get_or_init(|| Waker::get(self.pid)).as_deref()
    }

    /// This manager's registered waits (`adopt.rs`), indexed like its waiter file's entries.
    pub(crate) fn waits(&self) -> &Waits {
        self.waits.get_or_init(|| Waits::new(owner::MAX_WAITS))
    }

    /// This manager's waiter file, made the first time it is needed.
    ///
    /// # Errors
    ///
    /// `Io` when it cannot be made (the `owners` directory is not writable, say).
    fn owner_file(&self) -> Result<&OwnerFile> {
        if let Some(file) = self.owner_file.get() {
            return Ok(file);
        }
        let _turn = self
            .making_owner_file
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(file) = self.owner_file.get() {
            return Ok(file);
        }
        let store = &self.store;
        owner::sweep(&store.owners_dir);
        let file = OwnerFile::create(
            &store.owners_dir,
            &store.owners_path,
            self.owner,
            self.pid,
            self.pid_ns,
        )?;
        Ok(self.owner_file.get_or_init(|| file))
    }

    /// Publishes that this owner waits for lock `id`, from now; `None` when this owner already
    /// publishes [`MAX_WAITS`](owner::MAX_WAITS) waits (this one then goes unpublished).
    ///
    /// # Errors
    ///
    /// As [`owner_file`](Shared::owner_file), the first time.
    pub(crate) fn publish(&self, id: u32) -> Result<Option<Entry>> {
        Ok(self.owner_file()?.publish(id, lock_api::coarse_now_ms()))
    }

    /// Withdraws a published wait.
    pub(crate) fn withdraw(&self, entry: Entry) {
        if let Some(file) = self.owner_file.get() {
            file.withdraw(entry);
        }
    }

    /// Who holds lock `id`, if anyone: its record says who, and a probe says whether that
    /// holder is alive (a claimed record whose lock can be taken was left by a dead holder).
    ///
    /// Without owner records the probe alone decides, and the holder is anonymous
    /// (`Holder::default()`).
    pub(crate) fn holder(&self, id: u32) -> Result<Option<Holder>> {
        Ok(self.find_holder(id)?.map(|found| match found.claim {
            Some(claim) => holder_of(claim, found.dead, self.pid_ns),
            None => Holder::default(),
        }))
    }

    /// What [`holder`](Shared::holder) reports, before it becomes a `Holder`.
    fn find_holder(&self, id: u32) -> Result<Option<Found>> {
        let claim = if self.owner_death {
            match self.record(id).read() {
                None => return Ok(None),
                claim => claim,
            }
        } else {
            None
        };
        let alive = Some(Found { claim, dead: false });
        let held_here = self
            .slots()
            .get(id)
            .is_some_and(|slot| slot.phase.is_held());
        if held_here {
            return Ok(alive);
        }
        let file = match self.open_lock_file(id) {
            Ok(file) => file,
            // A damaged lock file costs its own lock only, not the whole answer. Nobody can
            // take a lock through a damaged path, so without records it is not held; a claimed
            // record (a holder that opened the file before the damage, or a dead one) cannot
            // be checked, so it is reported as it stands rather than hidden.
            Err(Error::Corrupt { .. }) => return Ok(claim.map(|_| Found { claim, dead: false })),
            Err(e) => return Err(e),
        };
        let path = || self.lock_path(id);
        if !flock::try_lock(&file, &path)? {
            return Ok(alive);
        }
        // The lock is free and this probe holds it: only a holder writes the record, so what
        // it says now is final. Still claimed: its holder died holding the lock.
        let dead = if self.owner_death {
            self.record(id).read().map(|claim| Found {
                claim: Some(claim),
                dead: true,
            })
        } else {
            None
        };
        flock::unlock(&file, &path)?;
        Ok(dead)
    }

    /// Every lock that is held or waited for, with its holder and its waiters: every record is
    /// read, and every live owner's waiter file.
    pub(crate) fn snapshot(&self) -> Result<Vec<LockState>> {
        let store = &self.store;
        let waits = owner::read_all(&store.owners_dir, &store.owners_path, self.capacity)?;
        let mut by_id: BTreeMap<u32, LockState> = BTreeMap::new();
        for id in 0..self.capacity {
            if let Some(holder) = self.holder(id)? {
                by_id.insert(id, LockState::new(LockId(id), Some(holder), Vec::new()));
            }
        }
        for wait in &waits {
            by_id
                .entry(wait.id)
                .or_insert_with(|| LockState::new(LockId(wait.id), None, Vec::new()))
                .waiters
                .push(waiter_of(wait, self.pid_ns));
        }
        Ok(by_id.into_values().collect())
    }

    /// The part of the wait-for graph that owner `me` reaches: the locks it waits for and
    /// their holders, the locks those holders wait for, and so on; each lock with the waits of
    /// the owners reached. That is all a cycle through `me` can be made of, and it costs a
    /// waiter file and a record per owner on the path, not a read of every waiter file.
    pub(crate) fn wait_graph_from(&self, me: u64) -> Result<Vec<LockState>> {
        let store = &self.store;
        let mut by_id: BTreeMap<u32, LockState> = BTreeMap::new();
        let mut reached = vec![me];
        let mut todo = vec![me];
        while let Some(owner) = todo.pop() {
            for wait in
                owner::read_one(&store.owners_dir, &store.owners_path, owner, self.capacity)?
            {
                let state = match by_id.entry(wait.id) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        let found = self.find_holder(wait.id)?;
                        // A dead holder is no edge: nothing to follow.
                        if let Some(next) = found
                            .as_ref()
                            .filter(|f| !f.dead)
                            .and_then(|f| f.claim)
                            .and_then(|c| c.owner)
                            .filter(|n| !reached.contains(n))
                        {
                            reached.push(next);
                            todo.push(next);
                        }
                        let holder = found.map(|f| match f.claim {
                            Some(claim) => holder_of(claim, f.dead, self.pid_ns),
                            None => Holder::default(),
                        });
                        e.insert(LockState::new(LockId(wait.id), holder, Vec::new()))
                    }
                };
                state.waiters.push(waiter_of(&wait, self.pid_ns));
            }
        }
        Ok(by_id.into_values().collect())
    }

    /// Runs `f` under the store's detection lock (this manager's mutex, then `flock` on the
    /// `deadlock` file), so that deadlock checks never overlap, in any process; `None`, without
    /// running `f`, when another check holds it now.
    ///
    /// Not waiting for it is deliberate: a released `flock` wakes every process queued on it,
    /// so fifty waiters whose checks fall due together would wake each other over a thousand
    /// times; a check that finds the lock taken is simply tried again a few ms later.
    ///
    /// # Errors
    ///
    /// `f`'s error, or `Io` naming the file when `flock` fails.
    pub(crate) fn try_detecting<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
        let _turn = match self.detecting.try_lock() {
            Ok(turn) => turn,
            Err(TryLockError::Poisoned(turn)) => turn.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(None),
        };
        let store = &self.store;
        let path = || store.detect_path.clone();
        if !flock::try_lock(&store.detect, &path)? {
            return Ok(None);
        }
        let out = f();
        flock::unlock(&store.detect, &path)?;
        out.map(Some)
    }
}

/// A lock table in a directory of lock files: one open store, and the owner of the locks taken
/// through it.
///
/// Every handle retrieved from one manager acts for the same owner (the manager), from any
/// thread; another manager, in this process or another, is another owner, with its own owner
/// number. Locks are `flock(2)`s on this manager's own descriptions of the lock files, so the
/// kernel releases them when the process dies, and the manager's owner records tell the next
/// acquirer ([`Acquired::OwnerDied`](lock_api::Acquired::OwnerDied)).
///
/// The lifecycle is [`lock_api::Store`]'s (`create`, `open`, `open_or_create`, `remove`, and
/// the `file:PATH` spec forms); the inherent functions of the same names are the same calls,
/// taking any `AsRef<Path>`.
///
/// Cloning a manager gives another handle on the same owner, not a new owner: open the store
/// again for that. A forked child shares its parent's descriptions, hence its locks: every
/// operation of a manager (or handle) inherited across `fork(2)` fails in the child with
/// [`Error::InvalidArgument`] saying so, and the child must open its own manager. Dropping the manager and all its handles while holding locks releases them, and as
/// the owner is gone their next acquirer gets `OwnerDied`.
#[derive(Debug, Clone)]
pub struct FileManager {
    shared: Arc<Shared>,
    capacity: u32,
}

impl FileManager {
    fn from_store(store: Store) -> Result<FileManager> {
        let forks = lockyard_fork::generation()?;
        let capacity = store.marker.capacity;
        let owner_death = store.marker.owner_death;
        let owner = store.table.next_owner();
        let pid = std::process::id();
        let pid_ns = lockyard_fork::pid_namespace();
        let me = clients::Entry {
            owner,
            pid,
            pid_ns,
            since_ms: lock_api::coarse_now_ms(),
        };
        // Best effort: an open that cannot be listed still opens.
        clients::claim(&store.clients, &store.clients_path, &me);
        let deadlock_ms = if owner_death {
            DEFAULT_DEADLOCK_TIMEOUT.as_millis() as u64
        } else {
            0
        };
        Ok(FileManager {
            shared: Arc::new(Shared {
                store,
                capacity,
                owner_death,
                pid,
                owner,
                stamp_pid: record::pid_bits(pid),
                pid_ns,
                alloc: Mutex::new(()),
                slots: Mutex::new(Cache::new()),
                deadlock_ms: AtomicU64::new(deadlock_ms),
                owner_file: OnceLock::new(),
                making_owner_file: Mutex::new(()),
                detecting: Mutex::new(()),
                waker: OnceLock::new(),
                waits: OnceLock::new(),
                forks,
            }),
            capacity,
        })
    }

    /// Creates a store of `capacity` locks at `path`, with owner records on (see
    /// [`StoreOptions`] for a store without them).
    ///
    /// # Errors
    ///
    /// As for [`StoreOptions::create`].
    pub fn create(path: impl AsRef<Path>, capacity: u32) -> Result<FileManager> {
        StoreOptions::new(capacity).create(path)
    }

    /// Opens the store at `path`, with the capacity it was created with. Reads and checks the
    /// marker, the directories and the table, then takes this manager's owner number and writes
    /// who it is in an entry of the `clients` file (the only writes); a store that fails the
    /// checks is left as it was.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when nothing is at `path`; [`Error::Incompatible`] when it is not a
    /// lock-file store or is of another format version; [`Error::Corrupt`] when it is damaged
    /// (a table of the wrong size, a header that disagrees with the marker, a symlink where a
    /// file should be); [`Error::Io`] for OS errors such as a permission denied, with the path.
    pub fn open(path: impl AsRef<Path>) -> Result<FileManager> {
        store::open(path.as_ref()).and_then(FileManager::from_store)
    }

    /// Opens the store at `path`, creating it with `capacity` locks when missing; the flag says
    /// whether this call created it.
    ///
    /// A failed call writes nothing (see [`StoreOptions::open_or_create`]).
    ///
    /// # Errors
    ///
    /// As for [`StoreOptions::open_or_create`]: [`Error::InvalidArgument`] for a capacity of 0
    /// or above [`MAX_CAPACITY`](crate::MAX_CAPACITY), even when a store exists;
    /// [`Error::Incompatible`] when the existing store has another capacity.
    pub fn open_or_create(path: impl AsRef<Path>, capacity: u32) -> Result<(FileManager, bool)> {
        StoreOptions::new(capacity).open_or_create(path)
    }

    /// Removes the store at `path`: renames it out of the way at once (to a hidden sibling,
    /// `.NAME.lockyard-removed-*`), then deletes it, its marker last.
    ///
    /// Processes that still have it open keep working on the removed files, apart from anyone
    /// who opens the path afterwards: remove a store only when nobody uses it.
    ///
    /// If the deletion fails midway (a directory inside that may not be written, say), what is
    /// left is renamed back to `path` (`renameat2(RENAME_NOREPLACE)`: never over anything that
    /// appeared there meanwhile) and the deletion's error is returned. The store is then still
    /// at its name, possibly with parts gone: [`open`](FileManager::open) reports it as it now
    /// is ([`Error::Corrupt`] when parts were deleted), and since the marker is deleted last,
    /// `remove` recognises it and can be retried once the cause is fixed.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when nothing is there; [`Error::Incompatible`] when it is not a
    /// lock-file store (then nothing is deleted); [`Error::Io`] for OS errors. A failed
    /// deletion is `Io` with `op` `"remove"` and the path of the entry that could not be
    /// deleted, inside the store put back at `path`; should renaming it back fail too, the
    /// path is the entry's in the hidden sibling, where what is left then stays, and the
    /// message says why the rename failed.
    pub fn remove(path: impl AsRef<Path>) -> Result<()> {
        store::remove(path.as_ref())
    }

    /// Removes the store at `path` as [`remove`](FileManager::remove) does, only if no manager
    /// has it open, in this process or another (the same as
    /// [`Store::remove_unused`](StoreLifecycle::remove_unused)): every open manager holds a
    /// shared `flock` on the store's marker, and this takes an exclusive one without waiting,
    /// holding it until the store is deleted. A manager that opens the store meanwhile waits for
    /// it to finish, then finds the store gone (`NotFound`) or kept.
    ///
    /// # Errors
    ///
    /// [`Error::InUse`] when a manager has the store open (nothing is removed; the message names
    /// the managers by pid from their `clients` entries); otherwise as
    /// [`remove`](FileManager::remove).
    pub fn remove_unused(path: impl AsRef<Path>) -> Result<()> {
        store::remove_unused(path.as_ref())
    }

    /// The store's directory, as given when it was opened.
    pub fn path(&self) -> &Path {
        &self.shared.store.path
    }

    /// Whether the store keeps owner records (reports `OwnerDied`, names holders, detects
    /// deadlocks).
    pub fn owner_death(&self) -> bool {
        self.shared.owner_death
    }

    /// This manager's owner key, as [`Holder::owner`] gives it in `held`, `snapshot` and
    /// deadlock cycles: `file owner N`, with N unique for the life of the store.
    pub fn owner(&self) -> String {
        owner_key(self.shared.owner)
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

/// The lifecycle every table backend shares; `Address` is the store's directory.
impl StoreLifecycle for FileManager {
    type Address = Path;

    fn address(spec: &StoreSpec) -> Result<PathBuf> {
        match spec {
            StoreSpec::File(path) => Ok(path.clone()),
            other => Err(wrong_scheme("file", other)),
        }
    }

    fn create(store: &Path, capacity: u32) -> Result<FileManager> {
        FileManager::create(store, capacity)
    }

    fn open(store: &Path) -> Result<FileManager> {
        FileManager::open(store)
    }

    fn open_or_create(store: &Path, capacity: u32) -> Result<(FileManager, bool)> {
        FileManager::open_or_create(store, capacity)
    }

    fn remove(store: &Path) -> Result<()> {
        FileManager::remove(store)
    }

    fn remove_unused(store: &Path) -> Result<()> {
        FileManager::remove_unused(store)
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
        shared.usable()?;
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
        self.shared.usable()?;
        let id = self.shared.check(id)?;
        self.shared.locker(id)
    }

    fn allocate_and_retrieve(&self, id: LockId) -> Result<FileLocker> {
        self.shared.usable()?;
        let raw = self.shared.check(id)?;
        // Open the lock file first: a damaged store must not leave a fresh allocation behind.
        let locker = self.shared.locker(raw)?;
        if !self.shared.with_bitmap(|b| b.set(raw))? {
            return Err(Error::AlreadyAllocated(id));
        }
        Ok(locker)
    }

    fn free_all(&self) -> Result<()> {
        self.shared.usable()?;
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
        self.shared.usable()?;
        let store = &self.shared.store;
        let healthy =
            store::healthy_lock_files(&store.locks_dir, &store.locks_path, self.capacity)?;
        let free = self.shared.with_bitmap(|b| b.count_free_in(&healthy))?;
        Ok(Some(free))
    }

    /// Every held lock with its holder: pid, host, owner, since, and whether it is dead.
    ///
    /// With owner records, only locks whose record is claimed are probed (a brief
    /// `flock(LOCK_EX | LOCK_NB)` on a fresh description); a claimed record whose lock the
    /// probe can take was left by a holder that died holding it, and is listed with
    /// [`Holder::dead`] set until someone takes the lock over. Without records, every lock file
    /// is probed and holders are anonymous. A probe that finds a lock free holds it for a
    /// moment, so a concurrent `try_lock` of that lock may fail spuriously.
    ///
    /// A lock whose file is damaged cannot be probed: it is listed iff its record is claimed
    /// (without owner records, never), and the other locks are reported as usual.
    fn held(&self) -> Result<Vec<HeldLock>> {
        self.shared.usable()?;
        let mut out = Vec::new();
        for id in 0..self.capacity {
            if let Some(holder) = self.shared.holder(id)? {
                let holder = (holder != Holder::default()).then_some(holder);
                out.push(HeldLock::new(LockId(id), holder));
            }
        }
        Ok(out)
    }

    /// Every lock held or waited for: the holders as [`held`](Manager::held) finds them (dead
    /// ones flagged), and the waits every live manager of the store publishes in its waiter
    /// file, each with pid, host, owner and since.
    ///
    /// Reading the waiter files deletes those of owners that died.
    fn snapshot(&self) -> Result<Vec<LockState>> {
        self.shared.usable()?;
        self.shared.snapshot()
    }

    /// The other managers that have the store open, from the entries they keep in the store's
    /// `clients` file while they live (`clients.rs`): pid (where the reader's pid namespace is
    /// theirs), host, owner (`file owner N`) and when they opened the store. A snapshot: a
    /// manager that opens meanwhile may be named by the previous owner of its entry for that
    /// moment, and one of more than 4,096 open at once is not listed.
    fn clients(&self) -> Result<Vec<Holder>> {
        self.shared.usable()?;
        let store = &self.shared.store;
        let here = self.shared.pid_ns;
        Ok(clients::others(&store.clients, &store.clients_path)?
            .into_iter()
            .map(|entry| {
                let mut who = Holder::default()
                    .host(host_name())
                    .owner(owner_key(entry.owner));
                who.pid = lock_api::pid_seen_here(entry.pid, entry.pid_ns, here);
                who.since = entry.since();
                who
            })
            .collect())
    }

    fn deadlock_timeout(&self) -> Option<Duration> {
        self.shared.deadlock_timeout()
    }

    /// Sets how long a blocked `lock` (or `try_lock_for`) of this manager waits before it checks
    /// for a deadlock; zero turns detection off. Below a millisecond counts as one.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for a store without owner records, whose holders are unknown.
    fn set_deadlock_timeout(&self, timeout: Duration) -> Result<()> {
        self.shared.usable()?;
        if !self.shared.owner_death {
            return Err(Error::Unsupported(
                "deadlock detection on a lock-file store without owner records",
            ));
        }
        let ms = match timeout.as_millis() {
            0 if timeout.is_zero() => 0,
            0 => 1,
            ms => u64::try_from(ms).unwrap_or(u64::MAX),
        };
        self.shared.deadlock_ms.store(ms, Ordering::Relaxed);
        Ok(())
    }
}
