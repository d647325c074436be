//! The subjects of the comparison: the backends and their peers, behind one small lock interface.

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lock_api::{Error, Locker};
use lockyard_benches::{Backend, DirTable, FileManager, MemManager, ShmManager};
use rustix::fs::FlockOperation;

use crate::Ctx;
use crate::sys::{GlibcArray, GlibcMutex};

/// A backend or a peer: one column of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subject {
    /// lock-mem.
    Mem,
    /// lock-shm.
    Shm,
    /// lock-file.
    File,
    /// dirlock.
    Dirlock,
    /// `parking_lot::Mutex` (in-process peer of mem).
    ParkingLot,
    /// An array of glibc robust, process-shared mutexes in a shared file.
    Glibc,
    /// A bare `flock(LOCK_EX)` + `flock(LOCK_UN)` pair on one file.
    Flock,
    /// The classic pid file: `open(O_CREAT|O_EXCL)`, write the pid, `unlink` to release.
    PidFile,
    /// lock-etcd.
    #[cfg(feature = "etcd")]
    Etcd,
    /// etcd's own Lock and Unlock RPCs on one session lease.
    #[cfg(feature = "etcd")]
    EtcdRpc,
}

impl Subject {
    /// Every subject, backends first.
    pub(crate) const ALL: &[Subject] = &[
        Subject::Mem,
        Subject::Shm,
        Subject::File,
        Subject::Dirlock,
        #[cfg(feature = "etcd")]
        Subject::Etcd,
        Subject::ParkingLot,
        Subject::Glibc,
        Subject::Flock,
        Subject::PidFile,
        #[cfg(feature = "etcd")]
        Subject::EtcdRpc,
    ];

    /// The column name in the figures and the report.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Subject::Mem => MemManager::NAME,
            Subject::Shm => ShmManager::NAME,
            Subject::File => FileManager::NAME,
            Subject::Dirlock => DirTable::NAME,
            Subject::ParkingLot => "parking_lot",
            Subject::Glibc => "glibc-robust",
            Subject::Flock => "flock",
            Subject::PidFile => "pidfile",
            #[cfg(feature = "etcd")]
            Subject::Etcd => lockyard_benches::EtcdTable::NAME,
            #[cfg(feature = "etcd")]
            Subject::EtcdRpc => "etcd-lock-rpc",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Subject> {
        Subject::ALL.iter().copied().find(|s| s.name() == name)
    }

    /// Whether it needs the run's etcd cluster (lock-etcd, and etcd's own Lock RPC).
    pub(crate) fn needs_etcd(self) -> bool {
        match self {
            #[cfg(feature = "etcd")]
            Subject::Etcd | Subject::EtcdRpc => true,
            _ => false,
        }
    }

    /// Whether it is one of lockyard's backends (as opposed to a peer).
    pub(crate) fn is_backend(self) -> bool {
        match self {
            Subject::Mem | Subject::Shm | Subject::File | Subject::Dirlock => true,
            #[cfg(feature = "etcd")]
            Subject::Etcd => true,
            _ => false,
        }
    }
}

/// One lock, whatever implements it. Failures panic: this is a benchmark.
///
/// Every implementation's `acquire`, `try_acquire` and `release` is `#[inline(never)]`, so each
/// subject's timed loop makes one out-of-line call per half, as a program calling any lock
/// library does, whatever the compiler would inline for one subject and not for another. It
/// matters for the subjects that make system calls: on hosts where the first return after a
/// system call is slow (`host.rs`: about 125 ns after a `flock` on this project's VMs since
/// kernel build `fc-v1252`), a pair whose system calls were inlined into the loop paid none of
/// it. The flock peer was: 535 ns a pair in the contention group's worker, where lock-file,
/// called, paid 800 and the peer itself, called from criterion's loop, 793.
pub(crate) trait Mutexish: Send + Sync {
    /// Blocks until held; `true` when the previous holder died holding it.
    fn acquire(&self) -> bool;
    /// Waits at most `timeout`: `None` when it elapsed, else as [`acquire`](Mutexish::acquire).
    fn acquire_for(&self, timeout: Duration) -> Option<bool>;
    /// Takes it if free.
    fn try_acquire(&self) -> bool;
    /// Releases it.
    fn release(&self);
}

/// A lockyard lock.
#[derive(Debug)]
pub(crate) struct Ours<L>(pub(crate) L);

impl<L: Locker> Mutexish for Ours<L> {
    #[inline(never)]
    fn acquire(&self) -> bool {
        black_box(Locker::lock(&self.0).expect("lock")).owner_died()
    }

    fn acquire_for(&self, timeout: Duration) -> Option<bool> {
        match Locker::try_lock_for(&self.0, timeout) {
            Ok(a) => Some(a.owner_died()),
            Err(Error::Timeout) => None,
            Err(e) => panic!("try_lock_for: {e}"),
        }
    }

    #[inline(never)]
    fn try_acquire(&self) -> bool {
        black_box(Locker::try_lock(&self.0).expect("try_lock")).is_some()
    }

    #[inline(never)]
    fn release(&self) {
        Locker::unlock(&self.0).expect("unlock");
    }
}

impl Mutexish for GlibcMutex {
    #[inline(never)]
    fn acquire(&self) -> bool {
        self.lock()
    }

    fn acquire_for(&self, timeout: Duration) -> Option<bool> {
        self.lock_for(timeout)
    }

    #[inline(never)]
    fn try_acquire(&self) -> bool {
        self.try_lock()
    }

    #[inline(never)]
    fn release(&self) {
        self.unlock();
    }
}

/// A bare flock pair on this process's own open file description.
#[derive(Debug)]
pub(crate) struct FlockLock(File);

impl FlockLock {
    pub(crate) fn open(path: &Path) -> FlockLock {
        FlockLock(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display())),
        )
    }
}

impl Mutexish for FlockLock {
    #[inline(never)]
    fn acquire(&self) -> bool {
        rustix::fs::flock(&self.0, FlockOperation::LockExclusive).expect("flock");
        false
    }

    fn acquire_for(&self, timeout: Duration) -> Option<bool> {
        poll_for(timeout, || self.try_acquire())
    }

    #[inline(never)]
    fn try_acquire(&self) -> bool {
        match rustix::fs::flock(&self.0, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => true,
            Err(rustix::io::Errno::WOULDBLOCK) => false,
            Err(e) => panic!("flock: {e}"),
        }
    }

    #[inline(never)]
    fn release(&self) {
        rustix::fs::flock(&self.0, FlockOperation::Unlock).expect("flock");
    }
}

/// The classic pid-file lock (no staleness check at all).
#[derive(Debug)]
pub(crate) struct PidFile(pub(crate) PathBuf);

impl Mutexish for PidFile {
    #[inline(never)]
    fn acquire(&self) -> bool {
        while !self.try_acquire() {
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    fn acquire_for(&self, timeout: Duration) -> Option<bool> {
        poll_for(timeout, || self.try_acquire())
    }

    #[inline(never)]
    fn try_acquire(&self) -> bool {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.0)
        {
            Ok(mut file) => {
                file.write_all(std::process::id().to_string().as_bytes())
                    .expect("write pid");
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => panic!("pid file {}: {e}", self.0.display()),
        }
    }

    #[inline(never)]
    fn release(&self) {
        std::fs::remove_file(&self.0).expect("unlink pid file");
    }
}

/// Tries every millisecond until `timeout` (the peers that cannot block with a deadline).
fn poll_for(timeout: Duration, mut attempt: impl FnMut() -> bool) -> Option<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if attempt() {
            return Some(false);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What to do with the locks of a subject once opened: a generic visitor, so that every
/// subject's loop is compiled for that subject (no dynamic dispatch in the timed paths).
pub(crate) trait Work {
    type Out;
    fn run<M: Mutexish + 'static>(self, locks: Vec<M>) -> Self::Out;
}

/// Opens locks `0..count` of `subject`'s store (a spec, or a path for the peers) in this
/// process, through a manager of its own, and hands them to `work`.
pub(crate) fn open_locks<W: Work>(subject: Subject, store: &str, count: u32, work: W) -> W::Out {
    fn via<B: Backend, W: Work>(store: &str, count: u32, work: W) -> W::Out {
        let backend = B::open_store(store).unwrap_or_else(|e| panic!("open {store}: {e}"));
        let locks = (0..count)
            .map(|i| Ours(backend.lock(i).expect("lock handle")))
            .collect();
        let out = work.run(locks);
        drop(backend);
        out
    }
    match subject {
        Subject::Mem => via::<MemManager, W>(store, count, work),
        Subject::Shm => via::<ShmManager, W>(store, count, work),
        Subject::File => via::<FileManager, W>(store, count, work),
        Subject::Dirlock => via::<DirTable, W>(store, count, work),
        Subject::Glibc => {
            let array = GlibcArray::open(Path::new(store));
            work.run((0..count as usize).map(|i| array.mutex(i)).collect())
        }
        Subject::Flock => {
            assert_eq!(count, 1, "the flock peer is one lock");
            work.run(vec![FlockLock::open(Path::new(store))])
        }
        Subject::PidFile => {
            assert_eq!(count, 1, "the pid-file peer is one lock");
            work.run(vec![PidFile(PathBuf::from(store))])
        }
        #[cfg(feature = "etcd")]
        Subject::Etcd => via::<lockyard_benches::EtcdTable, W>(store, count, work),
        #[cfg(feature = "etcd")]
        Subject::EtcdRpc => {
            assert_eq!(count, 1, "the etcd Lock RPC peer is one lock");
            work.run(vec![crate::etcd::LockRpc::connect(store)])
        }
        Subject::ParkingLot => panic!("parking_lot is an in-process peer"),
    }
}

/// A store made for one subject, removed on drop.
pub(crate) struct Prepared {
    pub(crate) subject: Subject,
    /// The spec (backends) or path (peers) children open.
    pub(crate) store: String,
    _keep: Option<Box<dyn std::any::Any>>,
    cleanup: Option<Box<dyn FnOnce()>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("subject", &self.subject)
            .field("store", &self.store)
            .finish()
    }
}

impl Prepared {
    /// Opens locks `0..count` of this store in this process, through a manager of its own, and
    /// hands them to `work` ([`open_locks`]).
    pub(crate) fn open<W: Work>(&self, count: u32, work: W) -> W::Out {
        open_locks(self.subject, &self.store, count, work)
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        self._keep.take();
        if let Some(cleanup) = self.cleanup.take() {
            cleanup();
        }
    }
}

/// Creates a store of `capacity` locks called `name` for `subject` (in `dir` when it is a path).
pub(crate) fn prepare(subject: Subject, ctx: &Ctx, name: &str, capacity: u32) -> Prepared {
    fn backend<B: Backend>(subject: Subject, ctx: &Ctx, name: &str, capacity: u32) -> Prepared {
        let spec = ctx.spec::<B>(name);
        let made =
            B::create_store(&spec, capacity).unwrap_or_else(|e| panic!("create {spec}: {e}"));
        let remove = spec.clone();
        Prepared {
            subject,
            store: spec,
            _keep: Some(Box::new(made)),
            cleanup: Some(Box::new(move || {
                let _ = B::remove_store(&remove);
            })),
        }
    }
    let (dir, unique) = (ctx.dir(), format!("{}-{name}", ctx.tag));
    match subject {
        Subject::Mem => backend::<MemManager>(subject, ctx, &unique, capacity),
        Subject::Shm => backend::<ShmManager>(subject, ctx, &unique, capacity),
        Subject::File => backend::<FileManager>(subject, ctx, &unique, capacity),
        Subject::Dirlock => backend::<DirTable>(subject, ctx, &unique, capacity),
        #[cfg(feature = "etcd")]
        Subject::Etcd => backend::<lockyard_benches::EtcdTable>(subject, ctx, &unique, capacity),
        #[cfg(feature = "etcd")]
        Subject::EtcdRpc => Prepared {
            subject,
            store: ctx.etcd_endpoints().join(","),
            _keep: None,
            cleanup: None,
        },
        Subject::Glibc => {
            let path = PathBuf::from("/dev/shm").join(format!("{unique}-glibc"));
            let array = GlibcArray::create(&path, capacity as usize);
            Prepared {
                subject,
                store: path.display().to_string(),
                _keep: Some(Box::new(array)),
                cleanup: None,
            }
        }
        Subject::Flock => {
            let path = dir.join(format!("{unique}.flock"));
            File::create(&path).expect("flock file");
            let remove = path.clone();
            Prepared {
                subject,
                store: path.display().to_string(),
                _keep: None,
                cleanup: Some(Box::new(move || {
                    let _ = std::fs::remove_file(remove);
                })),
            }
        }
        Subject::PidFile => {
            let path = dir.join(format!("{unique}.pid"));
            let remove = path.clone();
            Prepared {
                subject,
                store: path.display().to_string(),
                _keep: None,
                cleanup: Some(Box::new(move || {
                    let _ = std::fs::remove_file(remove);
                })),
            }
        }
        Subject::ParkingLot => Prepared {
            subject,
            store: String::new(),
            _keep: None,
            cleanup: None,
        },
    }
}
