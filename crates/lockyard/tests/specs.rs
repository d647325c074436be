//! Bad specs through the umbrella crate: each is a typed error naming the problem, and nothing
//! is created. And `remove_unused` by spec.

use lockyard::Error;

fn invalid(spec: &str) -> String {
    match lockyard::open_or_create(spec, 4) {
        Err(Error::InvalidArgument { what }) => what,
        Err(other) => panic!("{spec:?}: expected InvalidArgument, got {other:?}"),
        Ok(_) => panic!("{spec:?}: opened"),
    }
}

#[test]
fn every_malformed_spec_is_invalid_argument_naming_the_problem() {
    let cases = [
        ("shm:", "empty shm name"),
        ("mem:", "empty mem name"),
        ("file:", "empty path"),
        ("dir:", "empty path"),
        ("shm:a/b", "'/'"),
        ("file:/tmp/../etc", "'..'"),
        ("dir:../up", "'..'"),
        ("shm:a\0b", "NUL"),
        ("nfs:/export", "unknown scheme"),
        ("just-a-name", "no scheme"),
        ("etcd:h:1/a/b", "etcd://"),
        ("etcd://h:1//a/b", "relative etcd path"),
        ("etcd://h:1/only-table", "prefix and a table"),
        ("etcd://h:99999/a/b", "bad port"),
        ("etcd://h:0/a/b", "bad port"),
        ("etcd://h/a/b", "no port"),
        ("etcd://h:1/a/b?ttl=fast", "bad ttl"),
        ("etcd://h:1/a/b?ttl=0ms", "bad ttl"),
    ];
    for (spec, names) in cases {
        let what = invalid(spec);
        assert!(
            what.contains(names),
            "{spec:?}: {what:?} does not name {names:?}"
        );
    }
}

#[cfg(not(feature = "etcd"))]
#[test]
fn a_backend_left_out_of_the_build_is_unsupported_naming_its_feature() {
    match lockyard::open("etcd://127.0.0.1:2379/lockyard/t") {
        Err(Error::Unsupported(what)) => assert!(what.contains("feature `etcd`"), "{what}"),
        other => panic!("expected Unsupported, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn zero_capacity_is_invalid_and_creates_nothing() {
    let spec = format!("mem:zero-{}", std::process::id());
    assert!(matches!(
        lockyard::create(&spec, 0),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(lockyard::open(&spec), Err(Error::NotFound { .. })));
}

#[test]
fn the_lifecycle_through_specs() {
    let spec = format!("mem:lifecycle-{}", std::process::id());
    assert!(matches!(lockyard::open(&spec), Err(Error::NotFound { .. })));
    let a = lockyard::create(&spec, 8).expect("create");
    assert!(matches!(
        lockyard::create(&spec, 8),
        Err(Error::AlreadyExists { .. })
    ));
    let b = lockyard::open(&spec).expect("open");
    assert_eq!(b.capacity(), Some(8));
    let (_, created) = lockyard::open_or_create(&spec, 8).expect("open_or_create");
    assert!(!created);
    assert!(matches!(
        lockyard::open_or_create(&spec, 9),
        Err(Error::Incompatible { .. })
    ));
    let lock = a.allocate().expect("allocate");
    assert_eq!(b.available().expect("available"), Some(7));
    lock.free().expect("free");
    lockyard::remove(&spec).expect("remove");
    assert!(matches!(
        lockyard::remove(&spec),
        Err(Error::NotFound { .. })
    ));
}

/// `remove_unused` by spec: a shm or file store with a manager open is `InUse` and stays, one
/// without is removed; a backend that cannot tell whether a store is open (dirlock) says
/// `Unsupported` and removes nothing.
#[test]
fn remove_unused_by_spec() {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let shm = format!("shm:lockyard-umbrella-unused-{}", std::process::id());
    let _ = lockyard::remove(&shm);
    let file = format!("file:{}", scratch.path().join("store").display());
    for spec in [&shm, &file] {
        let manager = lockyard::create(spec, 4).expect("create");
        let refused = lockyard::remove_unused(spec);
        assert!(
            matches!(refused, Err(Error::InUse { .. })),
            "{spec} with a manager open: {refused:?}"
        );
        drop(manager);
        lockyard::remove_unused(spec).expect("remove_unused of an unused store");
        assert!(matches!(lockyard::open(spec), Err(Error::NotFound { .. })));
    }

    let dir = format!("dir:{}", scratch.path().join("dirstore").display());
    drop(lockyard::create(&dir, 4).expect("create a dir store"));
    let refused = lockyard::remove_unused(&dir);
    let still_there = lockyard::open(&dir).is_ok();
    lockyard::remove(&dir).expect("remove the dir store");
    assert!(matches!(refused, Err(Error::Unsupported(_))), "{refused:?}");
    assert!(
        still_there,
        "an Unsupported remove_unused removed the store"
    );
}
