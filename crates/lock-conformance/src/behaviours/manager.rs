//! Manager behaviours: allocation, retrieval, freeing and the table's bookkeeping.

use std::collections::BTreeSet;
use std::sync::Mutex;

use lock_api::{Error, LockId, Locker, Manager};

use super::PROMPTLY;
use crate::child::Role;
use crate::{Backend, Ctx, Failed, Outcome, ensure, ensure_err};

/// Allocation hands out distinct in-range ids up to the capacity, then fails with `Exhausted`
/// naming the capacity.
pub fn allocates_distinct_ids_until_exhausted<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(8)?;
    ensure!(
        manager.capacity() == Some(8),
        "capacity() = {:?}, want Some(8)",
        manager.capacity()
    );
    let mut ids = BTreeSet::new();
    let mut kept = Vec::new();
    for _ in 0..8 {
        let lock = manager.allocate()?;
        ensure!(
            lock.id().get() < 8,
            "allocated id {} out of range",
            lock.id()
        );
        ensure!(ids.insert(lock.id()), "id {} allocated twice", lock.id());
        kept.push(lock);
    }
    ensure_err!(
        manager.allocate(),
        Error::Exhausted { capacity: 8 },
        "allocate on a full table"
    );
    Ok(())
}

/// A freed id is handed out again (lowest free first), and never while it is still allocated.
pub fn freed_id_is_reused_and_never_handed_out_twice<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let locks = (0..4)
        .map(|_| manager.allocate())
        .collect::<Result<Vec<_>, _>>()?;
    let ids: Vec<u32> = locks.iter().map(|l| l.id().get()).collect();
    ensure!(
        ids == [0, 1, 2, 3],
        "fresh table allocated {ids:?}, want lowest first [0, 1, 2, 3]"
    );
    locks[2].free()?;
    let again = manager.allocate()?;
    ensure!(
        again.id() == LockId(2),
        "after freeing 2, allocate gave {}",
        again.id()
    );
    ensure_err!(
        manager.allocate(),
        Error::Exhausted { .. },
        "allocate on a full table"
    );
    locks[0].free()?;
    locks[3].free()?;
    let first = manager.allocate()?;
    let second = manager.allocate()?;
    ensure!(
        (first.id(), second.id()) == (LockId(0), LockId(3)),
        "after freeing 0 and 3, allocate gave {} then {}",
        first.id(),
        second.id()
    );
    Ok(())
}

/// Allocations made in one process are seen by another process that opens the same store.
pub fn allocations_are_seen_by_other_processes<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(16)?;
    let mut child = ctx.child(Role::Allocate, 16, 0, 3)?;
    child.expect("ready", PROMPTLY)?;
    child.send("go")?;
    let mut theirs = BTreeSet::new();
    for _ in 0..3 {
        let id: u32 = child
            .expect("id", PROMPTLY)?
            .parse()
            .map_err(|e| Failed(format!("child printed a bad id: {e}")))?;
        theirs.insert(LockId(id));
    }
    child.expect("done", PROMPTLY)?;
    ensure!(
        manager.available()? == Some(13),
        "available() = {:?} after another process allocated 3 of 16",
        manager.available()?
    );
    for id in &theirs {
        ensure_err!(
            manager.allocate_and_retrieve(*id),
            Error::AlreadyAllocated(got) if got == *id,
            format!("allocate_and_retrieve({id}) allocated by another process")
        );
    }
    let mine = manager.allocate()?;
    ensure!(
        !theirs.contains(&mine.id()),
        "allocate gave {} which the child holds",
        mine.id()
    );
    child.finish(PROMPTLY)?;
    Ok(())
}

/// `allocate_and_retrieve` marks a free id allocated, refuses an allocated one with
/// `AlreadyAllocated`, and `allocate` never hands that id out.
pub fn allocate_and_retrieve_marks_and_refuses<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let lock = manager.allocate_and_retrieve(LockId(1))?;
    ensure!(
        lock.id() == LockId(1),
        "allocate_and_retrieve(1) returned id {}",
        lock.id()
    );
    ensure_err!(
        manager.allocate_and_retrieve(LockId(1)),
        Error::AlreadyAllocated(LockId(1)),
        "second allocate_and_retrieve(1)"
    );
    let others: Vec<LockId> = (0..3)
        .map(|_| manager.allocate().map(|l| l.id()))
        .collect::<Result<_, _>>()?;
    ensure!(
        others == [LockId(0), LockId(2), LockId(3)],
        "allocate after allocate_and_retrieve(1) gave {others:?}"
    );
    lock.free()?;
    manager.allocate_and_retrieve(LockId(1))?;
    Ok(())
}

/// Ids at or beyond the capacity (including id == capacity) are refused by `retrieve` with
/// `OutOfRange`.
pub fn out_of_range_ids_are_refused<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    for id in [4, 5, u32::MAX] {
        ensure_err!(
            manager.retrieve(LockId(id)),
            Error::OutOfRange { id: got, capacity: 4 } if got == LockId(id),
            format!("retrieve({id}) on a table of 4")
        );
    }
    manager.retrieve(LockId(3))?;
    Ok(())
}

/// Ids at or beyond the capacity are refused by `allocate_and_retrieve` with `OutOfRange`, and
/// the refusal allocates nothing.
pub fn out_of_range_ids_are_refused_by_allocation<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    for id in [4, u32::MAX] {
        ensure_err!(
            manager.allocate_and_retrieve(LockId(id)),
            Error::OutOfRange { id: got, capacity: 4 } if got == LockId(id),
            format!("allocate_and_retrieve({id}) on a table of 4")
        );
    }
    ensure!(
        manager.available()? == Some(4),
        "a refused allocation changed available()"
    );
    Ok(())
}

/// Freeing an id that is not allocated (twice, or never allocated) fails with `NotAllocated`.
pub fn double_free_is_refused<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let lock = manager.allocate()?;
    let id = lock.id();
    lock.free()?;
    ensure_err!(lock.free(), Error::NotAllocated(got) if got == id, "second free");
    let never = manager.retrieve(LockId(3))?;
    ensure_err!(
        never.free(),
        Error::NotAllocated(LockId(3)),
        "free of a never-allocated id"
    );
    ensure!(
        manager.available()? == Some(4),
        "available() changed by refused frees"
    );
    Ok(())
}

/// `free_all` frees every allocation and leaves held locks held.
pub fn free_all_frees_everything_and_keeps_held_locks_held<B: Backend>(
    ctx: &Ctx<'_, B>,
) -> Outcome {
    let manager = ctx.create(8)?;
    let locks = (0..5)
        .map(|_| manager.allocate())
        .collect::<Result<Vec<_>, _>>()?;
    let _ = locks[1].lock()?;
    manager.free_all()?;
    ensure!(
        manager.available()? == Some(8),
        "available() = {:?} after free_all",
        manager.available()?
    );
    let other = ctx.second_owner(&manager)?;
    let same = other.retrieve(locks[1].id())?;
    ensure!(same.try_lock()?.is_none(), "free_all released a held lock");
    locks[1].unlock()?;
    ensure!(
        same.try_lock()?.is_some(),
        "lock not free after its holder unlocked"
    );
    same.unlock()?;
    let first = manager.allocate()?;
    ensure!(
        first.id() == LockId(0),
        "allocate after free_all gave {}",
        first.id()
    );
    Ok(())
}

/// `available()` is exact after every allocation and free.
pub fn available_is_exact<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(6)?;
    ensure!(
        manager.available()? == Some(6),
        "fresh table: available() = {:?}",
        manager.available()?
    );
    let mut locks = Vec::new();
    for n in 1..=6 {
        locks.push(manager.allocate()?);
        let want = Some(6 - n);
        ensure!(
            manager.available()? == want,
            "after {n} allocations available() = {:?}",
            manager.available()?
        );
    }
    locks[4].free()?;
    ensure!(
        manager.available()? == Some(1),
        "after a free available() = {:?}",
        manager.available()?
    );
    let _ = locks[0].lock()?;
    ensure!(
        manager.available()? == Some(1),
        "locking changed available()"
    );
    locks[0].unlock()?;
    Ok(())
}

/// `held()` lists exactly the held locks in id order, and any holder pid it names is the
/// holder's.
pub fn held_is_exact<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(8)?;
    ensure!(
        manager.held()?.is_empty(),
        "fresh table: held() = {:?}",
        manager.held()?
    );
    let five = manager.retrieve(LockId(5))?;
    let two = manager.retrieve(LockId(2))?;
    let _ = five.lock()?;
    let _ = two.lock()?;
    let held = manager.held()?;
    let ids: Vec<LockId> = held.iter().map(|h| h.id).collect();
    ensure!(
        ids == [LockId(2), LockId(5)],
        "held() ids = {ids:?}, want [2, 5]"
    );
    for entry in &held {
        if let Some(pid) = entry.holder.as_ref().and_then(|h| h.pid) {
            ensure!(
                pid == std::process::id(),
                "held() names pid {pid} for {}",
                entry.id
            );
        }
    }
    five.unlock()?;
    let ids: Vec<LockId> = manager.held()?.iter().map(|h| h.id).collect();
    ensure!(
        ids == [LockId(2)],
        "after unlocking 5, held() ids = {ids:?}"
    );
    two.unlock()?;
    ensure!(
        manager.held()?.is_empty(),
        "all unlocked: held() = {:?}",
        manager.held()?
    );
    Ok(())
}

/// `held()` lists a lock held by another process, and any holder pid it names is that
/// process's.
pub fn held_names_holders_in_other_processes<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(8)?;
    let mut holder = ctx.child(Role::Hold, 8, 6, 0)?;
    holder.expect("locked", PROMPTLY)?;
    let held = manager.held()?;
    let ids: Vec<LockId> = held.iter().map(|h| h.id).collect();
    ensure!(
        ids == [LockId(6)],
        "held() ids = {ids:?} while a child holds 6"
    );
    if let Some(pid) = held[0].holder.as_ref().and_then(|h| h.pid) {
        ensure!(
            pid == holder.pid(),
            "held() names pid {pid}, the holder is {}",
            holder.pid()
        );
    }
    holder.send("unlock")?;
    holder.expect("unlocked", PROMPTLY)?;
    ensure!(
        manager.held()?.is_empty(),
        "held() = {:?} after the child unlocked",
        manager.held()?
    );
    holder.finish(PROMPTLY)?;
    Ok(())
}

/// Threads allocating concurrently from one manager never receive the same id.
pub fn concurrent_allocation_from_threads_never_duplicates<B: Backend>(
    ctx: &Ctx<'_, B>,
) -> Outcome {
    const CAPACITY: u32 = 64;
    let manager = ctx.create(CAPACITY)?;
    let got = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                loop {
                    match manager.allocate() {
                        Ok(lock) => got.lock().map(|mut g| g.push(lock.id())).unwrap_or(()),
                        Err(Error::Exhausted { .. }) => break,
                        Err(e) => {
                            errors
                                .lock()
                                .map(|mut v| v.push(e.to_string()))
                                .unwrap_or(());
                            break;
                        }
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().map_err(|_| Failed("poisoned".into()))?;
    ensure!(errors.is_empty(), "allocation errors: {errors:?}");
    let got = got.into_inner().map_err(|_| Failed("poisoned".into()))?;
    let distinct: BTreeSet<LockId> = got.iter().copied().collect();
    ensure!(
        got.len() == CAPACITY as usize,
        "threads allocated {} ids, want {CAPACITY}",
        got.len()
    );
    ensure!(
        distinct.len() == got.len(),
        "{} ids handed out twice",
        got.len() - distinct.len()
    );
    Ok(())
}

/// Processes allocating concurrently from one store never receive the same id.
pub fn concurrent_allocation_from_processes_never_duplicates<B: Backend>(
    ctx: &Ctx<'_, B>,
) -> Outcome {
    const CAPACITY: u32 = 64;
    let manager = ctx.create(CAPACITY)?;
    let mut children = (0..4)
        .map(|_| ctx.child(Role::Allocate, CAPACITY, 0, CAPACITY))
        .collect::<Result<Vec<_>, _>>()?;
    for child in &mut children {
        child.expect("ready", PROMPTLY)?;
    }
    for child in &mut children {
        child.send("go")?;
    }
    let mut all = Vec::new();
    for child in &mut children {
        loop {
            let line = child.next_line(PROMPTLY)?;
            if line == "done" {
                break;
            }
            let id = line
                .strip_prefix("id ")
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or_else(|| Failed(format!("child said {line:?}")))?;
            all.push(id);
        }
    }
    let distinct: BTreeSet<u32> = all.iter().copied().collect();
    ensure!(
        distinct.len() == all.len(),
        "{} ids handed out twice: {all:?}",
        all.len() - distinct.len()
    );
    ensure!(
        all.len() == CAPACITY as usize,
        "processes allocated {} ids, want {CAPACITY}",
        all.len()
    );
    ensure!(
        manager.available()? == Some(0),
        "available() = {:?} after filling",
        manager.available()?
    );
    for child in &mut children {
        child.finish(PROMPTLY)?;
    }
    Ok(())
}

/// Creating a table of zero locks fails with `InvalidArgument`.
pub fn zero_capacity_is_refused<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    ensure_err!(
        ctx.create(0),
        Error::InvalidArgument { .. },
        "create with capacity 0"
    );
    Ok(())
}
