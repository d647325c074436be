//! Waking a thread blocked in `flock(2)` at a set time: one timer thread per process, and
//! `SIGURG`.
#![allow(unsafe_code)] // installing a signal handler and signalling a thread go through libc.
//!
//! `flock(2)` has no timed form, and a blocked call returns early only when a signal
//! interrupts it. A waiter that must wake at its deadline or at its next deadlock check
//! *arms* a timer here before it blocks: a few process-local stores under a mutex, no system
//! call. The timer thread sleeps until the earliest armed time; when it comes, it sends `SIGURG`
//! to the waiting thread (`pthread_kill(3)`), whose blocking `flock` returns `EINTR`. The waiter
//! *disarms* when its call returns, however it returned.
//!
//! The timer thread is told about a new timer (a futex wake) only when it sleeps without a
//! deadline or past the new one. After a timer fires or is disarmed, the thread lingers for
//! [`LINGER`] before sleeping without a deadline, so a stream of short waits (a contended lock)
//! costs no system call for the timers at all, and an idle process costs no wake-ups.
//!
//! Why `SIGURG` (the signal Go's runtime preempts goroutines with, for the same reasons): its
//! default action is to ignore it, so a stray one never kills the process; programs rarely use
//! it; and a handler can be installed without `SA_RESTART`, so a blocking `flock` is interrupted
//! rather than restarted. The handler does nothing. It is installed the first time a wait needs
//! a timer, and only if `SIGURG`'s disposition is the default or ignore: a program with its own
//! `SIGURG` handler keeps it, and lock-file then waits by polling (`flock(LOCK_NB)` with a
//! backoff to 1 ms) instead. A thread that blocks `SIGURG` cannot be interrupted either: bounded
//! waits check the thread's signal mask first and poll if it is blocked.
//!
//! Invariants, relied on by every `unsafe` block here:
//!
//! 1. A `pthread_t` is in the timer table only between `arm` and `disarm`, which the waiting
//!    thread calls around its blocking call, so every thread signalled is alive.
//! 2. The timer thread signals a thread only while holding the table's mutex, and `disarm`
//!    takes the same mutex: once `disarm` returns, no signal for that wait is sent any more.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use std::time::{Duration, Instant};

use lock_api::PerProcess;

/// How long the timer thread keeps a deadline after its last timer, before it sleeps without
/// one (and the next `arm` has to wake it).
const LINGER: Duration = Duration::from_secs(1);

/// The signal that interrupts a blocked `flock`.
const SIGNAL: libc::c_int = libc::SIGURG;

/// Our `SIGURG` handler is installed (and nobody replaced it since we last looked).
static HANDLER: AtomicBool = AtomicBool::new(false);
/// Serialises the one-time installation (a forked child looks again, at its inherited handler).
static INSTALL: PerProcess<bool> = PerProcess::new();

/// The handler: it only has to exist, so that the signal interrupts the system call.
extern "C" fn on_signal(_: libc::c_int) {}

/// Whether `action` is ours.
fn is_ours(action: &libc::sigaction) -> bool {
    action.sa_sigaction == on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t
}

/// Installs the handler if `SIGURG` is free (default or ignored); returns whether ours is
/// installed. `pid` is the caller's process.
fn install(pid: u32) -> bool {
    if HANDLER.load(Ordering::Acquire) {
        return true;
    }
    let mut tried = INSTALL.lock(pid);
    if *tried {
        return HANDLER.load(Ordering::Acquire);
    }
    *tried = true;
    // SAFETY: `sigaction` with a null new action only reads the current one into `old`, a
    // zeroed (valid) `struct sigaction`.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::sigaction(SIGNAL, std::ptr::null(), &mut old) } != 0 {
        return false;
    }
    if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN && !is_ours(&old) {
        return false;
    }
    // SAFETY: a zeroed `struct sigaction` is valid; we set the handler (a function that does
    // nothing, so it is async-signal-safe), no flags (no SA_RESTART: the point is to interrupt)
    // and an empty mask.
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: `sa_mask` is a valid sigset_t inside `new`.
    unsafe { libc::sigemptyset(&mut new.sa_mask) };
    // SAFETY: both pointers are valid `struct sigaction`s for the call.
    let installed = unsafe { libc::sigaction(SIGNAL, &new, std::ptr::null_mut()) } == 0;
    HANDLER.store(installed, Ordering::Release);
    installed
}

/// Whether our handler is still the one installed; if not, stop relying on it.
fn still_ours() -> bool {
    // SAFETY: as in `install`: a query into a zeroed `struct sigaction`.
    let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let ours = unsafe { libc::sigaction(SIGNAL, std::ptr::null(), &mut now) } == 0 && is_ours(&now);
    if !ours {
        HANDLER.store(false, Ordering::Release);
    }
    ours
}

/// Whether our handler is installed (and nobody replaced it since the timer thread last
/// looked): timers can interrupt a thread that does not block `SIGURG`.
pub(crate) fn handler_installed() -> bool {
    HANDLER.load(Ordering::Acquire)
}

/// Whether a signal sent to the calling thread would interrupt it: our handler is installed and
/// the thread does not block `SIGURG`. One system call (`rt_sigprocmask`).
pub(crate) fn interruptible() -> bool {
    if !HANDLER.load(Ordering::Acquire) {
        return false;
    }
    // SAFETY: a zeroed sigset_t is valid storage; `pthread_sigmask` with a null new set only
    // writes the current mask into it.
    let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask) } != 0 {
        return false;
    }
    // SAFETY: `mask` was filled by `pthread_sigmask`.
    unsafe { libc::sigismember(&mask, SIGNAL) == 0 }
}

/// One armed timer.
#[derive(Debug)]
struct Timer {
    ticket: u64,
    thread: libc::pthread_t,
    due: Instant,
    fired: bool,
}

/// The timer table, under the waker's mutex.
#[derive(Debug, Default)]
struct Table {
    timers: Vec<Timer>,
    next_ticket: u64,
    /// The time the timer thread sleeps until; `None` while it sleeps without a deadline (or
    /// before it first sleeps).
    sleeps_until: Option<Instant>,
    /// A timer was armed since the timer thread last looked.
    armed: bool,
}

/// The process's timer thread and its table.
#[derive(Debug)]
pub(crate) struct Waker {
    table: Mutex<Table>,
    changed: Condvar,
}

/// An armed timer, to disarm.
#[derive(Debug)]
pub(crate) struct Ticket(u64);

/// The process's waker. A forked child starts without one (and never locks its parent's copy of
/// this mutex, which a thread of the parent may have held at the fork).
static WAKER: PerProcess<Option<Arc<Waker>>> = PerProcess::new();

impl Waker {
    /// The waker of process `pid` (the caller's), starting its thread the first time; `None`
    /// when threads cannot be interrupted here (another `SIGURG` handler) or the thread cannot
    /// be started: the caller then polls.
    pub(crate) fn get(pid: u32) -> Option<Arc<Waker>> {
        if !install(pid) {
            return None;
        }
        let mut slot = WAKER.lock(pid);
        if let Some(waker) = slot.as_ref() {
            return Some(Arc::clone(waker));
        }
        let waker = Arc::new(Waker {
            table: Mutex::new(Table::default()),
            changed: Condvar::new(),
        });
        let theirs = Arc::clone(&waker);
        std::thread::Builder::new()
            .name("lock-file-waker".into())
            .spawn(move || theirs.run())
            .ok()?;
        *slot = Some(Arc::clone(&waker));
        Some(waker)
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // Every update leaves the table consistent.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Arms a timer that interrupts the calling thread at `due`, unless disarmed first.
    pub(crate) fn arm(&self, due: Instant) -> Ticket {
        // SAFETY: `pthread_self` has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        let mut table = self.table();
        table.next_ticket += 1;
        let ticket = table.next_ticket;
        table.timers.push(Timer {
            ticket,
            thread,
            due,
            fired: false,
        });
        table.armed = true;
        if table.sleeps_until.is_none_or(|t| due < t) {
            table.sleeps_until = Some(due);
            self.changed.notify_one();
        }
        Ticket(ticket)
    }

    /// Disarms a timer; returns whether it fired (its signal was sent).
    pub(crate) fn disarm(&self, ticket: Ticket) -> bool {
        let mut table = self.table();
        match table.timers.iter().position(|t| t.ticket == ticket.0) {
            Some(at) => table.timers.swap_remove(at).fired,
            None => false,
        }
    }

    /// The timer thread.
    fn run(&self) {
        let mut table = self.table();
        loop {
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            for timer in table.timers.iter_mut().filter(|t| !t.fired) {
                if timer.due <= now {
                    timer.fired = true;
                    if still_ours() {
                        // SAFETY: by invariant 1 the thread is alive (it is between `arm` and
                        // `disarm`, and `disarm` waits for this mutex); `pthread_kill` only
                        // sends a signal. An error (none expected) leaves the waiter to its
                        // next chance.
                        let _ = unsafe { libc::pthread_kill(timer.thread, SIGNAL) };
                    }
                } else {
                    next = Some(next.map_or(timer.due, |n| n.min(timer.due)));
                }
            }
            let until = match next {
                Some(due) => Some(due),
                None if table.armed => Some(now + LINGER),
                None => None,
            };
            table.armed = false;
            table.sleeps_until = until;
            table = match until {
                Some(until) => {
                    self.changed
                        .wait_timeout(table, until.saturating_duration_since(now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .changed
                    .wait(table)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_armed_timer_interrupts_a_blocked_flock() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("l");
        let a = std::fs::File::create(&path).expect("create");
        let b = std::fs::File::open(&path).expect("open");
        rustix::fs::flock(&a, rustix::fs::FlockOperation::LockExclusive).expect("lock");
        let waker = Waker::get(std::process::id()).expect("waker");
        assert!(interruptible());
        let start = Instant::now();
        let ticket = waker.arm(start + Duration::from_millis(50));
        let got = rustix::fs::flock(&b, rustix::fs::FlockOperation::LockExclusive);
        assert!(waker.disarm(ticket), "fired");
        assert_eq!(got, Err(rustix::io::Errno::INTR));
        assert!(start.elapsed() >= Duration::from_millis(50));
        // A disarmed timer never fires.
        let ticket = waker.arm(Instant::now() + Duration::from_millis(20));
        assert!(!waker.disarm(ticket));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            rustix::fs::flock(&b, rustix::fs::FlockOperation::NonBlockingLockExclusive),
            Err(rustix::io::Errno::WOULDBLOCK)
        );
    }

    /// A child forked while another thread holds the waker's and the installer's locks gets a
    /// waker of its own, with a running timer thread that interrupts its blocked `flock`. With
    /// plain `static Mutex`es the child hung in `Waker::get`.
    #[test]
    fn a_child_forked_while_the_waker_is_locked_gets_its_own() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("l");
        let a = std::fs::File::create(&path).expect("create");
        let b = std::fs::File::open(&path).expect("open");
        rustix::fs::flock(&a, rustix::fs::FlockOperation::LockExclusive).expect("lock");
        let parent = std::process::id();
        Waker::get(parent).expect("waker");
        let (locked, is_locked) = std::sync::mpsc::channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let _install = INSTALL.lock(parent);
            let _waker = WAKER.lock(parent);
            locked.send(()).expect("locked");
            let _ = released.recv();
        });
        is_locked.recv().expect("locks held");
        let status = lock_conformance::fork::fork_and_wait(Duration::from_secs(10), || {
            let interrupted = Waker::get(std::process::id()).is_some_and(|waker| {
                let ticket = waker.arm(Instant::now() + Duration::from_millis(20));
                let got = rustix::fs::flock(&b, rustix::fs::FlockOperation::LockExclusive);
                waker.disarm(ticket) && got == Err(rustix::io::Errno::INTR)
            });
            i32::from(!interrupted)
        })
        .expect("fork");
        release.send(()).expect("release");
        holder.join().expect("holder");
        assert_eq!(
            status,
            Some(0),
            "the child hung (None) or its flock was not interrupted"
        );
    }
}
