//! Holders and waiters across real processes: since words, waiter entries that leave with the
//! wait, dead waiters, more waiting threads than entries, deadlock detection turned off, and the
//! other managers that have the segment open, and removing a segment only while nobody has it open.
#![allow(unsafe_code)] // reason: a trial takes a byte-range OFD lock with libc::fcntl, as a remover does
//!
//! The clients are this test binary re-executed (`common`); every wait is bounded, and every
//! trial removes its segment.

mod common;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lock_shm::{Error, LockId, LockState, Locker, Manager, ShmManager};

use common::{CAPACITY, STEP, Segment, TrialResult, client, e2s, expect, send};

fn state(manager: &ShmManager, id: u32) -> Result<Option<LockState>, String> {
    Ok(manager
        .snapshot()
        .map_err(e2s)?
        .into_iter()
        .find(|l| l.id == LockId(id)))
}

/// Polls the snapshot until `ready` holds for lock `id`'s state (or its absence), within STEP.
fn until(
    manager: &ShmManager,
    id: u32,
    what: &str,
    ready: impl Fn(Option<&LockState>) -> bool,
) -> Result<Option<LockState>, String> {
    let deadline = Instant::now() + STEP;
    loop {
        let s = state(manager, id)?;
        if ready(s.as_ref()) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{what}: not seen within {STEP:?}; last state {s:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn since(s: &LockState) -> Result<SystemTime, String> {
    s.holder
        .as_ref()
        .and_then(|h| h.since)
        .ok_or_else(|| format!("no holder since in {s:?}"))
}

/// A hold taken on the fast path is "held since" its first sighting, and that sighting does not
/// outlive it: after an unlock and a new fast-path hold by the same owner, the new hold is seen
/// afresh, not dated by the old record.
fn a_sighting_dates_only_the_hold_it_saw() -> TrialResult {
    let segment = Segment::new("sighting");
    let manager = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    let mut holder = client(&segment)?;
    send(&mut holder, "lock 1")?;
    expect(&mut holder, "locked")?;
    let first = since(&until(&manager, 1, "the hold", |s| s.is_some())?.ok_or("no state")?)?;
    // A second look finds the record, not a new sighting.
    std::thread::sleep(Duration::from_millis(1100));
    let again = since(&state(&manager, 1)?.ok_or("hold gone")?)?;
    if again != first {
        return Err(format!(
            "the recorded sighting moved: {first:?} then {again:?}"
        ));
    }
    send(&mut holder, "unlock 1")?;
    expect(&mut holder, "unlocked")?;
    std::thread::sleep(Duration::from_millis(1100));
    let relocked_after = SystemTime::now();
    send(&mut holder, "lock 1")?;
    expect(&mut holder, "locked")?;
    let second = since(&state(&manager, 1)?.ok_or("hold gone")?)?;
    // Seconds precision: the new hold's since is not before the second it began in.
    let floor = relocked_after - Duration::from_secs(1);
    if second < floor || second <= first {
        return Err(format!(
            "the second hold is dated {second:?}, before it began ({relocked_after:?}); first hold {first:?}"
        ));
    }
    send(&mut holder, "unlock 1")?;
    expect(&mut holder, "unlocked")?;
    holder.finish(STEP).map_err(|e| e.to_string())
}

/// A hold taken after waiting is dated when it was acquired, not when someone looked.
fn a_hold_taken_after_waiting_is_dated_when_acquired() -> TrialResult {
    let segment = Segment::new("waited");
    let manager = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    let lock = manager.retrieve(LockId(2)).map_err(e2s)?;
    let _ = lock.lock().map_err(e2s)?;
    let mut waiter = client(&segment)?;
    send(&mut waiter, "wait 2 10000")?;
    until(&manager, 2, "the waiter", |s| {
        s.is_some_and(|s| !s.waiters.is_empty())
    })?;
    let released = SystemTime::now();
    lock.unlock().map_err(e2s)?;
    expect(&mut waiter, "locked")?;
    std::thread::sleep(Duration::from_millis(1100));
    let looked = SystemTime::now();
    let s = state(&manager, 2)?.ok_or("hold gone")?;
    let at = since(&s)?;
    if at + Duration::from_secs(1) < released || at >= looked - Duration::from_millis(500) {
        return Err(format!(
            "acquired after {released:?}, looked at {looked:?}, but dated {at:?}"
        ));
    }
    if !s.waiters.is_empty() {
        return Err(format!("the waiter that acquired is still listed: {s:?}"));
    }
    send(&mut waiter, "unlock 2")?;
    expect(&mut waiter, "unlocked")?;
    waiter.finish(STEP).map_err(|e| e.to_string())
}

/// A hold taken after waiting is dated by its holder's record, and the record goes with the
/// hold: once that hold ends, a new hold of the same lock by the same owner taken at once is
/// seen afresh, not dated by the old record.
fn a_hold_record_dates_only_its_hold() -> TrialResult {
    let segment = Segment::new("record");
    let manager = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    let lock = manager.retrieve(LockId(4)).map_err(e2s)?;
    let _ = lock.lock().map_err(e2s)?;
    let mut waiter = client(&segment)?;
    send(&mut waiter, "wait 4 10000")?;
    until(&manager, 4, "the waiter", |s| {
        s.is_some_and(|s| !s.waiters.is_empty())
    })?;
    lock.unlock().map_err(e2s)?;
    expect(&mut waiter, "locked")?;
    let first = since(&state(&manager, 4)?.ok_or("hold gone")?)?;
    send(&mut waiter, "unlock 4")?;
    expect(&mut waiter, "unlocked")?;
    std::thread::sleep(Duration::from_millis(1100));
    let relocked_after = SystemTime::now();
    send(&mut waiter, "lock 4")?;
    expect(&mut waiter, "locked")?;
    let second = since(&state(&manager, 4)?.ok_or("hold gone")?)?;
    if second <= first || second + Duration::from_secs(1) < relocked_after {
        return Err(format!(
            "the second hold (taken after {relocked_after:?}) is dated {second:?}; the first was {first:?}"
        ));
    }
    send(&mut waiter, "unlock 4")?;
    expect(&mut waiter, "unlocked")?;
    waiter.finish(STEP).map_err(|e| e.to_string())
}

/// A manager whose six entries all record holds taken after waiting still lists its next
/// wait: a hold record gives its entry up.
fn hold_records_give_way_to_a_wait() -> TrialResult {
    let segment = Segment::new("evict");
    let waiter = Arc::new(ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?);
    let mut holder = client(&segment)?;
    for id in 0..8 {
        send(&mut holder, &format!("lock {id}"))?;
        expect(&mut holder, "locked")?;
    }
    let me = std::process::id();
    let worker = {
        let m = Arc::clone(&waiter);
        std::thread::spawn(move || -> Result<(), Error> {
            for id in 0..8 {
                let _ = m.retrieve(LockId(id))?.try_lock_for(STEP)?;
            }
            Ok(())
        })
    };
    for id in 0..8 {
        until(&waiter, id, "the wait", |s| {
            s.is_some_and(|s| s.waiters.iter().any(|w| w.pid == Some(me)))
        })?;
        send(&mut holder, &format!("unlock {id}"))?;
        expect(&mut holder, "unlocked")?;
    }
    worker
        .join()
        .map_err(|_| "the waiting thread panicked".to_string())?
        .map_err(e2s)?;
    for id in 0..8 {
        waiter
            .retrieve(LockId(id))
            .and_then(|l| l.unlock())
            .map_err(e2s)?;
    }
    holder.finish(STEP).map_err(|e| e.to_string())
}

/// A waiter that times out, and one that is killed while waiting, leave the snapshot.
fn waiters_leave_the_snapshot_when_their_wait_ends() -> TrialResult {
    let segment = Segment::new("leave");
    let manager = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    let lock = manager.retrieve(LockId(0)).map_err(e2s)?;
    let _ = lock.lock().map_err(e2s)?;
    let mut quitter = client(&segment)?;
    let mut victim = client(&segment)?;
    send(&mut quitter, "wait 0 600")?;
    send(&mut victim, "wait 0 60000")?;
    let pids = [quitter.pid(), victim.pid()];
    until(&manager, 0, "both waiters", |s| {
        s.is_some_and(|s| {
            pids.iter()
                .all(|p| s.waiters.iter().any(|w| w.pid == Some(*p)))
        })
    })?;
    expect(&mut quitter, "timeout")?;
    until(&manager, 0, "the timed-out waiter gone", |s| {
        s.is_some_and(|s| s.waiters.iter().all(|w| w.pid != Some(pids[0])))
    })?;
    victim.sigkill().map_err(|e| e.to_string())?;
    let s = state(&manager, 0)?.ok_or("the held lock is not listed")?;
    if !s.waiters.is_empty() {
        return Err(format!("a killed waiter is still listed: {s:?}"));
    }
    lock.unlock().map_err(e2s)?;
    if state(&manager, 0)?.is_some() {
        return Err("a free lock with no live waiter is listed".into());
    }
    quitter.finish(STEP).map_err(|e| e.to_string())
}

/// A manager with more waiting threads than its slot has entries lists six of them, counts the
/// rest, and every thread acquires in turn once the holder releases.
fn more_waiting_threads_than_entries() -> TrialResult {
    let segment = Segment::new("threads");
    let waiters = Arc::new(ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?);
    let mut holder = client(&segment)?;
    send(&mut holder, "lock 3")?;
    expect(&mut holder, "locked")?;
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let m = Arc::clone(&waiters);
            std::thread::spawn(move || -> Result<(), Error> {
                let l = m.retrieve(LockId(3))?;
                let _ = l.try_lock_for(STEP)?;
                l.unlock()
            })
        })
        .collect();
    let me = std::process::id();
    let s = until(&waiters, 3, "six listed waiters", |s| {
        s.is_some_and(|s| s.waiters.iter().filter(|w| w.pid == Some(me)).count() == 6)
    })?;
    let listed = s.ok_or("no state")?.waiters.len();
    send(&mut holder, "unlock 3")?;
    expect(&mut holder, "unlocked")?;
    for t in threads {
        t.join()
            .map_err(|_| "a waiting thread panicked".to_string())?
            .map_err(e2s)?;
    }
    if listed != 6 {
        return Err(format!("{listed} waiters listed, expected 6"));
    }
    until(&waiters, 3, "every waiter gone", |s| s.is_none())?;
    holder.finish(STEP).map_err(|e| e.to_string())
}

/// With the deadlock timeout set to zero, a cycle is never reported: both members time out.
fn a_zero_deadlock_timeout_turns_detection_off() -> TrialResult {
    let segment = Segment::new("nodetect");
    let _manager = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    let mut a = client(&segment)?;
    let mut b = client(&segment)?;
    for (c, first) in [(&mut a, 4), (&mut b, 5)] {
        send(c, "deadlock 0")?;
        expect(c, "deadlock-timeout none")?;
        send(c, &format!("lock {first}"))?;
        expect(c, "locked")?;
    }
    send(&mut a, "wait 5 1500")?;
    send(&mut b, "wait 4 1500")?;
    let (ra, rb) = (expect(&mut a, ""), expect(&mut b, ""));
    if ra.as_deref() != Ok("timeout") || rb.as_deref() != Ok("timeout") {
        return Err(format!(
            "with detection off the members said {ra:?} and {rb:?}"
        ));
    }
    a.finish(STEP).map_err(|e| e.to_string())?;
    b.finish(STEP).map_err(|e| e.to_string())
}

/// A holder SIGKILLed while it holds a lock is still named, pid and all, after other managers
/// open the segment: a new manager takes a slot never used, or one whose manager closed, before
/// the dead holder's, so `held()` (and `lockctl status`) can say who died holding the lock.
fn a_dead_holder_keeps_its_pid_while_other_slots_are_free() -> TrialResult {
    let segment = Segment::new("deadpid");
    let manager = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    // A manager that opens and closes before, so the slot after ours has been used and closed.
    drop(ShmManager::open(&segment.0).map_err(e2s)?);
    let mut holder = client(&segment)?;
    let pid = holder.pid();
    send(&mut holder, "lock 3")?;
    expect(&mut holder, "locked")?;
    holder.sigkill().map_err(|e| e.to_string())?;
    // Opened after the death, each takes a slot: the same process, and a new one, twice.
    for _ in 0..2 {
        drop(ShmManager::open(&segment.0).map_err(e2s)?);
        let mut other = client(&segment)?;
        other.finish(STEP).map_err(|e| e.to_string())?;
    }
    let held = manager.held().map_err(e2s)?;
    let holder = held
        .iter()
        .find(|l| l.id == LockId(3))
        .and_then(|l| l.holder.as_ref())
        .ok_or_else(|| format!("lock 3 is not listed as held: {held:?}"))?;
    if !holder.dead || holder.pid != Some(pid) {
        return Err(format!(
            "the holder killed as pid {pid} is listed as {holder:?}"
        ));
    }
    Ok(())
}

/// The pids `clients()` lists, sorted, after checking that every entry is a live manager of
/// this host with an owner key.
fn client_pids(manager: &ShmManager) -> Result<Vec<u32>, String> {
    let clients = manager.clients().map_err(e2s)?;
    let mut pids = Vec::new();
    for c in &clients {
        if c.dead || c.owner.is_none() || c.host.is_none() {
            return Err(format!("clients() listed {c:?}"));
        }
        pids.push(
            c.pid
                .ok_or_else(|| format!("clients() listed {c:?} without a pid"))?,
        );
    }
    pids.sort_unstable();
    Ok(pids)
}

/// `clients()` lists every other manager that has the segment open, in this process or another,
/// and none that closed it, died, or is the caller: what `lockctl remove` refuses to pull the
/// segment from under.
fn clients_are_the_other_live_managers() -> TrialResult {
    let segment = Segment::new("clients");
    let manager = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    let me = std::process::id();
    if !client_pids(&manager)?.is_empty() {
        return Err(format!("alone, clients() said {:?}", manager.clients()));
    }
    let sibling = ShmManager::open(&segment.0).map_err(e2s)?;
    if client_pids(&manager)? != [me] || client_pids(&sibling)? != [me] {
        return Err(format!(
            "two managers of this process: {:?} and {:?}",
            manager.clients(),
            sibling.clients()
        ));
    }
    drop(sibling);
    let mut closing = client(&segment)?;
    let mut killed = client(&segment)?;
    let mut both = vec![closing.pid(), killed.pid()];
    both.sort_unstable();
    let listed = client_pids(&manager)?;
    if listed != both {
        return Err(format!("clients {both:?} open: clients() said {listed:?}"));
    }
    closing.finish(STEP).map_err(|e| e.to_string())?;
    killed.sigkill().map_err(|e| e.to_string())?;
    let listed = client_pids(&manager)?;
    if !listed.is_empty() {
        return Err(format!(
            "after one client closed and one was killed, clients() said {listed:?}"
        ));
    }
    Ok(())
}

/// `remove_unused` leaves a segment that any manager has open, in this process or another,
/// naming their pids, and removes it once none has.
fn remove_unused_keeps_a_segment_in_use() -> TrialResult {
    let segment = Segment::new("unused");
    let manager = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    let me = std::process::id();
    match ShmManager::remove_unused(&segment.0) {
        Err(Error::InUse { what }) if what.contains(&format!("pid {me}")) => {}
        other => return Err(format!("with this process's manager open: {other:?}")),
    }
    drop(manager);
    let mut child = client(&segment)?;
    let pid = child.pid();
    match ShmManager::remove_unused(&segment.0) {
        Err(Error::InUse { what })
            if what.contains(&format!("1 manager has it open: pid {pid}")) => {}
        other => return Err(format!("with child {pid}'s manager open: {other:?}")),
    }
    drop(ShmManager::open(&segment.0).map_err(|e| format!("kept, yet: {e}"))?);
    child.finish(STEP).map_err(|e| e.to_string())?;
    ShmManager::remove_unused(&segment.0).map_err(e2s)?;
    match ShmManager::open(&segment.0) {
        Err(Error::NotFound { .. }) => Ok(()),
        other => Err(format!("open after remove_unused: {:?}", other.map(|_| ()))),
    }
}

/// Holds the remove byte of `segment` (header byte 112) as a remover does, through a
/// description of its own; released when the file is dropped.
fn hold_remove_byte(segment: &Segment) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(std::path::Path::new("/dev/shm").join(&segment.0))
        .map_err(|e| format!("open the segment file: {e}"))?;
    // SAFETY: an all-zero `struct flock` is valid; the fields that matter are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 112;
    fl.l_len = 1;
    // SAFETY: `fl` is a valid `struct flock` that outlives the call; the fd is open.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) } != 0 {
        return Err(format!(
            "lock the remove byte: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(file)
}

/// An open that claims its slot while a remover decides waits for it: it fails with `NotFound`
/// when the remover unlinked the segment, succeeds when the remover left it, and fails with
/// `Unavailable` when the remover holds on past its bound (two seconds). Before, it opened the
/// segment the remover then unlinked, and went on locking in it, apart from every later opener.
fn an_open_during_a_removal_waits_for_its_verdict() -> TrialResult {
    let segment = Segment::new("removal");
    let opener = |name: String| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(ShmManager::open(&name).map(drop));
        });
        rx
    };
    for unlink in [true, false] {
        drop(ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?);
        let remover = hold_remove_byte(&segment)?;
        let done = opener(segment.0.clone());
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(early) = done.try_recv() {
            return Err(format!(
                "an open while the remover decided returned at once: {early:?}"
            ));
        }
        if unlink {
            std::fs::remove_file(std::path::Path::new("/dev/shm").join(&segment.0))
                .map_err(|e| format!("unlink: {e}"))?;
        }
        drop(remover);
        let got = done
            .recv_timeout(STEP)
            .map_err(|_| "the open did not return".to_owned())?;
        match (unlink, got) {
            (true, Err(Error::NotFound { .. })) | (false, Ok(())) => {}
            (_, other) => {
                return Err(format!(
                    "an open during a removal that {} the segment: {other:?}",
                    if unlink { "unlinked" } else { "kept" }
                ));
            }
        }
    }
    let _remover = hold_remove_byte(&segment)?;
    match opener(segment.0.clone()).recv_timeout(STEP) {
        Ok(Err(Error::Unavailable { .. })) => Ok(()),
        other => Err(format!("an open while a remover stalls: {other:?}")),
    }
}

fn main() -> ExitCode {
    let trials: [common::Trial; 11] = [
        (
            "remove_unused_keeps_a_segment_in_use",
            remove_unused_keeps_a_segment_in_use,
        ),
        (
            "an_open_during_a_removal_waits_for_its_verdict",
            an_open_during_a_removal_waits_for_its_verdict,
        ),
        (
            "clients_are_the_other_live_managers",
            clients_are_the_other_live_managers,
        ),
        (
            "a_dead_holder_keeps_its_pid_while_other_slots_are_free",
            a_dead_holder_keeps_its_pid_while_other_slots_are_free,
        ),
        (
            "a_hold_record_dates_only_its_hold",
            a_hold_record_dates_only_its_hold,
        ),
        (
            "hold_records_give_way_to_a_wait",
            hold_records_give_way_to_a_wait,
        ),
        (
            "a_sighting_dates_only_the_hold_it_saw",
            a_sighting_dates_only_the_hold_it_saw,
        ),
        (
            "a_hold_taken_after_waiting_is_dated_when_acquired",
            a_hold_taken_after_waiting_is_dated_when_acquired,
        ),
        (
            "waiters_leave_the_snapshot_when_their_wait_ends",
            waiters_leave_the_snapshot_when_their_wait_ends,
        ),
        (
            "more_waiting_threads_than_entries",
            more_waiting_threads_than_entries,
        ),
        (
            "a_zero_deadlock_timeout_turns_detection_off",
            a_zero_deadlock_timeout_turns_detection_off,
        ),
    ];
    common::main(&[], trials)
}
