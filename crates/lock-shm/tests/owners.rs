//! Owners across real processes: racing unlocks of one hold.
//!
//! The test binary re-executes itself: with `LOCKYARD_OWNERS_ROLE` set it plays a role,
//! otherwise it runs the trials. Children run under
//! lock-conformance's `ChildProcess`, which SIGKILLs and reaps them on drop; every wait is
//! bounded, and every trial removes its segment.

use std::io::BufRead;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lock_conformance::child::ChildProcess;
use lock_shm::{Acquired, Error, Inspect, LockId, Locker, Manager, ShmManager};

const ROLE_ENV: &str = "LOCKYARD_OWNERS_ROLE";
const SEGMENT_ENV: &str = "LOCKYARD_OWNERS_SEGMENT";
const COUNT_ENV: &str = "LOCKYARD_OWNERS_COUNT";

/// Capacity of every trial's table.
const CAPACITY: u32 = 8;
/// How long any single step may take before the trial fails.
const STEP: Duration = Duration::from_secs(10);

type TrialResult = Result<(), String>;

/// A segment name unique to this trial and process, removed on drop.
struct Segment(String);

impl Segment {
    fn new(trial: &str) -> Segment {
        let name = format!("lockyard-test-owners-{trial}-{}", std::process::id());
        let _ = ShmManager::remove(&name);
        Segment(name)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let _ = ShmManager::remove(&self.0);
    }
}

fn spawn(role: &str, segment: &Segment, count: u32) -> Result<ChildProcess, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut command = Command::new(exe);
    command
        .env(ROLE_ENV, role)
        .env(SEGMENT_ENV, &segment.0)
        .env(COUNT_ENV, count.to_string());
    ChildProcess::start(command, role, None).map_err(|e| e.to_string())
}

fn expect(child: &mut ChildProcess, prefix: &str) -> Result<String, String> {
    child.expect(prefix, STEP).map_err(|e| e.to_string())
}

fn e2s(e: Error) -> String {
    e.to_string()
}

/// Two threads of one owner unlock the lock it holds once, at the same moment, while another
/// process waits for it: exactly one unlock succeeds and the other fails with `NotHeld`, and the
/// waiter's hold, taken right after the first unlock, is never erased by the second.
fn concurrent_unlocks_of_one_hold_exactly_one_succeeds() -> TrialResult {
    let segment = Segment::new("unlockrace");
    let manager = ShmManager::create(&segment.0, CAPACITY).map_err(e2s)?;
    let mut waiter = spawn("contend", &segment, 0)?;
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
    let manager = ShmManager::open(&env(SEGMENT_ENV)?, CAPACITY).map_err(e2s)?;
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

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} not set"))
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
    if let Ok(role) = std::env::var(ROLE_ENV) {
        let result = match role.as_str() {
            "contend" => contend(),
            other => Err(format!("unknown role {other}")),
        };
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("error {e}");
                eprintln!("{role} {}: {e}", std::process::id());
                ExitCode::FAILURE
            }
        };
    }
    let args = libtest_mimic::Arguments::from_args();
    let trial = |name: &'static str, f: fn() -> TrialResult| {
        libtest_mimic::Trial::test(name, move || f().map_err(Into::into))
    };
    let trials = vec![trial(
        "concurrent_unlocks_of_one_hold_exactly_one_succeeds",
        concurrent_unlocks_of_one_hold_exactly_one_succeeds,
    )];
    libtest_mimic::run(&args, trials).exit_code()
}
