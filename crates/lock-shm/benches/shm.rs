//! lock-shm against a glibc robust, process-shared pthread mutex in shared memory.
#![allow(unsafe_code)] // reason: the peer is a pthread mutex in a shared mapping, reached through libc
//!
//! Groups (see DESIGN.md section 5):
//! - `shm-uncontended`: lock + unlock, one thread, `ours` vs `peer`.
//! - `shm-contended-{2,4,8}proc`: P processes on one lock for a fixed time, each counting its
//!   lock+unlock pairs: ns per pair (the window over all pairs) and fairness (fewest pairs of a
//!   process ÷ most), `ours` vs `peer`, medians of several rounds, alternating the two. The
//!   processes are this binary re-executed with `LOCKYARD_BENCH_CONTENDER` set.
//! - `shm-alloc-free-2e11`, `-2e16`, `-2e20`: allocate + free with all but one id taken; there is
//!   no peer, so the figure is written as a `.line` with its target.
//! - `shm-snapshot-2e20`: `Manager::snapshot` of 2^20 locks (three held) against one pass that
//!   loads every lock word, the floor a snapshot cannot beat.
//! - `shm-bytes-per-lock`: segment bytes per lock at 2^20 locks against `sizeof(pthread_mutex_t)`.
//! - `shm-takeover-after-sigkill`: the delay between SIGKILL of a holder process and a blocked
//!   waiter's `OwnerDied` (glibc: `EOWNERDEAD`), over 24 trials each, the kill coming at a random
//!   moment 0..20 ms after the waiter started waiting: median and max. The holder is this
//!   binary re-executed with `LOCKYARD_BENCH_HOLDER` set.
//! - `shm-idle-waiters-50x10s`: 50 processes blocked 10 s on a lock a live process holds: the
//!   CPU time they use in those 10 s, all together (from their CPU-time clocks, which count
//!   nanoseconds, not clock ticks). The waiters are this
//!   binary re-executed with `LOCKYARD_BENCH_IDLE` set.
//!
//! Every figure that is not a criterion pair is printed and recorded as one line
//! (`target name: ours X, peer Y, ratio Z`, plus what else the target asks for).
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
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use lock_shm::{LockId, Locker, Manager, ShmLocker, ShmManager};
use lockyard_bench_support::{human, record_line};
use memmap2::{MmapOptions, MmapRaw};

const CONTENDER_ENV: &str = "LOCKYARD_BENCH_CONTENDER";
const HOLDER_ENV: &str = "LOCKYARD_BENCH_HOLDER";
const IDLE_ENV: &str = "LOCKYARD_BENCH_IDLE";
const CTL_SIZE: usize = 4096;
/// Round number the parent starts (contended) .
const GO: usize = 0;
/// Round number the parent stops.
const STOP: usize = 4;
/// Which lock the round uses: `OURS` or `PEER`.
const WHICH: usize = 8;
/// Set once: contenders exit.
const QUIT: usize = 12;
/// Contenders that started the current round.
const READY: usize = 16;
/// Contenders that finished the current round.
const DONE: usize = 20;
const MUTEX_AT: usize = 64;
/// Pairs counted by contender `i` in the current round: u64 at `OPS + 8 i`.
const OPS: usize = 512;
const MAX_CONTENDERS: usize = 64;
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

/// A child process, SIGKILLed and reaped on drop.
struct Contender(Child);

impl Drop for Contender {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// One timed round of P contenders on `which` lock: (ns per pair, fairness).
fn contended_round(
    ctl: &Ctl,
    procs: usize,
    which: u32,
    round: u32,
    window: Duration,
) -> (f64, f64) {
    ctl.u32(WHICH).store(which, Ordering::Relaxed);
    ctl.u32(READY).store(0, Ordering::Relaxed);
    ctl.u32(DONE).store(0, Ordering::Relaxed);
    for i in 0..procs {
        ctl.u64(OPS + 8 * i).store(0, Ordering::Relaxed);
    }
    ctl.u32(GO).store(round, Ordering::Release);
    let bound = Instant::now() + Duration::from_secs(120);
    while ctl.u32(READY).load(Ordering::Acquire) != procs as u32 {
        assert!(Instant::now() < bound, "contenders did not start");
        std::thread::sleep(Duration::from_micros(200));
    }
    let start = Instant::now();
    std::thread::sleep(window);
    ctl.u32(STOP).store(round, Ordering::Release);
    let elapsed = start.elapsed();
    while ctl.u32(DONE).load(Ordering::Acquire) != procs as u32 {
        assert!(Instant::now() < bound, "contenders did not finish");
        std::thread::sleep(Duration::from_micros(200));
    }
    let ops: Vec<u64> = (0..procs)
        .map(|i| ctl.u64(OPS + 8 * i).load(Ordering::Relaxed))
        .collect();
    let total: u64 = ops.iter().sum();
    let (min, max) = (
        ops.iter().copied().min().unwrap_or(0),
        ops.iter().copied().max().unwrap_or(0),
    );
    (
        elapsed.as_nanos() as f64 / total.max(1) as f64,
        min as f64 / max.max(1) as f64,
    )
}

/// P processes on one lock: ns per pair and fairness, ours and glibc alternating, medians.
fn contended() {
    let rounds = if lockyard_bench_support::quick() {
        3
    } else {
        7
    };
    let window = Duration::from_millis(if lockyard_bench_support::quick() {
        200
    } else {
        500
    });
    for procs in [2usize, 4, 8] {
        let seg = Segment(segment_name(&format!("contended-{procs}")));
        let ctl_path = format!("/dev/shm/lockyard-bench-ctl-{procs}-{}", std::process::id());
        let _ = std::fs::remove_file(&ctl_path);
        let _m = ShmManager::create(&seg.0, 1024).expect("create segment");
        let ctl = Ctl::create(&ctl_path);
        let _children: Vec<Contender> = (0..procs)
            .map(|i| {
                Contender(
                    Command::new(std::env::current_exe().expect("current exe"))
                        .env(CONTENDER_ENV, format!("{ctl_path} {} {i} {procs}", seg.0))
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .spawn()
                        .expect("spawn contender"),
                )
            })
            .collect();
        let (mut ours_ns, mut ours_fair, mut peer_ns, mut peer_fair) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut round = 0;
        for _ in 0..rounds {
            for which in [OURS, PEER] {
                round += 1;
                let (ns, fair) = contended_round(&ctl, procs, which, round, window);
                if which == OURS {
                    ours_ns.push(ns);
                    ours_fair.push(fair);
                } else {
                    peer_ns.push(ns);
                    peer_fair.push(fair);
                }
            }
        }
        ctl.u32(QUIT).store(1, Ordering::Release);
        let (o, p) = (median(&mut ours_ns), median(&mut peer_ns));
        let (of, pf) = (median(&mut ours_fair), median(&mut peer_fair));
        let group = format!("shm-contended-{procs}proc");
        record_line(
            &group,
            &format!(
                "{group}: ours {}, peer {}, ratio {:.2}; fairness ours {of:.2}, peer {pf:.2} (medians of {rounds} rounds of {} ms)",
                human(o),
                human(p),
                o / p,
                window.as_millis()
            ),
        );
    }
}

/// A contender process: each round, counts lock+unlock pairs on the round's lock until the
/// parent says stop.
fn contender(spec: &str) {
    let mut words = spec.split(' ');
    let (Some(ctl_path), Some(segment), Some(index)) = (words.next(), words.next(), words.next())
    else {
        panic!("contender spec {spec:?}");
    };
    let index: usize = index.parse().expect("contender index");
    let procs: u32 = words
        .next()
        .and_then(|p| p.parse().ok())
        .expect("contender count");
    assert!(index < MAX_CONTENDERS);
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
            std::thread::sleep(Duration::from_micros(200));
        };
        seen = go;
        let which = ctl.u32(WHICH).load(Ordering::Relaxed);
        ctl.u32(READY).fetch_add(1, Ordering::AcqRel);
        while ctl.u32(READY).load(Ordering::Acquire) != procs {
            std::hint::spin_loop();
        }
        let stop = ctl.u32(STOP);
        let mut n = 0u64;
        while stop.load(Ordering::Relaxed) != go {
            if which == OURS {
                ours_lock_unlock(&l);
            } else {
                // SAFETY: invariant 2: the parent initialised it before spawning us.
                unsafe { peer_lock_unlock(ctl.mutex()) };
            }
            n += 1;
        }
        ctl.u64(OPS + 8 * index).store(n, Ordering::Relaxed);
        ctl.u32(DONE).fetch_add(1, Ordering::AcqRel);
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
            &format!("{group}: ours {}, target 100.0 ns", human(mean)),
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

/// The holder process of `shm-takeover-after-sigkill`: `ours SEGMENT` locks lock 1, `peer
/// CTL` locks the control file's robust mutex; says `held`, and waits to be killed (at most a
/// minute).
fn holder(spec: &str) {
    match spec.split_once(' ') {
        Some(("ours", segment)) => {
            let m = ShmManager::open(segment).expect("open segment");
            let l = m.retrieve(LockId(1)).expect("retrieve");
            let _ = l.lock().expect("lock");
            println!("held");
            std::thread::sleep(Duration::from_secs(60));
        }
        Some(("peer", ctl_path)) => {
            let ctl = Ctl::open(ctl_path);
            // SAFETY: invariant 2: the parent initialised the mutex before spawning us.
            let r = unsafe { libc::pthread_mutex_lock(ctl.mutex()) };
            assert!(r == 0 || r == libc::EOWNERDEAD, "pthread_mutex_lock: {r}");
            if r == libc::EOWNERDEAD {
                // SAFETY: as above; we hold it and mark it consistent.
                unsafe { libc::pthread_mutex_consistent(ctl.mutex()) };
            }
            println!("held");
            std::thread::sleep(Duration::from_secs(60));
        }
        _ => panic!("holder spec {spec:?}"),
    }
}

/// Starts a holder and waits until it holds.
fn start_holder(spec: &str) -> Contender {
    use std::io::BufRead;
    let mut child = Contender(
        Command::new(std::env::current_exe().expect("current exe"))
            .env(HOLDER_ENV, spec)
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
    child
}

/// One takeover trial: a waiter thread blocks on the dead-to-be holder's lock; the holder is
/// SIGKILLed at a random moment 0..20 ms later; the delay from the kill to the waiter's
/// acquisition.
fn takeover_trial(holder_spec: &str, wait: impl FnOnce() + Send + 'static) -> Duration {
    use rand::Rng;
    let mut child = start_holder(holder_spec);
    let waiter = std::thread::spawn(move || {
        wait();
        Instant::now()
    });
    std::thread::sleep(Duration::from_micros(rand::rng().random_range(0..20_000)));
    let killed = Instant::now();
    child.0.kill().expect("SIGKILL holder");
    let acquired = waiter.join().expect("waiter");
    let _ = child.0.wait();
    acquired.saturating_duration_since(killed)
}

fn takeover() {
    let trials = 24;
    let seg = Segment(segment_name("takeover"));
    let m = Arc::new(ShmManager::create(&seg.0, 16).expect("create segment"));
    let ctl_path = format!(
        "/dev/shm/lockyard-bench-ctl-takeover-{}",
        std::process::id()
    );
    let _ = std::fs::remove_file(&ctl_path);
    let ctl = Arc::new(Ctl::create(&ctl_path));
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for _ in 0..trials {
        let l = m.retrieve(LockId(1)).expect("retrieve");
        ours.push(takeover_trial(&format!("ours {}", seg.0), move || {
            let acquired = l.try_lock_for(Duration::from_secs(10)).expect("take over");
            assert!(acquired.owner_died(), "takeover not reported as OwnerDied");
            l.unlock().expect("unlock");
        }));
        let c = Arc::clone(&ctl);
        peer.push(takeover_trial(&format!("peer {ctl_path}"), move || {
            // SAFETY: invariant 2: initialised by `Ctl::create`.
            unsafe {
                let r = libc::pthread_mutex_lock(c.mutex());
                assert_eq!(r, libc::EOWNERDEAD, "takeover not reported as EOWNERDEAD");
                libc::pthread_mutex_consistent(c.mutex());
                libc::pthread_mutex_unlock(c.mutex());
            }
        }));
    }
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let mut o: Vec<f64> = ours.iter().map(ms).collect();
    let mut p: Vec<f64> = peer.iter().map(ms).collect();
    let (omax, pmax) = (
        o.iter().copied().fold(0.0, f64::max),
        p.iter().copied().fold(0.0, f64::max),
    );
    let (om, pm) = (median(&mut o), median(&mut p));
    record_line(
        "shm-takeover-after-sigkill",
        &format!(
            "shm-takeover-after-sigkill: ours {om:.3} ms, peer {pm:.3} ms, ratio {:.2}; max ours {omax:.3} ms, peer {pmax:.3} ms ({trials} trials, kill 0-20 ms into the wait; target median 0.2 ms, max 1 ms)",
            om / pm
        ),
    );
}

/// An idle waiter: `ours SEGMENT` waits for lock 2, `peer CTL` for the control file's mutex;
/// says `waiting` first. Exits once it has the lock.
fn idle(spec: &str) {
    match spec.split_once(' ') {
        Some(("ours", segment)) => {
            let m = ShmManager::open(segment).expect("open segment");
            let l = m.retrieve(LockId(2)).expect("retrieve");
            println!("waiting");
            let _ = l.try_lock_for(Duration::from_secs(120)).expect("lock");
            l.unlock().expect("unlock");
        }
        Some(("peer", ctl_path)) => {
            let ctl = Ctl::open(ctl_path);
            println!("waiting");
            // SAFETY: invariant 2: the parent initialised the mutex before spawning us.
            unsafe {
                let r = libc::pthread_mutex_lock(ctl.mutex());
                assert_eq!(r, 0, "pthread_mutex_lock: {r}");
                libc::pthread_mutex_unlock(ctl.mutex());
            }
        }
        _ => panic!("idle spec {spec:?}"),
    }
}

/// Nanoseconds of CPU that process `pid` (all its threads) used so far: its CPU-time clock
/// (`clock_getcpuclockid(3)`), exact, unlike the clock ticks of `/proc/PID/stat`.
fn cpu_ns(pid: u32) -> u64 {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid place for the result; the pid is one of our children.
    let r = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    assert_eq!(r, 0, "clock_getcpuclockid({pid}): {r}");
    // SAFETY: all-zero bytes are a valid `timespec`.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `clock` is a valid clock id and `ts` a valid place for the result.
    let r = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(r, 0, "clock_gettime of process {pid}");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// 50 waiters blocked on a live holder for the window: the CPU seconds they use in it.
fn idle_round(spec: &str, release: impl FnOnce(), window: Duration) -> f64 {
    use std::io::BufRead;
    let waiters: Vec<Contender> = (0..50)
        .map(|_| {
            let mut child = Contender(
                Command::new(std::env::current_exe().expect("current exe"))
                    .env(IDLE_ENV, spec)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("spawn waiter"),
            );
            let mut line = String::new();
            std::io::BufReader::new(child.0.stdout.take().expect("waiter stdout"))
                .read_line(&mut line)
                .expect("read waiter");
            assert_eq!(line.trim(), "waiting");
            child
        })
        .collect();
    // Let every waiter get past its spinning and into its sleep.
    std::thread::sleep(Duration::from_millis(500));
    let before: u64 = waiters.iter().map(|w| cpu_ns(w.0.id())).sum();
    std::thread::sleep(window);
    let after: u64 = waiters.iter().map(|w| cpu_ns(w.0.id())).sum();
    release();
    for mut w in waiters {
        let status = w.0.wait().expect("reap waiter");
        assert!(status.success(), "a waiter failed: {status}");
    }
    after.saturating_sub(before) as f64 / 1e9
}

fn idle_waiters() {
    let window = Duration::from_secs(if lockyard_bench_support::quick() {
        3
    } else {
        10
    });
    let seg = Segment(segment_name("idle"));
    let m = ShmManager::create(&seg.0, 16).expect("create segment");
    let l = m.retrieve(LockId(2)).expect("retrieve");
    let _ = l.lock().expect("lock");
    let ours = idle_round(
        &format!("ours {}", seg.0),
        || l.unlock().expect("unlock"),
        window,
    );
    let ctl_path = format!("/dev/shm/lockyard-bench-ctl-idle-{}", std::process::id());
    let _ = std::fs::remove_file(&ctl_path);
    let ctl = Ctl::create(&ctl_path);
    // SAFETY: invariant 2: initialised by `Ctl::create`.
    assert_eq!(unsafe { libc::pthread_mutex_lock(ctl.mutex()) }, 0);
    let peer = idle_round(
        &format!("peer {ctl_path}"),
        // SAFETY: as above; this thread locked it.
        || unsafe {
            libc::pthread_mutex_unlock(ctl.mutex());
        },
        window,
    );
    let name = "shm-idle-waiters-50x10s";
    record_line(
        name,
        &format!(
            "{name}: ours {ours:.4} CPU-s, peer {peer:.4} CPU-s, ratio {} ({} s window; target 0.02 CPU-s)",
            if peer > 0.0 {
                format!("{:.2}", ours / peer)
            } else {
                "n/a (the peer used none)".to_owned()
            },
            window.as_secs()
        ),
    );
}

fn main() {
    if let Ok(spec) = std::env::var(CONTENDER_ENV) {
        contender(&spec);
        return;
    }
    if let Ok(spec) = std::env::var(HOLDER_ENV) {
        holder(&spec);
        return;
    }
    if let Ok(spec) = std::env::var(IDLE_ENV) {
        idle(&spec);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    // Figures that are not criterion pairs run only when their name is asked for, or when no
    // filter is given (`cargo bench -p lock-shm -- shm-takeover`).
    let wanted = |name: &str| {
        let filters: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-') && a.parse::<f64>().is_err())
            .collect();
        filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
    };
    uncontended(&mut c);
    if wanted("shm-contended") {
        contended();
    }
    alloc_free(&mut c);
    snapshot(&mut c);
    if wanted("shm-bytes-per-lock") {
        bytes_per_lock();
    }
    if wanted("shm-takeover-after-sigkill") {
        takeover();
    }
    if wanted("shm-idle-waiters") {
        idle_waiters();
    }
    c.final_summary();
}
