//! Hostile directories and bad input: typed errors naming the path, and nothing changed.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use lock_file::{Error, FileManager, LockId, Locker, MAX_CAPACITY, Manager, StoreOptions};

#[test]
fn child_entry() {
    common::child_entry();
}

/// Every file under `dir` with its content (directories and symlinks marked), to prove that a
/// failed call changed nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let what = if meta.file_type().is_symlink() {
                format!("-> {:?}", std::fs::read_link(&path).expect("readlink"))
            } else if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else {
                format!("{:?}", std::fs::read(&path).expect("read"))
            };
            out.insert(path, format!("{:o} {what}", meta.permissions().mode()));
        }
    }
    out
}

fn fresh(capacity: u32) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("temp dir");
    let path = root.path().join("store");
    drop(FileManager::create(&path, capacity).expect("create"));
    (root, path)
}

/// Asserts `result` failed with the variant `check` accepts and that its message names `path`.
fn assert_err<T: std::fmt::Debug>(
    result: lock_file::Result<T>,
    check: impl Fn(&Error) -> bool,
    path: &Path,
) {
    match result {
        Err(e) => {
            assert!(check(&e), "unexpected error variant: {e:?}");
            let text = e.to_string();
            assert!(
                text.contains(&path.display().to_string()),
                "{text:?} does not name {}",
                path.display()
            );
        }
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

fn incompatible(e: &Error) -> bool {
    matches!(e, Error::Incompatible { .. })
}

fn corrupt(e: &Error) -> bool {
    matches!(e, Error::Corrupt { .. })
}

#[test]
fn a_directory_that_is_not_a_store_is_incompatible_and_left_alone() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = root.path().join("photos");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("table"), b"holiday").expect("write");
    std::fs::create_dir(dir.join("locks")).expect("mkdir");
    let before = snapshot(root.path());
    assert_err(FileManager::open(&dir), incompatible, &dir);
    assert_err(
        StoreOptions::new(8).open_or_create(&dir),
        incompatible,
        &dir,
    );
    assert_err(FileManager::remove(&dir), incompatible, &dir);
    assert!(matches!(
        FileManager::create(&dir, 8),
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(
        snapshot(root.path()),
        before,
        "a failed call changed the directory"
    );
}

#[test]
fn a_plain_file_is_not_a_store() {
    let root = tempfile::tempdir().expect("temp dir");
    let file = root.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    assert_err(FileManager::open(&file), incompatible, &file);
    assert_err(FileManager::remove(&file), incompatible, &file);
    assert_eq!(std::fs::read(&file).expect("read"), b"x");
}

#[test]
fn a_missing_store_is_not_found() {
    let root = tempfile::tempdir().expect("temp dir");
    let path = root.path().join("nothing");
    assert_err(
        FileManager::open(&path),
        |e| matches!(e, Error::NotFound { .. }),
        &path,
    );
    assert!(matches!(
        FileManager::remove(&path),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn another_format_version_is_incompatible_and_left_alone() {
    let (root, path) = fresh(8);
    let marker = path.join(lock_file::MARKER_FILE);
    std::fs::write(
        &marker,
        "lockyard lock-file store\nformat 4\ncapacity 8\nshiny new field\n",
    )
    .expect("write");
    let before = snapshot(root.path());
    match FileManager::open(&path) {
        Err(Error::Incompatible {
            what,
            expected,
            found,
        }) => {
            assert!(what.contains(&path.display().to_string()), "{what}");
            assert_eq!((expected.as_str(), found.as_str()), ("3", "4"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(snapshot(root.path()), before);
    // A store of another version is still a store: it may be removed.
    FileManager::remove(&path).expect("remove");
    assert!(!path.exists());
}

/// A store made by the first-wave code (format 1: pids in the owner records, no waiter files)
/// is refused with `Incompatible`, never misread, and may be removed.
#[test]
fn a_store_of_an_earlier_format_is_incompatible_and_removable() {
    // 1: the first wave's (pids where owner numbers now are); 2: two-word owner records,
    // without the holder's pid namespace.
    for version in ["1", "2"] {
        let (root, path) = fresh(8);
        let marker = path.join(lock_file::MARKER_FILE);
        std::fs::write(
            &marker,
            format!("lockyard lock-file store\nformat {version}\ncapacity 8\nowner-death on\n"),
        )
        .expect("write");
        let before = snapshot(root.path());
        match FileManager::open(&path) {
            Err(Error::Incompatible {
                expected, found, ..
            }) => assert_eq!((expected.as_str(), found.as_str()), ("3", version)),
            other => panic!("format {version}: {other:?}"),
        }
        assert_eq!(snapshot(root.path()), before);
        FileManager::remove(&path).expect("remove");
    }
}

#[test]
fn damaged_tables_are_corrupt_and_left_alone() {
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 5] = [
        ("truncated", |t| {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(t)
                .expect("open");
            f.set_len(100).expect("truncate");
        }),
        ("grown", |t| {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(t)
                .expect("open");
            let len = f.metadata().expect("stat").len();
            f.set_len(len + 8).expect("grow");
        }),
        ("garbage header", |t| {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(t)
                .expect("open");
            f.write_all_at(&[0xff; 16], 16).expect("write");
        }),
        ("symlink", |t| {
            let elsewhere = t.with_file_name("elsewhere");
            std::fs::rename(t, &elsewhere).expect("rename");
            std::os::unix::fs::symlink(&elsewhere, t).expect("symlink");
        }),
        ("directory", |t| {
            std::fs::remove_file(t).expect("rm");
            std::fs::create_dir(t).expect("mkdir");
        }),
    ];
    for (name, damage) in damages {
        let (root, path) = fresh(100);
        let table = path.join("table");
        damage(&table);
        let before = snapshot(root.path());
        match FileManager::open(&path) {
            Err(e @ Error::Corrupt { .. }) => {
                assert!(
                    e.to_string().contains(&table.display().to_string()),
                    "{name}: {e}"
                );
            }
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(snapshot(root.path()), before, "{name}");
    }
}

#[test]
fn a_marker_that_disagrees_with_the_table_is_corrupt() {
    let (_root, path) = fresh(64);
    let marker = path.join(lock_file::MARKER_FILE);
    // Same capacity, other owner-death flag: the table header disagrees.
    std::fs::write(
        &marker,
        "lockyard lock-file store\nformat 3\ncapacity 64\nowner-death off\n",
    )
    .expect("write");
    assert_err(FileManager::open(&path), corrupt, &path);
    // Another capacity: the table has the wrong size.
    std::fs::write(
        &marker,
        "lockyard lock-file store\nformat 3\ncapacity 65\nowner-death on\n",
    )
    .expect("write");
    assert_err(FileManager::open(&path), corrupt, &path);
}

#[test]
fn a_symlinked_marker_or_locks_dir_is_corrupt() {
    let (root, path) = fresh(4);
    let marker = path.join(lock_file::MARKER_FILE);
    let copy = root.path().join("marker-copy");
    std::fs::copy(&marker, &copy).expect("copy");
    std::fs::remove_file(&marker).expect("rm");
    std::os::unix::fs::symlink(&copy, &marker).expect("symlink");
    assert_err(FileManager::open(&path), corrupt, &marker);
    std::fs::remove_file(&marker).expect("rm");
    std::fs::copy(&copy, &marker).expect("restore");
    FileManager::open(&path).expect("restored store opens");

    let locks = path.join("locks");
    let moved = root.path().join("locks-elsewhere");
    std::fs::rename(&locks, &moved).expect("move locks");
    std::os::unix::fs::symlink(&moved, &locks).expect("symlink");
    assert_err(FileManager::open(&path), corrupt, &locks);
    std::fs::remove_file(&locks).expect("rm");
    assert_err(FileManager::open(&path), corrupt, &locks);
}

#[test]
fn a_lock_file_replaced_by_a_directory_a_symlink_or_nothing_is_corrupt() {
    let (root, path) = fresh(8);
    let manager = FileManager::open(&path).expect("open");
    let outside = root.path().join("outside");
    std::fs::write(&outside, b"keep me").expect("write");
    let lock = |id: u32| path.join("locks").join(id.to_string());

    std::fs::remove_file(lock(1)).expect("rm");
    std::fs::create_dir(lock(1)).expect("mkdir");
    std::fs::remove_file(lock(2)).expect("rm");
    std::os::unix::fs::symlink(&outside, lock(2)).expect("symlink");
    std::fs::remove_file(lock(3)).expect("rm");
    std::fs::remove_file(lock(4)).expect("rm");
    std::os::unix::fs::symlink(root.path().join("dangling"), lock(4)).expect("symlink");

    for id in 1..=4 {
        assert_err(manager.retrieve(LockId(id)), corrupt, &lock(id));
        assert_err(
            manager.allocate_and_retrieve(LockId(id)),
            corrupt,
            &lock(id),
        );
    }
    // The refused allocate_and_retrieve calls allocated nothing: the four healthy ids are
    // exactly what allocation can still hand out. Healthy ids still work.
    assert_eq!(manager.available().expect("available"), Some(4));
    assert!(matches!(
        manager.retrieve(LockId(0)).expect("retrieve").free(),
        Err(Error::NotAllocated(LockId(0)))
    ));
    let ok = manager.retrieve(LockId(5)).expect("retrieve");
    let _ = ok.lock().expect("lock");
    ok.unlock().expect("unlock");
    assert_eq!(std::fs::read(&outside).expect("read"), b"keep me");
}

/// Damage to one lock's file costs that lock only: allocation hands out every healthy id
/// around it, `available` counts exactly what allocation can hand out, operations on the
/// damaged id are `Corrupt` naming its file, and a repaired file makes its id allocatable again.
#[test]
fn a_damaged_lock_file_costs_only_its_own_lock() {
    let (_root, path) = fresh(8);
    let manager = FileManager::open(&path).expect("open");
    let lock = |id: u32| path.join("locks").join(id.to_string());
    std::fs::remove_file(lock(0)).expect("rm");
    std::fs::remove_file(lock(3)).expect("rm");
    std::fs::create_dir(lock(3)).expect("mkdir");

    assert_eq!(manager.available().expect("available"), Some(6));
    let got: Vec<_> = (0..6)
        .map(|_| manager.allocate().expect("allocate a healthy id"))
        .collect();
    let ids: Vec<u32> = got.iter().map(|l| l.id().get()).collect();
    assert_eq!(ids, [1, 2, 4, 5, 6, 7]);
    assert_eq!(manager.available().expect("available"), Some(0));
    // Only damaged ids are free: allocation names the lowest one's file.
    assert_err(manager.allocate(), corrupt, &lock(0));
    for id in [0, 3] {
        assert_err(manager.retrieve(LockId(id)), corrupt, &lock(id));
        assert_err(
            manager.allocate_and_retrieve(LockId(id)),
            corrupt,
            &lock(id),
        );
    }
    // The healthy locks work.
    let _ = got[2].lock().expect("lock 4");
    got[2].unlock().expect("unlock 4");
    // Nothing was lost: the repaired id is free and allocatable again.
    std::fs::remove_dir(lock(3)).expect("rmdir");
    std::fs::write(lock(3), b"").expect("repair");
    assert_eq!(manager.available().expect("available"), Some(1));
    assert_eq!(manager.allocate().expect("allocate").id(), LockId(3));
    assert_eq!(manager.available().expect("available"), Some(0));
}

/// Processes allocating at once from a store with damaged lock files share out every healthy id,
/// each exactly once, and all of them see the same `available` count.
#[test]
fn processes_allocate_every_healthy_id_around_damaged_lock_files() {
    let (root, path) = fresh(16);
    let lock = |id: u32| path.join("locks").join(id.to_string());
    std::fs::remove_file(lock(3)).expect("rm");
    std::fs::create_dir(lock(3)).expect("mkdir");
    let outside = root.path().join("outside");
    std::fs::write(&outside, b"keep me").expect("write");
    std::fs::remove_file(lock(9)).expect("rm");
    std::os::unix::fs::symlink(&outside, lock(9)).expect("symlink");

    let mut children: Vec<_> = (0..2)
        .map(|_| common::spawn("allocate-all", &path, ""))
        .collect();
    for child in &mut children {
        assert_eq!(common::line(child), "available 14");
    }
    for child in &mut children {
        child.send("go").expect("send go");
    }
    let mut ids = Vec::new();
    for child in &mut children {
        loop {
            let line = common::line(child);
            if let Some(id) = line.strip_prefix("id ") {
                ids.push(id.parse::<u32>().expect("an id"));
                continue;
            }
            let end = line.strip_prefix("end ").expect("id or end");
            assert!(end.starts_with("err Corrupt"), "{end}");
            assert!(end.contains(&lock(3).display().to_string()), "{end}");
            break;
        }
        assert_eq!(common::line(child), "available 0");
    }
    ids.sort_unstable();
    let healthy: Vec<u32> = (0..16).filter(|id| ![3, 9].contains(id)).collect();
    assert_eq!(ids, healthy, "every healthy id exactly once");
    for mut child in children {
        child.finish(common::LINE_TIMEOUT).expect("child exits");
    }
    let manager = FileManager::open(&path).expect("open");
    assert_eq!(manager.available().expect("available"), Some(0));
    assert_err(manager.retrieve(LockId(9)), corrupt, &lock(9));
    assert_eq!(std::fs::read(&outside).expect("read"), b"keep me");
}

#[test]
fn ids_out_of_range_are_refused_everywhere() {
    let (_root, path) = fresh(10);
    let manager = FileManager::open(&path).expect("open");
    for id in [10, 11, u32::MAX] {
        assert!(matches!(
            manager.retrieve(LockId(id)),
            Err(Error::OutOfRange { capacity: 10, .. })
        ));
        assert!(matches!(
            manager.allocate_and_retrieve(LockId(id)),
            Err(Error::OutOfRange { capacity: 10, .. })
        ));
    }
    assert_eq!(manager.available().expect("available"), Some(10));
}

#[test]
fn bad_capacities_and_paths_are_invalid_arguments() {
    let root = tempfile::tempdir().expect("temp dir");
    for capacity in [0, MAX_CAPACITY + 1, u32::MAX] {
        assert!(matches!(
            FileManager::create(root.path().join("s"), capacity),
            Err(Error::InvalidArgument { .. })
        ));
    }
    let long = root.path().join("x".repeat(250));
    for path in [root.path().join(".."), long, PathBuf::from("/")] {
        assert!(
            matches!(
                FileManager::create(&path, 4),
                Err(Error::InvalidArgument { .. })
            ),
            "{}",
            path.display()
        );
    }
    let nul = root.path().join("a\0b").join("store");
    assert!(matches!(
        FileManager::create(&nul, 4),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        FileManager::open(&nul),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        FileManager::remove(&nul),
        Err(Error::InvalidArgument { .. })
    ));
    let missing_parent = root.path().join("no/such/parent/store");
    assert_err(
        FileManager::create(&missing_parent, 4),
        |e| matches!(e, Error::Io { .. }),
        &root.path().join("no/such/parent"),
    );
    assert_eq!(
        std::fs::read_dir(root.path()).expect("read_dir").count(),
        0,
        "failed creates left something behind"
    );
}

#[test]
fn concurrent_creates_have_exactly_one_winner_and_leave_no_temporaries() {
    let root = tempfile::tempdir().expect("temp dir");
    let path = root.path().join("store");
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| FileManager::create(&path, 300).map(drop)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(Error::AlreadyExists { .. })))
    );
    let names: Vec<_> = std::fs::read_dir(root.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["store"]);
    FileManager::open(&path).expect("open");
    FileManager::remove(&path).expect("remove");
    assert_eq!(std::fs::read_dir(root.path()).expect("read_dir").count(), 0);
}

/// Tests run as root here, and root ignores permission bits, so the check runs in a child
/// process that drops to `nobody` (uid/gid 65534); as an ordinary user it runs in-process.
#[test]
fn missing_permissions_are_io_errors_naming_the_path() {
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = root.path().join("store");
    drop(FileManager::create(&path, 4).expect("create"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let before = snapshot(root.path());
    let is_root = rustix::process::geteuid().is_root();
    if is_root {
        // Nobody may not enter the store at all.
        let mut child = common::spawn_with("open", &path, "", |c| {
            std::os::unix::process::CommandExt::uid(c, 65534);
            std::os::unix::process::CommandExt::gid(c, 65534);
        });
        let line = common::line(&mut child);
        assert!(line.starts_with("err Io PermissionDenied"), "{line}");
        assert!(line.contains(&path.display().to_string()), "{line}");
        // Nobody may enter, but not write the table.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut child = common::spawn_with("open", &path, "", |c| {
            std::os::unix::process::CommandExt::uid(c, 65534);
            std::os::unix::process::CommandExt::gid(c, 65534);
        });
        let line = common::line(&mut child);
        assert!(line.starts_with("err Io PermissionDenied"), "{line}");
        assert!(
            line.contains(&path.join("table").display().to_string()),
            "{line}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    } else {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).expect("chmod");
        assert_err(
            FileManager::open(&path),
            |e| matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied),
            &path,
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    assert_eq!(snapshot(root.path()), before);
}

#[test]
fn remove_then_open_is_not_found_and_create_works_again() {
    let (_root, path) = fresh(4);
    let manager = FileManager::open(&path).expect("open");
    let lock = manager.allocate().expect("allocate");
    FileManager::remove(&path).expect("remove");
    assert!(matches!(
        FileManager::open(&path),
        Err(Error::NotFound { .. })
    ));
    // The old manager keeps working on the removed files.
    let _ = lock.lock().expect("lock");
    lock.unlock().expect("unlock");
    let (fresh, created) = FileManager::open_or_create(&path, 4).expect("recreate");
    assert!(created);
    assert_eq!(fresh.available().expect("available"), Some(4));
}

/// The store path itself must not be a symbolic link, for every entry point alike (files inside
/// the store are never followed either); symlinks higher up the path are followed.
#[test]
fn a_symlinked_store_path_is_refused_by_open_and_remove_alike() {
    let (root, path) = fresh(8);
    let link = root.path().join("link");
    std::os::unix::fs::symlink(&path, &link).expect("symlink");
    let dangling = root.path().join("dangling");
    std::os::unix::fs::symlink(root.path().join("nothing"), &dangling).expect("symlink");
    let before = snapshot(root.path());
    let with_slash = PathBuf::from(format!("{}/", link.display()));
    for (at, named) in [(&link, &link), (&dangling, &dangling), (&with_slash, &link)] {
        assert_err(FileManager::open(at), incompatible, named);
        assert_err(StoreOptions::new(8).open_or_create(at), incompatible, named);
        assert_err(FileManager::remove(at), incompatible, named);
        assert!(matches!(
            FileManager::create(at, 8),
            Err(Error::AlreadyExists { .. })
        ));
    }
    assert_eq!(
        snapshot(root.path()),
        before,
        "a refused call changed something"
    );
    // A symlink above the store is an ordinary way to reach it.
    let alias = root.path().join("alias");
    std::os::unix::fs::symlink(root.path(), &alias).expect("symlink");
    let through = alias.join("store");
    drop(FileManager::open(&through).expect("open through a symlinked parent"));
    FileManager::remove(&through).expect("remove through a symlinked parent");
    assert!(!path.exists());
}

/// A marker is identified by the same exact bytes everywhere: lines end with LF alone, so a
/// marker whose magic line ends in CRLF is not a store to open, open_or_create or remove, and
/// CRLF further down makes a store of ours that open refuses as damaged and remove deletes.
#[test]
fn a_crlf_marker_is_judged_alike_by_open_and_remove() {
    let (root, path) = fresh(8);
    let marker = path.join(lock_file::MARKER_FILE);
    std::fs::write(
        &marker,
        "lockyard lock-file store\r\nformat 3\r\ncapacity 8\r\nowner-death on\r\n",
    )
    .expect("write");
    let before = snapshot(root.path());
    assert_err(FileManager::open(&path), incompatible, &path);
    assert_err(
        StoreOptions::new(8).open_or_create(&path),
        incompatible,
        &path,
    );
    assert_err(FileManager::remove(&path), incompatible, &path);
    assert_eq!(
        snapshot(root.path()),
        before,
        "a refused call changed something"
    );

    std::fs::write(
        &marker,
        "lockyard lock-file store\nformat 3\r\ncapacity 8\r\nowner-death on\r\n",
    )
    .expect("write");
    assert_err(FileManager::open(&path), corrupt, &marker);
    FileManager::remove(&path).expect("remove a damaged store of ours");
    assert!(!path.exists());
}

/// `held` looks past a damaged lock file instead of failing for the whole table: without owner
/// records such a lock cannot be held through its path and is not listed; with them, a claimed
/// record is listed as it stands (nothing can probe the lock to contradict it).
#[test]
fn held_reports_around_damaged_lock_files() {
    let root = tempfile::tempdir().expect("temp dir");
    let bare = root.path().join("bare");
    drop(
        StoreOptions::new(4)
            .owner_death(false)
            .create(&bare)
            .expect("create"),
    );
    std::fs::remove_file(bare.join("locks").join("1")).expect("rm");
    let mut holder = common::spawn("hold", &bare, "2");
    assert_eq!(common::line(&mut holder), "locked clean");
    let manager = FileManager::open(&bare).expect("open");
    let held: Vec<_> = manager.held().expect("held").iter().map(|h| h.id).collect();
    assert_eq!(held, [LockId(2)]);
    holder.finish(common::LINE_TIMEOUT).expect("holder exits");

    let recorded = root.path().join("recorded");
    drop(FileManager::create(&recorded, 4).expect("create"));
    let mut holder = common::spawn("hold", &recorded, "3");
    assert_eq!(common::line(&mut holder), "locked clean");
    // The holder keeps its lock on the old file; the path now leads to a directory.
    let lock3 = recorded.join("locks").join("3");
    std::fs::remove_file(&lock3).expect("rm");
    std::fs::create_dir(&lock3).expect("mkdir");
    let manager = FileManager::open(&recorded).expect("open");
    let held = manager.held().expect("held");
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].id, LockId(3));
    let pid = held[0].holder.as_ref().and_then(|h| h.pid);
    assert_eq!(pid, Some(holder.pid()));
    holder.finish(common::LINE_TIMEOUT).expect("holder exits");
}

/// A summary word that says "full" over leaves with free ids hides none of them: `allocate`
/// hands out every id `available` counts, lowest first, and only then is `Exhausted`.
#[test]
fn a_garbage_summary_word_hides_no_free_id() {
    use std::os::unix::fs::FileExt;
    let (_root, path) = fresh(70);
    // The table's header is 8 words, so its one summary word is bytes 64..72.
    let table = std::fs::OpenOptions::new()
        .write(true)
        .open(path.join("table"))
        .expect("open table");
    table.write_all_at(&[0xFF; 8], 64).expect("scribble");
    let manager = FileManager::open(&path).expect("open");
    assert_eq!(manager.available().expect("available"), Some(70));
    for want in 0..70 {
        let lock = manager.allocate().expect("allocate past a garbage summary");
        assert_eq!(lock.id(), LockId(want));
    }
    assert!(matches!(
        manager.allocate(),
        Err(Error::Exhausted { capacity: 70 })
    ));
    assert_eq!(manager.available().expect("available"), Some(0));
    // Scribbled again over a full table with one id freed: that id is found.
    manager
        .retrieve(LockId(66))
        .expect("retrieve")
        .free()
        .expect("free");
    table.write_all_at(&[0xFF; 8], 64).expect("scribble");
    assert_eq!(manager.allocate().expect("allocate").id(), LockId(66));
}

/// An `open_or_create` that fails on an existing store (another capacity: `Incompatible`; a
/// capacity no store can have: `InvalidArgument`, as `create` says) writes nothing: the owner
/// counter in the table stays as it was.
#[test]
fn a_failed_open_or_create_writes_nothing() {
    let (root, path) = fresh(8);
    let before = snapshot(root.path());
    for capacity in [7, 9] {
        assert_err(
            FileManager::open_or_create(&path, capacity),
            incompatible,
            &path,
        );
        assert_err(
            <FileManager as lock_file::Store>::open_or_create(&path, capacity),
            incompatible,
            &path,
        );
        assert_err(
            StoreOptions::new(capacity)
                .owner_death(false)
                .open_or_create(&path),
            incompatible,
            &path,
        );
    }
    assert_eq!(
        snapshot(root.path()),
        before,
        "an open_or_create of another capacity changed the store"
    );
    for capacity in [0, MAX_CAPACITY + 1, u32::MAX] {
        assert!(
            matches!(
                FileManager::open_or_create(&path, capacity),
                Err(Error::InvalidArgument { .. })
            ),
            "capacity {capacity}"
        );
        let missing = root.path().join("missing");
        assert!(
            matches!(
                FileManager::open_or_create(&missing, capacity),
                Err(Error::InvalidArgument { .. })
            ),
            "capacity {capacity}"
        );
    }
    assert_eq!(
        snapshot(root.path()),
        before,
        "a failed open_or_create changed the store"
    );
    let (_, created) = FileManager::open_or_create(&path, 8).expect("the right capacity");
    assert!(!created);
}

/// Gives `path` and everything below it to `uid`/`gid` (not following symlinks).
fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("chown");
    if std::fs::symlink_metadata(path).expect("lstat").is_dir() {
        for entry in std::fs::read_dir(path).expect("read_dir") {
            chown_tree(&entry.expect("entry").path(), uid, gid);
        }
    }
}

/// A `remove` whose deletion fails midway (here `locks/` may not be written) returns the
/// deletion's error and puts what is left back at the store's name: the store stays reachable
/// (open reports it as it now is), no renamed-away directory stays hidden in the parent, and
/// the remove succeeds once the cause is fixed.
///
/// Root ignores permission bits, so when the tests run as root the remove runs in a child that
/// drops to `nobody` (uid/gid 65534), who is given the store and its parent; as an ordinary
/// user it runs in-process.
#[test]
fn a_remove_that_fails_midway_puts_the_store_back() {
    const NOBODY: u32 = 65534;
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = root.path().join("store");
    drop(FileManager::create(&path, 4).expect("create"));
    let locks = path.join("locks");
    let is_root = rustix::process::geteuid().is_root();
    if is_root {
        chown_tree(root.path(), NOBODY, NOBODY);
    }
    std::fs::set_permissions(&locks, std::fs::Permissions::from_mode(0o500)).expect("chmod");
    let said = if is_root {
        let mut child = common::spawn_with("remove", &path, "", |c| {
            std::os::unix::process::CommandExt::uid(c, NOBODY);
            std::os::unix::process::CommandExt::gid(c, NOBODY);
        });
        common::line(&mut child)
    } else {
        match FileManager::remove(&path) {
            Ok(()) => "removed".to_string(),
            Err(e) => match &e {
                Error::Io { source, .. } => format!("err Io {:?} | {e}", source.kind()),
                other => format!("err {other:?}"),
            },
        }
    };
    let removed_away = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n != "store")
            .collect()
    };
    let leftovers = removed_away(root.path());
    // Let the clean-up (and the retry below) delete everything, whatever is asserted next.
    for dir in std::iter::once(path.clone()).chain(leftovers.iter().map(|n| root.path().join(n))) {
        let _ = std::fs::set_permissions(dir.join("locks"), std::fs::Permissions::from_mode(0o700));
    }
    // The deletion's error, naming what could not be deleted where it now is.
    assert!(said.starts_with("err Io PermissionDenied"), "{said}");
    assert!(
        said.contains(&format!("remove {}:", locks.display())),
        "{said}"
    );
    assert_eq!(leftovers, Vec::<String>::new(), "left hidden in the parent");
    assert!(path.join("lockyard-store").is_file(), "the marker is kept");
    // Deletion stopped inside `locks/` (entries are deleted in name order, the marker last), after
    // `deadlock` had gone: open says so.
    assert_err(FileManager::open(&path), corrupt, &path.join("deadlock"));
    FileManager::remove(&path).expect("remove again once the cause is fixed");
    assert!(!path.exists());
    assert_eq!(removed_away(root.path()), Vec::<String>::new());
}

/// The `clients` file (format 3) must be a regular file: missing, a directory or a symlink, the
/// store is `Corrupt` naming it, and nothing changes. Garbage in it lists nobody: a manager
/// opens, takes an entry and is listed by the next.
#[test]
fn a_damaged_clients_file_is_corrupt_and_garbage_in_it_lists_nobody() {
    let (root, path) = fresh(4);
    let clients = path.join("clients");
    std::fs::remove_file(&clients).expect("remove clients");
    let before = snapshot(root.path());
    assert_err(FileManager::open(&path), corrupt, &clients);
    std::fs::create_dir(&clients).expect("a directory instead");
    assert_err(FileManager::open(&path), corrupt, &clients);
    std::fs::remove_dir(&clients).expect("rmdir");
    std::os::unix::fs::symlink(path.join("deadlock"), &clients).expect("a symlink instead");
    assert_err(FileManager::open(&path), corrupt, &clients);
    std::fs::remove_file(&clients).expect("remove symlink");
    assert_eq!(
        snapshot(root.path()),
        before,
        "a refused open changed something"
    );

    std::fs::write(&clients, vec![0x5au8; 4096]).expect("garbage");
    let first = FileManager::open(&path).expect("open over garbage");
    assert_eq!(first.clients().expect("clients"), vec![]);
    let second = FileManager::open(&path).expect("open");
    let listed = first.clients().expect("clients");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].owner, Some(second.owner()));
    assert_eq!(listed[0].pid, Some(std::process::id()));
}
