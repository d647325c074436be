//! The lock-word protocol, written once over an abstract atomic word and an abstract system, so
//! that the same code runs in production (`futex.rs`: a word in the segment, `futex(2)`, the OFD
//! probe) and under the loom model checker (`model.rs`: loom atomics, a modelled futex, a
//! modelled probe).
//!
//! # The word
//!
//! `0` is unlocked. [`HANDED`], the waiters bit alone, is unlocked too, but handed to the waiters
//! that slept (see "Handing off"). Any other value is held: the low 31 bits ([`OWNER`]) name the
//! holder's token, which is never 0, and [`WAITERS`] says that someone may sleep on the word.
//!
//! # Transitions (each one atomic read-modify-write)
//!
//! 1. lock: `0 -> token` (fast path), or `0 -> token | WAITERS` by a waiter that slept, so that
//!    its unlock wakes whoever still sleeps behind it; `HANDED -> token | WAITERS` by a waiter
//!    that slept or a `try_lock` (or a waiter that has waited out the grace, or its deadline).
//! 2. announce: `v -> v | WAITERS` by a waiter about to sleep, or by a reader that records when
//!    it saw the hold ([`mark`]); the owner bits do not change.
//! 3. take over: `v -> token | WAITERS` by a waiter whose probe found `v`'s owner dead,
//!    compared against the exact value `v` it probed. The waiters bit is always set, so that
//!    the new holder's unlock takes the contended path (which clears the since word; see
//!    manager.rs) and wakes whoever slept behind the dead owner.
//! 4. unlock: `token -> 0` (fast path), or, when the word has the waiters bit, `token | WAITERS ->
//!    token` and then `token -> 0` (or `-> HANDED`, when a waiter asked for the lock and the
//!    holder's turn is over; see "Unlocking under a reader" for the two steps), each compared
//!    against the exact value read, in a loop that retries only while the owner bits are still
//!    the caller's own token.
//!    Only the waiters bit can change under an owner that lives, and it comes back only when
//!    someone marks the word again, so an unlock never clears a word whose owner bits are not
//!    its own token: of two racing unlocks of one hold, exactly one succeeds (and the one that
//!    fails wakes the sleepers whose bit it took off, which the other did not see).
//!
//! Nothing else writes the word. So the owner bits change only by 1 (from 0 or `HANDED`), by 3
//! (from a dead owner) and by 4 (by the owner itself), and while a token's owner lives, only that
//! owner can take its token out of the word.
//!
//! # Memory ordering (the Rust, that is C++20, model)
//!
//! - Every transition that writes a token (1 and 3) is `AcqRel` (a take of a handed word
//!   `SeqCst`, for the hand-off requests: see `Ask`); unlock (4) is `Release`; announce (2) is
//!   `Relaxed` (a mark by a waiter that asked for a hand-off `SeqCst`), and as a
//!   read-modify-write it continues the release sequence of whatever wrote the word before it.
//! - Clean handover: the unlocker's `Release` RMW writes 0; the next locker's `Acquire` CAS reads
//!   that 0, so everything the unlocker did in its critical section happens-before the new
//!   holder's.
//! - Probing: a waiter loads the word with `Acquire` before it probes the owner it names. The
//!   token was written by its owner's `AcqRel` CAS (1 or 3), possibly followed by `Relaxed`
//!   announces, which belong to its release sequence; so the waiter synchronizes with the owner's
//!   CAS, and everything the owner did before it, in particular claiming its client slot and
//!   storing its generation (client.rs), happens-before the probe. By coherence the probe then
//!   reads that generation or a later one, never an earlier one: an owner that lives is never
//!   judged dead because of a stale generation. (On x86 these orderings cost nothing extra; the
//!   fast paths compile to the same `lock cmpxchg` as before.)
//! - Taking over compares against the exact value probed. Between the probe and the CAS the word
//!   can only have kept that value if its owner's token stayed in it, and a dead owner's token
//!   never becomes a live one's (client.rs: generations never wrap), so the CAS cannot take a
//!   lock from an owner that lives.
//! - The liveness probe itself (client.rs) reads kernel state, the OFD lock on the owner's slot,
//!   through `fcntl(2)`; the kernel serialises lock operations on a file under its own locks, so
//!   an OFD lock taken before an owner's first CAS is seen by any probe that synchronizes with
//!   that CAS.
//!
//! # Waking on a death
//!
//! A dead holder never writes its word again, so a sleeper on the word alone would sleep
//! forever. Each owner therefore has a *death notice* (production: the death word of its client
//! slot, written by a watcher or a claimer that proved the death, see watch.rs and client.rs),
//! and a waiter sleeps on the word and on its holder's notice at once (`futex_waitv`). The
//! order in each round of the wait loop is what makes that race-free:
//!
//! 1. read the notice ([`Sys::watch`]), and make sure someone watches the holder;
//! 2. probe the holder ([`Sys::dead`]); a dead one is taken over at once;
//! 3. sleep while the word and the notice both still hold what was read ([`Sys::wait`]).
//!
//! A death is published by changing the notice, then waking its sleepers. If it was published
//! before step 1, step 2 sees it (the probe reads the notice too); if after, the notice differs
//! from what step 1 read, so step 3 either does not sleep or is woken: the futex compares and
//! enqueues atomically with respect to the wake. Reading the notice after the probe would lose
//! exactly the deaths published in between (model.rs plants that bug and loom finds it).
//!
//! # Backing off
//!
//! A release wakes one sleeper, but does not hand it the lock: the releasing owner (or any
//! other) may take the word again before the sleeper runs, which is what keeps an uncontended
//! lock one compare-and-swap. A waiter that finds the word taken by someone else, at its first
//! look or after a wake-up, does not mark it at once: marking would pull its cache line away from
//! the holder and make that holder's unlock a system call, only to sleep again. A waiter that
//! can ask for a hand-off ([`Sys::starving`]; production's table waiters always can) asks and
//! watches for it awake (see "Handing off"); one that cannot calls [`Sys::backoff`], a moment
//! off the word (production's allocation-lock waiter does not back off). Neither changes what a
//! waiter does with what it sees, only when it looks, so the protocol above is unchanged by them.
//!
//! # Unlocking under a reader
//!
//! A reader that finds a hold with no time recorded marks the word (2) and records when it saw
//! it in the lock's since word ([`sight`]; observe.rs, rule 2), which the hold's contended
//! unlock clears (`clear`) so that a fast-path hold after it does not inherit the time. The
//! unlock cannot clear and release in one step: the two are different words. Cleared first and
//! released after, a reader could record in between, re-read a word still held, keep its time,
//! and leave it to the next fast-path hold, which nothing would clear (with the lock idle in
//! between, that holder looked older than it was by the idle time). So the contended unlock
//! takes the waiters bit off first (`token | WAITERS -> token`), then clears, then releases
//! (`token -> 0`), starting again when the bit came back; the reader records, then re-reads the
//! word, and keeps its time only if the word still is the one it marked. A `SeqCst` fence sits
//! between each side's two steps, so of the unlock's unmarking and the reader's re-read, and of
//! the reader's record and the unlock's clearing, at least one pair is seen in that order: the
//! reader sees the unmarked word (and takes its time back), or the clear comes after the record
//! (and erases it). A reader's re-read that finds the bit set again by someone else is matched by
//! the unlock's next round: its release fails on the same bit, and it unmarks, fences and clears
//! again. The unlock then always wakes one sleeper, since it took the bit off; a waiter that
//! meets the unmarked word between the two steps marks it again and sleeps on that. model.rs
//! checks it and catches the clear-then-release order.
//!
//! # Handing off
//!
//! Barging is unfair to a waiter that keeps losing: the releasing process, already running, takes
//! the word again before the woken sleeper does, and which of two processes wins such races is
//! decided by which CPU runs faster. So a waiter that finds the word held by another owner asks
//! for it ([`Sys::starving`]; production: a bit in the lock's since word, observe.rs), and the
//! holder hands it over at the end of its *turn*: production counts a handle's holds since it
//! took the lock after waiting, and ends the turn after a fixed number of holds, or at a
//! contended unlock after a fixed time (turn.rs). An unlock that ends the turn takes the
//! contended path (the holder marks its own word first when the fast path would have released
//! it), where `clear` reports the request, and the unlock releases the word as `HANDED` instead
//! of 0 and wakes one sleeper as it would have. An unlock that does not end the turn leaves the
//! request standing (`clear`'s `honour`) and wakes as always: nobody's progress rests on a
//! request, since a waiter that asked sleeps on a marked word like any other.
//!
//! `HANDED` fails every fast path (which compares against 0), so the releaser's next `lock` cannot
//! barge. The waiter that asked watches the word awake for a moment ([`Sys::watching`]) and takes
//! it within a few cache misses; if it has gone to sleep by then, the sleeper the unlock woke takes
//! it. Only a waiter that asked or slept in this wait takes a handed word (each one did, or was
//! woken by, the wait that the hand-off serves), and a newcomer that finds it handed (typically the
//! releaser, back for its next hold) asks for the hand-off after this one and sleeps on the word
//! first ([`Sys::wait_handed`]); the taker writes `token | WAITERS`, so its own unlock wakes the
//! next sleeper, the newcomer included, and its turn ends in a hand-off to whoever asked. (A
//! newcomer that asked only once the taker's unlock had woken it came too late for that turn's end
//! when its wake-up was slow, and the taker kept the lock for as long as the newcomer took to wake:
//! the process on the slower CPU had the fewer holds.) A waiter that finds the word free looks
//! again for a moment before it takes it ([`Sys::lingering`]): a holder that takes the lock again
//! in a loop does so within nanoseconds, and the waiter leaves it the rest of its turn rather than
//! end it early by a race; a word that stays free has no holder coming back.
//!
//! Nobody waits on a handed word for ever: a newcomer's sleep has a short grace, after which it has
//! slept and may take it, and a `try_lock` takes it at once. So a hand-off whose taker died or
//! timed out in between costs the others at most that grace, like a wake-up swallowed by a waiter
//! that dies (which the protocol without hand-offs has too). A request may outlive its requester: a
//! waiter that got the lock other than by a hand-off, or gave up, takes its request back, and with
//! it any other waiter's, which asks again when it next finds the lock taken; a waiter that took a
//! handed word leaves the request standing ([`Sys::took_handed`]) when its own is known to have
//! reached the hand-off, which consumed it (`Ask`): one that stands now was made for the next
//! turn. A request left standing costs one hand-off to whoever sleeps then, or, with nobody
//! waiting, the holder's next `lock` the grace. Hand-offs cost the uncontended paths only the
//! turn's count (a load and a store of the handle's own memory in `unlock`); the since word is
//! read when the count runs out.

use std::sync::atomic::Ordering::{self, AcqRel, Acquire, Relaxed, Release, SeqCst};

use lock_api::{Acquired, Error, Result};

use crate::observe::STARVING;

/// Set when someone sleeps, or is about to sleep, on the word.
pub(crate) const WAITERS: u32 = 1 << 31;
/// The holder's token.
pub(crate) const OWNER: u32 = !WAITERS;
/// Released and handed to the waiters that sleep, or have slept, on the word: the waiters bit
/// alone (module docs, "Handing off").
pub(crate) const HANDED: u32 = WAITERS;

/// Whether a word that read `v` is free: unlocked, or handed to its waiters.
pub(crate) fn is_free(v: u32) -> bool {
    v == 0 || v == HANDED
}

/// A 32-bit atomic lock word.
pub(crate) trait Word {
    /// Atomically loads the word.
    fn load(&self, order: Ordering) -> u32;
    /// Atomically replaces `current` with `new`; returns the previous value either way.
    fn compare_exchange(
        &self,
        current: u32,
        new: u32,
        success: Ordering,
        failure: Ordering,
    ) -> std::result::Result<u32, u32>;
    /// A `SeqCst` fence of the word's world (std's in production, loom's in the model).
    fn fence();
}

/// What one round of a `lock_contended` call sees of the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tick {
    /// A full liveness probe of the holder (one that asks the kernel) is due.
    pub(crate) probe: bool,
    /// The caller's deadline has passed.
    pub(crate) expired: bool,
}

/// The system a waiter runs on: the clock, the liveness probe, the death notices and the futex.
pub(crate) trait Sys<W: Word> {
    /// What a waiter read of the holder's death notice before it probed the holder: a death
    /// published after that read wakes a [`wait`](Sys::wait) given it.
    type Seen: Copy;
    /// How often to re-read the word before the first sleep.
    fn spins(&self) -> u32;
    /// Reads the clock once for this round of the wait loop.
    fn tick(&mut self) -> Tick;
    /// Reads the death notice of `owner` (never the caller's own token), before it is probed,
    /// and makes sure someone watches it.
    ///
    /// # Errors
    ///
    /// Whatever reading it fails with.
    fn watch(&mut self, owner: u32) -> Result<Self::Seen>;
    /// Whether the owner named by token `owner` (never the caller's own) is dead: from its death
    /// notice and slot alone, or, when `full`, also from the kernel. Token 0 names no owner and
    /// is dead.
    ///
    /// # Errors
    ///
    /// Whatever the probe's system calls fail with.
    fn dead(&mut self, owner: u32, full: bool) -> Result<bool>;
    /// Sleeps while `word` holds `expected` and, when `seen` is given, while the holder's death
    /// notice is still what `watch` read; at most until a timeout of the system's choosing or
    /// the deadline. Spurious returns are allowed.
    ///
    /// # Errors
    ///
    /// Whatever the sleep's system call fails with.
    fn wait(&mut self, word: &W, expected: u32, seen: Option<Self::Seen>) -> Result<()>;
    /// Called once, after any spinning and before the first look that may sleep: the wait is now a
    /// slow one, and may be published.
    ///
    /// # Errors
    ///
    /// Whatever publishing fails with.
    fn publish(&mut self) -> Result<()> {
        Ok(())
    }
    /// Called when a waiter that does not ask for hand-offs finds the lock held by another
    /// owner, at its first look or after a wake-up: the place to stay off the word for a moment
    /// (module docs, "Backing off"); the default does nothing.
    fn backoff(&mut self) {}
    /// Called when a waiter finds the lock held by another owner, at its first look or after a
    /// wake-up, instead of [`backoff`](Sys::backoff) when it returns `true`: the waiter has asked
    /// the holder to hand the lock over at the end of its turn (module docs, "Handing off"). The
    /// default never asks.
    fn starving(&mut self) -> bool {
        false
    }
    /// Called when a waiter finds the word handed to others at its first look: it asks for the
    /// hand-off after this one, as [`starving`](Sys::starving) does, and returns whether it
    /// asked.
    fn starving_next(&mut self) -> bool {
        self.starving()
    }
    /// Called between the looks of a waiter that asked and watches for the hand-off awake;
    /// `false` once it has watched long enough and should sleep instead. The default looks once.
    fn watching(&mut self) -> bool {
        false
    }
    /// Called between the looks of a waiter that found the word free: `looks` looks so far.
    /// `true` to look again; the waiter takes the word once it has stayed free until this says
    /// `false` (module docs, "Handing off"). The default takes it at once.
    fn lingering(&mut self, looks: u32) -> bool {
        let _ = looks;
        false
    }
    /// Sleeps while `word` is [`HANDED`], for a waiter that has not slept in this wait: at most
    /// a short grace of the system's choosing, after which it may take the word itself (so a
    /// hand-off whose taker is gone cannot keep the lock from anyone for long).
    ///
    /// # Errors
    ///
    /// Whatever the sleep's system call fails with.
    fn wait_handed(&mut self, word: &W) -> Result<()> {
        self.wait(word, HANDED, None)
    }
    /// Called when this waiter took a handed word. `in_time`: its last request for a hand-off
    /// ([`starving`](Sys::starving)) is known to have reached the unlock that handed the word
    /// over, which consumed it, so a request that stands now is another waiter's, made for the
    /// next turn, and stays (module docs, "Handing off"). Otherwise its own request may still
    /// stand. The default does nothing.
    fn took_handed(&mut self, in_time: bool) {
        let _ = in_time;
    }
    /// Called before each sleep with the live holder's token (never the caller's own): the
    /// place for a deadlock check, which ends the wait with its error.
    ///
    /// # Errors
    ///
    /// `Deadlock`, or whatever the check fails with.
    fn check(&mut self, holder: u32) -> Result<()> {
        let _ = holder;
        Ok(())
    }
}

/// Takes the word if it is unlocked.
#[inline(always)]
pub(crate) fn try_fast<W: Word>(word: &W, token: u32) -> bool {
    word.compare_exchange(0, token, AcqRel, Relaxed).is_ok()
}

/// Makes sure the hold `v` (not 0) has the waiters bit, so that its unlock takes the contended
/// path: a reader does this before it records when it saw the hold. Returns whether the word
/// holds `v | WAITERS` now.
pub(crate) fn mark<W: Word>(word: &W, v: u32) -> bool {
    if v == 0 {
        return false;
    }
    if v & WAITERS != 0 {
        return true;
    }
    match word.compare_exchange(v, v | WAITERS, Relaxed, Relaxed) {
        Ok(_) => true,
        Err(now) => now == v | WAITERS,
    }
}

/// The uncontended unlock: releases the word if it holds exactly `token`.
#[inline(always)]
pub(crate) fn unlock_fast<W: Word>(word: &W, token: u32) -> bool {
    word.compare_exchange(token, 0, Release, Relaxed).is_ok()
}

/// The steps of a contended unlock that a planted bug leaves out (model.rs); production takes
/// every one ([`Every`]).
pub(crate) trait Steps {
    /// Take the waiters bit off before clearing what was recorded beside the word (module docs,
    /// "Unlocking under a reader").
    const UNMARK: bool = true;
    /// Wake the sleepers whose waiters bit this unlock took off, even when another thread of the
    /// owner released the word first.
    const WAKE_WHEN_BEATEN: bool = true;
}

/// Every step: what production runs.
pub(crate) struct Every;

impl Steps for Every {}

/// Releases the word if `token` holds it; returns whether it did. `wake` wakes one sleeper; it
/// is called only when the waiters bit was set. `clear` runs on the contended path only, once
/// the waiters bit is off a word that holds `token`, before the word is released (it clears what
/// the holder and readers recorded beside the word), and says whether to hand the lock over (a
/// waiter asked for it and the turn is over): the word is then released as [`HANDED`] (module
/// docs, "Handing off").
///
/// # Errors
///
/// Whatever `wake` fails with (the word is released all the same).
#[inline]
pub(crate) fn unlock<W: Word>(
    word: &W,
    token: u32,
    clear: impl FnMut() -> bool,
    wake: impl FnOnce(&W) -> Result<()>,
) -> Result<bool> {
    unlock_with::<W, Every>(word, token, clear, wake)
}

/// [`unlock`], taking the steps `S` says.
#[inline]
pub(crate) fn unlock_with<W: Word, S: Steps>(
    word: &W,
    token: u32,
    clear: impl FnMut() -> bool,
    wake: impl FnOnce(&W) -> Result<()>,
) -> Result<bool> {
    match word.compare_exchange(token, 0, Release, Relaxed) {
        Ok(_) => Ok(true),
        Err(v) => unlock_contended::<W, S>(word, token, v, clear, wake),
    }
}

/// The unlock path when the word was not exactly `token`: `v` is what the fast path saw (module
/// docs, "Unlocking under a reader").
#[cold]
fn unlock_contended<W: Word, S: Steps>(
    word: &W,
    token: u32,
    mut v: u32,
    mut clear: impl FnMut() -> bool,
    wake: impl FnOnce(&W) -> Result<()>,
) -> Result<bool> {
    // Whether a waiter asked for the lock and the turn is over, in any round.
    let mut hand = false;
    // Whether this unlock took a waiters bit off: its sleepers are then this unlock's to wake.
    let mut unmarked = false;
    loop {
        // Compare against the exact value: if another thread of this owner unlocked first and a
        // waiter took the lock, the owner bits differ and this unlock fails instead of erasing
        // the new hold.
        if v & OWNER != token {
            if unmarked && S::WAKE_WHEN_BEATEN {
                // The thread that released the word saw no waiters bit: this one took it off.
                wake(word)?;
            }
            return Ok(false);
        }
        let waiters = v & WAITERS != 0;
        let mut held = v;
        if waiters && S::UNMARK {
            if let Err(now) = word.compare_exchange(v, token, SeqCst, Relaxed) {
                v = now;
                continue;
            }
            unmarked = true;
            held = token;
        }
        W::fence();
        hand |= clear();
        let free = if hand && (unmarked || waiters) {
            HANDED
        } else {
            0
        };
        match word.compare_exchange(held, free, SeqCst, Relaxed) {
            Ok(_) => {
                if unmarked || waiters {
                    wake(word)?;
                }
                return Ok(true);
            }
            // The waiters bit came back (a new sleeper, or a reader that may have recorded
            // after the clear), or another thread of this owner released the word.
            Err(now) => v = now,
        }
    }
}

/// Clears the since word `since` (observe.rs) on the contended unlock path, returning whether it
/// held a request for a hand-off. The request is cleared too when `honour` says the unlock hands
/// the lock over; otherwise it stays for a later unlock of the same turn (module docs, "Handing
/// off"). Written only when it holds something to clear, so that contenders do not pass its cache
/// line around for nothing; a request that lands after it is kept for the next contended unlock.
pub(crate) fn clear<W: Word>(since: &W, honour: bool) -> bool {
    let keep = if honour { 0 } else { STARVING };
    let mut current = since.load(SeqCst);
    while current & !keep != 0 {
        match since.compare_exchange(current, current & keep, SeqCst, Relaxed) {
            Ok(_) => break,
            Err(seen) => current = seen,
        }
    }
    current & STARVING != 0
}

/// Records `now` (not 0, without the since word's top bit) in `since` as when a reader first saw
/// the hold `v` (not free), unless the since word's time bits are not clear: `raw` is what the
/// reader read of it. Returns whether the record stands; a record is taken back when the word
/// is no longer the one the reader marked (module docs, "Unlocking under a reader").
pub(crate) fn sight<W: Word, T: Word>(word: &W, since: &T, v: u32, raw: u32, now: u32) -> bool {
    if !mark(word, v)
        || since
            .compare_exchange(raw, raw | now, SeqCst, Relaxed)
            .is_err()
    {
        return false;
    }
    W::fence();
    if word.load(SeqCst) == (v & OWNER) | WAITERS {
        return true;
    }
    // Take the time back, keeping a hand-off request that landed meanwhile (the top bit): the
    // next hold may be a fast-path one, whose unlock would never clear it.
    let mut current = raw | now;
    while current & !STARVING == now {
        match since.compare_exchange(current, current & STARVING, SeqCst, Relaxed) {
            Ok(_) => break,
            Err(seen) => current = seen,
        }
    }
    false
}

/// Tries once, without sleeping, taking the lock over when `dead` says its holder is gone.
/// Returns `None` when the lock is held by a live owner, this one included.
///
/// # Errors
///
/// Whatever `dead` fails with.
pub(crate) fn try_lock<W: Word>(
    word: &W,
    token: u32,
    dead: impl FnOnce(u32) -> Result<bool>,
) -> Result<Option<Acquired>> {
    // Acquire on failure too: `v` names the owner the probe below looks at.
    let v = match word.compare_exchange(0, token, AcqRel, Acquire) {
        Ok(_) => return Ok(Some(Acquired::Clean)),
        Err(v) => v,
    };
    if v == HANDED {
        // Free: a try does not wait, so it takes a handed word as it takes an unlocked one.
        // SeqCst, as every take of a handed word (see `Ask`).
        let taken = word.compare_exchange(v, token | WAITERS, SeqCst, Relaxed);
        return Ok(taken.is_ok().then_some(Acquired::Clean));
    }
    if v & OWNER == token {
        return Ok(None);
    }
    if dead(v & OWNER)? {
        if word
            .compare_exchange(v, token | WAITERS, AcqRel, Relaxed)
            .is_ok()
        {
            return Ok(Some(Acquired::OwnerDied));
        }
        // Someone else moved first: released it or took it over. Look once more, but never
        // probe twice in one try.
        return Ok(try_fast(word, token).then_some(Acquired::Clean));
    }
    Ok(None)
}

/// Waits for the lock until `sys` says the deadline passed. Returns `None` on timeout.
///
/// # Errors
///
/// Whatever the probe or the futex fail with.
#[cold]
pub(crate) fn lock_contended<W: Word, S: Sys<W>>(
    word: &W,
    token: u32,
    sys: &mut S,
) -> Result<Option<Acquired>> {
    for _ in 0..sys.spins() {
        if word.load(Relaxed) == 0 && try_fast(word, token) {
            return Ok(Some(Acquired::Clean));
        }
        std::hint::spin_loop();
    }
    sys.publish()?;
    // What the word held when this waiter last went to sleep on it.
    let mut slept_on = None;
    // Whether this waiter has slept: only such a waiter takes a handed word.
    let mut slept = false;
    // Whether this waiter has yet to ask or back off at its first sight of another owner's hold.
    let mut first_sight = true;
    // This waiter's request for a hand-off.
    let mut ask = Ask::default();
    // Whether this waiter's last sleep was on a handed word.
    let mut slept_on_handed = false;
    loop {
        // Acquire: the probe below must see at least what the owner named in `v` published
        // before it wrote its token (module docs, "Probing").
        let mut v = word.load(Acquire);
        if std::mem::take(&mut slept_on_handed) && v == HANDED {
            // Still handed, as far as this waiter can tell the same hand-off it asked on: no
            // unlock has consumed its request since.
            ask.in_time = false;
        }
        if let Some(before) = slept_on.take()
            && !is_free(v)
            && v != before
        {
            // Woken by a release, but another owner took the lock first.
            if ask_or_back_off(word, token, v, sys, &mut ask) {
                return Ok(Some(Acquired::Clean));
            }
            v = word.load(Acquire);
        }
        if v == 0 || (v == HANDED && (slept || ask.made)) {
            // A free word may be its holder's between two holds of a turn: leave it to it.
            if v == 0 && !stays_free(word, sys) {
                continue;
            }
            // Others may still sleep behind us: keep the waiters bit so our unlock wakes them.
            // SeqCst: see `Ask`.
            if word
                .compare_exchange(v, token | WAITERS, SeqCst, Relaxed)
                .is_ok()
            {
                if v == HANDED {
                    sys.took_handed(ask.in_time);
                }
                return Ok(Some(Acquired::Clean));
            }
            continue;
        }
        if first_sight && v != HANDED && v & OWNER != token {
            // Most holds are short: ask for the lock and watch, or look again in a moment, before
            // marking the word, which would make the holder's unlock a system call (module docs,
            // "Backing off").
            first_sight = false;
            if ask_or_back_off(word, token, v, sys, &mut ask) {
                return Ok(Some(Acquired::Clean));
            }
            continue;
        }
        let tick = sys.tick();
        if v == HANDED {
            // Handed to those who asked or slept: this waiter has done neither, so it sleeps a
            // moment first.
            // A timeout still takes it, as `try_lock` would.
            if tick.expired {
                let taken = word.compare_exchange(HANDED, token | WAITERS, SeqCst, Relaxed);
                if taken.is_ok() {
                    sys.took_handed(ask.in_time);
                }
                return Ok(taken.is_ok().then_some(Acquired::Clean));
            }
            if first_sight {
                // This hand-off is someone else's, but the taker's turn is the next to end: ask
                // for the one after it now, rather than once the taker's first unlock has woken
                // this waiter. Not `made`: the request is for the next hand-off, not this one.
                first_sight = false;
                if sys.starving_next() {
                    // The taker's clear comes after its take, which comes after this look.
                    ask.in_time = word.load(SeqCst) == HANDED;
                }
            }
            sys.wait_handed(word)?;
            slept = true;
            slept_on_handed = true;
            continue;
        }
        let owner = v & OWNER;
        // The death notice is read before the probe: a death the probe missed is published
        // after this read, and wakes the sleep below (module docs, "Waking on a death").
        let mut seen = None;
        if owner != token {
            seen = Some(sys.watch(owner)?);
            if sys.dead(owner, tick.probe)? {
                if word
                    .compare_exchange(v, token | WAITERS, AcqRel, Relaxed)
                    .is_ok()
                {
                    return Ok(Some(Acquired::OwnerDied));
                }
                continue;
            }
        }
        if v & WAITERS == 0
            && word
                .compare_exchange(v, v | WAITERS, Relaxed, Relaxed)
                .is_err()
        {
            continue;
        }
        if tick.expired {
            // One last full look, so a timeout still finds a dead holder, as `try_lock` would.
            // The word now has the waiters bit.
            if owner != token
                && sys.dead(owner, true)?
                && word
                    .compare_exchange(v | WAITERS, token | WAITERS, AcqRel, Relaxed)
                    .is_ok()
            {
                return Ok(Some(Acquired::OwnerDied));
            }
            return Ok(None);
        }
        if owner != token {
            sys.check(owner)?;
        }
        sys.wait(word, v | WAITERS, seen)?;
        slept_on = Some(v | WAITERS);
        slept = true;
    }
}

/// What a waiter knows of its request for a hand-off.
///
/// A hand-off consumes the requests that its unlock's `clear` finds; a request made after that
/// `clear` stands, and would hand the lock over at the end of the taker's own turn, to nobody if
/// nobody waits then. So a waiter that takes a handed word leaves the requests that stand only
/// when its own is known to have reached the unlock that handed it over (`in_time`): it looked at
/// the word after asking and found a hold, which it marked, or the handed word before anyone took
/// it. The request, that look, the unlock's unmarking and `clear`, and every take of a handed
/// word are `SeqCst`, so in their single total order the request comes before the look, the look
/// before the unmarking of the mark it saw (or, for a handed word, before the take that ends it),
/// and so before the `clear` that follows in the unlock; a word marked so becomes handed only
/// through an unlock whose `clear` comes after that one's. A waiter that
/// sleeps on a handed word and finds it still handed when it wakes cannot tell it from the one it
/// asked on, and its request is no longer known to be consumed.
#[derive(Debug, Default)]
struct Ask {
    /// It asked for a hand-off while the word was held: it may take a handed word without having
    /// slept (module docs, "Handing off").
    made: bool,
    /// Its last request is known to reach the next unlock that hands the word over.
    in_time: bool,
}

/// A waiter that found the word `v` held by another owner asks for a hand-off and watches for it
/// when `sys` asks, and otherwise backs off (module docs, "Backing off"); returns whether it took
/// the lock, and notes in `ask` that it asked.
fn ask_or_back_off<W: Word, S: Sys<W>>(
    word: &W,
    token: u32,
    v: u32,
    sys: &mut S,
    ask: &mut Ask,
) -> bool {
    if sys.starving() {
        ask.made = true;
        watch_for_hand_off(word, token, v, sys, ask)
    } else {
        sys.backoff();
        false
    }
}

/// A waiter that asked for the lock and found the word `v` (held by another owner) makes sure
/// the word has the waiters bit, so that the holder's unlock takes the contended path, where a
/// turn that has lasted its time ends, and watches the word awake for a hand-off for as long as
/// `sys` says; returns whether it took the lock. (Without the mark, the holder's unlocks stayed
/// on the fast path while it watched: fairness at 8 processes fell from 0.95 to 0.85-0.89.)
fn watch_for_hand_off<W: Word, S: Sys<W>>(
    word: &W,
    token: u32,
    v: u32,
    sys: &mut S,
    ask: &mut Ask,
) -> bool {
    ask.in_time = mark_after_asking(word, v);
    loop {
        // Relaxed: the compare-and-swap below is the acquiring read.
        let now = word.load(Relaxed);
        if now == HANDED
            && word
                .compare_exchange(now, token | WAITERS, SeqCst, Relaxed)
                .is_ok()
        {
            sys.took_handed(ask.in_time);
            return true;
        }
        if !ask.in_time && !is_free(now) {
            // The first mark missed (the holder was between two holds): mark the hold there now.
            ask.in_time = mark_after_asking(word, now);
        }
        if !sys.watching() {
            return false;
        }
    }
}

/// Marks the hold `v` for a waiter that has just asked for a hand-off; returns whether the word
/// holds `v | WAITERS` now, which makes the request in time (see `Ask`). `SeqCst`, the failure
/// too: this is the look after the request that `Ask` describes.
fn mark_after_asking<W: Word>(word: &W, v: u32) -> bool {
    if v & WAITERS != 0 {
        return word.load(SeqCst) == v;
    }
    match word.compare_exchange(v, v | WAITERS, SeqCst, SeqCst) {
        Ok(_) => true,
        Err(now) => now == v | WAITERS,
    }
}

/// A waiter that found the word free looks again for as long as `sys` says: returns whether the
/// word stayed free, so that its holder is not about to take it again (module docs, "Handing
/// off").
fn stays_free<W: Word, S: Sys<W>>(word: &W, sys: &mut S) -> bool {
    let mut looks = 0;
    while sys.lingering(looks) {
        if !is_free(word.load(Relaxed)) {
            return false;
        }
        looks += 1;
    }
    true
}

/// Runs `f` holding the word (the segment's allocation lock), waiting as long as it takes (`sys`
/// makes the waiter, only when the word is contended). When
/// the previous holder died holding it, `repair` runs first. A word taken from this holder while
/// `f` ran (only a broken probe or a damaged segment can do that) gives the error `stolen` makes.
///
/// # Errors
///
/// Whatever the wait, `repair` or `f` fail with, and `stolen()` as above.
pub(crate) fn with_lock<W: Word, S: Sys<W>, T>(
    word: &W,
    token: u32,
    sys: impl FnOnce() -> S,
    wake: impl FnOnce(&W) -> Result<()>,
    stolen: impl FnOnce() -> Error,
    repair: impl FnOnce() -> Result<()>,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let acquired = if try_fast(word, token) {
        Acquired::Clean
    } else {
        lock_contended(word, token, &mut sys())?.ok_or(Error::Timeout)?
    };
    let result = (|| {
        if acquired.owner_died() {
            repair()?;
        }
        f()
    })();
    if !unlock(word, token, || false, wake)? {
        return Err(stolen());
    }
    result
}
