//! A backend picked at run time from configuration, through `Box<DynManager>` (as Podman does).

use lock_api::{Acquired, BoxedManager, DynManager, Error, LockId, Locker};

/// Builds the manager a configuration names, as a trait object.
fn from_config(backend: &str, capacity: u32) -> Result<Box<DynManager>, Error> {
    match backend {
        "mem" => Ok(BoxedManager::boxed(lock_mem::MemManager::new(capacity)?)),
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
    for name in ["mem"] {
        let manager = from_config(name, 8).expect("build the configured backend");
        exercise(&*manager).expect("the contract holds through Box<DynManager>");
    }
}

#[test]
fn an_unknown_backend_is_a_typed_error() {
    assert!(matches!(
        from_config("carrier-pigeon", 8),
        Err(Error::InvalidArgument { .. })
    ));
}
