//! dirlock benchmarks: uncontended try_lock+unlock on tmpfs, and release-to-acquire handoff.
//!
//! - `dirlock-try-lock-unlock` (criterion, `ours` vs `peer`): ours is `Locker::try_lock` +
//!   `unlock` of a `DirLock` in a directory on /dev/shm; the peer is the classic pid-file lock
//!   (`open(O_CREAT|O_EXCL)`, write the pid, `unlink`), which has no staleness check at all.
//!   Its line prints ours, the peer and the ratio (target: at most 1.2); the same figure is
//!   also written against the first wave's 100 µs target (`dirlock-try-lock-unlock-target`).
//! - `dirlock-handoff` (hand-timed): the delay between a holder's `unlock` and the moment a
//!   thread blocked in `lock` on another handle holds the lock; the peer is the same pid-file
//!   lock waited on with Vanadium's fixed 100 ms poll. Target 1 ms (DESIGN.md section 5; the
//!   first wave asked for 20 ms).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use dirlock::DirLock;
use dirlock::lock_api::Locker;
use lockyard_bench_support::{criterion_mean_ns, human, quick, record_line};

fn shm_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("dirlock-bench-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("bench directory")
}

/// The classic pid-file lock: exclusive create, write the pid, unlink to release.
struct PidFile {
    path: PathBuf,
}

impl PidFile {
    fn try_lock(&self) -> bool {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.path)
        {
            Ok(mut file) => {
                file.write_all(std::process::id().to_string().as_bytes())
                    .expect("write pid");
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => panic!("pid file: {e}"),
        }
    }

    fn unlock(&self) {
        std::fs::remove_file(&self.path).expect("unlink pid file");
    }

    /// Vanadium's wait: try, then sleep 100 ms, forever.
    fn lock_polling(&self) {
        while !self.try_lock() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn try_lock_unlock(c: &mut Criterion) {
    let dir = shm_dir();
    let mut group = c.benchmark_group("dirlock-try-lock-unlock");
    let lock = DirLock::new(dir.path()).expect("dirlock");
    group.bench_function("ours", |b| {
        b.iter(|| {
            assert!(lock.try_lock().expect("try_lock").is_some());
            lock.unlock().expect("unlock");
        })
    });
    let peer = PidFile {
        path: dir.path().join("pidfile"),
    };
    group.bench_function("peer", |b| {
        b.iter(|| {
            assert!(peer.try_lock());
            peer.unlock();
        })
    });
    group.finish();
}

/// Mean time of `iterations` uncontended try_lock+unlock pairs, in nanoseconds.
fn hand_timed_try_lock_unlock(iterations: u32) -> f64 {
    let dir = shm_dir();
    let lock = DirLock::new(dir.path()).expect("dirlock");
    for _ in 0..100 {
        assert!(lock.try_lock().expect("warm up").is_some());
        lock.unlock().expect("unlock");
    }
    let started = Instant::now();
    for _ in 0..iterations {
        assert!(lock.try_lock().expect("try_lock").is_some());
        lock.unlock().expect("unlock");
    }
    started.elapsed().as_nanos() as f64 / f64::from(iterations)
}

/// Mean time of `iterations` uncontended pid-file lock+unlock pairs, in nanoseconds.
fn hand_timed_pid_file(iterations: u32) -> f64 {
    let dir = shm_dir();
    let peer = PidFile {
        path: dir.path().join("pidfile"),
    };
    for _ in 0..100 {
        assert!(peer.try_lock());
        peer.unlock();
    }
    let started = Instant::now();
    for _ in 0..iterations {
        assert!(peer.try_lock());
        peer.unlock();
    }
    started.elapsed().as_nanos() as f64 / f64::from(iterations)
}

/// Mean delay between a release and a blocked waiter's acquisition, in nanoseconds.
fn handoff<L: Send + Sync + 'static>(
    rounds: u32,
    lock: impl Fn(&L) + Send + Sync + Copy + 'static,
    try_lock: impl Fn(&L) -> bool,
    unlock: impl Fn(&L) + Send + Sync + Copy + 'static,
    holder: &L,
    waiter: Arc<L>,
) -> f64 {
    let mut total = Duration::ZERO;
    for _ in 0..rounds {
        assert!(try_lock(holder));
        let (ready_tx, ready_rx) = mpsc::channel();
        let waiter = Arc::clone(&waiter);
        let thread = std::thread::spawn(move || {
            ready_tx.send(()).expect("ready");
            lock(&waiter);
            let acquired = Instant::now();
            unlock(&waiter);
            acquired
        });
        ready_rx.recv().expect("waiter started");
        // Let the waiter go to sleep in its wait, at a random phase of its poll.
        std::thread::sleep(Duration::from_millis(5 + u64::from(rand_phase())));
        let released = Instant::now();
        unlock(holder);
        let acquired = thread.join().expect("waiter");
        total += acquired.saturating_duration_since(released);
    }
    total.as_nanos() as f64 / f64::from(rounds)
}

fn rand_phase() -> u8 {
    rand::random::<u8>() % 40
}

fn hand_timed() {
    let (iterations, rounds, peer_rounds) = if quick() {
        (2_000, 20, 6)
    } else {
        (20_000, 100, 20)
    };
    // The criterion figures when there are some (the same run's), else hand-timed loops.
    let ours = criterion_mean_ns("dirlock-try-lock-unlock", "ours")
        .unwrap_or_else(|| hand_timed_try_lock_unlock(iterations));
    let peer = criterion_mean_ns("dirlock-try-lock-unlock", "peer")
        .unwrap_or_else(|| hand_timed_pid_file(iterations));
    record_line(
        "dirlock-try-lock-unlock",
        &format!(
            "dirlock-try-lock-unlock: ours {}, peer {}, ratio {:.3}",
            human(ours),
            human(peer),
            ours / peer
        ),
    );
    record_line(
        "dirlock-try-lock-unlock-target",
        &format!(
            "dirlock-try-lock-unlock-target: ours {}, target 100.00 µs",
            human(ours)
        ),
    );

    let dir = shm_dir();
    let holder = DirLock::new(dir.path()).expect("holder");
    let waiter = Arc::new(DirLock::new(dir.path()).expect("waiter"));
    let ours = handoff(
        rounds,
        |l: &DirLock| {
            let _ = l.lock().expect("lock");
        },
        |l: &DirLock| l.try_lock().expect("try_lock").is_some(),
        |l: &DirLock| l.unlock().expect("unlock"),
        &holder,
        waiter,
    );
    let peer_dir = shm_dir();
    let path = peer_dir.path().join("pidfile");
    let peer_holder = PidFile { path: path.clone() };
    let peer_waiter = Arc::new(PidFile { path });
    let peer = handoff(
        peer_rounds,
        PidFile::lock_polling,
        PidFile::try_lock,
        PidFile::unlock,
        &peer_holder,
        peer_waiter,
    );
    record_line(
        "dirlock-handoff",
        &format!(
            "dirlock-handoff: ours {}, peer {}, ratio {:.3}",
            human(ours),
            human(peer),
            ours / peer
        ),
    );
    record_line(
        "dirlock-handoff-target",
        &format!(
            "dirlock-handoff-target: ours {}, target 1.00 ms",
            human(ours)
        ),
    );
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    try_lock_unlock(&mut criterion);
    criterion.final_summary();
    hand_timed();
}
