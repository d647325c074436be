//! A blocked `lock` or `try_lock_for` on a table lock: the real [`Sys`] the lock-word protocol
//! waits with, plus what only table locks have: the waiter entry in the client slot, and the
//! deadlock checks.
//!
//! A waiter sleeps on its lock word, on its holder's death word and, when the holder armed one,
//! on its holder's life word at once (`futex_waitv`; life.rs: the kernel may wake it directly at
//! the holder's death, and it then wakes the word's other sleepers), and makes sure a watcher
//! thread of its manager watches the holder (watch.rs): it wakes when the lock is released or the
//! holder dies, and otherwise only for its deadline, its deadlock checks
//! (one deadlock timeout after it began waiting, then rarely: see [`RECHECK`]) and, every
//! [`SAFETY_PROBE`], a full probe of the holder (in case a watcher could not do its job).
//! Without `futex_waitv` (Linux before 5.16) or a watcher thread, it falls back to polling: a
//! full probe every [`PROBE_INTERVAL`].
//!
//! The protocol (lockword.rs) may spin first (a table lock's waiter does not: see
//! [`LockWaiter::spins`]); then it calls [`Sys::publish`], which writes this wait into a waiter
//! entry of the manager's slot (client.rs).
//! A waiter that finds the lock taken by another owner, at its first look or after a release woke
//! it, asks for a hand-off at the end of the holder's turn (turn.rs) and watches for it awake for
//! a moment ([`WATCH`]) before it sleeps; one that finds the word handed to another waiter asks
//! for the turn after the taker's and sleeps ([`HANDED_GRACE`]); one that finds the word free
//! takes it only once it has stayed free for a moment ([`LINGER_LOOKS`]; lockword.rs, "Handing
//! off").
//! The entry is withdrawn when the waiter is dropped, however the wait ended, or earlier, by a
//! deadlock victim, while it still holds the detection lock (observe.rs).

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::time::{Duration, Instant};

use lock_api::Result;

use crate::client::{self, Probe, WAIT_ENTRIES};
use crate::futex::{self, PROBE_INTERVAL};
use crate::life;
use crate::lockword::OWNER;
use crate::lockword::{Sys, Tick};
use crate::manager::Shared;
use crate::observe::{self, Checked};
use crate::segment::{Le32, unix_now};
use crate::slice;

/// How soon a waiter checks again when another detector held the detection lock.
const BUSY_RETRY: Duration = Duration::from_millis(10);
/// How often a waiter that relies on watchers still probes its holder in full, in case its
/// watcher could not do its job. Rare on purpose: every wake-up of an idle waiter costs tens of
/// microseconds of CPU (a timer, two context switches).
const SAFETY_PROBE: Duration = Duration::from_secs(30);
/// How many deadlock timeouts apart the checks of one wait come: the first one timeout after
/// the wait began, the second 16 after the first, then every 64 (with the default 1 s: 1, 17,
/// 81, 145, ... s into the wait). Only the first check is needed for a cycle of owners that wait
/// in one thread each (the last member to join finds it); the rare re-checks catch a cycle that
/// closes without a new wait (an owner with several threads, one of which acquires a lock that
/// another member waits for). Every wake-up of an idle waiter costs CPU: 0.05 to 0.4 ms of it
/// on this VM (the least when the machine is busy).
const RECHECK: [u32; 3] = [1, 16, 64];

/// How long a wait lasts before the waiter, when its holder armed a life word, sleeps on a
/// short slice (slice.rs) and queues on the life word ahead of its watcher (life.rs); a sleep
/// that begins sooner ends by then. A waiter woken by a release under contention then keeps its
/// own slice, and does not preempt the process that released. Measured in the comparison bench
/// (shm and glibc, six alternating runs of each version in one sitting), against a short slice
/// from the first sleep: 14-16 ns a pair at 2, 4 and 8 processes against 17-19 / 14-16 / 21-28,
/// fairness at 4 processes 1.06 × glibc's (median; 5 of 6 runs at least glibc's) against 0.97
/// (2 of 6), pairs per CPU-second at 4 processes 0.89-0.96 against 0.85-0.96 (glibc 0.71-0.96);
/// takeover median 97-125 µs against 98-126 in three alternating runs. Without the wake-up that
/// queues the waiter first, the takeover median was 146-178 µs: the kernel woke the watcher,
/// which then woke the waiter.
const URGENT_AFTER: Duration = Duration::from_millis(1);
/// How long a waiter that asked for a hand-off watches the word awake for it before it sleeps:
/// a fifth of a turn of the benches' holders (turn.rs), so that a waiter that arrives late in a
/// turn takes the lock within a few cache misses, and bounded so that a holder that runs long (or
/// is preempted) does not have a waiter spinning behind it. Measured as in turn.rs: with 2 µs or
/// 30 µs, fairness at 2 processes fell to 0.90-0.91 in single runs where 10 µs gave 0.96-1.00.
const WATCH: Duration = Duration::from_micros(10);
/// How many looks, about 0.15 µs apart, a waiter gives a free word before it takes it (about
/// 2 µs): a holder that takes the lock again in a loop does so within nanoseconds, and a waiter
/// that took the word in between would end that holder's turn early, by a race that the faster
/// CPU wins. A holder that does not come back costs the waiter these 2 µs, next to the tens of
/// microseconds of its wake-up. Without it, two in five changes of hands at 2 processes were such
/// races (counted in a throwaway build), and fairness was 0.86-0.96 in single runs; with 30 looks
/// (5 µs), no fairer than with 12.
const LINGER_LOOKS: u32 = 12;
/// How long a waiter that has not slept sleeps on a handed word before it may take it itself:
/// long enough for the sleeper it was handed to to wake, short enough that a hand-off whose
/// taker is gone stalls nobody for long (lockword.rs, "Handing off").
const HANDED_GRACE: Duration = Duration::from_millis(1);

/// What a waiter read of its holder's slot before it probed the holder: the slot, its death
/// word, and its life word when the waiter is to sleep on it too (armed, `FUTEX_WAITERS` set).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    slot: u32,
    death: u32,
    life: Option<u32>,
}

/// Where this wait is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// Not (or no longer) published.
    None,
    /// In entry `i` of the slot.
    Listed(usize),
    /// Every entry was taken: only counted.
    Unlisted,
}

/// One blocked acquisition of lock `id` by the manager `shared`.
pub(crate) struct LockWaiter<'a> {
    shared: &'a Shared,
    id: u32,
    deadline: Option<Instant>,
    last_probe: Instant,
    now: Instant,
    /// When the wait began (for [`URGENT_AFTER`]).
    start: Instant,
    /// Until when a waiter that asked for the lock watches for its hand-off.
    watch_until: Option<Instant>,
    entry: Entry,
    /// When the next deadlock check is due (`None`: detection off).
    next_check: Option<Instant>,
    /// Whether this wait relies on watchers and `futex_waitv`; otherwise it polls.
    watching: bool,
    /// Deadlock checks done so far (for the backoff).
    checks: u32,
    /// The owner whose watcher this wait made sure of last.
    watched: Option<u32>,
    /// This thread's short slice, from its first sleep on a holder's life word once the wait
    /// has lasted [`URGENT_AFTER`], to the end of the wait (slice.rs).
    urgent: Option<slice::Urgent>,
}

impl<'a> LockWaiter<'a> {
    pub(crate) fn new(shared: &'a Shared, id: u32, deadline: Option<Instant>) -> Self {
        let now = Instant::now();
        LockWaiter {
            shared,
            id,
            deadline,
            last_probe: now,
            now,
            start: now,
            watch_until: None,
            entry: Entry::None,
            next_check: None,
            watching: futex::waitv_available(),
            checks: 0,
            watched: None,
            urgent: None,
        }
    }

    /// How often the holder is probed in full.
    fn probe_interval(&self) -> Duration {
        if self.watching {
            SAFETY_PROBE
        } else {
            PROBE_INTERVAL
        }
    }

    /// The wait ended by acquiring: its entry becomes the hold's record (client.rs, "Hold
    /// records"), dated now, and stays reserved until the hold's unlock takes it back. Without
    /// an entry, nothing is recorded: the hold is dated by its first sighting.
    pub(crate) fn record_hold(&mut self) -> Result<()> {
        if let Entry::Listed(i) = self.entry {
            let since_ms = u64::try_from(unix_now().as_millis()).unwrap_or(u64::MAX);
            let shared = self.shared;
            client::record_hold(
                &shared.seg,
                &shared.layout,
                shared.slot,
                i,
                self.id,
                since_ms,
            )?;
            self.entry = Entry::None;
        }
        Ok(())
    }

    /// `sleep`, cut short so that it ends by the deadline (as of this round's clock reading).
    fn within_deadline(&self, sleep: Duration) -> Duration {
        self.deadline.map_or(sleep, |deadline| {
            sleep.min(deadline.saturating_duration_since(self.now))
        })
    }

    /// Takes this wait's entry back (idempotent).
    fn withdraw(&mut self) -> Result<()> {
        let (seg, layout, slot) = (&self.shared.seg, &self.shared.layout, self.shared.slot);
        match std::mem::replace(&mut self.entry, Entry::None) {
            Entry::None => Ok(()),
            Entry::Listed(i) => {
                let withdrawn = client::withdraw_wait(seg, layout, slot, i);
                self.shared.entries.fetch_and(!(1 << i), AcqRel);
                withdrawn
            }
            Entry::Unlisted => client::count_unlisted(seg, layout, slot, false),
        }
    }

    /// When the next check is due after one at `now` (or the wait's start), if detection is
    /// on ([`RECHECK`]).
    fn schedule(&self, now: Instant) -> Option<Instant> {
        let times = RECHECK[(self.checks as usize).min(RECHECK.len() - 1)];
        self.shared
            .deadlock_timeout()
            .and_then(|t| t.checked_mul(times))
            .and_then(|t| now.checked_add(t))
    }
}

impl Drop for LockWaiter<'_> {
    fn drop(&mut self) {
        // Only a damaged segment makes this fail; the entry then stays until the slot is
        // claimed again, which shows a stale waiter but breaks nothing.
        let _ = self.withdraw();
        // A request for a hand-off that this wait no longer needs (it took the lock some other
        // way than by a hand-off, or gave up) would hand the lock to whoever sleeps at the next
        // contended unlock, or to nobody: withdraw it. Another starver's request goes with it;
        // that one asks again when it next loses. (A wait that took a handed word has no
        // request left to withdraw: `took_handed`.)
        if self.watch_until.is_some()
            && let Ok(since) = self.shared.since_word(self.id)
        {
            observe::withdraw_hand_off(since);
        }
    }
}

impl Sys<Le32> for LockWaiter<'_> {
    type Seen = Seen;

    /// None: a table lock's waiter goes to sleep at its first failed look. Measured with the
    /// crate's bench (2, 4, 8 processes looping on one lock, in one sitting, 3 rounds): when the
    /// processes really run in parallel, spinning 10 to 1,000 times cost 1.0-1.5 × glibc per
    /// pair, because every look of a spinner pulls the word's cache line away from the holder,
    /// while not spinning cost 0.56-0.72 ×.
    fn spins(&self) -> u32 {
        0
    }

    /// Always, on a table lock: sets the starving bit of the lock's since word (observe.rs),
    /// which the holder's unlock reads at the end of its turn (turn.rs), and watches for
    /// [`WATCH`].
    fn starving(&mut self) -> bool {
        let now = Instant::now();
        let Ok(since) = self.shared.since_word(self.id) else {
            return false;
        };
        observe::request_hand_off(since);
        self.watch_until = Some(now + WATCH);
        true
    }

    /// Spins without touching shared memory for about 0.15 µs, then reads the clock.
    fn watching(&mut self) -> bool {
        for _ in 0..16 {
            std::hint::spin_loop();
        }
        self.watch_until.is_some_and(|until| Instant::now() < until)
    }

    /// Spins without touching shared memory for about 0.15 µs per look, for [`LINGER_LOOKS`]
    /// looks.
    fn lingering(&mut self, looks: u32) -> bool {
        for _ in 0..16 {
            std::hint::spin_loop();
        }
        looks < LINGER_LOOKS
    }

    /// When the hand-off consumed this wait's request, a request that stands now is another
    /// waiter's, for the next turn, and stays: the drop does not withdraw it.
    fn took_handed(&mut self, in_time: bool) {
        if in_time {
            self.watch_until = None;
        }
    }

    fn wait_handed(&mut self, word: &Le32) -> Result<()> {
        let sleep = self.within_deadline(HANDED_GRACE);
        futex::wait(word, crate::lockword::HANDED, Some(sleep))
    }

    fn tick(&mut self) -> Tick {
        let now = Instant::now();
        self.now = now;
        let probe = now.duration_since(self.last_probe) >= self.probe_interval();
        if probe {
            self.last_probe = now;
        }
        let expired = self
            .deadline
            .is_some_and(|d| d.saturating_duration_since(now).is_zero());
        Tick { probe, expired }
    }

    fn watch(&mut self, owner: u32) -> Result<Seen> {
        let (slot, generation) = client::decode(owner & OWNER);
        let (seg, layout) = (&self.shared.seg, &self.shared.layout);
        let death = client::death_word(seg, layout, slot)?.load(Acquire);
        // The holder's life word, when it is armed: this waiter sleeps on it too, with
        // FUTEX_WAITERS set, so that the kernel may wake it at the holder's death without its
        // watcher's announcement in between (life.rs).
        let life = client::life_word(seg, layout, slot)?;
        let mut now = life.futex_word().load(Acquire);
        if now & life::TID != 0 && now & (life::OWNER_DIED | life::SLEEPERS) == 0 {
            now = match life.futex_word().compare_exchange(
                now,
                now | life::SLEEPERS,
                Relaxed,
                Acquire,
            ) {
                Ok(_) => now | life::SLEEPERS,
                Err(v) => v,
            };
        }
        let life = (now & life::SLEEPERS != 0 && now & life::OWNER_DIED == 0).then_some(now);
        // An owner already announced dead needs no watcher: the probe that follows sees the
        // announcement (and starting a thread here would delay the take-over). An owner watched
        // in an earlier round still is: its watcher leaves only when it dies.
        if self.watching && self.shared.watchers.failed() {
            self.watching = false;
        }
        if self.watching && death != generation && self.watched != Some(owner) {
            if self.shared.watchers.ensure(slot) {
                self.watched = Some(owner);
            } else {
                self.watching = false;
            }
        }
        Ok(Seen { slot, death, life })
    }

    fn dead(&mut self, owner: u32, full: bool) -> Result<bool> {
        if full {
            self.shared.owner_dead(owner, Probe::Kernel)
        } else {
            client::owner_known_dead(&self.shared.seg, &self.shared.layout, owner)
        }
    }

    fn publish(&mut self) -> Result<()> {
        let since_ms = u64::try_from(unix_now().as_millis()).unwrap_or(u64::MAX);
        let (seg, layout, slot) = (&self.shared.seg, &self.shared.layout, self.shared.slot);
        let mut taken = self.shared.entries.load(Relaxed);
        self.entry = loop {
            let Some(i) = (0..WAIT_ENTRIES).find(|i| taken & (1 << i) == 0) else {
                // Every entry is a wait or a hold record: a hold record gives way (its entry
                // stays reserved and passes to this wait).
                if let Some(i) = client::evict_hold(seg, layout, slot)? {
                    client::publish_wait(seg, layout, slot, i, self.id, since_ms)?;
                    break Entry::Listed(i);
                }
                client::count_unlisted(seg, layout, slot, true)?;
                break Entry::Unlisted;
            };
            match self.shared.entries.compare_exchange_weak(
                taken,
                taken | (1 << i),
                AcqRel,
                Relaxed,
            ) {
                Ok(_) => {
                    if let Err(e) = client::publish_wait(seg, layout, slot, i, self.id, since_ms) {
                        self.shared.entries.fetch_and(!(1 << i), AcqRel);
                        return Err(e);
                    }
                    break Entry::Listed(i);
                }
                Err(now) => taken = now,
            }
        };
        self.next_check = self.schedule(Instant::now());
        Ok(())
    }

    fn check(&mut self, _holder: u32) -> Result<()> {
        let Some(due) = self.next_check else {
            return Ok(());
        };
        let now = Instant::now();
        if now < due {
            return Ok(());
        }
        // An unlisted wait is invisible to others' checks but not to its own: the graph starts
        // from it, so only it can find a cycle through it, and exactly one victim remains.
        let (shared, id) = (self.shared, self.id);
        let checked = observe::detect(shared, id, || self.withdraw())?;
        self.next_check = match checked {
            Checked::NoCycle => {
                self.checks = self.checks.saturating_add(1);
                self.schedule(now)
            }
            Checked::Busy => now.checked_add(BUSY_RETRY),
        };
        Ok(())
    }

    fn wait(&mut self, word: &Le32, expected: u32, seen: Option<Seen>) -> Result<()> {
        let mut sleep = self.within_deadline(
            self.probe_interval()
                .saturating_sub(self.now.duration_since(self.last_probe)),
        );
        if let Some(due) = self.next_check {
            sleep = sleep.min(due.saturating_duration_since(self.now));
        }
        if self.watching
            && let Some(seen) = seen
        {
            let (seg, layout) = (&self.shared.seg, &self.shared.layout);
            let notice = client::death_word(seg, layout, seen.slot)?;
            let life = client::life_word(seg, layout, seen.slot)?;
            // The life word is in native byte order (life.rs): given as the segment's
            // little-endian values are.
            let words = [
                (word, expected),
                (notice, seen.death),
                (life, u32::from_le(seen.life.unwrap_or(0))),
            ];
            let n = if seen.life.is_some() { 3 } else { 2 };
            if seen.life.is_some() && self.urgent.is_none() {
                let waited = self.now.duration_since(self.start);
                if waited >= URGENT_AFTER {
                    self.urgent = Some(slice::Urgent::begin());
                    // Queue ahead of the watcher (life.rs): wake it (or whoever queued first;
                    // any sleeper of the word may wake for nothing).
                    futex::wake_one(life, "life word")?;
                } else {
                    sleep = sleep.min(URGENT_AFTER - waited);
                }
            }
            let slept = futex::wait_any(&words[..n], Some(sleep))?;
            if seen.life.is_some() && life.futex_word().load(Acquire) & life::OWNER_DIED != 0 {
                // The kernel wakes one sleeper of the word at the death: if it was this one, the
                // others (the watcher, other processes' waiters) must hear of it from us.
                futex::wake_all(life, "life word")?;
            }
            if slept {
                return Ok(());
            }
            // No futex_waitv in this kernel: poll from now on.
            self.watching = false;
            sleep = sleep.min(PROBE_INTERVAL);
        }
        futex::wait(word, expected, Some(sleep))
    }
}
