//! Shared mappings, the start line of multi-process samples and the glibc robust mutex peer: the
//! only unsafe code of the bench.
#![allow(unsafe_code)] // reason: pthread mutexes and atomics in a mapping shared between processes
//!
//! # Invariants
//!
//! 1. A [`Shared`] maps its whole file (`len` bytes, page-aligned, length fixed at creation) for
//!    its own lifetime; every pointer into it is derived from `map` with an offset checked
//!    against `len` and aligned for its type.
//! 2. A mutex of a [`GlibcArray`] is initialised by the creating process, before any other
//!    process maps the file, as a robust, process-shared mutex, and is only used through
//!    `pthread_mutex_*` calls afterwards.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::{MmapOptions, MmapRaw};
use rustix::thread::futex;

/// A file in /dev/shm mapped shared in every process that opens it.
#[derive(Debug)]
pub(crate) struct Shared {
    map: MmapRaw,
    len: usize,
    path: PathBuf,
    owner: bool,
}

impl Shared {
    /// Creates (exclusively) and maps a zero-filled file of `len` bytes, rounded up to a page.
    pub(crate) fn create(path: &Path, len: usize) -> Shared {
        let len = len.div_ceil(4096).max(1) * 4096;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        file.set_len(len as u64).expect("size shared file");
        Shared::map(file, path, len, true)
    }

    /// Maps an existing file made by [`Shared::create`].
    pub(crate) fn open(path: &Path) -> Shared {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let len = usize::try_from(file.metadata().expect("stat shared file").len())
            .expect("shared file length");
        Shared::map(file, path, len, false)
    }

    fn map(file: File, path: &Path, len: usize, owner: bool) -> Shared {
        let map = MmapOptions::new()
            .len(len)
            .map_raw(&file)
            .expect("map shared file");
        Shared {
            map,
            len,
            path: path.to_path_buf(),
            owner,
        }
    }

    /// The 64-bit word at byte `off`.
    pub(crate) fn u64(&self, off: usize) -> &AtomicU64 {
        assert!(off.is_multiple_of(8) && off + 8 <= self.len, "offset {off}");
        // SAFETY: invariant 1: in bounds and aligned (checked above; the mapping is page-aligned).
        // Every process reaches the word through atomics only.
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(off).cast()) }
    }

    /// The 32-bit word at byte `off`.
    pub(crate) fn u32(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= self.len, "offset {off}");
        // SAFETY: invariant 1: in bounds and aligned (checked above; the mapping is page-aligned).
        // Every process reaches the word through atomics only.
        unsafe { AtomicU32::from_ptr(self.map.as_mut_ptr().add(off).cast()) }
    }

    fn ptr(&self, off: usize, size: usize) -> *mut u8 {
        assert!(off + size <= self.len, "offset {off} + {size}");
        // SAFETY: invariant 1: the range is inside the mapping (checked above).
        unsafe { self.map.as_mut_ptr().add(off) }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.owner {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Waits at a start line until it opens (its word is no longer `seen`; at most ten minutes) and
/// returns the word's new value.
///
/// A start line is a 32-bit word of a [`Shared`] mapping that counts the starts so far. Worker
/// processes wait at it and one [`open_start`] lets them all go with a single `FUTEX_WAKE`, so
/// that no worker runs alone for the time it takes to tell the others one by one.
pub(crate) fn wait_at_start(line: &AtomicU32, seen: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(600);
    let tick = futex::Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    loop {
        let now = line.load(Ordering::Acquire);
        if now != seen {
            return now;
        }
        assert!(Instant::now() < deadline, "no start within ten minutes");
        // A shared (not private) futex: the waiters are other processes. EAGAIN: it moved
        // already; ETIMEDOUT: look again (the parent may be gone, the deadline is checked).
        match futex::wait(line, futex::Flags::empty(), seen, Some(&tick)) {
            Ok(())
            | Err(rustix::io::Errno::AGAIN)
            | Err(rustix::io::Errno::INTR)
            | Err(rustix::io::Errno::TIMEDOUT) => {}
            Err(e) => panic!("FUTEX_WAIT on the start line: {e}"),
        }
    }
}

/// Opens the start line: every process waiting at it (or about to) goes now.
pub(crate) fn open_start(line: &AtomicU32) {
    line.fetch_add(1, Ordering::Release);
    futex::wake(line, futex::Flags::empty(), i32::MAX as u32).expect("FUTEX_WAKE the start line");
}

const MUTEX: usize = size_of::<libc::pthread_mutex_t>();

/// An array of glibc robust, process-shared mutexes in a shared file: the peer of the table
/// backends (what Podman's lock table is made of).
#[derive(Debug, Clone)]
pub(crate) struct GlibcArray {
    shared: Arc<Shared>,
    count: usize,
}

impl GlibcArray {
    /// Creates the file and initialises `count` mutexes in it.
    pub(crate) fn create(path: &Path, count: usize) -> GlibcArray {
        let shared = Shared::create(path, count * MUTEX);
        for i in 0..count {
            let m = shared.ptr(i * MUTEX, MUTEX).cast::<libc::pthread_mutex_t>();
            // SAFETY: invariant 2: this process created the file; no one else maps it yet; the
            // pointer is in bounds and 8-aligned (40-byte stride from a page boundary).
            unsafe { init_robust(m) };
        }
        GlibcArray {
            shared: Arc::new(shared),
            count,
        }
    }

    /// Maps the array another process created.
    pub(crate) fn open(path: &Path) -> GlibcArray {
        let shared = Shared::open(path);
        let count = shared.len / MUTEX;
        GlibcArray {
            shared: Arc::new(shared),
            count,
        }
    }

    /// The mutex `i`.
    pub(crate) fn mutex(&self, i: usize) -> GlibcMutex {
        assert!(i < self.count, "mutex {i} of {}", self.count);
        GlibcMutex {
            m: self.shared.ptr(i * MUTEX, MUTEX).cast(),
            _shared: Arc::clone(&self.shared),
        }
    }
}

/// Initialises a robust, process-shared mutex.
///
/// # Safety
///
/// `m` points to writable memory for a `pthread_mutex_t` that no thread uses yet.
unsafe fn init_robust(m: *mut libc::pthread_mutex_t) {
    // SAFETY: the attribute is initialised before use and destroyed after; the caller vouches
    // for `m`.
    unsafe {
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        assert_eq!(libc::pthread_mutexattr_init(&mut attr), 0);
        assert_eq!(
            libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED),
            0
        );
        assert_eq!(
            libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST),
            0
        );
        assert_eq!(libc::pthread_mutex_init(m, &attr), 0);
        libc::pthread_mutexattr_destroy(&mut attr);
    }
}

/// One robust mutex of a [`GlibcArray`].
#[derive(Debug)]
pub(crate) struct GlibcMutex {
    m: *mut libc::pthread_mutex_t,
    _shared: Arc<Shared>,
}

// SAFETY: the mutex lives in a mapping kept alive by `_shared` and is made for use from any
// thread of any process (invariant 2); the pointer itself is never written.
unsafe impl Send for GlibcMutex {}
// SAFETY: as for Send: every access goes through pthread calls that are thread-safe.
unsafe impl Sync for GlibcMutex {}

impl GlibcMutex {
    /// Turns a lock result into "the owner died", repairing the mutex in that case.
    fn settle(&self, r: i32, what: &str) -> bool {
        if r == libc::EOWNERDEAD {
            // SAFETY: invariant 2; we hold the mutex after EOWNERDEAD.
            assert_eq!(unsafe { libc::pthread_mutex_consistent(self.m) }, 0);
            return true;
        }
        assert_eq!(r, 0, "{what}");
        false
    }

    /// `pthread_mutex_lock`; `true` when the previous owner died.
    #[inline]
    pub(crate) fn lock(&self) -> bool {
        // SAFETY: invariant 2.
        let r = unsafe { libc::pthread_mutex_lock(self.m) };
        if r == 0 {
            false
        } else {
            self.settle(r, "pthread_mutex_lock")
        }
    }

    /// `pthread_mutex_timedlock`: `None` on timeout, else whether the previous owner died.
    pub(crate) fn lock_for(&self, timeout: Duration) -> Option<bool> {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
        let total = now.tv_nsec as u64 + u64::from(timeout.subsec_nanos());
        let deadline = libc::timespec {
            tv_sec: now.tv_sec + timeout.as_secs() as libc::time_t + (total / 1_000_000_000) as i64,
            tv_nsec: (total % 1_000_000_000) as _,
        };
        // SAFETY: invariant 2; `deadline` is a valid timespec for the call.
        let r = unsafe { libc::pthread_mutex_timedlock(self.m, &deadline) };
        if r == libc::ETIMEDOUT {
            return None;
        }
        Some(self.settle(r, "pthread_mutex_timedlock"))
    }

    /// `pthread_mutex_trylock`: whether it was taken.
    #[inline]
    pub(crate) fn try_lock(&self) -> bool {
        // SAFETY: invariant 2.
        let r = unsafe { libc::pthread_mutex_trylock(self.m) };
        match r {
            0 => true,
            libc::EBUSY => false,
            r => {
                self.settle(r, "pthread_mutex_trylock");
                true
            }
        }
    }

    /// `pthread_mutex_unlock`.
    #[inline]
    pub(crate) fn unlock(&self) {
        // SAFETY: invariant 2; the callers only unlock what this thread locked.
        let r = unsafe { libc::pthread_mutex_unlock(self.m) };
        debug_assert_eq!(r, 0);
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the run.
#[inline]
pub(crate) fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// CPU time (ns) and context switches of a process so far, from /proc: summed over every
/// thread (`/proc/PID/task/*`), since `/proc/PID/schedstat` and `/proc/PID/status` count the
/// main thread only, and a lock's helper threads (lock-shm's and dirlock's watchers, lock-file's
/// timer thread) burn CPU on behalf of the wait too. A thread that exited in between takes its
/// counts with it: callers subtract with saturation.
pub(crate) fn cpu_and_switches(pid: u32) -> Option<(u64, u64)> {
    let mut cpu = 0;
    let mut switches = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let task = task.ok()?.path();
        // A thread may end while the directory is read: it then counts for nothing.
        let (Ok(sched), Ok(status)) = (
            std::fs::read_to_string(task.join("schedstat")),
            std::fs::read_to_string(task.join("status")),
        ) else {
            continue;
        };
        cpu += sched
            .split_whitespace()
            .next()
            .and_then(|t| t.parse::<u64>().ok())?;
        switches += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some((cpu, switches))
}

/// The filesystem type of `path` ("ext4", "tmpfs", ... or the magic number).
pub(crate) fn fs_type(path: &Path) -> String {
    match rustix::fs::statfs(path) {
        Ok(s) => match s.f_type as u64 {
            0xEF53 => "ext4".into(),
            0x0102_1994 => "tmpfs".into(),
            0x5846_5342 => "xfs".into(),
            0x9123_683E => "btrfs".into(),
            0x794C_7630 => "overlayfs".into(),
            other => format!("fs magic {other:#x}"),
        },
        Err(e) => format!("unknown ({e})"),
    }
}
