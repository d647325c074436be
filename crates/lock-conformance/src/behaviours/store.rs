//! Store behaviours: create, open, open-or-create races, persistence and damage.

use std::collections::BTreeSet;

use lock_api::{Error, LockId, Locker, Manager};

use super::PROMPTLY;
use crate::child::Role;
use crate::{Backend, Ctx, Damage, Failed, Outcome, ensure, ensure_err};

/// Opening a store that does not exist fails with `NotFound`.
pub fn open_of_missing_store_is_not_found<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    ensure_err!(
        ctx.open(4),
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
    let other = ctx.open(4)?;
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
    let reopened = ctx.open(8)?;
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

/// Opening a store with a capacity other than its own fails with `Incompatible`.
pub fn reopen_with_another_capacity_is_incompatible<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(8)?;
    ensure_err!(
        ctx.open(16),
        Error::Incompatible { .. },
        "open with capacity 16 of a store of 8"
    );
    ensure_err!(
        ctx.open(4),
        Error::Incompatible { .. },
        "open with capacity 4 of a store of 8"
    );
    ensure_err!(
        ctx.open_or_create(16),
        Error::Incompatible { .. },
        "open_or_create with capacity 16 of a store of 8"
    );
    ensure!(
        manager.capacity() == Some(8),
        "a refused open changed the capacity"
    );
    ctx.open(8)?;
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
    let manager = ctx.open(16)?;
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
            ctx.open(8),
            Error::Incompatible { .. } | Error::Corrupt { .. },
            format!("open of a store damaged by {damage:?}")
        );
        ensure_err!(
            ctx.open_or_create(8),
            Error::Incompatible { .. } | Error::Corrupt { .. },
            format!("open_or_create of a store damaged by {damage:?}")
        );
        ctx.backend.remove(ctx.store())?;
    }
    Ok(())
}
