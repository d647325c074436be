//! Store behaviours: create, open, open-or-create races, persistence and damage.

use std::collections::BTreeSet;

use lock_api::{Error, LockId, Locker, Manager, Store, StoreSpec};

use super::PROMPTLY;
use crate::child::Role;
use crate::{Backend, Ctx, Damage, Failed, Outcome, ensure, ensure_err};

/// Opening a store that does not exist fails with `NotFound`.
pub fn open_of_missing_store_is_not_found<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    ensure_err!(
        ctx.open(),
        Error::NotFound { .. },
        "open of a missing store"
    );
    Ok(())
}

/// Creating a store that already exists fails with `AlreadyExists` and leaves it intact.
pub fn create_of_existing_store_already_exists<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let lock = manager.retrieve(LockId(2))?;
    let _ = lock.lock()?;
    ensure_err!(ctx.create(4), Error::AlreadyExists { .. }, "second create");
    let other = ctx.open()?;
    ensure!(
        other.retrieve(LockId(2))?.try_lock()?.is_none(),
        "a refused create reset the store's locks"
    );
    lock.unlock()?;
    Ok(())
}

/// A store outlives the manager that created it: reopened, it has the same capacity and, where
/// the backend keeps allocations, the same allocations.
pub fn store_outlives_its_manager<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(8)?;
    let allocates = manager.available()?.is_some();
    let mut ids = Vec::new();
    if allocates {
        for _ in 0..3 {
            ids.push(manager.allocate()?.id());
        }
    }
    drop(manager);
    let reopened = ctx.open()?;
    ensure!(
        reopened.capacity() == Some(8),
        "reopened capacity {:?}",
        reopened.capacity()
    );
    if allocates {
        ensure!(
            reopened.available()? == Some(5),
            "reopened available() = {:?}",
            reopened.available()?
        );
        for id in ids {
            ensure_err!(
                reopened.allocate_and_retrieve(id),
                Error::AlreadyAllocated(_),
                format!("allocation of {id} lost across reopen")
            );
        }
    }
    let (again, created) = ctx.open_or_create(8)?;
    ensure!(!created, "open_or_create created a store that exists");
    drop(again);
    Ok(())
}

/// `open` reads the capacity from the store; `open_or_create` with another capacity fails with
/// `Incompatible`, with a zero capacity with `InvalidArgument` (a bad argument whatever is
/// stored), and either changes nothing.
pub fn reopen_with_another_capacity_is_incompatible<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(8)?;
    let opened = ctx.open()?;
    ensure!(
        opened.capacity() == Some(8),
        "open of a store of 8 reports capacity {:?}",
        opened.capacity()
    );
    for other in [16, 4] {
        ensure_err!(
            ctx.open_or_create(other),
            Error::Incompatible { .. },
            format!("open_or_create with capacity {other} of a store of 8")
        );
    }
    ensure_err!(
        ctx.open_or_create(0),
        Error::InvalidArgument { .. },
        "open_or_create with capacity 0 of a store of 8"
    );
    ensure!(
        manager.capacity() == Some(8),
        "a refused open changed the capacity"
    );
    ensure!(
        ctx.open()?.capacity() == Some(8),
        "a refused open_or_create changed the stored capacity"
    );
    Ok(())
}

/// `remove` deletes the store (a later `open` is `NotFound`), and removing a missing store is
/// `NotFound`.
pub fn remove_deletes_and_a_second_remove_is_not_found<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    ensure_err!(
        ctx.remove(),
        Error::NotFound { .. },
        "remove of a store never created"
    );
    drop(ctx.create(4)?);
    ctx.remove()?;
    ensure_err!(ctx.open(), Error::NotFound { .. }, "open after remove");
    ensure_err!(ctx.remove(), Error::NotFound { .. }, "second remove");
    let (_, created) = ctx.open_or_create(4)?;
    ensure!(created, "open_or_create after remove did not create");
    Ok(())
}

/// `remove_unused` leaves a store that a manager has open (`InUse`), and removes it once none
/// has (a later `open` is `NotFound`; "none" may take a moment after the last drop, while a
/// child forked by another thread has not yet exec'd); a backend that cannot tell who has a
/// store open says `Unsupported` and removes nothing.
pub fn remove_unused_keeps_a_store_in_use<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    match ctx.remove_unused() {
        Err(Error::Unsupported(_)) => {
            drop(ctx.open()?);
            return Ok(());
        }
        Err(Error::InUse { .. }) => {}
        other => {
            return Err(Failed(format!(
                "remove_unused with a manager open: {other:?}, expected InUse"
            )));
        }
    }
    drop(ctx.open()?);
    drop(manager);
    // A manager's registration lives as long as its open file description, which a fork(2) by
    // another thread of this process (a trial starting a child) shares until that child's
    // exec: for that moment the store is still in use, so `InUse` is retried for a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match ctx.remove_unused() {
            Err(Error::InUse { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => {
                other?;
                break;
            }
        }
    }
    ensure_err!(
        ctx.open(),
        Error::NotFound { .. },
        "open after remove_unused"
    );
    Ok(())
}

/// A spec of another backend's store is refused with `InvalidArgument` by this backend's
/// `Store::address`, before anything is touched.
pub fn a_spec_of_another_backend_is_invalid<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let own = ctx.backend.parsed_spec(ctx.store())?;
    let others = [
        "shm:lockyard-not-mine",
        "mem:lockyard-not-mine",
        "file:/nonexistent/lockyard-not-mine",
        "dir:/nonexistent/lockyard-not-mine",
        "etcd://127.0.0.1:9/lockyard/not-mine",
    ];
    for other in others {
        let spec = StoreSpec::parse(other)?;
        if spec.scheme() == own.scheme() {
            continue;
        }
        ensure_err!(
            B::Manager::address(&spec).map(drop),
            Error::InvalidArgument { .. },
            format!("{} backend given {other}", own.scheme())
        );
    }
    Ok(())
}

/// Processes calling open-or-create on a fresh name at once all succeed, exactly one creates,
/// and all of them share one table.
pub fn concurrent_open_or_create_all_succeed_one_creates<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    const CHILDREN: usize = 6;
    let mut children = (0..CHILDREN)
        .map(|_| ctx.child(Role::OpenOrCreate, 16, 0, 0))
        .collect::<Result<Vec<_>, _>>()?;
    for child in &mut children {
        child.expect("ready", PROMPTLY)?;
    }
    for child in &mut children {
        child.send("go")?;
    }
    let mut created = 0;
    let mut ids = BTreeSet::new();
    let mut holders = 0;
    for child in &mut children {
        match child.next_line(PROMPTLY)?.as_str() {
            "created" => created += 1,
            "opened" => {}
            other => return Err(Failed(format!("open_or_create child said {other:?}"))),
        }
        let proof = child.next_line(PROMPTLY)?;
        if let Some(id) = proof.strip_prefix("id ") {
            ensure!(
                ids.insert(id.to_string()),
                "two processes allocated id {id}: they do not share a table"
            );
        } else if proof == "lock got" {
            holders += 1;
        } else if proof != "lock busy" {
            return Err(Failed(format!("open_or_create child said {proof:?}")));
        }
    }
    ensure!(
        created == 1,
        "{created} processes created the store, want exactly 1"
    );
    ensure!(
        ids.len() == CHILDREN || holders == 1,
        "{} distinct allocations and {holders} holders of lock 0 among {CHILDREN} processes: \
         they do not share one table",
        ids.len()
    );
    let manager = ctx.open()?;
    if manager.available()?.is_some() {
        ensure!(
            manager.available()? == Some(16 - CHILDREN as u32),
            "available() = {:?} after {CHILDREN} allocations",
            manager.available()?
        );
    }
    for child in &mut children {
        child.finish(PROMPTLY)?;
    }
    Ok(())
}

/// A damaged or foreign store (wrong magic, future version, truncated, garbage header) is
/// refused on open and on open-or-create with `Incompatible` or `Corrupt`, never a panic.
pub fn damaged_store_is_refused<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    for damage in Damage::ALL {
        let manager = ctx.create(8)?;
        drop(manager);
        ctx.backend.damage(ctx.store(), damage)?;
        ensure_err!(
            ctx.open(),
            Error::Incompatible { .. } | Error::Corrupt { .. },
            format!("open of a store damaged by {damage:?}")
        );
        ensure_err!(
            ctx.open_or_create(8),
            Error::Incompatible { .. } | Error::Corrupt { .. },
            format!("open_or_create of a store damaged by {damage:?}")
        );
        match ctx.remove() {
            Ok(()) => {}
            Err(Error::Incompatible { .. } | Error::Corrupt { .. }) => {
                ctx.backend.scrub(ctx.store())?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
