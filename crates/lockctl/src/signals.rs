//! Signals while `lockctl run` takes and holds locks.
//!
//! SIGHUP, SIGINT, SIGQUIT and SIGTERM (the signals that stop a program when an operator, a
//! terminal or a supervisor asks) are blocked in every thread of lockctl and taken by one thread
//! with `sigwaitinfo(2)`, so none of them can end lockctl between taking a lock and releasing it.
//! They are blocked before the store is opened, so every thread a backend starts inherits the
//! mask; the command's process unblocks them before `exec` (a blocked mask is inherited across
//! `exec`, and std's `Command` does not reset it).
#![allow(unsafe_code)] // pthread_sigmask(3), sigwaitinfo(2) and the command's pre-exec hook.
//!
//! Invariants, relied on by the `unsafe` blocks here:
//!
//! 1. A `sigset_t` is filled by `sigemptyset` before any other use, and every signal added to
//!    it is a valid signal number (the constants in `STOPPING`).
//! 2. The pre-exec hook runs in the child between `fork` and `exec`, where only
//!    async-signal-safe calls are allowed: it makes three (`pthread_sigmask`, and `prctl` and
//!    `getppid` through rustix, which calls the kernel directly) and allocates nothing.

use std::io;
use std::mem::MaybeUninit;
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};

/// The signals `run` takes over, with their names.
const STOPPING: [(libc::c_int, &str); 4] = [
    (libc::SIGHUP, "SIGHUP"),
    (libc::SIGINT, "SIGINT"),
    (libc::SIGQUIT, "SIGQUIT"),
    (libc::SIGTERM, "SIGTERM"),
];

/// The stopping signals, blocked in the thread that called [`block`] and in every thread it
/// started after.
pub(crate) struct Blocked {
    set: libc::sigset_t,
}

impl std::fmt::Debug for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blocked(SIGHUP, SIGINT, SIGQUIT, SIGTERM)")
    }
}

/// One stopping signal that arrived.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrived {
    /// The signal number.
    pub(crate) number: i32,
    /// The kernel sent it (`SI_KERNEL`): the terminal's Ctrl-C, Ctrl-\ or hangup, which the
    /// terminal sends to its whole foreground process group, the command included.
    pub(crate) by_kernel: bool,
}

impl Arrived {
    /// `SIGTERM`.
    pub(crate) fn name(self) -> &'static str {
        STOPPING
            .iter()
            .find(|(n, _)| *n == self.number)
            .map_or("a signal", |(_, name)| name)
    }
}

/// `pthread_sigmask(3)`: blocks the stopping signals in the calling thread, and so in every
/// thread it starts from now on.
///
/// # Errors
///
/// The OS error, which `pthread_sigmask` returns only for an invalid argument.
pub(crate) fn block() -> io::Result<Blocked> {
    let set = stopping();
    mask(libc::SIG_BLOCK, &set)?;
    Ok(Blocked { set })
}

/// The set of the stopping signals.
fn stopping() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset writes a valid empty set to the memory it is given (invariant 1).
    let mut set = unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        set.assume_init()
    };
    for (number, _) in STOPPING {
        // SAFETY: `set` was initialised above and `number` is a valid signal (invariant 1).
        unsafe { libc::sigaddset(&mut set, number) };
    }
    set
}

/// `pthread_sigmask(3)`: blocks or unblocks `set` in the calling thread. Async-signal-safe.
fn mask(how: libc::c_int, set: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: `set` is an initialised set (invariant 1); the old mask is not asked for.
    let error = unsafe { libc::pthread_sigmask(how, set, std::ptr::null_mut()) };
    if error != 0 {
        return Err(io::Error::from_raw_os_error(error));
    }
    Ok(())
}

impl Blocked {
    /// `sigwaitinfo(2)`: waits for one of the stopping signals and takes it.
    pub(crate) fn wait(&self) -> Arrived {
        loop {
            // SAFETY: siginfo_t is plain integers, for which all zeroes is a valid value.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `self.set` is an initialised set (invariant 1) and `info` is writable.
            let number = unsafe { libc::sigwaitinfo(&self.set, &mut info) };
            if number > 0 {
                return Arrived {
                    number,
                    by_kernel: info.si_code == libc::SI_KERNEL,
                };
            }
            // EINTR (a signal outside the set, such as SIGCONT, ended the wait): wait again.
        }
    }
}

/// `kill(2)`: sends signal `number` to process `pid`. A process that has gone is no failure.
pub(crate) fn forward(pid: u32, number: i32) {
    let pid = i32::try_from(pid).ok().and_then(Pid::from_raw);
    if let (Some(pid), Some(signal)) = (pid, Signal::from_named_raw(number)) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Prepares the command's process before `exec`: the stopping signals unblocked (it inherited
/// lockctl's mask), and SIGKILL when lockctl dies (`prctl(PR_SET_PDEATHSIG)`); its start fails
/// when lockctl died before the hook ran.
///
/// The death signal fires when the *thread* that started the command ends: the caller starts
/// it from the main thread, which lives as long as lockctl.
pub(crate) fn prepare_child(command: &mut Command) {
    let parent = rustix::process::getpid();
    let set = stopping();
    // SAFETY: by invariant 2 the hook makes only async-signal-safe calls and does not allocate.
    unsafe {
        command.pre_exec(move || {
            mask(libc::SIG_UNBLOCK, &set)?;
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// `waitid(2)` with `WNOWAIT`: waits until process `pid` has ended and leaves it unreaped, so
/// its pid cannot be reused (and a signal forwarded late cannot reach another process) until
/// the caller reaps it.
///
/// # Errors
///
/// The OS error (`ECHILD` when `pid` is not a child of lockctl).
pub(crate) fn wait_ended(pid: u32) -> io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ECHILD))?;
    loop {
        match rustix::process::waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        ) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
}
