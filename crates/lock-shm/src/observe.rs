//! Seeing who holds and who waits: holders, since words, snapshots, and deadlock detection.
//!
//! # Holders
//!
//! A lock word names its holder by token (slot + generation). The slot gives the pid, the
//! probe (client.rs) whether it is dead, and [`owner_key`] the owner key that tells owners apart
//! in holders, waiters and deadlock cycles. The host is this machine's: a segment lives in this
//! machine's `/dev/shm`.
//!
//! # When a hold began: the since words
//!
//! The uncontended lock is one compare-and-swap and nothing else, so it cannot write a time.
//! Every lock has a since word beside the lock words instead (u32: seconds since the segment's
//! epoch, plus 1; 0 is "not recorded"), written only off the fast path:
//!
//! 1. A hold taken after waiting (the word then carries the waiters bit) is dated by its
//!    holder's hold record (client.rs, "Hold records"), written right after its
//!    compare-and-swap in the holder's own slot: `since` is when it was acquired, to the
//!    millisecond. (A take-over by `try_lock`, which has no wait to turn into a record, writes
//!    the since word instead.)
//! 2. A reader that finds a hold with no time recorded ([`held`], [`snapshot`], `Inspect`)
//!    first makes sure the word has the waiters bit, then records the time it saw the hold:
//!    `since` is then "held at least since", the first moment anyone looked.
//! 3. The unlock of a word with the waiters bit takes the contended path, which takes the
//!    waiters bit off, then takes back the hold record and clears the since word (when it is not
//!    already clear), then releases the lock (lockword.rs, "Unlocking under a reader": cleared
//!    while the bit was still on, a reader's record could land after the clear and outlive the
//!    hold).
//!
//! Its top bit ([`STARVING`]) is not part of the time: a waiter sets it to ask the holder for a
//! hand-off at the end of its turn (lockword.rs, "Handing off"; turn.rs); a contended unlock
//! clears it only when it hands the lock over, and readers ignore it.
//!
//! So the time in a since word is non-zero only while the word has the waiters bit, and is
//! cleared before the hold that owns it ends: a fast-path hold that follows finds it clear. A
//! reader re-checks the word after recording and takes its record back if the word is no longer
//! the one it marked, and the unlock's unmarking makes sure that either the reader sees it or
//! the clear erases the record; what is left is that a recorded time can precede the hold it is shown with by the
//! reader's own delay between reading the clock and recording, never by more. Setting the waiters
//! bit costs the holder a `FUTEX_WAKE` on unlock once per observed hold; the uncontended path never
//! pays.
//!
//! # Deadlock detection
//!
//! A waiter past its deadlock timeout builds the part of the wait-for graph it can reach: the
//! lock it waits for, that lock's holder, the waits that holder lists in its slot, their holders,
//! and so on (dead holders are no edge). When the holder of its lock waits for nothing, which is
//! the common case for a long wait, the check reads the lock word and the holder's six entries
//! and stops there: no probe, no allocation, no lock, no scan of the lock words. Only when [`lock_api::find_cycle`] finds a cycle through this wait does the
//! waiter take the segment's detection lock (a lock word in the header, owner-death safe like the
//! allocation lock), read the graph again twice, and, when the cycle is still there, withdraw its
//! own waiter entry before it releases the detection lock and returns `Deadlock`. The detection
//! lock is only ever tried, never waited for: a waiter that finds it busy checks again a few
//! milliseconds later, so a stopped or slow detector cannot stall anyone's wait.
//!
//! Exactly one victim per cycle: detectors are serialised by the detection lock, and the victim's
//! withdrawal is visible to the next one. No false positives: the members of a real deadlock
//! cannot move, so three reads of the graph agree; a cycle that three reads in a row confirm
//! through waits that were each re-read has every edge present at each read.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lock_api::{Cycle, Error, Holder, LockId, LockState, Result, find_cycle, host_name};

use crate::client::{self, Probe};
use crate::futex;
use crate::layout::{CLIENT_SLOTS, field};
use crate::lockword::{self, OWNER, WAITERS};
use crate::manager::Shared;
use crate::segment::{Le32, unix_now};

/// The owner key of `token`: what tells owners apart in holders, waiters and cycles.
pub(crate) fn owner_key(token: u32) -> String {
    if token & OWNER == 0 {
        return "shm no owner (a word holding only the waiters bit)".to_owned();
    }
    let (slot, generation) = client::decode(token & OWNER);
    format!("shm slot {slot} generation {generation}")
}

/// The since value for now: seconds since the epoch, plus 1 (never 0, and below [`STARVING`]).
fn since_now(shared: &Shared) -> u32 {
    let secs = unix_now().as_secs().saturating_sub(shared.epoch);
    u32::try_from(secs)
        .unwrap_or(STARVING - 2)
        .min(STARVING - 2)
        + 1
}

/// The time a since value stands for; `None` when the segment's epoch is damaged past any time
/// the system can name (open accepts any epoch; layout.rs).
fn since_time(shared: &Shared, value: u32) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(
        shared.epoch.saturating_add(u64::from(value - 1)),
    ))
}

/// After a take-over by `try_lock` (no wait, so no entry to turn into a hold record): records
/// when this hold began in the since word, if the word carries the waiters bit (a take-over
/// always sets it), as a first sighting would.
pub(crate) fn record_since(shared: &Shared, id: u32) -> Result<()> {
    let v = shared.word(id)?.load(Relaxed);
    if v == shared.token | WAITERS {
        shared.since_word(id)?.store(since_now(shared), Relaxed);
    }
    Ok(())
}

/// On the contended unlock path, before the word is released: takes back this hold's record and
/// forgets any sighting of it. Returns whether a waiter asked for a hand-off; the request is
/// forgotten too when `honour` says this unlock hands the lock over, and otherwise stands for a
/// later unlock (turn.rs). The since word is written only when it holds something to clear, so
/// that contenders do not pass its cache line around for nothing.
pub(crate) fn clear_since(shared: &Shared, id: u32, honour: bool) -> bool {
    if let Ok(Some(entry)) = client::take_hold(&shared.seg, &shared.layout, shared.slot, id) {
        shared
            .entries
            .fetch_and(!(1 << entry), std::sync::atomic::Ordering::AcqRel);
    }
    let Ok(word) = shared.since_word(id) else {
        return false;
    };
    lockword::clear(word, honour)
}

/// Set in a since word by a waiter that asks for the lock: the holder's unlock at the end of its
/// turn hands the lock over (lockword.rs, "Handing off"; turn.rs). The rest of the word is the
/// since value, which never reaches it.
pub(crate) const STARVING: u32 = 1 << 31;

/// Whether a waiter asked for lock `id` to be handed over (a damaged id asks nothing).
pub(crate) fn hand_off_requested(shared: &Shared, id: u32) -> bool {
    shared
        .since_word(id)
        .is_ok_and(|since| since.load(Relaxed) & STARVING != 0)
}

/// Takes back a request for a hand-off, if one is still in the since word `since`.
pub(crate) fn withdraw_hand_off(since: &Le32) {
    if since.load(Relaxed) & STARVING != 0 {
        since.fetch_and(!STARVING, Relaxed);
    }
}

/// Asks the holder of the lock whose since word is `since` to hand it over at its unlock.
pub(crate) fn request_hand_off(since: &Le32) {
    // Read first: a request already made costs no write of the shared line. SeqCst: the waiter
    // then looks at the lock word to learn whether its request was in time (lockword.rs, `Ask`).
    if since.load(SeqCst) & STARVING == 0 {
        since.fetch_or(STARVING, SeqCst);
    }
}

/// When the hold `v` of lock `id` began, as far as anyone knows, recording the first sighting
/// when nothing is recorded yet (rule 2); `None` when the time cannot be told.
fn since_of(shared: &Shared, id: u32, v: u32) -> Result<Option<SystemTime>> {
    // A hold taken after waiting is dated by its holder's record.
    let owner = v & OWNER;
    if owner != 0 {
        let (slot, _) = client::decode(owner);
        if let Some(ms) = client::hold_since(&shared.seg, &shared.layout, slot, id)? {
            return Ok(UNIX_EPOCH.checked_add(Duration::from_millis(ms)));
        }
    }
    let since = shared.since_word(id)?;
    let raw = since.load(Relaxed);
    if raw & !STARVING != 0 {
        return Ok(since_time(shared, raw & !STARVING));
    }
    let now = since_now(shared);
    lockword::sight(shared.word(id)?, since, v, raw, now);
    Ok(since_time(shared, now))
}

/// Probes owners at most once per call: a process may hold thousands of locks.
#[derive(Default)]
struct Owners(HashMap<u32, Holder>);

impl Owners {
    /// The owner named by `token` (owner bits only): pid, host, key, dead; no since.
    fn who(&mut self, shared: &Shared, token: u32) -> Result<Holder> {
        if let Some(h) = self.0.get(&token) {
            return Ok(h.clone());
        }
        let mut holder = Holder::default().host(host_name()).owner(owner_key(token));
        if token == 0 {
            holder = holder.dead(true);
        } else {
            holder = holder.dead(shared.owner_dead(token, Probe::Kernel)?);
            if let Some(pid) = client::pid_of(&shared.seg, &shared.layout, token, shared.pid_ns)? {
                holder = holder.pid(pid);
            }
        }
        self.0.insert(token, holder.clone());
        Ok(holder)
    }
}

/// `holder` with its since, when there is one to tell.
fn dated(holder: Holder, since: Option<SystemTime>) -> Holder {
    match since {
        Some(since) => holder.since(since),
        None => holder,
    }
}

/// The holder of lock `id`, whose word read `v` (not 0), with its since.
pub(crate) fn holder_of(shared: &Shared, id: u32, v: u32) -> Result<Holder> {
    let holder = Owners::default().who(shared, v & OWNER)?;
    Ok(dated(holder, since_of(shared, id, v)?))
}

/// Every held lock, in id order, with its holder: one pass over the lock words.
pub(crate) fn held(shared: &Shared) -> Result<Vec<LockState>> {
    let mut owners = Owners::default();
    let mut out = Vec::new();
    let words = shared.seg.u32s(
        shared.layout.lock_offset(0),
        shared.layout.capacity as usize,
    )?;
    for (id, word) in (0..).zip(words) {
        let v = word.load(Acquire);
        if !lockword::is_free(v) {
            let holder = dated(owners.who(shared, v & OWNER)?, since_of(shared, id, v)?);
            out.push(LockState::new(LockId(id), Some(holder), Vec::new()));
        }
    }
    Ok(out)
}

/// Every held lock and every lock a live manager waits for: one pass over the lock words, one
/// over the client slots.
pub(crate) fn snapshot(shared: &Shared) -> Result<Vec<LockState>> {
    let mut by_id: BTreeMap<u32, LockState> =
        held(shared)?.into_iter().map(|l| (l.id.get(), l)).collect();
    let mut owners = Owners::default();
    for slot in 0..CLIENT_SLOTS {
        if !client::any_waits(&shared.seg, &shared.layout, slot)? {
            continue;
        }
        let view = client::view(&shared.seg, &shared.layout, slot)?;
        if view.generation == 0 {
            continue;
        }
        let token = client::token(slot, view.generation);
        let who = owners.who(shared, token)?;
        if who.dead {
            // A dead manager waits for nothing; its entries are cleared when its slot is
            // claimed again.
            continue;
        }
        for (id, since_ms) in view.waits {
            if id >= shared.layout.capacity {
                continue;
            }
            let since = UNIX_EPOCH + Duration::from_millis(since_ms);
            by_id
                .entry(id)
                .or_insert_with(|| LockState::new(LockId(id), None, Vec::new()))
                .waiters
                .push(who.clone().since(since));
        }
    }
    Ok(by_id.into_values().collect())
}

/// Every other live manager of the segment: one pass over the client slots, probing (through
/// the kernel where shared memory says "alive") each slot that is claimed and not closed.
pub(crate) fn clients(shared: &Shared) -> Result<Vec<Holder>> {
    let mut owners = Owners::default();
    let mut out = Vec::new();
    for slot in 0..CLIENT_SLOTS {
        if slot == shared.slot {
            continue;
        }
        let Some(token) = client::open_owner(&shared.seg, &shared.layout, slot)? else {
            continue;
        };
        let who = owners.who(shared, token)?;
        if !who.dead {
            out.push(who);
        }
    }
    Ok(out)
}

/// One edge of the wait-for graph as read: `waiter` waits for `lock`, held by `holder` (owner
/// bits of the word; the waiters bit changes under a live holder and means nothing here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Edge {
    waiter: u32,
    lock: u32,
    holder: u32,
}

/// The part of the wait-for graph reachable from this manager's wait for `lock`, as lock states
/// for [`find_cycle`], and the edges read. This manager's own other waits (other threads) are
/// left out: the cycle must go through this wait.
fn reachable(shared: &Shared, lock: u32) -> Result<(Vec<LockState>, Vec<Edge>)> {
    let mut owners = Owners::default();
    let mut states: BTreeMap<u32, LockState> = BTreeMap::new();
    let mut edges = Vec::new();
    let mut queue = VecDeque::from([(shared.token, vec![lock])]);
    let mut seen = HashSet::from([shared.token]);
    while let Some((owner, waits)) = queue.pop_front() {
        let waiter = owners.who(shared, owner)?;
        for id in waits {
            if id >= shared.layout.capacity {
                continue;
            }
            let v = shared.word(id)?.load(Acquire);
            edges.push(Edge {
                waiter: owner,
                lock: id,
                holder: v & OWNER,
            });
            let state = states
                .entry(id)
                .or_insert_with(|| LockState::new(LockId(id), None, Vec::new()));
            state.waiters.push(waiter.clone());
            if lockword::is_free(v) {
                continue;
            }
            let holder_token = v & OWNER;
            let holder = owners.who(shared, holder_token)?;
            let dead = holder.dead;
            state.holder.get_or_insert(holder);
            if dead || holder_token == owner || !seen.insert(holder_token) {
                continue;
            }
            let (slot, generation) = client::decode(holder_token);
            let view = client::view(&shared.seg, &shared.layout, slot)?;
            if view.generation == generation && !view.waits.is_empty() {
                queue.push_back((holder_token, view.waits.iter().map(|w| w.0).collect()));
            }
        }
    }
    Ok((states.into_values().collect(), edges))
}

/// Whether every edge of `cycle` was read the same way both times.
fn same_cycle(cycle: &Cycle, first: &[Edge], second: &[Edge]) -> bool {
    cycle.0.iter().all(|edge| {
        let find = |edges: &[Edge]| {
            edges
                .iter()
                .find(|e| e.lock == edge.waits_for.get() && owner_key(e.waiter) == edge.owner)
                .copied()
        };
        match (find(first), find(second)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    })
}

/// What a deadlock check found when it did not end the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checked {
    /// No cycle through this wait.
    NoCycle,
    /// A cycle may be there, but another detector holds the detection lock: check again soon.
    Busy,
}

/// Checks whether this manager's wait for `lock` closes a cycle of waits. When it does, this
/// wait is the victim: `withdraw` takes its waiter entry back while the detection lock is still
/// held, and the result is `Deadlock` with the cycle.
///
/// # Errors
///
/// `Deadlock` as above; `Corrupt` or `Io` from reading the segment or probing owners.
pub(crate) fn detect(
    shared: &Shared,
    lock: u32,
    withdraw: impl FnOnce() -> Result<()>,
) -> Result<Checked> {
    // The common case, a long wait behind a holder that waits for nothing, costs a few loads:
    // no probe, no allocation.
    let v = shared.word(lock)?.load(Acquire);
    let holder = v & OWNER;
    if lockword::is_free(v) || holder == shared.token {
        return Ok(Checked::NoCycle);
    }
    let (slot, _) = client::decode(holder);
    if !client::any_waits(&shared.seg, &shared.layout, slot)?
        || client::owner_known_dead(&shared.seg, &shared.layout, holder)?
    {
        return Ok(Checked::NoCycle);
    }
    let me = owner_key(shared.token);
    let (states, _) = reachable(shared, lock)?;
    if find_cycle(&states, &me).is_none() {
        return Ok(Checked::NoCycle);
    }
    let word = shared.seg.u32(field::DETECT_LOCK)?;
    // A detector that died holding the lock left nothing half-done that matters: its own
    // waiter entries died with it.
    if futex::try_lock(word, shared.token, |o| shared.owner_dead(o, Probe::Kernel))?.is_none() {
        return Ok(Checked::Busy);
    }
    let verdict = (|| {
        let (states, first) = reachable(shared, lock)?;
        let Some(cycle) = find_cycle(&states, &me) else {
            return Ok(Checked::NoCycle);
        };
        let (_, second) = reachable(shared, lock)?;
        if !same_cycle(&cycle, &first, &second) {
            return Ok(Checked::NoCycle);
        }
        withdraw()?;
        Err(Error::Deadlock { cycle })
    })();
    if !futex::unlock(word, shared.token, || false)? {
        return Err(Error::corrupt(format!(
            "segment {}: deadlock detection lock was taken from a live holder",
            shared.seg.path().display()
        )));
    }
    verdict
}
