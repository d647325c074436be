//! Model checks of the lock-word protocol (`lockword.rs`) with loom: the same generic code that
//! production runs, over loom's atomics, a modelled futex and a modelled liveness probe.
//!
//! Run them with `cargo test -p lock-shm --lib model` (loom is an ordinary dev-dependency; no
//! `--cfg loom` is needed, since the protocol is generic rather than cfg-switched). Each check
//! explores every interleaving up to [`PREEMPTIONS`] preemptions, and loom's own checks come on
//! top of the assertions here: a data race on the state a lock protects (an `UnsafeCell`), which
//! is how too weak a memory ordering shows, and a deadlock, which is how a lost wake-up shows,
//! since no sleep here has a timeout.
//!
//! What is modelled, and how:
//! - The kernel's futexes: one queue of sleepers under one mutex, each sleeper waiting on one or
//!   two words (`futex_waitv`). A wait compares every word under the mutex and enqueues if all
//!   still hold what the waiter expects; a wake of a word under the same mutex marks that many
//!   sleepers queued on it woken and dequeues them. That is the kernel's contract: the compare
//!   and the enqueue are atomic with respect to a wake, and `FUTEX_WAKE` of one wakes exactly
//!   one sleeper of that word.
//! - A client slot is an OFD-lock flag (kernel state, hence `SeqCst`), a generation and a death
//!   word, and the probe is the production one (client.rs): dead if the death word names the
//!   generation, if the generation moved on, or (a full probe) if the flag is clear. An owner
//!   dies by clearing its flag without unlocking anything, as the kernel does for a killed one,
//!   and *nothing else*: no futex is woken by a death itself.
//! - A watcher (watch.rs) waits until the flag is clear (`F_OFD_SETLKW`), then writes the
//!   generation into the death word and wakes its sleepers. A claimer (client.rs) that takes a
//!   slot announces its previous owner's death the same way before it bumps the generation.
//! - Waiters sleep without timeouts and probe in full at every round; the spin phase is skipped
//!   and deadlines are not modelled (the expiry path is the take-over path once more).
//! - The life word (life.rs): a sentinel's exit is the kernel's robust-list walk (the word
//!   becomes `FUTEX_OWNER_DIED` if it holds the sentinel's id, and ONE sleeper is woken if
//!   `FUTEX_WAITERS` was set); watchers run the production `life::watch`, then announce on the
//!   death word, or watch the OFD lock when the word is not armed. Every sentinel gets the same
//!   thread id, as if ids were reused. A waiter that joins a life word's sleepers wakes the
//!   first of them as it does (wait.rs, `URGENT_AFTER`), so a watcher also wakes with no death
//!   and must sleep again. Checked: every watcher of a dead owner learns of it, a
//!   waiter is woken through its watcher with the OFD lock still held, and no announcement ever
//!   names a generation whose sentinel has not exited. Two planted bugs must be caught as
//!   deadlocks: a watcher that sleeps without setting `FUTEX_WAITERS`, and one that does not
//!   wake the others; a third, a watcher that takes any wake-up for the death, as a live owner
//!   announced dead.
//! - Removal of an unused segment (removal.rs): the record locks of one file and its name under
//!   one mutex (the kernel's order of one file's lock operations); a remover runs the production
//!   `remove_unused` while an opener locks its slot and runs `opened`. Checked: no opener goes on
//!   in a segment the remover unlinked, and a segment another manager has open is kept. Three
//!   planted bugs must each be caught: the name looked at before the remove byte, the remove
//!   byte released before the unlink, and no look at the remove byte.

#![allow(unsafe_code)] // reason: loom's UnsafeCell is read and written through raw pointers

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering::{self, AcqRel, Acquire, Relaxed, Release, SeqCst};

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use lock_api::{Acquired, Error, Result};

use crate::client;
use crate::life::{self, LifeSys, Watched};
use crate::lockword::{self, OWNER, Sys, Tick, WAITERS, Word};
use crate::observe::STARVING;
use lock_conformance::panic_message;

/// Preemptions explored per execution: enough for every defect below, small enough that all the
/// checks take seconds.
const PREEMPTIONS: usize = 3;

fn check(f: impl Fn() + Sync + Send + 'static) {
    check_bounded(PREEMPTIONS, f);
}

fn check_bounded(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(preemptions);
    builder.check(f);
}

/// Client slots `0..SLOTS`.
const SLOTS: usize = 4;

/// A futex of the world: the lock word, a slot's death word, or a slot's life word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Word,
    Death(usize),
    Life(usize),
}

/// One sleeper in the kernel's futex queue.
struct Sleeper {
    id: usize,
    keys: [Option<Key>; 3],
    woken: bool,
}

/// The kernel's futex queue.
#[derive(Default)]
struct Queue {
    sleepers: Vec<Sleeper>,
    next: usize,
}

/// What [`World::probe`] answered, and from what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Dead,
    /// From the life word alone, without asking the kernel.
    AliveByLifeWord,
    /// From the OFD lock and the generation after it.
    AliveByKernel,
}

/// A client slot: its OFD lock (kernel state), its generation, its death word and its life word
/// (life.rs; 0, not armed, unless a check arms it).
struct Slot {
    locked: AtomicBool,
    generation: AtomicU32,
    death: AtomicU32,
    life: AtomicU32,
    /// The last generation whose sentinel exited (what a life-word announcement may name).
    exited: AtomicU32,
}

/// One lock word, the client slots of the owners that use it, and the futex queue.
struct World {
    word: AtomicU32,
    slots: [Slot; SLOTS],
    futex: Mutex<Queue>,
    wakeups: Condvar,
    /// `F_OFD_SETLKW` waiters: a watcher sleeps here until its slot's flag is clear.
    ofd: Mutex<()>,
    released: Condvar,
    /// Run the protocol with the orderings before issue 9 (a `Relaxed` load before the probe, an
    /// `Acquire`-only lock CAS), to show that the checker tells them apart.
    weakened: bool,
    /// The lock's since word (observe.rs): a reader's sighting in the low bits, and the
    /// starving bit, a hand-off requested (lockword.rs, "Handing off").
    since: AtomicU32,
    /// Hand-offs made (unlocks that released the word as `HANDED`), over one execution.
    hand_offs: AtomicUsize,
    /// The slots whose unlocks handed the word over, as a mask, over one execution.
    handers: AtomicU32,
    /// Where every unlock stands in its holder's turn (turn.rs).
    turns: Turns,
}

/// Where the modelled unlocks stand in their holder's turn (turn.rs): which end it, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turns {
    /// Every turn has lasted its time: a contended unlock hands the lock to a waiter that asked.
    Timed,
    /// Every unlock's count has run out: an unlock that finds a request marks its own word and
    /// hands the lock over, even from the fast path.
    Counted,
    /// No turn ends: a request stays in the since word, unanswered, and unlocks wake as always.
    Endless,
}

impl World {
    /// A word holding `value`; slots in `live` held at generation 1, the others never used.
    fn new(value: u32, live: &[u32]) -> Arc<World> {
        Arc::new(World {
            word: AtomicU32::new(value),
            slots: std::array::from_fn(|s| Slot {
                locked: AtomicBool::new(live.contains(&(s as u32))),
                generation: AtomicU32::new(u32::from(live.contains(&(s as u32)))),
                death: AtomicU32::new(0),
                life: AtomicU32::new(0),
                exited: AtomicU32::new(0),
            }),
            futex: Mutex::new(Queue::default()),
            wakeups: Condvar::new(),
            ofd: Mutex::new(()),
            released: Condvar::new(),
            weakened: false,
            since: AtomicU32::new(0),
            hand_offs: AtomicUsize::new(0),
            handers: AtomicU32::new(0),
            turns: Turns::Timed,
        })
    }

    /// As [`World::new`], with the unlocks' turns as `turns` says.
    fn with_turns(value: u32, live: &[u32], turns: Turns) -> Arc<World> {
        let mut world = World::new(value, live);
        if let Some(w) = Arc::get_mut(&mut world) {
            w.turns = turns;
        }
        world
    }

    /// As [`World::new`], with the orderings weakened (see `weakened`).
    fn weakened(value: u32, live: &[u32]) -> Arc<World> {
        let mut world = World::new(value, live);
        if let Some(w) = Arc::get_mut(&mut world) {
            w.weakened = true;
        }
        world
    }

    fn atom(&self, key: Key) -> &AtomicU32 {
        match key {
            Key::Word => &self.word,
            Key::Death(slot) => &self.slots[slot].death,
            Key::Life(slot) => &self.slots[slot].life,
        }
    }

    /// `futex_waitv`: sleeps until woken if every word still holds what is expected.
    fn futex_wait(&self, waits: [Option<(Key, u32)>; 3]) {
        let mut queue = self.futex.lock().unwrap_or_else(|e| e.into_inner());
        if waits
            .iter()
            .flatten()
            .any(|&(key, expected)| self.atom(key).load(SeqCst) != expected)
        {
            return;
        }
        let id = queue.next;
        queue.next += 1;
        queue.sleepers.push(Sleeper {
            id,
            keys: waits.map(|w| w.map(|(key, _)| key)),
            woken: false,
        });
        loop {
            queue = self.wakeups.wait(queue).unwrap_or_else(|e| e.into_inner());
            if let Some(at) = queue.sleepers.iter().position(|s| s.id == id && s.woken) {
                queue.sleepers.remove(at);
                return;
            }
        }
    }

    /// `FUTEX_WAKE` of at most `n` sleepers queued on `key`.
    fn futex_wake(&self, key: Key, n: usize) {
        let mut queue = self.futex.lock().unwrap_or_else(|e| e.into_inner());
        let mut left = n;
        for sleeper in queue.sleepers.iter_mut() {
            if left > 0 && !sleeper.woken && sleeper.keys.contains(&Some(key)) {
                sleeper.woken = true;
                left -= 1;
            }
        }
        self.wakeups.notify_all();
    }

    /// Unlock's wake: one sleeper of the lock word.
    fn wake_one(&self) -> Result<()> {
        self.futex_wake(Key::Word, 1);
        Ok(())
    }

    /// The production probe (client::owner_dead) over the modelled slots.
    fn dead(&self, owner: u32) -> bool {
        self.probe::<true>(owner) == Verdict::Dead
    }

    /// [`World::dead`], saying which way it answered; with `RECHECK` false, planted bug (d): an
    /// armed, unmarked life word answers "alive" without the second read of the generation
    /// (client::owner_known).
    fn probe<const RECHECK: bool>(&self, owner: u32) -> Verdict {
        let (slot, generation) = client::decode(owner);
        let Some(s) = self.slots.get(slot as usize) else {
            return Verdict::Dead;
        };
        if generation == 0 || s.death.load(Acquire) == generation {
            return Verdict::Dead;
        }
        if s.generation.load(Acquire) != generation {
            return Verdict::Dead;
        }
        let life = s.life.load(Acquire);
        if life & life::OWNER_DIED != 0 {
            return Verdict::Dead;
        }
        if life & life::TID != 0 && (!RECHECK || s.generation.load(Acquire) == generation) {
            return Verdict::AliveByLifeWord;
        }
        if !s.locked.load(SeqCst) || s.generation.load(Acquire) != generation {
            Verdict::Dead
        } else {
            Verdict::AliveByKernel
        }
    }

    /// Announces the death of `slot`'s owner of `generation` (client::announce_death).
    fn announce(&self, slot: u32, generation: u32) {
        if generation != 0 {
            self.slots[slot as usize].death.store(generation, Release);
        }
        self.futex_wake(Key::Death(slot as usize), usize::MAX);
    }

    /// The owner of `slot` dies: the kernel drops its OFD lock and nothing else happens; only
    /// `F_OFD_SETLKW` waiters (watchers) hear of it.
    fn die(&self, slot: u32) {
        let _ofd = self.ofd.lock().unwrap_or_else(|e| e.into_inner());
        self.slots[slot as usize].locked.store(false, SeqCst);
        self.released.notify_all();
    }

    /// A watcher of `slot` (watch.rs): waits for the OFD lock to go, then announces the death.
    fn watch(&self, slot: u32) {
        let mut ofd = self.ofd.lock().unwrap_or_else(|e| e.into_inner());
        while self.slots[slot as usize].locked.load(SeqCst) {
            ofd = self.released.wait(ofd).unwrap_or_else(|e| e.into_inner());
        }
        // Holding the (modelled) shared lock, the generation is stable: announce under it.
        let generation = self.slots[slot as usize].generation.load(Acquire);
        self.announce(slot, generation);
        drop(ofd);
    }

    /// A new owner claims the free `slot` (client::claim): OFD lock first, then the death of the
    /// previous owner, then the next generation. Returns its token.
    fn claim(&self, slot: u32) -> u32 {
        let s = &self.slots[slot as usize];
        {
            let _ofd = self.ofd.lock().unwrap_or_else(|e| e.into_inner());
            s.locked.store(true, SeqCst);
        }
        let previous = s.generation.load(Acquire);
        self.announce(slot, previous);
        let generation = previous + 1;
        s.generation.store(generation, Release);
        client::token(slot, generation)
    }
}

impl Word for World {
    fn load(&self, order: Ordering) -> u32 {
        self.word.load(if self.weakened { Relaxed } else { order })
    }

    fn compare_exchange(
        &self,
        current: u32,
        new: u32,
        success: Ordering,
        failure: Ordering,
    ) -> std::result::Result<u32, u32> {
        let success = match success {
            AcqRel if self.weakened => Acquire,
            other => other,
        };
        self.word.compare_exchange(current, new, success, failure)
    }

    fn fence() {
        loom::sync::atomic::fence(SeqCst);
    }
}

/// A since word of the world.
impl Word for AtomicU32 {
    fn load(&self, order: Ordering) -> u32 {
        AtomicU32::load(self, order)
    }

    fn compare_exchange(
        &self,
        current: u32,
        new: u32,
        success: Ordering,
        failure: Ordering,
    ) -> std::result::Result<u32, u32> {
        AtomicU32::compare_exchange(self, current, new, success, failure)
    }

    fn fence() {
        loom::sync::atomic::fence(SeqCst);
    }
}

/// The modelled system a waiter runs on: wait.rs's `LockWaiter` without deadlines, deadlock
/// checks and waiter entries.
struct ModelSys<'a> {
    world: &'a World,
    /// The planted bug: read the death word at sleep time, after the probe, instead of before.
    late_notice: bool,
    /// Planted bug (c): a waiter woken with its holder's life word marked does not wake the
    /// word's other sleepers, although the kernel woke only it.
    no_life_wake: bool,
    /// Counts the back-offs taken after a sleep (a lost race), over every execution of a check.
    backoffs: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    /// This waiter has slept.
    slept: bool,
    /// This waiter starves as soon as it loses once after a sleep, and asks for a hand-off.
    starves: bool,
    /// It asked, and withdraws the request when the wait ends (wait.rs, `LockWaiter`'s drop).
    asked: bool,
    /// It asked while the word was handed to another waiter, for the turn after the taker's, and
    /// the word was still handed after it asked.
    asked_on_handed: bool,
    /// Its sleeps on a handed word end at once, as production's do once their grace has passed
    /// (wait.rs, `HANDED_GRACE`). Without it, such a sleep lasts until a wake-up.
    grace: bool,
    /// It took a handed word, its request known to be in time or not.
    took_handed: Option<bool>,
    /// Planted bug: a waiter that took a handed word still withdraws the requests that stand, as
    /// lockword.rs did before the releaser asked on a handed word, and with them the one made for
    /// the next turn.
    withdraws_on_taking: bool,
    /// It joined a life word's sleepers, waking the first of them as it did (wait.rs,
    /// `URGENT_AFTER`: production does so once the wait has lasted that long; here at once).
    joined_life: bool,
}

impl Drop for ModelSys<'_> {
    fn drop(&mut self) {
        if self.asked {
            self.world.since.fetch_and(!STARVING, Relaxed);
        }
    }
}

impl<'a> ModelSys<'a> {
    fn new(world: &'a World) -> Self {
        ModelSys {
            world,
            late_notice: false,
            no_life_wake: false,
            backoffs: None,
            slept: false,
            starves: false,
            asked: false,
            asked_on_handed: false,
            grace: false,
            took_handed: None,
            withdraws_on_taking: false,
            joined_life: false,
        }
    }
}

impl Sys<World> for ModelSys<'_> {
    /// The holder's slot, its death word as read before the probe, and its life word when the
    /// waiter sleeps on it too (armed, `FUTEX_WAITERS` set).
    type Seen = (usize, u32, Option<u32>);

    fn spins(&self) -> u32 {
        0
    }

    fn tick(&mut self) -> Tick {
        Tick {
            probe: true,
            expired: false,
        }
    }

    fn watch(&mut self, owner: u32) -> Result<(usize, u32, Option<u32>)> {
        let slot = client::decode(owner).0 as usize;
        let Some(s) = self.world.slots.get(slot) else {
            return Ok((slot, 0, None));
        };
        let death = s.death.load(Acquire);
        // As wait.rs: set FUTEX_WAITERS in an armed life word, and sleep on it too.
        let mut now = s.life.load(Acquire);
        if now & life::TID != 0 && now & (life::OWNER_DIED | life::SLEEPERS) == 0 {
            now = match s
                .life
                .compare_exchange(now, now | life::SLEEPERS, Relaxed, Acquire)
            {
                Ok(_) => now | life::SLEEPERS,
                Err(v) => v,
            };
        }
        let life = (now & life::SLEEPERS != 0 && now & life::OWNER_DIED == 0).then_some(now);
        Ok((slot, death, life))
    }

    fn dead(&mut self, owner: u32, _full: bool) -> Result<bool> {
        Ok(self.world.dead(owner))
    }

    /// Production always asks; here only if this waiter `starves`.
    fn starving(&mut self) -> bool {
        if self.starves {
            // SeqCst, as observe.rs's `request_hand_off`.
            self.world.since.fetch_or(STARVING, SeqCst);
            self.asked = true;
        }
        self.starves
    }

    /// Asks as [`starving`](Sys::starving), and notes whether the word was still handed after
    /// it: the taker's unlock then finds the request.
    fn starving_next(&mut self) -> bool {
        let asked = self.starving();
        if asked && self.world.load(SeqCst) == lockword::HANDED {
            self.asked_on_handed = true;
        }
        asked
    }

    /// As wait.rs: when the hand-off consumed this waiter's request, one that stands now is
    /// another's, and is not withdrawn (unless the planted bug says so).
    fn took_handed(&mut self, in_time: bool) {
        self.took_handed = Some(in_time);
        if in_time && !self.withdraws_on_taking {
            self.asked = false;
        }
    }

    /// Production watches for `WATCH` after its first look; here the first look is all, and the
    /// waiter then sleeps, so the hand-off must reach it through the unlock's wake-up.
    fn watching(&mut self) -> bool {
        false
    }

    /// Sleeps on the handed word, or, with `grace`, lets the others run and returns, as a sleep
    /// whose grace has passed.
    fn wait_handed(&mut self, world: &World) -> Result<()> {
        if self.grace {
            thread::yield_now();
            return Ok(());
        }
        self.wait(world, lockword::HANDED, None)
    }

    /// Production looks again for about 2 µs; here once more, so that the checks see both a
    /// word that stays free and one taken back in between.
    fn lingering(&mut self, looks: u32) -> bool {
        looks < 1
    }

    /// Production spins; here, after a lost race, every other thread may run in the meantime.
    /// At the first sight of a hold, nothing: the look that follows is one more point where loom
    /// interleaves the others, and a yield there would spend the checks' preemption bound
    /// before the races they are about.
    fn backoff(&mut self) {
        if !self.slept {
            return;
        }
        if let Some(n) = &self.backoffs {
            n.fetch_add(1, SeqCst);
        }
        thread::yield_now();
    }

    fn wait(
        &mut self,
        world: &World,
        expected: u32,
        seen: Option<(usize, u32, Option<u32>)>,
    ) -> Result<()> {
        self.slept = true;
        let seen = seen.filter(|&(slot, _, _)| slot < SLOTS);
        let notice = seen.map(|(slot, death, _)| {
            let death = if self.late_notice {
                world.slots[slot].death.load(Acquire)
            } else {
                death
            };
            (Key::Death(slot), death)
        });
        let life = seen.and_then(|(slot, _, life)| life.map(|l| (Key::Life(slot), l)));
        if let Some((key, _)) = life
            && !self.joined_life
        {
            // Queue ahead of the watcher: its wake-up shows no death, and it must sleep again.
            self.joined_life = true;
            world.futex_wake(key, 1);
        }
        world.futex_wait([Some((Key::Word, expected)), notice, life]);
        if let Some((Key::Life(slot), _)) = life
            && world.slots[slot].life.load(Acquire) & life::OWNER_DIED != 0
            && !self.no_life_wake
        {
            world.futex_wake(Key::Life(slot), usize::MAX);
        }
        Ok(())
    }
}

/// Locks for `token` as `ShmLocker::lock` does: the fast path, then the wait loop.
fn lock(world: &World, token: u32) -> Acquired {
    lock_with(world, token, &mut ModelSys::new(world))
}

fn lock_with(world: &World, token: u32, sys: &mut ModelSys<'_>) -> Acquired {
    if lockword::try_fast(world, token) {
        return Acquired::Clean;
    }
    match lockword::lock_contended(world, token, sys) {
        Ok(Some(acquired)) => acquired,
        other => panic!("lock without a deadline gave {other:?}"),
    }
}

fn unlock(world: &World, token: u32) -> bool {
    unlock_waking(world, token, World::wake_one)
}

/// As [`unlock`], with the unlock's wake-up given: what ShmLocker::unlock does, the since word
/// cleared by `clear` (observe.rs, `clear_since`).
fn unlock_waking(world: &World, token: u32, wake: impl FnOnce(&World) -> Result<()>) -> bool {
    unlock_steps::<lockword::Every>(world, token, wake)
}

/// As [`unlock_waking`], taking the unlock steps `S` (a planted bug leaves one out).
fn unlock_steps<S: lockword::Steps>(
    world: &World,
    token: u32,
    wake: impl FnOnce(&World) -> Result<()>,
) -> bool {
    // As manager.rs's `unlock_slow`: at the end of a counted turn, a request sends the unlock
    // down the contended path.
    let counted = world.turns == Turns::Counted && world.since.load(SeqCst) & STARVING != 0;
    if counted {
        lockword::mark(world, token);
    }
    let over = world.turns != Turns::Endless;
    let clear = || {
        let hand = lockword::clear(&world.since, over) && over;
        if hand {
            world.hand_offs.fetch_add(1, SeqCst);
            world.handers.fetch_or(1 << client::decode(token).0, SeqCst);
        }
        hand
    };
    match lockword::unlock_with::<World, S>(world, token, clear, wake) {
        Ok(done) => done,
        Err(e) => panic!("unlock failed: {e}"),
    }
}

/// Defect 3 of issue 9, kept to show that the checker catches it: the contended unlock read the
/// word, then swapped in 0 whatever it had become.
fn unlock_broken(world: &World, token: u32) -> bool {
    if world.compare_exchange(token, 0, Release, Relaxed).is_ok() {
        return true;
    }
    let v = world.load(Relaxed);
    if v & OWNER != token {
        return false;
    }
    let old = world.word.swap(0, Release);
    if old & WAITERS != 0 {
        let _ = world.wake_one();
    }
    true
}

/// The critical section: a plain (non-atomic) read-modify-write that loom reports as a data
/// race unless the lock orders it, plus a count of holders inside, which must never pass 1.
struct Protected {
    data: UnsafeCell<u32>,
    inside: AtomicUsize,
}

impl Protected {
    fn new() -> Protected {
        Protected {
            data: UnsafeCell::new(0),
            inside: AtomicUsize::new(0),
        }
    }

    fn enter(&self) {
        assert_eq!(self.inside.fetch_add(1, SeqCst), 0, "two holders at once");
        set(&self.data, get(&self.data) + 1);
        self.inside.fetch_sub(1, SeqCst);
    }

    fn total(&self) -> u32 {
        get(&self.data)
    }
}

/// Reads a cell; loom fails the check if a write to it is not ordered with this read.
fn get<T: Copy>(cell: &UnsafeCell<T>) -> T {
    // SAFETY: the pointer is valid for the cell's life, and loom's UnsafeCell tracks this access:
    // a concurrent, unordered write is reported as a race instead of happening.
    cell.with(|p| unsafe { *p })
}

/// Writes a cell; loom fails the check if any other access to it is not ordered with this one.
fn set<T>(cell: &UnsafeCell<T>, value: T) {
    // SAFETY: as for `get`.
    cell.with_mut(|p| unsafe { *p = value })
}

/// Owners in slots 1..=3, generation 1.
fn token(slot: u32) -> u32 {
    client::token(slot, 1)
}

fn join<T>(t: thread::JoinHandle<T>) -> T {
    t.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Three owners lock and unlock one word, sleeping without timeouts: they are mutually
/// exclusive, the protected data has no race, and nobody sleeps forever.
#[test]
fn model_exclusion_and_no_lost_wakeup() {
    check(|| {
        let world = World::new(0, &[1, 2, 3]);
        let data = Arc::new(Protected::new());
        let threads: Vec<_> = [1, 2]
            .into_iter()
            .map(|slot| {
                let (world, data) = (world.clone(), data.clone());
                thread::spawn(move || {
                    assert_eq!(lock(&world, token(slot)), Acquired::Clean);
                    data.enter();
                    assert!(unlock(&world, token(slot)));
                })
            })
            .collect();
        assert_eq!(lock(&world, token(3)), Acquired::Clean);
        data.enter();
        assert!(unlock(&world, token(3)));
        threads.into_iter().for_each(join);
        assert_eq!(data.total(), 3);
        assert_eq!(world.load(SeqCst), 0);
    });
}

/// A waiter woken by a release finds the lock taken again by its releaser, which barged in on
/// the fast path, and backs off (lockword.rs, "Backing off"): exclusion holds, nobody sleeps
/// forever, and some execution does take the back-off.
#[test]
fn model_a_waiter_that_lost_the_race_backs_off() {
    let backoffs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = backoffs.clone();
    check(move || {
        let world = World::new(0, &[1, 2]);
        let data = Arc::new(Protected::new());
        let waiter = {
            let (world, data, backoffs) = (world.clone(), data.clone(), backoffs.clone());
            thread::spawn(move || {
                let mut sys = ModelSys::new(&world);
                sys.backoffs = Some(backoffs);
                assert_eq!(lock_with(&world, token(2), &mut sys), Acquired::Clean);
                data.enter();
                assert!(unlock(&world, token(2)));
            })
        };
        for _ in 0..2 {
            assert_eq!(lock(&world, token(1)), Acquired::Clean);
            data.enter();
            assert!(unlock(&world, token(1)));
        }
        join(waiter);
        assert_eq!(data.total(), 3);
        assert_eq!(world.load(SeqCst), 0);
    });
    assert!(
        counted.load(SeqCst) > 0,
        "no execution reached the back-off: the check says nothing about it"
    );
}

/// A starving waiter asks for a hand-off while its rival barges back in on the fast path, and a
/// newcomer arrives (lockword.rs, "Handing off"): exclusion holds, the data has no race, nobody
/// sleeps forever (the modelled starver looks once and sleeps, so the hand-off reaches it, or the
/// newcomer, through the unlock's wake-up, and the next sleeper through the taker's), the word
/// ends free, and some execution hands off.
#[test]
fn model_a_starving_waiter_is_handed_the_lock() {
    let hand_offs = starving_waiter_is_handed_the_lock(World::wake_one, Turns::Timed);
    assert!(
        hand_offs > 0,
        "no execution handed the lock over: the check says nothing about hand-offs"
    );
}

/// As [`model_a_starving_waiter_is_handed_the_lock`], with turns that end by their count
/// (turn.rs): the holder marks its own word when it finds a request, so that even an unlock
/// that would have taken the fast path hands the lock over.
#[test]
fn model_a_counted_turn_hands_the_lock_over() {
    let hand_offs = starving_waiter_is_handed_the_lock(World::wake_one, Turns::Counted);
    assert!(
        hand_offs > 0,
        "no execution handed the lock over: the check says nothing about hand-offs"
    );
}

/// As [`model_a_starving_waiter_is_handed_the_lock`], with turns that never end: the request
/// stands unanswered, and the waiter that asked, which takes a free word only after a second
/// look, is still woken and gets the lock; nothing is handed over.
#[test]
fn model_a_request_left_standing_breaks_nothing() {
    let hand_offs = starving_waiter_is_handed_the_lock(World::wake_one, Turns::Endless);
    assert_eq!(hand_offs, 0, "a turn that never ends handed the lock over");
}

/// The releaser of a counted turn comes back for its next hold, finds the word handed to the
/// starving waiter, and asks for the turn after the taker's (lockword.rs, "Handing off"):
/// exclusion holds, nobody sleeps forever (the releaser's sleep on the handed word ends as
/// production's grace would), the word ends free, and whenever the releaser asked while the word
/// was still handed and the taker took it with its own request known to be in time (lockword.rs,
/// `Ask`), the taker's turn ended in a hand-off. Some execution is such.
#[test]
fn model_the_releaser_asks_for_the_next_turn() {
    let asked = releaser_asks_for_the_next_turn(false);
    assert!(
        asked > 0,
        "no execution asked on a handed word: the check says nothing about it"
    );
}

/// Planted bug: the waiter that takes a handed word withdraws the requests that stand, and with
/// them the releaser's request for the next turn, which the taker's unlock then never answers.
#[test]
fn model_catches_a_taker_that_withdraws_the_next_request() {
    let caught = catch_unwind(AssertUnwindSafe(|| {
        releaser_asks_for_the_next_turn(true);
    }));
    let message = panic_message(&caught);
    assert!(
        message.contains("never answered"),
        "the planted bug was not caught as an unanswered request: {message}"
    );
}

/// Runs the check of [`model_the_releaser_asks_for_the_next_turn`], with the taker withdrawing
/// standing requests when `withdraws_on_taking`; returns how many executions the hand-off check
/// applied to.
fn releaser_asks_for_the_next_turn(withdraws_on_taking: bool) -> usize {
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = asked.clone();
    check(move || {
        let world = World::with_turns(token(1), &[1, 2], Turns::Counted);
        let data = Arc::new(Protected::new());
        let taker = {
            let (world, data) = (world.clone(), data.clone());
            thread::spawn(move || {
                let mut sys = ModelSys::new(&world);
                sys.starves = true;
                sys.withdraws_on_taking = withdraws_on_taking;
                assert_eq!(lock_with(&world, token(2), &mut sys), Acquired::Clean);
                let took_handed = sys.took_handed;
                drop(sys);
                data.enter();
                assert!(unlock(&world, token(2)));
                took_handed
            })
        };
        data.enter();
        assert!(unlock(&world, token(1)));
        let mut sys = ModelSys::new(&world);
        sys.starves = true;
        // The taker may take the word and hand it back before this sleep begins, and then this
        // sleep would miss the hand-off's wake-up; production's grace ends it.
        sys.grace = true;
        assert_eq!(lock_with(&world, token(1), &mut sys), Acquired::Clean);
        // Asked in time on the word it handed over, and did not take that word itself once its
        // grace had passed (when it takes a handed word with a request not known to be in time).
        let asked_in_time = sys.asked_on_handed && sys.took_handed != Some(false);
        drop(sys);
        data.enter();
        assert!(unlock(&world, token(1)));
        // The taker leaves the requests that stand only when its own is known to be in time.
        let taker_in_time = join(taker) == Some(true);
        assert_eq!(data.total(), 3);
        assert_eq!(world.load(SeqCst), 0);
        if asked_in_time && taker_in_time {
            assert!(
                world.handers.load(SeqCst) & (1 << 2) != 0,
                "the releaser's request for the next turn was never answered"
            );
            asked.fetch_add(1, SeqCst);
        }
    });
    counted.load(SeqCst)
}

/// Runs the check of [`model_a_starving_waiter_is_handed_the_lock`] with `wake` as every unlock's
/// wake-up and `turns` as the unlocks' turns; returns the hand-offs made over all executions.
fn starving_waiter_is_handed_the_lock(wake: fn(&World) -> Result<()>, turns: Turns) -> usize {
    let hand_offs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hand_offs.clone();
    check(move || {
        let world = World::with_turns(0, &[1, 2, 3], turns);
        let data = Arc::new(Protected::new());
        let waiters: Vec<_> = [(2, true), (3, false)]
            .into_iter()
            .map(|(slot, starves)| {
                let (world, data) = (world.clone(), data.clone());
                thread::spawn(move || {
                    let mut sys = ModelSys::new(&world);
                    sys.starves = starves;
                    assert_eq!(lock_with(&world, token(slot), &mut sys), Acquired::Clean);
                    drop(sys);
                    data.enter();
                    assert!(unlock_waking(&world, token(slot), wake));
                })
            })
            .collect();
        for _ in 0..2 {
            assert_eq!(lock(&world, token(1)), Acquired::Clean);
            data.enter();
            assert!(unlock_waking(&world, token(1), wake));
        }
        waiters.into_iter().for_each(join);
        assert_eq!(data.total(), 4);
        assert_eq!(world.load(SeqCst), 0);
        hand_offs.fetch_add(world.hand_offs.load(SeqCst), SeqCst);
    });
    counted.load(SeqCst)
}

/// Set in the child process of [`model_catches_a_hand_off_that_wakes_nobody`].
const PLANTED_HAND_OFF_ENV: &str = "LOCK_SHM_MODEL_PLANTED_HAND_OFF";

/// Planted bug: an unlock that hands the word over does not wake a sleeper, as if the starving
/// waiter were sure to be watching. The sleeping starver (or newcomer) is never woken: a
/// deadlock.
#[test]
fn model_catches_a_hand_off_that_wakes_nobody() {
    lock_conformance::child::assert_caught_as_deadlock(
        "model::model_planted_hand_off_child",
        PLANTED_HAND_OFF_ENV,
        "a hand-off that wakes nobody",
    );
}

/// The planted bug of [`model_catches_a_hand_off_that_wakes_nobody`]; passes trivially outside
/// its child process.
#[test]
fn model_planted_hand_off_child() {
    if std::env::var_os(PLANTED_HAND_OFF_ENV).is_some() {
        starving_waiter_is_handed_the_lock(
            |world| {
                if world.word.load(SeqCst) == lockword::HANDED {
                    Ok(())
                } else {
                    world.wake_one()
                }
            },
            Turns::Timed,
        );
    }
}

/// A reader marks a hold (sets the waiters bit without waiting, as observe.rs does before it
/// records when it saw the hold) while the holder unlocks and relocks on the fast path and
/// another owner waits: exclusion holds, nobody sleeps forever, and the word ends free.
#[test]
fn model_a_reader_marking_a_hold_breaks_nothing() {
    check(|| {
        let world = World::new(token(1), &[1, 2]);
        let data = Arc::new(Protected::new());
        let reader = {
            let world = world.clone();
            thread::spawn(move || {
                let v = world.load(Acquire);
                let _ = lockword::mark(&*world, v);
            })
        };
        let waiter = {
            let (world, data) = (world.clone(), data.clone());
            thread::spawn(move || {
                assert_eq!(lock(&world, token(2)), Acquired::Clean);
                data.enter();
                assert!(unlock(&world, token(2)));
            })
        };
        data.enter();
        assert!(unlock(&world, token(1)));
        assert_eq!(lock(&world, token(1)), Acquired::Clean);
        data.enter();
        assert!(unlock(&world, token(1)));
        join(reader);
        join(waiter);
        assert_eq!(data.total(), 3);
        assert_eq!(world.load(SeqCst), 0);
    });
}

/// Two threads of one owner unlock its one hold while another owner waits: exactly one unlock
/// succeeds, and the waiter's hold survives until its own unlock.
fn contended_unlock(unlock_fn: fn(&World, u32) -> bool) {
    check(move || {
        let holder = token(1);
        let world = World::new(holder, &[1, 2]);
        let waiter = {
            let world = world.clone();
            thread::spawn(move || {
                assert_eq!(lock(&world, token(2)), Acquired::Clean);
                assert!(
                    unlock_fn(&world, token(2)),
                    "the waiter's hold was erased by the other owner's unlock"
                );
            })
        };
        let other_thread = {
            let world = world.clone();
            thread::spawn(move || unlock_fn(&world, holder))
        };
        let mine = unlock_fn(&world, holder);
        let theirs = join(other_thread);
        assert!(
            mine ^ theirs,
            "two unlocks of one hold: {mine} and {theirs}, expected exactly one success"
        );
        join(waiter);
        assert_eq!(world.load(SeqCst), 0);
    });
}

#[test]
fn model_contended_unlock_exactly_one_succeeds() {
    contended_unlock(unlock);
}

/// The unconditional swap of defect 3 is caught by the same check.
#[test]
fn model_catches_the_unconditional_swap_unlock() {
    let caught = catch_unwind(AssertUnwindSafe(|| contended_unlock(unlock_broken)));
    let message = panic_message(&caught);
    assert!(
        message.contains("two unlocks of one hold") || message.contains("was erased"),
        "the broken unlock failed for another reason: {message}"
    );
}

/// Unlock steps without the wake-up of sleepers whose waiters bit the unlock took off when
/// another thread of the owner released the word first.
struct NoWakeWhenBeaten;

impl lockword::Steps for NoWakeWhenBeaten {
    const WAKE_WHEN_BEATEN: bool = false;
}

/// Set in the child process of [`model_catches_an_unmarking_unlock_that_wakes_nobody`].
const PLANTED_BEATEN_ENV: &str = "LOCK_SHM_MODEL_PLANTED_BEATEN";

/// Planted bug: of two threads unlocking one hold with a sleeper behind it, the one that took the
/// waiters bit off loses the release to the other's fast path, which saw no bit and woke nobody,
/// and it does not wake the sleeper either: a deadlock.
#[test]
fn model_catches_an_unmarking_unlock_that_wakes_nobody() {
    lock_conformance::child::assert_caught_as_deadlock(
        "model::model_planted_beaten_child",
        PLANTED_BEATEN_ENV,
        "an unmarking unlock beaten by a fast-path one, waking nobody",
    );
}

/// The planted bug of [`model_catches_an_unmarking_unlock_that_wakes_nobody`]; passes trivially
/// outside its child process.
#[test]
fn model_planted_beaten_child() {
    if std::env::var_os(PLANTED_BEATEN_ENV).is_some() {
        contended_unlock(|world, token| {
            unlock_steps::<NoWakeWhenBeaten>(world, token, World::wake_one)
        });
    }
}

/// A reader records when it saw a hold (observe.rs, `since_of`: mark, record, re-read) while the
/// holder unlocks it and another owner takes the lock on the fast path: once everyone is done, a
/// word without the waiters bit has no time recorded beside it. (A recorded time there would be
/// shown with the fast-path hold, and nothing would clear it before that hold's successor: with
/// the lock idle in between, the holder would look older than it is.)
fn a_sighting_never_outlives_its_hold<S: lockword::Steps>(turns: Turns) {
    check(move || {
        let world = World::with_turns(token(1), &[1, 2], turns);
        if turns == Turns::Endless {
            // A request that the unlock keeps while it clears the sighting beside it.
            world.since.store(STARVING, SeqCst);
        }
        let reader = {
            let world = world.clone();
            thread::spawn(move || {
                let v = world.load(Acquire);
                let raw = world.since.load(SeqCst);
                if v != 0 && raw & !STARVING == 0 {
                    lockword::sight(&*world, &world.since, v, raw, 7);
                }
            })
        };
        assert!(unlock_steps::<S>(&world, token(1), World::wake_one));
        let fast = lockword::try_fast(&*world, token(2));
        join(reader);
        let (word, since) = (world.load(SeqCst), world.since.load(SeqCst));
        assert!(
            !fast || word & WAITERS != 0 || since & !STARVING == 0,
            "a sighting outlived its hold: word {word:#x}, since word {since:#x}"
        );
        assert!(
            turns != Turns::Endless || since & STARVING != 0,
            "the unlock dropped a request its turn did not answer: since word {since:#x}"
        );
    });
}

#[test]
fn model_a_sighting_never_outlives_its_hold() {
    a_sighting_never_outlives_its_hold::<lockword::Every>(Turns::Timed);
}

/// As [`model_a_sighting_never_outlives_its_hold`], with a request standing in the since word,
/// which the unlock keeps (its turn goes on) while it clears the sighting beside it.
#[test]
fn model_a_sighting_never_outlives_a_hold_whose_turn_goes_on() {
    a_sighting_never_outlives_its_hold::<lockword::Every>(Turns::Endless);
}

/// Unlock steps that clear the since word while the waiters bit is still on (the order before
/// the fix): a reader may record after the clear and keep its time.
struct ClearBeforeUnmarking;

impl lockword::Steps for ClearBeforeUnmarking {
    const UNMARK: bool = false;
}

/// The defect that lock-mem's model found in this protocol is caught here too.
#[test]
fn model_catches_the_clear_before_the_unmarking() {
    let caught = catch_unwind(AssertUnwindSafe(|| {
        a_sighting_never_outlives_its_hold::<ClearBeforeUnmarking>(Turns::Timed)
    }));
    let message = panic_message(&caught);
    assert!(
        message.contains("a sighting outlived its hold"),
        "the clear before the unmarking failed for another reason: {message}"
    );
}

/// An owner dies holding the lock while two others wait for it, one in `lock`, one in
/// `try_lock` then `lock`, and a watcher of the dead owner's slot is about: exactly one of them
/// takes it over and is told `OwnerDied`, they stay mutually exclusive, and nobody sleeps
/// forever although the death itself wakes nobody.
#[test]
fn model_dead_owner_taken_over_exactly_once() {
    check_bounded(2, || {
        let world = World::new(token(1), &[1, 2, 3]);
        let data = Arc::new(Protected::new());
        let died = Arc::new(AtomicUsize::new(0));
        let killer = {
            let world = world.clone();
            thread::spawn(move || world.die(1))
        };
        let watcher = {
            let world = world.clone();
            thread::spawn(move || world.watch(1))
        };
        let waiter = {
            let (world, data, died) = (world.clone(), data.clone(), died.clone());
            thread::spawn(move || {
                if lock(&world, token(2)) == Acquired::OwnerDied {
                    died.fetch_add(1, SeqCst);
                }
                data.enter();
                assert!(unlock(&world, token(2)));
            })
        };
        let me = token(3);
        let acquired = match lockword::try_lock(&*world, me, |o| Ok(world.dead(o))) {
            Ok(Some(a)) => a,
            Ok(None) => lock(&world, me),
            Err(e) => panic!("try_lock: {e}"),
        };
        if acquired == Acquired::OwnerDied {
            died.fetch_add(1, SeqCst);
        }
        data.enter();
        assert!(unlock(&world, me));
        join(killer);
        join(watcher);
        join(waiter);
        assert_eq!(died.load(SeqCst), 1, "OwnerDied reported {died:?} times");
        assert_eq!(data.total(), 2);
        assert_eq!(world.load(SeqCst), 0);
    });
}

/// A waiter sleeps behind a holder that dies, and a watcher of the holder's slot runs. Unarmed
/// (`armed` false): the holder's OFD lock goes and only the watcher learns of it. Armed: the
/// holder's sentinel exits (the OFD lock is not released within the check), the waiter sleeps on
/// the life word too, and the kernel wakes one of the two; the watcher must learn of the death
/// whichever it woke. Either way the waiter must take the lock over. `plant` plants a bug in the
/// waiter: reading the death notice after the probe (unarmed), or not waking the life word's
/// other sleepers (armed); loom then finds a thread asleep for ever.
fn woken_at_a_death(armed: bool, plant: fn(&mut ModelSys<'_>)) {
    woken_at_a_death_watched::<false>(armed, plant);
}

/// [`woken_at_a_death`], with `TRUST` planting bug (e) in the watcher (armed only): it takes the
/// waiter's wake-up as it joins the life word for the death, and announces a live owner dead.
fn woken_at_a_death_watched<const TRUST: bool>(armed: bool, plant: fn(&mut ModelSys<'_>)) {
    check(move || {
        let world = World::new(token(1), &[1, 2]);
        if armed {
            world.arm(1);
        }
        let watcher = {
            let world = world.clone();
            thread::spawn(move || {
                if armed {
                    assert_eq!(world.watch_life::<false, false, TRUST>(1), Watched::Died(1));
                } else {
                    world.watch(1);
                }
            })
        };
        let killer = {
            let world = world.clone();
            thread::spawn(move || {
                if armed {
                    world.sentinel_exits(1);
                } else {
                    world.die(1);
                }
            })
        };
        let mut sys = ModelSys::new(&world);
        plant(&mut sys);
        assert_eq!(
            lock_with(&world, token(2), &mut sys),
            Acquired::OwnerDied,
            "the dead holder's lock was not taken over"
        );
        assert!(unlock(&world, token(2)));
        join(killer);
        join(watcher);
    });
}

#[test]
fn model_a_death_wakes_its_waiters_through_the_watcher() {
    woken_at_a_death(false, |_| {});
}

/// Set in the child process of [`model_catches_the_death_notice_read_after_the_probe`].
const PLANTED_ENV: &str = "LOCK_SHM_MODEL_PLANTED_BUG";

/// Loom finds the lost wake-up of a waiter that reads the death notice after its probe: it
/// reports the waiter asleep forever (a deadlock). Loom aborts the process on a deadlock (its
/// panic unwinds through its own scheduler), so the planted model runs in a child process: this
/// test binary, filtered to [`model_planted_bug_child`].
#[test]
fn model_catches_the_death_notice_read_after_the_probe() {
    lock_conformance::child::assert_caught_as_deadlock(
        "model::model_planted_bug_child",
        PLANTED_ENV,
        "the late death notice",
    );
}

/// The planted bug of [`model_catches_the_death_notice_read_after_the_probe`]; it only runs in
/// that test's child process and passes trivially otherwise.
#[test]
fn model_planted_bug_child() {
    if std::env::var_os(PLANTED_ENV).is_none() {
        return;
    }
    woken_at_a_death(false, |sys| sys.late_notice = true);
}

/// A holder dies and a new owner claims its slot before any watcher watches it (a watcher
/// arriving now would block on the new, live, owner): the claimer's own announcement wakes the
/// sleeping waiter, which takes the lock over. The new owner leaves at the end.
#[test]
fn model_a_claimer_announces_the_death_it_finds() {
    check(|| {
        let world = World::new(token(1), &[1, 2]);
        let successor = {
            let world = world.clone();
            thread::spawn(move || {
                world.die(1);
                let _ = world.claim(1);
                world.die(1);
            })
        };
        assert_eq!(lock(&world, token(2)), Acquired::OwnerDied);
        assert!(unlock(&world, token(2)));
        join(successor);
    });
}

/// A new owner re-claims a dead owner's slot (next generation) and takes the lock while another
/// owner waits for it: the waiter probes the new token and must find it alive, whatever it
/// reads of the slot's generation. This is where the waiter's `Acquire` load of the word and the
/// locker's `AcqRel` compare-and-swap matter (lockword.rs, "Probing").
fn live_owner_in_a_reused_slot(new_world: fn(u32, &[u32]) -> Arc<World>) {
    check(move || {
        // Slot 1 was used once (generation 1) by an owner that is gone.
        let world = new_world(0, &[1, 2]);
        world.slots[1].locked.store(false, SeqCst);
        let data = Arc::new(Protected::new());
        let owner = {
            let (world, data) = (world.clone(), data.clone());
            thread::spawn(move || {
                let me = world.claim(1);
                assert_eq!(lock(&world, me), Acquired::Clean);
                data.enter();
                assert!(unlock(&world, me));
            })
        };
        assert_eq!(
            lock(&world, token(2)),
            Acquired::Clean,
            "a live owner was judged dead"
        );
        data.enter();
        assert!(unlock(&world, token(2)));
        join(owner);
        assert_eq!(data.total(), 2);
    });
}

#[test]
fn model_a_live_owner_in_a_reused_slot_is_never_taken_over() {
    live_owner_in_a_reused_slot(World::new);
}

/// The orderings before issue 9 (a `Relaxed` load of the word before the probe, an
/// `Acquire`-only lock CAS) let the waiter read the slot's old generation and take the lock from
/// its live owner: the checker finds it.
#[test]
fn model_catches_the_relaxed_probe_load() {
    let caught = catch_unwind(AssertUnwindSafe(|| {
        live_owner_in_a_reused_slot(World::weakened);
    }));
    assert!(
        panic_message(&caught).contains("a live owner was judged dead"),
        "the weakened orderings were not caught as such: {}",
        panic_message(&caught)
    );
}

/// The allocation lock: an owner dies holding it halfway through an allocation (its leaf bit
/// set, the counter not yet moved) while others allocate. Exactly one repair from the leaves
/// follows (by whoever got `OwnerDied`), no id is handed out twice, and the counter ends equal
/// to the number of bits set.
#[test]
fn model_allocation_lock_repairs_after_a_dead_holder() {
    struct Table {
        leaf: UnsafeCell<u64>,
        count: UnsafeCell<u32>,
        repairs: AtomicUsize,
    }
    /// The first step of an allocation: takes the lowest free bit.
    fn take_bit(table: &Table) -> u32 {
        let leaf = get(&table.leaf);
        let id = (!leaf).trailing_zeros();
        set(&table.leaf, leaf | 1 << id);
        id
    }
    fn allocate(table: &Table, world: &World, me: u32) -> u32 {
        let r = lockword::with_lock(
            world,
            me,
            || ModelSys::new(world),
            World::wake_one,
            || Error::corrupt("allocation lock stolen"),
            || {
                table.repairs.fetch_add(1, SeqCst);
                set(&table.count, get(&table.leaf).count_ones());
                Ok(())
            },
            || {
                let id = take_bit(table);
                set(&table.count, get(&table.count) + 1);
                Ok(id)
            },
        );
        r.unwrap_or_else(|e| panic!("allocation failed: {e}"))
    }
    // Two preemptions: with the watcher there are four threads, and three make this check
    // take minutes for no defect the smaller bound misses (each defect above needs at most two).
    check_bounded(2, || {
        let world = World::new(0, &[1, 2, 3]);
        let table = Arc::new(Table {
            leaf: UnsafeCell::new(0),
            count: UnsafeCell::new(0),
            repairs: AtomicUsize::new(0),
        });
        let took = Arc::new(AtomicBool::new(false));
        let watcher = {
            let world = world.clone();
            thread::spawn(move || world.watch(1))
        };
        // The owner in slot 1 starts an allocation and dies before counting it.
        let dying = {
            let (world, table, took) = (world.clone(), table.clone(), took.clone());
            thread::spawn(move || {
                if lockword::try_fast(&*world, token(1)) {
                    took.store(true, SeqCst);
                    take_bit(&table);
                }
                world.die(1);
            })
        };
        let other = {
            let (world, table) = (world.clone(), table.clone());
            thread::spawn(move || allocate(&table, &world, token(2)))
        };
        let first = allocate(&table, &world, token(3));
        let second = join(other);
        join(dying);
        join(watcher);
        // One more after the death, so a lock the dying owner took last is taken over too.
        let third = allocate(&table, &world, token(3));
        assert!(
            first != second && second != third && first != third,
            "one id handed out twice: {first}, {second}, {third}"
        );
        let leaf = get(&table.leaf);
        assert_eq!(
            get(&table.count),
            leaf.count_ones(),
            "the counter disagrees with the leaves"
        );
        assert_eq!(
            table.repairs.load(SeqCst),
            usize::from(took.load(SeqCst)),
            "repairs do not match the deaths inside the lock"
        );
        assert_eq!(world.load(SeqCst), 0);
    });
}

// The life word (life.rs): the kernel marks it at the start of the owner's exit.

/// The sentinel thread id the life-word checks arm slots with: every owner's sentinel gets the
/// same one, as if thread ids were reused, the hardest case for a watcher (life.rs, [`watch`]).
///
/// [`watch`]: life::watch
const SENTINEL: u32 = 7;

impl World {
    /// Arms `slot`'s life word as its owner's sentinel does.
    fn arm(&self, slot: u32) {
        self.slots[slot as usize].life.store(SENTINEL, Release);
    }

    /// The sentinel of `slot`'s owner exits: the kernel walks its robust list (handle_futex_death
    /// in kernel/futex/core.c): if the word holds the thread's id, it becomes `FUTEX_OWNER_DIED`,
    /// keeping `FUTEX_WAITERS`, and if that bit was set ONE sleeper is woken. Nothing else: the
    /// OFD lock goes later ([`World::die`]). Records the generation that died in `exited`.
    fn sentinel_exits(&self, slot: u32) {
        let s = &self.slots[slot as usize];
        s.exited.store(s.generation.load(SeqCst), SeqCst);
        let mut v = s.life.load(SeqCst);
        loop {
            if v & life::TID != SENTINEL {
                return;
            }
            match s.life.compare_exchange(
                v,
                life::OWNER_DIED | (v & life::SLEEPERS),
                SeqCst,
                SeqCst,
            ) {
                Ok(_) => break,
                Err(now) => v = now,
            }
        }
        if v & life::SLEEPERS != 0 {
            self.futex_wake(Key::Life(slot as usize), 1);
        }
    }

    /// A watcher of `slot` as watch.rs runs it: [`life::watch`], then the announcement a death
    /// gets, which must name a generation whose sentinel has exited; or, when the word is not
    /// armed, the OFD watcher ([`World::watch`]). Returns what the life word said.
    fn watch_life<const NO_BIT: bool, const NO_WAKE: bool, const TRUST: bool>(
        &self,
        slot: u32,
    ) -> Watched {
        let sys = LifeView::<NO_BIT, NO_WAKE, TRUST> { world: self, slot };
        let watched = life::watch(&sys).expect("the modelled futex does not fail");
        match watched {
            Watched::Died(generation) => {
                assert!(
                    generation <= self.slots[slot as usize].exited.load(SeqCst),
                    "the death of generation {generation}, which lives, was announced"
                );
                self.announce(slot, generation);
            }
            Watched::Unarmed => self.watch(slot),
        }
        watched
    }

    /// A new owner claims `slot` as client::claim does, with the life word reset before the
    /// generation and its sleepers woken after; its sentinel then arms the word again.
    fn claim_armed(&self, slot: u32) -> u32 {
        let s = &self.slots[slot as usize];
        {
            let _ofd = self.ofd.lock().unwrap_or_else(|e| e.into_inner());
            s.locked.store(true, SeqCst);
        }
        let previous = s.generation.load(Acquire);
        self.announce(slot, previous);
        s.life.store(0, Relaxed);
        let generation = previous + 1;
        s.generation.store(generation, Release);
        self.futex_wake(Key::Life(slot as usize), usize::MAX);
        self.arm(slot);
        client::token(slot, generation)
    }
}

/// The life word of one slot as [`life::watch`] sees it; `NO_BIT`, `NO_WAKE` and `TRUST` plant
/// bugs (a), (b) and (e) of [`LifeSys`].
struct LifeView<'a, const NO_BIT: bool, const NO_WAKE: bool, const TRUST: bool> {
    world: &'a World,
    slot: u32,
}

impl<const NO_BIT: bool, const NO_WAKE: bool, const TRUST: bool> LifeSys
    for LifeView<'_, NO_BIT, NO_WAKE, TRUST>
{
    const NO_SLEEPERS_BIT: bool = NO_BIT;
    const NO_WAKE_ALL: bool = NO_WAKE;
    const TRUSTS_A_WAKE: bool = TRUST;

    fn generation(&self) -> u32 {
        self.world.slots[self.slot as usize]
            .generation
            .load(Acquire)
    }

    fn mark(&self, seen: u32) -> u32 {
        let word = &self.world.slots[self.slot as usize].life;
        match word.compare_exchange(seen, seen | life::SLEEPERS, Relaxed, Acquire) {
            Ok(_) => seen | life::SLEEPERS,
            Err(now) => now,
        }
    }

    fn wait(&self, expected: u32) -> Result<()> {
        self.world
            .futex_wait([Some((Key::Life(self.slot as usize), expected)), None, None]);
        Ok(())
    }

    fn load(&self) -> u32 {
        self.world.slots[self.slot as usize].life.load(Acquire)
    }

    fn wake_all(&self) -> Result<()> {
        self.world
            .futex_wake(Key::Life(self.slot as usize), usize::MAX);
        Ok(())
    }
}

/// Two watchers (of two other processes) sleep on the life word of a holder that dies. The
/// kernel wakes one of them; both must learn of the death (the one woken wakes the other) and
/// announce it. `NO_BIT` and `NO_WAKE` plant bugs (a) and (b): loom then finds a watcher asleep
/// for ever.
fn every_life_watcher_learns<const NO_BIT: bool, const NO_WAKE: bool>() {
    check(|| {
        let world = World::new(token(1), &[1, 2]);
        world.arm(1);
        let watchers: Vec<_> = (0..2)
            .map(|_| {
                let world = world.clone();
                thread::spawn(move || world.watch_life::<NO_BIT, NO_WAKE, false>(1))
            })
            .collect();
        world.sentinel_exits(1);
        for w in watchers {
            assert_eq!(join(w), Watched::Died(1), "a watcher missed the death");
        }
    });
}

#[test]
fn model_life_word_death_reaches_every_watcher() {
    every_life_watcher_learns::<false, false>();
}

#[test]
fn model_life_word_wakes_the_waiter_and_the_watcher() {
    woken_at_a_death(true, |_| {});
}

/// An armed owner dies and its slot is claimed by a new owner whose sentinel gets the same
/// thread id; later the new owner dies too. A watcher started at the beginning announces a death
/// only of a generation whose sentinel has exited (checked in [`World::watch_life`]), whichever
/// owner it ends up watching (it may meet the word between the claim and the arming: then it
/// watches the OFD lock), and a probe of the new token finds it alive while it lives.
#[test]
fn model_life_word_never_names_a_live_owner() {
    check(|| {
        let world = World::new(0, &[1]);
        world.arm(1);
        let watcher = {
            let world = world.clone();
            thread::spawn(move || world.watch_life::<false, false, false>(1))
        };
        world.sentinel_exits(1);
        world.die(1);
        let next = world.claim_armed(1);
        assert!(
            !world.dead(next),
            "the next owner of the slot was judged dead"
        );
        world.sentinel_exits(1);
        world.die(1);
        join(watcher);
    });
}

/// An armed owner's life word answers "alive" without the kernel (client::owner_known), while
/// the owner dies and a new owner claims the slot and arms the word again with the same thread
/// id: a probe of the first owner that begins after its sentinel exited never finds it alive
/// by a life word, whatever it reads of the claim (a new owner caught between its lock and its
/// generation store may still make it look alive to the kernel's probe for once, as before:
/// client.rs), and the new owner is alive. `RECHECK` false plants bug (d).
fn an_armed_life_word_answers_alive<const RECHECK: bool>() {
    check(|| {
        let world = World::new(0, &[1]);
        world.arm(1);
        let first = client::token(1, 1);
        let exited = Arc::new(AtomicBool::new(false));
        let killer = {
            let (world, exited) = (world.clone(), exited.clone());
            thread::spawn(move || {
                world.sentinel_exits(1);
                exited.store(true, SeqCst);
                world.die(1);
                world.claim_armed(1)
            })
        };
        let after_exit = exited.load(SeqCst);
        let verdict = world.probe::<RECHECK>(first);
        assert!(
            !(after_exit && verdict == Verdict::AliveByLifeWord),
            "an owner whose sentinel had exited was judged alive by a life word"
        );
        let next = join(killer);
        assert_eq!(
            world.probe::<RECHECK>(first),
            Verdict::Dead,
            "the first owner lives on"
        );
        assert_eq!(
            world.probe::<RECHECK>(next),
            Verdict::AliveByLifeWord,
            "the next owner was not judged alive by its life word"
        );
    });
}

#[test]
fn model_an_armed_life_word_answers_alive_for_its_generation_only() {
    an_armed_life_word_answers_alive::<true>();
}

/// Planted bug (e): a watcher that takes any wake-up of the life word for the death. The waiter
/// that joins the word's sleepers wakes the first of them (wait.rs, `URGENT_AFTER`), which may be
/// the watcher of a holder that lives.
#[test]
fn model_catches_a_life_watcher_that_trusts_a_wake_up() {
    let caught = catch_unwind(AssertUnwindSafe(|| {
        woken_at_a_death_watched::<true>(true, |_| {});
    }));
    assert!(
        panic_message(&caught).contains("which lives, was announced"),
        "the trusting watcher was not caught as such: {}",
        panic_message(&caught)
    );
}

/// Planted bug (d): without the second read of the generation, a probe that read the first
/// owner's generation and then the next owner's armed word judges the dead first owner alive.
#[test]
fn model_catches_a_life_word_read_without_the_generation_after_it() {
    let caught = catch_unwind(AssertUnwindSafe(an_armed_life_word_answers_alive::<false>));
    assert!(
        panic_message(&caught).contains("was judged alive"),
        "the missing second read was not caught as such: {}",
        panic_message(&caught)
    );
}

/// Set in the child processes of [`model_catches_a_life_watcher_without_the_sleepers_bit`],
/// [`model_catches_a_life_watcher_that_wakes_no_other`] and
/// [`model_catches_a_waiter_that_wakes_no_other_life_sleeper`].
const PLANTED_LIFE_BIT_ENV: &str = "LOCK_SHM_MODEL_PLANTED_LIFE_BIT";
const PLANTED_LIFE_WAKE_ENV: &str = "LOCK_SHM_MODEL_PLANTED_LIFE_WAKE";
const PLANTED_WAITER_WAKE_ENV: &str = "LOCK_SHM_MODEL_PLANTED_WAITER_WAKE";

/// Planted bug (c): a waiter woken by the kernel at its holder's death does not wake the life
/// word's other sleepers, here the holder's watcher.
#[test]
fn model_catches_a_waiter_that_wakes_no_other_life_sleeper() {
    lock_conformance::child::assert_caught_as_deadlock(
        "model::model_planted_waiter_wake_child",
        PLANTED_WAITER_WAKE_ENV,
        "a waiter that wakes no other life-word sleeper",
    );
}

/// The planted bug of [`model_catches_a_waiter_that_wakes_no_other_life_sleeper`]; passes
/// trivially outside its child process.
#[test]
fn model_planted_waiter_wake_child() {
    if std::env::var_os(PLANTED_WAITER_WAKE_ENV).is_some() {
        woken_at_a_death(true, |sys| sys.no_life_wake = true);
    }
}

/// Planted bug (a): a watcher that sleeps without setting `FUTEX_WAITERS`, so the kernel wakes
/// nobody at the death.
#[test]
fn model_catches_a_life_watcher_without_the_sleepers_bit() {
    lock_conformance::child::assert_caught_as_deadlock(
        "model::model_planted_life_bit_child",
        PLANTED_LIFE_BIT_ENV,
        "a watcher without the sleepers bit",
    );
}

/// Planted bug (b): a watcher that learns of the death does not wake the others, and the kernel
/// woke only one.
#[test]
fn model_catches_a_life_watcher_that_wakes_no_other() {
    lock_conformance::child::assert_caught_as_deadlock(
        "model::model_planted_life_wake_child",
        PLANTED_LIFE_WAKE_ENV,
        "a watcher that wakes no other",
    );
}

/// The planted bug of [`model_catches_a_life_watcher_without_the_sleepers_bit`]; passes
/// trivially outside its child process.
#[test]
fn model_planted_life_bit_child() {
    if std::env::var_os(PLANTED_LIFE_BIT_ENV).is_some() {
        every_life_watcher_learns::<true, false>();
    }
}

/// The planted bug of [`model_catches_a_life_watcher_that_wakes_no_other`]; passes trivially
/// outside its child process.
#[test]
fn model_planted_life_wake_child() {
    if std::env::var_os(PLANTED_LIFE_WAKE_ENV).is_some() {
        every_life_watcher_learns::<false, true>();
    }
}

/// The kernel's side of removal.rs for one segment: the record locks of one file (the remove
/// byte, each client slot's byte) and the file's name, under one mutex, as the kernel takes and
/// tests one file's record locks under one lock.
#[derive(Default)]
struct RemovalKernel {
    remove_byte: bool,
    slots: [bool; 2],
    linked: bool,
}

/// One side's view of [`RemovalKernel`], with the planted bug `BUG` (0: none; 1, 2, 3: bugs
/// (a), (b), (c) of [`crate::removal::RemovalSys`]).
struct ModelRemoval<const BUG: u8> {
    kernel: Arc<Mutex<RemovalKernel>>,
}

impl<const BUG: u8> ModelRemoval<BUG> {
    fn with<T>(&self, f: impl FnOnce(&mut RemovalKernel) -> T) -> T {
        f(&mut self.kernel.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl<const BUG: u8> crate::removal::RemovalSys for ModelRemoval<BUG> {
    const NAME_FIRST: bool = BUG == 1;
    const RELEASE_FIRST: bool = BUG == 2;
    const NO_REMOVE_BYTE: bool = BUG == 3;

    fn take_remove_byte(&self) -> Result<bool> {
        Ok(self.with(|k| !std::mem::replace(&mut k.remove_byte, true)))
    }
    fn release_remove_byte(&self) -> Result<()> {
        self.with(|k| k.remove_byte = false);
        Ok(())
    }
    fn remove_byte_held(&self) -> Result<bool> {
        Ok(self.with(|k| k.remove_byte))
    }
    fn slot_open(&self, slot: u32) -> Result<bool> {
        Ok(self.with(|k| k.slots[slot as usize]))
    }
    fn linked(&self) -> Result<bool> {
        Ok(self.with(|k| k.linked))
    }
    fn unlink(&self) -> Result<bool> {
        Ok(self.with(|k| std::mem::replace(&mut k.linked, false)))
    }
    fn pause(&self) -> Result<()> {
        thread::yield_now();
        Ok(())
    }
}

/// A remover of an unused segment races an opener that locks slot 1 and then runs the opener's
/// check, while slot 0 is another manager's that is open (`open_elsewhere`) or not: an opener
/// that goes on never does so in a segment the remover unlinked, and a remover never unlinks a
/// segment a manager it saw has open.
fn removal_races_an_opener<const BUG: u8>(open_elsewhere: bool) {
    check(move || {
        let kernel = Arc::new(Mutex::new(RemovalKernel {
            slots: [open_elsewhere, false],
            linked: true,
            ..RemovalKernel::default()
        }));
        let remover = {
            let kernel = Arc::clone(&kernel);
            thread::spawn(move || {
                let sys = ModelRemoval::<BUG> { kernel };
                crate::removal::remove_unused(&sys, 2, "m")
            })
        };
        let opener = {
            let kernel = Arc::clone(&kernel);
            thread::spawn(move || {
                let sys = ModelRemoval::<BUG> { kernel };
                sys.with(|k| k.slots[1] = true);
                crate::removal::opened(&sys, "m").is_ok()
            })
        };
        let removed = join(remover);
        let went_on = join(opener);
        let linked = kernel.lock().unwrap_or_else(|e| e.into_inner()).linked;
        assert!(
            !went_on || linked,
            "an opener went on in a segment the remover unlinked (remover: {removed:?})"
        );
        if open_elsewhere {
            assert!(
                linked,
                "the remover unlinked a segment another manager had open"
            );
        }
    });
}

/// The removal protocol of removal.rs: no opener goes on in a segment `remove_unused` unlinked,
/// and a segment a manager has open is never unlinked by it.
#[test]
fn model_removal_never_cuts_off_an_opener() {
    removal_races_an_opener::<0>(false);
    removal_races_an_opener::<0>(true);
}

/// Planted bugs (a) the opener looks at the name before the remove byte, (b) the remover lets
/// go of the remove byte before it unlinks, (c) the opener does not look at the remove byte:
/// each leaves an opener going on in an unlinked segment, and the model must say so.
#[test]
fn model_catches_each_planted_removal_bug() {
    lock_conformance::assert_each_caught(
        "an opener went on in a segment the remover unlinked",
        [
            ("(a)", catch_unwind(|| removal_races_an_opener::<1>(false))),
            ("(b)", catch_unwind(|| removal_races_an_opener::<2>(false))),
            ("(c)", catch_unwind(|| removal_races_an_opener::<3>(false))),
        ],
    );
}
