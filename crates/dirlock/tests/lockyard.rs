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
    if role == "failed-remove" {
        failed_remove(Path::new(&path));
        std::process::exit(0);
    }
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

/// The `failed-remove` role: creates a store of 4 at `store`, makes lock directory 1
/// undeletable for this (unprivileged) user, removes the store, and says what it sees: the
/// error, the names beside the store, the capacity `open` reads, and the outcome of a second
/// `remove` once lock directory 1 is writable again.
fn failed_remove(store: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let spec = spec(store);
    let root = store.parent().expect("parent");
    lockyard::create(&spec, 4).expect("create");
    let one = store.join("1");
    std::fs::write(one.join("data"), "x").expect("write");
    std::fs::set_permissions(&one, std::fs::Permissions::from_mode(0o500)).expect("chmod");
    match lockyard::remove(&spec) {
        Ok(()) => say("remove ok"),
        Err(Error::Io { path, source, .. }) => say(&format!(
            "remove io {:?} {}",
            source.kind(),
            path.strip_prefix(root).unwrap_or(&path).display()
        )),
        Err(e) => say(&format!("remove other {e:?}")),
    }
    say(&format!("beside {}", entries(root).join(" ")));
    match lockyard::open(&spec) {
        Ok(table) => say(&format!("open {:?}", table.capacity())),
        Err(e) => say(&format!("open error {e:?}")),
    }
    // Missing when the failed remove did not put the store back.
    let _ = std::fs::set_permissions(&one, std::fs::Permissions::from_mode(0o700));
    match lockyard::remove(&spec) {
        Ok(()) => say("retry ok"),
        Err(e) => say(&format!("retry error {e:?}")),
    }
    say(&format!("beside {}", entries(root).join(" ")));
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

/// A `remove` whose deletion fails midway puts what is left back under the store's name and
/// returns the deletion's `Io` error naming the path that failed: the store stays reachable,
/// no hidden directory is left beside it, and `remove` succeeds once the cause is gone.
#[test]
fn a_remove_that_fails_midway_puts_the_store_back() {
    let root = lock_dir();
    let store = root.path().join("store");
    // Root deletes whatever the permissions say, so the scenario runs as nobody there.
    let uid = rustix::process::geteuid().is_root().then_some(65534);
    let mut kid = spawn("failed-remove", &store, root.path(), 0, uid);
    // Runs on every way out, a failed assertion included.
    struct Writable<'a>(&'a Path);
    impl Drop for Writable<'_> {
        fn drop(&mut self) {
            make_writable(self.0);
        }
    }
    let _writable = Writable(root.path());
    let mut line = || kid.next_line(PATIENCE).expect("the failed-remove child");
    assert_eq!(line(), "remove io PermissionDenied store/1");
    assert_eq!(line(), "beside store", "nothing hidden beside the store");
    assert_eq!(line(), "open Some(4)");
    assert_eq!(line(), "retry ok");
    assert_eq!(line(), "beside ");
    kid.finish(PATIENCE).expect("the child exits");
}

/// Makes every directory under `dir` writable again, so that an unprivileged run can delete
/// what a failed test left.
fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700));
            make_writable(&path);
        }
    }
}

/// Something other than a directory where a store's lock directory belongs (a file, a symlink
/// to a directory) is damage to that lock alone: `retrieve` of it is `Corrupt`, and `held` and
/// `snapshot` look past it as past a missing one, still listing the other locks' holders;
/// `remove` deletes the symlink, not what it points to.
#[test]
fn a_lock_directory_replaced_by_a_file_or_symlink_is_corrupt_and_costs_only_that_lock() {
    let root = lock_dir();
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    std::fs::write(elsewhere.join("keep"), "x").expect("write");
    let store = root.path().join("store");
    let spec = spec(&store);
    let table = lockyard::create(&spec, 4).expect("create");
    let two = table.retrieve(LockId(2)).expect("retrieve");
    assert_eq!(two.try_lock().expect("try"), Some(Acquired::Clean));
    let one = store.join("1");
    type Damage = fn(&Path, &Path);
    let damages: [(&str, Damage); 3] = [
        ("missing", |_, _| {}),
        ("a file", |one, _| std::fs::write(one, "x").expect("file")),
        ("a symlink", |one, elsewhere| {
            std::os::unix::fs::symlink(elsewhere, one).expect("symlink");
        }),
    ];
    for (what, damage) in damages {
        let _ = std::fs::remove_file(&one);
        let _ = std::fs::remove_dir(&one);
        damage(&one, &elsewhere);
        let opened = lockyard::open(&spec).expect("open");
        for manager in [&table, &opened] {
            let held = manager
                .held()
                .unwrap_or_else(|e| panic!("{what}: held: {e:?}"));
            let ids: Vec<LockId> = held.iter().map(|h| h.id).collect();
            assert_eq!(ids, [LockId(2)], "{what}: held");
            let states = manager
                .snapshot()
                .unwrap_or_else(|e| panic!("{what}: snapshot: {e:?}"));
            let ids: Vec<LockId> = states.iter().map(|s| s.id).collect();
            assert_eq!(ids, [LockId(2)], "{what}: snapshot");
            let retrieved = manager.retrieve(LockId(1)).map(|_| ());
            assert!(
                matches!(retrieved, Err(Error::Corrupt { .. })),
                "{what}: retrieve: {retrieved:?}"
            );
        }
    }
    two.unlock().expect("unlock");
    // The symlink goes with the store; what it points to stays.
    lockyard::remove(&spec).expect("remove");
    assert_entries(root.path(), &["elsewhere"], "removed");
    assert_entries(&elsewhere, &["keep"], "the symlink's target is untouched");
}

/// Every name the file system allows works as a store's last component: a 230-byte and a
/// 255-byte name (`NAME_MAX`) are created, used and removed with nothing left beside them
/// (the private names built from them are shortened to fit); a 256-byte name is
/// `InvalidArgument` naming the limit for every call, and nothing is created.
#[test]
fn every_legal_store_name_works_and_longer_ones_are_invalid() {
    let root = lock_dir();
    for len in [230, 255] {
        let store = root.path().join("n".repeat(len));
        let spec = spec(&store);
        let table = lockyard::create(&spec, 2).unwrap_or_else(|e| panic!("{len}: {e:?}"));
        let lock = table.retrieve(LockId(1)).expect("retrieve");
        assert_eq!(lock.try_lock().expect("try"), Some(Acquired::Clean));
        assert_eq!(
            lockyard::open(&spec)
                .expect("open")
                .held()
                .expect("held")
                .len(),
            1
        );
        lock.unlock().expect("unlock");
        assert_entries(root.path(), &[&"n".repeat(len)], "created whole");
        lockyard::remove(&spec).unwrap_or_else(|e| panic!("{len}: remove: {e:?}"));
        assert_entries(root.path(), &[], "removed whole");
    }
    let spec = spec(&root.path().join("n".repeat(256)));
    let invalid = |what: &str, result: dirlock::lock_api::Result<()>| match result {
        Err(Error::InvalidArgument { what: why }) => assert!(why.contains("255"), "{what}: {why}"),
        other => panic!("{what}: {other:?}"),
    };
    invalid("create", lockyard::create(&spec, 2).map(drop));
    invalid("open", lockyard::open(&spec).map(drop));
    invalid(
        "open_or_create",
        lockyard::open_or_create(&spec, 2).map(drop),
    );
    invalid("remove", lockyard::remove(&spec));
    assert_entries(root.path(), &[], "nothing created");
}
