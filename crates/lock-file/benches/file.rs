//! lock-file benchmarks: lock+unlock against a bare `flock` pair, and allocate+free at scale.
#![allow(unsafe_code)] // one extra peer calls libc::flock, the call every C program makes.
//!
//! - `file-lock-unlock`: ours (owner records on, the default) against the barest `flock` pair
//!   there is, `flock(LOCK_EX)` + `flock(LOCK_UN)` as system calls inlined into the loop
//!   (`rustix::fs::flock`), on an empty file in the same directory, same run. Target <= 1.3.
//! - `file-lock-unlock-no-owner-death`: the same with owner records off, to show their cost.
//! - `file-lock-unlock-interleaved`, `file-lock-unlock-no-owner-death-interleaved`: the same
//!   pairs measured by hand in alternating batches of 1000, keeping each side's fastest batch.
//!   On a shared machine criterion's means move by ±30 % between runs; the best of interleaved
//!   batches is what the code costs when nobody else is on the core, and both sides see the
//!   same disturbances.
//! - `file-lock-unlock-libc-interleaved`: ours against `libc::flock`, the call C programs make
//!   (it costs 200 ns more than the inlined pair here: see `src/flock.rs`).
//! - `file-alloc-free-2e10`, `file-alloc-free-2e16`: allocate+free with all but one id taken,
//!   measured by hand (no peer) and written as `.line` files for `cargo xtask bench`.
//! - `file-contended-2proc`: two processes on one lock, ns per lock+unlock pair, ours against
//!   the bare pair (`flock(LOCK_EX)` + `flock(LOCK_UN)`) on a file of the same directory. The
//!   second process is this binary re-executed with `LOCKYARD_FILE_BENCH_CONTENDER` set; each
//!   round both run the same number of pairs, rounds alternate ours and the peer, and the line
//!   quotes the median round of each and the median ratio of neighbouring rounds (contention
//!   is noisier than one process alone, and neighbours see the same load). The two
//!   processes are pinned to CPUs 0 and 1: left to the scheduler on a busy 2-CPU machine they
//!   often share one CPU, take turns, and never contend.
//! - `file-contended-2proc-hold-1us`: the same with the lock held 1 µs a pair (a spin on the
//!   clock inside the critical section, the same on both sides). With an empty critical
//!   section the figure is set by how often the lock changes process (which the back-off
//!   after a lost hand-over keeps down; ARCHITECTURE.md, lock-file); with one of a
//!   microsecond both sides sleep and wake alike, and what is left is our cost per pair.

use std::fs::File;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::Criterion;
use lock_file::{FileLocker, FileManager, LockId, Locker, Manager, StoreOptions};
use lockyard_bench_support::{human, quick, record_line};
use rustix::fs::FlockOperation;

/// One bare flock pair: two system calls inlined here, nothing else.
#[inline(always)]
fn bare_pair(file: &File) {
    bare_pair_around(file, || {});
}

/// One bare flock pair with `inside` run while the lock is held (inlined: an empty closure
/// leaves the bare pair).
#[inline(always)]
fn bare_pair_around(file: &File, inside: impl Fn()) {
    rustix::fs::flock(file, FlockOperation::LockExclusive).expect("flock");
    inside();
    rustix::fs::flock(file, FlockOperation::Unlock).expect("flock");
}

/// One flock pair through libc.
#[inline(always)]
fn libc_pair(file: &File) {
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is `file`'s descriptor, open for the whole call; flock(2) only reads its
    // arguments.
    let (locked, unlocked) = unsafe {
        (
            libc::flock(fd, libc::LOCK_EX),
            libc::flock(fd, libc::LOCK_UN),
        )
    };
    assert_eq!((locked, unlocked), (0, 0), "flock");
}

/// One lock+unlock of ours.
#[inline(always)]
fn our_pair(lock: &FileLocker) {
    our_pair_around(lock, || {});
}

/// One lock+unlock of ours with `inside` run while the lock is held.
#[inline(always)]
fn our_pair_around(lock: &FileLocker, inside: impl Fn()) {
    let _ = black_box(lock.lock().expect("lock"));
    inside();
    lock.unlock().expect("unlock");
}

/// The positional filters criterion was given, if any.
fn filters() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect()
}

fn wanted(group: &str) -> bool {
    let f = filters();
    f.is_empty() || f.iter().any(|f| group.contains(f.as_str()))
}

/// Lock+unlock of one uncontended lock, ours against a bare flock pair on a file of the same
/// directory (so the same filesystem and the same kind of empty regular file).
fn lock_unlock(c: &mut Criterion, group_name: &str, owner_death: bool) {
    let root = tempfile::tempdir().expect("temp dir");
    let path = root.path().join("store");
    let manager = StoreOptions::new(16)
        .owner_death(owner_death)
        .create(&path)
        .expect("create store");
    let lock = manager.retrieve(LockId(3)).expect("retrieve");
    let peer_file = File::create(root.path().join("peer.lock")).expect("peer lock file");

    let mut group = c.benchmark_group(group_name);
    group.bench_function("ours", |b| b.iter(|| our_pair(&lock)));
    group.bench_function("peer", |b| b.iter(|| bare_pair(&peer_file)));
    group.finish();
}

/// Mean ns of `f` over a batch of 1000 calls, inlined so that no frame is added around `f`.
#[inline(always)]
fn batch(f: impl Fn()) -> f64 {
    let start = Instant::now();
    for _ in 0..1000 {
        f();
    }
    start.elapsed().as_nanos() as f64 / 1000.0
}

/// Best-batch ns of one lock+unlock: ours with owner records, ours without, the bare
/// inlined pair and the libc pair, in alternating batches of 1000.
fn interleaved_lock_unlock(rounds: u32) -> [f64; 4] {
    let root = tempfile::tempdir().expect("temp dir");
    let with = FileManager::create(root.path().join("with"), 16).expect("create store");
    let without = StoreOptions::new(16)
        .owner_death(false)
        .create(root.path().join("without"))
        .expect("create store");
    let locks = [
        with.retrieve(LockId(3)).expect("retrieve"),
        without.retrieve(LockId(3)).expect("retrieve"),
    ];
    let peer_file = File::create(root.path().join("peer.lock")).expect("peer lock file");
    let mut best = [f64::INFINITY; 4];
    for _ in 0..rounds {
        best[0] = best[0].min(batch(|| our_pair(&locks[0])));
        best[1] = best[1].min(batch(|| our_pair(&locks[1])));
        best[2] = best[2].min(batch(|| bare_pair(&peer_file)));
        best[3] = best[3].min(batch(|| libc_pair(&peer_file)));
    }
    best
}

/// Mean ns of one allocate+free on a store of `capacity` locks with all but one taken: the
/// lowest of five batches of `budget` each (the least disturbed by the shared machine).
fn alloc_free_ns(capacity: u32, budget: Duration) -> f64 {
    let root = tempfile::tempdir().expect("temp dir");
    let manager = FileManager::create(root.path().join("store"), capacity).expect("create store");
    for _ in 0..capacity - 1 {
        drop(manager.allocate().expect("fill"));
    }
    let cycle = || {
        let lock = manager.allocate().expect("allocate");
        lock.free().expect("free");
    };
    for _ in 0..1000 {
        cycle();
    }
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < budget {
            for _ in 0..100 {
                cycle();
            }
            n += 100;
        }
        best = best.min(start.elapsed().as_nanos() as f64 / n as f64);
    }
    assert_eq!(manager.available().expect("available"), Some(1));
    best
}

fn interleaved_lines() {
    let groups = [
        "file-lock-unlock-interleaved",
        "file-lock-unlock-no-owner-death-interleaved",
        "file-lock-unlock-libc-interleaved",
    ];
    if !groups.iter().any(|g| wanted(g)) {
        return;
    }
    let [with, without, bare, libc] = interleaved_lock_unlock(if quick() { 100 } else { 500 });
    for (group, ours, peer) in [
        (groups[0], with, bare),
        (groups[1], without, bare),
        (groups[2], with, libc),
    ] {
        record_line(
            group,
            &format!(
                "{group}: ours {}, peer {}, ratio {:.2}",
                human(ours),
                human(peer),
                ours / peer
            ),
        );
    }
}

fn alloc_free_lines() {
    let budget = if quick() {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(600)
    };
    let small = wanted("file-alloc-free-2e10").then(|| alloc_free_ns(1 << 10, budget));
    let large = wanted("file-alloc-free-2e16").then(|| alloc_free_ns(1 << 16, budget));
    if let Some(ns) = small {
        record_line(
            "file-alloc-free-2e10",
            &format!("file-alloc-free-2e10: ours {}, target none", human(ns)),
        );
    }
    if let Some(ns) = large {
        let target = small.map_or_else(
            || "none".to_string(),
            |s| format!("<= 2 × the 2^10 figure ({})", human(2.0 * s)),
        );
        record_line(
            "file-alloc-free-2e16",
            &format!("file-alloc-free-2e16: ours {}, target {target}", human(ns)),
        );
    }
}

/// Tells the re-executed binary to be the second process of `file-contended-2proc`; the value
/// is the store's path and the peer's lock file, separated by a line feed.
const CONTENDER_ENV: &str = "LOCKYARD_FILE_BENCH_CONTENDER";

/// Runs `n` pairs of ours (`which == "ours"`) or of the bare pair, holding the lock `hold`
/// each time.
fn pairs(which: &str, n: u64, hold: Duration, lock: &FileLocker, peer: &File) {
    match (which == "ours", hold.is_zero()) {
        (true, true) => (0..n).for_each(|_| our_pair(lock)),
        (false, true) => (0..n).for_each(|_| bare_pair(peer)),
        (true, false) => (0..n).for_each(|_| our_pair_around(lock, || spin_for(hold))),
        (false, false) => (0..n).for_each(|_| bare_pair_around(peer, || spin_for(hold))),
    }
}

/// Spins on the clock for `d`.
#[inline(always)]
fn spin_for(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// The second process: for every `ours N HOLD_NS` or `peer N HOLD_NS` line on stdin, runs N
/// pairs on the same lock as the parent, holding it HOLD_NS each time, and answers `done`.
fn contender(spec: &str) {
    pin(1);
    let (store, peer) = spec.split_once('\n').expect("contender spec");
    let manager = FileManager::open(store).expect("open store");
    let lock = manager.retrieve(LockId(0)).expect("retrieve");
    let peer = File::open(peer).expect("peer lock file");
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let mut words = line.split(' ');
        let (Some(which), Some(n), Some(hold)) = (words.next(), words.next(), words.next()) else {
            panic!("command {line:?}");
        };
        let hold = Duration::from_nanos(hold.parse().expect("hold"));
        pairs(which, n.parse().expect("count"), hold, &lock, &peer);
        writeln!(out, "done").expect("stdout");
        out.flush().expect("stdout");
    }
}

/// The contender process, killed and reaped on drop.
struct Contender(Child);

impl Drop for Contender {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pins this process to `cpu`, if the machine has it.
fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

/// Median ns per pair of ours and of the bare pair with two processes on one lock, and the
/// median of the ratios of neighbouring rounds (which saw the same load on the machine).
fn contended_ns(root: &Path, rounds: u32, n: u64, hold: Duration) -> (f64, f64, f64) {
    let affinity = rustix::thread::sched_getaffinity(None).expect("sched_getaffinity");
    pin(0);
    let store = root.join("contended");
    let manager = FileManager::create(&store, 4).expect("create store");
    let lock = manager.retrieve(LockId(0)).expect("retrieve");
    let peer_path = root.join("contended-peer.lock");
    let peer = File::create(&peer_path).expect("peer lock file");
    let spec = format!("{}\n{}", store.display(), peer_path.display());
    let mut child = Contender(
        Command::new(std::env::current_exe().expect("current exe"))
            .env(CONTENDER_ENV, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn contender"),
    );
    let mut to = child.0.stdin.take().expect("stdin");
    let mut from = BufReader::new(child.0.stdout.take().expect("stdout")).lines();
    let mut round = |which: &str| -> f64 {
        writeln!(to, "{which} {n} {}", hold.as_nanos()).expect("to contender");
        to.flush().expect("to contender");
        let start = Instant::now();
        pairs(which, n, hold, &lock, &peer);
        let done = from
            .next()
            .expect("contender exited")
            .expect("from contender");
        assert_eq!(done, "done");
        start.elapsed().as_nanos() as f64 / (2 * n) as f64
    };
    round("ours");
    round("peer");
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        // Alternate which goes first, so that neither always follows the other.
        let (o, p) = if i % 2 == 0 {
            let o = round("ours");
            (o, round("peer"))
        } else {
            let p = round("peer");
            (round("ours"), p)
        };
        ours.push(o);
        theirs.push(p);
        ratios.push(o / p);
    }
    drop(to);
    let _ = rustix::thread::sched_setaffinity(None, &affinity);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(&mut ours), median(&mut theirs), median(&mut ratios))
}

/// `file-contended-2proc` (`hold` zero) or its variant holding the lock `hold` a pair.
fn contended_line(group: &str, hold: Duration) {
    if !wanted(group) {
        return;
    }
    let root = tempfile::tempdir().expect("temp dir");
    let (rounds, n) = match (quick(), hold.is_zero()) {
        (true, _) => (5, 2_000),
        (false, true) => (101, 10_000),
        // A pair takes about five times as long: fewer a round keep the run about as long.
        (false, false) => (101, 4_000),
    };
    let (ours, peer, ratio) = contended_ns(root.path(), rounds, n, hold);
    record_line(
        group,
        &format!(
            "{group}: ours {}, peer {}, ratio {ratio:.2}",
            human(ours),
            human(peer),
        ),
    );
}

fn main() {
    if let Ok(spec) = std::env::var(CONTENDER_ENV) {
        contender(&spec);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    lock_unlock(&mut c, "file-lock-unlock", true);
    lock_unlock(&mut c, "file-lock-unlock-no-owner-death", false);
    c.final_summary();
    interleaved_lines();
    alloc_free_lines();
    contended_line("file-contended-2proc", Duration::ZERO);
    contended_line("file-contended-2proc-hold-1us", Duration::from_micros(1));
}
