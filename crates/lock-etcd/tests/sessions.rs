//! Sessions, the async API and cancellation on a real 3-member cluster shared by every trial:
//! losing a session loses every lock held through it, sessions have their own TTLs, a blocking
//! `lock` can be cancelled from another thread, `info` reads in one Txn with ms expiry, and the
//! async `lock` future can be dropped at any point without leaving a key or a lease behind, and a
//! session uses a released key name again.
//!
//! Set `LOCKYARD_ETCD_ENDPOINTS` to run against a cluster that is already up; otherwise one is
//! started and stopped here (and one more, of its own, for the raft proposal count).

#[macro_use]
mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{TestCluster, assert_no_keys, leases, prefix, queue_keys, raw};
use libtest_mimic::Failed;
use lock_etcd::{
    Acquired, CancelToken, EtcdClient, EtcdLocks, EtcdOptions, Fenced, Inspect, Leased, LockData,
    Locker, Session,
};

const TTL: Duration = Duration::from_secs(3);
const BOUND: Duration = Duration::from_secs(15);

type Test = common::SuiteTest;

fn options(prefix: &str) -> EtcdOptions {
    EtcdOptions::new()
        .prefix(prefix)
        .ttl(TTL)
        .request_timeout(Duration::from_secs(3))
}

fn connect(endpoints: &[String], test: &str) -> (EtcdLocks, String) {
    let prefix = prefix(test);
    let locks = EtcdLocks::connect(endpoints, options(&prefix)).expect("connect");
    (locks, prefix)
}

/// Whether `lease` is still on the cluster.
fn lease_exists(eps: &[String], lease: i64) -> bool {
    leases(eps).contains(&lease)
}

/// Waits until none of `ours` is on the cluster (other trials' leases may be).
fn assert_leases_gone(eps: &[String], ours: &[i64]) -> Result<(), Failed> {
    let deadline = Instant::now() + BOUND;
    loop {
        let left: Vec<i64> = ours
            .iter()
            .copied()
            .filter(|l| lease_exists(eps, *l))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        check!(Instant::now() < deadline, "leases left behind: {left:x?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_ms(t: SystemTime) -> bool {
    t.duration_since(UNIX_EPOCH)
        .is_ok_and(|d| d.subsec_nanos() % 1_000_000 == 0)
}

/// Losing a session's lease loses every lock held through it, and only those: both locks of the
/// session fire their lost signals and refuse their token, a lock on another session keeps
/// going, and the names can be taken again (with `OwnerDied`, since nobody released them).
fn session_loss_loses_every_lock(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "session-loss");
    let session = locks.session(TTL)?;
    let a = session.named("a")?;
    let b = session.named("b")?;
    let _ = a.lock()?;
    let _ = b.lock()?;
    check!(
        a.lease_id() == Some(session.lease_id()) && b.lease_id() == Some(session.lease_id()),
        "the session's locks do not share its lease"
    );
    let other = locks.named("c")?;
    let _ = other.lock()?;
    check!(
        other.lease_id() != Some(session.lease_id()),
        "the default session is the explicit one"
    );
    let (lost_a, lost_b, lost_session) = (a.lost()?, b.lost()?, session.lost());
    let lease = session.lease_id();
    raw(eps, async move |c| c.lease_revoke(lease).await.map(drop));
    for (name, lost) in [("a", &lost_a), ("b", &lost_b), ("session", &lost_session)] {
        check!(lost.wait_timeout(BOUND), "{name} not lost after the revoke");
    }
    check!(session.is_lost(), "the session does not say lost");
    check!(
        matches!(a.fencing_token(), Err(lock_etcd::Error::Lost)),
        "a's token after the loss"
    );
    check!(
        matches!(b.unlock(), Err(lock_etcd::Error::Lost)),
        "b's unlock after the loss"
    );
    check!(
        matches!(session.named("d")?.try_lock(), Err(lock_etcd::Error::Lost)),
        "a lost session took a new lock"
    );
    check!(
        !other.lost()?.is_lost() && other.fencing_token().is_ok(),
        "a lock of another session was lost too"
    );
    let again = locks.named("a")?;
    check!(
        again.try_lock_for(BOUND)? == Acquired::OwnerDied,
        "the lost lock was not free, or not reported as a holder's death"
    );
    again.unlock()?;
    other.unlock()?;
    drop((a, b));
    drop(session);
    let again = locks.named("b")?;
    let _ = again.try_lock_for(BOUND)?;
    again.unlock()?;
    assert_no_keys(eps, &prefix, BOUND);
    Ok(())
}

/// Sessions of one connection have their own TTLs: etcd grants each its own, the locks report
/// it, and each is kept alive past twice its TTL.
fn sessions_have_their_own_ttls(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "ttls");
    let short = locks.session(Duration::from_secs(2))?;
    let long = locks.session(Duration::from_secs(5))?;
    let (s, l) = (short.named("s")?, long.named("l")?);
    let _ = s.lock()?;
    let _ = l.lock()?;
    let granted = |lease: i64| {
        raw(eps, async move |c| {
            c.lease_time_to_live(lease, None)
                .await
                .map(|r| r.granted_ttl())
        })
    };
    check!(
        granted(short.lease_id()) == 2 && granted(long.lease_id()) == 5,
        "granted TTLs {} and {}",
        granted(short.lease_id()),
        granted(long.lease_id())
    );
    check!(
        s.ttl() == Duration::from_secs(2) && l.ttl() == Duration::from_secs(5),
        "locks report {:?} and {:?}",
        s.ttl(),
        l.ttl()
    );
    check!(
        s.time_left()?.is_some_and(|t| t <= Duration::from_secs(2)),
        "time left {:?}",
        s.time_left()?
    );
    std::thread::sleep(Duration::from_secs(5));
    check!(
        !s.lost()?.is_lost() && !l.lost()?.is_lost(),
        "a session was not kept alive"
    );
    s.unlock()?;
    l.unlock()?;
    let ours = [short.lease_id(), long.lease_id()];
    drop((s, l));
    short.close()?;
    drop(long);
    assert_leases_gone(eps, &ours)?;
    assert_no_keys(eps, &prefix, BOUND);
    Ok(())
}

/// A blocking `lock` is cancelled from another thread: it returns `None` promptly, and its key
/// is gone by then; a token cancelled beforehand gives up without writing anything.
fn blocking_lock_cancelled_from_another_thread(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "cancel");
    let holder = locks.named("x")?;
    let _ = holder.lock()?;
    let waiter = Arc::new(locks.named("x")?);
    let cancel = CancelToken::new();
    let result = {
        let (waiter, cancel) = (Arc::clone(&waiter), cancel.clone());
        std::thread::spawn(move || waiter.lock_until_cancelled(&cancel))
    };
    let deadline = Instant::now() + BOUND;
    while queue_keys(eps, &prefix).len() < 2 {
        check!(Instant::now() < deadline, "the waiter never queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    cancel.cancel();
    let started = Instant::now();
    let outcome = result.join().map_err(|_| "waiter panicked")?;
    check!(
        matches!(outcome, Ok(None)),
        "cancelled lock said {outcome:?}"
    );
    check!(
        started.elapsed() < BOUND,
        "the cancel took {:?}",
        started.elapsed()
    );
    let left = queue_keys(eps, &prefix);
    check!(
        left.len() == 1 && holder.own_key().is_some_and(|k| k == left[0].0),
        "keys after the cancel: {left:?}"
    );
    check!(
        waiter.fencing_token().is_err(),
        "a cancelled waiter holds the lock"
    );
    // Already cancelled: nothing is written at all.
    check!(
        waiter.lock_until_cancelled(&cancel)?.is_none(),
        "a cancelled token acquired"
    );
    holder.unlock()?;
    // Not cancelled: it acquires.
    let fresh = CancelToken::new();
    check!(
        waiter.lock_until_cancelled(&fresh)? == Some(Acquired::Clean),
        "an uncancelled lock_until_cancelled did not acquire"
    );
    waiter.unlock()?;
    assert_no_keys(eps, &prefix, BOUND);
    Ok(())
}

/// `info` reports the holder's own acquisition (pid, owner, claim time, data, token) with
/// `expires` in whole milliseconds, within one TTL of now; `Inspect::holder` gives the same
/// millisecond expiry for a holder of this process.
fn info_has_millisecond_expiry(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "info");
    let lock = locks.named("i")?;
    let before = SystemTime::now();
    let _ = lock.lock()?;
    lock.write_data(b"payload")?;
    let info = lock.info()?;
    let now = SystemTime::now();
    check!(info.token == lock.fencing_token()?, "token {}", info.token);
    check!(info.data == b"payload", "data {:?}", info.data);
    check!(
        info.holder.pid == Some(std::process::id()),
        "pid {:?}",
        info.holder.pid
    );
    check!(
        info.holder.owner.as_deref() == Some(lock.owner()),
        "owner {:?}",
        info.holder.owner
    );
    let since = info.holder.since.ok_or("no since")?;
    check!(
        since + Duration::from_millis(1) >= before && since <= now,
        "since {since:?} not in [{before:?}, {now:?}]"
    );
    let expires = info.holder.expires.ok_or("no expires")?;
    check!(
        is_ms(expires),
        "expires {expires:?} is not whole milliseconds"
    );
    check!(
        expires > now && expires <= now + lock.ttl() + Duration::from_millis(1),
        "expires {expires:?} not within a TTL of {now:?}"
    );
    let other = locks.named("i")?;
    let holder = other.holder()?.ok_or("no holder")?;
    let seen = holder.expires.ok_or("holder without expires")?;
    check!(
        is_ms(seen),
        "holder expires {seen:?} is not whole milliseconds"
    );
    lock.unlock()?;
    check!(
        matches!(lock.info(), Err(lock_etcd::Error::NotHeld(_))),
        "info after unlock"
    );
    assert_no_keys(eps, &prefix, BOUND);
    Ok(())
}

/// A runtime for one async trial (the API runs on the caller's runtime, none of its own).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn client(eps: &[String], prefix: &str) -> Result<EtcdClient, Failed> {
    Ok(EtcdClient::connect(eps, options(prefix)).await?)
}

/// What an async trial runs with: a client and two sessions (TTL [`TTL`]) on a prefix of its own.
struct Two {
    client: EtcdClient,
    one: Session,
    two: Session,
    eps: Vec<String>,
    prefix: String,
}

/// Runs `body` on a runtime of its own with a [`Two`] for the test named `test`; then closes
/// both sessions and those `body` returns, and checks that none of their keys or leases is left.
fn with_two_sessions(
    endpoints: &[String],
    test: &str,
    body: impl AsyncFnOnce(&Two) -> Result<Vec<Session>, Failed>,
) -> Result<(), Failed> {
    let prefix = prefix(test);
    let eps = endpoints.to_vec();
    let p = prefix.clone();
    let ours = runtime().block_on(async move {
        let client = client(&eps, &p).await?;
        let one = client.session(TTL).await?;
        let two = client.session(TTL).await?;
        let trial = Two {
            client,
            one,
            two,
            eps,
            prefix: p,
        };
        let more = body(&trial).await?;
        let Two { one, two, .. } = trial;
        let sessions: Vec<Session> = [one, two].into_iter().chain(more).collect();
        let ours: Vec<i64> = sessions.iter().map(Session::lease_id).collect();
        for session in sessions {
            session.close().await?;
        }
        Ok::<_, Failed>(ours)
    })?;
    assert_no_keys(endpoints, &prefix, BOUND);
    assert_leases_gone(endpoints, &ours)
}

/// The async API on the caller's runtime: lock, token, exclusion, a guard's drop releases, and
/// the lost signal can be awaited (revoking the session's lease resolves it).
fn async_lock_guard_and_lost(endpoints: &[String]) -> Result<(), Failed> {
    with_two_sessions(endpoints, "async", async |t| {
        let (client, one, two) = (&t.client, &t.one, &t.two);
        let guard = one.lock("a").await?;
        let token = guard.fencing_token()?;
        check!(guard.acquired() == Acquired::Clean, "first acquisition");
        check!(two.try_lock("a").await?.is_none(), "two holders");
        let info = guard.info().await?;
        check!(info.token == token, "info token");
        drop(guard);
        let second = two.lock_timeout("a", BOUND).await?;
        check!(second.fencing_token()? > token, "token did not grow");
        let lost = second.lost();
        let lease = two.lease_id();
        let eps2 = t.eps.clone();
        tokio::task::spawn_blocking(move || {
            raw(&eps2, async move |c| c.lease_revoke(lease).await.map(drop))
        })
        .await?;
        check!(
            tokio::time::timeout(BOUND, lost).await.is_ok(),
            "the awaited lost signal did not resolve"
        );
        check!(second.is_lost(), "the guard does not say lost");
        check!(
            tokio::time::timeout(BOUND, two.lost()).await.is_ok() && two.is_lost(),
            "the session did not learn that its lease is gone"
        );
        check!(
            matches!(second.unlock().await, Err(lock_etcd::Error::Lost)),
            "unlock of a lost guard"
        );
        // Nobody released it: the next holder is told its holder died.
        let three = client.session(TTL).await?;
        let next = three.lock_timeout("a", BOUND).await?;
        check!(
            next.acquired() == Acquired::OwnerDied,
            "after a lost session: {:?}",
            next.acquired()
        );
        next.unlock().await?;
        Ok(vec![three])
    })
}

/// Polls `fut` at most `polls` times, sleeping `pause` between polls so its I/O can progress;
/// returns its output if it finished, and drops it otherwise.
async fn poll_then_drop<F: Future>(fut: F, polls: usize, pause: Duration) -> Option<F::Output> {
    let mut fut = Box::pin(fut);
    for _ in 0..polls {
        let ready = std::future::poll_fn(|cx: &mut Context<'_>| {
            Poll::Ready(Pin::as_mut(&mut fut).poll(cx))
        })
        .await;
        if let Poll::Ready(output) = ready {
            return Some(output);
        }
        tokio::time::sleep(pause).await;
    }
    None
}

/// `Session::lock` is cancel-safe: its future, dropped after 0, 1, 2, ... polls (uncontended,
/// so it may be cut inside the acquisition Txn, and contended, so it may be cut while waiting
/// or claiming), leaves no key, marker or lease once the session is closed; and a cut that
/// happened to finish holds the lock for real.
fn async_lock_is_cancel_safe(endpoints: &[String]) -> Result<(), Failed> {
    with_two_sessions(endpoints, "cancel-safe", async |t| {
        let (session, holder_session) = (&t.one, &t.two);
        let (eps, p) = (&t.eps, &t.prefix);
        let mut finished = 0;
        let mut dropped = 0;
        for contended in [false, true] {
            let holder = if contended {
                Some(holder_session.lock("c").await?)
            } else {
                None
            };
            for polls in 0..12 {
                for pause_ms in [0u64, 1, 3] {
                    let attempt = session.lock("c");
                    let pause = Duration::from_millis(pause_ms);
                    match poll_then_drop(attempt, polls, pause).await {
                        Some(Ok(guard)) => {
                            check!(!contended, "acquired a lock someone holds");
                            finished += 1;
                            guard.unlock().await?;
                        }
                        Some(Err(e)) => return Err(format!("lock failed: {e}").into()),
                        None => dropped += 1,
                    }
                    // What the dropped attempt wrote goes (by a clean-up task): soon no key of
                    // the lock but the holder's is left, and the lock is free and clean.
                    let want = usize::from(contended);
                    let deadline = Instant::now() + BOUND;
                    loop {
                        let (eps2, p2) = (eps.clone(), p.clone());
                        let keys =
                            tokio::task::spawn_blocking(move || common::keys(&eps2, &p2)).await?;
                        let queued = keys.iter().filter(|(_, lease)| *lease != 0).count();
                        let markers = keys.len() - queued;
                        if queued == want && markers == want {
                            break;
                        }
                        check!(
                            Instant::now() < deadline,
                            "after a drop at poll {polls}: {keys:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    if !contended {
                        let probe = holder_session.lock_timeout("c", BOUND).await?;
                        check!(
                            probe.acquired() == Acquired::Clean,
                            "a dropped attempt left a held marker behind"
                        );
                        probe.unlock().await?;
                    }
                }
            }
            if let Some(holder) = holder {
                holder.unlock().await?;
            }
        }
        check!(dropped > 0, "no attempt was ever dropped");
        check!(finished > 0, "no uncontended attempt ever finished");
        Ok(Vec::new())
    })
}

/// Dropping a pending `Session::lock` inside `tokio::time::timeout` (the usual way to bound
/// it) while another session holds the lock removes the waiter's key: the holder's release
/// then leaves the lock free, not handed to a ghost.
fn async_timeout_leaves_no_waiter(endpoints: &[String]) -> Result<(), Failed> {
    with_two_sessions(endpoints, "async-timeout", async |t| {
        let (holder, waiter) = (&t.one, &t.two);
        let guard = holder.lock("t").await?;
        let attempt = tokio::time::timeout(Duration::from_millis(300), waiter.lock("t")).await;
        check!(attempt.is_err(), "the waiter acquired a held lock");
        // The dropped waiter's key goes: only the holder's is left.
        queued(&t.eps, &t.prefix, "t", 1).await?;
        guard.unlock().await?;
        Ok(Vec::new())
    })
}

/// An attempt cut short just as it took a free lock cleans up as a release would: the next
/// acquirer, starting at once on another session, is never told its holder died. The cut falls
/// across the acquisition's round trip (timeouts swept from nothing to twice an uncontended
/// lock+unlock), so some attempts are dropped after etcd applied their Txn, while the clean-up
/// and the next acquisition race.
fn a_dropped_attempt_does_not_look_like_a_death(endpoints: &[String]) -> Result<(), Failed> {
    const STEPS: u32 = 40;
    const ROUNDS: u32 = 8;
    with_two_sessions(endpoints, "dropped-death", async |t| {
        let (one, two) = (&t.one, &t.two);
        let started = Instant::now();
        for _ in 0..10 {
            one.lock("d").await?.unlock().await?;
        }
        let pair = started.elapsed() / 10;
        let (mut cut, mut died) = (0, 0);
        for step in 0..STEPS * ROUNDS {
            let after = pair * 2 * (step % STEPS) / STEPS;
            match tokio::time::timeout(after, one.lock("d")).await {
                Ok(guard) => guard?.unlock().await?,
                Err(_) => cut += 1,
            }
            let next = two.lock_timeout("d", BOUND).await?;
            if next.acquired() == Acquired::OwnerDied {
                died += 1;
            }
            next.unlock().await?;
        }
        check!(cut > 0, "no attempt was cut short");
        check!(
            died == 0,
            "{died} of {cut} cut attempts looked like a dead holder to the next acquirer"
        );
        Ok(Vec::new())
    })
}

/// Waits until the queue of lock `name` under `prefix` has `n` keys; returns them.
async fn queued(eps: &[String], prefix: &str, name: &str, n: usize) -> Result<Vec<String>, Failed> {
    let queue = format!("{prefix}/lock/{name}/");
    let deadline = Instant::now() + BOUND;
    loop {
        let (eps, p) = (eps.to_vec(), prefix.to_owned());
        let keys: Vec<String> = tokio::task::spawn_blocking(move || queue_keys(&eps, &p))
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with(&queue))
            .collect();
        if keys.len() == n {
            return Ok(keys);
        }
        check!(
            Instant::now() < deadline,
            "queue {queue}: {keys:?}, want {n} keys"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A session's successive acquisitions of one lock use one key name, with a fencing token that
/// still grows: etcd keeps every name a queue ever had in its index until the cluster compacts,
/// and every acquisition reads the queue, so a new name each time made each acquisition slower
/// than the last. Two acquisitions that exist at once get two names. And a session that releases
/// a lock and at once queues for it again, under the same name, behind a waiter of another
/// session hands the lock over to that waiter (which must not take the name's new incarnation,
/// behind it, for the predecessor it waits for), ten times over.
fn a_session_reuses_a_released_name(endpoints: &[String]) -> Result<(), Failed> {
    with_two_sessions(endpoints, "reuse", async |t| {
        let (one, two, eps, p) = (&t.one, &t.two, &t.eps, &t.prefix);
        let first = one.lock("a").await?;
        let (name, token) = (first.key().to_owned(), first.fencing_token()?);
        first.unlock().await?;
        let again = one.lock("a").await?;
        check!(
            again.key() == name,
            "not reused: {name}, then {}",
            again.key()
        );
        check!(again.fencing_token()? > token, "the token did not grow");
        let second = {
            let one = one.clone();
            tokio::spawn(async move { one.lock_timeout("a", BOUND).await })
        };
        let keys = queued(eps, p, "a", 2).await?;
        check!(
            keys[0] != keys[1],
            "two acquisitions share a name: {keys:?}"
        );
        again.unlock().await?;
        let second = second.await??;
        check!(second.key() != name, "a held name was handed out again");
        second.unlock().await?;
        for round in 0..10 {
            let held = one.lock_timeout("b", BOUND).await?;
            let name = held.key().to_owned();
            let waiter = {
                let two = two.clone();
                tokio::spawn(async move { two.lock_timeout("b", BOUND).await })
            };
            queued(eps, p, "b", 2).await?;
            held.unlock().await?;
            let back = {
                let one = one.clone();
                tokio::spawn(async move { one.lock_timeout("b", BOUND).await })
            };
            let taken = waiter.await?;
            check!(
                taken.is_ok(),
                "round {round}: the waiter did not get the lock: {taken:?}"
            );
            taken?.unlock().await?;
            let back = back.await??;
            check!(
                back.key() == name,
                "round {round}: {name}, then {}",
                back.key()
            );
            back.unlock().await?;
        }
        Ok(Vec::new())
    })
}

/// The raft proposals an uncontended lock+unlock costs on a session: exactly two (one Txn each),
/// counted from `etcd_server_proposals_committed_total` on a cluster of this trial's own.
fn uncontended_pair_is_two_raft_proposals(_eps: &[String]) -> Result<(), Failed> {
    let own = TestCluster::start();
    let prefix = prefix("proposals");
    let locks = EtcdLocks::connect(&own.endpoints, options(&prefix))?;
    let lock = locks.named("p")?;
    // The session's lease is granted by the first acquisition; count from after it.
    let _ = lock.lock()?;
    lock.unlock()?;
    const PAIRS: u64 = 20;
    let before = common::proposals_committed(&own.endpoints).ok_or("no metrics")?;
    for _ in 0..PAIRS {
        let _ = lock.lock()?;
        lock.unlock()?;
    }
    let after = common::proposals_committed(&own.endpoints).ok_or("no metrics")?;
    check!(
        after - before == 2 * PAIRS,
        "{} proposals for {PAIRS} lock+unlock pairs, want {}",
        after - before,
        2 * PAIRS
    );
    drop(lock);
    drop(locks);
    assert_no_keys(&own.endpoints, &prefix, BOUND);
    common::assert_no_leases(&own.endpoints, BOUND);
    Ok(())
}

fn main() -> std::process::ExitCode {
    let tests: &[(&str, Test)] = &[
        (
            "session_loss_loses_every_lock",
            session_loss_loses_every_lock,
        ),
        ("sessions_have_their_own_ttls", sessions_have_their_own_ttls),
        (
            "blocking_lock_cancelled_from_another_thread",
            blocking_lock_cancelled_from_another_thread,
        ),
        ("info_has_millisecond_expiry", info_has_millisecond_expiry),
        ("async_lock_guard_and_lost", async_lock_guard_and_lost),
        ("async_lock_is_cancel_safe", async_lock_is_cancel_safe),
        (
            "async_timeout_leaves_no_waiter",
            async_timeout_leaves_no_waiter,
        ),
        (
            "a_dropped_attempt_does_not_look_like_a_death",
            a_dropped_attempt_does_not_look_like_a_death,
        ),
        (
            "uncontended_pair_is_two_raft_proposals",
            uncontended_pair_is_two_raft_proposals,
        ),
        (
            "a_session_reuses_a_released_name",
            a_session_reuses_a_released_name,
        ),
    ];
    common::run_suite("sessions", tests, Duration::from_secs(10))
}
