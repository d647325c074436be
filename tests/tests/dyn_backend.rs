//! A backend picked at run time from configuration, through `Box<DynManager>` (as Podman does).

use lock_api::{Acquired, BoxedManager, DynManager, Error, LockId, Locker};

/// Builds the manager a configuration names, as a trait object. `place` is where a persistent
/// backend keeps its store (a shm name, a directory).
fn from_config(backend: &str, place: &str, capacity: u32) -> Result<Box<DynManager>, Error> {
    match backend {
        "mem" => Ok(BoxedManager::boxed(lock_mem::MemManager::new(capacity)?)),
        "shm" => Ok(BoxedManager::boxed(lock_shm::ShmManager::create(
            place, capacity,
        )?)),
        "file" => Ok(BoxedManager::boxed(lock_file::FileManager::create(
            place, capacity,
        )?)),
        other => Err(Error::invalid(format!("unknown lock backend {other:?}"))),
    }
}

/// Uses any backend through the object-safe traits only.
fn exercise(manager: &DynManager) -> Result<(), Error> {
    let lock = manager.allocate()?;
    assert_eq!(lock.id(), LockId(0));
    {
        let guard = lock.guard()?;
        assert_eq!(guard.acquired(), Acquired::Clean);
        assert_eq!(manager.held()?.len(), 1);
    }
    assert!(manager.held()?.is_empty());
    assert!(matches!(lock.unlock(), Err(Error::NotHeld(LockId(0)))));
    let boxed: Box<dyn Locker> = manager.retrieve(LockId(1))?;
    assert!(boxed.try_lock()?.is_some());
    boxed.unlock()?;
    lock.free()?;
    assert!(matches!(lock.free(), Err(Error::NotAllocated(LockId(0)))));
    assert_eq!(manager.available()?, manager.capacity());
    Ok(())
}

#[test]
fn backends_chosen_at_run_time_work_through_trait_objects() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let shm_name = format!("lockyard-dyn-test-{}", std::process::id());
    let store = dir.path().join("store");
    let configs = [
        ("mem", ""),
        ("shm", shm_name.as_str()),
        ("file", store.to_str().expect("utf-8 temp path")),
    ];
    for (name, place) in configs {
        let manager = from_config(name, place, 8).expect("build the configured backend");
        let outcome = exercise(&*manager);
        drop(manager);
        if name == "shm" {
            lock_shm::ShmManager::remove(&shm_name).expect("remove the test segment");
        }
        outcome
            .unwrap_or_else(|e| panic!("{name}: the contract fails through Box<DynManager>: {e}"));
    }
}

#[test]
fn an_unknown_backend_is_a_typed_error() {
    assert!(matches!(
        from_config("carrier-pigeon", "", 8),
        Err(Error::InvalidArgument { .. })
    ));
}
