//! lock-shm against a glibc robust, process-shared pthread mutex in shared memory.
#![allow(unsafe_code)] // reason: the peer is a pthread mutex in a shared mapping, reached through libc
//!
//! Groups (see DESIGN.md section 5):
//! - `shm-uncontended`: lock + unlock, one thread, `ours` vs `peer`.
//! - `shm-contended-2proc`: two processes on one lock, ns per lock+unlock, `ours` vs `peer`.
//!   The second process is this binary re-executed with `LOCKYARD_BENCH_CONTENDER` set.
//! - `shm-alloc-free-2e11`, `-2e16`, `-2e20`: allocate + free with all but one id taken; there is
//!   no peer, so the figure is written as a `.line` with its target.
//! - `shm-snapshot-2e20`: `Manager::snapshot` of 2^20 locks (three held) against one pass that
//!   loads every lock word, the floor a snapshot cannot beat.
//! - `shm-bytes-per-lock`: segment bytes per lock at 2^20 locks against `sizeof(pthread_mutex_t)`.
//! - `shm-takeover-after-sigkill`: the worst of ten delays between SIGKILL of a holder process
//!   and a blocked waiter's `OwnerDied` (the holder is this binary re-executed with
//!   `LOCKYARD_BENCH_HOLDER` set).
//!
//! # Invariants
//!
//! 1. The control file is mapped whole (`CTL_SIZE` bytes, page-aligned) for the life of a
//!    `Ctl`, in this process and in the contender, and is only reached through `Ctl`'s accessors,
//!    whose offsets are constants inside it and aligned for their type.
//! 2. The pthread mutex lives at `MUTEX_AT` in the control file (or in `PeerMutex`'s own
//!    mapping), is initialised once by the parent before any contender starts, and is only used
//!    through `pthread_mutex_lock`/`unlock`.

use std::cell::Cell;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use lock_shm::{LockId, Locker, Manager, ShmLocker, ShmManager};
use lockyard_bench_support::{human, record_line};
use memmap2::{MmapOptions, MmapRaw};

const CONTENDER_ENV: &str = "LOCKYARD_BENCH_CONTENDER";
const HOLDER_ENV: &str = "LOCKYARD_BENCH_HOLDER";
const CTL_SIZE: usize = 4096;
const GO: usize = 0;
const DONE: usize = 4;
const WHICH: usize = 8;
const QUIT: usize = 12;
const ITERS: usize = 16;
const MUTEX_AT: usize = 64;
const OURS: u32 = 0;
const PEER: u32 = 1;

/// The shared control block of the contended benchmark.
struct Ctl {
    map: MmapRaw,
    path: String,
    owner: bool,
}

impl Ctl {
    fn create(path: &str) -> Ctl {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .expect("create control file");
        file.set_len(CTL_SIZE as u64).expect("size control file");
        let map = MmapOptions::new()
            .len(CTL_SIZE)
            .map_raw(&file)
            .expect("map control file");
        let ctl = Ctl {
            map,
            path: path.to_owned(),
            owner: true,
        };
        // SAFETY: by invariant 2 the mutex is initialised here, once, before any contender
        // exists; by invariant 1 `MUTEX_AT..MUTEX_AT + size_of::<pthread_mutex_t>()` is inside the
        // mapping and suitably aligned.
        unsafe { init_robust_mutex(ctl.mutex()) };
        ctl
    }

    fn open(path: &str) -> Ctl {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("open control file");
        let map = MmapOptions::new()
            .len(CTL_SIZE)
            .map_raw(&file)
            .expect("map control file");
        Ctl {
            map,
            path: path.to_owned(),
            owner: false,
        }
    }

    fn u32(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= CTL_SIZE);
        // SAFETY: invariant 1; bounds and alignment asserted above.
        unsafe { AtomicU32::from_ptr(self.map.as_mut_ptr().add(off).cast()) }
    }

    fn u64(&self, off: usize) -> &AtomicU64 {
        assert!(off.is_multiple_of(8) && off + 8 <= CTL_SIZE);
        // SAFETY: invariant 1; bounds and alignment asserted above.
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(off).cast()) }
    }

    fn mutex(&self) -> *mut libc::pthread_mutex_t {
        const { assert!(MUTEX_AT + size_of::<libc::pthread_mutex_t>() <= CTL_SIZE) };
        // SAFETY: invariant 1: the offset is inside the mapping.
        unsafe { self.map.as_mut_ptr().add(MUTEX_AT).cast() }
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        if self.owner {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Initialises a robust, process-shared mutex at `m`.
///
/// # Safety
///
/// `m` points to writable memory for a `pthread_mutex_t` that no one uses yet.
unsafe fn init_robust_mutex(m: *mut libc::pthread_mutex_t) {
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

/// One lock + unlock of the peer mutex.
///
/// # Safety
///
/// `m` is an initialised robust mutex (invariant 2).
#[inline]
unsafe fn peer_lock_unlock(m: *mut libc::pthread_mutex_t) {
    // SAFETY: the caller vouches for `m`. EOWNERDEAD cannot happen: no holder dies in a bench.
    unsafe {
        let r = libc::pthread_mutex_lock(m);
        debug_assert_eq!(r, 0);
        libc::pthread_mutex_unlock(m);
    }
}

#[inline]
fn ours_lock_unlock(l: &ShmLocker) {
    let acquired = l.lock().expect("lock");
    let _ = std::hint::black_box(acquired);
    l.unlock().expect("unlock");
}

/// A robust pshared mutex in its own anonymous shared mapping.
struct PeerMutex(MmapRaw);

impl PeerMutex {
    fn new() -> PeerMutex {
        let map = MmapOptions::new()
            .len(4096)
            .map_anon()
            .expect("map anonymous")
            .into();
        let p = PeerMutex(map);
        // SAFETY: invariant 2 for this mapping: fresh, page-aligned, large enough, unused.
        unsafe { init_robust_mutex(p.ptr()) };
        p
    }

    fn ptr(&self) -> *mut libc::pthread_mutex_t {
        self.0.as_mut_ptr().cast()
    }
}

/// Removes a segment when dropped.
struct Segment(String);

impl Drop for Segment {
    fn drop(&mut self) {
        let _ = ShmManager::remove(&self.0);
    }
}

fn segment_name(what: &str) -> String {
    format!("lockyard-bench-{what}-{}", std::process::id())
}

fn uncontended(c: &mut Criterion) {
    let seg = Segment(segment_name("uncontended"));
    let m = ShmManager::create(&seg.0, 1024).expect("create segment");
    let l = m.retrieve(LockId(0)).expect("retrieve");
    let peer = PeerMutex::new();
    let mut g = c.benchmark_group("shm-uncontended");
    g.bench_function("ours", |b| b.iter(|| ours_lock_unlock(&l)));
    g.bench_function("peer", |b| {
        b.iter(|| {
            // SAFETY: invariant 2: `peer` was initialised by `PeerMutex::new`.
            unsafe { peer_lock_unlock(peer.ptr()) }
        })
    });
    g.finish();
}

/// The contender process, SIGKILLed and reaped on drop.
struct Contender(Child);

impl Drop for Contender {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn contended(c: &mut Criterion) {
    let seg = Segment(segment_name("contended"));
    let ctl_path = format!("/dev/shm/lockyard-bench-ctl-{}", std::process::id());
    let _ = std::fs::remove_file(&ctl_path);
    let m = ShmManager::create(&seg.0, 1024).expect("create segment");
    let l = m.retrieve(LockId(0)).expect("retrieve");
    let ctl = Ctl::create(&ctl_path);
    let child = Command::new(std::env::current_exe().expect("current exe"))
        .env(CONTENDER_ENV, format!("{ctl_path} {}", seg.0))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn contender");
    let _child = Contender(child);
    let run = |which: u32, iters: u64| -> Duration {
        ctl.u64(ITERS).store(iters, Ordering::Relaxed);
        ctl.u32(WHICH).store(which, Ordering::Relaxed);
        let go = ctl.u32(GO).load(Ordering::Relaxed).wrapping_add(1);
        ctl.u32(GO).store(go, Ordering::Release);
        let start = Instant::now();
        for _ in 0..iters {
            if which == OURS {
                ours_lock_unlock(&l);
            } else {
                // SAFETY: invariant 2: initialised by `Ctl::create`.
                unsafe { peer_lock_unlock(ctl.mutex()) };
            }
        }
        let bound = Instant::now() + Duration::from_secs(120);
        while ctl.u32(DONE).load(Ordering::Acquire) != go {
            assert!(Instant::now() < bound, "contender did not finish");
            std::thread::yield_now();
        }
        // Two processes did `iters` lock+unlock pairs each: time per pair.
        start.elapsed() / 2
    };
    let mut g = c.benchmark_group("shm-contended-2proc");
    g.bench_function("ours", |b| b.iter_custom(|iters| run(OURS, iters)));
    g.bench_function("peer", |b| b.iter_custom(|iters| run(PEER, iters)));
    g.finish();
    ctl.u32(QUIT).store(1, Ordering::Release);
}

/// The second process of `shm-contended-2proc`: runs as many lock+unlock pairs as the parent
/// asks each round, on the same lock.
fn contender(spec: &str) {
    let (ctl_path, segment) = spec.split_once(' ').expect("contender spec");
    let ctl = Ctl::open(ctl_path);
    let m = ShmManager::open(segment).expect("open segment");
    let l = m.retrieve(LockId(0)).expect("retrieve");
    let mut seen = 0;
    loop {
        let go = loop {
            if ctl.u32(QUIT).load(Ordering::Acquire) != 0 {
                return;
            }
            let go = ctl.u32(GO).load(Ordering::Acquire);
            if go != seen {
                break go;
            }
            std::thread::yield_now();
        };
        seen = go;
        let iters = ctl.u64(ITERS).load(Ordering::Relaxed);
        let which = ctl.u32(WHICH).load(Ordering::Relaxed);
        for _ in 0..iters {
            if which == OURS {
                ours_lock_unlock(&l);
            } else {
                // SAFETY: invariant 2: the parent initialised it before spawning us.
                unsafe { peer_lock_unlock(ctl.mutex()) };
            }
        }
        ctl.u32(DONE).store(go, Ordering::Release);
    }
}

fn alloc_free(c: &mut Criterion) {
    for shift in [11u32, 16, 20] {
        let capacity = 1u32 << shift;
        let seg = Segment(segment_name(&format!("alloc-{shift}")));
        let m = ShmManager::create(&seg.0, capacity).expect("create segment");
        for _ in 0..capacity {
            drop(m.allocate().expect("fill"));
        }
        // All but the last id taken: the one free id is as far from id 0 as it can be.
        m.retrieve(LockId(capacity - 1))
            .expect("retrieve")
            .free()
            .expect("free");
        let total = Cell::new((Duration::ZERO, 0u64));
        // Not named `shm-*`: xtask prints this figure from the `.line` below, with its target.
        let mut g = c.benchmark_group(format!("alloc-free-2e{shift}"));
        g.bench_function(BenchmarkId::from_parameter("ours"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let l = m.allocate().expect("allocate");
                    l.free().expect("free");
                }
                let elapsed = start.elapsed();
                let (t, n) = total.get();
                total.set((t + elapsed, n + iters));
                elapsed
            })
        });
        g.finish();
        let (t, n) = total.get();
        if n == 0 {
            continue; // filtered out on the command line
        }
        let mean = t.as_nanos() as f64 / n.max(1) as f64;
        let group = format!("shm-alloc-free-2e{shift}");
        record_line(
            &group,
            &format!("{group}: ours {}, target 1.00 µs", human(mean)),
        );
    }
}

/// `Manager::snapshot` of a table of 2^20 locks, a few of them held, against the floor it must
/// not pass: one pass that loads every lock word (through a mapping of the same segment).
fn snapshot(c: &mut Criterion) {
    let capacity = 1u32 << 20;
    let seg = Segment(segment_name("snapshot"));
    let m = ShmManager::create(&seg.0, capacity).expect("create segment");
    let held: Vec<_> = [3, 70_000, capacity - 1]
        .into_iter()
        .map(|id| {
            let l = m.retrieve(LockId(id)).expect("retrieve");
            let _ = l.lock().expect("lock");
            l
        })
        .collect();
    let file = OpenOptions::new()
        .read(true)
        .open(PathBuf::from("/dev/shm").join(&seg.0))
        .expect("open segment");
    let len = file.metadata().expect("stat segment").len() as usize;
    let map = MmapOptions::new()
        .len(len)
        .map_raw_read_only(&file)
        .expect("map segment");
    let mut field = [0u8; 8];
    // SAFETY: the mapping is `len` bytes long and the header (256 bytes) is inside it.
    unsafe { std::ptr::copy_nonoverlapping(map.as_ptr().add(72), field.as_mut_ptr(), 8) };
    let locks = u64::from_le_bytes(field) as usize;
    assert!(locks + 4 * capacity as usize <= len && locks.is_multiple_of(4));
    let mut g = c.benchmark_group("shm-snapshot-2e20");
    g.bench_function("ours", |b| {
        b.iter(|| {
            let s = m.snapshot().expect("snapshot");
            assert_eq!(s.len(), held.len());
            s
        })
    });
    // SAFETY: `locks..locks + 4 capacity` is inside the mapping (asserted above) and 4-aligned;
    // the words are only ever accessed atomically, and the mapping outlives `words`.
    let words: &[AtomicU32] = unsafe {
        std::slice::from_raw_parts(map.as_ptr().add(locks).cast_mut().cast(), capacity as usize)
    };
    g.bench_function("peer", |b| {
        b.iter(|| {
            let n = words
                .iter()
                .filter(|w| w.load(Ordering::Acquire) != 0)
                .count();
            assert_eq!(n, held.len());
            n
        })
    });
    g.finish();
    for l in held {
        l.unlock().expect("unlock");
    }
}

fn bytes_per_lock() {
    let capacity = 1u32 << 20;
    let seg = Segment(segment_name("bytes"));
    let m = ShmManager::create(&seg.0, capacity).expect("create segment");
    let size = std::fs::metadata(PathBuf::from("/dev/shm").join(&seg.0))
        .expect("stat segment")
        .len();
    drop(m);
    let ours = size as f64 / f64::from(capacity);
    let peer = size_of::<libc::pthread_mutex_t>() as f64;
    record_line(
        "shm-bytes-per-lock",
        &format!(
            "shm-bytes-per-lock: ours {ours:.2}, peer {peer:.0}, ratio {:.2}",
            ours / peer
        ),
    );
}

/// The holder process of `shm-takeover-after-sigkill`: locks lock 1, says so, and waits to be
/// killed (at most a minute).
fn holder(segment: &str) {
    let m = ShmManager::open(segment).expect("open segment");
    let l = m.retrieve(LockId(1)).expect("retrieve");
    let _ = l.lock().expect("lock");
    println!("held");
    std::thread::sleep(Duration::from_secs(60));
}

fn takeover() {
    use std::io::BufRead;
    let seg = Segment(segment_name("takeover"));
    let m = ShmManager::create(&seg.0, 16).expect("create segment");
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let mut child = Contender(
            Command::new(std::env::current_exe().expect("current exe"))
                .env(HOLDER_ENV, &seg.0)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn holder"),
        );
        let mut line = String::new();
        std::io::BufReader::new(child.0.stdout.take().expect("holder stdout"))
            .read_line(&mut line)
            .expect("read holder");
        assert_eq!(line.trim(), "held", "holder did not take the lock");
        let l = m.retrieve(LockId(1)).expect("retrieve");
        let waiter = std::thread::spawn(move || {
            let acquired = l.try_lock_for(Duration::from_secs(10)).expect("take over");
            let at = Instant::now();
            assert!(acquired.owner_died(), "takeover not reported as OwnerDied");
            l.unlock().expect("unlock");
            at
        });
        // Let the waiter block in FUTEX_WAIT before the holder dies.
        std::thread::sleep(Duration::from_millis(20));
        let killed = Instant::now();
        child.0.kill().expect("SIGKILL holder");
        let acquired = waiter.join().expect("waiter");
        worst = worst.max(acquired.saturating_duration_since(killed));
    }
    let ms = worst.as_secs_f64() * 1e3;
    record_line(
        "shm-takeover-after-sigkill",
        &format!("shm-takeover-after-sigkill: ours {ms:.2} ms, target 100.00 ms"),
    );
}

fn main() {
    if let Ok(spec) = std::env::var(CONTENDER_ENV) {
        contender(&spec);
        return;
    }
    if let Ok(segment) = std::env::var(HOLDER_ENV) {
        holder(&segment);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    uncontended(&mut c);
    contended(&mut c);
    alloc_free(&mut c);
    snapshot(&mut c);
    bytes_per_lock();
    takeover();
    c.final_summary();
}
