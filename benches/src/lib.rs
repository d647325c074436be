//! How lockyard's comparison benchmarks open each backend: one small adapter per backend.
#![doc = include_str!("../README.md")]

use std::path::{Path, PathBuf};

use lock_api::{Error, LockId, Locker, Manager, Result, Store, StoreSpec};

pub use dirlock::{DirLock, DirTable};
pub use lock_file::FileManager;
pub use lock_mem::MemManager;
pub use lock_shm::ShmManager;

/// A backend as the benchmarks use it: a store of numbered locks, reached through a spec string.
///
/// Each implementation is the one place where that backend is opened, so that moving a backend
/// onto [`lock_api::Store`] changes one line here and nothing in the benchmarks.
pub trait Backend: Sized + Send + Sync + 'static {
    /// A handle on one lock.
    type Lock: Locker + 'static;

    /// The backend's column in the report: `mem`, `shm`, `file`, `dirlock`, `etcd`.
    const NAME: &'static str;

    /// The spec of a store called `name`, placed under `dir` when the store is a path.
    fn spec(dir: &Path, name: &str) -> String;

    /// Creates the store.
    ///
    /// # Errors
    ///
    /// A malformed spec, or the backend's own creation errors.
    fn create(spec: &str, capacity: u32) -> Result<Self>;

    /// Opens the existing store (in this or another process).
    ///
    /// # Errors
    ///
    /// A malformed spec, or the backend's own open errors (`NotFound`, ...).
    fn open(spec: &str) -> Result<Self>;

    /// Removes the store.
    ///
    /// # Errors
    ///
    /// A malformed spec, or the backend's own remove errors.
    fn remove(spec: &str) -> Result<()>;

    /// A handle on lock `id`.
    ///
    /// # Errors
    ///
    /// `OutOfRange` and the backend's own errors.
    fn lock(&self, id: u32) -> Result<Self::Lock>;
}

fn parse(spec: &str) -> Result<StoreSpec> {
    StoreSpec::parse(spec)
}

fn file_path(spec: &str) -> Result<PathBuf> {
    match parse(spec)? {
        StoreSpec::File(path) => Ok(path),
        other => Err(lock_api::wrong_scheme("file", &other)),
    }
}

impl Backend for MemManager {
    type Lock = lock_mem::MemLocker;
    const NAME: &'static str = "mem";

    fn spec(_dir: &Path, name: &str) -> String {
        format!("mem:{name}")
    }

    fn create(spec: &str, capacity: u32) -> Result<Self> {
        <MemManager as Store>::create_spec(&parse(spec)?, capacity)
    }

    fn open(spec: &str) -> Result<Self> {
        <MemManager as Store>::open_spec(&parse(spec)?)
    }

    fn remove(spec: &str) -> Result<()> {
        <MemManager as Store>::remove_spec(&parse(spec)?)
    }

    fn lock(&self, id: u32) -> Result<Self::Lock> {
        self.retrieve(LockId(id))
    }
}

impl Backend for ShmManager {
    type Lock = lock_shm::ShmLocker;
    const NAME: &'static str = "shm";

    fn spec(_dir: &Path, name: &str) -> String {
        format!("shm:{name}")
    }

    fn create(spec: &str, capacity: u32) -> Result<Self> {
        <ShmManager as Store>::create_spec(&parse(spec)?, capacity)
    }

    fn open(spec: &str) -> Result<Self> {
        <ShmManager as Store>::open_spec(&parse(spec)?)
    }

    fn remove(spec: &str) -> Result<()> {
        <ShmManager as Store>::remove_spec(&parse(spec)?)
    }

    fn lock(&self, id: u32) -> Result<Self::Lock> {
        self.retrieve(LockId(id))
    }
}

// lock-file does not implement `Store` yet; when it does, each body becomes the
// `<FileManager as Store>::*_spec` call, as for the others.
impl Backend for FileManager {
    type Lock = lock_file::FileLocker;
    const NAME: &'static str = "file";

    fn spec(dir: &Path, name: &str) -> String {
        format!("file:{}", dir.join(name).display())
    }

    fn create(spec: &str, capacity: u32) -> Result<Self> {
        FileManager::create(file_path(spec)?, capacity)
    }

    fn open(spec: &str) -> Result<Self> {
        FileManager::open(file_path(spec)?)
    }

    fn remove(spec: &str) -> Result<()> {
        FileManager::remove(file_path(spec)?)
    }

    fn lock(&self, id: u32) -> Result<Self::Lock> {
        self.retrieve(LockId(id))
    }
}

impl Backend for DirTable {
    type Lock = DirLock;
    const NAME: &'static str = "dirlock";

    fn spec(dir: &Path, name: &str) -> String {
        format!("dir:{}", dir.join(name).display())
    }

    fn create(spec: &str, capacity: u32) -> Result<Self> {
        <DirTable as Store>::create_spec(&parse(spec)?, capacity)
    }

    fn open(spec: &str) -> Result<Self> {
        <DirTable as Store>::open_spec(&parse(spec)?)
    }

    fn remove(spec: &str) -> Result<()> {
        <DirTable as Store>::remove_spec(&parse(spec)?)
    }

    fn lock(&self, id: u32) -> Result<Self::Lock> {
        self.retrieve(LockId(id))
    }
}

#[cfg(feature = "etcd")]
pub use lock_etcd::EtcdTable;

/// The environment variable that holds the etcd endpoints (`HOST:PORT,...`) of the run.
#[cfg(feature = "etcd")]
pub const ETCD_ENDPOINTS_ENV: &str = "LOCKYARD_BENCH_ETCD";

#[cfg(feature = "etcd")]
impl Backend for EtcdTable {
    type Lock = <EtcdTable as Manager>::Locker;
    const NAME: &'static str = "etcd";

    fn spec(_dir: &Path, name: &str) -> String {
        let endpoints = std::env::var(ETCD_ENDPOINTS_ENV).unwrap_or_default();
        format!("etcd://{endpoints}/lockyard-bench/{name}")
    }

    fn create(spec: &str, capacity: u32) -> Result<Self> {
        <EtcdTable as Store>::create_spec(&parse(spec)?, capacity)
    }

    fn open(spec: &str) -> Result<Self> {
        <EtcdTable as Store>::open_spec(&parse(spec)?)
    }

    fn remove(spec: &str) -> Result<()> {
        <EtcdTable as Store>::remove_spec(&parse(spec)?)
    }

    fn lock(&self, id: u32) -> Result<Self::Lock> {
        self.retrieve(LockId(id))
    }
}

/// Opens the store `spec` names with the backend its scheme selects, takes lock 0 and calls
/// `f` while holding it; the lock is released afterwards. What the cold-start process does.
///
/// # Errors
///
/// Open, lock and unlock errors, and `Unsupported` for a backend this build does not have.
pub fn with_lock_zero<T>(spec: &str, f: impl FnOnce() -> T) -> Result<T> {
    fn run<B: Backend, T>(b: B, f: impl FnOnce() -> T) -> Result<T> {
        let lock = b.lock(0)?;
        let _acquired = lock.lock()?;
        let out = f();
        lock.unlock()?;
        Ok(out)
    }
    match parse(spec)? {
        // An in-process table cannot outlive its process: a cold start creates it.
        StoreSpec::Mem(_) => run(<MemManager as Backend>::create(spec, 1)?, f),
        StoreSpec::Shm(_) => run(<ShmManager as Backend>::open(spec)?, f),
        StoreSpec::File(_) => run(<FileManager as Backend>::open(spec)?, f),
        StoreSpec::Dir(_) => run(<DirTable as Backend>::open(spec)?, f),
        #[cfg(feature = "etcd")]
        StoreSpec::Etcd(_) => run(<EtcdTable as Backend>::open(spec)?, f),
        other => Err(Error::Unsupported(match other.scheme() {
            "etcd" => "etcd stores (build with --features etcd)",
            _ => "this store kind",
        })),
    }
}
