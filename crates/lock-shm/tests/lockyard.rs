//! lock-shm reached only through the umbrella crate, as a program that picks its backend from
//! configuration would: `lockyard::open*` with a `shm:` spec, in two processes.
//!
//! The test binary re-executes itself: with `LOCKYARD_SPEC_ROLE` set it is the second process,
//! otherwise it runs the trial. The child runs under lock-conformance's `ChildProcess`, which
//! SIGKILLs and reaps it on drop; every wait is bounded and the segment is removed at the end.

use std::process::{Command, ExitCode};
use std::time::Duration;

use lock_conformance::child::ChildProcess;
use lockyard::{Acquired, Error, LockId, Locker};

const ROLE_ENV: &str = "LOCKYARD_SPEC_ROLE";
const SPEC_ENV: &str = "LOCKYARD_SPEC_SPEC";
const STEP: Duration = Duration::from_secs(10);

type TrialResult = Result<(), String>;

fn e2s(e: Error) -> String {
    e.to_string()
}

/// Removes the spec's store when dropped.
struct Store(String);

impl Drop for Store {
    fn drop(&mut self) {
        let _ = lockyard::remove(&self.0);
    }
}

/// Two processes share one table opened by spec: the second sees the first's allocation and
/// hold (with its pid), waits for the lock, gets it on release, and the store is removed by spec.
fn two_processes_share_a_table_opened_by_spec() -> TrialResult {
    let spec = format!("shm:lockyard-test-spec-{}", std::process::id());
    let store = Store(spec.clone());
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
    let mut command = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    command.env(ROLE_ENV, "second").env(SPEC_ENV, &spec);
    let mut child = ChildProcess::start(command, "second", None).map_err(|e| e.to_string())?;
    let saw = child.expect("saw", STEP).map_err(|e| e.to_string())?;
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
    child
        .expect("locked clean", STEP)
        .map_err(|e| e.to_string())?;
    child.finish(STEP).map_err(|e| e.to_string())?;
    drop(lock);
    drop(manager);
    lockyard::remove(&spec).map_err(e2s)?;
    match lockyard::remove(&spec) {
        Err(Error::NotFound { .. }) => {}
        other => return Err(format!("second remove: {other:?}")),
    }
    drop(store);
    Ok(())
}

/// The second process: opens the spec, reports what it sees, then waits for lock 0.
fn second() -> TrialResult {
    let spec = std::env::var(SPEC_ENV).map_err(|e| e.to_string())?;
    let manager = lockyard::open(&spec).map_err(e2s)?;
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
    if std::env::var(ROLE_ENV).is_ok() {
        return match second() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("error {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = libtest_mimic::Arguments::from_args();
    let trials = vec![libtest_mimic::Trial::test(
        "two_processes_share_a_table_opened_by_spec",
        || two_processes_share_a_table_opened_by_spec().map_err(Into::into),
    )];
    libtest_mimic::run(&args, trials).exit_code()
}
