//! dirlock reached only through `lockyard::open*` with `dir:` specs, in two processes: a store
//! of several locks, and a plain directory that is one lock, shared with `DirLock` users.

mod common;

use std::path::Path;

use common::*;
use dirlock::DirLock;
use dirlock::lock_api::{Acquired, Error, Inspect, LockId, Locker};

fn spec(path: &Path) -> String {
    format!("dir:{}", path.display())
}

fn say(line: &str) {
    println!("{SAY}{line}");
}

/// The entry point of child processes; does nothing in a normal test run.
///
/// Roles: `hold` opens the spec in `DIR_ENV` with `lockyard::open`, locks `COUNT_ENV` (the
/// lock id), says `locked clean|owner-died`, unlocks at an `unlock` line (saying `unlocked`)
/// or at EOF, and exits at EOF; `hold-then-die` never unlocks.
#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let path = std::env::var_os(DIR_ENV).expect("dir");
    let id: u32 = std::env::var(COUNT_ENV)
        .expect("count")
        .parse()
        .expect("count");
    let manager = lockyard::open(&spec(Path::new(&path))).expect("lockyard::open");
    let lock = manager.retrieve(LockId(id)).expect("retrieve");
    let acquired = lock.try_lock_for(PATIENCE).expect("lock");
    say(match acquired {
        Acquired::Clean => "locked clean",
        Acquired::OwnerDied => "locked owner-died",
    });
    let mut line = String::new();
    let mut holding = true;
    loop {
        line.clear();
        match std::io::stdin().read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if role == "hold" && holding && line.trim() == "unlock" => {
                lock.unlock().expect("unlock");
                holding = false;
                say("unlocked");
            }
            Ok(_) => {}
        }
    }
    if role == "hold-then-die" {
        std::thread::sleep(PATIENCE);
    } else if holding {
        lock.unlock().expect("unlock at EOF");
    }
    std::process::exit(0);
}

/// A store created through `lockyard::create` is opened by spec in another process: its holds
/// exclude ours, `held` names its pid, and a SIGKILLed holder is listed dead and taken over
/// with `OwnerDied`. `lockyard::remove` deletes it.
#[test]
fn a_store_is_shared_between_processes_through_specs() {
    let root = lock_dir();
    let store = root.path().join("store");
    let spec = spec(&store);
    let created = lockyard::create(&spec, 4).expect("create");
    assert_eq!(created.capacity(), Some(4));

    let mut holder = spawn("hold", &store, root.path(), 1, None);
    assert_eq!(holder.next_line(PATIENCE).expect("holder"), "locked clean");
    let ours = lockyard::open(&spec).expect("open");
    assert_eq!(ours.capacity(), Some(4));
    let one = ours.retrieve(LockId(1)).expect("retrieve");
    assert_eq!(one.try_lock().expect("try"), None, "a double hold");
    let held = ours.held().expect("held");
    assert_eq!(held.len(), 1, "{held:?}");
    let who = held[0].holder.clone().expect("holder");
    assert_eq!(
        (held[0].id, who.pid, who.dead),
        (LockId(1), Some(holder.pid()), false)
    );
    let two = ours.retrieve(LockId(2)).expect("retrieve");
    assert_eq!(two.try_lock().expect("try"), Some(Acquired::Clean));
    holder.send("unlock").expect("send");
    assert_eq!(holder.next_line(PATIENCE).expect("holder"), "unlocked");
    assert_eq!(one.try_lock().expect("try"), Some(Acquired::Clean));
    one.unlock().expect("unlock");
    two.unlock().expect("unlock");
    holder.close_stdin();
    holder.finish(PATIENCE).expect("holder exits");

    let mut doomed = spawn("hold-then-die", &store, root.path(), 3, None);
    assert_eq!(doomed.next_line(PATIENCE).expect("holder"), "locked clean");
    let pid = doomed.pid();
    doomed.sigkill().expect("kill the holder");
    let held = ours.held().expect("held");
    let dead = held[0].holder.clone().expect("holder");
    assert_eq!(
        (held[0].id, dead.pid, dead.dead),
        (LockId(3), Some(pid), true)
    );
    let three = ours.retrieve(LockId(3)).expect("retrieve");
    assert_eq!(three.try_lock().expect("try"), Some(Acquired::OwnerDied));
    three.unlock().expect("unlock");

    lockyard::remove(&spec).expect("remove");
    assert!(!store.exists());
    assert!(matches!(lockyard::open(&spec), Err(Error::NotFound { .. })));
    assert!(matches!(
        lockyard::remove(&spec),
        Err(Error::NotFound { .. })
    ));
}

/// A plain directory is a table of one lock, id 0, through `lockyard::open`: a process that
/// locks it by spec excludes one that uses `DirLock::new` on the directory, and the other way
/// round; `lockyard::remove` refuses to delete it.
#[test]
fn a_plain_directory_is_one_lock_for_specs_and_dirlock_alike() {
    let dir = lock_dir();
    let spec = spec(dir.path());
    let table = lockyard::open(&spec).expect("open a plain directory");
    assert_eq!(table.capacity(), Some(1));
    assert!(matches!(
        table.retrieve(LockId(1)),
        Err(Error::OutOfRange { capacity: 1, .. })
    ));
    let (_, created) = lockyard::open_or_create(&spec, 1).expect("open_or_create");
    assert!(!created);
    assert!(matches!(
        lockyard::open_or_create(&spec, 2),
        Err(Error::Incompatible { .. })
    ));

    // Held by spec in another process, seen by DirLock here.
    let mut holder = spawn("hold", dir.path(), dir.path(), 0, None);
    assert_eq!(holder.next_line(PATIENCE).expect("holder"), "locked clean");
    let direct = DirLock::new(dir.path()).expect("new");
    assert_eq!(direct.try_lock().expect("try"), None, "a double hold");
    let who = direct.holder().expect("holder").expect("held");
    assert_eq!(who.pid, Some(holder.pid()));
    assert!(matches!(
        lockyard::remove(&spec),
        Err(Error::Incompatible { .. })
    ));
    assert_entries(dir.path(), &["lock0"], "refused remove");
    holder.send("unlock").expect("send");
    assert_eq!(holder.next_line(PATIENCE).expect("holder"), "unlocked");
    holder.close_stdin();
    holder.finish(PATIENCE).expect("holder exits");

    // Held by DirLock here, seen by spec in another process (which waits for it).
    assert_eq!(direct.try_lock().expect("try"), Some(Acquired::Clean));
    let mut waiter = spawn("hold", dir.path(), dir.path(), 0, None);
    let lock = table.retrieve(LockId(0)).expect("retrieve");
    assert_eq!(lock.try_lock().expect("try"), None);
    assert_eq!(table.held().expect("held")[0].id, LockId(0));
    direct.unlock().expect("unlock");
    assert_eq!(waiter.next_line(PATIENCE).expect("waiter"), "locked clean");
    waiter.close_stdin();
    waiter.finish(PATIENCE).expect("waiter exits");
    assert_entries(dir.path(), &[], "released");
}

/// The lifecycle never deletes or changes what dirlock did not make: `create` over a plain
/// directory is `AlreadyExists`, and `remove` of a plain directory, a file or a symlink to a
/// store is `Incompatible`; each is left exactly as it was, and no private build or removal
/// directory is left beside it.
#[test]
fn the_lifecycle_never_touches_what_it_did_not_make() {
    let root = lock_dir();
    let plain = root.path().join("plain");
    std::fs::create_dir(&plain).expect("mkdir");
    std::fs::write(plain.join("data"), "user data").expect("write");
    let file = root.path().join("file");
    std::fs::write(&file, "x").expect("write");
    let store = root.path().join("store");
    lockyard::create(&spec(&store), 2).expect("create");
    let link = root.path().join("link");
    std::os::unix::fs::symlink(&store, &link).expect("symlink");

    assert!(matches!(
        lockyard::create(&spec(&plain), 2),
        Err(Error::AlreadyExists { .. })
    ));
    for path in [&plain, &file, &link] {
        assert!(
            matches!(
                lockyard::remove(&spec(path)),
                Err(Error::Incompatible { .. })
            ),
            "{}",
            path.display()
        );
    }
    assert!(matches!(
        lockyard::open(&spec(&file)),
        Err(Error::Incompatible { .. })
    ));
    assert!(matches!(
        lockyard::create(&spec(&store), 2),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        lockyard::create(&spec(&root.path().join("zero")), 0),
        Err(Error::InvalidArgument { .. })
    ));
    assert_entries(&plain, &["data"], "plain directory");
    assert_eq!(std::fs::read_to_string(&file).expect("file"), "x");
    assert_entries(&store, &["0", "1", "dirlock-store"], "store");
    assert_entries(
        root.path(),
        &["file", "link", "plain", "store"],
        "nothing left beside them",
    );
    lockyard::remove(&spec(&store)).expect("remove");
    assert_entries(root.path(), &["file", "link", "plain"], "store removed");
}
