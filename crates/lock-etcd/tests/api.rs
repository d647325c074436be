//! Behaviour of named locks on a real 3-member cluster shared by every trial of this binary.
//!
//! Set `LOCKYARD_ETCD_ENDPOINTS` to run against a cluster that is already up
//! (`cargo xtask etcd up`); otherwise one is started and stopped here.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_no_keys, keys, prefix, queue_keys, raw};
use libtest_mimic::Failed;
use lock_etcd::{
    Acquired, Error, EtcdLocks, EtcdOptions, Fenced, Inspect, Leased, LockData, LockId, Locker,
    MIN_TTL, Manager,
};

/// Long enough for keepalives on a loaded CI machine, short enough for tests that wait on it.
const TTL: Duration = Duration::from_secs(3);

type Test = common::SuiteTest;

fn connect(endpoints: &[String], test: &str) -> (EtcdLocks, String) {
    let prefix = prefix(test);
    let locks = EtcdLocks::connect(
        endpoints,
        EtcdOptions::new()
            .prefix(&prefix)
            .ttl(TTL)
            .request_timeout(Duration::from_secs(3)),
    )
    .expect("connect");
    (locks, prefix)
}

/// Lock, token, unlock; a second unlock is NotHeld.
fn lifecycle(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "lifecycle");
    let lock = locks.named("a")?;
    check!(
        matches!(lock.unlock(), Err(Error::NotHeld(_))),
        "unlock of a free lock"
    );
    check!(
        matches!(lock.fencing_token(), Err(Error::NotHeld(_))),
        "token while free"
    );
    let _ = lock.lock()?;
    let t1 = lock.fencing_token()?;
    check!(t1 > 0, "token {t1}");
    check!(
        lock.own_key().is_some_and(|k| k.starts_with(&prefix)),
        "own key under prefix"
    );
    lock.unlock()?;
    check!(
        matches!(lock.unlock(), Err(Error::NotHeld(_))),
        "double unlock"
    );
    let _ = lock.lock()?;
    let t2 = lock.fencing_token()?;
    check!(t2 > t1, "tokens {t1} then {t2}");
    lock.unlock()?;
    assert_no_keys(eps, &prefix, Duration::from_secs(5));
    Ok(())
}

/// A second handle (another owner) cannot take a held lock; a timed-out attempt leaves no key.
fn exclusion_and_timeout(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "exclusion");
    let a = locks.named("x")?;
    let b = locks.named("x")?;
    let _ = a.lock()?;
    let ta = a.fencing_token()?;
    check!(
        b.try_lock()?.is_none(),
        "try_lock while held by another handle"
    );
    let start = Instant::now();
    check!(
        matches!(
            b.try_lock_for(Duration::from_millis(400)),
            Err(Error::Timeout)
        ),
        "timeout"
    );
    let waited = start.elapsed();
    check!(
        waited >= Duration::from_millis(400),
        "returned early after {waited:?}"
    );
    check!(
        waited < Duration::from_secs(5),
        "returned late after {waited:?}"
    );
    let left = queue_keys(eps, &prefix);
    check!(
        left.len() == 1,
        "a timed-out acquisition left its key: {left:?}"
    );
    check!(
        a.try_lock()?.is_none(),
        "try_lock of a lock this handle holds is None"
    );
    a.unlock()?;
    check!(
        b.try_lock()? == Some(Acquired::Clean),
        "free lock taken cleanly"
    );
    check!(b.fencing_token()? > ta, "token grows across owners");
    b.unlock()?;
    assert_no_keys(eps, &prefix, Duration::from_secs(5));
    Ok(())
}

/// Waiters acquire in the order they asked.
fn fifo(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "fifo");
    let holder = locks.named("q")?;
    let _ = holder.lock()?;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for i in 0..3 {
        let lock = locks.named("q")?;
        let order = Arc::clone(&order);
        threads.push(std::thread::spawn(move || -> Result<(), Error> {
            let _ = lock.try_lock_for(Duration::from_secs(20))?;
            order.lock().expect("order").push(i);
            std::thread::sleep(Duration::from_millis(50));
            lock.unlock()
        }));
        // Let each waiter enqueue before the next one.
        let deadline = Instant::now() + Duration::from_secs(5);
        while queue_keys(eps, &prefix).len() < i + 2 {
            check!(Instant::now() < deadline, "waiter {i} did not enqueue");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    holder.unlock()?;
    for t in threads {
        t.join().map_err(|_| "waiter panicked")??;
    }
    let order = order.lock().expect("order").clone();
    check!(order == vec![0, 1, 2], "acquisition order {order:?}");
    assert_no_keys(eps, &prefix, Duration::from_secs(5));
    Ok(())
}

/// Mutual exclusion between threads with their own handles: a non-atomic counter stays exact.
fn counter(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "counter");
    let value = Arc::new(AtomicU32::new(0));
    let mut threads = Vec::new();
    for _ in 0..3 {
        let lock = locks.named("c")?;
        let value = Arc::clone(&value);
        threads.push(std::thread::spawn(move || -> Result<(), Error> {
            for _ in 0..10 {
                let guard = lock.guard()?;
                let v = value.load(Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
                value.store(v + 1, Ordering::SeqCst);
                drop(guard);
            }
            Ok(())
        }));
    }
    for t in threads {
        t.join().map_err(|_| "worker panicked")??;
    }
    check!(
        value.load(Ordering::SeqCst) == 30,
        "counter {}",
        value.load(Ordering::SeqCst)
    );
    assert_no_keys(eps, &prefix, Duration::from_secs(5));
    Ok(())
}

/// Bad names, a TTL below the minimum and unreachable endpoints give typed errors, no hang.
fn bad_input(eps: &[String]) -> Result<(), Failed> {
    let (locks, _) = connect(eps, "bad-input");
    for name in ["", "a/b", "../x", "nul\0", &"n".repeat(201)] {
        check!(
            matches!(locks.named(name), Err(Error::InvalidArgument { .. })),
            "name {name:?} accepted"
        );
        check!(
            matches!(locks.lock(name), Err(Error::InvalidArgument { .. })),
            "lock({name:?})"
        );
    }
    // Refused before any connection is tried (the endless timeouts panicked adding themselves
    // to the clock).
    for (options, what) in [
        (
            EtcdOptions::new().ttl(MIN_TTL - Duration::from_millis(1)),
            "a TTL below the minimum",
        ),
        (
            EtcdOptions::new().connect_timeout(Duration::MAX),
            "an endless connect timeout",
        ),
        (
            EtcdOptions::new().request_timeout(Duration::MAX),
            "an endless request timeout",
        ),
    ] {
        check!(
            matches!(
                EtcdLocks::connect(eps, options),
                Err(Error::InvalidArgument { .. })
            ),
            "{what} accepted"
        );
    }
    let none: [&str; 0] = [];
    check!(
        matches!(
            EtcdLocks::connect(none, EtcdOptions::new()),
            Err(Error::InvalidArgument { .. })
        ),
        "no endpoints accepted"
    );
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let start = Instant::now();
    let r = EtcdLocks::connect(
        [format!("http://127.0.0.1:{port}")],
        EtcdOptions::new().connect_timeout(Duration::from_secs(1)),
    );
    check!(
        matches!(r, Err(Error::Unavailable { .. })),
        "unreachable: {r:?}"
    );
    check!(
        start.elapsed() < Duration::from_secs(5),
        "unreachable took {:?}",
        start.elapsed()
    );
    Ok(())
}

/// Inspect and LockData: holder pid/host/since/expires, data readable by another handle.
fn inspect_and_data(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "inspect");
    let a = locks.named("i")?;
    let b = locks.named("i")?;
    check!(b.holder()?.is_none(), "holder of a free lock");
    check!(b.read_data()?.is_none(), "data of a free lock");
    check!(
        matches!(a.write_data(b"x"), Err(Error::NotHeld(_))),
        "write while not held"
    );
    let _ = a.lock()?;
    let holder = b.holder()?.ok_or("no holder")?;
    check!(
        holder.pid == Some(std::process::id()),
        "pid {:?}",
        holder.pid
    );
    check!(
        holder.host.as_deref().is_some_and(|h| !h.is_empty()),
        "host {:?}",
        holder.host
    );
    let since = holder.since.ok_or("no since")?;
    let expires = holder.expires.ok_or("no expires")?;
    check!(expires > since, "expires {expires:?} <= since {since:?}");
    check!(b.read_data()? == Some(Vec::new()), "no data yet");
    a.write_data(b"hello\n\n\0world")?;
    check!(
        b.read_data()?.as_deref() == Some(&b"hello\n\n\0world"[..]),
        "data read back"
    );
    let big = vec![0u8; lock_etcd::MAX_DATA_LEN + 1];
    check!(
        matches!(a.write_data(&big), Err(Error::InvalidArgument { .. })),
        "oversized data"
    );
    let t = a.fencing_token()?;
    a.write_data(b"again")?;
    check!(a.fencing_token()? == t, "writing data keeps the token");
    a.unlock()?;
    check!(b.holder()?.is_none(), "holder after unlock");
    assert_no_keys(eps, &prefix, Duration::from_secs(5));
    Ok(())
}

/// The keepalive holds the lock well past its TTL; time_left stays within the TTL.
fn keepalive_outlives_ttl(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "keepalive");
    let guard = locks.lock("k")?;
    let ttl = guard.ttl();
    check!(ttl >= TTL, "granted ttl {ttl:?}");
    let lost = guard.lost()?;
    std::thread::sleep(TTL * 2 + Duration::from_millis(500));
    check!(!lost.is_lost(), "lost while kept alive");
    let left = guard.time_left()?.ok_or("no time left")?;
    check!(left <= ttl, "time left {left:?} > ttl {ttl:?}");
    let other = locks.named("k")?;
    check!(other.try_lock()?.is_none(), "taken while kept alive");
    guard.unlock()?;
    assert_no_keys(eps, &prefix, Duration::from_secs(5));
    Ok(())
}

/// A key deleted behind the holder's back fires Lost; later use returns Error::Lost.
fn key_deleted_behind_our_back(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "deleted");
    let lock = locks.named("d")?;
    let _ = lock.lock()?;
    let lost = lock.lost()?;
    let key = lock.own_key().ok_or("no own key")?;
    raw(eps, async move |c| c.delete(key, None).await.map(drop));
    check!(
        lost.wait_timeout(Duration::from_secs(10)),
        "lost did not fire"
    );
    check!(
        matches!(lock.fencing_token(), Err(Error::Lost)),
        "token after loss"
    );
    check!(
        matches!(lock.time_left(), Err(Error::Lost)),
        "time_left after loss"
    );
    check!(
        matches!(lock.write_data(b"x"), Err(Error::Lost)),
        "write after loss"
    );
    check!(
        matches!(lock.unlock(), Err(Error::Lost)),
        "unlock after loss"
    );
    check!(
        matches!(lock.unlock(), Err(Error::NotHeld(_))),
        "second unlock"
    );
    // The handle is usable again, and tells that the previous holder did not release cleanly.
    check!(
        lock.lock()? == Acquired::OwnerDied,
        "relock after a loss is not OwnerDied"
    );
    lock.unlock()?;
    check!(
        lock.lock()? == Acquired::Clean,
        "relock after a clean unlock is not Clean"
    );
    lock.unlock()?;
    assert_no_keys(eps, &prefix, Duration::from_secs(5));
    Ok(())
}

/// A lease revoked behind the holder's back fires Lost, and the next waiter gets the lock.
fn lease_revoked_behind_our_back(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "revoked");
    let lock = locks.named("r")?;
    let _ = lock.lock()?;
    let lost = lock.lost()?;
    let lease = lock.lease_id().ok_or("no lease")?;
    raw(eps, async move |c| c.lease_revoke(lease).await.map(drop));
    check!(
        lost.wait_timeout(Duration::from_secs(10)),
        "lost did not fire"
    );
    let other = locks.named("r")?;
    let how = other.try_lock_for(Duration::from_secs(5))?;
    check!(
        how == Acquired::OwnerDied,
        "took a revoked holder's lock as {how:?}"
    );
    check!(
        matches!(lock.unlock(), Err(Error::Lost)),
        "unlock after revoke"
    );
    other.unlock()?;
    assert_no_keys(eps, &prefix, Duration::from_secs(5));
    Ok(())
}

/// etcd#11456: a waiter whose session's lease is revoked while it waits is never told it holds
/// the lock.
fn waiter_lease_expired(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "11456");
    let holder = locks.named("w")?;
    let _ = holder.lock()?;
    // The waiter has a session (a lease) of its own, so that revoking it leaves the holder be.
    let session = locks.session(TTL)?;
    let waiter = Arc::new(session.named("w")?);
    let result = {
        let waiter = Arc::clone(&waiter);
        std::thread::spawn(move || waiter.try_lock_for(Duration::from_secs(20)))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let k = queue_keys(eps, &prefix);
        if k.len() == 2 {
            break;
        }
        check!(Instant::now() < deadline, "waiter did not enqueue: {k:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let waiter_lease = session.lease_id();
    check!(
        holder.lease_id() != Some(waiter_lease),
        "the waiter shares the holder's lease"
    );
    raw(eps, async move |c| {
        c.lease_revoke(waiter_lease).await.map(drop)
    });
    std::thread::sleep(Duration::from_millis(200));
    holder.unlock()?;
    let outcome = result.join().map_err(|_| "waiter panicked")?;
    check!(
        matches!(outcome, Err(Error::Lost)),
        "waiter was told {outcome:?}"
    );
    check!(
        matches!(waiter.fencing_token(), Err(Error::NotHeld(_))),
        "waiter holds nothing"
    );
    // The lock is free for anyone else.
    let next = locks.named("w")?;
    check!(
        next.try_lock()? == Some(Acquired::Clean),
        "lock not free and clean after a dead waiter (not holder)"
    );
    next.unlock()?;
    assert_no_keys(eps, &prefix, Duration::from_secs(5));
    Ok(())
}

/// Dropping a guard or a holding handle releases the lock.
fn drop_releases(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "drop");
    {
        let _guard = locks.lock("g")?;
        check!(locks.try_lock("g")?.is_none(), "held by the guard");
    }
    let guard = locks
        .try_lock("g")?
        .ok_or("not released by the guard drop")?;
    drop(guard);
    {
        let lock = locks.named("g")?;
        let _ = lock.lock()?;
    }
    check!(
        locks.try_lock("g")?.is_some(),
        "not released by the handle drop"
    );
    assert_no_keys(eps, &prefix, Duration::from_secs(5));
    Ok(())
}

/// The blocking API also works from inside another tokio runtime (it never nests runtimes).
fn inside_another_runtime(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "nested-runtime");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let token = runtime.block_on(async {
        let lock = locks.named("n")?;
        let _ = lock.lock()?;
        let token = lock.fencing_token()?;
        lock.unlock()?;
        let guard = locks.lock("n")?;
        drop(guard);
        Ok::<u64, Error>(token)
    })?;
    check!(token > 0, "token {token}");
    drop(runtime);
    drop(locks);
    assert_no_keys(eps, &prefix, Duration::from_secs(5));
    Ok(())
}

/// Every call on a connection (and its handles) inherited across `fork(2)` fails in the child
/// with `InvalidArgument`, at once: the child has none of the connection's runtime threads, and
/// the parent's lock stays held. A connection the child opens itself works. Without the check
/// the child's first call hung.
fn an_inherited_connection_is_refused_in_a_forked_child(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "fork");
    let lock = locks.named("f")?;
    let _ = lock.lock()?;
    let child_eps = eps.to_vec();
    let child_prefix = prefix.clone();
    let status = lock_conformance::fork::fork_and_wait(Duration::from_secs(20), || {
        fn refused<T>(r: lock_etcd::Result<T>) -> bool {
            matches!(r, Err(Error::InvalidArgument { .. }))
        }
        let checks: [&dyn Fn() -> bool; 6] = [
            &|| refused(lock.unlock()),
            &|| refused(lock.try_lock()),
            &|| refused(lock.lock()),
            &|| refused(lock.holder()),
            &|| refused(locks.try_lock("f")),
            &|| {
                // A connection of its own (and its own runtime) sees the parent's lock held.
                EtcdLocks::connect(
                    &child_eps,
                    EtcdOptions::new().prefix(&child_prefix).ttl(TTL),
                )
                .and_then(|own| own.try_lock("f"))
                .is_ok_and(|guard| guard.is_none())
            },
        ];
        checks
            .iter()
            .position(|check| !check())
            .map_or(0, |i| i as i32 + 1)
    })?;
    check!(
        status == Some(0),
        "check {status:?} failed in the child (None: it hung)"
    );
    check!(lock.fencing_token().is_ok(), "the parent's lock was lost");
    lock.unlock()?;
    drop(lock);
    drop(locks);
    assert_no_keys(eps, &prefix, Duration::from_secs(5));
    Ok(())
}

/// A handle of a table that was removed allocates nothing, in the removed table's place or in
/// a table created again under its name: `NotFound`, and no key written. It used to write an
/// allocation key under the removed table's root (a stray key that the next table of that name
/// found allocated).
fn a_removed_tables_handle_allocates_nothing(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "removed-table");
    let stale = locks.create_table("t", 4)?;
    let root = stale.root().to_owned();
    let first = stale.allocate()?;
    check!(first.id() == LockId(0), "first allocation {:?}", first.id());
    locks.remove_table("t")?;
    let allocated = stale.allocate().map(|l| l.id());
    check!(
        matches!(allocated, Err(Error::NotFound { .. })),
        "allocate on a removed table: {allocated:?}"
    );
    let allocated = stale.allocate_and_retrieve(LockId(2)).map(|l| l.id());
    check!(
        matches!(allocated, Err(Error::NotFound { .. })),
        "allocate_and_retrieve on a removed table: {allocated:?}"
    );
    let left = keys(eps, &root);
    check!(left.is_empty(), "keys under the removed table: {left:?}");
    // Created again, with the same capacity: the old handle still writes nothing into it.
    let fresh = locks.create_table("t", 4)?;
    let allocated = stale.allocate().map(|l| l.id());
    check!(
        matches!(allocated, Err(Error::NotFound { .. })),
        "allocate through the old handle of a re-created table: {allocated:?}"
    );
    check!(
        fresh.available()? == Some(4),
        "the new table has allocations: {:?}",
        fresh.available()
    );
    let id = fresh.allocate()?.id();
    check!(id == LockId(0), "the new table's first allocation: {id:?}");
    // A handle opened on the new table works as before.
    let reopened = locks.open_table("t")?;
    let id = reopened.allocate_and_retrieve(LockId(3))?.id();
    check!(
        id == LockId(3),
        "allocate_and_retrieve on the reopened table: {id:?}"
    );
    locks.remove_table("t")?;
    assert_no_keys(eps, &prefix, Duration::from_secs(5));
    Ok(())
}

/// A lock of a table that was removed is not taken through a handle opened before: `lock`,
/// `try_lock` and `try_lock_for` are `NotFound` and write nothing, in the removed table's place
/// or in a table created again under its name. They used to write a queue key and a held marker
/// under the removed table's root; the marker has no lease, so a holder that died there left it
/// for the next table of that name, whose lock then looked held by a dead owner.
fn a_removed_tables_handle_locks_nothing(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "removed-table-locks");
    let stale = locks.create_table("t", 4)?;
    let root = stale.root().to_owned();
    let lock = stale.retrieve(LockId(1))?;
    check!(lock.lock()? == Acquired::Clean, "lock before the removal");
    lock.unlock()?;
    locks.remove_table("t")?;
    let tries = |what: &str| -> Result<(), Failed> {
        let locked = lock.lock();
        check!(
            matches!(locked, Err(Error::NotFound { .. })),
            "lock {what}: {locked:?}"
        );
        let tried = lock.try_lock();
        check!(
            matches!(tried, Err(Error::NotFound { .. })),
            "try_lock {what}: {tried:?}"
        );
        let waited = lock.try_lock_for(Duration::from_millis(200));
        check!(
            matches!(waited, Err(Error::NotFound { .. })),
            "try_lock_for {what}: {waited:?}"
        );
        Ok(())
    };
    tries("on a removed table")?;
    let left = keys(eps, &root);
    check!(left.is_empty(), "keys under the removed table: {left:?}");
    // Created again: the old handle still takes nothing in it, and the new table's lock is free.
    let fresh = locks.create_table("t", 4)?;
    tries("through the old handle of a re-created table")?;
    let new_lock = fresh.retrieve(LockId(1))?;
    check!(
        new_lock.try_lock()? == Some(Acquired::Clean),
        "the new table's lock is not free and clean"
    );
    new_lock.unlock()?;
    locks.remove_table("t")?;
    assert_no_keys(eps, &prefix, Duration::from_secs(5));
    Ok(())
}

/// Every open table is listed by the others through its client key (`Manager::clients`); one
/// whose session lease was revoked behind its back is listed again on a new session, although
/// its connection acquires nothing meanwhile (an idle table once stayed unlisted, and
/// `remove_unused` free to delete it, until its next acquisition); a dropped one is not listed.
fn open_tables_are_listed_again_after_a_lost_session(eps: &[String]) -> Result<(), Failed> {
    let (a, prefix) = connect(eps, "clients-again");
    let (b, _) = connect(eps, "clients-again");
    let ta = a.create_table("t", 4)?;
    let tb = b.open_table("t")?;
    let me = std::process::id();
    let seen = tb.clients()?;
    check!(
        seen.len() == 1 && seen[0].pid == Some(me) && seen[0].owner.as_deref() == Some(ta.owner()),
        "the other connection's table, listed: {seen:?}"
    );
    let nonce = ta.owner().rsplit('/').next().unwrap_or_default().to_owned();
    let clients = format!("{}/clients/", ta.root());
    let (_, lease) = keys(eps, &clients)
        .into_iter()
        .find(|(key, _)| key.ends_with(&nonce))
        .ok_or("no client key of the first table")?;
    raw(eps, async move |c| c.lease_revoke(lease).await);
    // The keepalive notices within a third of the TTL; a grant and a put follow.
    let until = Instant::now() + TTL * 4;
    let again = loop {
        let listed = keys(eps, &clients)
            .into_iter()
            .find(|(key, l)| key.ends_with(&nonce) && *l != lease);
        if listed.is_some() || Instant::now() >= until {
            break listed;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    check!(
        again.is_some(),
        "not listed again within {:?} of its lease's revoke, with no acquisition",
        TTL * 4
    );
    let seen = tb.clients()?;
    check!(
        seen.len() == 1 && seen[0].owner.as_deref() == Some(ta.owner()),
        "listed again on a new session: {seen:?}"
    );
    drop(ta);
    let seen = tb.clients()?;
    check!(seen.is_empty(), "listed after it was dropped: {seen:?}");
    drop(tb);
    a.remove_unused_table("t")?;
    assert_no_keys(eps, &prefix, Duration::from_secs(5));
    Ok(())
}

/// `remove_unused_table` refuses while another manager has the table open and names it, counts
/// a manager of this host whose process has ended as closed (its key stays until its lease
/// expires), names one of another host by host, and refuses a client key it cannot read.
fn remove_unused_counts_open_managers_only(eps: &[String]) -> Result<(), Failed> {
    let (locks, prefix) = connect(eps, "remove-unused");
    let (remover, _) = connect(eps, "remove-unused");
    let table = locks.create_table("t", 4)?;
    let me = std::process::id();
    let refused = remover.remove_unused_table("t");
    check!(
        matches!(&refused, Err(Error::InUse { what }) if what.contains(&format!("pid {me}"))),
        "remove_unused with a table open in this process: {refused:?}"
    );
    let clients = format!("{}/clients/", table.root());
    drop(table);
    let mut child = std::process::Command::new("true").spawn()?;
    let ended = child.id();
    child.wait()?;
    let boot = lock_etcd::lock_api::boot_id()?;
    let pid_ns = lock_etcd::lock_api::pid_namespace();
    let record = move |pid: u32, host: &str| {
        format!(
            "lockyard-etcd-client 1\nboot={boot}\npidns={pid_ns}\nstart=1\npid={pid}\n\
             host={host}\nowner=x\nsince=1\n\n"
        )
    };
    let here = lock_etcd::lock_api::host_name();
    let put = |key: &str, value: String| {
        let key = format!("{clients}{key}");
        raw(eps, async move |c| c.put(key, value, None).await);
    };
    let delete = |key: &str| {
        let key = format!("{clients}{key}");
        raw(eps, async move |c| c.delete(key, None).await);
    };
    put("far", record(77, "lockyard-another-host"));
    let refused = remover.remove_unused_table("t");
    let named = "1 manager on another host has it open: pid 77 on lockyard-another-host";
    check!(
        matches!(&refused, Err(Error::InUse { what }) if what.contains(named)),
        "remove_unused with a manager on another host: {refused:?}"
    );
    delete("far");
    put("junk", "not a client record".into());
    let refused = remover.remove_unused_table("t");
    check!(
        matches!(refused, Err(Error::Corrupt { .. })),
        "remove_unused with a damaged client key: {refused:?}"
    );
    check!(
        !keys(eps, &format!("{prefix}/table/t/meta")).is_empty(),
        "a refused removal deleted the table"
    );
    delete("junk");
    put("ended", record(ended, here));
    remover.remove_unused_table("t")?;
    assert_no_keys(eps, &prefix, Duration::from_secs(5));
    drop(locks);
    Ok(())
}

fn main() -> std::process::ExitCode {
    let tests: &[(&str, Test)] = &[
        ("inside_another_runtime", inside_another_runtime),
        (
            "open_tables_are_listed_again_after_a_lost_session",
            open_tables_are_listed_again_after_a_lost_session,
        ),
        (
            "remove_unused_counts_open_managers_only",
            remove_unused_counts_open_managers_only,
        ),
        (
            "a_removed_tables_handle_locks_nothing",
            a_removed_tables_handle_locks_nothing,
        ),
        (
            "an_inherited_connection_is_refused_in_a_forked_child",
            an_inherited_connection_is_refused_in_a_forked_child,
        ),
        ("lifecycle", lifecycle),
        ("exclusion_and_timeout", exclusion_and_timeout),
        ("fifo", fifo),
        ("counter", counter),
        ("bad_input", bad_input),
        ("inspect_and_data", inspect_and_data),
        ("keepalive_outlives_ttl", keepalive_outlives_ttl),
        ("key_deleted_behind_our_back", key_deleted_behind_our_back),
        (
            "lease_revoked_behind_our_back",
            lease_revoked_behind_our_back,
        ),
        ("waiter_lease_expired_etcd_11456", waiter_lease_expired),
        ("drop_releases", drop_releases),
        (
            "a_removed_tables_handle_allocates_nothing",
            a_removed_tables_handle_allocates_nothing,
        ),
    ];
    common::run_suite("api", tests, Duration::from_secs(5))
}
