//! Segments and child processes for lock-shm's test binaries.
//!
//! A test binary re-executes itself: with [`ROLE_ENV`] set it plays the named role on the segment
//! named by [`SEGMENT_ENV`] (the [`client_role`] that obeys commands on stdin, or a role of its
//! own), otherwise it runs the trials ([`main`]). Children run under lock-conformance's
//! `ChildProcess`, which SIGKILLs and reaps them on drop; every wait is bounded, and every trial
//! removes its segment.
#![allow(dead_code)] // reason: each test binary uses a different part of this module
#![allow(unsafe_code)] // reason: the `keep` command forks a child that sleeps, with libc::fork

use std::io::BufRead;
use std::process::{Command, ExitCode};
use std::time::Duration;

use lock_conformance::child::ChildProcess;
use lock_shm::{Acquired, Error, LockId, Locker, Manager, ShmManager};

/// Set in a child process; its value is the role's name.
const ROLE_ENV: &str = "LOCKYARD_SHM_TEST_ROLE";
/// The name of the segment a child opens.
pub(crate) const SEGMENT_ENV: &str = "LOCKYARD_SHM_TEST_SEGMENT";
/// The capacity of every trial's segment.
pub(crate) const CAPACITY: u32 = 8;
/// How long any single step may take before the trial fails.
pub(crate) const STEP: Duration = Duration::from_secs(10);

pub(crate) type TrialResult = Result<(), String>;
/// A named trial.
pub(crate) type Trial = (&'static str, fn() -> TrialResult);
/// A named role a child process can play, besides `client`.
pub(crate) type Role = (&'static str, fn() -> TrialResult);

pub(crate) fn e2s(e: Error) -> String {
    e.to_string()
}

/// A segment name unique to this test binary, trial and process, removed on drop.
pub(crate) struct Segment(pub(crate) String);

impl Segment {
    pub(crate) fn new(trial: &str) -> Segment {
        // The test binary's name (`observe`, `owners`, ...): binaries run at the same time.
        let binary = env!("CARGO_CRATE_NAME");
        let name = format!("lockyard-test-{binary}-{trial}-{}", std::process::id());
        let _ = ShmManager::remove(&name);
        Segment(name)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let _ = ShmManager::remove(&self.0);
    }
}

/// Starts this test binary again as `role` on `segment`, with the environment variables `vars`.
pub(crate) fn spawn(
    role: &str,
    segment: &Segment,
    vars: &[(&str, &str)],
) -> Result<ChildProcess, String> {
    let mut command = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    command
        .env(ROLE_ENV, role)
        .env(SEGMENT_ENV, &segment.0)
        .envs(vars.iter().copied());
    ChildProcess::start(command, role, None).map_err(|e| e.to_string())
}

/// Starts a client on `segment` in a new pid namespace (and a user namespace, so that no
/// privilege is needed), through `unshare(1)`, and waits until it has opened the segment.
/// Killing the returned process (`unshare`) kills the client too (`--kill-child`).
pub(crate) fn client_in_pid_namespace(segment: &Segment) -> Result<ChildProcess, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut command = lock_conformance::child::in_new_pid_namespace(exe);
    command.env(ROLE_ENV, "client").env(SEGMENT_ENV, &segment.0);
    let mut child = ChildProcess::start(command, "client in a pid namespace", None)
        .map_err(|e| format!("unshare(1) from util-linux: {e}"))?;
    expect(&mut child, "slot")?;
    Ok(child)
}

/// Starts a client on `segment` and waits until it has opened it (it says `slot N`).
pub(crate) fn client(segment: &Segment) -> Result<ChildProcess, String> {
    let mut child = spawn("client", segment, &[])?;
    expect(&mut child, "slot")?;
    Ok(child)
}

/// The rest of the client's next line, which must start with `prefix` and come within STEP.
pub(crate) fn expect(child: &mut ChildProcess, prefix: &str) -> Result<String, String> {
    child.expect(prefix, STEP).map_err(|e| e.to_string())
}

pub(crate) fn send(child: &mut ChildProcess, line: &str) -> TrialResult {
    child.send(line).map_err(|e| e.to_string())
}

/// The environment variable `name`, in a child process.
pub(crate) fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} not set"))
}

/// Role: opens the segment, prints `slot N`, then obeys commands until stdin EOF: `slot`
/// (prints `slot N` again), `lock ID` (`locked clean|owner-died`), `unlock ID` (`unlocked`),
/// `wait ID MS` (try_lock_for; `locked ...`, `timeout` or `deadlock N`), `deadlock MS` (sets
/// the timeout; prints `deadlock-timeout MS|none`), `keep MS` (forks a child that only sleeps
/// MS ms, keeping every descriptor of this process open meanwhile; prints `kept PID`).
fn client_role() -> TrialResult {
    let manager = ShmManager::open(&env(SEGMENT_ENV)?).map_err(e2s)?;
    println!("slot {}", manager.client_slot());
    let said = |acquired: Acquired| {
        format!(
            "locked {}",
            if acquired.owner_died() {
                "owner-died"
            } else {
                "clean"
            }
        )
    };
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| -> Result<u64, String> {
            words
                .get(i)
                .ok_or("missing argument")?
                .parse()
                .map_err(|e| format!("{e}"))
        };
        let lock = |id: u64| manager.retrieve(LockId(u32::try_from(id).unwrap_or(u32::MAX)));
        let reply = match words.first().copied().unwrap_or("") {
            "slot" => format!("slot {}", manager.client_slot()),
            "lock" => said(lock(number(1)?).and_then(|l| l.lock()).map_err(e2s)?),
            "unlock" => {
                lock(number(1)?).and_then(|l| l.unlock()).map_err(e2s)?;
                "unlocked".to_owned()
            }
            "wait" => {
                let ms = number(2)?;
                match lock(number(1)?).and_then(|l| l.try_lock_for(Duration::from_millis(ms))) {
                    Ok(acquired) => said(acquired),
                    Err(Error::Timeout) => "timeout".to_owned(),
                    Err(Error::Deadlock { cycle }) => format!("deadlock {}", cycle.0.len()),
                    Err(e) => return Err(e2s(e)),
                }
            }
            "deadlock" => {
                manager
                    .set_deadlock_timeout(Duration::from_millis(number(1)?))
                    .map_err(e2s)?;
                match manager.deadlock_timeout() {
                    Some(t) => format!("deadlock-timeout {}", t.as_millis()),
                    None => "deadlock-timeout none".to_owned(),
                }
            }
            "keep" => format!("kept {}", keep(Duration::from_millis(number(1)?))?),
            other => return Err(format!("unknown command {other:?}")),
        };
        println!("{reply}");
    }
    Ok(())
}

/// Forks a child that sleeps for `time` and exits: it inherits, and so keeps open, every open
/// file description of this process, the manager's client slot lock among them.
fn keep(time: Duration) -> Result<u32, String> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(time.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(time.subsec_millis() as u16) * 1_000_000,
    };
    // SAFETY: the child only calls async-signal-safe functions (nanosleep, _exit), so forking a
    // threaded process is sound.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => {
            // SAFETY: as above.
            unsafe {
                libc::nanosleep(&ts, std::ptr::null_mut());
                libc::_exit(0)
            }
        }
        pid => u32::try_from(pid).map_err(|e| e.to_string()),
    }
}

/// The test binary's `main`: in a child process the role it was started as (`client` or one of
/// `roles`), otherwise `trials` under libtest-mimic.
pub(crate) fn main(roles: &[Role], trials: impl IntoIterator<Item = Trial>) -> ExitCode {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        let played = match roles.iter().find(|(name, _)| *name == role) {
            Some((_, play)) => play(),
            None if role == "client" => client_role(),
            None => Err(format!("unknown role {role}")),
        };
        return match played {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("error {e}");
                eprintln!("{role} {}: {e}", std::process::id());
                ExitCode::FAILURE
            }
        };
    }
    let args = libtest_mimic::Arguments::from_args();
    let trials = trials
        .into_iter()
        .map(|(name, f)| libtest_mimic::Trial::test(name, move || f().map_err(Into::into)))
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}
