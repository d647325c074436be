//! lock-shm reached only through the umbrella crate, as a program that picks its backend from
//! configuration would: `lockyard::open*` with a `shm:` spec, in two processes.
//!
//! The second process is this test binary re-executed (`common`); every wait is bounded and the
//! segment is removed at the end.

mod common;

use std::process::ExitCode;
use std::time::Duration;

use lockyard::{Acquired, Error, LockId, Locker};

use common::{SEGMENT_ENV, STEP, Segment, TrialResult, e2s, env, expect, spawn};

/// The spec that names segment `name`.
fn shm_spec(name: &str) -> String {
    format!("shm:{name}")
}

/// Two processes share one table opened by spec: the second sees the first's allocation and
/// hold (with its pid), waits for the lock, gets it on release, and the store is removed by spec.
fn two_processes_share_a_table_opened_by_spec() -> TrialResult {
    let segment = Segment::new("spec");
    let spec = shm_spec(&segment.0);
    match lockyard::open(&spec) {
        Err(Error::NotFound { .. }) => {}
        other => return Err(format!("open of a missing store: {:?}", other.map(|_| ()))),
    }
    let (manager, created) = lockyard::open_or_create(&spec, 8).map_err(e2s)?;
    if !created {
        return Err("open_or_create of a fresh name did not create".into());
    }
    let lock = manager.allocate().map_err(e2s)?;
    if lock.id() != LockId(0) {
        return Err(format!("first allocation is {}", lock.id()));
    }
    let _ = lock.lock().map_err(e2s)?;
    let mut child = spawn("second", &segment, &[])?;
    let saw = expect(&mut child, "saw")?;
    if saw != format!("capacity 8 available 7 holder {}", std::process::id()) {
        return Err(format!("the second process saw {saw:?}"));
    }
    // The child now waits for lock 0; it shows in our snapshot as a waiter.
    let waiting = (0..1000).any(|_| {
        let found = manager.snapshot().is_ok_and(|s| {
            s.iter()
                .any(|l| l.id == LockId(0) && l.waiters.iter().any(|w| w.pid == Some(child.pid())))
        });
        if !found {
            std::thread::sleep(Duration::from_millis(10));
        }
        found
    });
    if !waiting {
        return Err("the second process never showed as a waiter".into());
    }
    lock.unlock().map_err(e2s)?;
    expect(&mut child, "locked clean")?;
    child.finish(STEP).map_err(|e| e.to_string())?;
    drop(lock);
    drop(manager);
    lockyard::remove(&spec).map_err(e2s)?;
    match lockyard::remove(&spec) {
        Err(Error::NotFound { .. }) => {}
        other => return Err(format!("second remove: {other:?}")),
    }
    drop(segment);
    Ok(())
}

/// The second process: opens the spec, reports what it sees, then waits for lock 0.
fn second() -> TrialResult {
    let manager = lockyard::open(&shm_spec(&env(SEGMENT_ENV)?)).map_err(e2s)?;
    let holder = manager
        .held()
        .map_err(e2s)?
        .into_iter()
        .find(|h| h.id == LockId(0))
        .and_then(|h| h.holder)
        .and_then(|h| h.pid);
    println!(
        "saw capacity {} available {} holder {}",
        manager.capacity().unwrap_or(0),
        manager.available().map_err(e2s)?.unwrap_or(0),
        holder.map_or("none".to_owned(), |p| p.to_string())
    );
    let lock = manager.retrieve(LockId(0)).map_err(e2s)?;
    match lock.try_lock_for(STEP).map_err(e2s)? {
        Acquired::Clean => println!("locked clean"),
        Acquired::OwnerDied => println!("locked owner-died"),
    }
    lock.unlock().map_err(e2s)
}

fn main() -> ExitCode {
    let trials: [common::Trial; 1] = [(
        "two_processes_share_a_table_opened_by_spec",
        two_processes_share_a_table_opened_by_spec,
    )];
    common::main(&[("second", second)], trials)
}
