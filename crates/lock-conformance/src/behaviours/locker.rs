//! Locker behaviours: exclusion, waiting, releasing, freeing, and dead holders.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lock_api::{Acquired, Error, LockId, Locker, Manager};

use super::PROMPTLY;
use crate::child::{Role, read_counter};
use crate::{Backend, Capabilities, Ctx, Failed, Outcome, ensure, ensure_err};

/// A lock goes free → held (`Clean`) → free, and another owner can take it after the unlock.
pub fn lock_unlock_lifecycle<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let other = ctx.second_owner(&manager)?;
    let lock = manager.retrieve(LockId(1))?;
    let theirs = other.retrieve(LockId(1))?;
    ensure!(lock.id() == LockId(1), "retrieve(1).id() = {}", lock.id());
    ensure!(
        lock.lock()? == Acquired::Clean,
        "first lock of a fresh lock was not Clean"
    );
    ensure!(
        theirs.try_lock()?.is_none(),
        "another owner took a held lock"
    );
    lock.unlock()?;
    ensure!(
        theirs.try_lock()? == Some(Acquired::Clean),
        "another owner could not take the lock after unlock"
    );
    theirs.unlock()?;
    ensure!(
        lock.try_lock()?.is_some(),
        "lock not free after the second owner unlocked"
    );
    lock.unlock()?;
    Ok(())
}

/// Unlocking a lock that is not held fails with `NotHeld`, and so does a second unlock.
pub fn unlock_of_unlocked_lock_is_refused<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let lock = manager.retrieve(LockId(0))?;
    ensure_err!(
        lock.unlock(),
        Error::NotHeld(LockId(0)),
        "unlock of a never-locked lock"
    );
    let _ = lock.lock()?;
    lock.unlock()?;
    ensure_err!(lock.unlock(), Error::NotHeld(LockId(0)), "second unlock");
    ensure!(
        lock.try_lock()?.is_some(),
        "a refused unlock left the lock unusable"
    );
    lock.unlock()?;
    Ok(())
}

/// Unlocking a lock that another owner holds fails with `NotHeld` and leaves it held.
pub fn unlock_by_another_owner_is_refused<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let other = ctx.second_owner(&manager)?;
    let mine = manager.retrieve(LockId(2))?;
    let theirs = other.retrieve(LockId(2))?;
    let _ = mine.lock()?;
    ensure_err!(
        theirs.unlock(),
        Error::NotHeld(LockId(2)),
        "unlock by another owner"
    );
    ensure!(
        theirs.try_lock()?.is_none(),
        "a refused unlock released the owner's lock"
    );
    mine.unlock()?;
    Ok(())
}

/// With per-manager ownership, a lock taken through one handle on one thread can be unlocked
/// through another handle on another thread of the same owner.
pub fn unlock_from_another_thread_of_the_owner_works<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let first = manager.retrieve(LockId(3))?;
    let _ = first.lock()?;
    let second = manager.retrieve(LockId(3))?;
    std::thread::spawn(move || second.unlock())
        .join()
        .map_err(|_| Failed("unlocking thread panicked".into()))??;
    ensure!(
        first.try_lock()?.is_some(),
        "lock still held after the owner's other thread unlocked it"
    );
    first.unlock()?;
    Ok(())
}

/// Locks are not re-entrant: while its owner holds a lock, the same owner's `try_lock` returns
/// `None` and `try_lock_for` times out.
pub fn relock_by_the_same_owner_is_not_reentrant<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let lock = manager.retrieve(LockId(0))?;
    let _ = lock.lock()?;
    ensure!(
        lock.try_lock()?.is_none(),
        "try_lock by the holding handle succeeded (re-entrant)"
    );
    let again = manager.retrieve(LockId(0))?;
    ensure!(
        again.try_lock()?.is_none(),
        "try_lock through another handle of the owner succeeded"
    );
    ensure_err!(
        lock.try_lock_for(Duration::from_millis(50)),
        Error::Timeout,
        "try_lock_for by the holder"
    );
    lock.unlock()?;
    ensure_err!(
        lock.unlock(),
        Error::NotHeld(_),
        "unlock after a refused re-lock"
    );
    Ok(())
}

/// Threads incrementing a shared counter non-atomically under one lock (each with its own
/// handle) never lose an update.
pub fn excludes_across_threads<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 300;
    let manager = ctx.create(4)?;
    let counter = AtomicU64::new(0);
    let results = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| -> Outcome {
                    let lock = manager.retrieve(LockId(1))?;
                    for _ in 0..ROUNDS {
                        let _ = lock.try_lock_for(PROMPTLY)?;
                        // A read-modify-write split in two: loses updates unless excluded.
                        let value = counter.load(Ordering::Relaxed);
                        std::thread::yield_now();
                        counter.store(value + 1, Ordering::Relaxed);
                        lock.unlock()?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(Failed("worker panicked".into())))
            })
            .collect::<Vec<_>>()
    });
    for result in results {
        result?;
    }
    let total = counter.load(Ordering::Relaxed);
    ensure!(
        total == THREADS * ROUNDS,
        "counter = {total}, want {}",
        THREADS * ROUNDS
    );
    Ok(())
}

/// Processes incrementing a shared counter file non-atomically under one lock never lose an
/// update.
pub fn excludes_across_processes<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    const CHILDREN: u64 = 3;
    const ROUNDS: u32 = 150;
    let _manager = ctx.create(4)?;
    let mut children = (0..CHILDREN)
        .map(|_| ctx.child(Role::Hammer, 4, 2, ROUNDS))
        .collect::<Result<Vec<_>, _>>()?;
    for child in &mut children {
        child.expect("done", Duration::from_secs(120))?;
        child.finish(PROMPTLY)?;
    }
    let total = read_counter(&ctx.scratch_file("counter"))?;
    let want = CHILDREN * u64::from(ROUNDS);
    ensure!(
        total == want,
        "counter = {total}, want {want}: updates were lost"
    );
    Ok(())
}

/// Holding one id does not affect another id.
pub fn different_ids_are_independent<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let other = ctx.second_owner(&manager)?;
    let zero = manager.retrieve(LockId(0))?;
    let _ = zero.lock()?;
    let one = other.retrieve(LockId(1))?;
    ensure!(
        one.try_lock()?.is_some(),
        "lock 1 busy while only lock 0 is held"
    );
    let three = manager.retrieve(LockId(3))?;
    ensure!(
        three.try_lock()?.is_some(),
        "lock 3 busy for the owner of lock 0"
    );
    one.unlock()?;
    three.unlock()?;
    zero.unlock()?;
    Ok(())
}

/// `try_lock` returns `None` at once while another owner holds the lock.
pub fn try_lock_fails_while_held<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let other = ctx.second_owner(&manager)?;
    let mine = manager.retrieve(LockId(0))?;
    let theirs = other.retrieve(LockId(0))?;
    let _ = mine.lock()?;
    for _ in 0..3 {
        ensure!(theirs.try_lock()?.is_none(), "try_lock took a held lock");
    }
    mine.unlock()?;
    ensure!(
        theirs.try_lock()?.is_some(),
        "try_lock failed on a free lock"
    );
    theirs.unlock()?;
    Ok(())
}

/// `try_lock_for` on a held lock fails with `Timeout` after about the timeout: not less, and
/// not much more.
pub fn try_lock_for_waits_about_the_timeout<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let other = ctx.second_owner(&manager)?;
    let mine = manager.retrieve(LockId(1))?;
    let theirs = other.retrieve(LockId(1))?;
    let _ = mine.lock()?;
    let timeout = Duration::from_millis(300);
    let start = Instant::now();
    ensure_err!(
        theirs.try_lock_for(timeout),
        Error::Timeout,
        "try_lock_for on a held lock"
    );
    let waited = start.elapsed();
    ensure!(
        waited >= timeout,
        "try_lock_for gave up after {waited:?}, before its {timeout:?}"
    );
    // A liveness bound for a shared machine, not a performance target.
    ensure!(
        waited < timeout + Duration::from_secs(5),
        "try_lock_for({timeout:?}) took {waited:?}"
    );
    mine.unlock()?;
    Ok(())
}

/// `try_lock_for` on a held lock succeeds once the holder releases it within the timeout.
pub fn try_lock_for_acquires_when_released<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let other = ctx.second_owner(&manager)?;
    let mine = manager.retrieve(LockId(1))?;
    let theirs = other.retrieve(LockId(1))?;
    let _ = mine.lock()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(theirs.try_lock_for(PROMPTLY).map(|a| (a, theirs)));
    });
    std::thread::sleep(Duration::from_millis(100));
    mine.unlock()?;
    let (acquired, theirs) = rx
        .recv_timeout(PROMPTLY + PROMPTLY)
        .map_err(|_| Failed("waiter never returned".into()))??;
    ensure!(
        acquired == Acquired::Clean,
        "acquired after a clean release: {acquired:?}"
    );
    theirs.unlock()?;
    Ok(())
}

/// The longest timeout that can be added to the clock now, less 100 µs: a deadline that the
/// clock can still hold when it is added a moment later, but too close to its end for a timer
/// that rounds it up to the next millisecond.
fn nearly_the_longest_timeout() -> Duration {
    let now = Instant::now();
    let (mut fits, mut overflows) = (Duration::ZERO, Duration::MAX);
    while overflows - fits > Duration::from_nanos(1) {
        let mid = fits + (overflows - fits) / 2;
        if now.checked_add(mid).is_some() {
            fits = mid;
        } else {
            overflows = mid;
        }
    }
    fits.saturating_sub(Duration::from_micros(100))
}

/// A timeout too long to add to the clock (`Duration::MAX`), or one that just fits, is no error
/// and no panic: such a `try_lock_for` acquires a free lock at once, and on a held lock waits as
/// `lock` does, until the holder releases it.
pub fn try_lock_for_without_a_representable_deadline_waits_like_lock<B: Backend>(
    ctx: &Ctx<'_, B>,
) -> Outcome {
    let manager = ctx.create(4)?;
    let other = ctx.second_owner(&manager)?;
    let mine = manager.retrieve(LockId(1))?;
    // Each timeout is taken just before the call that uses it: the clock moves on.
    for timeout in [|| Duration::MAX, nearly_the_longest_timeout] {
        let theirs = other.retrieve(LockId(1))?;
        let acquired = mine.try_lock_for(timeout())?;
        ensure!(
            acquired == Acquired::Clean,
            "try_lock_for({:?}) of a free lock: {acquired:?}",
            timeout()
        );
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(theirs.try_lock_for(timeout()).map(|a| (a, theirs)));
        });
        std::thread::sleep(Duration::from_millis(100));
        mine.unlock()?;
        let (acquired, theirs) = rx.recv_timeout(PROMPTLY + PROMPTLY).map_err(|_| {
            Failed(format!(
                "try_lock_for({:?}) never returned after the release",
                timeout()
            ))
        })??;
        ensure!(
            acquired == Acquired::Clean,
            "acquired after a clean release: {acquired:?}"
        );
        theirs.unlock()?;
    }
    Ok(())
}

/// A thread blocked in `lock` proceeds soon after the holder releases the lock.
pub fn blocked_lock_proceeds_soon_after_release<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let other = ctx.second_owner(&manager)?;
    let mine = manager.retrieve(LockId(2))?;
    let theirs = other.retrieve(LockId(2))?;
    let _ = mine.lock()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(theirs.lock().map(|a| (a, theirs)));
    });
    ensure!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "lock() returned while another owner held the lock"
    );
    mine.unlock()?;
    let (_, theirs) = rx.recv_timeout(PROMPTLY).map_err(|_| {
        Failed(format!(
            "blocked lock() still waiting {PROMPTLY:?} after release"
        ))
    })??;
    theirs.unlock()?;
    Ok(())
}

/// A process blocked in `lock` proceeds after a holder in another process releases it.
pub fn blocked_lock_in_another_process_proceeds_after_release<B: Backend>(
    ctx: &Ctx<'_, B>,
) -> Outcome {
    let manager = ctx.create(4)?;
    let mut holder = ctx.child(Role::Hold, 4, 3, 0)?;
    ensure!(
        holder.expect("locked", PROMPTLY)? == "clean",
        "child's first lock was not clean"
    );
    let lock = manager.retrieve(LockId(3))?;
    ensure!(
        lock.try_lock()?.is_none(),
        "lock held by a child process was free here"
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(lock.try_lock_for(PROMPTLY + PROMPTLY).map(|a| (a, lock)));
    });
    std::thread::sleep(Duration::from_millis(100));
    holder.send("unlock")?;
    holder.expect("unlocked", PROMPTLY)?;
    let (acquired, lock) = rx
        .recv_timeout(PROMPTLY + PROMPTLY + PROMPTLY)
        .map_err(|_| Failed("waiter never returned".into()))??;
    ensure!(
        acquired == Acquired::Clean,
        "after a clean release in another process: {acquired:?}"
    );
    lock.unlock()?;
    holder.finish(PROMPTLY)?;
    Ok(())
}

/// Dropping a guard releases the lock.
pub fn guard_drop_releases<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let other = ctx.second_owner(&manager)?;
    let mine = manager.retrieve(LockId(0))?;
    let theirs = other.retrieve(LockId(0))?;
    {
        let guard = mine.guard()?;
        ensure!(
            guard.acquired() == Acquired::Clean,
            "guard on a fresh lock: {:?}",
            guard.acquired()
        );
        ensure!(
            theirs.try_lock()?.is_none(),
            "lock free while a guard holds it"
        );
    }
    ensure!(
        theirs.try_lock()?.is_some(),
        "lock still held after the guard dropped"
    );
    theirs.unlock()?;
    let guard = mine.guard()?;
    guard.unlock()?;
    ensure_err!(
        mine.unlock(),
        Error::NotHeld(_),
        "unlock after guard.unlock()"
    );
    Ok(())
}

/// After `free`, the handle still locks and unlocks, and locking a freed lock does not allocate
/// it again.
pub fn free_keeps_the_handle_usable_and_does_not_reallocate<B: Backend>(
    ctx: &Ctx<'_, B>,
) -> Outcome {
    let manager = ctx.create(4)?;
    let lock = manager.allocate()?;
    let id = lock.id();
    lock.free()?;
    let _ = lock.lock()?;
    ensure!(
        manager.available()? == Some(4),
        "locking a freed lock allocated it"
    );
    lock.unlock()?;
    let _ = lock.try_lock()?;
    lock.unlock()?;
    let again = manager.allocate()?;
    ensure!(
        again.id() == id,
        "freed id {id} not reused; got {}",
        again.id()
    );
    Ok(())
}

/// Freeing a held lock leaves it held by its owner (Podman's `TestDeallocateDoesNotUnlock`).
pub fn free_of_a_held_lock_leaves_it_held<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let other = ctx.second_owner(&manager)?;
    let lock = manager.allocate()?;
    let _ = lock.lock()?;
    lock.free()?;
    let theirs = other.retrieve(lock.id())?;
    ensure!(
        theirs.try_lock()?.is_none(),
        "freeing a held lock released it"
    );
    lock.unlock()?;
    ensure!(
        theirs.try_lock()?.is_some(),
        "lock not free after its owner unlocked it"
    );
    theirs.unlock()?;
    Ok(())
}

/// When a process holding a lock is SIGKILLed, a waiter acquires it and is told `OwnerDied`;
/// the next acquisition after a clean unlock is `Clean`.
pub fn sigkilled_holder_is_taken_over_with_owner_died<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let mut holder = ctx.child(Role::HoldThenDie, 4, 1, 0)?;
    holder.expect("locked", PROMPTLY)?;
    let lock = Arc::new(manager.retrieve(LockId(1))?);
    ensure!(
        lock.try_lock()?.is_none(),
        "lock held by a live child process was free here"
    );
    let (tx, rx) = mpsc::channel();
    {
        let lock = Arc::clone(&lock);
        std::thread::spawn(move || {
            let started = Instant::now();
            let _ = tx.send(lock.try_lock_for(PROMPTLY).map(|a| (a, started.elapsed())));
        });
    }
    std::thread::sleep(Duration::from_millis(100));
    let killed = Instant::now();
    holder.sigkill()?;
    let (acquired, _) = rx
        .recv_timeout(PROMPTLY + PROMPTLY)
        .map_err(|_| Failed("waiter never returned".into()))??;
    let after_kill = killed.elapsed();
    ensure!(
        acquired == Acquired::OwnerDied,
        "waiter acquired a dead holder's lock as {acquired:?}, want OwnerDied"
    );
    eprintln!("lock-conformance: dead holder's lock taken over {after_kill:?} after SIGKILL");
    lock.unlock()?;
    ensure!(
        lock.lock()? == Acquired::Clean,
        "the acquisition after a clean unlock was not Clean"
    );
    lock.unlock()?;
    Ok(())
}

/// When a process holding a lock is SIGKILLed with nobody waiting, a later `try_lock` takes it
/// and is told `OwnerDied`.
pub fn sigkilled_holder_is_reported_to_try_lock<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    let mut holder = ctx.child(Role::HoldThenDie, 4, 2, 0)?;
    holder.expect("locked", PROMPTLY)?;
    holder.sigkill()?;
    let lock = manager.retrieve(LockId(2))?;
    // Backends may need a moment to notice (a lease expiring); poll within a bound.
    let deadline = Instant::now() + PROMPTLY;
    let acquired = loop {
        if let Some(acquired) = lock.try_lock()? {
            break acquired;
        }
        ensure!(
            Instant::now() < deadline,
            "dead holder's lock still busy after {PROMPTLY:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    ensure!(
        acquired == Acquired::OwnerDied,
        "try_lock on a dead holder's lock: {acquired:?}"
    );
    lock.unlock()?;
    Ok(())
}

/// Every operation on a manager and its lockers inherited across `fork(2)` fails in the child
/// with `InvalidArgument`, and leaves the parent's lock (and allocation) as it was; a manager
/// the child opens itself is another owner, which finds the lock held.
pub fn an_inherited_manager_is_refused_in_a_forked_child<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(8)?;
    let alloc = ctx.has(Capabilities::ALLOCATION);
    let lock = if alloc {
        manager.allocate_and_retrieve(LockId(0))?
    } else {
        manager.retrieve(LockId(0))?
    };
    let acquired = lock.lock()?;
    ensure!(acquired == Acquired::Clean, "a fresh lock: {acquired:?}");
    let status = crate::fork::fork_and_wait(PROMPTLY, || {
        fn refused<T>(r: Result<T, Error>) -> bool {
            matches!(r, Err(Error::InvalidArgument { .. }))
        }
        // Unlock first: on a shared identity it would release the parent's hold. Each check
        // runs only if the ones before it passed.
        type Check<'a> = Box<dyn Fn() -> bool + 'a>;
        let mut checks: Vec<Check<'_>> = vec![
            Box::new(|| refused(lock.unlock())),
            Box::new(|| refused(lock.try_lock())),
            Box::new(|| refused(lock.try_lock_for(Duration::from_millis(1)))),
            Box::new(|| refused(lock.lock())),
            Box::new(|| refused(manager.retrieve(LockId(1)))),
            Box::new(|| refused(manager.held())),
            Box::new(|| refused(manager.snapshot())),
            Box::new(|| refused(lock.guard())),
        ];
        if let Some(inspect) = ctx.backend.as_inspect(&lock) {
            checks.push(Box::new(move || refused(inspect.holder())));
        }
        if ctx.has(Capabilities::DEADLOCK) {
            checks.push(Box::new(|| {
                refused(manager.set_deadlock_timeout(Duration::from_secs(1)))
            }));
        }
        if alloc {
            checks.push(Box::new(|| refused(lock.free())));
            checks.push(Box::new(|| refused(manager.allocate())));
            checks.push(Box::new(|| {
                refused(manager.allocate_and_retrieve(LockId(5)))
            }));
            checks.push(Box::new(|| refused(manager.free_all())));
            checks.push(Box::new(|| refused(manager.available())));
        }
        // A manager of the child's own is another owner: the parent's lock is held.
        checks.push(Box::new(|| {
            ctx.open()
                .and_then(|own| own.retrieve(LockId(0)))
                .is_ok_and(|own| matches!(own.try_lock(), Ok(None)))
        }));
        checks
            .iter()
            .position(|check| !check())
            .map_or(0, |i| i32::try_from(i + 1).unwrap_or(i32::MAX))
    })?;
    ensure!(
        status == Some(0),
        "in the forked child, check {status:?} failed (None: the child hung)"
    );
    let other = ctx.second_owner(&manager)?;
    ensure!(
        other.retrieve(LockId(0))?.try_lock()?.is_none(),
        "the parent's lock was let go by its forked child"
    );
    if alloc {
        ensure_err!(
            other.allocate_and_retrieve(LockId(0)),
            Error::AlreadyAllocated(_),
            "the parent's allocation was freed by its forked child"
        );
    }
    lock.unlock()?;
    Ok(())
}
