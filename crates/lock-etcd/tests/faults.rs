//! Fault tests with real processes on a cluster of our own: a killed leader, a stopped holder
//! process fenced off by a newer token, a killed holder process, a cluster that loses quorum, a
//! holder partitioned away by a blackholed proxy, and a waiter whose watch is on a stopped member.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::proxy::{Mode, Proxy};
use common::{
    FencedResource, ROLE_ENV, TestCluster, assert_no_leases, assert_nothing_left, spawn_child, tell,
};
use lock_conformance::Failed;
use lock_etcd::{
    Acquired, Error, EtcdLocks, EtcdOptions, Fenced, Inspect, Leased, LockId, Locker, Manager,
};
use rustix::process::Signal;
use serial_test::serial;

fn role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

fn child_locks() -> EtcdLocks {
    let eps = std::env::var("ETCD_EPS").expect("ETCD_EPS");
    let prefix = std::env::var("ETCD_PREFIX").expect("ETCD_PREFIX");
    EtcdLocks::connect(
        eps.split(','),
        EtcdOptions::new()
            .prefix(prefix)
            .ttl(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(3)),
    )
    .expect("child connect")
}

/// Runs `f` on a thread and fails the test if it does not finish within `limit`.
fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("operation hung for more than {limit:?}"))
}

/// [`bounded`], also returning how long `f` took.
fn timed<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> (Duration, T) {
    bounded(limit, move || {
        let start = Instant::now();
        let result = f();
        (start.elapsed(), result)
    })
}

/// A connection through `proxies` with its own prefix, TTL and request timeout.
fn connect_through(
    proxies: &[Proxy],
    prefix: &str,
    ttl: Duration,
    request_timeout: Duration,
) -> EtcdLocks {
    EtcdLocks::connect(
        proxies.iter().map(Proxy::url),
        EtcdOptions::new()
            .prefix(prefix)
            .ttl(ttl)
            .request_timeout(request_timeout),
    )
    .expect("connect through the proxies")
}

/// The leader is SIGKILLed while three handles contend; exclusion holds and locking goes on.
#[test]
#[serial]
fn leader_killed_mid_run_locks_keep_working() {
    let mut tc = TestCluster::start();
    let prefix = common::prefix("leader-kill");
    let locks = tc.connect(&prefix, Duration::from_secs(5));
    let stop = Arc::new(AtomicBool::new(false));
    let inside = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let after_kill = Arc::new(AtomicU32::new(0));
    let mut threads = Vec::new();
    for _ in 0..3 {
        let lock = locks.named("hot").expect("named");
        let (stop, inside, killed, after_kill) = (
            Arc::clone(&stop),
            Arc::clone(&inside),
            Arc::clone(&killed),
            Arc::clone(&after_kill),
        );
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match lock.try_lock_for(Duration::from_secs(10)) {
                    Ok(_) => {
                        assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                        std::thread::sleep(Duration::from_millis(2));
                        inside.store(false, Ordering::SeqCst);
                        match lock.unlock() {
                            Ok(()) => {
                                if killed.load(Ordering::SeqCst) {
                                    after_kill.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            Err(Error::Unavailable { .. }) => {}
                            Err(e) => panic!("unlock: {e:?}"),
                        }
                    }
                    Err(Error::Unavailable { .. } | Error::Timeout) => {}
                    Err(e) => panic!("lock: {e:?}"),
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(1));
    let leader = tc.cluster().leader().expect("a leader");
    tc.cluster().kill(leader).expect("kill leader");
    killed.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while after_kill.load(Ordering::SeqCst) < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("worker");
    }
    let n = after_kill.load(Ordering::SeqCst);
    assert!(
        n >= 20,
        "only {n} lock/unlock cycles after the leader was killed"
    );
    drop(locks);
    let live = tc.cluster().live_endpoints();
    assert_nothing_left(&live, &prefix, Duration::from_secs(10));
}

/// The leader is SIGSTOPped (connections stay open, nothing answers): after an election the
/// locks keep working through the other members, and nothing is left behind.
#[test]
#[serial]
fn stopped_leader_locks_keep_working() {
    let mut tc = TestCluster::start();
    let prefix = common::prefix("leader-stop");
    let locks = tc.connect(&prefix, Duration::from_secs(5));
    let lock = locks.named("s").expect("named");
    let _ = lock.lock().expect("lock before");
    lock.unlock().expect("unlock before");
    let leader = tc.cluster().leader().expect("a leader");
    tc.cluster().stop(leader).expect("SIGSTOP leader");
    let start = Instant::now();
    let mut cycles = 0;
    while cycles < 10 && start.elapsed() < Duration::from_secs(40) {
        let t = Instant::now();
        match lock.try_lock_for(Duration::from_secs(10)) {
            Ok(_) => match lock.unlock() {
                Ok(()) => cycles += 1,
                Err(e @ Error::Unavailable { .. }) => eprintln!("unlock {:?}: {e}", t.elapsed()),
                Err(e) => panic!("unlock: {e:?}"),
            },
            Err(e @ (Error::Unavailable { .. } | Error::Timeout)) => {
                eprintln!("lock {:?}: {e}", t.elapsed());
            }
            Err(e) => panic!("lock: {e:?}"),
        }
    }
    eprintln!(
        "{cycles} cycles within {:?} of stopping the leader",
        start.elapsed()
    );
    tc.cluster().cont(leader).expect("SIGCONT leader");
    assert_eq!(cycles, 10, "locking did not resume with the leader stopped");
    drop(lock);
    drop(locks);
    assert_nothing_left(&tc.endpoints, &prefix, Duration::from_secs(10));
}

/// Txn requests a member has answered: how a test sees which member a connection writes to.
fn txns_answered(endpoint: &str) -> f64 {
    lock_etcd::testkit::metric(
        endpoint,
        "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Txn\",\
         grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}",
    )
    .unwrap_or(f64::NAN)
}

/// Checks that within 10 s, the 20 Txns of 10 lock+unlock pairs on `lock` all go to member
/// `leader` and none to member `follower` (as each member's `/metrics` counts them).
fn assert_writes_go_to(
    lock: &lock_etcd::EtcdLock,
    endpoints: &[String],
    follower: usize,
    leader: usize,
    when: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let counts = || {
        (
            txns_answered(&endpoints[follower]),
            txns_answered(&endpoints[leader]),
        )
    };
    let delta = loop {
        let before = counts();
        for _ in 0..10 {
            let _ = lock.lock().expect("lock");
            lock.unlock().expect("unlock");
        }
        let after = counts();
        let delta = (after.0 - before.0, after.1 - before.1);
        if delta == (0.0, 20.0) || Instant::now() >= deadline {
            break delta;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        delta,
        (0.0, 20.0),
        "Txns of 10 pairs answered by the follower and the leader, 10 s {when}"
    );
}

/// After the leader is killed, a connection fails over to the next member in its list; once a
/// request succeeds there it looks for the new leader and sends its writes to it, rather than
/// to a follower that forwards every one for the rest of the connection's life. To make the
/// case certain, the leadership is moved off the member the fail-over lands on. Without the
/// search the connection kept writing through that follower.
#[test]
#[serial]
fn after_a_fail_over_writes_go_to_the_new_leader() {
    let mut tc = TestCluster::start();
    let prefix = common::prefix("leader-seek");
    let locks = tc.connect(&prefix, Duration::from_secs(5));
    let lock = locks.named("w").expect("named");
    let _ = lock.lock().expect("lock before");
    lock.unlock().expect("unlock before");
    // The connection writes to the leader (found at connect); it fails over to the next one.
    let killed = tc.cluster().leader().expect("a leader");
    let landing = (killed + 1) % 3;
    let other = (killed + 2) % 3;
    tc.cluster().kill(killed).expect("kill leader");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tc.cluster().leader().is_none() {
        assert!(Instant::now() < deadline, "no new leader");
        std::thread::sleep(Duration::from_millis(50));
    }
    tc.cluster()
        .move_leader(other)
        .expect("move the leadership");
    // The first pair fails over, to a follower.
    let _ = lock.lock().expect("lock");
    lock.unlock().expect("unlock");
    assert_writes_go_to(&lock, &tc.endpoints, landing, other, "after the fail-over");
    drop(lock);
    drop(locks);
    let live = tc.cluster().live_endpoints();
    assert_nothing_left(&live, &prefix, Duration::from_secs(10));
}

/// Moves the leadership to another member after one lock+unlock on a connection with session
/// TTL `ttl`, and requires the connection's writes to go to the new leader (not through the old
/// one, now a follower, for the rest of its life) within `assert_writes_go_to`'s 10 s.
fn writes_follow_a_leader_transfer(name: &str, ttl: Duration) {
    let mut tc = TestCluster::start();
    let prefix = common::prefix(name);
    let locks = tc.connect(&prefix, ttl);
    let lock = locks.named("t").expect("named");
    let _ = lock.lock().expect("lock before");
    lock.unlock().expect("unlock before");
    let old = tc.cluster().leader().expect("a leader");
    let new = (old + 1) % 3;
    tc.cluster().move_leader(new).expect("move the leadership");
    assert_writes_go_to(&lock, &tc.endpoints, old, new, "after the transfer");
    drop(lock);
    drop(locks);
    assert_nothing_left(&tc.endpoints, &prefix, Duration::from_secs(10));
}

/// A leader transfer fails no request: the connection hears of the election from a raft term,
/// here with a 2 s TTL, whose session renews every 0.67 s. Without the term check the writes
/// kept going to the old leader.
#[test]
#[serial]
fn after_a_leader_transfer_writes_go_to_the_new_leader() {
    writes_follow_a_leader_transfer("leader-move", Duration::from_secs(2));
}

/// The same transfer with a session whose renewals are 20 s apart (a 60 s TTL), longer than
/// `assert_writes_go_to` waits: the connection hears of the election from the raft term of the
/// answer to its next request, whatever the request. Without that it wrote through the old
/// leader until the session's next renewal.
#[test]
#[serial]
fn after_a_leader_transfer_the_next_answer_sends_writes_to_the_new_leader() {
    writes_follow_a_leader_transfer("leader-answer", Duration::from_secs(60));
}

/// A holder process SIGSTOPped past its TTL loses the lock: another process acquires it with a
/// higher token, the fenced resource rejects the old token, and the holder sees Lost on SIGCONT.
#[test]
#[serial]
fn stopped_holder_is_fenced_off_and_sees_lost() -> Result<(), Failed> {
    if role().as_deref() == Some("stopped-holder") {
        let locks = child_locks();
        let resource = FencedResource {
            path: std::env::var("RESOURCE").expect("RESOURCE").into(),
        };
        let lock = locks.named("fenced").expect("named");
        let _ = lock.lock().expect("child lock");
        let token = lock.fencing_token().expect("token");
        assert!(resource.write(token));
        let lost = lock.lost().expect("lost signal");
        tell(&format!("HELD {token}"));
        common::read_stdin_line();
        let accepted = resource.write(token);
        tell(&format!(
            "WRITE {}",
            if accepted { "accepted" } else { "rejected" }
        ));
        tell(&format!(
            "LOST {}",
            lost.wait_timeout(Duration::from_secs(10))
        ));
        tell(&format!("UNLOCK {:?}", lock.unlock()));
        return Ok(());
    }
    let tc = TestCluster::start();
    let prefix = common::prefix("sigstop");
    let dir = tempfile::tempdir().expect("tempdir");
    let resource = FencedResource {
        path: dir.path().join("resource"),
    };
    let mut child = spawn_child(
        "stopped_holder_is_fenced_off_and_sees_lost",
        "stopped-holder",
        &[
            ("ETCD_EPS", tc.endpoints.join(",")),
            ("ETCD_PREFIX", prefix.clone()),
            ("RESOURCE", resource.path.display().to_string()),
        ],
    );
    let old: u64 = child
        .expect("HELD", Duration::from_secs(20))?
        .parse()
        .expect("token");
    child.signal(Signal::STOP)?;
    let locks = tc.connect(&prefix, Duration::from_secs(2));
    let lock = locks.named("fenced").expect("named");
    let start = Instant::now();
    let how = lock
        .try_lock_for(Duration::from_secs(20))
        .expect("acquire after the stopped holder's lease expired");
    assert_eq!(how, Acquired::OwnerDied, "a stopped holder's lock");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(1),
        "acquired after only {waited:?}"
    );
    let new = lock.fencing_token().expect("token");
    assert!(new > old, "new token {new} not above old {old}");
    assert!(resource.write(new), "the new holder's write was rejected");
    child.signal(Signal::CONT)?;
    child.send("go")?;
    assert_eq!(child.expect("WRITE", Duration::from_secs(10))?, "rejected");
    assert_eq!(child.expect("LOST", Duration::from_secs(15))?, "true");
    assert_eq!(
        child.expect("UNLOCK", Duration::from_secs(10))?,
        "Err(Lost)"
    );
    assert!(child.wait(Duration::from_secs(10))?.success());
    lock.unlock().expect("unlock");
    // The connection's session holds a lease until the connection is dropped.
    drop(lock);
    drop(locks);
    assert_nothing_left(&tc.endpoints, &prefix, Duration::from_secs(10));
    Ok(())
}

/// etcd#11456 with a real process: a waiter SIGSTOPped until its lease expired, resumed after the
/// holder released, is told Lost, never that it holds the lock.
#[test]
#[serial]
fn stopped_waiter_whose_lease_expired_is_never_told_it_holds() -> Result<(), Failed> {
    if role().as_deref() == Some("stopped-waiter") {
        let locks = child_locks();
        let lock = locks.named("w").expect("named");
        tell("WAITING");
        let result = lock.try_lock_for(Duration::from_secs(60));
        tell(&format!("RESULT {result:?}"));
        tell(&format!("TOKEN {:?}", lock.fencing_token()));
        return Ok(());
    }
    let tc = TestCluster::start();
    let prefix = common::prefix("stopped-waiter");
    let locks = tc.connect(&prefix, Duration::from_secs(2));
    let holder = locks.named("w").expect("named");
    let _ = holder.lock().expect("holder lock");
    let mut child = spawn_child(
        "stopped_waiter_whose_lease_expired_is_never_told_it_holds",
        "stopped-waiter",
        &[
            ("ETCD_EPS", tc.endpoints.join(",")),
            ("ETCD_PREFIX", prefix.clone()),
        ],
    );
    child.expect("WAITING", Duration::from_secs(20))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::queue_keys(&tc.endpoints, &prefix).len() < 2 {
        assert!(Instant::now() < deadline, "the waiter never enqueued");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.signal(Signal::STOP)?;
    // The waiter's lease (TTL 2 s) expires while it is stopped; its key goes with it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::queue_keys(&tc.endpoints, &prefix).len() > 1 {
        assert!(
            Instant::now() < deadline,
            "the stopped waiter's key never expired"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    holder.unlock().expect("holder unlock");
    child.signal(Signal::CONT)?;
    assert_eq!(
        child.expect("RESULT", Duration::from_secs(20))?,
        "Err(Lost)"
    );
    assert_eq!(
        child.expect("TOKEN", Duration::from_secs(5))?,
        "Err(NotHeld(LockId(0)))"
    );
    assert!(child.wait(Duration::from_secs(10))?.success());
    let how = holder.try_lock().expect("try_lock").expect("free again");
    assert_eq!(how, Acquired::Clean, "a dead waiter is not a dead holder");
    holder.unlock().expect("unlock");
    drop(holder);
    drop(locks);
    assert_nothing_left(&tc.endpoints, &prefix, Duration::from_secs(10));
    Ok(())
}

/// The same contract when the waiter never learned that it had joined the queue: its enqueue
/// was applied, the answer was lost, and its session's lease ended before the retry. The retry's
/// "no such lease" does not mean that nothing was written (the first attempt was), so the waiter
/// is told `Lost`; before, it took that answer as a stale session's, started again on a new
/// default session and returned `Ok(Clean)` (seen once in CI through the stopped waiter above,
/// whose first answer arrived after its attempt timeout).
#[test]
#[serial]
fn a_waiter_whose_unanswered_enqueue_lost_its_lease_is_told_lost() {
    let tc = TestCluster::start();
    let prefix = common::prefix("lost-enqueue");
    let holder_locks = tc.connect(&prefix, Duration::from_secs(10));
    let holder = holder_locks.named("q").expect("named");
    let _ = holder.lock().expect("holder lock");
    let proxies: Vec<Proxy> = tc.endpoints.iter().map(|e| Proxy::start(e)).collect();
    // Attempt timeout 1 s: the enqueue is retried on another member 1 s after its answer was lost.
    let locks = connect_through(
        &proxies,
        &prefix,
        Duration::from_secs(10),
        Duration::from_secs(4),
    );
    let waiter = locks.named("q").expect("named");
    let queue = format!("{prefix}/lock/q/");
    let (result, waiter) = with_the_answer_lost_then(
        &proxies,
        &queue,
        move || (waiter.try_lock_for(Duration::from_secs(20)), waiter),
        || {
            // The enqueue was applied: the waiter's key is in the queue behind the holder's.
            // End its lease, as an expiry while the process was stopped would, before the
            // retry.
            let keys = common::queue_keys(&tc.endpoints, &queue);
            assert_eq!(keys.len(), 2, "holder and waiter queued: {keys:?}");
            let holder_lease = holder.lease_id().expect("held");
            let (_, lease) = keys
                .iter()
                .find(|(_, lease)| *lease != holder_lease)
                .expect("the waiter's key");
            let lease = *lease;
            common::raw(&tc.endpoints, async move |c| c.lease_revoke(lease).await);
            holder.unlock().expect("holder unlock");
        },
    );
    assert!(matches!(result, Err(Error::Lost)), "waiter: {result:?}");
    assert!(
        matches!(waiter.fencing_token(), Err(Error::NotHeld(_))),
        "the waiter holds nothing"
    );
    let how = holder.try_lock().expect("try_lock").expect("free again");
    assert_eq!(how, Acquired::Clean, "a dead waiter is not a dead holder");
    holder.unlock().expect("unlock");
    drop((holder, waiter));
    drop((holder_locks, locks));
    drop(proxies);
    assert_nothing_left(&tc.endpoints, &prefix, Duration::from_secs(15));
}

/// A SIGKILLed holder's lease expires and the next acquirer gets the lock with a higher token.
#[test]
#[serial]
fn killed_holder_lock_is_taken_after_ttl() -> Result<(), Failed> {
    if role().as_deref() == Some("killed-holder") {
        let locks = child_locks();
        let lock = locks.named("k").expect("named");
        let _ = lock.lock().expect("child lock");
        tell(&format!("HELD {}", lock.fencing_token().expect("token")));
        std::thread::sleep(Duration::from_secs(60));
        return Ok(());
    }
    let tc = TestCluster::start();
    let prefix = common::prefix("sigkill");
    let mut child = spawn_child(
        "killed_holder_lock_is_taken_after_ttl",
        "killed-holder",
        &[
            ("ETCD_EPS", tc.endpoints.join(",")),
            ("ETCD_PREFIX", prefix.clone()),
        ],
    );
    let old: u64 = child
        .expect("HELD", Duration::from_secs(20))?
        .parse()
        .expect("token");
    child.signal(Signal::KILL)?;
    child.wait(Duration::from_secs(5))?;
    let locks = tc.connect(&prefix, Duration::from_secs(2));
    let lock = locks.named("k").expect("named");
    let how = lock
        .try_lock_for(Duration::from_secs(15))
        .expect("taken over after the TTL");
    assert_eq!(how, Acquired::OwnerDied, "a killed holder's lock");
    assert!(lock.fencing_token().expect("token") > old);
    lock.unlock().expect("unlock");
    drop(lock);
    drop(locks);
    assert_nothing_left(&tc.endpoints, &prefix, Duration::from_secs(10));
    Ok(())
}

/// Two of three members killed: the holder's Lost fires within TTL plus slack, new acquisitions
/// fail with Unavailable or Timeout and do not hang; once quorum is back nothing is left behind.
#[test]
#[serial]
fn quorum_lost_fires_lost_and_fails_fast() {
    let mut tc = TestCluster::start();
    let prefix = common::prefix("quorum");
    let ttl = Duration::from_secs(2);
    let locks = EtcdLocks::connect(
        &tc.endpoints,
        EtcdOptions::new()
            .prefix(&prefix)
            .ttl(ttl)
            .request_timeout(Duration::from_secs(1)),
    )
    .expect("connect");
    let guard = locks.lock("q").expect("lock");
    let lost = guard.lost().expect("lost");
    let leader = tc.cluster().leader().expect("leader");
    let other = (leader + 1) % 3;
    tc.cluster().kill(leader).expect("kill leader");
    tc.cluster().kill(other).expect("kill another member");
    let start = Instant::now();
    assert!(
        lost.wait_timeout(ttl + Duration::from_secs(5)),
        "Lost did not fire within TTL plus slack"
    );
    eprintln!("lost fired {:?} after quorum loss", start.elapsed());
    assert!(matches!(guard.time_left(), Err(Error::Lost)));

    let bounded_locks = locks.clone();
    let r = bounded(Duration::from_secs(15), move || {
        bounded_locks
            .named("fresh")
            .and_then(|l| l.try_lock_for(Duration::from_secs(2)).map(drop))
    });
    assert!(
        matches!(r, Err(Error::Unavailable { .. } | Error::Timeout)),
        "try_lock_for without quorum: {r:?}"
    );
    let blocking_locks = locks.clone();
    let r = bounded(Duration::from_secs(15), move || {
        blocking_locks
            .named("fresh")
            .and_then(|l| l.lock().map(drop))
    });
    assert!(
        matches!(r, Err(Error::Unavailable { .. })),
        "lock without quorum: {r:?}"
    );
    let r = bounded(Duration::from_secs(15), move || guard.unlock());
    assert!(
        matches!(r, Err(Error::Lost)),
        "unlock after quorum loss: {r:?}"
    );

    tc.cluster().restart(leader).expect("restart");
    tc.cluster().restart(other).expect("restart");
    tc.cluster()
        .wait_healthy(Duration::from_secs(30))
        .expect("healthy again");
    // Leases the cluster could not revoke while down expire one TTL after a leader is back; the
    // lost holder's queue entry goes with its lease.
    assert_no_leases(&tc.endpoints, ttl + Duration::from_secs(10));
    assert_eq!(common::queue_keys(&tc.endpoints, &prefix), Vec::new());
    // Its held marker stays until the next acquisition, which learns that the holder lost it.
    let lock = locks.named("q").expect("named");
    let how = lock
        .try_lock_for(Duration::from_secs(10))
        .expect("lock again");
    assert_eq!(
        how,
        Acquired::OwnerDied,
        "after a holder that lost its lease"
    );
    lock.unlock().expect("unlock");
    drop(lock);
    drop(locks);
    assert_nothing_left(&tc.endpoints, &prefix, Duration::from_secs(5));
}

/// What a thread polling a holder's three views of its lock saw.
#[derive(Debug, Default)]
struct Views {
    samples: u64,
    /// The last instant (CLOCK_MONOTONIC, taken after the call returned) a view said "held".
    last_held: Option<u128>,
    /// The first instant a view said "lost", and which view.
    first_lost: Option<(u128, &'static str)>,
    /// The first few views that said "held" after another had said "lost", or said something
    /// else altogether.
    disagreements: Vec<String>,
}

/// Polls `lost.is_lost()`, `fencing_token()` and `time_left()` in turn until `lost` has been
/// seen for a while (or a minute passed). Losing a lock never un-happens, so once one view said
/// lost every later call of any view must say lost too.
fn poll_views(lock: &lock_etcd::EtcdLock, lost: &lock_etcd::LostSignal, token: u64) -> Views {
    let mut v = Views::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stop_at = None;
    while Instant::now() < deadline && stop_at.is_none_or(|s| Instant::now() < s) {
        v.samples += 1;
        for view in ["is_lost", "fencing_token", "time_left"] {
            let says_lost = match view {
                "is_lost" => lost.is_lost(),
                "fencing_token" => match lock.fencing_token() {
                    Ok(t) if t == token => false,
                    Err(Error::Lost) => true,
                    other => {
                        v.disagreements
                            .push(format!("fencing_token said {other:?}"));
                        true
                    }
                },
                _ => match lock.time_left() {
                    Ok(Some(_)) => false,
                    Err(Error::Lost) => true,
                    other => {
                        v.disagreements.push(format!("time_left said {other:?}"));
                        true
                    }
                },
            };
            let at = common::mono_ns();
            if says_lost {
                if v.first_lost.is_none() {
                    v.first_lost = Some((at, view));
                    stop_at = Some(Instant::now() + Duration::from_millis(300));
                }
            } else {
                v.last_held = Some(at);
                if let Some((lost_at, by)) = v.first_lost
                    && v.disagreements.len() < 5
                {
                    v.disagreements.push(format!(
                        "{view} said held {} µs after {by} had said lost",
                        (at - lost_at) / 1000
                    ));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    v
}

/// A holder cut off from the cluster (every member behind a blackholed proxy: connections stay
/// open, nothing answers) declares the lock lost before another process can acquire it:
/// `lost().is_lost()`, `fencing_token()` and `time_left()` agree at every call, and the last
/// call that said "held" came before the other process had the lock.
#[test]
#[serial]
fn partitioned_holder_loses_before_another_acquires() -> Result<(), Failed> {
    if role().as_deref() == Some("acquirer") {
        let locks = child_locks();
        let lock = locks.named("p").expect("named");
        tell("WAITING");
        let how = lock.try_lock_for(Duration::from_secs(60));
        let at = common::mono_ns();
        match (how, lock.fencing_token()) {
            (Ok(how), Ok(token)) => tell(&format!("ACQUIRED {at} {token} {how:?}")),
            other => tell(&format!("FAILED {other:?}")),
        }
        common::read_stdin_line();
        tell(&format!("UNLOCK {:?}", lock.unlock()));
        return Ok(());
    }
    let tc = TestCluster::start();
    let prefix = common::prefix("partition");
    let proxies: Vec<Proxy> = tc.endpoints.iter().map(|e| Proxy::start(e)).collect();
    let ttl = Duration::from_secs(2);
    let locks = connect_through(&proxies, &prefix, ttl, Duration::from_secs(3));
    let holder = Arc::new(locks.named("p").expect("named"));
    let _ = holder.lock().expect("lock");
    let old = holder.fencing_token().expect("token");
    let lost = holder.lost().expect("lost signal");
    let mut child = spawn_child(
        "partitioned_holder_loses_before_another_acquires",
        "acquirer",
        &[
            ("ETCD_EPS", tc.endpoints.join(",")),
            ("ETCD_PREFIX", prefix.clone()),
        ],
    );
    child.expect("WAITING", Duration::from_secs(20))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::queue_keys(&tc.endpoints, &prefix).len() < 2 {
        assert!(Instant::now() < deadline, "the acquirer never enqueued");
        std::thread::sleep(Duration::from_millis(20));
    }
    let poller = {
        let (holder, lost) = (Arc::clone(&holder), lost.clone());
        std::thread::spawn(move || poll_views(&holder, &lost, old))
    };
    for proxy in &proxies {
        proxy.set_mode(Mode::Blackhole);
    }
    let line = child.expect("ACQUIRED", Duration::from_secs(30))?;
    let mut fields = line.split_whitespace();
    let acquired_at: u128 = fields.next().and_then(|f| f.parse().ok()).expect("instant");
    let new: u64 = fields.next().and_then(|f| f.parse().ok()).expect("token");
    assert_eq!(fields.next(), Some("OwnerDied"), "acquired as {line}");
    let views = poller.join().expect("poller");
    eprintln!("{views:?}; acquired at {acquired_at}");
    assert!(
        views.disagreements.is_empty(),
        "the holder's views disagreed: {:?}",
        views.disagreements
    );
    let (lost_at, _) = views
        .first_lost
        .expect("the holder never saw its lock lost");
    let last_held = views.last_held.expect("the holder never saw its lock held");
    assert!(
        last_held < acquired_at,
        "the old holder still said held {} µs after another process acquired the lock",
        (last_held - acquired_at) / 1000
    );
    eprintln!(
        "lost {} ms before another process acquired",
        acquired_at.saturating_sub(lost_at) / 1_000_000
    );
    assert!(new > old, "new token {new} not above old {old}");
    assert!(
        matches!(holder.unlock(), Err(Error::Lost)),
        "unlock after the partition"
    );
    child.send("go")?;
    assert_eq!(child.expect("UNLOCK", Duration::from_secs(10))?, "Ok(())");
    assert!(child.wait(Duration::from_secs(10))?.success());
    drop(holder);
    drop(locks);
    drop(proxies);
    assert_nothing_left(&tc.endpoints, &prefix, ttl + Duration::from_secs(10));
    Ok(())
}

/// A waiter whose watch runs on a member that is then SIGSTOPped fails over like a request does,
/// and acquires once the holder releases through another member. The waiter reaches that member
/// through a proxy that answers HTTP/2 PINGs itself, so HTTP/2 keepalive (which would notice a
/// stopped process after about 3 s) cannot rescue the watch: only the library's own fail-over can.
#[test]
#[serial]
fn waiter_watching_a_stopped_member_fails_over() {
    let mut tc = TestCluster::start();
    let prefix = common::prefix("watch-failover");
    let leader = tc.cluster().leader().expect("a leader");
    let stopped = (leader + 1) % tc.endpoints.len();
    let others: Vec<String> = (0..tc.endpoints.len())
        .filter(|i| *i != stopped)
        .map(|i| tc.endpoints[i].clone())
        .collect();
    let proxy = Proxy::start(&tc.endpoints[stopped]);
    let options = || {
        EtcdOptions::new()
            .prefix(&prefix)
            .ttl(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(2))
    };
    let holder_locks = EtcdLocks::connect(&others, options()).expect("holder connect");
    let holder = holder_locks.named("w").expect("named");
    let _ = holder.lock().expect("holder lock");
    // The waiter prefers the member behind the proxy: its requests and watches go there first.
    // Its other endpoint is the other follower, not the leader, which it would prefer.
    let follower = (0..tc.endpoints.len())
        .find(|i| *i != stopped && *i != leader)
        .expect("a third member");
    let waiter_endpoints = vec![proxy.url(), tc.endpoints[follower].clone()];
    let waiter_locks = EtcdLocks::connect(&waiter_endpoints, options()).expect("waiter connect");
    let waiter = waiter_locks.named("w").expect("named");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let outcome = waiter.try_lock_for(Duration::from_secs(60));
        let _ = tx.send((outcome, waiter));
    });
    // Nobody else watches on that member: a watcher there is the waiter's predecessor watch (a
    // waiter opens no watch on its own key; its session's keepalive covers its lease).
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::queue_keys(&tc.endpoints, &prefix).len() < 2
        || common::watchers(&tc.endpoints[stopped]).unwrap_or(0) < 1
    {
        assert!(
            Instant::now() < deadline,
            "the waiter never watched on member {stopped}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.set_mode(Mode::AnswerPings);
    tc.cluster().stop(stopped).expect("SIGSTOP member");
    let released = Instant::now();
    holder.unlock().expect("release through another member");
    let outcome = rx.recv_timeout(Duration::from_secs(20));
    tc.cluster().cont(stopped).expect("SIGCONT member");
    let (result, waiter) =
        outcome.expect("the waiter never noticed the release: its watch did not fail over");
    assert_eq!(result.expect("waiter acquires"), Acquired::Clean);
    eprintln!(
        "the waiter acquired {:?} after the release",
        released.elapsed()
    );
    waiter.unlock().expect("waiter unlock");
    drop(waiter);
    drop(holder);
    drop(waiter_locks);
    drop(holder_locks);
    drop(proxy);
    assert_nothing_left(&tc.endpoints, &prefix, Duration::from_secs(10));
}

/// In an outage (every member blackholed, the session still within its TTL), a `try_lock_for`
/// returns `Timeout` at its deadline and a cancelled `lock` returns at its cancellation, rather
/// than waiting out the request timeout for the clean-up of their queue keys, which nobody
/// answers; the clean-up goes on in the background and the keys go with the lease at the latest.
/// A `try_lock_for` that first has to grant its connection's session returns at its deadline too.
#[test]
#[serial]
fn an_attempt_ended_in_an_outage_returns_without_waiting_for_its_clean_up() {
    let tc = TestCluster::start();
    let prefix = common::prefix("end-outage");
    let proxies: Vec<Proxy> = tc.endpoints.iter().map(|e| Proxy::start(e)).collect();
    let ttl = Duration::from_secs(10);
    let request_timeout = Duration::from_secs(20);
    let locks = connect_through(&proxies, &prefix, ttl, request_timeout);
    let waits = locks.named("waits").expect("named");
    let cancelled = locks.named("cancelled").expect("named");
    // A second connection that has no session yet: its first attempt has to grant a lease.
    let fresh = connect_through(&proxies, &prefix, ttl, request_timeout)
        .named("fresh")
        .expect("named");
    // The connection's default session exists before the outage (making one then is another
    // matter: a lease grant nobody answers).
    let _ = waits.lock().expect("lock");
    waits.unlock().expect("unlock");
    for proxy in &proxies {
        proxy.set_mode(Mode::Blackhole);
    }
    let (took, result) = timed(request_timeout * 3, move || {
        waits.try_lock_for(Duration::from_millis(500))
    });
    assert!(
        matches!(result, Err(Error::Timeout)),
        "try_lock_for: {result:?}"
    );
    assert!(
        took < request_timeout / 4,
        "try_lock_for(500ms) in an outage took {took:?} (request timeout {request_timeout:?})"
    );
    let (took, result) = timed(request_timeout * 3, move || {
        fresh.try_lock_for(Duration::from_millis(500))
    });
    assert!(
        matches!(result, Err(Error::Timeout)),
        "try_lock_for without a session: {result:?}"
    );
    assert!(
        took < request_timeout / 4,
        "try_lock_for(500ms) that needs a lease grant in an outage took {took:?} (request \
         timeout {request_timeout:?})"
    );
    let cancel = lock_etcd::CancelToken::new();
    let canceller = cancel.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        canceller.cancel();
    });
    let (took, result) = timed(request_timeout * 3, move || {
        cancelled.lock_until_cancelled(&cancel)
    });
    assert!(matches!(result, Ok(None)), "cancelled lock: {result:?}");
    assert!(
        took < request_timeout / 4,
        "a lock cancelled after 500ms in an outage took {took:?} (request timeout {request_timeout:?})"
    );
    drop(locks);
    drop(proxies);
    // Nobody renews the lease now: etcd expires it and the queue keys with it.
    assert_no_leases(&tc.endpoints, ttl + Duration::from_secs(10));
    assert_eq!(common::queue_keys(&tc.endpoints, &prefix), Vec::new());
    common::delete_prefix(&tc.endpoints, &prefix);
}

/// After the lock was lost in an outage (every member blackholed), `unlock` and a drop return at
/// once instead of waiting out the request timeout for a revoke nobody answers; the leases leave
/// the cluster by themselves one TTL later.
#[test]
#[serial]
fn unlock_after_lost_in_an_outage_returns_at_once() {
    let tc = TestCluster::start();
    let prefix = common::prefix("unlock-outage");
    let proxies: Vec<Proxy> = tc.endpoints.iter().map(|e| Proxy::start(e)).collect();
    let ttl = Duration::from_secs(2);
    let request_timeout = Duration::from_secs(20);
    let locks = connect_through(&proxies, &prefix, ttl, request_timeout);
    let unlocked = locks.named("u").expect("named");
    let dropped = locks.named("d").expect("named");
    let _ = unlocked.lock().expect("lock u");
    let _ = dropped.lock().expect("lock d");
    let lost = [
        unlocked.lost().expect("lost signal"),
        dropped.lost().expect("lost signal"),
    ];
    for proxy in &proxies {
        proxy.set_mode(Mode::Blackhole);
    }
    for signal in &lost {
        assert!(
            signal.wait_timeout(ttl + Duration::from_secs(5)),
            "Lost did not fire in the outage"
        );
    }
    let (took, result) = timed(request_timeout * 2, move || unlocked.unlock());
    assert!(matches!(result, Err(Error::Lost)), "unlock: {result:?}");
    assert!(
        took < request_timeout / 4,
        "unlock after Lost took {took:?} (request timeout {request_timeout:?})"
    );
    let (took, ()) = timed(request_timeout * 2, move || drop(dropped));
    assert!(
        took < request_timeout / 4,
        "dropping a lost lock took {took:?} (request timeout {request_timeout:?})"
    );
    drop(locks);
    drop(proxies);
    // Nobody renews the leases: etcd expires them and their queue keys. The held markers stay
    // until the next acquisition of each lock (documented), so remove them here.
    assert_no_leases(&tc.endpoints, ttl + Duration::from_secs(10));
    assert_eq!(common::queue_keys(&tc.endpoints, &prefix), Vec::new());
    common::delete_prefix(&tc.endpoints, &prefix);
}

/// Runs `op` with every proxy dropping the answers to requests that carry `pattern`, until one
/// answer was dropped: the member applied that request and the client never heard. Then passes
/// all traffic again through every other proxy, so that the request's retry goes to another
/// member, and returns what `op` returned.
fn with_the_answer_lost<T: Send + 'static>(
    proxies: &[Proxy],
    pattern: &str,
    op: impl FnOnce() -> T + Send + 'static,
) -> T {
    with_the_answer_lost_then(proxies, pattern, op, || {})
}

/// [`with_the_answer_lost`], running `meanwhile` once the answer was dropped and before traffic
/// passes again.
fn with_the_answer_lost_then<T: Send + 'static>(
    proxies: &[Proxy],
    pattern: &str,
    op: impl FnOnce() -> T + Send + 'static,
    meanwhile: impl FnOnce(),
) -> T {
    let before: Vec<usize> = proxies.iter().map(Proxy::lost_answers).collect();
    for p in proxies {
        p.lose_answers_to(pattern.as_bytes());
    }
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(op());
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let lost = loop {
        let lost: Vec<bool> = proxies
            .iter()
            .zip(&before)
            .map(|(p, was)| p.lost_answers() > *was)
            .collect();
        if lost.contains(&true) {
            break lost;
        }
        assert!(
            Instant::now() < deadline,
            "no request carrying {pattern:?} was answered within 10 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    meanwhile();
    for (p, lost) in proxies.iter().zip(&lost) {
        if !lost {
            p.set_mode(Mode::Forward);
        }
    }
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the operation did not return within 30 s of its answer being lost");
    worker.join().expect("operation thread");
    for p in proxies {
        p.set_mode(Mode::Forward);
    }
    out
}

/// A table create, an allocation (lowest id and named id) and a free whose first attempt was
/// applied but whose answer was lost are retried on another member, and each recognises its own
/// write: before, the retried allocation took the next id and leaked the first,
/// `allocate_and_retrieve` said `AlreadyAllocated`, `free` said `NotAllocated`, and create said
/// `AlreadyExists` for the table it had made.
#[test]
#[serial]
fn a_write_whose_answer_was_lost_is_recognised_on_retry() {
    use lock_etcd::{LockId, Manager};
    let tc = TestCluster::start();
    let prefix = common::prefix("lost-answer");
    let proxies: Vec<Proxy> = tc.endpoints.iter().map(|e| Proxy::start(e)).collect();
    let locks = Arc::new(connect_through(
        &proxies,
        &prefix,
        Duration::from_secs(10),
        Duration::from_secs(4),
    ));

    let created = {
        let locks = Arc::clone(&locks);
        with_the_answer_lost(&proxies, "/table/t/meta", move || {
            locks.create_table("t", 8)
        })
    };
    let table = Arc::new(created.expect("create whose answer was lost"));

    let got = {
        let table = Arc::clone(&table);
        with_the_answer_lost(&proxies, "/alloc/0000000000", move || {
            table.allocate().map(|l| l.id())
        })
    };
    assert_eq!(got.expect("allocate whose answer was lost"), LockId(0));

    let named = {
        let table = Arc::clone(&table);
        with_the_answer_lost(&proxies, "/alloc/0000000003", move || {
            table.allocate_and_retrieve(LockId(3)).map(|l| l.id())
        })
    };
    assert_eq!(
        named.expect("allocate_and_retrieve whose answer was lost"),
        LockId(3)
    );
    assert_eq!(
        table.available().expect("available"),
        Some(6),
        "an id leaked"
    );

    let lock = table.retrieve(LockId(3)).expect("retrieve");
    let freed = with_the_answer_lost(&proxies, "/alloc/0000000003", move || lock.free());
    freed.expect("free whose answer was lost");
    assert_eq!(table.available().expect("available"), Some(7));
    locks.remove_table("t").expect("remove the table");
    common::delete_prefix(&tc.endpoints, &prefix);
}

/// The member whose answer was lost is not made the preferred endpoint again by the leader
/// search that the fail-over starts, while it may lose the next answer too: before, the search
/// preferred the leader again within milliseconds, the operation's next request waited out
/// another attempt there, and the test above failed once in a handful of full runs ("no answer
/// within 1s").
#[test]
#[serial]
fn a_member_that_lost_an_answer_is_not_preferred_again_at_once() {
    use lock_etcd::{LockId, Manager};
    let tc = TestCluster::start();
    let prefix = common::prefix("not-again");
    let proxies: Vec<Proxy> = tc.endpoints.iter().map(|e| Proxy::start(e)).collect();
    let locks = connect_through(
        &proxies,
        &prefix,
        Duration::from_secs(10),
        Duration::from_secs(4),
    );
    let table = Arc::new(locks.create_table("t", 8).expect("create the table"));

    let before: Vec<usize> = proxies.iter().map(Proxy::lost_answers).collect();
    let got = {
        let table = Arc::clone(&table);
        with_the_answer_lost(&proxies, "/alloc/0000000000", move || {
            table.allocate_and_retrieve(LockId(0)).map(|l| l.id())
        })
    };
    assert_eq!(got.expect("allocate whose answer was lost"), LockId(0));
    let lossy = proxies
        .iter()
        .zip(&before)
        .position(|(p, was)| p.lost_answers() > *was)
        .expect("a proxy lost the answer");

    // The same member loses answers again; the leader search that the fail-over started has
    // had time to finish (a status request to each member, milliseconds).
    proxies[lossy].lose_answers_to(b"/alloc/0000000001");
    std::thread::sleep(Duration::from_millis(500));
    let lost = proxies[lossy].lost_answers();
    let next = table.allocate_and_retrieve(LockId(1)).map(|l| l.id());
    proxies[lossy].set_mode(Mode::Forward);
    assert_eq!(next.expect("the next allocation"), LockId(1));
    assert_eq!(
        proxies[lossy].lost_answers(),
        lost,
        "the next request went to the member that had just lost an answer"
    );
    locks.remove_table("t").expect("remove the table");
    common::delete_prefix(&tc.endpoints, &prefix);
}

/// A create whose first attempt never reached the cluster, retried after another process created
/// a table of the same name and capacity, is that other process's create's `AlreadyExists`, and
/// `open_or_create` says it did not create the table: before, a retried create took any table of
/// the capacity it asked for as its own, so both callers believed they had made it.
#[test]
#[serial]
fn a_retried_create_does_not_take_another_processs_table() {
    let tc = TestCluster::start();
    let prefix = common::prefix("retried-create");
    let proxies: Vec<Proxy> = tc.endpoints.iter().map(|e| Proxy::start(e)).collect();
    let locks = Arc::new(connect_through(
        &proxies,
        &prefix,
        Duration::from_secs(10),
        Duration::from_secs(1),
    ));
    let other = tc.connect(&prefix, Duration::from_secs(10));

    for (store, or_create) in [("t", false), ("u", true)] {
        for p in &proxies {
            p.drop_requests_to(format!("/table/{store}/meta").as_bytes());
        }
        let (tx, rx) = mpsc::channel();
        let worker = {
            let locks = Arc::clone(&locks);
            std::thread::spawn(move || {
                let made = if or_create {
                    locks.open_or_create_table(store, 8).map(|(_, made)| made)
                } else {
                    locks.create_table(store, 8).map(|_| true)
                };
                let _ = tx.send(made);
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxies.iter().all(|p| p.dropped_requests() == 0) {
            assert!(
                Instant::now() < deadline,
                "no create of {store:?} was sent within 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        other
            .create_table(store, 8)
            .expect("the other process's create");
        for p in &proxies {
            p.set_mode(Mode::Forward);
        }
        let made = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the retried create did not return within 30 s");
        worker.join().expect("create thread");
        if or_create {
            assert!(
                !made.expect("open_or_create"),
                "open_or_create said it made {store:?}, which the other process made"
            );
        } else {
            assert!(
                matches!(made, Err(Error::AlreadyExists { .. })),
                "create of {store:?}, made by the other process: {made:?}"
            );
        }
        other.remove_table(store).expect("remove the table");
    }
    common::delete_prefix(&tc.endpoints, &prefix);
}

/// A pid is shown only to readers of this host in the pid namespace it was recorded in: a process
/// in a container of its own is pid 1 there, and pid 1 here is init (`lockctl status` named it as
/// the holder). A holder and a waiter in another pid namespace are listed without a pid, by
/// `holder()` and by a table's snapshot; one of this namespace keeps its pid.
#[test]
#[serial]
fn a_holder_in_another_pid_namespace_is_listed_without_a_pid() -> Result<(), Failed> {
    const ROLE: &str = "pid-namespace-holder";
    if role().as_deref() == Some(ROLE) {
        let locks = child_locks();
        let table = locks.open_table("t").expect("open table");
        let lock = table.retrieve(LockId(1)).expect("retrieve");
        tell(&format!("LOCKED {:?}", lock.lock()));
        let _ = common::read_stdin_line();
        tell(&format!("UNLOCKED {:?}", lock.unlock()));
        return Ok(());
    }
    let tc = TestCluster::get();
    let prefix = common::prefix("pid-namespace");
    let locks = tc.connect(&prefix, Duration::from_secs(2));
    let table = locks.create_table("t", 4)?;
    let lock = table.retrieve(LockId(1))?;
    let me = std::process::id();
    // Ours, and ours waiting behind the other namespace's hold.
    assert_eq!(lock.lock()?, Acquired::Clean);
    assert_eq!(lock.holder()?.and_then(|h| h.pid), Some(me), "our own hold");
    lock.unlock()?;
    let mut child = common::spawn_child_in_pid_namespace(
        "a_holder_in_another_pid_namespace_is_listed_without_a_pid",
        ROLE,
        &[
            ("ETCD_EPS", tc.endpoints.join(",")),
            ("ETCD_PREFIX", prefix.clone()),
        ],
    );
    assert_eq!(
        child.expect("LOCKED", Duration::from_secs(20))?,
        "Ok(Clean)"
    );
    let holder = lock.holder()?.expect("a holder");
    assert!(
        holder.pid.is_none() && holder.owner.is_some() && !holder.dead,
        "a holder in another pid namespace, by holder(): {holder:?}"
    );
    let waiter = {
        let table = locks.open_table("t")?;
        let lock = table.retrieve(LockId(1))?;
        std::thread::spawn(move || lock.try_lock_for(Duration::from_secs(20)).map(drop))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let state = loop {
        let snapshot = table.snapshot()?;
        let state = snapshot.into_iter().find(|s| s.id == LockId(1));
        if state.as_ref().is_some_and(|s| !s.waiters.is_empty()) || Instant::now() > deadline {
            break state.expect("lock 1 in the snapshot");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let holder = state.holder.as_ref().expect("a holder in the snapshot");
    assert!(
        holder.pid.is_none() && holder.owner.is_some(),
        "a holder in another pid namespace, in a snapshot: {holder:?}"
    );
    assert!(
        state.waiters.len() == 1 && state.waiters[0].pid == Some(me),
        "our waiter, in a snapshot: {:?}",
        state.waiters
    );
    child.send("go")?;
    assert_eq!(child.expect("UNLOCKED", Duration::from_secs(20))?, "Ok(())");
    assert!(child.wait(Duration::from_secs(10))?.success());
    waiter.join().expect("waiter thread")?;
    drop((lock, table));
    locks.remove_table("t")?;
    drop(locks);
    assert_nothing_left(&tc.endpoints, &prefix, Duration::from_secs(10));
    Ok(())
}

/// A connection regrants its lost default session by itself only while a table is open on it
/// (`keep_listed`): with its last table dropped, a revoked lease is not replaced, so an idle
/// connection holds no lease it does not need; with a table open, it is.
#[test]
#[serial]
fn a_lost_session_is_regranted_only_while_a_table_is_open() -> Result<(), Failed> {
    // Its own cluster: every lease on it is this test's.
    let tc = TestCluster::start();
    let eps = tc.endpoints.clone();
    let prefix = common::prefix("regrant");
    let ttl = Duration::from_secs(2);
    let locks = tc.connect(&prefix, ttl);
    let only_lease = || {
        let leases = common::leases(&eps);
        assert_eq!(leases.len(), 1, "leases: {leases:?}");
        leases[0]
    };
    let revoke = |lease: i64| common::raw(&eps, async move |c| c.lease_revoke(lease).await);
    let table = locks.create_table("t", 4)?;
    let first = only_lease();
    revoke(first);
    let deadline = Instant::now() + ttl * 4;
    while common::leases(&eps).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = only_lease();
    assert_ne!(second, first, "a table open: the session is granted again");
    drop(table);
    revoke(second);
    // Its keepalive notices within a third of the TTL; give a regrant three TTLs to show.
    std::thread::sleep(ttl * 3);
    let left = common::leases(&eps);
    assert!(
        left.is_empty(),
        "no table open, yet the lost session was granted again: {left:?}"
    );
    locks.remove_table("t")?;
    drop(locks);
    assert_nothing_left(&eps, &prefix, Duration::from_secs(10));
    Ok(())
}
