//! Owners across real processes: racing unlocks, owner tokens that must never come back, managers
//! inherited across `fork(2)`, and a full client table.
//!
//! The children are this test binary re-executed (`common`), each in a role: a plain
//! single-threaded process, so it may `fork`. Every wait is bounded, and every trial removes its
//! segment.
#![allow(unsafe_code)] // reason: the fork trial calls fork(2), waitpid(2) and _exit(2) through libc

mod common;

use std::io::BufRead;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lock_shm::{Acquired, Error, Inspect, LockId, Locker, Manager, ShmManager};

use common::{
    CAPACITY, SEGMENT_ENV, STEP, Segment, TrialResult, client, e2s, env, expect, send, spawn,
};

/// How many managers an `occupy` child opens.
const COUNT_ENV: &str = "LOCKYARD_OWNERS_COUNT";

/// Client slots in a segment (docs/segment-format.md).
const CLIENT_SLOTS: u32 = 1024;
/// The largest slot generation: tokens have 31 bits and the slot takes 10.
const GEN_MAX: u32 = (1 << 21) - 1;

impl Segment {
    /// Writes `bytes` at `off` of the segment file, as a damaged or aged segment would hold them.
    fn write_at(&self, off: u64, bytes: &[u8]) -> TrialResult {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(std::path::Path::new("/dev/shm").join(&self.0))
            .map_err(|e| format!("open segment file: {e}"))?;
        f.write_all_at(bytes, off)
            .map_err(|e| format!("write segment file: {e}"))
    }
}

/// Two threads of one owner unlock the lock it holds once, at the same moment, while another
/// process waits for it: exactly one unlock succeeds and the other fails with `NotHeld`, and the
/// waiter's hold, taken right after the first unlock, is never erased by the second.
fn concurrent_unlocks_of_one_hold_exactly_one_succeeds() -> TrialResult {
    let segment = Segment::new("unlockrace");
    let manager = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    let mut waiter = spawn("contend", &segment, &[])?;
    expect(&mut waiter, "ready")?;
    let first = manager.retrieve(LockId(0)).map_err(e2s)?;
    let second = manager.retrieve(LockId(0)).map_err(e2s)?;

    // The second thread unlocks when `go` reaches the round number; `ready` and `result` are its
    // half of the handshake (result: 1 = Ok, 2 = NotHeld, 3 = other error).
    let go = Arc::new(AtomicU32::new(0));
    let ready = Arc::new(AtomicU32::new(0));
    let result = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let helper = {
        let (go, ready, result, stop) = (go.clone(), ready.clone(), result.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut round = 0;
            loop {
                round += 1;
                ready.store(round, Ordering::SeqCst);
                while go.load(Ordering::SeqCst) != round {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    std::hint::spin_loop();
                }
                let r = match second.unlock() {
                    Ok(()) => 1,
                    Err(Error::NotHeld(_)) => 2,
                    Err(_) => 3,
                };
                result.store(r, Ordering::SeqCst);
            }
        })
    };
    let outcome = (|| {
        let started = Instant::now();
        let mut rounds = 0;
        while rounds < 3000 && started.elapsed() < Duration::from_secs(5) {
            rounds += 1;
            if first.try_lock_for(STEP).map_err(e2s)? != Acquired::Clean {
                return Err(format!("round {rounds}: lock 0's holder died"));
            }
            // Give the waiter time to go to sleep, so the unlocks find the waiters bit set.
            std::thread::sleep(Duration::from_micros(150));
            let deadline = Instant::now() + STEP;
            while ready.load(Ordering::SeqCst) != rounds {
                if Instant::now() > deadline {
                    return Err("helper thread stopped answering".to_string());
                }
                std::hint::spin_loop();
            }
            result.store(0, Ordering::SeqCst);
            go.store(rounds, Ordering::SeqCst);
            let mine = first.unlock();
            let theirs = loop {
                match result.load(Ordering::SeqCst) {
                    0 if Instant::now() > deadline => {
                        return Err("helper thread stopped answering".to_string());
                    }
                    0 => std::hint::spin_loop(),
                    r => break r,
                }
            };
            match (&mine, theirs) {
                (Ok(()), 2) | (Err(Error::NotHeld(_)), 1) => {}
                (Ok(()), 1) => {
                    return Err(format!(
                        "round {rounds}: both unlocks of one hold succeeded"
                    ));
                }
                _ => {
                    return Err(format!(
                        "round {rounds}: unlocks gave {mine:?} and code {theirs}"
                    ));
                }
            }
        }
        eprintln!("{rounds} rounds of racing unlocks");
        Ok(())
    })();
    stop.store(true, Ordering::SeqCst);
    let _ = helper.join();
    waiter.close_stdin();
    let done = expect(&mut waiter, "done");
    outcome?;
    done?;
    waiter.finish(STEP).map_err(|e| e.to_string())
}

/// Role: waits for lock 0 over and over, checking each time that its hold survives until its own
/// unlock; prints `done N` at stdin EOF.
fn contend() -> TrialResult {
    let manager = ShmManager::open(&env(SEGMENT_ENV)?).map_err(e2s)?;
    let lock = manager.retrieve(LockId(0)).map_err(e2s)?;
    let eof = stdin_eof();
    println!("ready");
    let mut rounds = 0u64;
    while !eof.load(Ordering::SeqCst) {
        match lock.try_lock_for(Duration::from_millis(50)) {
            Ok(_) => {}
            Err(Error::Timeout) => continue,
            Err(e) => return Err(format!("lock: {e}")),
        }
        rounds += 1;
        let pid = lock.holder().map_err(e2s)?.and_then(|h| h.pid);
        if pid != Some(std::process::id()) {
            return Err(format!(
                "round {rounds}: holder is {pid:?} while this process holds it"
            ));
        }
        lock.unlock()
            .map_err(|e| format!("round {rounds}: this process's hold was erased: {e}"))?;
    }
    println!("done {rounds}");
    Ok(())
}

/// A slot whose generation reaches the last value is never claimed again, so the token of a
/// dead owner of that slot never comes back: the next acquirer of its lock gets `OwnerDied`,
/// and no later owner ever waits on itself.
fn a_dead_owners_token_never_comes_back() -> TrialResult {
    let segment = Segment::new("genwrap");
    let manager = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    // First owner of slot 1, generation 1: takes lock 0 and dies holding it.
    let mut first = client(&segment)?;
    send(&mut first, "slot")?;
    let slot = expect(&mut first, "slot")?;
    if slot != "1" {
        return Err(format!("first client got slot {slot}, expected 1"));
    }
    send(&mut first, "wait 0 5000")?;
    expect(&mut first, "locked clean")?;
    first.sigkill().map_err(|e| e.to_string())?;
    // 2^21 - 3 claims of slot 1 later, the last of them closed normally (written directly rather
    // than performed: generation and closed word), the next claim takes the last generation.
    let slot1 = 256 + 128;
    segment.write_at(slot1, &(GEN_MAX - 1).to_le_bytes())?;
    segment.write_at(slot1 + 20, &(GEN_MAX - 1).to_le_bytes())?;
    let mut last = client(&segment)?;
    send(&mut last, "slot")?;
    let slot = expect(&mut last, "slot")?;
    if slot != "1" {
        return Err(format!("the last generation of slot 1 went to slot {slot}"));
    }
    last.finish(STEP).map_err(|e| e.to_string())?;
    // Slot 1 is used up: a new owner must not get generation 1 again, the dead owner's.
    let mut next = client(&segment)?;
    send(&mut next, "slot")?;
    let slot = expect(&mut next, "slot")?;
    send(&mut next, "wait 0 5000")?;
    let got = expect(&mut next, "locked");
    if got.as_deref() != Ok("owner-died") {
        return Err(format!(
            "the dead owner's lock was not taken over as OwnerDied by the next owner (slot {slot}): {got:?}"
        ));
    }
    let held = manager.held().map_err(e2s)?;
    let holder = held
        .first()
        .and_then(|h| h.holder.clone())
        .ok_or("lock 0 is not listed as held")?;
    if holder.pid != Some(next.pid()) || holder.dead {
        return Err(format!(
            "lock 0's holder is {holder:?}, expected live pid {}",
            next.pid()
        ));
    }
    send(&mut next, "unlock 0")?;
    expect(&mut next, "unlocked")?;
    next.finish(STEP).map_err(|e| e.to_string())?;
    Ok(())
}

/// Every operation on a manager (and its handles) inherited across `fork(2)` fails with a typed
/// error in the child, and changes nothing the parent holds; a manager the child opens itself
/// works.
fn an_inherited_manager_is_refused_in_a_forked_child() -> TrialResult {
    let segment = Segment::new("fork");
    let _creator = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    let mut parent = spawn("fork", &segment, &[])?;
    expect(&mut parent, "ok")?;
    parent.finish(STEP).map_err(|e| e.to_string())
}

/// Role: holds lock 0 and an allocation, forks, checks the child's view, then checks that its
/// own state is untouched; prints `ok`.
fn fork_role() -> TrialResult {
    let name = env(SEGMENT_ENV)?;
    let manager = ShmManager::open(&name).map_err(e2s)?;
    let lock = manager.retrieve(LockId(0)).map_err(e2s)?;
    if lock.lock().map_err(e2s)? != Acquired::Clean {
        return Err("lock 0 was left by a dead holder".into());
    }
    let allocated = manager.allocate().map_err(e2s)?;
    // SAFETY: this role process is single-threaded (no test harness, no reader threads), so the
    // child may run ordinary code; it leaves through _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let code = in_forked_child(&name, &manager, &lock, &allocated);
        // SAFETY: _exit(2) ends the child without running the parent's destructors or flushing
        // its inherited stdio buffers twice.
        unsafe { libc::_exit(code) };
    }
    let deadline = Instant::now() + STEP / 2;
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer; `pid` is our child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if r < 0 || Instant::now() > deadline {
            // SAFETY: `pid` is our own unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err("forked child did not finish in time".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let code = libc::WEXITSTATUS(status);
        let what = FORK_CHECKS.get(code as usize).copied().unwrap_or("?");
        return Err(format!("forked child: check {code} ({what}) failed"));
    }
    // The parent's hold and allocation are intact.
    lock.unlock()
        .map_err(|e| format!("the parent's hold was released by its child: {e}"))?;
    allocated
        .free()
        .map_err(|e| format!("the parent's allocation was freed by its child: {e}"))?;
    if manager.available().map_err(e2s)? != Some(CAPACITY) {
        return Err("allocations changed".into());
    }
    println!("ok");
    Ok(())
}

/// What the forked child checks, by exit code.
const FORK_CHECKS: [&str; 17] = [
    "all passed",
    "unlock",
    "try_lock",
    "try_lock_for",
    "lock",
    "holder",
    "guard",
    "free",
    "allocate",
    "retrieve",
    "allocate_and_retrieve",
    "free_all",
    "available",
    "held",
    "open a new manager",
    "the new manager's view",
    "error message",
];

fn in_forked_child(
    name: &str,
    manager: &ShmManager,
    lock: &lock_shm::ShmLocker,
    allocated: &lock_shm::ShmLocker,
) -> i32 {
    // SAFETY: alarm(2) only arms a timer; its default action ends this child if a check hangs.
    unsafe { libc::alarm(10) };
    fn refused<T>(r: lock_shm::Result<T>) -> bool {
        matches!(r, Err(Error::InvalidArgument { .. }))
    }
    // Unlock first: on a shared identity it would release the parent's hold. Each check runs
    // only if the ones before it passed (on a shared identity `lock` would wait on itself).
    let checks: [&dyn Fn() -> bool; 13] = [
        &|| refused(lock.unlock()),
        &|| refused(lock.try_lock()),
        &|| refused(lock.try_lock_for(Duration::from_millis(1))),
        &|| refused(lock.lock()),
        &|| refused(lock.holder()),
        &|| refused(lock.guard()),
        &|| refused(allocated.free()),
        &|| refused(manager.allocate()),
        &|| refused(manager.retrieve(LockId(1))),
        &|| refused(manager.allocate_and_retrieve(LockId(5))),
        &|| refused(manager.free_all()),
        &|| refused(manager.available()),
        &|| refused(manager.held()),
    ];
    if let Some(i) = checks.iter().position(|check| !check()) {
        return i as i32 + 1;
    }
    let Ok(own) = ShmManager::open(name) else {
        return 14;
    };
    let view = (|| {
        let l0 = own.retrieve(LockId(0))?;
        let l2 = own.retrieve(LockId(2))?;
        let busy = l0.try_lock()?.is_none();
        let clean = l2.try_lock()? == Some(Acquired::Clean);
        l2.unlock()?;
        Ok::<_, Error>(busy && clean && own.client_slot() != manager.client_slot())
    })();
    if view.ok() != Some(true) {
        return 15;
    }
    match lock.unlock() {
        Err(e) if e.to_string().contains("open") => 0,
        _ => 16,
    }
}

/// With all 1024 client slots held by open managers, one more open fails with a typed error
/// that names the table's size; closing one manager makes room again.
fn a_full_client_table_is_a_typed_error() -> TrialResult {
    let segment = Segment::new("fulltable");
    let creator = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    // 1 slot here, 1023 in two processes.
    let mut a = spawn("occupy", &segment, &[(COUNT_ENV, "512")])?;
    let mut b = spawn(
        "occupy",
        &segment,
        &[(COUNT_ENV, &(CLIENT_SLOTS - 1 - 512).to_string())],
    )?;
    expect(&mut a, "ready")?;
    expect(&mut b, "ready")?;
    match ShmManager::open(&segment.0) {
        Err(e @ Error::Unavailable { .. }) => {
            let text = e.to_string();
            if !text.contains("1024") {
                return Err(format!("the error does not name the table's size: {text}"));
            }
        }
        other => {
            return Err(format!(
                "the 1025th manager got {other:?}, expected Unavailable"
            ));
        }
    }
    drop(creator);
    let again = ShmManager::open(&segment.0).map_err(e2s)?;
    if again.client_slot() != 0 {
        return Err(format!("reopened in slot {}", again.client_slot()));
    }
    a.finish(STEP).map_err(|e| e.to_string())?;
    b.finish(STEP).map_err(|e| e.to_string())
}

/// Role: opens the segment `COUNT` times, prints `ready`, keeps them open until stdin EOF.
fn occupy() -> TrialResult {
    let name = env(SEGMENT_ENV)?;
    let count: u32 = env(COUNT_ENV)?.parse().map_err(|_| "bad count")?;
    let managers = (0..count)
        .map(|_| ShmManager::open(&name))
        .collect::<Result<Vec<_>, _>>()
        .map_err(e2s)?;
    println!("ready");
    let _ = std::io::stdin().lock().lines().count();
    drop(managers);
    Ok(())
}

/// A flag set once stdin reaches EOF.
fn stdin_eof() -> Arc<AtomicBool> {
    let eof = Arc::new(AtomicBool::new(false));
    let flag = eof.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().lock().lines().count();
        flag.store(true, Ordering::SeqCst);
    });
    eof
}

fn main() -> ExitCode {
    let roles: [common::Role; 3] = [
        ("contend", contend),
        ("fork", fork_role),
        ("occupy", occupy),
    ];
    let trials: [common::Trial; 4] = [
        (
            "concurrent_unlocks_of_one_hold_exactly_one_succeeds",
            concurrent_unlocks_of_one_hold_exactly_one_succeeds,
        ),
        (
            "a_dead_owners_token_never_comes_back",
            a_dead_owners_token_never_comes_back,
        ),
        (
            "an_inherited_manager_is_refused_in_a_forked_child",
            an_inherited_manager_is_refused_in_a_forked_child,
        ),
        (
            "a_full_client_table_is_a_typed_error",
            a_full_client_table_is_a_typed_error,
        ),
    ];
    common::main(&roles, trials)
}
