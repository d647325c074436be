//! Single-process behaviour of the public API: lifecycle, allocation order, names, ownership.

mod common;

use std::time::Duration;

use lock_conformance::child::ChildProcess;
use lock_shm::{Acquired, Error, Inspect, LockId, Locker, Manager, ShmManager};

use common::Segment;

#[test]
fn lifecycle_and_lowest_free_first() {
    let n = Segment::new("lifecycle");
    let m = ShmManager::create(&n.0, 200).unwrap();
    assert_eq!(m.capacity(), Some(200));
    assert_eq!(m.available().unwrap(), Some(200));
    let ids: Vec<u32> = (0..200).map(|_| m.allocate().unwrap().id().get()).collect();
    assert_eq!(ids, (0..200).collect::<Vec<_>>());
    assert!(matches!(
        m.allocate(),
        Err(Error::Exhausted { capacity: 200 })
    ));
    assert_eq!(m.available().unwrap(), Some(0));
    m.retrieve(LockId(130)).unwrap().free().unwrap();
    m.retrieve(LockId(7)).unwrap().free().unwrap();
    assert_eq!(m.available().unwrap(), Some(2));
    assert_eq!(m.allocate().unwrap().id(), LockId(7));
    assert_eq!(m.allocate().unwrap().id(), LockId(130));
    assert!(matches!(
        m.retrieve(LockId(200)),
        Err(Error::OutOfRange { .. })
    ));
    let l = m.retrieve(LockId(5)).unwrap();
    assert_eq!(l.lock().unwrap(), Acquired::Clean);
    assert_eq!(l.try_lock().unwrap(), None);
    let h = l.holder().unwrap().unwrap();
    assert_eq!(h.pid, Some(std::process::id()));
    assert_eq!(m.held().unwrap().len(), 1);
    l.unlock().unwrap();
    assert!(matches!(l.unlock(), Err(Error::NotHeld(LockId(5)))));
    assert!(matches!(
        l.try_lock_for(Duration::from_millis(1)),
        Ok(Acquired::Clean)
    ));
    let other = ShmManager::open(&n.0).unwrap();
    assert_ne!(other.client_slot(), m.client_slot());
    let ol = other.retrieve(LockId(5)).unwrap();
    assert!(matches!(ol.unlock(), Err(Error::NotHeld(_))));
    assert_eq!(ol.try_lock().unwrap(), None);
    assert!(matches!(
        ol.try_lock_for(Duration::from_millis(20)),
        Err(Error::Timeout)
    ));
    l.unlock().unwrap();
    assert_eq!(ol.try_lock().unwrap(), Some(Acquired::Clean));
    ol.unlock().unwrap();
    m.free_all().unwrap();
    assert_eq!(m.available().unwrap(), Some(200));
    assert!(matches!(
        ShmManager::open_or_create(&n.0, 100),
        Err(Error::Incompatible { .. })
    ));
    assert_eq!(ShmManager::open(&n.0).unwrap().capacity(), Some(200));
}

/// Allocation hands out the lowest free id whatever came before, through any manager of the
/// segment: random allocations, named allocations, frees and free-alls through two managers,
/// against a set of the allocated ids. The summaries must follow every free and free-all, or a
/// later allocation skips a lower free id.
#[test]
fn allocation_is_lowest_free_first_through_any_manager() {
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;
    const CAPACITY: u32 = 300; // five leaf words and a summary: both paths of allocation
    let n = Segment::new("lowest");
    let managers = [
        ShmManager::create(&n.0, CAPACITY).unwrap(),
        ShmManager::open(&n.0).unwrap(),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x10c4);
    let mut taken = BTreeSet::new();
    for step in 0..20_000 {
        let m = &managers[rng.random_range(0..2)];
        match rng.random_range(0..100) {
            // Allocation outweighs frees, so the table fills and empties in waves.
            0..50 => {
                let lowest = (0..CAPACITY).find(|id| !taken.contains(id));
                match (m.allocate(), lowest) {
                    (Ok(lock), Some(id)) => {
                        assert_eq!(lock.id(), LockId(id), "step {step}: not the lowest free id");
                        taken.insert(id);
                    }
                    (Err(Error::Exhausted { .. }), None) => {}
                    (got, want) => {
                        panic!("step {step}: allocate gave {got:?}, lowest free {want:?}")
                    }
                }
            }
            50..60 => {
                let id = rng.random_range(0..CAPACITY);
                let got = m.allocate_and_retrieve(LockId(id));
                if taken.insert(id) {
                    got.unwrap_or_else(|e| panic!("step {step}: allocate_and_retrieve({id}): {e}"));
                } else {
                    assert!(
                        matches!(got, Err(Error::AlreadyAllocated(_))),
                        "step {step}: {got:?}"
                    );
                }
            }
            60..99 => {
                let id = rng.random_range(0..CAPACITY);
                let got = m.retrieve(LockId(id)).unwrap().free();
                if taken.remove(&id) {
                    got.unwrap_or_else(|e| panic!("step {step}: free({id}): {e}"));
                } else {
                    assert!(
                        matches!(got, Err(Error::NotAllocated(_))),
                        "step {step}: {got:?}"
                    );
                }
            }
            _ => {
                m.free_all().unwrap();
                taken.clear();
            }
        }
        let available = CAPACITY - u32::try_from(taken.len()).unwrap();
        assert_eq!(m.available().unwrap(), Some(available), "step {step}");
    }
}

#[test]
fn names_are_validated() {
    for bad in ["", "a/b", "..", "a..b", "x\0y", &"n".repeat(201)] {
        assert!(
            matches!(
                ShmManager::create(bad, 8),
                Err(Error::InvalidArgument { .. })
            ),
            "{bad:?}"
        );
        assert!(matches!(
            ShmManager::open(bad),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            ShmManager::remove(bad),
            Err(Error::InvalidArgument { .. })
        ));
    }
}

/// A manager dropped while holding a lock abandons it: the next acquirer is told OwnerDied, and
/// a later manager that re-claims the same client slot is not mistaken for the dead owner.
#[test]
fn abandoned_lock_and_reused_slot() {
    let n = Segment::new("abandoned");
    let m0 = ShmManager::create(&n.0, 16).unwrap();
    let m1 = ShmManager::open(&n.0).unwrap();
    let slot = m1.client_slot();
    assert_eq!(
        m1.retrieve(LockId(3)).unwrap().lock().unwrap(),
        Acquired::Clean
    );
    drop(m1);
    // Same slot, next generation.
    let m2 = ShmManager::open(&n.0).unwrap();
    assert_eq!(m2.client_slot(), slot);
    let l2 = m2.retrieve(LockId(3)).unwrap();
    assert!(matches!(l2.unlock(), Err(Error::NotHeld(_))));
    let h = m0.retrieve(LockId(3)).unwrap().holder().unwrap().unwrap();
    assert!(h.dead, "{h:?}");
    assert_ne!(
        h.owner,
        Some(m2.owner()),
        "the dead owner and the new one share a key"
    );
    assert_eq!(l2.try_lock().unwrap(), Some(Acquired::OwnerDied));
    assert_eq!(l2.try_lock().unwrap(), None);
    let l0 = m0.retrieve(LockId(3)).unwrap();
    assert!(matches!(l0.unlock(), Err(Error::NotHeld(_))));
    l2.unlock().unwrap();
    assert_eq!(l0.try_lock().unwrap(), Some(Acquired::Clean));
    l0.unlock().unwrap();
}

/// A blocked lock() notices a dead holder without anyone unlocking.
#[test]
fn blocked_waiter_takes_over_from_a_dropped_manager() {
    let n = Segment::new("blocked");
    let m0 = ShmManager::create(&n.0, 16).unwrap();
    let m1 = ShmManager::open(&n.0).unwrap();
    let held = m1.retrieve(LockId(0)).unwrap();
    assert_eq!(held.lock().unwrap(), Acquired::Clean);
    let waiter = std::thread::spawn(move || {
        let l = m0.retrieve(LockId(0)).unwrap();
        l.try_lock_for(Duration::from_secs(10)).unwrap()
    });
    std::thread::sleep(Duration::from_millis(30));
    drop(held);
    drop(m1);
    assert_eq!(waiter.join().unwrap(), Acquired::OwnerDied);
}

/// A timeout shorter than the probe interval still takes over a dead holder's lock.
#[test]
fn short_timeout_still_takes_over_a_dead_holder() {
    let n = Segment::new("shorttimeout");
    let m0 = ShmManager::create(&n.0, 4).unwrap();
    let m1 = ShmManager::open(&n.0).unwrap();
    assert_eq!(
        m1.retrieve(LockId(2)).unwrap().lock().unwrap(),
        Acquired::Clean
    );
    drop(m1);
    let l = m0.retrieve(LockId(2)).unwrap();
    assert_eq!(l.try_lock_for(Duration::ZERO).unwrap(), Acquired::OwnerDied);
    l.unlock().unwrap();
}

/// A process spawned while a manager is open does not inherit its descriptor (close-on-exec),
/// so it cannot keep a dead owner's client slot alive.
#[test]
fn spawned_children_do_not_inherit_the_client_slot() {
    let n = Segment::new("cloexec");
    let m0 = ShmManager::create(&n.0, 4).unwrap();
    let m1 = ShmManager::open(&n.0).unwrap();
    assert_eq!(
        m1.retrieve(LockId(1)).unwrap().lock().unwrap(),
        Acquired::Clean
    );
    let mut sleep = std::process::Command::new("sleep");
    sleep.arg("10");
    // SIGKILLed and reaped on drop.
    let _child = ChildProcess::start(sleep, "sleep", None).expect("spawn sleep");
    drop(m1);
    // The child closes its copy of the descriptor during execve, possibly a moment after spawn
    // returned; after that the slot must read as dead, long before `sleep 10` ends.
    let l = m0.retrieve(LockId(1)).unwrap();
    assert_eq!(
        l.try_lock_for(Duration::from_secs(5)).unwrap(),
        Acquired::OwnerDied
    );
    l.unlock().unwrap();
}
