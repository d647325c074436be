//! `FileLocker`: one lock of a store, acting for its manager.
//!
//! The paths through `lock()`:
//!
//! - **Uncontended:** the slot's phase word from idle to taking (one compare-exchange, or a plain
//!   load and store while the slot is biased to this thread: this owner's threads take turns,
//!   see `slot.rs` and `bias.rs`), a load of the owner record (released), one
//!   `flock(LOCK_EX | LOCK_NB)` that succeeds, the record claimed, and the phase stored as held.
//! - **Contended:** the record is claimed, so another owner holds the lock (or died holding it):
//!   publish the wait in this manager's waiter file (two stores into a mapping), arm a timer for
//!   the deadlock check (process-local, see `wake.rs`), and block in ONE `flock(LOCK_EX)`. When
//!   the record was released but the non-blocking try still fails (another owner took the lock
//!   in between: the hand-over race), the same path follows that try, after a back-off of
//!   [`HANDOVER_BACK_OFF`] that leaves the lock to the winner for a while.
//! - **Past the deadlock timeout:** the process's timer thread walks the wait-for graph from
//!   this owner (checks come at 1, 3, 7, 15, ... timeouts into the wait, then every 32). Only if
//!   it sees a cycle does it interrupt the blocked `flock` with `SIGURG`; the waiter then checks
//!   itself and decides under the store's detection lock: it returns `Error::Deadlock` (after
//!   withdrawing its wait, before releasing the detection lock) or blocks again. So an idle
//!   waiter is not woken by its checks, nor are the waiters the kernel queues behind its `flock`
//!   (an interrupted one wakes them all to queue again). Where no timer thread can interrupt
//!   the waiter (polling), the waiter makes every check itself.
//!
//! `try_lock_for` takes the same path with its deadline as a second timer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_api::{Acquired, Error, Holder, Inspect, LockId, Locker, Result, find_cycle};
use rustix::fs::FlockOperation;

use crate::adopt::{self, Blocked};
use crate::flock;
use crate::manager::{Shared, owner_key};
use crate::owner::Entry;
use crate::record;
use crate::slot::{Release, Slot};
use crate::wake::Ticket;

/// The longest interval between two runs of a manager's scan (`adopt.rs`) while waits keep
/// registering, and the latest a new scan first runs: a deadlock timeout, but no longer than
/// this, so that a timeout lowered at run time (the scan is scheduled by the old one) reaches
/// the next waits within this long.
const MAX_SCAN_PERIOD: Duration = Duration::from_secs(1);

/// The longest interval between two deadlock checks of one wait, in deadlock timeouts: checks
/// come at 1, 3, 7, 15, ... timeouts into a wait, then every 32.
const MAX_CHECK_INTERVAL: u32 = 32;

/// How long an acquisition that lost the hand-over race (the owner record read released, and
/// the non-blocking try failed: another owner took the lock in that moment) spins, in
/// `WAITING`, before it publishes its wait and queues in the kernel.
///
/// Without it the loser's blocking `flock` reached the kernel at a random point of the
/// winner's next pair and often took the lock back in the winner's short gap between
/// `LOCK_UN` and its next try, so with short critical sections the lock changed process ten
/// times as often as between bare `flock` pairs, whose loser sleeps and takes a wake-up's
/// latency to come back (about 20 µs for a CPU that went idle, on the VM measured); 30 µs was
/// chosen among 5 to 40 µs by the comparison's contention group (ARCHITECTURE.md, lock-file,
/// "Decision: backing off after a lost hand-over").
const HANDOVER_BACK_OFF: Duration = Duration::from_micros(30);

/// A handle on one lock of a [`FileManager`](crate::FileManager)'s store.
///
/// Handles are cheap to clone; every handle of one manager and id is the same lock held by the
/// same owner, so a lock taken through one handle or thread may be released through another.
///
/// Re-locking is not re-entrant: [`lock`](Locker::lock) of a lock this manager already holds
/// waits until some thread of the manager unlocks it, and [`try_lock`](Locker::try_lock)
/// returns `Ok(None)`.
#[derive(Debug, Clone)]
pub struct FileLocker {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
}

impl FileLocker {
    pub(crate) fn new(shared: Arc<Shared>, slot: Arc<Slot>) -> FileLocker {
        FileLocker { shared, slot }
    }

    /// The lock file's path, for errors only (building it allocates).
    fn path(&self) -> std::path::PathBuf {
        self.shared.lock_path(self.slot.id)
    }

    /// Takes the lock, waiting until `deadline` (`None`: for ever): `try_lock_for`'s way, and
    /// where a `lock()` whose slot was busy goes.
    #[cold]
    #[inline(never)]
    fn acquire(&self, deadline: Option<Instant>) -> Result<Acquired> {
        let slot = &*self.slot;
        // This owner's threads take turns: wait while another of them holds or is taking it.
        let me = crate::bias::key();
        while !slot.phase.try_begin(me) {
            if !slot.phase.wait_idle(deadline) {
                return Err(Error::Timeout);
            }
        }
        self.acquire_from_taking(deadline)
    }

    /// The rest of an acquisition, in `TAKING`: one try the slow way, then the wait.
    #[cold]
    #[inline(never)]
    fn acquire_from_taking(&self, deadline: Option<Instant>) -> Result<Acquired> {
        let handing_over = self.record_released();
        if self.try_again()? {
            return Ok(self.claimed());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            self.slot.phase.abandon();
            return Err(Error::Timeout);
        }
        self.wait(deadline, handing_over)
    }

    /// Whether the owner record says that nobody holds the lock, so that a try that fails
    /// has lost the hand-over race; false on a store without records, which cannot tell.
    #[inline(always)]
    fn record_released(&self) -> bool {
        self.shared.owner_death && !self.shared.record(self.slot.id).is_claimed()
    }

    /// `flock(LOCK_EX | LOCK_NB)` in `TAKING` the slow way (`EINTR` retried, errors typed with the
    /// path), after the inlined try met an error or the slot was busy; an error leaves the slot
    /// idle again.
    fn try_again(&self) -> Result<bool> {
        flock::try_lock(&self.slot.file, &|| self.path()).inspect_err(|_| self.slot.phase.abandon())
    }

    /// Waits for another owner to release the lock, called in `TAKING`: the slot is marked
    /// `WAITING`, so this owner's other threads wait for this one (asleep), and the wait is
    /// published for everyone. After a lost hand-over race (`handing_over`), the wait first
    /// backs off (see [`HANDOVER_BACK_OFF`]).
    #[cold]
    #[inline(never)]
    fn wait(&self, deadline: Option<Instant>, handing_over: bool) -> Result<Acquired> {
        let slot = &*self.slot;
        slot.phase.wait_for_others();
        if handing_over {
            #[cfg(test)]
            tests::BACK_OFFS.with(|b| b.set(b.get() + 1));
            spin_until(back_off_end(Instant::now(), deadline));
        }
        let waited = self.shared.publish(slot.id).and_then(|mut entry| {
            let waited = match deadline {
                None => self.block_adoptable(&mut entry),
                Some(_) => self.block(deadline, &mut entry),
            };
            // A deadlock victim withdrew its wait already, under the detection lock.
            if let Some(entry) = entry {
                self.shared.withdraw(entry);
            }
            waited
        });
        match waited {
            Ok(()) => {
                let acquired = self.claim();
                slot.phase.waited(true);
                Ok(acquired)
            }
            Err(e) => {
                slot.phase.waited(false);
                Err(e)
            }
        }
    }

    /// A `lock()`'s wait: blocks in `flock(LOCK_EX)` at once, with no timer. The wait is
    /// registered for the manager's scan (`adopt.rs`), which arms its deadlock check, due one
    /// deadlock timeout after the wait began, if it finds the wait still blocked; so a contended
    /// wait that ends within microseconds, as nearly all do, costs no timer. When that check
    /// sees a cycle through this owner it interrupts the wait, which then makes the whole check
    /// and goes on as an armed wait ([`block`](Self::block)'s loop).
    ///
    /// Waits that cannot be adopted (unpublished, detection off, no timer thread or another
    /// `SIGURG` handler) take [`block`](Self::block), which knows what to do with each.
    fn block_adoptable(&self, entry: &mut Option<Entry>) -> Result<()> {
        let shared = &self.shared;
        let (Some(index), Some(timeout), Some(waker)) = (
            entry.as_ref().map(Entry::index),
            shared.deadlock_timeout(),
            shared.waker().filter(|_| crate::wake::handler_installed()),
        ) else {
            return self.block(None, entry);
        };
        let waits = shared.waits();
        let wait = Blocked {
            thread: adopt::thread_bits(waker.current()),
            start: adopt::now_ms(),
        };
        loop {
            if waits.register(index, wait) {
                // No scan is running: this wait starts one, due when its check would be (a
                // timeout too long to add to now leaves the wait to the scan, which arms no
                // check for it, as `block` would arm none).
                let now = Instant::now();
                let latest = now + MAX_SCAN_PERIOD;
                let due = now.checked_add(timeout).map_or(latest, |d| d.min(latest));
                waker.spawn(due, scan_job(Arc::downgrade(shared)));
            }
            let result = rustix::fs::flock(&self.slot.file, FlockOperation::LockExclusive);
            let fired = waits
                .end(index)
                .is_some_and(|ticket| waker.disarm(Ticket::from_number(ticket)));
            match result {
                Ok(()) => {
                    if fired {
                        // As in `block`: let the late signal land here.
                        rustix::thread::sched_yield();
                    }
                    return Ok(());
                }
                // The adopted check saw a cycle through this owner.
                Err(rustix::io::Errno::INTR) if fired => {
                    let mut interval = 1;
                    let check_at = self.check_now(entry, &mut interval, Instant::now())?;
                    return self.block_from(None, entry, check_at, interval);
                }
                // Some other signal: block again, still registered from the same start.
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(Error::io("flock", self.path(), std::io::Error::from(e)));
                }
            }
        }
    }

    /// Blocks in `flock(LOCK_EX)` until the lock is taken, `deadline` passes (`Timeout`) or a
    /// deadlock check finds this wait closing a cycle (`Deadlock`).
    fn block(&self, deadline: Option<Instant>, entry: &mut Option<Entry>) -> Result<()> {
        // An unpublished wait is in nobody's graph: it has nothing to check.
        let check_at = entry
            .as_ref()
            .and(self.shared.deadlock_timeout())
            .and_then(|d| Instant::now().checked_add(d));
        self.block_from(deadline, entry, check_at, 1)
    }

    /// [`block`](Self::block)'s loop, with the next deadlock check at `check_at` (none: no
    /// checks) and `interval` deadlock timeouts after the one before.
    fn block_from(
        &self,
        deadline: Option<Instant>,
        entry: &mut Option<Entry>,
        mut check_at: Option<Instant>,
        mut interval: u32,
    ) -> Result<()> {
        let shared = &*self.shared;
        let file = &self.slot.file;
        let path = || self.path();
        // Timers need the process's timer thread and a thread that `SIGURG` interrupts. A
        // bounded wait must end at its deadline, so it looks at this thread's signal mask (one
        // system call) and polls if the signal is blocked; a `lock()` on such a thread blocks
        // anyway (it acquires all the same, it only cannot check for deadlocks itself).
        let mut timers = None;
        loop {
            let due = match (deadline, check_at) {
                (Some(d), Some(c)) => Some(d.min(c)),
                (d, c) => d.or(c),
            };
            if due.is_some() && timers.is_none() {
                let waker = shared.waker().filter(|_| {
                    if deadline.is_some() {
                        crate::wake::interruptible()
                    } else {
                        crate::wake::handler_installed()
                    }
                });
                timers = Some(waker);
            }
            let taken = match (due, timers.flatten()) {
                (None, _) => {
                    flock::lock(file, &path)?;
                    true
                }
                (Some(_), Some(waker)) => {
                    // The deadline interrupts this thread when it comes. A deadlock check runs
                    // on the timer thread, and interrupts this thread only when it sees a cycle
                    // through this owner: an idle waiter is not woken by its checks (nor, in
                    // the kernel's tree of blocked `flock`s, are the waiters queued behind it).
                    let deadline_ticket = deadline.map(|d| waker.arm(d));
                    let check_ticket = check_at
                        .map(|at| waker.arm_job(at, check_job(Arc::clone(&self.shared), interval)));
                    let result = rustix::fs::flock(file, FlockOperation::LockExclusive);
                    let fired = [deadline_ticket, check_ticket]
                        .into_iter()
                        .flatten()
                        .fold(false, |fired, ticket| waker.disarm(ticket) | fired);
                    match result {
                        Ok(()) => {
                            if fired {
                                // The signal came after the lock: let it land now, on this
                                // thread's next return from the kernel, rather than in some
                                // later system call of the caller's.
                                rustix::thread::sched_yield();
                            }
                            true
                        }
                        Err(rustix::io::Errno::INTR) => false,
                        Err(e) => {
                            return Err(Error::io("flock", path(), std::io::Error::from(e)));
                        }
                    }
                }
                // No timer thread here (or this thread cannot be interrupted): poll until `due`.
                (Some(due), None) => flock::lock_until(file, &path, due)?,
            };
            if taken {
                return Ok(());
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                // One last try, so that a release right at the deadline is not missed.
                return if flock::try_lock(file, &path)? {
                    Ok(())
                } else {
                    Err(Error::Timeout)
                };
            }
            if check_at.is_some_and(|at| now >= at) {
                check_at = self.check_now(entry, &mut interval, now)?;
            }
        }
    }

    /// Makes the deadlock check that fell due at `now` (`Deadlock` when this wait is the
    /// victim) and says when the next one comes: `interval` doubled, or shortly when another
    /// check held the detection lock.
    fn check_now(
        &self,
        entry: &mut Option<Entry>,
        interval: &mut u32,
        now: Instant,
    ) -> Result<Option<Instant>> {
        Ok(if self.check_deadlock(entry)? {
            next_check(&self.shared, interval, now)
        } else {
            now.checked_add(retry_delay(self.shared.owner))
        })
    }

    /// Checks whether this wait closes a cycle; `Ok(false)` when it may and another check holds
    /// the detection lock (nothing was decided: try again shortly).
    ///
    /// The graph is read once without the lock: most checks find no cycle and end there,
    /// touching no lock. A cycle seen is read again under the store's detection lock, and
    /// accepted only if it is the same, with the same `since` for every member's hold and
    /// wait: so no wait that was ending, no victim that withdrew meanwhile and no torn read
    /// makes a cycle that was not there. The victim withdraws its wait before the detection
    /// lock is released, so the next member to check sees no cycle, and returns `Deadlock`.
    #[cold]
    fn check_deadlock(&self, entry: &mut Option<Entry>) -> Result<bool> {
        if entry.is_none() {
            // An unpublished wait is in nobody's graph, its own included.
            return Ok(true);
        }
        let shared = &*self.shared;
        let me = owner_key(shared.owner);
        let first = shared.wait_graph_from(shared.owner)?;
        let Some(cycle) = find_cycle(&first, &me) else {
            return Ok(true);
        };
        let decided = shared.try_detecting(|| {
            let second = shared.wait_graph_from(shared.owner)?;
            let confirmed = find_cycle(&second, &me).as_ref() == Some(&cycle)
                && cycle_view(&first, &cycle) == cycle_view(&second, &cycle);
            if !confirmed {
                return Ok(());
            }
            if let Some(entry) = entry.take() {
                shared.withdraw(entry);
            }
            Err(Error::Deadlock {
                cycle: cycle.clone(),
            })
        })?;
        Ok(decided.is_some())
    }

    /// Records the acquisition just made by `flock` in the owner record, and reports how the
    /// lock was left. The record is written before the phase says `HELD`: a thread of this owner
    /// that unlocks at once must find it claimed, or its release would come before the claim.
    #[inline(always)]
    fn claim(&self) -> Acquired {
        let shared = &*self.shared;
        if shared.owner_death
            && shared.record(self.slot.id).claim(
                shared.owner,
                record::stamp(shared.stamp_pid),
                shared.pid_ns,
            )
        {
            Acquired::OwnerDied
        } else {
            Acquired::Clean
        }
    }

    /// The first try took the lock (`TAKING`): record it, and the slot is `HELD`.
    #[inline(always)]
    fn claimed(&self) -> Acquired {
        let acquired = self.claim();
        self.slot.phase.take();
        acquired
    }

    /// `try_lock` after the inlined try met an error, still in `TAKING`: once more, reporting
    /// errors.
    #[cold]
    #[inline(never)]
    fn try_lock_slow(&self) -> Result<Option<Acquired>> {
        if self.try_again()? {
            Ok(Some(self.claimed()))
        } else {
            self.slot.phase.abandon();
            Ok(None)
        }
    }

    /// `unlock` after `flock(LOCK_UN)` failed: once more (retrying `EINTR`), and if it still
    /// fails the lock is still held, so the claim is put back and the error returned.
    #[cold]
    #[inline(never)]
    fn unlock_slow(&self, release: Release) -> Result<()> {
        let slot = &*self.slot;
        match flock::unlock(&slot.file, &|| self.path()) {
            Ok(()) => {
                slot.phase.released(release);
                Ok(())
            }
            Err(e) => {
                if self.shared.owner_death {
                    self.shared.record(slot.id).reclaim(self.shared.owner);
                }
                slot.phase.still_held(release);
                Err(e)
            }
        }
    }
}

/// When the back-off after a lost hand-over race begun at `now` ends: [`HANDOVER_BACK_OFF`]
/// later, or at `deadline` if that comes first (the wait then makes its last try at once).
fn back_off_end(now: Instant, deadline: Option<Instant>) -> Instant {
    let end = now.checked_add(HANDOVER_BACK_OFF).unwrap_or(now);
    deadline.map_or(end, |d| d.min(end))
}

/// Spins on the clock until `end`, pausing between reads.
fn spin_until(end: Instant) {
    while Instant::now() < end {
        for _ in 0..8 {
            std::hint::spin_loop();
        }
    }
}

/// The deadlock check's first look, for the timer thread: the wait-for graph read from this
/// owner without any lock. No cycle through this owner (the usual answer): look again at
/// the next check time, doubling the interval as [`FileLocker::block`] does, without
/// waking the waiter. A cycle, or an error reading the graph: interrupt the waiter, which
/// then makes the whole check itself (`FileLocker::check_deadlock`), so the
/// decision and the victim's withdrawal stay where they were, on the waiting thread.
fn check_job(shared: Arc<Shared>, mut interval: u32) -> crate::wake::Job {
    // The owner's name is made only when the job runs: most waits end long before their
    // first check, and a string made for each of them (a `format!`, an allocation and a
    // free) cost about a quarter of what a 2-process pair lost to a bare `flock` pair
    // (`file-contended-2proc`: 1.27 × the bare pair with it, 1.20 × without).
    Box::new(move || match shared.wait_graph_from(shared.owner) {
        Ok(graph) if find_cycle(&graph, &owner_key(shared.owner)).is_none() => {
            match next_check(&shared, &mut interval, Instant::now()) {
                Some(at) => crate::wake::Next::At(at),
                // Detection was turned off meanwhile.
                None => crate::wake::Next::Done,
            }
        }
        _ => crate::wake::Next::Signal,
    })
}

/// The manager's scan (`adopt.rs`), for the timer thread: adopts every `lock()` of the
/// manager still blocked, arming its deadlock check ([`check_job`]) for its thread, due one
/// deadlock timeout after the wait began; runs again one timeout later while waits keep
/// registering, and ends when the manager is gone.
fn scan_job(shared: std::sync::Weak<Shared>) -> crate::wake::Job {
    Box::new(move || {
        let Some(shared) = shared.upgrade() else {
            return crate::wake::Next::Done;
        };
        let Some(waker) = shared.waker() else {
            return crate::wake::Next::Done;
        };
        let timeout = shared.deadlock_timeout();
        let now = Instant::now();
        let now_ms = adopt::now_ms();
        let again = shared.waits().scan(|wait| {
            // Detection was turned off, or its timeout made so long that the check never comes:
            // the wait needs no check (as an armed wait would have none).
            let timeout = timeout?;
            let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            let late_by = wait.start.saturating_add(timeout_ms).saturating_sub(now_ms);
            let due = now.checked_add(Duration::from_millis(late_by))?;
            let job = check_job(Arc::clone(&shared), 1);
            Some(
                waker
                    .arm_job_for(adopt::thread_of(wait.thread), due, job)
                    .number(),
            )
        });
        if again {
            // A scan only needs to come before the checks it arms are due: a timeout after the
            // last one; and no later than `MAX_SCAN_PERIOD`, for a timeout lowered meanwhile.
            let period = timeout.map_or(MAX_SCAN_PERIOD, |t| t.min(MAX_SCAN_PERIOD));
            crate::wake::Next::At(now + period)
        } else {
            crate::wake::Next::Done
        }
    })
}

/// When the check after one that decided nothing comes: `interval` (in deadlock timeouts)
/// doubles, up to [`MAX_CHECK_INTERVAL`]; `None` when detection is off.
fn next_check(shared: &Shared, interval: &mut u32, now: Instant) -> Option<Instant> {
    *interval = (*interval * 2).min(MAX_CHECK_INTERVAL);
    shared
        .deadlock_timeout()
        .and_then(|d| now.checked_add(d * *interval))
}

/// How long a check that found the detection lock taken waits before it tries again: 1 to 8
/// ms, spread by the clock's nanoseconds and the owner number so that waiters whose checks fell
/// due together do not keep meeting.
fn retry_delay(owner: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let spread = u64::from(nanos) ^ owner.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    Duration::from_micros(1_000 + spread % 7_000)
}

/// What a cycle's members look like in a wait-for graph: for each lock of the cycle, its holder
/// and those of its waiters that are members, with their `since`, which tells one acquisition
/// or wait from the next.
fn cycle_view(
    graph: &[lock_api::LockState],
    cycle: &lock_api::Cycle,
) -> Vec<(LockId, Option<Holder>, Vec<Holder>)> {
    let member = |h: &Holder| {
        cycle
            .0
            .iter()
            .any(|e| h.owner.as_deref() == Some(e.owner.as_str()))
    };
    graph
        .iter()
        .filter(|s| cycle.0.iter().any(|e| e.waits_for == s.id))
        .map(|s| {
            let waiters = s.waiters.iter().filter(|w| member(w)).cloned().collect();
            (s.id, s.holder.clone(), waiters)
        })
        .collect()
}

impl Locker for FileLocker {
    #[inline]
    fn id(&self) -> LockId {
        LockId(self.slot.id)
    }

    // Always inlined, down to the system call: see `flock::try_lock_fast` for why every frame
    // counts here.
    #[inline(always)]
    fn lock(&self) -> Result<Acquired> {
        let slot = &*self.slot;
        let shared = &*self.shared;
        shared.usable()?;
        if slot.phase.try_begin(crate::bias::key()) {
            // A claimed record: another owner holds the lock (or died holding it). Go straight
            // to the one blocking call rather than trying first.
            let handing_over = self.record_released();
            if shared.owner_death && !handing_over {
                return self.wait(None, false);
            }
            return match flock::try_lock_fast(&slot.file) {
                Ok(true) => Ok(self.claimed()),
                Ok(false) => self.wait(None, handing_over),
                // Errors (even EINTR) are rare: the slow path retries and reports them.
                Err(_) => self.acquire_from_taking(None),
            };
        }
        self.acquire(None)
    }

    #[inline(always)]
    fn try_lock(&self) -> Result<Option<Acquired>> {
        let slot = &*self.slot;
        self.shared.usable()?;
        if !slot.phase.try_begin(crate::bias::key()) {
            return Ok(None);
        }
        match flock::try_lock_fast(&slot.file) {
            Ok(true) => Ok(Some(self.claimed())),
            Ok(false) => {
                slot.phase.abandon();
                Ok(None)
            }
            Err(_) => self.try_lock_slow(),
        }
    }

    fn try_lock_for(&self, timeout: Duration) -> Result<Acquired> {
        self.shared.usable()?;
        // A timeout too large to add to now is as good as none.
        self.acquire(Instant::now().checked_add(timeout))
    }

    #[inline(always)]
    fn unlock(&self) -> Result<()> {
        let slot = &*self.slot;
        self.shared.usable()?;
        let Some(release) = slot.phase.begin_release(crate::bias::key()) else {
            return Err(Error::NotHeld(self.id()));
        };
        if self.shared.owner_death {
            self.shared.record(slot.id).release();
        }
        match flock::unlock_fast(&slot.file) {
            Ok(()) => {
                slot.phase.released(release);
                Ok(())
            }
            Err(_) => self.unlock_slow(release),
        }
    }

    fn free(&self) -> Result<()> {
        self.shared.usable()?;
        let id = self.slot.id;
        if self.shared.with_bitmap(|b| b.clear(id))? {
            Ok(())
        } else {
            Err(Error::NotAllocated(self.id()))
        }
    }
}

impl Inspect for FileLocker {
    /// The holder as [`held`](lock_api::Manager::held) names it (pid, host, owner, since, dead
    /// flag), or an empty [`Holder`] when the store keeps no records; `None` when the lock is
    /// free. A holder that died holding the lock is returned with `dead` set until someone
    /// takes the lock over.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the lock file cannot be opened for the probe. A damaged lock file
    /// (`Corrupt`) cannot be probed: the record is reported as it stands.
    fn holder(&self) -> Result<Option<Holder>> {
        self.shared.usable()?;
        self.shared.holder(self.slot.id)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::fs::File;

    use lock_api::Manager;

    use super::*;
    use crate::{FileManager, StoreOptions};

    thread_local! {
        /// How many times this thread backed off after a lost hand-over race.
        pub(super) static BACK_OFFS: Cell<u32> = const { Cell::new(0) };
    }

    /// The longest any step of these tests waits for another thread.
    const BOUND: Duration = Duration::from_secs(10);

    #[test]
    fn the_back_off_lasts_its_span_unless_the_deadline_comes_first() {
        let now = Instant::now();
        let span_end = now + HANDOVER_BACK_OFF;
        assert_eq!(back_off_end(now, None), span_end);
        assert_eq!(back_off_end(now, Some(now + BOUND)), span_end);
        let sooner = now + HANDOVER_BACK_OFF / 3;
        assert_eq!(back_off_end(now, Some(sooner)), sooner);
        assert_eq!(back_off_end(now, Some(now)), now);
    }

    /// A store of 2 locks in a new temporary directory, with or without owner records.
    fn store(owner_death: bool) -> (tempfile::TempDir, std::path::PathBuf, FileManager) {
        let root = tempfile::tempdir().expect("temp dir");
        let path = root.path().join("store");
        let manager = StoreOptions::new(2)
            .owner_death(owner_death)
            .create(&path)
            .expect("create");
        (root, path, manager)
    }

    /// Holds `lock`'s file through a description of its own: a holder with no owner record,
    /// as another owner is between its `flock` and its claim.
    fn hold_without_record(lock: &FileLocker) -> File {
        let file = File::open(lock.path()).expect("open the lock file");
        rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).expect("flock");
        file
    }

    /// Runs `acquire` on `lock` on a new thread while the lock is held, lets `release` go once
    /// the thread's wait is published, and returns what `acquire` returned and how many times
    /// the thread backed off.
    fn acquire_while_held(
        manager: &FileManager,
        lock: &FileLocker,
        acquire: fn(&FileLocker) -> Result<Acquired>,
        release: impl FnOnce(),
    ) -> (Result<Acquired>, u32) {
        let waiter = lock.clone();
        let thread = std::thread::spawn(move || {
            let result = acquire(&waiter);
            if result.is_ok() {
                waiter.unlock().expect("unlock");
            }
            (result, BACK_OFFS.with(Cell::get))
        });
        let give_up = Instant::now() + BOUND;
        while !manager
            .snapshot()
            .expect("snapshot")
            .iter()
            .any(|s| s.id == lock.id() && !s.waiters.is_empty())
        {
            assert!(Instant::now() < give_up, "the wait was never published");
            std::thread::sleep(Duration::from_millis(1));
        }
        release();
        thread.join().expect("the waiter panicked")
    }

    /// How many times `acquire` backs off, on a store with or without owner records, against
    /// a holder without a record that lets go once the wait is published; it must take the
    /// lock.
    fn back_offs_against_a_holder_without_record(
        owner_death: bool,
        acquire: fn(&FileLocker) -> Result<Acquired>,
    ) -> u32 {
        let (_root, _path, manager) = store(owner_death);
        let lock = manager.allocate().expect("allocate");
        let holder = hold_without_record(&lock);
        let (result, back_offs) = acquire_while_held(&manager, &lock, acquire, || drop(holder));
        assert_eq!(result.expect("acquire"), Acquired::Clean);
        back_offs
    }

    #[test]
    fn a_lock_that_loses_the_hand_over_backs_off_once_then_waits() {
        assert_eq!(
            back_offs_against_a_holder_without_record(true, |l| l.lock()),
            1
        );
        assert_eq!(
            back_offs_against_a_holder_without_record(true, |l| l.try_lock_for(BOUND)),
            1,
            "try_lock_for backs off as lock does"
        );
    }

    #[test]
    fn a_lock_held_under_a_claimed_record_is_waited_for_at_once() {
        let (_root, path, manager) = store(true);
        let lock = manager.allocate().expect("allocate");
        let other = FileManager::open(&path).expect("a second owner");
        let held = other.retrieve(lock.id()).expect("retrieve");
        assert_eq!(held.lock().expect("lock"), Acquired::Clean);
        let (result, back_offs) = acquire_while_held(
            &manager,
            &lock,
            |l| l.lock(),
            || {
                held.unlock().expect("unlock");
            },
        );
        assert_eq!(result.expect("lock"), Acquired::Clean);
        assert_eq!(back_offs, 0);
    }

    #[test]
    fn a_store_without_records_cannot_tell_a_hand_over_and_does_not_back_off() {
        assert_eq!(
            back_offs_against_a_holder_without_record(false, |l| l.lock()),
            0
        );
    }

    #[test]
    fn a_wait_that_times_out_after_a_lost_hand_over_leaves_the_lock_usable() {
        let (_root, _path, manager) = store(true);
        let lock = manager.allocate().expect("allocate");
        let holder = hold_without_record(&lock);
        // A deadline past the back-off, then one inside it (where the first try may already
        // have used it up, and the back-off must stop at it).
        for (timeout, expected) in [
            (Duration::from_millis(100), Some(1)),
            (HANDOVER_BACK_OFF / 3, None),
        ] {
            let waiter = lock.clone();
            let (result, back_offs) = std::thread::spawn(move || {
                let result = waiter.try_lock_for(timeout);
                (result, BACK_OFFS.with(Cell::get))
            })
            .join()
            .expect("the waiter panicked");
            assert!(matches!(result, Err(Error::Timeout)), "{result:?}");
            assert!(back_offs <= 1);
            if let Some(expected) = expected {
                assert_eq!(back_offs, expected);
            }
        }
        // The slot is idle again: once the holder lets go, this owner takes the lock.
        drop(holder);
        assert_eq!(lock.try_lock().expect("try_lock"), Some(Acquired::Clean));
        lock.unlock().expect("unlock");
    }
}
