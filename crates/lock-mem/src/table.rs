//! The in-process table: one atomic state word per lock and a few shared parking spots.
//!
//! A lock's state word is `0` when free, otherwise `owner << 1`, with [`WAITERS`] set while
//! someone sleeps on it. Owners are numbered per [`MemManager`] from 1, so no owner is `0`.
//! Sleepers park on one of [`SPOTS`] mutex/condvar pairs chosen by id; an unlocker that clears
//! a word with `WAITERS` set takes that spot's mutex before notifying, and a sleeper re-checks the
//! word under the same mutex, so no wake-up is lost.
//!
//! A sleeper records itself in the table's waiter list (slow path only) so that
//! [`Manager::snapshot`] shows it and deadlock detection can see the wait-for graph. The
//! waiter list's mutex also serialises deadlock checks: a check reads the graph, decides and,
//! when the checker is the victim, withdraws its record, all under that one mutex, so two
//! checkers of one cycle cannot both give up. Lock order: a spot's mutex, then the waiter list.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lock_api::{
    Acquired, Error, HeldLock, Holder, LockId, LockState, Locker, Manager, PerProcess, Result,
    Store, StoreSpec, find_cycle, host_name, wrong_scheme,
};

use crate::bitmap::FreeSet;
use crate::sighting::{self, FREE, Production, Released, WAITERS};

const SPOTS: usize = 64;

/// The largest table lock-mem builds (16 bytes of state per lock, plus the bitmap).
pub const MAX_CAPACITY: u32 = 1 << 24;

/// How long a blocked `lock` waits before it checks for a deadlock, unless set otherwise.
pub const DEFAULT_DEADLOCK_TIMEOUT: Duration = Duration::from_secs(1);

static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

/// Named tables (`mem:NAME`), so that every open of one name in this process shares a table.
/// A forked child starts with none (its tables are copies that no other process shares), and
/// never locks its parent's registry, which another thread may have held at the fork.
static REGISTRY: PerProcess<HashMap<String, Arc<Table>>> = PerProcess::new();

fn registry() -> MutexGuard<'static, HashMap<String, Arc<Table>>> {
    // Every update is one insert or remove, so a panic elsewhere cannot leave it half-done
    // (`PerProcess` does not poison).
    REGISTRY.lock(std::process::id())
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// One blocked `lock` or `try_lock_for`, as the waiter list records it.
#[derive(Debug)]
struct Waiting {
    owner: u64,
    id: u32,
    since: SystemTime,
    /// Tells two waits of one owner apart (two threads of one manager).
    ticket: u64,
}

#[derive(Debug)]
struct Table {
    capacity: u32,
    states: Box<[AtomicU64]>,
    /// When the current hold of each lock began, in coarse unix milliseconds; 0 when not
    /// recorded (`sighting.rs`).
    since: Box<[AtomicU64]>,
    spots: Box<[(Mutex<()>, Condvar)]>,
    allocation: Mutex<FreeSet>,
    waiters: Mutex<Vec<Waiting>>,
}

impl Table {
    /// `InvalidArgument` unless `capacity` is one a table can have.
    fn check_capacity(capacity: u32) -> Result<()> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(Error::invalid(format!(
                "capacity {capacity}: a lock-mem table has 1 to {MAX_CAPACITY} locks"
            )));
        }
        Ok(())
    }

    fn new(capacity: u32) -> Result<Table> {
        Table::check_capacity(capacity)?;
        Ok(Table {
            capacity,
            states: (0..capacity).map(|_| AtomicU64::new(FREE)).collect(),
            since: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            spots: (0..SPOTS)
                .map(|_| (Mutex::new(()), Condvar::new()))
                .collect(),
            allocation: Mutex::new(FreeSet::full(capacity)),
            waiters: Mutex::new(Vec::new()),
        })
    }

    fn spot(&self, id: u32) -> &(Mutex<()>, Condvar) {
        &self.spots[id as usize % SPOTS]
    }

    fn allocation(&self) -> MutexGuard<'_, FreeSet> {
        // The set is consistent after every operation, so a panic elsewhere cannot poison it.
        self.allocation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn waiters(&self) -> MutexGuard<'_, Vec<Waiting>> {
        // Every update is one push or remove.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check(&self, id: LockId) -> Result<()> {
        if id.get() < self.capacity {
            Ok(())
        } else {
            Err(Error::OutOfRange {
                id,
                capacity: self.capacity,
            })
        }
    }

    fn who(owner: u64) -> Holder {
        Holder::with_pid(std::process::id())
            .host(host_name())
            .owner(format!("mem owner {owner}"))
    }

    /// The holder of lock `id` (its owner) and when its hold began (0: not known), dating the
    /// hold now if nobody has (`sighting.rs`); `None` when the lock is free.
    fn since_of(&self, id: usize) -> Option<(u64, u64)> {
        let now = || lock_api::coarse_now_ms().max(1);
        sighting::sight::<_, Production>(&self.states[id], &self.since[id], now)
            .map(|(word, since)| (word >> 1, since))
    }

    /// The snapshot, read while the caller holds the waiter list.
    fn snapshot_locked(&self, waiters: &[Waiting]) -> Vec<LockState> {
        let mut by_id: std::collections::BTreeMap<u32, LockState> = Default::default();
        for id in 0..self.states.len() {
            if let Some((owner, since)) = self.since_of(id) {
                let mut holder = Table::who(owner);
                if since != 0 {
                    holder = holder.since(from_ms(since));
                }
                by_id.insert(
                    id as u32,
                    LockState::new(LockId(id as u32), Some(holder), Vec::new()),
                );
            }
        }
        for w in waiters {
            by_id
                .entry(w.id)
                .or_insert_with(|| LockState::new(LockId(w.id), None, Vec::new()))
                .waiters
                .push(Table::who(w.owner).since(w.since));
        }
        by_id.into_values().collect()
    }
}

/// An owner of an in-process lock table.
///
/// Cloning a manager gives the same owner; [`MemManager::new_owner`] gives another owner of the
/// same table, as does every [`Store::open`] of a named table (`mem:NAME`).
#[derive(Debug, Clone)]
pub struct MemManager {
    table: Arc<Table>,
    owner: u64,
    /// The deadlock timeout in milliseconds, shared with every handle of this owner; 0 is off.
    deadlock_ms: Arc<AtomicU64>,
}

impl MemManager {
    /// A new anonymous table of `capacity` locks, all free and unallocated.
    ///
    /// Only this manager and its [`new_owner`](MemManager::new_owner)s reach it; use
    /// [`Store::create`] for a table other code in this process opens by name.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `capacity` is zero or above [`MAX_CAPACITY`].
    pub fn new(capacity: u32) -> Result<MemManager> {
        Ok(MemManager::owner_of(Arc::new(Table::new(capacity)?)))
    }

    fn owner_of(table: Arc<Table>) -> MemManager {
        MemManager {
            table,
            owner: next_owner(),
            deadlock_ms: Arc::new(AtomicU64::new(DEFAULT_DEADLOCK_TIMEOUT.as_millis() as u64)),
        }
    }

    /// Another owner of the same table, as another process opening a shared store would be.
    pub fn new_owner(&self) -> MemManager {
        MemManager::owner_of(Arc::clone(&self.table))
    }

    fn locker(&self, id: LockId) -> MemLocker {
        MemLocker {
            table: Arc::clone(&self.table),
            mine: self.owner << 1,
            id: id.get(),
            deadlock_ms: Arc::clone(&self.deadlock_ms),
        }
    }
}

fn next_owner() -> u64 {
    NEXT_OWNER.fetch_add(1, Ordering::Relaxed)
}

impl Store for MemManager {
    type Address = str;

    fn address(spec: &StoreSpec) -> Result<String> {
        match spec {
            StoreSpec::Mem(name) => Ok(name.clone()),
            other => Err(wrong_scheme("mem", other)),
        }
    }

    fn create(name: &str, capacity: u32) -> Result<MemManager> {
        let table = Arc::new(Table::new(capacity)?);
        let mut registry = registry();
        if registry.contains_key(name) {
            return Err(Error::AlreadyExists {
                what: format!("lock-mem table {name:?}"),
            });
        }
        registry.insert(name.to_owned(), Arc::clone(&table));
        Ok(MemManager::owner_of(table))
    }

    fn open(name: &str) -> Result<MemManager> {
        let table = registry()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: format!("lock-mem table {name:?}"),
            })?;
        Ok(MemManager::owner_of(table))
    }

    fn open_or_create(name: &str, capacity: u32) -> Result<(MemManager, bool)> {
        // A capacity no table can have is a bad argument whatever is registered under the name,
        // as on every other backend (it was `Incompatible` when the table existed).
        Table::check_capacity(capacity)?;
        let mut registry = registry();
        if let Some(table) = registry.get(name) {
            if table.capacity != capacity {
                return Err(Error::incompatible(
                    format!("lock-mem table {name:?} capacity"),
                    capacity,
                    table.capacity,
                ));
            }
            return Ok((MemManager::owner_of(Arc::clone(table)), false));
        }
        let table = Arc::new(Table::new(capacity)?);
        registry.insert(name.to_owned(), Arc::clone(&table));
        Ok((MemManager::owner_of(table), true))
    }

    fn remove(name: &str) -> Result<()> {
        match registry().remove(name) {
            Some(_) => Ok(()),
            None => Err(Error::NotFound {
                what: format!("lock-mem table {name:?}"),
            }),
        }
    }
}

impl Manager for MemManager {
    type Locker = MemLocker;

    fn allocate(&self) -> Result<MemLocker> {
        let id = self
            .table
            .allocation()
            .take_first()
            .ok_or(Error::Exhausted {
                capacity: self.table.capacity,
            })?;
        Ok(self.locker(LockId(id)))
    }

    fn retrieve(&self, id: LockId) -> Result<MemLocker> {
        self.table.check(id)?;
        Ok(self.locker(id))
    }

    fn allocate_and_retrieve(&self, id: LockId) -> Result<MemLocker> {
        self.table.check(id)?;
        if !self.table.allocation().take(id.get()) {
            return Err(Error::AlreadyAllocated(id));
        }
        Ok(self.locker(id))
    }

    fn free_all(&self) -> Result<()> {
        self.table.allocation().fill(self.table.capacity);
        Ok(())
    }

    fn capacity(&self) -> Option<u32> {
        Some(self.table.capacity)
    }

    fn available(&self) -> Result<Option<u32>> {
        Ok(Some(self.table.allocation().free()))
    }

    fn held(&self) -> Result<Vec<HeldLock>> {
        Ok(self
            .table
            .snapshot_locked(&[])
            .into_iter()
            .map(|l| HeldLock::new(l.id, l.holder))
            .collect())
    }

    fn snapshot(&self) -> Result<Vec<LockState>> {
        let waiters = self.table.waiters();
        Ok(self.table.snapshot_locked(&waiters))
    }

    fn deadlock_timeout(&self) -> Option<Duration> {
        match self.deadlock_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    fn set_deadlock_timeout(&self, timeout: Duration) -> Result<()> {
        // At least 1 ms unless zero: a nonzero timeout below a millisecond must not turn
        // detection off.
        let ms = match timeout.as_millis() {
            0 if timeout.is_zero() => 0,
            0 => 1,
            ms => u64::try_from(ms).unwrap_or(u64::MAX),
        };
        self.deadlock_ms.store(ms, Ordering::Relaxed);
        Ok(())
    }
}

/// A handle on one lock of a [`MemManager`]'s table, acting for that manager's owner.
#[derive(Debug, Clone)]
pub struct MemLocker {
    table: Arc<Table>,
    mine: u64, // owner << 1: the state word while this owner holds the lock
    id: u32,
    deadlock_ms: Arc<AtomicU64>,
}

/// How a slow-path wait ended.
enum Waited {
    Taken,
    TimedOut,
}

static NEXT_TICKET: AtomicU64 = AtomicU64::new(1);

impl MemLocker {
    #[inline]
    fn state(&self) -> &AtomicU64 {
        // `id < capacity == states.len()` was checked when the handle was made.
        &self.table.states[self.id as usize]
    }

    /// Dates a hold taken after waiting (`sighting.rs`, rule 1).
    #[cold]
    fn mark_since(&self) {
        sighting::date(
            &self.table.since[self.id as usize],
            lock_api::coarse_now_ms().max(1),
        );
    }

    /// The uncontended lock: one compare-exchange, no clock.
    #[inline]
    fn try_acquire(&self) -> bool {
        sighting::try_acquire(self.state(), self.mine)
    }

    /// Records this wait in the table's waiter list; the ticket withdraws it.
    #[cold]
    fn publish(&self) -> u64 {
        let ticket = NEXT_TICKET.fetch_add(1, Ordering::Relaxed);
        self.table.waiters().push(Waiting {
            owner: self.mine >> 1,
            id: self.id,
            since: SystemTime::now(),
            ticket,
        });
        ticket
    }

    fn withdraw(waiters: &mut Vec<Waiting>, ticket: u64) {
        waiters.retain(|w| w.ticket != ticket);
    }

    /// Checks the wait-for graph under the waiter list's mutex; when this wait closes a cycle,
    /// withdraws it before the mutex is released and returns the cycle.
    #[cold]
    fn check_deadlock(&self, ticket: u64) -> Result<()> {
        let mut waiters = self.table.waiters();
        let snapshot = self.table.snapshot_locked(&waiters);
        let me = format!("mem owner {}", self.mine >> 1);
        match find_cycle(&snapshot, &me) {
            Some(cycle) => {
                MemLocker::withdraw(&mut waiters, ticket);
                Err(Error::Deadlock { cycle })
            }
            None => Ok(()),
        }
    }

    /// Sleeps until the lock is taken or `deadline` passes, checking for a deadlock each time
    /// the deadlock timeout passes.
    #[cold]
    fn lock_contended(&self, deadline: Option<Instant>) -> Result<Waited> {
        let ticket = self.publish();
        let result = self.wait(deadline, ticket);
        if !matches!(result, Err(Error::Deadlock { .. })) {
            MemLocker::withdraw(&mut self.table.waiters(), ticket);
        }
        if matches!(result, Ok(Waited::Taken)) {
            self.mark_since();
        }
        result
    }

    fn wait(&self, deadline: Option<Instant>, ticket: u64) -> Result<Waited> {
        let state = self.state();
        let (mutex, condvar) = self.table.spot(self.id);
        let started = Instant::now();
        let next_check = |from: Instant| match self.deadlock_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => from.checked_add(Duration::from_millis(ms)),
        };
        let mut check_at = next_check(started);
        let mut guard = mutex.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let current = state.load(Ordering::Relaxed);
            if current == FREE {
                // Keep WAITERS set on acquisition: others may still sleep on this word.
                if state
                    .compare_exchange(
                        FREE,
                        self.mine | WAITERS,
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    return Ok(Waited::Taken);
                }
                continue;
            }
            if current & WAITERS == 0
                && state
                    .compare_exchange(
                        current,
                        current | WAITERS,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_err()
            {
                continue;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(Waited::TimedOut);
            }
            if let Some(at) = check_at
                && now >= at
            {
                self.check_deadlock(ticket)?;
                check_at = next_check(now);
            }
            let wake_at = match (deadline, check_at) {
                (Some(d), Some(c)) => Some(d.min(c)),
                (d, c) => d.or(c),
            };
            guard = match wake_at {
                None => condvar.wait(guard).unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    condvar
                        .wait_timeout(guard, at.saturating_duration_since(now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    #[cold]
    fn wake(&self) {
        let (mutex, condvar) = self.table.spot(self.id);
        drop(mutex.lock().unwrap_or_else(PoisonError::into_inner));
        condvar.notify_all();
    }
}

impl Locker for MemLocker {
    fn id(&self) -> LockId {
        LockId(self.id)
    }

    #[inline]
    fn lock(&self) -> Result<Acquired> {
        if !self.try_acquire() {
            self.lock_contended(None)?;
        }
        Ok(Acquired::Clean)
    }

    #[inline]
    fn try_lock(&self) -> Result<Option<Acquired>> {
        Ok(self.try_acquire().then_some(Acquired::Clean))
    }

    fn try_lock_for(&self, timeout: Duration) -> Result<Acquired> {
        if self.try_acquire() {
            return Ok(Acquired::Clean);
        }
        // A timeout too large for Instant is as good as none.
        let deadline = Instant::now().checked_add(timeout);
        match self.lock_contended(deadline)? {
            Waited::Taken => Ok(Acquired::Clean),
            Waited::TimedOut => Err(Error::Timeout),
        }
    }

    #[inline]
    fn unlock(&self) -> Result<()> {
        let since = &self.table.since[self.id as usize];
        match sighting::release::<_, Production>(self.state(), since, self.mine) {
            Released::Quiet => Ok(()),
            Released::Wake => {
                self.wake();
                Ok(())
            }
            Released::NotOurs { wake } => {
                if wake {
                    self.wake();
                }
                Err(Error::NotHeld(LockId(self.id)))
            }
        }
    }

    fn free(&self) -> Result<()> {
        if self.table.allocation().put(self.id) {
            Ok(())
        } else {
            Err(Error::NotAllocated(LockId(self.id)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_owner_cycle_has_exactly_one_victim() {
        let a = MemManager::new(2).expect("table");
        let b = a.new_owner();
        for m in [&a, &b] {
            m.set_deadlock_timeout(Duration::from_millis(50))
                .expect("timeout");
        }
        let a0 = a.retrieve(LockId(0)).expect("retrieve");
        let b1 = b.retrieve(LockId(1)).expect("retrieve");
        let _ = a0.lock().expect("lock");
        let _ = b1.lock().expect("lock");
        let a1 = a.retrieve(LockId(1)).expect("retrieve");
        let b0 = b.retrieve(LockId(0)).expect("retrieve");
        let ta = std::thread::spawn(move || {
            let r = a1.lock();
            if r.is_err() {
                a0.unlock().expect("victim releases");
            } else {
                a1.unlock().expect("unlock");
                a0.unlock().expect("unlock");
            }
            r
        });
        let tb = std::thread::spawn(move || {
            let r = b0.lock();
            if r.is_err() {
                b1.unlock().expect("victim releases");
            } else {
                b0.unlock().expect("unlock");
                b1.unlock().expect("unlock");
            }
            r
        });
        let results = [ta.join().expect("a"), tb.join().expect("b")];
        let victims = results
            .iter()
            .filter(|r| matches!(r, Err(Error::Deadlock { .. })))
            .count();
        assert_eq!(victims, 1, "{results:?}");
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        let Some(Err(Error::Deadlock { cycle })) = results.iter().find(|r| r.is_err()) else {
            unreachable!()
        };
        assert_eq!(cycle.0.len(), 2);
        assert!(a.snapshot().expect("snapshot").is_empty());
    }

    #[test]
    fn waiters_show_in_the_snapshot_and_leave_it() {
        let a = MemManager::new(1).expect("table");
        let b = a.new_owner();
        let lock = a.retrieve(LockId(0)).expect("retrieve");
        let _ = lock.lock().expect("lock");
        let waiter = b.retrieve(LockId(0)).expect("retrieve");
        let t = std::thread::spawn(move || waiter.try_lock_for(Duration::from_secs(20)));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let snap = a.snapshot().expect("snapshot");
            if snap.len() == 1 && snap[0].waiters.len() == 1 {
                let holder = snap[0].holder.clone().expect("holder");
                assert_eq!(holder.owner, Some(format!("mem owner {}", a.owner)));
                assert_eq!(
                    snap[0].waiters[0].owner,
                    Some(format!("mem owner {}", b.owner))
                );
                assert_eq!(holder.pid, Some(std::process::id()));
                assert!(holder.since.is_some() && !holder.dead);
                break;
            }
            assert!(Instant::now() < deadline, "the waiter never showed");
            std::thread::sleep(Duration::from_millis(5));
        }
        lock.unlock().expect("unlock");
        assert_eq!(t.join().expect("join").expect("taken"), Acquired::Clean);
        let snap = a.snapshot().expect("snapshot");
        assert_eq!(snap.len(), 1);
        assert!(snap[0].waiters.is_empty());
    }

    fn since_of_held(m: &MemManager, id: u32) -> SystemTime {
        m.held()
            .expect("held")
            .into_iter()
            .find(|h| h.id == LockId(id))
            .and_then(|h| h.holder)
            .and_then(|h| h.since)
            .expect("a held lock with a since")
    }

    /// A fast-path hold is dated when first seen, and the time goes with the hold: the next
    /// fast-path hold of the same lock, by the same owner, is seen afresh, not dated by the
    /// earlier sighting.
    #[test]
    fn a_sighting_dates_only_the_hold_it_saw() {
        let m = MemManager::new(2).expect("new");
        let lock = m.retrieve(LockId(1)).expect("retrieve");
        let before = SystemTime::now();
        let _ = lock.lock().expect("lock");
        let first = since_of_held(&m, 1);
        // Coarse clock: a tick (a few ms) either way.
        assert!(
            first + Duration::from_millis(20) >= before,
            "{first:?} < {before:?}"
        );
        assert_eq!(since_of_held(&m, 1), first, "a second look dates it again");
        lock.unlock().expect("unlock");
        std::thread::sleep(Duration::from_millis(100));
        let relocked = SystemTime::now();
        let _ = lock.lock().expect("lock");
        let second = since_of_held(&m, 1);
        assert!(
            second + Duration::from_millis(20) >= relocked,
            "the new hold (from {relocked:?}) is dated {second:?}, the first one {first:?}"
        );
        lock.unlock().expect("unlock");
    }

    /// A hold taken after waiting is dated when it was taken, not when someone looked.
    #[test]
    fn a_hold_taken_after_waiting_is_dated_when_taken() {
        let m = MemManager::new(2).expect("new");
        let other = m.new_owner();
        let lock = m.retrieve(LockId(0)).expect("retrieve");
        let _ = lock.lock().expect("lock");
        let waiter = std::thread::spawn(move || {
            let lock = other.retrieve(LockId(0)).expect("retrieve");
            let _ = lock.lock().expect("lock");
            let taken = SystemTime::now();
            std::thread::sleep(Duration::from_millis(200));
            lock.unlock().expect("unlock");
            taken
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while m
            .snapshot()
            .expect("snapshot")
            .iter()
            .all(|l| l.waiters.is_empty())
        {
            assert!(Instant::now() < deadline, "the waiter never showed");
            std::thread::sleep(Duration::from_millis(1));
        }
        lock.unlock().expect("unlock");
        std::thread::sleep(Duration::from_millis(100));
        let looked = SystemTime::now();
        let since = since_of_held(&m, 0);
        assert!(
            since + Duration::from_millis(50) < looked,
            "dated {since:?}, looked at {looked:?}"
        );
        let taken = waiter.join().expect("waiter");
        assert!(
            since <= taken + Duration::from_millis(20),
            "{since:?} after {taken:?}"
        );
    }

    #[test]
    fn named_tables_share_state_and_follow_the_lifecycle() {
        let name = format!("lock-mem-unit-{}", std::process::id());
        let (a, created) = MemManager::open_or_create(&name, 4).expect("create");
        assert!(created);
        let (b, created) = MemManager::open_or_create(&name, 4).expect("open");
        assert!(!created);
        assert!(matches!(
            MemManager::open_or_create(&name, 5),
            Err(Error::Incompatible { .. })
        ));
        for bad in [0, MAX_CAPACITY + 1] {
            assert!(matches!(
                MemManager::open_or_create(&name, bad),
                Err(Error::InvalidArgument { .. })
            ));
        }
        assert!(matches!(
            MemManager::create(&name, 4),
            Err(Error::AlreadyExists { .. })
        ));
        let id = a.allocate().expect("allocate").id();
        assert_eq!(b.available().expect("available"), Some(3));
        let _ = a.retrieve(id).expect("retrieve").lock().expect("lock");
        assert!(matches!(
            b.retrieve(id).expect("retrieve").unlock(),
            Err(Error::NotHeld(_))
        ));
        MemManager::remove(&name).expect("remove");
        assert!(matches!(
            MemManager::open(&name),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            MemManager::remove(&name),
            Err(Error::NotFound { .. })
        ));
    }

    /// A child forked while another thread holds the registry's lock opens and creates named
    /// tables of its own, at once, and does not see its parent's. With the registry a plain
    /// `static Mutex` the child hung in its first open.
    #[test]
    fn a_child_forked_while_the_registry_is_locked_has_its_own() {
        let name = format!("lock-mem-fork-{}", std::process::id());
        MemManager::create(&name, 2).expect("create");
        let parent = std::process::id();
        let (locked, is_locked) = std::sync::mpsc::channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let _registry = REGISTRY.lock(parent);
            locked.send(()).expect("locked");
            let _ = released.recv();
        });
        is_locked.recv().expect("registry held");
        let child_name = name.clone();
        let status = lock_conformance::fork::fork_and_wait(Duration::from_secs(10), move || {
            let own = matches!(MemManager::open(&child_name), Err(Error::NotFound { .. }))
                && MemManager::create(&child_name, 2).is_ok();
            i32::from(!own)
        })
        .expect("fork");
        release.send(()).expect("release");
        holder.join().expect("holder");
        MemManager::remove(&name).expect("the parent's table is still there");
        assert_eq!(
            status,
            Some(0),
            "the child hung (None) or saw its parent's table (1)"
        );
    }

    #[test]
    fn bad_capacities_are_invalid_arguments() {
        assert!(matches!(
            MemManager::new(0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            MemManager::new(MAX_CAPACITY + 1),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn owners_are_distinct_and_clones_share_one() {
        let manager = MemManager::new(2).expect("table");
        let clone = manager.clone();
        let other = manager.new_owner();
        let lock = manager.retrieve(LockId(0)).expect("retrieve");
        assert_eq!(lock.lock().expect("lock"), Acquired::Clean);
        assert!(matches!(
            other.retrieve(LockId(0)).expect("retrieve").unlock(),
            Err(Error::NotHeld(LockId(0)))
        ));
        clone
            .retrieve(LockId(0))
            .expect("retrieve")
            .unlock()
            .expect("same owner unlocks");
    }
}
