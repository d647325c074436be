//! How lockyard's comparison benchmarks open each backend: through its spec and `lock_api::Store`,
//! as users do.
#![doc = include_str!("../README.md")]

use std::path::Path;

use lock_api::{Error, LockId, Result, Store, StoreSpec};

pub use dirlock::{DirLock, DirTable};
pub use lock_file::FileManager;
pub use lock_mem::MemManager;
pub use lock_shm::ShmManager;

/// A backend as the benchmarks use it: a [`Store`] of numbered locks, reached through a spec
/// string, the way users reach it (`lockyard::open(spec)` and `lockctl` parse the same spec and
/// call the same `Store` methods).
///
/// Every method is provided and goes through [`StoreSpec::parse`] and the backend's own `Store`
/// implementation, so no backend has an adapter of its own. The benchmarks call these with the
/// concrete type (`B::open_store`), not through `lockyard`'s boxed `DynManager`: a lock handle is
/// the backend's own `Locker`, so the timed calls are as direct for every backend.
pub trait Backend: Store<Locker: 'static> + 'static {
    /// The backend's column in the report: `mem`, `shm`, `file`, `dirlock`, `etcd`.
    const NAME: &'static str;

    /// The spec of a store called `name`, placed under `dir` when the store is a path.
    fn spec(dir: &Path, name: &str) -> String;

    /// Creates the store `spec` names ([`Store::create_spec`]).
    ///
    /// # Errors
    ///
    /// A malformed spec, or the backend's own creation errors.
    fn create_store(spec: &str, capacity: u32) -> Result<Self> {
        Self::create_spec(&StoreSpec::parse(spec)?, capacity)
    }

    /// Opens the existing store `spec` names, in this or another process ([`Store::open_spec`]).
    ///
    /// # Errors
    ///
    /// A malformed spec, or the backend's own open errors (`NotFound`, ...).
    fn open_store(spec: &str) -> Result<Self> {
        Self::open_spec(&StoreSpec::parse(spec)?)
    }

    /// Removes the store `spec` names ([`Store::remove_spec`]).
    ///
    /// # Errors
    ///
    /// A malformed spec, or the backend's own remove errors.
    fn remove_store(spec: &str) -> Result<()> {
        Self::remove_spec(&StoreSpec::parse(spec)?)
    }

    /// A handle on lock `id` ([`Manager::retrieve`](lock_api::Manager::retrieve)).
    ///
    /// # Errors
    ///
    /// `OutOfRange` and the backend's own errors.
    fn lock(&self, id: u32) -> Result<Self::Locker> {
        self.retrieve(LockId(id))
    }
}

impl Backend for MemManager {
    const NAME: &'static str = "mem";

    fn spec(_dir: &Path, name: &str) -> String {
        format!("mem:{name}")
    }
}

impl Backend for ShmManager {
    const NAME: &'static str = "shm";

    fn spec(_dir: &Path, name: &str) -> String {
        format!("shm:{name}")
    }
}

impl Backend for FileManager {
    const NAME: &'static str = "file";

    fn spec(dir: &Path, name: &str) -> String {
        format!("file:{}", dir.join(name).display())
    }
}

impl Backend for DirTable {
    const NAME: &'static str = "dirlock";

    fn spec(dir: &Path, name: &str) -> String {
        format!("dir:{}", dir.join(name).display())
    }
}

#[cfg(feature = "etcd")]
pub use lock_etcd::EtcdTable;

/// The environment variable that holds the etcd endpoints (`HOST:PORT,...`) of the run.
#[cfg(feature = "etcd")]
pub const ETCD_ENDPOINTS_ENV: &str = "LOCKYARD_BENCH_ETCD";

#[cfg(feature = "etcd")]
impl Backend for EtcdTable {
    const NAME: &'static str = "etcd";

    fn spec(_dir: &Path, name: &str) -> String {
        let endpoints = std::env::var(ETCD_ENDPOINTS_ENV).unwrap_or_default();
        format!("etcd://{endpoints}/lockyard-bench/{name}")
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
        use lock_api::Locker as _;
        let lock = b.lock(0)?;
        let _acquired = lock.lock()?;
        let out = f();
        lock.unlock()?;
        Ok(out)
    }
    match StoreSpec::parse(spec)? {
        // An in-process table cannot outlive its process: a cold start creates it.
        StoreSpec::Mem(_) => run(MemManager::create_store(spec, 1)?, f),
        StoreSpec::Shm(_) => run(ShmManager::open_store(spec)?, f),
        StoreSpec::File(_) => run(FileManager::open_store(spec)?, f),
        StoreSpec::Dir(_) => run(DirTable::open_store(spec)?, f),
        #[cfg(feature = "etcd")]
        StoreSpec::Etcd(_) => run(EtcdTable::open_store(spec)?, f),
        other => Err(Error::Unsupported(match other.scheme() {
            "etcd" => "etcd stores (build with --features etcd)",
            _ => "this store kind",
        })),
    }
}
