//! Waiting on lock-file: published waits, deadlock checks, and the `SIGURG` wake-up with its
//! fallbacks (a thread that blocks the signal, a program with its own handler).

mod common;

use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use lock_conformance::Failed;
use lock_file::{Acquired, Error, FileLocker, FileManager, LockId, Locker, Manager};

/// Generous liveness bound: long enough for a loaded 2-core machine, short enough to fail fast.
const LIVENESS: Duration = Duration::from_secs(20);

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

/// One member of a would-be cycle, as lock-conformance runs it for `manager`'s owner on this
/// thread: sets the deadlock timeout to `deadlock`, holds `first`, then (once `go` returns)
/// waits for `second` with `lock`, and sends what it says to `said`: `holding`, then
/// `acquired`, `deadlock N ...` or `timeout`, then `released` once it has let go of both.
fn cycle_member(
    manager: &FileManager,
    first: u32,
    second: u32,
    deadlock: Duration,
    said: &Sender<String>,
    mut go: impl FnMut() -> bool,
) -> Result<(), Failed> {
    lock_conformance::child::cycle_member(
        manager,
        LockId(first),
        LockId(second),
        deadlock,
        None,
        &mut |line| {
            let _ = said.send(line.to_owned());
        },
        &mut go,
    )
}

/// What a member that acquired its second lock says, from first to last.
const ACQUIRED: [&str; 3] = ["holding", "acquired", "released"];

/// The names in the store's `owners` directory.
fn owner_files(path: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path.join("owners"))
        .expect("owners dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A process blocked in `lock()` is listed as a waiter (pid, owner, since) while it waits; once
/// it is SIGKILLed, the next snapshot leaves it out and deletes its waiter file. A waiter that
/// times out withdraws its wait.
#[test]
fn a_waiter_that_dies_or_times_out_leaves_the_snapshot() {
    let (_root, path, manager) = fresh(4);
    let lock = manager.retrieve(LockId(2)).expect("retrieve");
    assert_eq!(lock.lock().expect("lock"), Acquired::Clean);
    let before = std::time::SystemTime::now();
    let mut child = common::spawn("hold", &path, "2");
    let pid = child.pid();
    let snapshot = common::snapshot_until(&manager, |s| s.iter().any(|l| !l.waiters.is_empty()));
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    let state = &snapshot[0];
    assert_eq!(state.id, LockId(2));
    let holder = state.holder.as_ref().expect("holder");
    assert_eq!(holder.owner, Some(manager.owner()));
    assert_eq!(state.waiters.len(), 1);
    let waiter = &state.waiters[0];
    assert_eq!(waiter.pid, Some(pid));
    assert!(waiter.owner.is_some() && waiter.owner != holder.owner);
    let since = waiter.since.expect("since");
    assert!(
        since + Duration::from_secs(2) >= before,
        "{since:?} {before:?}"
    );
    assert_eq!(owner_files(&path).len(), 1, "the waiter's file");

    child.sigkill().expect("kill");
    let snapshot = manager.snapshot().expect("snapshot");
    assert!(
        snapshot.iter().all(|l| l.waiters.is_empty()),
        "a dead waiter is listed: {snapshot:?}"
    );
    assert_eq!(
        owner_files(&path),
        Vec::<String>::new(),
        "dead owner's file"
    );

    // A wait that times out withdraws itself.
    let other = FileManager::open(&path).expect("open");
    let theirs = other.retrieve(LockId(2)).expect("retrieve");
    assert!(matches!(
        theirs.try_lock_for(Duration::from_millis(50)),
        Err(Error::Timeout)
    ));
    let snapshot = manager.snapshot().expect("snapshot");
    assert!(
        snapshot.iter().all(|l| l.waiters.is_empty()),
        "{snapshot:?}"
    );
    assert_eq!(owner_files(&path).len(), 1, "a live owner keeps its file");
    drop((theirs, other));
    assert_eq!(owner_files(&path), Vec::<String>::new(), "removed on drop");
    lock.unlock().expect("unlock");
}

/// A pid is shown only to readers in the pid namespace it was recorded in. A process in a
/// container of its own is pid 1 there, and pid 1 here is init: a waiter, holder or client in
/// another pid namespace is listed without a pid (both were listed as pid 1, and `lockctl status` named
/// this namespace's init), alive while it lives and dead once killed.
#[test]
fn a_waiter_or_holder_in_another_pid_namespace_is_listed_without_a_pid() {
    let (_root, path, manager) = fresh(4);
    let lock = manager.retrieve(LockId(1)).expect("retrieve");
    assert_eq!(lock.lock().expect("lock"), Acquired::Clean);
    let mut child = common::spawn_in_pid_namespace("hold", &path, "1");
    let snapshot = common::snapshot_until(&manager, |s| s.iter().any(|l| !l.waiters.is_empty()));
    let holder = snapshot[0].holder.as_ref().expect("holder");
    assert_eq!(
        holder.pid,
        Some(std::process::id()),
        "a holder of this namespace has its pid"
    );
    let waiter = &snapshot[0].waiters[0];
    assert!(waiter.owner.is_some(), "{waiter:?}");
    assert_eq!(
        waiter.pid, None,
        "a waiter in another pid namespace is listed with its pid there"
    );

    lock.unlock().expect("unlock");
    assert_eq!(common::line(&mut child), "locked clean");
    let listed = |manager: &FileManager| {
        let held = manager.held().expect("held");
        assert_eq!(held.len(), 1, "{held:?}");
        held[0].holder.clone().expect("holder")
    };
    let holder = listed(&manager);
    assert!(holder.owner.is_some() && !holder.dead, "{holder:?}");
    assert_eq!(
        holder.pid, None,
        "a holder in another pid namespace is listed with its pid there"
    );
    let clients = manager.clients().expect("clients");
    assert!(
        clients.len() == 1 && clients[0].pid.is_none() && clients[0].owner == holder.owner,
        "a manager in another pid namespace is listed as {clients:?}"
    );
    // Killing unshare(1) kills the holder through its parent-death signal, a moment later.
    child.sigkill().expect("kill");
    let deadline = Instant::now() + LIVENESS;
    let holder = loop {
        let holder = listed(&manager);
        if holder.dead || Instant::now() > deadline {
            break holder;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(holder.dead && holder.pid.is_none(), "{holder:?}");
    assert_eq!(lock.lock().expect("lock"), Acquired::OwnerDied);
    lock.unlock().expect("unlock");
}

/// Runs `f` on a new thread with `SIGURG` blocked, as a program that blocks signals in its
/// worker threads does.
#[allow(unsafe_code)] // the signal mask goes through libc.
fn with_sigurg_blocked<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        // SAFETY: a zeroed sigset_t is valid storage for sigemptyset/sigaddset; the pointers
        // are valid for the calls, and only this thread's mask changes.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGURG);
            assert_eq!(
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
                0
            );
        }
        f()
    })
}

/// A thread that blocks `SIGURG` cannot be interrupted, yet its `try_lock_for` still ends at its
/// deadline (it polls), and its `lock()` still acquires once the lock is released.
#[test]
fn a_thread_that_blocks_sigurg_still_times_out_and_acquires() {
    let (_root, path, manager) = fresh(2);
    let lock = manager.retrieve(LockId(0)).expect("retrieve");
    let _ = lock.lock().expect("lock");
    let other = FileManager::open(&path).expect("open");
    let theirs = other.retrieve(LockId(0)).expect("retrieve");
    let waiter = with_sigurg_blocked(move || {
        let start = Instant::now();
        let timed_out = theirs.try_lock_for(Duration::from_millis(200));
        let waited = start.elapsed();
        (timed_out.map_err(|e| e.to_string()), waited, theirs)
    });
    let (timed_out, waited, theirs) = waiter.join().expect("join");
    assert_eq!(timed_out, Err(Error::Timeout.to_string()));
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(waited < LIVENESS, "{waited:?}");

    other
        .set_deadlock_timeout(Duration::from_millis(20))
        .expect("timeout");
    let (tx, rx) = mpsc::channel();
    let waiter = with_sigurg_blocked(move || {
        let got = theirs.lock().map_err(|e| e.to_string());
        let _ = tx.send(());
        if got.is_ok() {
            theirs.unlock().expect("unlock");
        }
        got
    });
    // Several deadlock checks come due while it waits; none can interrupt it, none is needed.
    assert!(rx.recv_timeout(Duration::from_millis(150)).is_err());
    lock.unlock().expect("unlock");
    assert_eq!(waiter.join().expect("join"), Ok(Acquired::Clean));
}

/// In a two-owner cycle where one member's thread blocks `SIGURG` (so it can never check), the
/// other member checks and is the one victim; the blocked member then acquires.
#[test]
fn a_cycle_with_one_uninterruptible_member_still_has_one_victim() {
    let (root, path, a) = fresh(2);
    let _watchdog = common::watchdog("an undetected cycle", LIVENESS * 3, root.path());
    let b = FileManager::open(&path).expect("open");
    let deadlock = Duration::from_millis(50);
    b.set_deadlock_timeout(deadlock).expect("timeout");
    let b1 = b.retrieve(LockId(1)).expect("retrieve");
    let _ = b1.lock().expect("lock");
    let b0 = b.retrieve(LockId(0)).expect("retrieve");
    let (said, a_said) = mpsc::channel();
    let a_member = a.clone();
    let a_waits =
        with_sigurg_blocked(move || cycle_member(&a_member, 0, 1, deadlock, &said, || true));
    // Let `a` publish its wait first, so `b` closes the cycle.
    common::snapshot_until(&a, |s| s.iter().any(|l| !l.waiters.is_empty()));
    let b_result = b0.lock();
    let cycle = match b_result {
        Err(Error::Deadlock { cycle }) => cycle,
        other => panic!("b should be the victim: {other:?}"),
    };
    assert_eq!(cycle.0.len(), 2, "{cycle}");
    assert_eq!(cycle.0[0].owner, b.owner());
    assert_eq!(cycle.0[1].owner, a.owner());
    assert_eq!(
        (cycle.0[0].holds, cycle.0[0].waits_for),
        (LockId(1), LockId(0))
    );
    b1.unlock().expect("the victim backs off");
    a_waits.join().expect("join").expect("member a");
    assert_eq!(a_said.try_iter().collect::<Vec<_>>(), ACQUIRED);
    let snapshot = a.snapshot().expect("snapshot");
    assert!(snapshot.is_empty(), "{snapshot:?}");
}

/// Deadlock checks are decided under the store's detection lock (`flock` on its `deadlock`
/// file): while anyone else holds it, no member of a cycle becomes a victim; once it is free,
/// exactly one does.
#[test]
fn a_cycle_is_decided_only_under_the_detection_lock() {
    let (root, path, a) = fresh(2);
    let _watchdog = common::watchdog("an undetected cycle", LIVENESS * 3, root.path());
    let b = FileManager::open(&path).expect("open");
    let detection = std::fs::File::open(path.join("deadlock")).expect("detection lock file");
    rustix::fs::flock(&detection, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    let (said, heard) = mpsc::channel();
    // Neither member waits before both hold their first lock.
    let both_hold = Arc::new(Barrier::new(2));
    let members: Vec<_> = [(a.clone(), 0, 1), (b.clone(), 1, 0)]
        .into_iter()
        .map(|(m, first, second)| {
            let (said, both_hold) = (said.clone(), Arc::clone(&both_hold));
            std::thread::spawn(move || {
                let go = || {
                    both_hold.wait();
                    true
                };
                cycle_member(&m, first, second, Duration::from_millis(20), &said, go)
            })
        })
        .collect();
    common::snapshot_until(&a, |s| {
        s.iter().map(|l| l.waiters.len()).sum::<usize>() == 2
    });
    for _ in 0..2 {
        assert_eq!(heard.recv_timeout(LIVENESS).as_deref(), Ok("holding"));
    }
    // Many checks fall due while the detection lock is held elsewhere; none may decide.
    assert!(heard.recv_timeout(Duration::from_millis(300)).is_err());
    rustix::fs::flock(&detection, rustix::fs::FlockOperation::Unlock).expect("unlock");
    for member in members {
        member.join().expect("join").expect("member");
    }
    let outcomes: Vec<String> = heard.try_iter().filter(|l| l != "released").collect();
    let victims = outcomes
        .iter()
        .filter(|l| l.starts_with("deadlock"))
        .count();
    assert_eq!(victims, 1, "{outcomes:?}");
    assert!(outcomes.iter().any(|l| l == "acquired"), "{outcomes:?}");
}

/// A deadlock timeout lowered at run time applies to the next waits, also when the manager's
/// scan (`adopt.rs`) was scheduled by a wait under the old one: here an hour, then 20 ms, with
/// `b` the only member of the cycle that checks (`a`'s detection is off). When a new scan was
/// due a whole old timeout after the wait that started it, `b`'s `lock()` was adopted only an
/// hour later and the cycle stood.
#[test]
fn a_lowered_deadlock_timeout_applies_to_the_next_waits() {
    let (root, path, a) = fresh(3);
    let _watchdog = common::watchdog("a cycle nobody checked", LIVENESS * 3, root.path());
    let b = FileManager::open(&path).expect("open");
    b.set_deadlock_timeout(Duration::from_secs(3600))
        .expect("timeout");
    // A first wait of b's, under the hour, starts b's scan.
    let a2 = a.retrieve(LockId(2)).expect("retrieve");
    let _ = a2.lock().expect("lock");
    let b2 = b.retrieve(LockId(2)).expect("retrieve");
    let first = std::thread::spawn(move || b2.lock().and_then(|_| b2.unlock()));
    common::snapshot_until(&a, |s| {
        s.iter().any(|l| l.id == LockId(2) && !l.waiters.is_empty())
    });
    a2.unlock().expect("unlock");
    first.join().expect("join").expect("b's first wait");
    // The cycle; `cycle_member` sets b's timeout to 20 ms before it holds lock 1.
    a.set_deadlock_timeout(Duration::ZERO).expect("off");
    let a0 = a.retrieve(LockId(0)).expect("retrieve");
    let _ = a0.lock().expect("lock");
    let (said, b_said) = mpsc::channel();
    let member = std::thread::spawn(move || {
        cycle_member(&b, 1, 0, Duration::from_millis(20), &said, || true)
    });
    assert_eq!(b_said.recv_timeout(LIVENESS).as_deref(), Ok("holding"));
    let a1 = a.retrieve(LockId(1)).expect("retrieve");
    let closing = std::thread::spawn(move || a1.lock().and_then(|_| a1.unlock()));
    let outcome = b_said.recv_timeout(LIVENESS);
    assert!(
        outcome
            .as_deref()
            .is_ok_and(|l| l.starts_with("deadlock 2")),
        "b's lock() closed a cycle under a 20 ms timeout: {outcome:?}"
    );
    member.join().expect("join").expect("member b");
    closing
        .join()
        .expect("join")
        .expect("a's wait ends once b backs off");
    a0.unlock().expect("unlock");
}

/// With detection off (a zero timeout) a cycle is never reported, however long it lasts: here
/// one member breaks it by timing out.
#[test]
fn with_detection_off_a_cycle_is_never_reported() {
    let (_root, path, a) = fresh(2);
    let b = FileManager::open(&path).expect("open");
    for m in [&a, &b] {
        m.set_deadlock_timeout(Duration::ZERO).expect("off");
        assert_eq!(m.deadlock_timeout(), None);
    }
    let a0 = a.retrieve(LockId(0)).expect("retrieve");
    let _ = a0.lock().expect("lock");
    let a1 = a.retrieve(LockId(1)).expect("retrieve");
    let (said, b_said) = mpsc::channel();
    let waiter = std::thread::spawn(move || cycle_member(&b, 1, 0, Duration::ZERO, &said, || true));
    common::snapshot_until(&a, |s| s.iter().any(|l| !l.waiters.is_empty()));
    assert!(matches!(
        a1.try_lock_for(Duration::from_millis(300)),
        Err(Error::Timeout)
    ));
    a0.unlock().expect("unlock");
    waiter.join().expect("join").expect("member b");
    assert_eq!(b_said.try_iter().collect::<Vec<_>>(), ACQUIRED);
}

/// A program with its own `SIGURG` handler keeps it: lock-file does not install its own, and
/// the program's bounded waits still end at their deadline (by polling).
#[test]
fn a_programs_own_sigurg_handler_is_kept_and_waits_still_time_out() {
    let (_root, path, manager) = fresh(2);
    let lock = manager.retrieve(LockId(0)).expect("retrieve");
    let _ = lock.lock().expect("lock");
    let mut child = common::spawn("own-sigurg", &path, "200");
    assert_eq!(common::line(&mut child), "timeout");
    assert_eq!(common::line(&mut child), "handler kept");
    child.finish(LIVENESS).expect("child exits");
    lock.unlock().expect("unlock");
}

/// A store without owner records cannot name holders, so deadlock detection is unsupported
/// there, and says so.
#[test]
fn detection_needs_owner_records() {
    let root = tempfile::tempdir().expect("temp dir");
    let manager = lock_file::StoreOptions::new(2)
        .owner_death(false)
        .create(root.path().join("store"))
        .expect("create");
    assert_eq!(manager.deadlock_timeout(), None);
    assert!(matches!(
        manager.set_deadlock_timeout(Duration::from_secs(1)),
        Err(Error::Unsupported(_))
    ));
}

/// Voluntary context switches of thread `tid` of this process so far: how often it slept.
fn switches_of(tid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
        .expect("the waiter's status")
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

/// A waiter on a live holder with no cycle in sight sleeps through its deadlock checks: they
/// run on the timer thread, which interrupts the waiter only when it sees a cycle. With a 20 ms
/// timeout the checks come at 20, 60, 140, 300, 620 and 1260 ms; when each of them interrupted
/// the blocked `flock`, the waiter woke at least four times in the window below.
#[test]
fn an_idle_waiter_sleeps_through_its_deadlock_checks() {
    idle_waiter_sleeps(|lock| lock.try_lock_for(LIVENESS).map(|_| ()));
}

/// The same for a `lock()`, whose wait blocks with no timer and whose checks are armed by the
/// manager's scan (`adopt.rs`): neither the adoption nor the checks wake it.
#[test]
fn an_idle_lock_sleeps_through_its_adoption_and_deadlock_checks() {
    idle_waiter_sleeps(|lock| lock.lock().map(|_| ()));
}

/// Holds a lock while another owner's thread waits for it with `wait` (20 ms deadlock
/// timeout), and counts how often that thread sleeps again in 1.5 s well into its checks: at
/// most once (a wake-up the test did not cause, on a shared machine).
fn idle_waiter_sleeps(wait: fn(&FileLocker) -> Result<(), Error>) {
    let (_root, path, holder) = fresh(2);
    let lock = holder.retrieve(LockId(0)).expect("retrieve");
    let _ = lock.lock().expect("lock");
    let waiter = FileManager::open(&path).expect("open");
    waiter
        .set_deadlock_timeout(Duration::from_millis(20))
        .expect("deadlock timeout");
    let (tid_tx, tid_rx) = mpsc::channel();
    let waiting = std::thread::spawn(move || {
        let _ = tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get());
        let lock = waiter.retrieve(LockId(0)).expect("retrieve");
        let got = wait(&lock);
        let unlocked = lock.unlock();
        (got, unlocked)
    });
    let tid = tid_rx.recv().expect("the waiter's thread id");
    common::snapshot_until(&holder, |s| s.iter().any(|l| !l.waiters.is_empty()));
    // Past the first check, well into the schedule.
    std::thread::sleep(Duration::from_millis(100));
    let before = switches_of(tid);
    std::thread::sleep(Duration::from_millis(1500));
    let woke = switches_of(tid) - before;
    lock.unlock().expect("unlock");
    let (got, unlocked) = waiting.join().expect("waiter");
    got.expect("the waiter acquires once the holder lets go");
    unlocked.expect("unlock");
    assert!(
        woke <= 1,
        "the idle waiter woke {woke} times in 1.5 s of deadlock checks"
    );
}

/// Files in `owners/` that are not this store's waiter files (other content, another size, a
/// header naming another owner, a directory, a symbolic link) are left alone by the sweep a
/// manager makes before its first wait and by a snapshot's read of the waiter files, and
/// neither the wait nor the snapshot fails over them.
#[test]
fn foreign_files_in_owners_are_left_alone() {
    let (_root, path, holder) = fresh(4);
    let owners = path.join("owners");
    let mut other_owner = vec![0u8; 4096];
    other_owner[..8].copy_from_slice(b"LKYDOWNR");
    other_owner[8..16].copy_from_slice(&8u64.to_le_bytes());
    let foreign = [
        ("5", b"an operator's notes\n".to_vec()),
        ("6", vec![0u8; 4096]),
        ("7", other_owner),
    ];
    for (name, bytes) in &foreign {
        std::fs::write(owners.join(name), bytes).expect("write");
    }
    std::fs::create_dir(owners.join("9")).expect("mkdir");
    std::os::unix::fs::symlink("5", owners.join("10")).expect("symlink");
    let held = holder.retrieve(LockId(1)).expect("retrieve");
    assert_eq!(held.lock().expect("lock"), Acquired::Clean);
    let waiter = FileManager::open(&path).expect("open");
    let lock = waiter.retrieve(LockId(1)).expect("retrieve");
    assert!(matches!(
        lock.try_lock_for(Duration::from_millis(50)),
        Err(Error::Timeout)
    ));
    let snapshot = waiter.snapshot().expect("snapshot");
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    for (name, bytes) in &foreign {
        assert_eq!(
            std::fs::read(owners.join(name)).ok().as_ref(),
            Some(bytes),
            "owners/{name}"
        );
    }
    assert!(owners.join("9").is_dir());
    assert!(owners.join("10").is_symlink());
    held.unlock().expect("unlock");
}
