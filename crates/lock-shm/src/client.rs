//! The client table: one slot per open manager, held by an OFD lock, named in owner tokens.
//!
//! A manager claims a slot whose byte it can OFD-lock (`F_OFD_SETLK` on the first byte of the
//! slot's record), bumps the slot's generation and writes its pid. It takes the lowest slot never
//! used or whose last manager was closed (dropped, which stores the generation in the slot's
//! closed word); only when there is none, the lowest slot of a manager that died. So a process
//! killed while it held locks keeps its pid in its slot, and they are listed with who held them,
//! for as long as the table has other slots to give. The kernel drops the
//! OFD lock when the last descriptor of that open file description closes, which happens when
//! the process dies however it dies, so "slot byte unlocked" means "owner gone". The owner token
//! in lock words is `generation << SLOT_BITS | slot`; a token whose generation is not the slot's
//! current one belongs to an earlier, dead, owner of the slot.
//!
//! Slot record (128 bytes): `u32` generation, `u32` pid, `u32` death word, `u32` unlisted waits,
//! `u32` life word (life.rs), `u32` closed word (the generation whose manager was closed, 0
//! for none), `u32` pid namespace (the inode of the owner's `/proc/self/ns/pid`, 0 when unknown)
//! and 4 reserved bytes, then [`WAIT_ENTRIES`] waiter entries of 16 bytes (`u32` lock id + 1, 0 when empty, with
//! [`HELD`] set for a hold record; 4 reserved bytes; `u64` unix milliseconds when the wait, or
//! the hold, began).
//!
//! # Waiter entries
//!
//! A manager blocked in `lock` or `try_lock_for` (on the slow path only, never on the fast path)
//! publishes which lock it waits for and since when in an entry of its own slot, and clears it
//! when the wait ends however it ends. Only the slot's owner writes its entries; which entries
//! are in use is known to the manager alone (a bit mask in process memory), so its threads never
//! race for one. A manager may have several waiting threads: the first [`WAIT_ENTRIES`] are
//! listed, and any more are only counted (`unlisted`), which deadlock detection and snapshots
//! cannot see (a deadlock through an unlisted wait is not detected; nothing is reported falsely).
//! An entry is written since first, then lock id with `Release`; a reader loads the lock id with
//! `Acquire`, then the since, then the lock id again, and keeps the pair only if the two lock
//! ids agree. A claimer clears every entry before it stores its generation, so a dead owner's
//! entries never become a live owner's.
//!
//! # Hold records
//!
//! A wait that ends by acquiring turns its entry into a *hold record* (lock id with [`HELD`],
//! since = when it acquired): that is how a hold taken after waiting is dated, in the holder's
//! own cache line rather than in a word every contender of the lock writes. The hold's unlock
//! takes its waiters bit's contended path, which takes the record back ([`take_hold`]) before
//! the word is released, so a record never outlives its hold. A wait that finds no free entry
//! takes a hold record's entry instead ([`evict_hold`]); that hold is then dated by its first
//! sighting.
//!
//! # Tokens never come back
//!
//! Generations only grow: a claim sets `generation + 1`, and a slot whose generation is
//! [`GEN_MAX`] (or anything larger, which only damage writes) is *retired*: no claim ever takes
//! it again, even once its last owner is gone. So no two owners, in the whole life of a segment,
//! get the same token, however many claims there are, and a dead owner's token left in a lock
//! word can never be mistaken for a live owner's. The price is a finite number of claims per
//! segment, 1024 × (2^21 − 1), about 2.1 billion opens; after that every open fails with
//! `Unavailable` naming the retired slots, and removing and recreating the segment (a reboot
//! does it) renews them.
//!
//! # Claiming and probing, and their ordering
//!
//! The claimer takes the OFD lock first, then reads the generation (the previous holder's last
//! write, ordered before by the kernel's release and acquisition of the lock), then stores the
//! new generation with `Release`. Every lock word this owner later writes its token into is
//! written with an `AcqRel` compare-and-swap after that store (lockword.rs), so a waiter that
//! read the token with `Acquire` reads this generation or a later one.
//!
//! A probe checks the OFD lock first, then the generation: a slot byte that is unlocked proves
//! the owner dead (a live owner holds it all its life), and a generation that moved on proves it
//! too, since only a slot's current holder changes it and only upwards. Before either, it reads
//! the death word, then the generation, then the life word: a death word naming the token's
//! generation, or `FUTEX_OWNER_DIED` in the life word of a slot still at that generation, proves
//! the owner dead without a system call (life.rs says why the life word cannot name an earlier
//! owner's death). A new owner caught
//! between its lock and its generation store makes a dead owner look alive for one probe; the
//! next probe sees the truth. A live owner never looks dead.
//!
//! A life word that is armed and unmarked, with the generation reading the same before and after
//! it, answers "alive" without the system call, since the OFD probe could not say otherwise:
//! the word was armed by this generation's sentinel (a later owner stores its generation before
//! its sentinel arms the word), and the sentinel's end marks it before the slot's byte is
//! unlocked. At an exit the kernel walks the sentinel's robust list in `exit_mm`, before
//! `exit_files` of the last thread closes the descriptor (and no thread's `exit_files` closes it
//! while the sentinel, which shares the table, still runs); at an `exec`, every other thread
//! exits before the close-on-exec descriptors close; a dropped manager's sentinel marks the word
//! before the slot's lock goes (manager.rs, field order). Where the sentinel could not arm the
//! word (no thread, `set_robust_list` refused, a thread id above 30 bits), it stays 0 and the
//! kernel is asked. So, in a segment that only this protocol writes, the shortcut changes no
//! verdict, only its cost: a `try_lock` of a lock that a live process holds reads three words
//! instead of making an `fcntl`. A life word armed with no live sentinel behind it (a stray
//! write, a checkpoint of the segment restored without its processes) would make a dead owner
//! look alive for as long as nobody asked the kernel, so only `try_lock` takes the shortcut
//! ([`Probe::Quick`]); every other probe that finds a live-looking owner asks the kernel
//! ([`Probe::Kernel`]), and a watcher checks the slot's OFD lock once before it sleeps on an
//! armed life word (watch.rs).

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use lock_api::{Error, Result};

use crate::layout::{CLIENT_SLOTS, Layout};
use crate::segment::{Le32, Segment, SlotLock};

/// Bits of a token that name the slot.
pub(crate) const SLOT_BITS: u32 = 10;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
/// The largest generation: tokens have 31 bits, the slot takes 10.
pub(crate) const GEN_MAX: u32 = (1 << (31 - SLOT_BITS)) - 1;
const _: () = assert!(CLIENT_SLOTS == 1 << SLOT_BITS);

/// Offset of the pid within a slot record.
const PID: usize = 4;
/// Offset of the death word: the last generation of this slot whose owner is known dead.
const DEATH: usize = 8;
/// Offset of the count of waits that found no free entry.
const UNLISTED: usize = 12;
/// Offset of the life word (life.rs), in native byte order.
const LIFE: usize = 16;
/// Offset of the closed word: the generation of this slot whose manager was closed (dropped),
/// not killed. A slot whose closed word is its generation (0 for a slot never used) is taken
/// before the slot of a manager that died.
const CLOSED: usize = 20;
/// Offset of the owner's pid namespace: the inode number of its `/proc/self/ns/pid` (0 when it
/// could not be read or does not fit), so that a reader in another namespace does not take the
/// pid for one of its own processes.
const PID_NS: usize = 24;
/// Offset of the first waiter entry.
const ENTRIES: usize = 32;
/// Bytes per waiter entry.
const ENTRY_SIZE: usize = 16;
/// Offset of the since field within an entry.
const ENTRY_SINCE: usize = 8;
/// Waiter entries per slot.
pub(crate) const WAIT_ENTRIES: usize = 6;
const _: () =
    assert!(ENTRIES + WAIT_ENTRIES * ENTRY_SIZE <= crate::layout::CLIENT_SLOT_SIZE as usize);

/// The owner token of `slot` at `generation`.
pub(crate) fn token(slot: u32, generation: u32) -> u32 {
    (generation << SLOT_BITS) | slot
}

/// The slot and generation of a token.
pub(crate) fn decode(token: u32) -> (u32, u32) {
    (token & SLOT_MASK, token >> SLOT_BITS)
}

/// The generation after `g`, or `None` when `g` is the last one (or past it): the slot is
/// retired.
fn next_generation(g: u32) -> Option<u32> {
    (g < GEN_MAX).then(|| g + 1)
}

/// Claims a free client slot for this open file description: the lowest one never used or whose
/// manager was closed, or else the lowest one whose manager died. Returns slot and generation.
///
/// # Errors
///
/// `Unavailable` when every slot is held by an open manager or retired, naming the table's size;
/// `Corrupt` when none is free and some hold a generation no claim writes (damage); `Io` when
/// `fcntl(2)` fails.
pub(crate) fn claim(
    seg: &Segment,
    layout: &Layout,
    lock: &SlotLock,
    pid_ns: u32,
) -> Result<(u32, u32)> {
    // The first pass leaves a dead manager's slot, pid and all, to name the locks it died holding;
    // the second tries every slot (one closed since the first pass included).
    for closed_only in [true, false] {
        for slot in 0..CLIENT_SLOTS {
            let off = layout.slot_offset(slot);
            let generation_word = seg.u32(off)?;
            let seen = generation_word.load(Acquire);
            // Generations never go down, so a retired slot can be skipped without locking it.
            if next_generation(seen).is_none() {
                continue;
            }
            if closed_only && seg.u32(off + CLOSED)?.load(Relaxed) != seen {
                continue;
            }
            if let Some(generation) = take(seg, layout, lock, slot, pid_ns)? {
                return Ok((slot, generation));
            }
        }
    }
    let (mut retired, mut damaged) = (0, 0);
    for slot in 0..CLIENT_SLOTS {
        match seg.u32(layout.slot_offset(slot))?.load(Acquire) {
            GEN_MAX => retired += 1,
            g if g > GEN_MAX => damaged += 1,
            _ => {}
        }
    }
    if damaged > 0 {
        // No claim ever writes a generation past GEN_MAX: the table was written over, and is
        // full because of it. That is damage to report as such, not a busy table to wait for.
        return Err(Error::corrupt(format!(
            "client table of segment {}: {damaged} of its {CLIENT_SLOTS} slots have a generation above {GEN_MAX}, which no claim writes, and no other slot is free ({retired} retired); remove and recreate the segment",
            seg.path().display()
        )));
    }
    let held = CLIENT_SLOTS - retired;
    let what = if retired == 0 {
        format!("all {CLIENT_SLOTS} slots are held by open managers; close one and retry")
    } else {
        format!(
            "{held} of its {CLIENT_SLOTS} slots are held by open managers and {retired} are retired after {GEN_MAX} claims each; close a manager, or remove and recreate the segment to renew retired slots"
        )
    };
    Err(Error::unavailable(std::io::Error::other(format!(
        "client table of segment {} is full ({CLIENT_SLOTS} slots): {what}",
        seg.path().display()
    ))))
}

/// Takes `slot` if its byte can be locked and it is not retired; returns its new generation.
fn take(
    seg: &Segment,
    layout: &Layout,
    lock: &SlotLock,
    slot: u32,
    pid_ns: u32,
) -> Result<Option<u32>> {
    let off = layout.slot_offset(slot);
    if !lock.try_lock(off)? {
        return Ok(None);
    }
    let generation_word = seg.u32(off)?;
    // Holding the slot's lock proves its previous owner gone: say so, for waiters that sleep on
    // its death word (a watcher may have missed it: see watch.rs).
    announce_death(seg, layout, slot, generation_word.load(Acquire))?;
    let Some(generation) = next_generation(generation_word.load(Acquire)) else {
        // Its last owner used the last generation after our first look.
        lock.unlock(off)?;
        return Ok(None);
    };
    // The previous owner's waits ended with it.
    for entry in 0..WAIT_ENTRIES {
        seg.u32(off + ENTRIES + entry * ENTRY_SIZE)?
            .store(0, Relaxed);
    }
    seg.u32(off + UNLISTED)?.store(0, Relaxed);
    // Not armed until this owner's sentinel arms it (life.rs): the previous owner's death must
    // not be read as this one's.
    let life = seg.u32(off + LIFE)?;
    life.futex_word().store(0, Relaxed);
    // Before the generation: a reader that sees the generation sees this owner's namespace.
    seg.u32(off + PID_NS)?.store(pid_ns, Relaxed);
    generation_word.store(generation, Release);
    seg.u32(off + PID)?.store(std::process::id(), Release);
    // A watcher still asleep on the previous owner's word (a death the kernel never marked: a
    // damaged word) finds the slot claimed again.
    crate::futex::wake_all(life, "life word")?;
    Ok(Some(generation))
}

/// Records that the manager holding `slot` at `generation` is being closed, not killed: the
/// slot is then among the first a new manager takes ([`claim`]). The caller still holds the slot.
pub(crate) fn mark_closed(
    seg: &Segment,
    layout: &Layout,
    slot: u32,
    generation: u32,
) -> Result<()> {
    seg.u32(layout.slot_offset(slot) + CLOSED)?
        .store(generation, Relaxed);
    Ok(())
}

/// The death word of `slot`: the last generation of the slot whose owner is known dead (0: none
/// yet). Waiters sleep on it (`futex_waitv`) beside the lock word.
pub(crate) fn death_word<'a>(seg: &'a Segment, layout: &Layout, slot: u32) -> Result<&'a Le32> {
    if slot >= CLIENT_SLOTS {
        return Err(Error::corrupt(format!("client slot {slot} does not exist")));
    }
    seg.u32(layout.slot_offset(slot) + DEATH)
}

/// The life word of `slot` (life.rs): armed by its owner's sentinel, marked by the kernel when
/// the sentinel goes.
pub(crate) fn life_word<'a>(seg: &'a Segment, layout: &Layout, slot: u32) -> Result<&'a Le32> {
    if slot >= CLIENT_SLOTS {
        return Err(Error::corrupt(format!("client slot {slot} does not exist")));
    }
    seg.u32(layout.slot_offset(slot) + LIFE)
}

/// Records that the owner of generation `generation` of `slot` is dead and wakes every waiter
/// sleeping on the slot's death word. The caller proved it: it holds a lock on the slot's byte
/// (so nobody holds the slot) and read `generation` under that lock. Generation 0 (never
/// claimed) records nothing.
pub(crate) fn announce_death(
    seg: &Segment,
    layout: &Layout,
    slot: u32,
    generation: u32,
) -> Result<()> {
    if generation == 0 {
        return Ok(());
    }
    let word = death_word(seg, layout, slot)?;
    if word.load(Relaxed) != generation {
        word.store(generation, Release);
    }
    crate::futex::wake_all(word, "death word")
}

/// What shared memory alone says of an owner ([`owner_known`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Known {
    /// Gone: its death was announced, its slot moved on, or its life word is marked.
    Dead,
    /// Alive: its sentinel's life word is armed and unmarked.
    Alive,
    /// Shared memory does not tell (no sentinel armed the word): the kernel does.
    Unsure,
}

/// What shared memory alone says of the owner named by `owner` (a token other than this
/// manager's), without a system call (module docs, "Claiming and probing"): dead when its
/// slot's death word names its generation, the slot's generation moved on, or its life word
/// says `FUTEX_OWNER_DIED` (read after the generation); alive when its life word is armed and
/// unmarked and the generation still reads the same after it. Token 0 (a word holding only the
/// waiters bit) names nobody and is dead.
pub(crate) fn owner_known(seg: &Segment, layout: &Layout, owner: u32) -> Result<Known> {
    let (slot, generation) = decode(owner);
    if generation == 0 {
        // No manager ever writes such a token: garbage in the word. Taking it over repairs it.
        return Ok(Known::Dead);
    }
    if death_word(seg, layout, slot)?.load(Acquire) == generation {
        return Ok(Known::Dead);
    }
    let slot_generation = seg.u32(layout.slot_offset(slot))?;
    if slot_generation.load(Acquire) != generation {
        return Ok(Known::Dead);
    }
    let life = life_word(seg, layout, slot)?.futex_word().load(Acquire);
    if life & crate::life::OWNER_DIED != 0 {
        return Ok(Known::Dead);
    }
    // Armed, and by this generation's sentinel: a later owner stores its generation before its
    // sentinel arms the word, so an armed word of a later owner would show in this read.
    if life & crate::life::TID != 0 && slot_generation.load(Acquire) == generation {
        return Ok(Known::Alive);
    }
    Ok(Known::Unsure)
}

/// Whether the owner named by `owner` is known gone from shared memory alone ([`owner_known`]).
/// `false` means "alive, or dead without anyone having said so yet".
pub(crate) fn owner_known_dead(seg: &Segment, layout: &Layout, owner: u32) -> Result<bool> {
    Ok(owner_known(seg, layout, owner)? == Known::Dead)
}

/// How far a probe trusts shared memory's "alive" ([`owner_dead`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// An armed, unmarked life word answers "alive" without a system call (module docs):
    /// `try_lock`'s probe, on the path of every try of a lock that someone holds.
    Quick,
    /// The kernel has the last word on an owner that shared memory calls alive: waiters' full
    /// probes, the look at a deadline, the allocation lock's waiters, and what `held` and
    /// `snapshot` show. So a life word armed without a live sentinel behind it (a stray write, a
    /// checkpoint restored without its processes) cannot keep a dead owner alive for them.
    Kernel,
}

/// Whether the owner named by `owner` (a token other than this manager's) is gone: what shared
/// memory says ([`owner_known`]), and where it does not tell (or, with [`Probe::Kernel`], where
/// it says "alive"), whether its slot's byte is unlocked (`F_OFD_GETLK`, a system call). Token 0
/// (a word holding only the waiters bit) names nobody and is dead.
///
/// The OFD lock is probed before the generation is read (module docs).
pub(crate) fn owner_dead(seg: &Segment, layout: &Layout, owner: u32, probe: Probe) -> Result<bool> {
    match owner_known(seg, layout, owner)? {
        Known::Dead => return Ok(true),
        Known::Alive if probe == Probe::Quick => return Ok(false),
        Known::Alive | Known::Unsure => {}
    }
    let (slot, generation) = decode(owner);
    let off = layout.slot_offset(slot);
    // Every slot is locked through its own description, never the mapped one the probe asks
    // through, so this manager's own slot reads as locked too.
    if !seg.ofd_is_locked(off)? {
        return Ok(true);
    }
    Ok(seg.u32(off)?.load(Acquire) != generation)
}

/// The token of `slot`'s manager when the slot says it is open: claimed (a generation a claim
/// writes) and not marked closed. Whether that manager still lives is the probe's to say.
pub(crate) fn open_owner(seg: &Segment, layout: &Layout, slot: u32) -> Result<Option<u32>> {
    let off = layout.slot_offset(slot);
    let generation = seg.u32(off)?.load(Acquire);
    if generation == 0 || generation > GEN_MAX {
        return Ok(None);
    }
    let closed = seg.u32(off + CLOSED)?.load(Relaxed) == generation;
    Ok((!closed).then(|| token(slot, generation)))
}

/// The pid recorded by the owner of `token`'s slot, when that slot still has that generation
/// and [`lock_api::pid_seen_here`] lets a reader in pid namespace `pid_ns` see it.
pub(crate) fn pid_of(
    seg: &Segment,
    layout: &Layout,
    token: u32,
    pid_ns: u32,
) -> Result<Option<u32>> {
    let (slot, generation) = decode(token);
    if generation == 0 {
        return Ok(None);
    }
    let off = layout.slot_offset(slot);
    let current = seg.u32(off)?.load(Acquire);
    let pid = seg.u32(off + PID)?.load(Relaxed);
    let theirs = seg.u32(off + PID_NS)?.load(Relaxed);
    Ok(lock_api::pid_seen_here(pid, theirs, pid_ns).filter(|_| current == generation))
}

/// The pid `slot`'s current (or last) owner recorded, as [`pid_of`] gives it to a reader in
/// pid namespace `pid_ns`; `None` for a slot never claimed.
pub(crate) fn slot_pid(
    seg: &Segment,
    layout: &Layout,
    slot: u32,
    pid_ns: u32,
) -> Result<Option<u32>> {
    let generation = seg.u32(layout.slot_offset(slot))?.load(Acquire);
    pid_of(seg, layout, token(slot, generation), pid_ns)
}

/// Marks an entry that records a hold taken after waiting rather than a wait: the entry's lock
/// field is `(id + 1) | HELD` and its since field when the hold began.
pub(crate) const HELD: u32 = 1 << 31;

/// Publishes a wait for lock `id` that began at `since_ms` (unix milliseconds) in entry `entry`
/// of `slot`, which the caller owns and has reserved.
pub(crate) fn publish_wait(
    seg: &Segment,
    layout: &Layout,
    slot: u32,
    entry: usize,
    id: u32,
    since_ms: u64,
) -> Result<()> {
    let off = entry_offset(layout, slot, entry)?;
    seg.u64(off + ENTRY_SINCE)?.store(since_ms, Relaxed);
    seg.u32(off)?.store(id + 1, Release);
    Ok(())
}

/// Turns entry `entry` of `slot`, which the caller owns, into the record of a hold of lock `id`
/// taken after waiting, at `since_ms`: readers date the hold by it.
pub(crate) fn record_hold(
    seg: &Segment,
    layout: &Layout,
    slot: u32,
    entry: usize,
    id: u32,
    since_ms: u64,
) -> Result<()> {
    let off = entry_offset(layout, slot, entry)?;
    let lock = seg.u32(off)?;
    // Withdraw the wait first, so that no reader pairs the wait's lock with the hold's time.
    lock.store(0, Release);
    seg.u64(off + ENTRY_SINCE)?.store(since_ms, Relaxed);
    lock.store((id + 1) | HELD, Release);
    Ok(())
}

/// Takes back the hold record of lock `id` from `slot`, if there is one; returns the entry it
/// freed. A compare-and-swap: of two threads of the owner taking back one record (two racing
/// unlocks, or an unlock and a wait that evicts it), exactly one gets the entry.
pub(crate) fn take_hold(
    seg: &Segment,
    layout: &Layout,
    slot: u32,
    id: u32,
) -> Result<Option<usize>> {
    let held = (id + 1) | HELD;
    for entry in 0..WAIT_ENTRIES {
        let lock = seg.u32(entry_offset(layout, slot, entry)?)?;
        if lock.load(Relaxed) == held && lock.compare_exchange(held, 0, Release, Relaxed).is_ok() {
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

/// Takes back any one hold record of `slot` so that a wait can use its entry; returns that
/// entry. The hold is then dated by its first sighting instead.
pub(crate) fn evict_hold(seg: &Segment, layout: &Layout, slot: u32) -> Result<Option<usize>> {
    for entry in 0..WAIT_ENTRIES {
        let lock = seg.u32(entry_offset(layout, slot, entry)?)?;
        let v = lock.load(Relaxed);
        if v & HELD != 0 && lock.compare_exchange(v, 0, Release, Relaxed).is_ok() {
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

/// Clears entry `entry` of `slot`.
pub(crate) fn withdraw_wait(seg: &Segment, layout: &Layout, slot: u32, entry: usize) -> Result<()> {
    let off = entry_offset(layout, slot, entry)?;
    seg.u32(off)?.store(0, Release);
    Ok(())
}

/// Counts a wait that found no free entry (`delta` 1), or its end (`delta` -1).
pub(crate) fn count_unlisted(seg: &Segment, layout: &Layout, slot: u32, up: bool) -> Result<()> {
    let word = seg.u32(layout.slot_offset(slot) + UNLISTED)?;
    // Only this slot's owner changes the count, so a load and a store suffice.
    let n = word.load(Relaxed);
    word.store(
        if up {
            n.saturating_add(1)
        } else {
            n.saturating_sub(1)
        },
        Relaxed,
    );
    Ok(())
}

fn entry_offset(layout: &Layout, slot: u32, entry: usize) -> Result<usize> {
    if slot >= CLIENT_SLOTS || entry >= WAIT_ENTRIES {
        return Err(Error::corrupt(format!(
            "waiter entry {entry} of client slot {slot} does not exist"
        )));
    }
    Ok(layout.slot_offset(slot) + ENTRIES + entry * ENTRY_SIZE)
}

/// What a slot says about its owner: generation, pid, the waits it lists as `(lock id, unix
/// milliseconds)`, and the holds taken after waiting it records, in the same form. Lock ids are
/// not checked against the capacity here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SlotView {
    pub(crate) generation: u32,
    pub(crate) pid: u32,
    pub(crate) waits: Vec<(u32, u64)>,
    pub(crate) holds: Vec<(u32, u64)>,
}

/// Reads slot `slot`: its generation, pid, listed waits and hold records. An entry that changes
/// while it is read is left out (module docs).
pub(crate) fn view(seg: &Segment, layout: &Layout, slot: u32) -> Result<SlotView> {
    let off = layout.slot_offset(slot);
    let generation = seg.u32(off)?.load(Acquire);
    let pid = seg.u32(off + PID)?.load(Relaxed);
    let (mut waits, mut holds) = (Vec::new(), Vec::new());
    for entry in 0..WAIT_ENTRIES {
        let at = off + ENTRIES + entry * ENTRY_SIZE;
        let lock = seg.u32(at)?;
        let first = lock.load(Acquire);
        if first == 0 {
            continue;
        }
        let since = seg.u64(at + ENTRY_SINCE)?.load(Relaxed);
        if lock.load(Acquire) == first {
            if first & HELD == 0 {
                waits.push((first - 1, since));
            } else {
                holds.push(((first & !HELD).wrapping_sub(1), since));
            }
        }
    }
    Ok(SlotView {
        generation,
        pid,
        waits,
        holds,
    })
}

/// When the hold of lock `id` by the owner of `slot` began, if its owner recorded it (a hold
/// taken after waiting), in unix milliseconds. Reads the six entries and nothing else.
pub(crate) fn hold_since(
    seg: &Segment,
    layout: &Layout,
    slot: u32,
    id: u32,
) -> Result<Option<u64>> {
    let held = (id + 1) | HELD;
    for entry in 0..WAIT_ENTRIES {
        let at = entry_offset(layout, slot, entry)?;
        let lock = seg.u32(at)?;
        if lock.load(Acquire) != held {
            continue;
        }
        let since = seg.u64(at + ENTRY_SINCE)?.load(Relaxed);
        if lock.load(Acquire) == held {
            return Ok(Some(since));
        }
    }
    Ok(None)
}

/// Whether the slot lists any wait (hold records do not count): a quick scan that reads one word
/// per entry.
pub(crate) fn any_waits(seg: &Segment, layout: &Layout, slot: u32) -> Result<bool> {
    let off = layout.slot_offset(slot) + ENTRIES;
    for entry in 0..WAIT_ENTRIES {
        let v = seg.u32(off + entry * ENTRY_SIZE)?.load(Relaxed);
        if v != 0 && v & HELD == 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_never_zero() {
        for slot in [0, 1, CLIENT_SLOTS - 1] {
            for generation in [1, 2, GEN_MAX] {
                let t = token(slot, generation);
                assert_ne!(t, 0);
                assert_eq!(t & crate::lockword::WAITERS, 0);
                assert_eq!(decode(t), (slot, generation));
            }
        }
    }

    #[test]
    fn generations_grow_and_never_wrap() {
        assert_eq!(next_generation(0), Some(1));
        assert_eq!(next_generation(1), Some(2));
        assert_eq!(next_generation(GEN_MAX - 1), Some(GEN_MAX));
        assert_eq!(next_generation(GEN_MAX), None);
        assert_eq!(next_generation(GEN_MAX + 1), None);
        assert_eq!(next_generation(u32::MAX), None);
    }
}
