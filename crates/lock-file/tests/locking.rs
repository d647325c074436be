//! Locking through the public API: owners, threads, real processes and SIGKILLed holders.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lock_conformance::child::ChildProcess;
use lock_file::{Acquired, Error, FileManager, Inspect, LockId, Locker, Manager, StoreOptions};
use rand::Rng;

/// Generous liveness bound: long enough for a loaded 2-core machine, short enough to fail fast.
const LIVENESS: Duration = Duration::from_secs(10);

#[test]
fn child_entry() {
    common::child_entry();
}

fn fresh(capacity: u32) -> (tempfile::TempDir, PathBuf, FileManager) {
    let root = tempfile::tempdir().expect("temp dir");
    let path = root.path().join("store");
    let manager = FileManager::create(&path, capacity).expect("create store");
    (root, path, manager)
}

#[test]
fn same_owner_relock_waits_for_the_owner_and_try_lock_says_none() {
    // Its threads block in `lock()`, which a scope joins before a failed assertion ends it.
    let (root, _path, manager) = fresh(4);
    let _watchdog = common::watchdog("a lock() that never returned", LIVENESS * 3, root.path());
    let first = manager.retrieve(LockId(1)).expect("retrieve");
    let second = manager.retrieve(LockId(1)).expect("retrieve again");
    assert_eq!(first.lock().expect("lock"), Acquired::Clean);
    assert!(second.try_lock().expect("try_lock").is_none());
    assert!(matches!(
        second.try_lock_for(Duration::from_millis(30)),
        Err(Error::Timeout)
    ));
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let got = second.lock();
            let _ = tx.send(got.map_err(|e| e.to_string()));
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "a second lock by the same owner must wait"
        );
        first.unlock().expect("unlock");
        let got = rx
            .recv_timeout(LIVENESS)
            .expect("waiter proceeds after unlock");
        assert_eq!(got, Ok(Acquired::Clean));
    });
    // Either handle of the owner may release it, once.
    first.unlock().expect("unlock through the other handle");
    assert!(matches!(second.unlock(), Err(Error::NotHeld(LockId(1)))));
}

/// Threads of two owners take one lock in turns, each owner's threads waiting for each other
/// (the slot's phase word: sleepers while a sibling holds the lock or waits for the other owner)
/// and for the other owner (`flock`). A counter bumped in two steps under the lock shows any
/// overlap as a lost update, and every thread must finish within the liveness bound (a lost
/// wake-up would leave one asleep).
#[test]
fn threads_of_two_owners_take_turns_without_losing_an_update() {
    // Its threads block in `lock()`, which a scope joins before a failed assertion ends it.
    const THREADS_PER_OWNER: usize = 3;
    const PAIRS: u64 = 300;
    let (root, path, a) = fresh(2);
    let _watchdog = common::watchdog("a lock() that never returned", LIVENESS * 6, root.path());
    let b = FileManager::open(&path).expect("second open");
    let counter = std::sync::atomic::AtomicU64::new(0);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for manager in [&a, &b] {
            for _ in 0..THREADS_PER_OWNER {
                let lock = manager.retrieve(LockId(0)).expect("retrieve");
                let (counter, tx) = (&counter, tx.clone());
                s.spawn(move || {
                    for i in 0..PAIRS {
                        // Mix the ways in: lock, try_lock, and a bounded wait.
                        let taken = match i % 3 {
                            0 => lock.lock().map(|_| true),
                            1 => lock.try_lock().map(|got| got.is_some()),
                            _ => match lock.try_lock_for(LIVENESS) {
                                Ok(_) => Ok(true),
                                Err(e) => Err(e),
                            },
                        };
                        match taken {
                            Ok(true) => {}
                            Ok(false) => continue,
                            Err(e) => {
                                let _ = tx.send(Err(e.to_string()));
                                return;
                            }
                        }
                        let seen = counter.load(std::sync::atomic::Ordering::Relaxed);
                        std::thread::yield_now();
                        counter.store(seen + 1, std::sync::atomic::Ordering::Relaxed);
                        if let Err(e) = lock.unlock() {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                        let _ = tx.send(Ok(()));
                    }
                });
            }
        }
        drop(tx);
        let deadline = Instant::now() + LIVENESS * 3;
        let mut pairs = 0u64;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Ok(())) => pairs += 1,
                Ok(Err(e)) => panic!("a thread failed: {e}"),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "threads still running after {:?}: a lost wake-up",
                        LIVENESS * 3
                    )
                }
            }
        }
        assert_eq!(
            counter.load(std::sync::atomic::Ordering::Relaxed),
            pairs,
            "updates lost: two threads held the lock at once"
        );
        assert!(
            pairs >= 2 * THREADS_PER_OWNER as u64 * PAIRS * 2 / 3,
            "{pairs} pairs"
        );
    });
    for manager in [&a, &b] {
        let lock = manager.retrieve(LockId(0)).expect("retrieve");
        assert_eq!(lock.try_lock().expect("try_lock"), Some(Acquired::Clean));
        lock.unlock().expect("unlock");
    }
}

/// A lock's slot is biased to the first thread that takes it (`src/bias.rs`: that thread moves
/// the phase word with plain stores); a sibling thread's first move revokes the bias while the
/// owner keeps locking and unlocking. On each of several locks the two never hold the lock at
/// once, and after the revocation both go on taking turns, including an unlock made by the
/// thread that did not lock.
#[test]
fn a_sibling_revokes_the_bias_while_the_owner_keeps_locking() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
    // Its threads block in `lock()`, which a scope joins before a failed assertion ends it.
    const LOCKS: u32 = 16;
    const PAIRS: u32 = 2_000;
    let (root, _path, manager) = fresh(LOCKS);
    let _watchdog = common::watchdog("a lock() that never returned", LIVENESS * 3, root.path());
    for id in 0..LOCKS {
        let inside = AtomicBool::new(false);
        let owner_pairs = AtomicU32::new(0);
        let pair = |lock: &lock_file::FileLocker| {
            assert_eq!(lock.lock().expect("lock"), Acquired::Clean);
            assert!(!inside.swap(true, SeqCst), "two threads hold lock {id}");
            std::hint::spin_loop();
            inside.store(false, SeqCst);
            lock.unlock().expect("unlock");
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                let lock = manager.retrieve(LockId(id)).expect("retrieve");
                for _ in 0..PAIRS {
                    pair(&lock);
                    owner_pairs.fetch_add(1, SeqCst);
                }
            });
            s.spawn(|| {
                let lock = manager.retrieve(LockId(id)).expect("retrieve");
                // Start once the owner is well into its plain moves.
                while owner_pairs.load(SeqCst) < PAIRS / 10 {
                    std::thread::yield_now();
                }
                for _ in 0..PAIRS {
                    pair(&lock);
                }
            });
        });
        // A lock taken on one thread and released on another.
        let lock = manager.retrieve(LockId(id)).expect("retrieve");
        assert_eq!(lock.lock().expect("lock"), Acquired::Clean);
        std::thread::scope(|s| {
            s.spawn(|| lock.unlock().expect("unlock from another thread"));
        });
        assert!(matches!(lock.unlock(), Err(Error::NotHeld(_))));
    }
}

/// A thread of an owner whose other thread waits for another owner (the slot is `WAITING`) waits
/// too: `try_lock` says none, and `try_lock_for` ends with `Timeout` at its deadline and leaves
/// the slot as it was; once the other owner lets go, the waiting thread holds the lock and the
/// owner's threads take it in turn again.
#[test]
fn a_sibling_of_a_waiting_thread_times_out_and_the_wait_still_ends_holding() {
    // Its threads block in `lock()`, which a scope joins before a failed assertion ends it.
    let (root, path, a) = fresh(2);
    let _watchdog = common::watchdog("a lock() that never returned", LIVENESS * 3, root.path());
    let b = FileManager::open(&path).expect("second open");
    let held_by_b = b.retrieve(LockId(0)).expect("retrieve");
    assert_eq!(held_by_b.lock().expect("lock"), Acquired::Clean);
    let first = a.retrieve(LockId(0)).expect("retrieve");
    let sibling = a.retrieve(LockId(0)).expect("retrieve");
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let got = first.lock();
            let _ = tx.send(got.map_err(|e| e.to_string()));
        });
        // The first thread is waiting for the other owner once its wait is published.
        common::snapshot_until(&a, |s| s.iter().any(|l| !l.waiters.is_empty()));
        assert!(sibling.try_lock().expect("try_lock").is_none());
        assert!(matches!(
            sibling.try_lock_for(Duration::from_millis(40)),
            Err(Error::Timeout)
        ));
        assert!(matches!(sibling.unlock(), Err(Error::NotHeld(LockId(0)))));
        held_by_b.unlock().expect("unlock");
        let got = rx.recv_timeout(LIVENESS).expect("the wait ends");
        assert_eq!(got, Ok(Acquired::Clean));
    });
    assert!(
        sibling.try_lock().expect("try_lock").is_none(),
        "the first thread holds it"
    );
    sibling
        .unlock()
        .expect("either handle of the owner releases it");
    assert_eq!(
        sibling.try_lock_for(LIVENESS).expect("try_lock_for"),
        Acquired::Clean
    );
    first.unlock().expect("unlock");
}

#[test]
fn two_managers_in_one_process_are_two_owners() {
    let (_root, path, a) = fresh(2);
    let b = FileManager::open(&path).expect("second open");
    let la = a.retrieve(LockId(0)).expect("retrieve");
    let lb = b.retrieve(LockId(0)).expect("retrieve");
    assert_eq!(la.lock().expect("lock"), Acquired::Clean);
    assert!(lb.try_lock().expect("try_lock").is_none());
    assert!(matches!(lb.unlock(), Err(Error::NotHeld(_))));
    let holder = lb.holder().expect("holder").expect("held");
    assert_eq!(holder.pid, Some(std::process::id()));
    la.unlock().expect("unlock");
    assert_eq!(lb.try_lock().expect("try_lock"), Some(Acquired::Clean));
    lb.unlock().expect("unlock");
    assert!(lb.holder().expect("holder").is_none());
}

/// A test the watchdog ends leaves no temporary directory behind: exiting skips the
/// destructors that would have removed it.
#[test]
fn a_watchdog_that_ends_the_process_removes_its_directories() {
    let (_root, path, _manager) = fresh(1);
    let mut child = common::spawn("watchdog", &path, "");
    let line = common::line(&mut child);
    let dir = PathBuf::from(line.strip_prefix("dir ").expect("dir line"));
    let status = child
        .wait(common::LINE_TIMEOUT)
        .expect("the watchdog ends the child");
    assert_eq!(status.code(), Some(101), "{status:?}");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn killed_holder_is_reported_once_and_named_while_alive() {
    let (_root, path, manager) = fresh(4);
    let mut child = common::spawn("hold", &path, "2");
    assert_eq!(common::line(&mut child), "locked clean");
    let held = manager.held().expect("held");
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].id, LockId(2));
    let holder = held[0].holder.clone().expect("holder known");
    assert_eq!(holder.pid, Some(child.pid()));
    assert!(holder.since.is_some());

    let lock = manager.retrieve(LockId(2)).expect("retrieve");
    assert!(lock.try_lock().expect("try_lock").is_none());
    child.sigkill().expect("kill child");
    assert_eq!(
        lock.try_lock_for(LIVENESS).expect("take over"),
        Acquired::OwnerDied
    );
    lock.unlock().expect("unlock");
    assert_eq!(lock.lock().expect("lock again"), Acquired::Clean);
    lock.unlock().expect("unlock");
    assert!(manager.held().expect("held").is_empty());
}

/// A holder SIGKILLed while holding: `held()`, `snapshot()` and `Inspect::holder` still list
/// its lock, flagged dead and naming the dead process, until someone takes it over; looking
/// does not consume the news.
#[test]
fn a_dead_holders_lock_is_listed_flagged_dead_until_taken_over() {
    let (_root, path, manager) = fresh(4);
    let mut child = common::spawn("hold", &path, "3");
    assert_eq!(common::line(&mut child), "locked clean");
    let pid = child.pid();
    let alive = manager.held().expect("held");
    assert_eq!(alive.len(), 1);
    let alive = alive[0].holder.clone().expect("holder");
    assert!(!alive.dead && alive.pid == Some(pid));
    child.sigkill().expect("kill child");
    // The record still says "held", but nobody holds the flock.
    let held = manager.held().expect("held");
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].id, LockId(3));
    let dead = held[0].holder.clone().expect("holder");
    assert!(dead.dead, "{dead:?}");
    assert_eq!(
        (dead.pid, &dead.owner, dead.since),
        (Some(pid), &alive.owner, alive.since)
    );
    let snapshot = manager.snapshot().expect("snapshot");
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot[0].holder.as_ref(), Some(&dead));
    let lock = manager.retrieve(LockId(3)).expect("retrieve");
    assert_eq!(lock.holder().expect("holder"), Some(dead));
    // Looking did not consume the news: the next acquirer is still told.
    assert_eq!(lock.lock().expect("lock"), Acquired::OwnerDied);
    let ours = lock.holder().expect("holder").expect("held");
    assert!(!ours.dead && ours.owner == Some(manager.owner()));
    lock.unlock().expect("unlock");
    assert!(manager.held().expect("held").is_empty());
}

#[test]
fn store_without_owner_records_reports_clean_and_still_knows_who_holds() {
    let root = tempfile::tempdir().expect("temp dir");
    let path = root.path().join("store");
    let manager = StoreOptions::new(4)
        .owner_death(false)
        .create(&path)
        .expect("create");
    assert!(!manager.owner_death());
    let mut child = common::spawn("hold", &path, "1");
    assert_eq!(common::line(&mut child), "locked clean");
    let held = manager.held().expect("held");
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].id, held[0].holder.clone()), (LockId(1), None));
    child.sigkill().expect("kill child");
    let lock = manager.retrieve(LockId(1)).expect("retrieve");
    assert_eq!(lock.try_lock_for(LIVENESS).expect("lock"), Acquired::Clean);
    lock.unlock().expect("unlock");
    // A reopen sees the store's own setting, whatever the caller asks for.
    let (again, created) = StoreOptions::new(4).open_or_create(&path).expect("open");
    assert!(!created && !again.owner_death());
}

#[test]
fn unlock_by_another_process_is_refused_and_changes_nothing() {
    let (_root, path, manager) = fresh(2);
    let mut child = common::spawn("hold", &path, "0");
    assert_eq!(common::line(&mut child), "locked clean");
    let lock = manager.retrieve(LockId(0)).expect("retrieve");
    assert!(matches!(lock.unlock(), Err(Error::NotHeld(LockId(0)))));
    assert!(lock.try_lock().expect("try_lock").is_none());
    child.send("unlock").expect("send unlock");
    assert_eq!(common::line(&mut child), "unlocked");
    assert_eq!(lock.try_lock_for(LIVENESS).expect("lock"), Acquired::Clean);
    lock.unlock().expect("unlock");
    child
        .finish(common::LINE_TIMEOUT)
        .expect("child exits cleanly");
}

#[test]
fn locking_a_freed_lock_never_reallocates_it() {
    let (_root, _path, manager) = fresh(3);
    let lock = manager.allocate().expect("allocate");
    assert_eq!(lock.id(), LockId(0));
    lock.free().expect("free");
    assert!(matches!(lock.free(), Err(Error::NotAllocated(LockId(0)))));
    assert_eq!(lock.lock().expect("lock freed"), Acquired::Clean);
    assert_eq!(manager.available().expect("available"), Some(3));
    manager.sync().expect("sync");
    let next = manager.allocate().expect("allocate");
    assert_eq!(next.id(), LockId(0), "the freed id is the lowest free one");
    lock.unlock().expect("unlock");
}

#[test]
fn descriptors_stay_bounded_and_held_locks_survive_eviction() {
    let (_root, path, manager) = fresh(2048);
    let count_fds = || std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let before = count_fds();
    let kept = manager.retrieve(LockId(7)).expect("retrieve");
    let _ = kept.lock().expect("lock");
    drop(kept);
    for id in 0..2048 {
        let lock = manager.retrieve(LockId(id)).expect("retrieve");
        if id != 7 {
            let _ = lock.lock().expect("lock");
            lock.unlock().expect("unlock");
        }
    }
    let grown = count_fds().saturating_sub(before);
    assert!(
        grown < 1024,
        "{grown} descriptors kept for 2048 touched ids"
    );
    // Lock 7 is still held by this manager although no handle was left.
    let other = FileManager::open(&path).expect("open");
    let theirs = other.retrieve(LockId(7)).expect("retrieve");
    assert!(theirs.try_lock().expect("try_lock").is_none());
    manager
        .retrieve(LockId(7))
        .expect("retrieve")
        .unlock()
        .expect("unlock through a new handle");
    assert!(theirs.try_lock().expect("try_lock").is_some());
    theirs.unlock().expect("unlock");
}

/// Processes hammer two locks while the driver SIGKILLs random ones (often holders) and starts
/// replacements: never two holders at once, no clean acquisition after a death, and every lock
/// still acquirable at the end.
#[test]
fn kill_test_no_overlap_and_every_takeover_reported() {
    const WORKERS: usize = 3;
    const LOCKS: &str = "2";
    let (_root, path, manager) = fresh(2);
    let start = || {
        let mut child = common::spawn("hammer", &path, LOCKS);
        assert_eq!(common::line(&mut child), "ready");
        child
    };
    let mut workers: Vec<ChildProcess> = (0..WORKERS).map(|_| start()).collect();
    let mut retired = Vec::new();
    let mut rng = rand::rng();
    let end = Instant::now() + Duration::from_secs(3);
    let mut kills = 0;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(rng.random_range(20..80)));
        let victim = rng.random_range(0..WORKERS);
        let mut dead = std::mem::replace(&mut workers[victim], start());
        dead.sigkill().expect("kill worker");
        kills += 1;
        retired.push(dead);
    }
    for worker in &mut workers {
        worker.sigkill().expect("kill worker");
    }
    let mut said: HashMap<String, usize> = HashMap::new();
    for child in retired.iter_mut().chain(&mut workers) {
        while let Ok(line) = child.next_line(Duration::ZERO) {
            let key = line.split(' ').next().unwrap_or("").to_string();
            assert!(
                key != "violation" && key != "err",
                "a worker reported: {line}"
            );
            *said.entry(key).or_default() += 1;
        }
    }
    eprintln!("kill test: {kills} kills, worker lines {said:?}");
    for id in 0..2 {
        let lock = manager.retrieve(LockId(id)).expect("retrieve");
        let _ = lock
            .try_lock_for(LIVENESS)
            .expect("no lock is lost for good");
        lock.unlock().expect("unlock");
    }
}

/// Processes allocate and free while the driver SIGKILLs them, often inside the allocation
/// lock: afterwards the bitmap is consistent. Every id is either allocated or handed out once
/// by a fresh allocation, and `available` agrees with what allocation finds.
#[test]
fn allocator_survives_sigkill() {
    // Leaf 0 has one free id, so every allocation fills it (setting its summary bit) and every
    // free empties it again: the two-store updates the kills can interrupt.
    let (_root, path, manager) = fresh(130);
    for id in 0..64 {
        if id != 40 {
            let _ = manager
                .allocate_and_retrieve(LockId(id))
                .expect("pre-allocate");
        }
    }
    let start = || {
        let mut child = common::spawn("churn", &path, "");
        assert_eq!(common::line(&mut child), "ready");
        child
    };
    let mut workers: Vec<ChildProcess> = (0..2).map(|_| start()).collect();
    let mut rng = rand::rng();
    let end = Instant::now() + Duration::from_secs(2);
    let mut retired = Vec::new();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(rng.random_range(5..40)));
        let victim = rng.random_range(0..workers.len());
        let mut dead = std::mem::replace(&mut workers[victim], start());
        dead.sigkill().expect("kill worker");
        retired.push(dead);
    }
    for worker in &mut workers {
        worker.sigkill().expect("kill worker");
    }
    for child in retired.iter_mut().chain(&mut workers) {
        if let Ok(line) = child.next_line(Duration::ZERO) {
            panic!("a worker reported: {line}");
        }
    }
    // Killed workers may have died holding an allocation; whatever is left must add up.
    let available = manager.available().expect("available").expect("bounded");
    let mut seen = std::collections::BTreeSet::new();
    loop {
        match manager.allocate() {
            Ok(lock) => assert!(seen.insert(lock.id()), "{} handed out twice", lock.id()),
            Err(Error::Exhausted { capacity: 130 }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        seen.len() as u32,
        available,
        "allocation and available() disagree"
    );
    manager.free_all().expect("free_all");
    for want in 0..130 {
        assert_eq!(manager.allocate().expect("allocate").id(), LockId(want));
    }
}

/// `remove_unused` leaves a store that a manager has open, in this process or another, and
/// removes it once none has; a forced `remove` does not ask.
#[test]
fn remove_unused_keeps_a_store_in_use() {
    let (root, path, manager) = fresh(4);
    let _watchdog = common::watchdog("remove_unused", LIVENESS, root.path());
    let me = std::process::id();
    assert_in_use(
        FileManager::remove_unused(&path),
        &format!("1 manager has it open: pid {me})"),
    );
    drop(manager);
    let mut child = common::spawn("hold", &path, "1");
    assert_eq!(common::line(&mut child), "locked clean");
    assert_in_use(
        FileManager::remove_unused(&path),
        &format!("1 manager has it open: pid {})", child.pid()),
    );
    // A manager in another pid namespace (the child of unshare(1), pid 1 there) is counted,
    // not named: its pid means another process here.
    let mut namespaced = common::spawn_in_pid_namespace("hold", &path, "2");
    assert_eq!(common::line(&mut namespaced), "locked clean");
    let inner = children_of(namespaced.pid());
    assert_eq!(inner.len(), 1, "unshare's children: {inner:?}");
    assert_in_use(
        FileManager::remove_unused(&path),
        &format!(
            "2 managers have it open: pid {} and 1 in another pid namespace)",
            child.pid()
        ),
    );
    // Killing unshare(1) kills its child through its parent-death signal, a moment later.
    drop(namespaced);
    let deadline = Instant::now() + LIVENESS;
    while !gone(inner[0]) {
        assert!(
            Instant::now() < deadline,
            "pid {} outlived unshare",
            inner[0]
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(FileManager::open(&path).expect("kept"));
    child.sigkill().expect("kill the child");
    // The kernel lets go of a killed process's locks as it tears the process down, which
    // under load can lag behind its exit as this test sees it.
    let deadline = Instant::now() + LIVENESS;
    loop {
        match FileManager::remove_unused(&path) {
            Err(Error::InUse { what }) if Instant::now() < deadline => {
                eprintln!("still in use: {what}");
                std::thread::sleep(Duration::from_millis(10));
            }
            other => {
                other.expect("remove_unused once nobody has it open");
                break;
            }
        }
    }
    assert!(matches!(
        FileManager::open(&path),
        Err(Error::NotFound { .. })
    ));
}

/// Asserts that `refused` is `InUse` and its message ends with `naming`.
fn assert_in_use(refused: Result<(), Error>, naming: &str) {
    match refused {
        Err(Error::InUse { what }) => assert!(what.ends_with(naming), "{what:?}, not {naming:?}"),
        other => panic!("{other:?}, not InUse naming {naming:?}"),
    }
}

/// Whether process `pid` has exited (it is gone, or a zombie, whose descriptors are closed).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => true,
    }
}

/// The pids whose parent is `pid`, from `/proc/PID/task/*/children`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let children = task.expect("task").path().join("children");
        let text = std::fs::read_to_string(children).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

/// An open while a remover of an unused store holds the marker waits for its verdict: it fails
/// with `NotFound` when the remover deleted the store, succeeds when the remover left it, and
/// fails with `Unavailable` when the remover holds on past its bound (two seconds). Before, an
/// open that raced the removal went on with the deleted store's files.
#[test]
fn an_open_during_a_removal_waits_for_its_verdict() {
    let (root, path, manager) = fresh(4);
    let _watchdog = common::watchdog("an open during a removal", LIVENESS, root.path());
    drop(manager);
    let hold_marker = |path: &PathBuf| {
        let marker = std::fs::File::open(path.join("lockyard-store")).expect("open the marker");
        rustix::fs::flock(&marker, rustix::fs::FlockOperation::LockExclusive)
            .expect("lock the marker");
        marker
    };
    let opener = |path: PathBuf| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(FileManager::open(&path).map(drop));
        });
        rx
    };
    for delete in [true, false] {
        let remover = hold_marker(&path);
        let done = opener(path.clone());
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(early) = done.try_recv() {
            panic!("an open while the remover decided returned at once: {early:?}");
        }
        if delete {
            std::fs::remove_dir_all(&path).expect("delete the store");
        }
        drop(remover);
        let got = done.recv_timeout(LIVENESS).expect("the open returned");
        match (delete, got) {
            (true, Err(Error::NotFound { .. })) | (false, Ok(())) => {}
            (_, other) => panic!("an open during a removal that deleted={delete}: {other:?}"),
        }
        if delete {
            drop(FileManager::create(&path, 4).expect("create again"));
        }
    }
    let _remover = hold_marker(&path);
    let got = opener(path.clone()).recv_timeout(LIVENESS);
    assert!(
        matches!(got, Ok(Err(Error::Unavailable { .. }))),
        "an open while a remover stalls: {got:?}"
    );
}
