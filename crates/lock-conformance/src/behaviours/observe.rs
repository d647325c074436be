//! Observation behaviours: the one `Holder` contract, dead holders flagged, waiters listed.

use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use lock_api::{Error, Holder, LockId, LockState, Locker, Manager};

use super::PROMPTLY;
use crate::child::Role;
use crate::{Backend, Capabilities, Ctx, Failed, Outcome, ensure};

/// How far a recorded `since` may sit outside the interval the suite measured around the
/// acquisition: backends record it from coarse clocks (milliseconds to a second).
const SINCE_SLACK: Duration = Duration::from_secs(2);

fn this_host() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

fn holder_of<M: Manager>(manager: &M, id: LockId) -> Result<Option<Holder>, Failed> {
    Ok(manager
        .held()?
        .into_iter()
        .find(|h| h.id == id)
        .and_then(|h| h.holder))
}

fn within(t: SystemTime, from: SystemTime, to: SystemTime) -> bool {
    t + SINCE_SLACK >= from && t <= to + SINCE_SLACK
}

/// `held()` names every holder the same way on every backend: its pid, this host, an owner
/// that tells it apart from other owners, when it acquired the lock, and that it is alive.
pub fn held_names_pid_host_owner_and_since<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let before = SystemTime::now();
    // The holder of lock 1: a child process where the backend spans processes, otherwise a
    // second owner in this process.
    let mut child = None;
    let other;
    let (expected_pid, theirs) = if ctx.has(Capabilities::MULTIPROCESS) {
        let mut holder = ctx.child(Role::Hold, 4, 1, 0)?;
        holder.expect("locked", PROMPTLY)?;
        let pid = holder.pid();
        child = Some(holder);
        (pid, None)
    } else {
        other = ctx.second_owner(&manager)?;
        let lock = other.retrieve(LockId(1))?;
        let _ = lock.lock()?;
        (std::process::id(), Some(lock))
    };
    let after = SystemTime::now();
    let mine = manager.retrieve(LockId(2))?;
    let _ = mine.lock()?;
    let holder = holder_of(&manager, LockId(1))?
        .ok_or_else(|| Failed("held() does not name the holder of lock 1".into()))?;
    ensure!(
        holder.pid == Some(expected_pid),
        "holder pid {:?}, want {expected_pid}",
        holder.pid
    );
    ensure!(
        holder.host.as_deref() == Some(this_host().as_str()),
        "holder host {:?}, want {:?}",
        holder.host,
        this_host()
    );
    let since = holder
        .since
        .ok_or_else(|| Failed("holder has no since".into()))?;
    ensure!(
        within(since, before, after),
        "holder since {since:?} is outside [{before:?}, {after:?}]"
    );
    ensure!(!holder.dead, "a live holder is flagged dead");
    let own = holder_of(&manager, LockId(2))?
        .ok_or_else(|| Failed("held() does not name our own hold of lock 2".into()))?;
    ensure!(
        holder.owner.is_some() && own.owner.is_some() && holder.owner != own.owner,
        "owners do not tell holders apart: {:?} and {:?}",
        holder.owner,
        own.owner
    );
    mine.unlock()?;
    if let Some(lock) = theirs {
        lock.unlock()?;
    }
    if let Some(mut child) = child {
        child.send("unlock")?;
        child.expect("unlocked", PROMPTLY)?;
        child.close_stdin();
        child.finish(PROMPTLY)?;
    }
    Ok(())
}

/// A lock whose holder was SIGKILLed is still listed by `held()` and `snapshot()`, flagged
/// dead (not left out, not described in a string), until someone takes it over.
pub fn a_dead_holders_lock_is_listed_and_flagged_dead<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let mut holder = ctx.child(Role::HoldThenDie, 4, 3, 0)?;
    holder.expect("locked", PROMPTLY)?;
    let pid = holder.pid();
    holder.sigkill()?;
    // Leased backends learn of the death when the lease expires: poll within a bound.
    let deadline = Instant::now() + PROMPTLY;
    let dead = loop {
        match holder_of(&manager, LockId(3))? {
            Some(h) if h.dead => break h,
            Some(_) => {}
            None => return Err(Failed("held() left out the dead holder's lock".into())),
        }
        ensure!(
            Instant::now() < deadline,
            "the dead holder was not flagged dead within {PROMPTLY:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    ensure!(
        dead.pid == Some(pid),
        "dead holder pid {:?}, want {pid}",
        dead.pid
    );
    let snapshot = manager.snapshot()?;
    ensure!(
        snapshot
            .iter()
            .any(|l| l.id == LockId(3) && l.holder.as_ref().is_some_and(|h| h.dead)),
        "snapshot() does not flag the dead holder: {snapshot:?}"
    );
    let lock = manager.retrieve(LockId(3))?;
    ensure!(
        lock.try_lock()?.is_some_and(|a| a.owner_died()),
        "the flagged lock was not taken over with OwnerDied"
    );
    ensure!(
        holder_of(&manager, LockId(3))?.is_some_and(|h| !h.dead),
        "after the takeover the new holder is not listed alive"
    );
    lock.unlock()?;
    Ok(())
}

fn find(snapshot: &[LockState], id: LockId) -> Option<&LockState> {
    snapshot.iter().find(|l| l.id == id)
}

/// A blocked waiter is listed in `snapshot()` under the lock it waits for, with its pid and
/// when it started waiting, beside the holder; once it acquires, it is the holder and no
/// longer a waiter.
pub fn snapshot_lists_the_holder_and_each_waiter<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let lock = manager.retrieve(LockId(0))?;
    let _ = lock.lock()?;
    let before = SystemTime::now();
    let mut child = None;
    let (tx, rx) = mpsc::channel();
    let expected_pid = if ctx.has(Capabilities::MULTIPROCESS) {
        let waiter = ctx.child(Role::Hold, 4, 0, 0)?;
        let pid = waiter.pid();
        child = Some(waiter);
        pid
    } else {
        let other = ctx.second_owner(&manager)?;
        std::thread::spawn(move || {
            let outcome = other
                .retrieve(LockId(0))
                .and_then(|l| l.try_lock_for(PROMPTLY).and_then(|_| l.unlock()));
            let _ = tx.send(outcome);
        });
        std::process::id()
    };
    let deadline = Instant::now() + PROMPTLY;
    let waiter = loop {
        let snapshot = manager.snapshot()?;
        if let Some(state) = find(&snapshot, LockId(0))
            && let Some(w) = state.waiters.first()
        {
            ensure!(
                state.holder.as_ref().map(|h| h.pid) == Some(Some(std::process::id())),
                "snapshot holder {:?}, want this process",
                state.holder
            );
            break w.clone();
        }
        ensure!(
            Instant::now() < deadline,
            "no waiter listed within {PROMPTLY:?}: {snapshot:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    ensure!(
        waiter.pid == Some(expected_pid),
        "waiter pid {:?}, want {expected_pid}",
        waiter.pid
    );
    let since = waiter
        .since
        .ok_or_else(|| Failed("waiter has no since".into()))?;
    ensure!(
        within(since, before, SystemTime::now()),
        "waiter since {since:?} is outside the wait"
    );
    lock.unlock()?;
    if let Some(child) = &mut child {
        child.expect("locked", PROMPTLY)?;
        let snapshot = manager.snapshot()?;
        let state = find(&snapshot, LockId(0))
            .ok_or_else(|| Failed("the new holder's lock is not in the snapshot".into()))?;
        ensure!(
            state.holder.as_ref().and_then(|h| h.pid) == Some(expected_pid)
                && state.waiters.is_empty(),
            "after the handover: {state:?}"
        );
        child.send("unlock")?;
        child.expect("unlocked", PROMPTLY)?;
        child.close_stdin();
        child.finish(PROMPTLY)?;
    } else {
        rx.recv_timeout(PROMPTLY + PROMPTLY)
            .map_err(|_| Failed("the waiting thread never returned".into()))??;
    }
    let snapshot = manager.snapshot()?;
    ensure!(
        find(&snapshot, LockId(0)).is_none(),
        "a free lock with no waiter is still listed: {snapshot:?}"
    );
    Ok(())
}

/// `clients()` lists every other manager that has the store open, in this process or (where the
/// backend spans processes) another, each with its pid, this host and an owner, alive; never
/// the caller, and not one that closed or died. A backend without the capability says
/// `Unsupported`: an empty list would read as "nobody has it open".
pub fn clients_are_the_other_open_managers<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    if !ctx.has(Capabilities::CLIENTS) {
        return match manager.clients() {
            Err(Error::Unsupported(_)) => Ok(()),
            other => Err(Failed(format!(
                "clients() of a backend without the clients capability: {other:?}, not Unsupported"
            ))),
        };
    }
    let alone = manager.clients()?;
    ensure!(alone.is_empty(), "the only manager's clients(): {alone:?}");
    let other = ctx.second_owner(&manager)?;
    let here = this_host();
    let me = std::process::id();
    let seen = manager.clients()?;
    ensure!(
        seen.len() == 1
            && seen[0].pid == Some(me)
            && seen[0].host.as_deref() == Some(here.as_str())
            && seen[0].owner.is_some()
            && !seen[0].dead,
        "with a second manager in this process (pid {me}), clients(): {seen:?}"
    );
    let seen_by_other = other.clients()?;
    ensure!(
        seen_by_other.len() == 1 && seen_by_other[0].owner != seen[0].owner,
        "the second manager's clients() should name the first, not itself: {seen_by_other:?} \
         (the first's: {seen:?})"
    );
    if ctx.has(Capabilities::MULTIPROCESS) {
        let mut child = ctx.child(Role::Hold, 4, 1, 0)?;
        child.expect("locked", PROMPTLY)?;
        let pid = child.pid();
        let seen = manager.clients()?;
        ensure!(
            seen.len() == 2 && seen.iter().any(|c| c.pid == Some(pid) && !c.dead),
            "with a manager in child {pid} too, clients(): {seen:?}"
        );
        child.sigkill()?;
        let seen = manager.clients()?;
        ensure!(
            seen.iter().all(|c| c.pid != Some(pid)),
            "child {pid} was killed, yet clients() lists it: {seen:?}"
        );
    }
    drop(other);
    let left = manager.clients()?;
    ensure!(
        left.is_empty(),
        "the second manager was dropped, yet clients() lists: {left:?}"
    );
    Ok(())
}
