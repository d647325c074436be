//! Noticing a dead holder when it dies, and letting idle waiters sleep, across real processes.
//!
//! The clients are this test binary re-executed (`common`); every wait is bounded, and every
//! trial removes its segment. Offsets of the segment format are in docs/segment-format.md.

mod common;

use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lock_conformance::child::ChildProcess;
use lock_shm::{Acquired, Error, LockId, Locker, Manager, ShmManager};

use common::{CAPACITY, STEP, Segment, TrialResult, client, e2s, expect, send};

/// Where client slot `s` begins, and the offsets of its generation and death word.
const SLOTS_AT: u64 = 256;
const SLOT_SIZE: u64 = 128;
const DEATH: u64 = 8;
/// The life word (native byte order) and its `FUTEX_OWNER_DIED` bit and thread id bits.
const LIFE: u64 = 16;
const OWNER_DIED: u32 = 0x4000_0000;
const TID: u32 = 0x3fff_ffff;

impl Segment {
    /// The u32 at `off` of the segment file.
    fn u32_at(&self, off: u64) -> Result<u32, String> {
        let f = std::fs::File::open(std::path::Path::new("/dev/shm").join(&self.0))
            .map_err(|e| format!("open segment file: {e}"))?;
        let mut b = [0u8; 4];
        f.read_exact_at(&mut b, off)
            .map_err(|e| format!("read segment file: {e}"))?;
        Ok(u32::from_le_bytes(b))
    }

    /// Writes `value` as the u32 at `off` of the segment file.
    fn write_u32(&self, off: u64, value: u32) -> TrialResult {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(std::path::Path::new("/dev/shm").join(&self.0))
            .map_err(|e| format!("open segment file: {e}"))?;
        f.write_all_at(&value.to_le_bytes(), off)
            .map_err(|e| format!("write segment file: {e}"))
    }

    /// Client slot `slot`'s life word.
    fn life(&self, slot: u32) -> Result<u32, String> {
        let le = self.u32_at(SLOTS_AT + SLOT_SIZE * u64::from(slot) + LIFE)?;
        Ok(u32::from_ne_bytes(le.to_le_bytes()))
    }

    /// Client slot `slot`'s generation and death word.
    fn slot(&self, slot: u32) -> Result<(u32, u32), String> {
        let at = SLOTS_AT + SLOT_SIZE * u64::from(slot);
        Ok((self.u32_at(at)?, self.u32_at(at + DEATH)?))
    }
}

/// Waits, within STEP, until `ready` says yes.
fn until(what: &str, mut ready: impl FnMut() -> Result<bool, String>) -> TrialResult {
    let deadline = Instant::now() + STEP;
    while !ready()? {
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {STEP:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The client slot that `client`'s manager claimed.
fn slot_of(client: &mut ChildProcess) -> Result<u32, String> {
    send(client, "slot")?;
    expect(client, "slot")?
        .parse()
        .map_err(|_| "bad slot".to_string())
}

/// `armed`, read while `who` lived, is a live owner's life word (a thread id, not marked), and
/// `life`, read after its death, is marked `FUTEX_OWNER_DIED`.
fn life_told_the_death(who: &str, armed: u32, life: u32) -> TrialResult {
    if armed & TID == 0 || armed & OWNER_DIED != 0 {
        return Err(format!("{who}'s life word was {armed:#x} while it lived"));
    }
    if life & OWNER_DIED == 0 {
        return Err(format!("{who}'s life word is {life:#x} after its death"));
    }
    Ok(())
}

/// Whether process `pid` lists a waiter on lock `id` in the snapshot.
fn waits(manager: &ShmManager, id: u32, pid: u32) -> Result<bool, String> {
    Ok(manager
        .snapshot()
        .map_err(e2s)?
        .iter()
        .any(|l| l.id == LockId(id) && l.waiters.iter().any(|w| w.pid == Some(pid))))
}

/// Voluntary context switches of every thread of process `pid` so far: how often it slept.
fn switches(pid: u32) -> Result<u64, String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
    let mut total = 0;
    for task in tasks {
        let status =
            std::fs::read_to_string(task.map_err(|e| e.to_string())?.path().join("status"))
                .map_err(|e| e.to_string())?;
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .ok_or("no voluntary_ctxt_switches in status")?;
    }
    Ok(total)
}

/// A waiter blocked behind a holder that is SIGKILLed takes the lock over as `OwnerDied`, and
/// its watcher writes the dead owner's generation into the slot's death word.
fn a_watched_holders_death_is_announced_and_taken_over() -> TrialResult {
    let segment = Segment::new("announce");
    let manager = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    let mut holder = client(&segment)?;
    send(&mut holder, "lock 1")?;
    expect(&mut holder, "locked clean")?;
    let mut waiter = client(&segment)?;
    send(&mut waiter, "wait 1 60000")?;
    until("the waiter", || waits(&manager, 1, waiter.pid()))?;
    let slot = manager
        .held()
        .map_err(e2s)?
        .first()
        .and_then(|h| h.holder.as_ref())
        .and_then(|h| h.owner.clone())
        .ok_or("no holder")?;
    holder.sigkill().map_err(|e| e.to_string())?;
    expect(&mut waiter, "locked owner-died")?;
    // "shm slot S generation G"
    let words: Vec<&str> = slot.split(' ').collect();
    let (s, g): (u32, u32) = match words.as_slice() {
        ["shm", "slot", s, "generation", g] => (
            s.parse().map_err(|_| "bad slot")?,
            g.parse().map_err(|_| "bad generation")?,
        ),
        _ => return Err(format!("unexpected owner key {slot:?}")),
    };
    // The waiter may have heard of the death from the kernel, through the holder's life word,
    // before the watcher it woke has announced it: give the watcher its step.
    let announced = until("the death announced", || Ok(segment.slot(s)? == (g, g)));
    if let Err(e) = announced {
        let (generation, death) = segment.slot(s)?;
        return Err(format!(
            "{e}: slot {s}: generation {generation}, death word {death}; expected both {g}"
        ));
    }
    send(&mut waiter, "unlock 1")?;
    expect(&mut waiter, "unlocked")?;
    waiter.finish(STEP).map_err(|e| e.to_string())
}

/// The kernel tells a holder's death through the holder's life word, early in its exit: a
/// holder killed while a forked child of it still keeps its client slot's lock open (the OFD
/// lock, the only sign of life before the life word) is taken over at once as `OwnerDied`.
/// Before the life word, the waiter slept until the child exited, 60 s later.
fn a_dead_holder_is_told_by_its_life_word() -> TrialResult {
    let segment = Segment::new("life");
    let manager = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    let mut holder = client(&segment)?;
    let slot = slot_of(&mut holder)?;
    let armed = segment.life(slot)?;
    send(&mut holder, "lock 1")?;
    expect(&mut holder, "locked clean")?;
    send(&mut holder, "keep 60000")?;
    let keeper: i32 = expect(&mut holder, "kept")?
        .parse()
        .map_err(|_| "bad pid")?;
    let mut waiter = client(&segment)?;
    send(&mut waiter, "wait 1 60000")?;
    until("the waiter", || waits(&manager, 1, waiter.pid()))?;
    holder.sigkill().map_err(|e| e.to_string())?;
    let taken = expect(&mut waiter, "locked");
    let life = segment.life(slot);
    // The keeper holds the dead holder's descriptors: end it whatever happened.
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(keeper).ok_or("pid 0")?,
        rustix::process::Signal::KILL,
    );
    if taken? != "owner-died" {
        return Err("the dead holder's lock was not reported as owner-died".into());
    }
    life_told_the_death("the holder", armed, life?)?;
    send(&mut waiter, "unlock 1")?;
    expect(&mut waiter, "unlocked")?;
    waiter.finish(STEP).map_err(|e| e.to_string())
}

/// Owner death is told across pid namespaces: the kernel compares the sentinel's thread id in
/// the sentinel's own namespace, and readers only look at `FUTEX_OWNER_DIED`. A holder in a new
/// pid namespace (where its pid is 1) arms its life word, and is listed alive but without a pid
/// (pid 1 is another process here); killed, it is taken over as `OwnerDied` by a waiter outside,
/// and its life word is marked.
fn a_holder_in_another_pid_namespace_is_told_dead() -> TrialResult {
    let segment = Segment::new("pidns");
    let manager = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    let mut holder = common::client_in_pid_namespace(&segment)?;
    let slot = slot_of(&mut holder)?;
    send(&mut holder, "lock 1")?;
    expect(&mut holder, "locked clean")?;
    // The slot records the pid the holder sees: 1, the init of its own namespace.
    let recorded = segment.u32_at(SLOTS_AT + SLOT_SIZE * u64::from(slot) + 4)?;
    if recorded != 1 {
        return Err(format!(
            "the holder is not in a pid namespace of its own: pid {recorded}"
        ));
    }
    // Pid 1 here is another process: the holder is listed alive, without a pid (it was
    // listed as pid 1, and lockctl showed this namespace's init as the holder).
    let listed = manager
        .held()
        .map_err(e2s)?
        .first()
        .and_then(|h| h.holder.clone())
        .ok_or("the namespaced holder's lock is not listed as held")?;
    if listed.pid.is_some() || listed.dead {
        return Err(format!(
            "a holder in another pid namespace is listed as {listed:?}"
        ));
    }
    let clients = manager.clients().map_err(e2s)?;
    if clients.len() != 1 || clients[0].pid.is_some() {
        return Err(format!(
            "a client in another pid namespace is listed as {clients:?}"
        ));
    }
    let armed = segment.life(slot)?;
    let mut waiter = client(&segment)?;
    send(&mut waiter, "wait 1 60000")?;
    until("the waiter", || waits(&manager, 1, waiter.pid()))?;
    holder.sigkill().map_err(|e| e.to_string())?;
    expect(&mut waiter, "locked owner-died")?;
    life_told_the_death("the namespaced holder", armed, segment.life(slot)?)?;
    send(&mut waiter, "unlock 1")?;
    expect(&mut waiter, "unlocked")?;
    waiter.finish(STEP).map_err(|e| e.to_string())
}

/// A slot whose owner died unwatched has its death announced by the next manager that claims
/// it, before that manager's generation: waiters sleeping on the old owner wake either way.
/// Every later slot is made to look like a dead manager's too (generation 1, never closed), so
/// the claimer, finding no slot never used or closed, takes the lowest dead one.
fn a_claimer_announces_the_death_of_the_slot_it_takes() -> TrialResult {
    let segment = Segment::new("claimer");
    let _manager = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    let mut first = client(&segment)?;
    let slot = slot_of(&mut first)?;
    for later in slot + 1..1024 {
        segment.write_u32(SLOTS_AT + SLOT_SIZE * u64::from(later), 1)?;
    }
    let (generation, death) = segment.slot(slot)?;
    if death == generation {
        return Err(format!(
            "slot {slot}: death word {death} names its live owner"
        ));
    }
    first.sigkill().map_err(|e| e.to_string())?;
    let second = ShmManager::open(&segment.0).map_err(e2s)?;
    if second.client_slot() != slot {
        return Err(format!(
            "the next manager took slot {}, not the dead owner's {slot}",
            second.client_slot()
        ));
    }
    let (now, death) = segment.slot(slot)?;
    if death != generation || now != generation + 1 {
        return Err(format!(
            "slot {slot}: death word {death}, generation {now}; expected {generation} and {}",
            generation + 1
        ));
    }
    Ok(())
}

/// A waiter behind a live holder sleeps: over two seconds its process does not wake up once a
/// millisecond-scale poll would (the first-wave waiter woke every 5 ms: 400 times).
fn an_idle_waiter_sleeps() -> TrialResult {
    let segment = Segment::new("idle");
    let manager = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    let lock = manager.retrieve(LockId(2)).map_err(e2s)?;
    let _ = lock.lock().map_err(e2s)?;
    let mut waiter = client(&segment)?;
    send(&mut waiter, "deadlock 0")?;
    expect(&mut waiter, "deadlock-timeout none")?;
    send(&mut waiter, "wait 2 60000")?;
    until("the waiter", || waits(&manager, 2, waiter.pid()))?;
    // Let it settle into its sleep (its watcher thread starts on the first round).
    std::thread::sleep(Duration::from_millis(200));
    let before = switches(waiter.pid())?;
    std::thread::sleep(Duration::from_secs(2));
    let after = switches(waiter.pid())?;
    lock.unlock().map_err(e2s)?;
    expect(&mut waiter, "locked clean")?;
    send(&mut waiter, "unlock 2")?;
    expect(&mut waiter, "unlocked")?;
    waiter.finish(STEP).map_err(|e| e.to_string())?;
    if after - before > 10 {
        return Err(format!(
            "an idle waiter woke {} times in 2 s",
            after - before
        ));
    }
    Ok(())
}

/// A manager dropped while its watcher thread is still blocked on a live holder keeps no slot
/// alive: a lock it held when dropped is taken over at once as `OwnerDied`.
fn a_lingering_watcher_keeps_no_slot_alive() -> TrialResult {
    let segment = Segment::new("linger");
    let survivor = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    let mut holder = client(&segment)?;
    send(&mut holder, "lock 1")?;
    expect(&mut holder, "locked clean")?;
    let dropped = ShmManager::open(&segment.0).map_err(e2s)?;
    let _ = dropped
        .retrieve(LockId(3))
        .and_then(|l| l.lock())
        .map_err(e2s)?;
    // Waiting for lock 1 starts a watcher on the holder's slot; the wait then times out.
    match dropped
        .retrieve(LockId(1))
        .and_then(|l| l.try_lock_for(Duration::from_millis(300)))
    {
        Err(Error::Timeout) => {}
        other => return Err(format!("waiting behind a live holder gave {other:?}")),
    }
    drop(dropped);
    let got = survivor
        .retrieve(LockId(3))
        .and_then(|l| l.try_lock())
        .map_err(e2s)?;
    if got != Some(Acquired::OwnerDied) {
        return Err(format!(
            "the dropped manager's lock gave {got:?}: its slot is still held"
        ));
    }
    send(&mut holder, "unlock 1")?;
    expect(&mut holder, "unlocked")?;
    holder.finish(STEP).map_err(|e| e.to_string())
}

/// The scheduler slice (`se.slice`, ns) of every thread of process `pid`, with its name.
fn slices(pid: u32) -> Result<Vec<(String, u64)>, String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for task in tasks {
        let dir = task.map_err(|e| e.to_string())?.path();
        // A thread that ended since the listing is no longer there: not an error.
        let (Ok(comm), Ok(sched)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("sched")),
        ) else {
            continue;
        };
        let slice = sched
            .lines()
            .find_map(|l| l.strip_prefix("se.slice"))
            .and_then(|v| v.trim_start_matches([' ', ':']).trim().parse::<u64>().ok())
            .ok_or("no se.slice in sched")?;
        out.push((comm.trim().to_string(), slice));
    }
    Ok(out)
}

/// Whether this kernel lets a thread choose its slice (Linux 6.12).
fn custom_slices() -> Result<bool, String> {
    let release =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map_err(|e| e.to_string())?;
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    Ok((major, minor) >= (6, 12))
}

/// The shortest slice the kernel gives (lock-shm's slice.rs asks for it).
const SHORT_SLICE: u64 = 100_000;

/// A waiter that sleeps on its holder's life word, and its watcher thread, run on the shortest
/// slice while a death can wake them, so that they preempt the dying holder's exit instead of
/// queueing behind it; the waiter's thread gets its own slice back when the wait ends.
fn a_death_wakes_its_waiters_on_short_slices() -> TrialResult {
    let segment = Segment::new("slice");
    let manager = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    let lock = manager.retrieve(LockId(2)).map_err(e2s)?;
    let _ = lock.lock().map_err(e2s)?;
    let mut waiter = client(&segment)?;
    let pid = waiter.pid();
    let own = slices(pid)?
        .first()
        .map(|(_, slice)| *slice)
        .ok_or("the waiter has no threads")?;
    send(&mut waiter, "deadlock 0")?;
    expect(&mut waiter, "deadlock-timeout none")?;
    send(&mut waiter, "wait 2 60000")?;
    until("the waiter", || waits(&manager, 2, pid))?;
    let watcher = |(name, _): &&(String, u64)| name.starts_with("lock-shm-watch");
    if custom_slices()? {
        until(
            "a short slice for the waiting thread and its watcher",
            || {
                let now = slices(pid)?;
                let short = |t: &&(String, u64)| t.1 == SHORT_SLICE;
                Ok(now.iter().filter(watcher).any(|t| short(&t))
                    && now.iter().filter(|t| !watcher(t)).any(|t| short(&t)))
            },
        )?;
    }
    lock.unlock().map_err(e2s)?;
    expect(&mut waiter, "locked clean")?;
    let after = slices(pid)?;
    send(&mut waiter, "unlock 2")?;
    expect(&mut waiter, "unlocked")?;
    waiter.finish(STEP).map_err(|e| e.to_string())?;
    if let Some((name, slice)) = after.iter().find(|t| !watcher(t) && t.1 != own) {
        return Err(format!(
            "thread {name} of the waiter has a slice of {slice} ns after the wait, not its own {own}"
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let trials: [common::Trial; 7] = [
        (
            "a_death_wakes_its_waiters_on_short_slices",
            a_death_wakes_its_waiters_on_short_slices,
        ),
        (
            "a_holder_in_another_pid_namespace_is_told_dead",
            a_holder_in_another_pid_namespace_is_told_dead,
        ),
        (
            "a_dead_holder_is_told_by_its_life_word",
            a_dead_holder_is_told_by_its_life_word,
        ),
        (
            "a_watched_holders_death_is_announced_and_taken_over",
            a_watched_holders_death_is_announced_and_taken_over,
        ),
        (
            "a_claimer_announces_the_death_of_the_slot_it_takes",
            a_claimer_announces_the_death_of_the_slot_it_takes,
        ),
        ("an_idle_waiter_sleeps", an_idle_waiter_sleeps),
        (
            "a_lingering_watcher_keeps_no_slot_alive",
            a_lingering_watcher_keeps_no_slot_alive,
        ),
    ];
    common::main(&[], trials)
}
