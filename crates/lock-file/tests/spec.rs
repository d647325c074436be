//! The file backend reached only through `lockyard::open*` with a `file:` spec string, as a
//! program that takes its lock backend from configuration does, in two processes.
//!
//! The test binary re-executes itself as the second process (the `SPEC_CHILD` variable holds
//! the spec); the child talks in lines starting with `@ `.

use std::io::BufRead;
use std::process::Command;
use std::time::Duration;

use lock_conformance::child::ChildProcess;
use lockyard::{Acquired, Error, LockId, Locker};

/// Set in the child: the spec of the store to open.
const SPEC_CHILD: &str = "LOCK_FILE_SPEC_TEST_CHILD";
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// The child: opens the store through its spec, says what `open_or_create` found, takes lock 3
/// and allocates an id, then on `unlock` releases the lock and exits at EOF.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(SPEC_CHILD) else {
        return;
    };
    // A child never outlives its budget, whatever its parent does.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(60));
        std::process::exit(3);
    });
    let run = || -> Result<(), Error> {
        let (manager, created) = lockyard::open_or_create(&spec, 8)?;
        println!("@ created {created} capacity {:?}", manager.capacity());
        let lock = manager.retrieve(LockId(3))?;
        let how = lock.lock()?;
        println!("@ locked {}", how == Acquired::Clean);
        println!("@ allocated {}", manager.allocate()?.id());
        for line in std::io::stdin().lock().lines() {
            if line.map_err(|e| Error::io("read", "stdin", e))? == "unlock" {
                lock.unlock()?;
                println!("@ unlocked");
            }
        }
        Ok(())
    };
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            println!("@ error {e}");
            1
        }
    };
    std::process::exit(code);
}

fn line(child: &mut ChildProcess) -> String {
    child.next_line(LINE_TIMEOUT).expect("child line")
}

#[test]
fn a_file_spec_opens_one_store_in_two_processes() {
    let root = tempfile::tempdir().expect("temp dir");
    let spec = format!("file:{}", root.path().join("locks").display());
    let manager = lockyard::create(&spec, 8).expect("create through the spec");
    assert!(matches!(
        lockyard::create(&spec, 8),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        lockyard::open_or_create(&spec, 9),
        Err(Error::Incompatible { .. })
    ));
    let first = manager.allocate().expect("allocate");
    assert_eq!(first.id(), LockId(0));

    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(SPEC_CHILD, &spec);
    let mut child = ChildProcess::start(command, "spec", Some("@ ")).expect("spawn child");
    assert_eq!(line(&mut child), "created false capacity Some(8)");
    assert_eq!(line(&mut child), "locked true");
    // The child's allocation comes after ours: both processes share one table.
    assert_eq!(line(&mut child), "allocated 1");

    let reopened = lockyard::open(&spec).expect("open through the spec");
    assert_eq!(reopened.capacity(), Some(8));
    assert_eq!(reopened.available().expect("available"), Some(6));
    let held = reopened.held().expect("held");
    assert_eq!(held.len(), 1, "{held:?}");
    let holder = held[0].holder.clone().expect("holder");
    assert_eq!((held[0].id, holder.pid), (LockId(3), Some(child.pid())));
    assert!(!holder.dead);
    let lock = reopened.retrieve(LockId(3)).expect("retrieve");
    assert!(lock.try_lock().expect("try_lock").is_none());

    child.send("unlock").expect("send");
    assert_eq!(line(&mut child), "unlocked");
    assert_eq!(
        lock.try_lock_for(LINE_TIMEOUT).expect("lock"),
        Acquired::Clean
    );
    lock.unlock().expect("unlock");
    child.finish(LINE_TIMEOUT).expect("child exits");

    drop((first, lock, manager, reopened));
    lockyard::remove(&spec).expect("remove through the spec");
    assert!(matches!(lockyard::open(&spec), Err(Error::NotFound { .. })));
    assert!(matches!(
        lockyard::remove(&spec),
        Err(Error::NotFound { .. })
    ));
}
