//! How lockyard's comparison benchmarks open each backend: one small adapter per backend.
#![doc = include_str!("../README.md")]

use std::path::{Path, PathBuf};

use lock_api::{Error, LockId, Locker, Manager, Result, Store, StoreSpec};

pub use dirlock::DirLock;
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

fn shm_name(spec: &str) -> Result<String> {
    match parse(spec)? {
        StoreSpec::Shm(name) => Ok(name),
        other => Err(lock_api::wrong_scheme("shm", &other)),
    }
}

fn path_of(spec: &str, scheme: &str) -> Result<PathBuf> {
    match parse(spec)? {
        StoreSpec::File(path) if scheme == "file" => Ok(path),
        StoreSpec::Dir(path) if scheme == "dir" => Ok(path),
        other => Err(lock_api::wrong_scheme(scheme, &other)),
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

// lock-shm does not implement `Store` yet; when it does, each body becomes the
// `<ShmManager as Store>::*_spec` call, as for lock-mem above.
impl Backend for ShmManager {
    type Lock = lock_shm::ShmLocker;
    const NAME: &'static str = "shm";

    fn spec(_dir: &Path, name: &str) -> String {
        format!("shm:{name}")
    }

    fn create(spec: &str, capacity: u32) -> Result<Self> {
        ShmManager::create(&shm_name(spec)?, capacity)
    }

    fn open(spec: &str) -> Result<Self> {
        ShmManager::open_existing(&shm_name(spec)?)
    }

    fn remove(spec: &str) -> Result<()> {
        ShmManager::remove(&shm_name(spec)?).map(drop)
    }

    fn lock(&self, id: u32) -> Result<Self::Lock> {
        self.retrieve(LockId(id))
    }
}

// lock-file's inherent lifecycle has the `Store` shape already; the switch is the same as shm's.
impl Backend for FileManager {
    type Lock = lock_file::FileLocker;
    const NAME: &'static str = "file";

    fn spec(dir: &Path, name: &str) -> String {
        format!("file:{}", dir.join(name).display())
    }

    fn create(spec: &str, capacity: u32) -> Result<Self> {
        FileManager::create(path_of(spec, "file")?, capacity)
    }

    fn open(spec: &str) -> Result<Self> {
        FileManager::open(path_of(spec, "file")?)
    }

    fn remove(spec: &str) -> Result<()> {
        FileManager::remove(path_of(spec, "file")?)
    }

    fn lock(&self, id: u32) -> Result<Self::Lock> {
        self.retrieve(LockId(id))
    }
}

/// dirlock as a table of one lock (id 0) over a directory, until `dirlock::DirTable`
/// implements `Store`: then this struct goes and `Backend` is implemented for `DirTable`.
#[derive(Debug)]
pub struct DirStore {
    path: PathBuf,
}

impl Backend for DirStore {
    type Lock = DirLock;
    const NAME: &'static str = "dirlock";

    fn spec(dir: &Path, name: &str) -> String {
        format!("dir:{}", dir.join(name).display())
    }

    fn create(spec: &str, _capacity: u32) -> Result<Self> {
        let path = path_of(spec, "dir")?;
        std::fs::create_dir(&path).map_err(|source| Error::Io {
            op: "mkdir",
            path: path.clone(),
            source,
        })?;
        Ok(DirStore { path })
    }

    fn open(spec: &str) -> Result<Self> {
        let path = path_of(spec, "dir")?;
        if !path.is_dir() {
            return Err(Error::NotFound {
                what: format!("directory {}", path.display()),
            });
        }
        Ok(DirStore { path })
    }

    fn remove(spec: &str) -> Result<()> {
        let path = path_of(spec, "dir")?;
        std::fs::remove_dir_all(&path).map_err(|source| Error::Io {
            op: "remove directory",
            path,
            source,
        })
    }

    fn lock(&self, id: u32) -> Result<Self::Lock> {
        if id != 0 {
            return Err(Error::OutOfRange {
                id: LockId(id),
                capacity: 1,
            });
        }
        DirLock::new(&self.path)
    }
}

#[cfg(feature = "etcd")]
pub use etcd::{ENDPOINTS_ENV, EtcdStore};

#[cfg(feature = "etcd")]
mod etcd {
    //! lock-etcd behind the `etcd` feature (building etcd-client needs protoc).

    use std::path::Path;
    use std::time::Duration;

    use lock_api::{LockId, Manager, Result, StoreSpec};
    use lock_etcd::{EtcdLocks, EtcdOptions, EtcdTable};

    use crate::Backend;

    /// The environment variable that holds the etcd endpoints (`HOST:PORT,...`) of the run.
    pub const ENDPOINTS_ENV: &str = "LOCKYARD_BENCH_ETCD";

    /// A lock-etcd table and the client it was opened with.
    #[derive(Debug)]
    pub struct EtcdStore {
        table: EtcdTable,
        _client: EtcdLocks,
    }

    impl EtcdStore {
        /// The table, for allocation.
        pub fn table(&self) -> &EtcdTable {
            &self.table
        }
    }

    fn connect(spec: &str) -> Result<(EtcdLocks, String)> {
        match StoreSpec::parse(spec)? {
            StoreSpec::Etcd(e) => {
                let options = EtcdOptions::new()
                    .prefix(e.prefix.clone())
                    .ttl(e.ttl.unwrap_or(Duration::from_secs(10)));
                Ok((EtcdLocks::connect(&e.endpoints, options)?, e.table.clone()))
            }
            other => Err(lock_api::wrong_scheme("etcd", &other)),
        }
    }

    // Until lock-etcd implements `Store`: the switch is the same as shm's.
    impl Backend for EtcdStore {
        type Lock = <EtcdTable as Manager>::Locker;
        const NAME: &'static str = "etcd";

        fn spec(_dir: &Path, name: &str) -> String {
            let endpoints = std::env::var(ENDPOINTS_ENV).unwrap_or_default();
            format!("etcd://{endpoints}/lockyard-bench/{name}")
        }

        fn create(spec: &str, capacity: u32) -> Result<Self> {
            let (client, table) = connect(spec)?;
            let table = client.create_table(&table, capacity)?;
            Ok(EtcdStore {
                table,
                _client: client,
            })
        }

        fn open(spec: &str) -> Result<Self> {
            let (client, table) = connect(spec)?;
            // The table's capacity must be repeated until `Store::open` reads it.
            let table = client.open_table(&table, crate::ETCD_CAPACITY)?;
            Ok(EtcdStore {
                table,
                _client: client,
            })
        }

        fn remove(spec: &str) -> Result<()> {
            let (client, table) = connect(spec)?;
            client.remove_table(&table)
        }

        fn lock(&self, id: u32) -> Result<Self::Lock> {
            self.table.retrieve(LockId(id))
        }
    }
}

/// The capacity of every etcd table the benchmarks create (lock-etcd's `open_table` needs it).
#[cfg(feature = "etcd")]
pub const ETCD_CAPACITY: u32 = 2048;

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
        StoreSpec::Dir(_) => run(<DirStore as Backend>::open(spec)?, f),
        #[cfg(feature = "etcd")]
        StoreSpec::Etcd(_) => run(<EtcdStore as Backend>::open(spec)?, f),
        other => Err(Error::Unsupported(match other.scheme() {
            "etcd" => "etcd stores (build with --features etcd)",
            _ => "this store kind",
        })),
    }
}
