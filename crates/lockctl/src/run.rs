//! `lockctl run`: take locks in order, run a command under them, release, pass its status on.
//!
//! From before the store is opened to the end, one thread takes the stopping signals (see
//! `signals`). While the locks are being taken, a signal makes lockctl give up: that thread
//! releases what is held and exits 128+N. While the command runs, a signal is passed on to it
//! (unless the terminal sent it to the whole process group, the command included) and lockctl
//! goes on waiting for the command. Once the command has ended, signals are ignored: lockctl
//! only releases the locks and exits.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lockyard::{Acquired, DynLocker, DynManager, Error, LockId, Locker};

use crate::escape::count;
use crate::exit::{Failed, Failure, say};
use crate::signals::{self, Arrived, Blocked};

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Opening the store and taking the locks; the command has not started.
    Taking,
    /// The command runs, with this pid (not reaped before the phase moves on, so the pid cannot
    /// be another process's while a signal may be forwarded to it).
    Running(u32),
    /// The command ended, or never started: nothing left to protect or to forward to.
    Ended,
}

struct State {
    phase: Phase,
    /// Every lock to take, in order (retrieved, so checked, before any is taken).
    locks: Vec<Arc<DynLocker>>,
    /// `locks[..held]` are held.
    held: usize,
    /// `locks[held]` is in a `lock` call, or has just returned from one.
    waiting: bool,
}

/// A run's state, shared by the thread that takes the locks and runs the command and the thread
/// that takes the signals.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Set as soon as a `lock` call returns, before its thread takes `state`: a thread that
    /// holds `state` and finds it set knows the call may have taken the lock.
    returned: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Refuses an id given twice: the run would wait for itself forever (locks are not re-entrant).
pub(crate) fn check_ids(ids: &[u32]) -> Result<(), Failed> {
    let mut seen = BTreeSet::new();
    match ids.iter().find(|id| !seen.insert(**id)) {
        Some(id) => Err(Failed::new(
            Failure::Usage,
            format!("lock id {id} is given twice (a run would wait for itself forever)"),
        )),
        None => Ok(()),
    }
}

/// Blocks the stopping signals and starts the thread that takes them. Call it before the store
/// is opened, so every thread a backend starts inherits the blocked mask.
pub(crate) fn watch_signals() -> Result<Arc<Shared>, Failed> {
    let blocked = signals::block()
        .map_err(|e| Failed::new(Failure::Usage, format!("blocking signals: {e}")))?;
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            phase: Phase::Taking,
            locks: Vec::new(),
            held: 0,
            waiting: false,
        }),
        returned: AtomicBool::new(false),
    });
    let watched = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || watch(&watched, &blocked))
        .map_err(|e| Failed::new(Failure::Usage, format!("starting the signal thread: {e}")))?;
    Ok(shared)
}

/// The signal thread: gives up while taking, forwards while the command runs, ignores after.
fn watch(shared: &Shared, blocked: &Blocked) {
    loop {
        let arrived = blocked.wait();
        let state = shared.state();
        match state.phase {
            Phase::Taking => give_up(shared, &state, arrived),
            // The terminal sent it to the whole foreground process group: the command has it.
            Phase::Running(_) if arrived.by_kernel => {}
            Phase::Running(pid) => signals::forward(pid, arrived.number),
            Phase::Ended => {}
        }
    }
}

/// Releases what is held and exits 128+N. `state` stays locked until the process has exited, so
/// the taking thread can neither record another lock nor start the command.
fn give_up(shared: &Shared, state: &State, arrived: Arrived) -> ! {
    let mut released = state.held;
    if state.waiting
        && shared.returned.load(Ordering::SeqCst)
        && let Some(lock) = state.locks.get(state.held)
    {
        // The call may have taken it just now; if it did not, this is NotHeld and changes
        // nothing.
        if lock.unlock().is_ok() {
            released += 1;
        }
    }
    release(&state.locks[..state.held], "while giving up");
    let waiting = match state.locks.get(state.held) {
        Some(lock) if state.waiting => format!(" while waiting for lock {}", lock.id()),
        _ => String::new(),
    };
    say(&format!(
        "{}{waiting}: released the {} held and gave up",
        arrived.name(),
        count(released, "lock")
    ));
    std::process::exit(128 + arrived.number)
}

/// Takes every lock, in order, within `timeout` if one is given.
fn take_all(shared: &Shared, timeout: Option<Duration>) -> Result<(), Failed> {
    let deadline = timeout.map(|t| Instant::now().checked_add(t));
    let total = shared.state().locks.len();
    for i in 0..total {
        let lock = {
            let mut state = shared.state();
            state.waiting = true;
            shared.returned.store(false, Ordering::SeqCst);
            Arc::clone(&state.locks[i])
        };
        let acquired = match deadline {
            None | Some(None) => lock.lock(),
            Some(Some(deadline)) => {
                lock.try_lock_for(deadline.saturating_duration_since(Instant::now()))
            }
        };
        shared.returned.store(true, Ordering::SeqCst);
        let mut state = shared.state();
        state.waiting = false;
        let id = lock.id();
        match acquired {
            Ok(acquired) => {
                state.held = i + 1;
                if acquired == Acquired::OwnerDied {
                    say(&format!(
                        "lock {id}: its previous holder died holding it; \
                         what it protected may be half-written"
                    ));
                }
            }
            Err(error) => {
                let held = state.held;
                release(&state.locks[..held], "after failing to take them all");
                state.held = 0;
                state.phase = Phase::Ended;
                let message = match &error {
                    Error::Timeout => {
                        format!("timed out waiting for lock {id} (held {held} of {total} locks)")
                    }
                    Error::Deadlock { cycle } => {
                        format!("deadlock waiting for lock {id}, gave up: {cycle}")
                    }
                    other => format!("lock {id}: {other}"),
                };
                return Err(Failed::new(Failure::of(&error), message));
            }
        }
    }
    Ok(())
}

/// Releases `locks` in reverse order, each failure reported on stderr (`when` says when the
/// release happened), and gives the failure that decides the exit code: [`Failure::Lost`] when
/// a lock was lost (the release found it no longer held), else the first other failure.
fn release(locks: &[Arc<DynLocker>], when: &str) -> Option<Failure> {
    let mut worst = None;
    for lock in locks.iter().rev() {
        let id = lock.id();
        match lock.unlock() {
            Ok(()) => {}
            Err(error @ (Error::Lost | Error::NotHeld(_))) => {
                say(&format!(
                    "lock {id} was lost while lockctl held it, found {when}: {error}"
                ));
                worst = Some(Failure::Lost);
            }
            Err(error) => {
                say(&format!("releasing lock {id} {when}: {error}"));
                worst = worst.or(Some(Failure::of(&error)));
            }
        }
    }
    worst
}

/// The exit code for a command's status, as a shell gives it: its own code, or 128 + the signal
/// that killed it.
fn code_of(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

/// Runs `command` under the locks and returns the exit code to leave with: the command's own,
/// or 128 + the signal that killed it (as a shell reports it); 8 (or another failure's code)
/// when a lock could not be released cleanly and the command itself succeeded.
pub(crate) fn run(
    shared: &Shared,
    manager: &DynManager,
    ids: &[u32],
    timeout: Option<Duration>,
    command: &[OsString],
) -> Result<ExitCode, Failed> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| Failed::new(Failure::Usage, "run: no command after --"))?;
    // Every id is checked against the capacity before any lock is taken.
    let locks = ids
        .iter()
        .map(|&id| manager.retrieve(LockId(id)).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    shared.state().locks = locks;
    take_all(shared, timeout)?;
    let child = {
        // Started with `state` locked, so a signal that arrives meanwhile finds the phase it
        // should act on: the give-up before, the forward after.
        let mut state = shared.state();
        let mut child = Command::new(program);
        child.args(args);
        signals::prepare_child(&mut child);
        let child = child.spawn();
        state.phase = match &child {
            Ok(child) => Phase::Running(child.id()),
            Err(_) => Phase::Ended,
        };
        child
    };
    let code = match child {
        Ok(mut child) => {
            // An error here (there is none for a child of ours) leaves the reaping wait below.
            let _ = signals::wait_ended(child.id());
            shared.state().phase = Phase::Ended;
            match child.wait() {
                Ok(status) => code_of(status),
                Err(e) => {
                    say(&format!("waiting for {}: {e}", program.to_string_lossy()));
                    1
                }
            }
        }
        Err(e) => {
            say(&format!("cannot run {}: {e}", program.to_string_lossy()));
            if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            }
        }
    };
    let failed = {
        let mut state = shared.state();
        let held = state.held;
        state.held = 0;
        release(&state.locks[..held], "when the command ended")
    };
    // The command's own failure wins: it is the more specific, and the stderr line tells of the
    // lost lock either way.
    let code = match failed {
        Some(failure) if code == 0 => i32::from(failure.code()),
        _ => code,
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
