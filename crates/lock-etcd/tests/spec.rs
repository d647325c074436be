//! lock-etcd reached only through the `lockyard` crate and an `etcd://` spec, in two processes:
//! what a program that picks its backend from configuration does.

mod common;

use std::time::Duration;

use common::{ROLE_ENV, TestCluster, assert_no_keys, read_stdin_line, spawn_child, tell};
use lock_etcd::{Error, LockId, Locker};

const WAIT: Duration = Duration::from_secs(30);

/// The spec of table `table` under `prefix` on `endpoints`, as an operator would write it.
fn spec(endpoints: &[String], prefix: &str, table: &str) -> String {
    let hosts: Vec<&str> = endpoints
        .iter()
        .map(|e| e.trim_start_matches("http://"))
        .collect();
    format!("etcd://{}/{prefix}/{table}?ttl=3s", hosts.join(","))
}

/// The child: opens the store by its spec (capacity read from etcd), sees the parent's
/// allocation and hold, then waits for the lock and reports it held.
fn child() {
    let spec = std::env::var("LOCKYARD_SPEC").expect("LOCKYARD_SPEC");
    let manager = lockyard::open(&spec).expect("child open");
    tell(&format!(
        "opened {} {}",
        manager.capacity().unwrap_or(0),
        manager.available().expect("available").unwrap_or(0)
    ));
    let lock = manager.retrieve(LockId(0)).expect("retrieve");
    let busy = lock.try_lock().expect("try_lock").is_none();
    tell(if busy { "busy" } else { "free" });
    let _ = read_stdin_line();
    let _ = lock.lock().expect("child lock");
    tell("locked");
    let _ = read_stdin_line();
    lock.unlock().expect("child unlock");
    tell("unlocked");
}

/// Two processes share an etcd table opened only through `lockyard::{create, open,
/// open_or_create, remove}` with an `etcd://` spec: the second sees the first's capacity,
/// allocation and hold, waits for its lock, and the store's lifecycle errors are the contract's.
#[test]
fn two_processes_share_a_table_through_lockyard_specs() {
    if std::env::var(ROLE_ENV).as_deref() == Ok("spec-child") {
        child();
        return;
    }
    let tc = TestCluster::get();
    let prefix = common::prefix("spec");
    let spec = spec(&tc.endpoints, &prefix, "table");
    assert!(matches!(lockyard::open(&spec), Err(Error::NotFound { .. })));
    let manager = lockyard::create(&spec, 4).expect("create");
    assert!(matches!(
        lockyard::create(&spec, 4),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        lockyard::open_or_create(&spec, 8),
        Err(Error::Incompatible { .. })
    ));
    let (_, created) = lockyard::open_or_create(&spec, 4).expect("open_or_create");
    assert!(!created, "open_or_create of an existing table created it");
    let lock = manager.allocate().expect("allocate");
    assert_eq!(lock.id(), LockId(0));
    let _ = lock.lock().expect("lock");

    let mut child = spawn_child(
        "two_processes_share_a_table_through_lockyard_specs",
        "spec-child",
        &[("LOCKYARD_SPEC", spec.clone())],
    );
    assert_eq!(child.expect("opened", WAIT).expect("child opened"), "4 3");
    assert_eq!(child.next_line(WAIT).expect("child tried"), "busy");
    child.send("go").expect("go");
    // The child waits for the lock, visibly.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let snapshot = manager.snapshot().expect("snapshot");
        if snapshot
            .iter()
            .any(|l| l.id == LockId(0) && l.waiters.iter().any(|w| w.pid == Some(child.pid())))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the child never showed as a waiter: {snapshot:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    lock.unlock().expect("unlock");
    child.expect("locked", WAIT).expect("child locked");
    let held = manager.held().expect("held");
    assert!(
        held.iter().any(
            |h| h.id == LockId(0) && h.holder.as_ref().and_then(|h| h.pid) == Some(child.pid())
        ),
        "held() does not name the child: {held:?}"
    );
    child.send("go").expect("go");
    child.expect("unlocked", WAIT).expect("child unlocked");
    child.close_stdin();
    child.finish(WAIT).expect("child finished");

    drop(lock);
    drop(manager);
    lockyard::remove(&spec).expect("remove");
    assert!(matches!(lockyard::open(&spec), Err(Error::NotFound { .. })));
    assert!(matches!(
        lockyard::remove(&spec),
        Err(Error::NotFound { .. })
    ));
    assert_no_keys(&tc.endpoints, &prefix, Duration::from_secs(10));
}
