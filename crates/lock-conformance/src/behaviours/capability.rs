//! Capability behaviours: fencing tokens, leases, holder inspection and lock data.

use lock_api::{Error, LockId, Locker, Manager};

use crate::{Backend, Ctx, Failed, Outcome, ensure, ensure_err};

fn missing(what: &str) -> Failed {
    Failed(format!(
        "backend claims {what} but its locker does not implement it"
    ))
}

/// Every acquisition, by any owner, gets a fencing token greater than every earlier one; a
/// lock that is not held has no token.
pub fn fencing_token_strictly_increases<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let other = ctx.second_owner(&manager)?;
    let mine = manager.retrieve(LockId(0))?;
    let theirs = other.retrieve(LockId(0))?;
    let fenced_mine = ctx
        .backend
        .as_fenced(&mine)
        .ok_or_else(|| missing("fenced"))?;
    let fenced_theirs = ctx
        .backend
        .as_fenced(&theirs)
        .ok_or_else(|| missing("fenced"))?;
    ensure_err!(
        fenced_mine.fencing_token(),
        Error::NotHeld(_),
        "token of an unheld lock"
    );
    let mut last = 0u64;
    for round in 0..3 {
        for (lock, fenced) in [(&mine, fenced_mine), (&theirs, fenced_theirs)] {
            let _ = lock.lock()?;
            let token = fenced.fencing_token()?;
            ensure!(
                token > last,
                "round {round}: token {token} not above the previous {last}"
            );
            ensure!(fenced.fencing_token()? == token, "token changed while held");
            last = token;
            lock.unlock()?;
        }
    }
    Ok(())
}

/// A leased lock reports a positive TTL, time left no greater than it while held, an unfired
/// lost signal, and no time left once released.
pub fn lease_reports_ttl_and_time_left<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let lock = manager.retrieve(LockId(1))?;
    let leased = ctx
        .backend
        .as_leased(&lock)
        .ok_or_else(|| missing("leased"))?;
    ensure!(!leased.ttl().is_zero(), "ttl() is zero");
    ensure!(
        leased.time_left()?.is_none(),
        "time_left() of an unheld lock is {:?}",
        leased.time_left()?
    );
    let _ = lock.lock()?;
    let left = leased
        .time_left()?
        .ok_or_else(|| Failed("time_left() is None while held".into()))?;
    ensure!(
        left <= leased.ttl(),
        "time_left {left:?} exceeds ttl {:?}",
        leased.ttl()
    );
    let signal = leased.lost()?;
    ensure!(!signal.is_lost(), "lost signal fired for a healthy lock");
    lock.unlock()?;
    ensure!(
        leased.time_left()?.is_none(),
        "time_left() after unlock is {:?}",
        leased.time_left()?
    );
    ensure!(!signal.is_lost(), "a clean unlock fired the lost signal");
    Ok(())
}

/// While a lock is held, another owner sees its holder (this process's pid where the backend
/// records pids); once released, nobody.
pub fn holder_is_visible_to_others<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let other = ctx.second_owner(&manager)?;
    let mine = manager.retrieve(LockId(3))?;
    let theirs = other.retrieve(LockId(3))?;
    let inspect = ctx
        .backend
        .as_inspect(&theirs)
        .ok_or_else(|| missing("inspect"))?;
    ensure!(
        inspect.holder()?.is_none(),
        "free lock has holder {:?}",
        inspect.holder()?
    );
    let _ = mine.lock()?;
    let holder = inspect
        .holder()?
        .ok_or_else(|| Failed("held lock shows no holder".into()))?;
    if let Some(pid) = holder.pid {
        ensure!(
            pid == std::process::id(),
            "holder pid {pid}, want {}",
            std::process::id()
        );
    }
    mine.unlock()?;
    ensure!(
        inspect.holder()?.is_none(),
        "released lock has holder {:?}",
        inspect.holder()?
    );
    Ok(())
}

/// The holder's data is readable by other owners; only the holder can write it; it is gone
/// once the lock is released.
pub fn lock_data_is_readable_by_others<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let other = ctx.second_owner(&manager)?;
    let mine = manager.retrieve(LockId(2))?;
    let theirs = other.retrieve(LockId(2))?;
    let data_mine = ctx
        .backend
        .as_lock_data(&mine)
        .ok_or_else(|| missing("lock-data"))?;
    let data_theirs = ctx
        .backend
        .as_lock_data(&theirs)
        .ok_or_else(|| missing("lock-data"))?;
    ensure_err!(
        data_mine.write_data(b"x"),
        Error::NotHeld(_),
        "write_data without holding"
    );
    let _ = mine.lock()?;
    data_mine.write_data(b"container 42")?;
    ensure!(
        data_theirs.read_data()?.as_deref() == Some(&b"container 42"[..]),
        "another owner read {:?}",
        data_theirs.read_data()?
    );
    ensure_err!(
        data_theirs.write_data(b"y"),
        Error::NotHeld(_),
        "write_data by a non-holder"
    );
    mine.unlock()?;
    ensure!(
        data_theirs.read_data()?.is_none(),
        "data still there after release"
    );
    Ok(())
}
