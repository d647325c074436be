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
//! A signal that lands before the thread has entered `flock` (the thread was preempted between
//! `arm` and the call, or the time was already near) would be spent on nothing, and the `flock`
//! would sleep on. So a signalled timer is signalled again until its thread disarms, first
//! [`RESEND`] later, then at twice the interval before, up to [`RESEND_MAX`]; a thread blocked
//! in `flock` when the first one came disarms at once and sees none of the others. The interval
//! grows for a thread that a signal cannot interrupt at all, one that blocks `SIGURG` in a
//! `lock()` whose deadlock check saw a cycle: it disarms only when its wait ends, and would
//! otherwise be sent 500 signals a second until then.
//!
//! A timer may carry a *job* instead ([`Waker::arm_job`]; armed for another thread by
//! [`Waker::arm_job_for`], or for nobody by [`Waker::spawn`]): when due, the timer thread runs it
//! (outside the table's mutex) and does what it answers: run again later, signal the thread, or
//! nothing more. A deadlock check's first look runs so (`locker.rs`): the waiting thread is
//! interrupted only when the look sees a cycle, so an idle waiter sleeps through its checks.
//! A job that is running when its timer is disarmed runs to its end, and its answer is dropped.
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
//!    thread calls around its blocking call, or between the adoption of its wait (`arm_job_for`,
//!    by the manager's scan, while the wait is registered in `adopt.rs`) and its `disarm`, which
//!    the thread cannot skip: the end of an adopted wait hands it the ticket (property A2 there).
//!    So every thread signalled is alive. A detached timer (`spawn`) signals nobody.
//! 2. The timer thread signals a thread only while holding the table's mutex and only for a
//!    timer still in the table, and `disarm` takes the same mutex to remove it: once `disarm`
//!    returns, no signal for that wait is sent any more (a job's answer that comes later finds
//!    no timer and signals nobody).
//!
//! The model check. The table and the timer thread are generic over [`Sys`] (the table's mutex
//! and condition variable, the clock, the calling thread, the signal); production uses [`Std`],
//! and `model.rs` runs the same code under loom with a logical clock, a modelled signal and a
//! modelled blocking `flock` (`cargo test -p lock-file --lib model`, a few seconds). It checks
//! invariant 2 (no signal for a wait after its `disarm` returned, and `disarm` says "fired"
//! exactly when a signal was sent), that a thread blocked in `flock` after arming is always
//! interrupted, also when the first signal landed before it blocked (the resend), that a job
//! runs again when it answers [`Next::At`], interrupts on `Signal` and never on `Done`, and that
//! the timer thread never sleeps past a timer's due time (an `arm` that needs it earlier wakes
//! it). Two planted bugs, which only the model switches on through `Sys`'s constants, must be
//! caught: a timer signalled only once ([`Sys::SIGNAL_ONCE`]: the waiter sleeps on, which loom
//! reports as a deadlock) and a due timer signalled after the table's mutex was let go
//! ([`Sys::SIGNAL_UNLOCKED`]: a signal after `disarm`).

use std::ops::DerefMut;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lock_api::PerProcess;

/// How often a signal is sent again while the thread it was for has not disarmed: it may have
/// landed just before the thread blocked, and a `flock` entered after it would sleep on.
const RESEND: Duration = Duration::from_millis(2);

/// The longest interval between two of a timer's signals: [`RESEND`] doubled nine times.
const RESEND_MAX: Duration = Duration::from_millis(1024);

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

/// Work a timer does on the timer thread when it comes due, instead of signalling at once: a
/// waiter's deadlock check, which only needs to interrupt the waiter when it is the victim.
pub(crate) type Job = Box<dyn FnMut() -> Next + Send>;

/// What a [`Job`] wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Run again at this time.
    At(Instant),
    /// Interrupt the waiting thread now (and never run again).
    Signal,
    /// Never run again.
    Done,
}

/// What the timer protocol needs of the system it runs on: the table's mutex and condition
/// variable, the clock, the calling thread and the signal.
///
/// Production runs it on [`Std`] (std's mutex and condition variable, [`Instant::now`],
/// `pthread_self` and `pthread_kill`); the model check (`model.rs`) runs the same code on loom's
/// mutex and condition variable, a logical clock and a modelled signal. The waker is generic over
/// it rather than switched by `cfg`, so both run exactly this code, and production pays nothing
/// for it (one monomorphised implementation).
pub(crate) trait Sys {
    /// A thread that a timer interrupts.
    type Thread: Copy;
    /// The timer table, locked.
    type Guard<'a>: DerefMut<Target = Table<Self::Thread>>
    where
        Self: 'a;

    /// Planted bug (a), set only by the model check: a signalled timer is never signalled again,
    /// so a signal that lands before its thread blocks is lost for good.
    const SIGNAL_ONCE: bool = false;
    /// Planted bug (b), set only by the model check: the timer thread sends a due timer's signal
    /// after letting go of the table's mutex (one timer's per look at the table; the others wait
    /// for their resend), so it may arrive after `disarm` returned (against invariant 2).
    const SIGNAL_UNLOCKED: bool = false;

    /// Locks the timer table.
    fn lock(&self) -> Self::Guard<'_>;
    /// Wakes the timer thread if it sleeps in [`wait`](Sys::wait).
    fn notify(&self);
    /// Lets go of the table and sleeps until notified or, when `until` is given, until then
    /// (`now` is the time the caller last read); returns with the table locked again. Spurious
    /// returns are allowed. `None` ends the timer thread: only a model's timer thread ends.
    fn wait<'a>(
        &'a self,
        table: Self::Guard<'a>,
        now: Instant,
        until: Option<Instant>,
    ) -> Option<Self::Guard<'a>>;
    /// The time now.
    fn now(&self) -> Instant;
    /// The calling thread.
    fn current(&self) -> Self::Thread;
    /// Interrupts `thread` (a blocking call returns `EINTR`). Called only while holding the
    /// table's mutex, for a timer that is in the table (invariants 1 and 2), except by planted
    /// bug (b).
    fn signal(&self, thread: Self::Thread);
}

/// The system production runs on: std's mutex and condition variable around the table,
/// [`Instant::now`], and `SIGURG` sent with `pthread_kill(3)`.
#[derive(Debug)]
pub(crate) struct Std {
    table: Mutex<Table<libc::pthread_t>>,
    changed: Condvar,
}

impl Sys for Std {
    type Thread = libc::pthread_t;
    type Guard<'a> = MutexGuard<'a, Table<libc::pthread_t>>;

    fn lock(&self) -> Self::Guard<'_> {
        // Every update leaves the table consistent.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changed.notify_one();
    }

    fn wait<'a>(
        &'a self,
        table: Self::Guard<'a>,
        now: Instant,
        until: Option<Instant>,
    ) -> Option<Self::Guard<'a>> {
        Some(match until {
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
        })
    }

    #[inline]
    fn now(&self) -> Instant {
        Instant::now()
    }

    #[inline]
    fn current(&self) -> libc::pthread_t {
        // SAFETY: `pthread_self` has no preconditions.
        unsafe { libc::pthread_self() }
    }

    fn signal(&self, thread: libc::pthread_t) {
        if still_ours() {
            // SAFETY: by invariant 1 the thread is alive: its timer is in the table, so it has
            // not returned from `disarm`, which waits for the table's mutex that every caller of
            // this holds (invariant 2). `pthread_kill` only sends a signal; an error (none
            // expected) leaves the waiter to the next resend.
            let _ = unsafe { libc::pthread_kill(thread, SIGNAL) };
        }
    }
}

/// Where an armed timer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Not due yet (or its job asked to run again at `due`).
    Waiting,
    /// Its job is running on the timer thread, outside the table's mutex.
    Running,
    /// The thread was signalled; the signal is sent again at `due` until the thread disarms.
    Signalled,
    /// Its job asked for nothing more.
    Finished,
}

/// One armed timer, for a thread of type `T`.
struct Timer<T> {
    ticket: u64,
    thread: T,
    due: Instant,
    stage: Stage,
    /// The job to run when due (signal at once when there is none); `None` also while it runs.
    job: Option<Job>,
    /// Nobody disarms it: it is removed when its job answers `Done` (or `Signal`, which it
    /// never does), and it signals nobody.
    detached: bool,
    /// How long after its next signal it is signalled again (module docs).
    resend: Duration,
}

impl<T: Copy> Timer<T> {
    /// Marks the timer signalled, to be signalled again until its thread disarms, each time
    /// twice as long after (up to [`RESEND_MAX`]); returns the thread to signal now.
    fn fire(&mut self, now: Instant) -> T {
        self.stage = Stage::Signalled;
        self.due = now + self.resend;
        self.resend = (self.resend * 2).min(RESEND_MAX);
        self.thread
    }
}

impl<T> std::fmt::Debug for Timer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timer")
            .field("ticket", &self.ticket)
            .field("due", &self.due)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

/// The timer table, under the waker's mutex; `T` names a thread.
#[derive(Debug)]
pub(crate) struct Table<T> {
    timers: Vec<Timer<T>>,
    next_ticket: u64,
    /// The time the timer thread sleeps until; `None` while it sleeps without a deadline (or
    /// before it first sleeps).
    sleeps_until: Option<Instant>,
    /// A timer was armed since the timer thread last looked.
    armed: bool,
}

impl<T> Table<T> {
    /// An empty table.
    pub(crate) const fn new() -> Table<T> {
        Table {
            timers: Vec::new(),
            next_ticket: 0,
            sleeps_until: None,
            armed: false,
        }
    }

    /// When the earliest timer that has yet to fire or to run its job is due: what the model
    /// check holds the timer thread's sleeps against.
    #[cfg(test)]
    pub(crate) fn earliest_waiting(&self) -> Option<Instant> {
        self.timers
            .iter()
            .filter(|t| t.stage == Stage::Waiting)
            .map(|t| t.due)
            .min()
    }
}

/// The process's timer thread and its table, on the system `S` ([`Std`] but in the model check).
#[derive(Debug)]
pub(crate) struct Waker<S: Sys = Std> {
    sys: S,
}

/// An armed timer, to disarm.
#[derive(Debug)]
pub(crate) struct Ticket(u64);

impl Ticket {
    /// The ticket as a number, to keep in an atomic word (`adopt.rs`).
    pub(crate) fn number(&self) -> u64 {
        self.0
    }

    /// The ticket [`number`](Self::number) gave.
    pub(crate) fn from_number(number: u64) -> Ticket {
        Ticket(number)
    }
}

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
        let waker = Arc::new(Waker::new(Std {
            table: Mutex::new(Table::new()),
            changed: Condvar::new(),
        }));
        let theirs = Arc::clone(&waker);
        std::thread::Builder::new()
            .name("lock-file-waker".into())
            .spawn(move || theirs.run())
            .ok()?;
        *slot = Some(Arc::clone(&waker));
        Some(waker)
    }
}

impl<S: Sys> Waker<S> {
    /// A waker on `sys` with an empty table; its thread is started by whoever made it, to
    /// [`run`](Self::run).
    pub(crate) fn new(sys: S) -> Waker<S> {
        Waker { sys }
    }

    fn table(&self) -> S::Guard<'_> {
        self.sys.lock()
    }

    /// The calling thread, as timers name it.
    pub(crate) fn current(&self) -> S::Thread {
        self.sys.current()
    }

    /// Arms a timer that interrupts the calling thread at `due`, unless disarmed first.
    pub(crate) fn arm(&self, due: Instant) -> Ticket {
        self.arm_timer(self.sys.current(), due, None, false)
    }

    /// Arms a timer that runs `job` on the timer thread at `due`, and again whenever it asks,
    /// until it asks to interrupt the calling thread (which it then does, unless disarmed
    /// first) or to stop. The calling thread is not woken for runs that ask for neither.
    pub(crate) fn arm_job(&self, due: Instant, job: Job) -> Ticket {
        self.arm_timer(self.sys.current(), due, Some(job), false)
    }

    /// As [`arm_job`](Self::arm_job), for `thread`, which is blocked in a wait that it cannot
    /// leave without disarming the ticket (`adopt.rs`: the scan adopting a wait; invariant 1).
    pub(crate) fn arm_job_for(&self, thread: S::Thread, due: Instant, job: Job) -> Ticket {
        self.arm_timer(thread, due, Some(job), false)
    }

    /// Runs `job` on the timer thread at `due`, and again whenever it answers [`Next::At`],
    /// until it answers `Done`; nobody disarms it and it interrupts nobody (`adopt.rs`'s scan).
    pub(crate) fn spawn(&self, due: Instant, job: Job) {
        self.arm_timer(self.sys.current(), due, Some(job), true);
    }

    fn arm_timer(
        &self,
        thread: S::Thread,
        due: Instant,
        job: Option<Job>,
        detached: bool,
    ) -> Ticket {
        let mut table = self.table();
        table.next_ticket += 1;
        let ticket = table.next_ticket;
        table.timers.push(Timer {
            ticket,
            thread,
            due,
            stage: Stage::Waiting,
            job,
            detached,
            resend: RESEND,
        });
        table.armed = true;
        if table.sleeps_until.is_none_or(|t| due < t) {
            table.sleeps_until = Some(due);
            self.sys.notify();
        }
        Ticket(ticket)
    }

    /// Disarms a timer; returns whether it fired (its signal was sent). A job running now goes
    /// on to its end, but its answer is dropped: it signals nobody.
    pub(crate) fn disarm(&self, ticket: Ticket) -> bool {
        let removed = {
            let mut table = self.table();
            let at = table.timers.iter().position(|t| t.ticket == ticket.0);
            at.map(|at| table.timers.swap_remove(at))
        };
        // Dropped outside the mutex: a job owns what it checks, which may be the last reference.
        removed.is_some_and(|timer| timer.stage == Stage::Signalled)
    }

    /// Runs the due jobs `jobs` outside the table's mutex, then applies their answers to the
    /// timers that are still armed.
    fn run_jobs<'a>(&'a self, table: S::Guard<'a>, jobs: Vec<(u64, Job)>) -> S::Guard<'a> {
        drop(table);
        let answers: Vec<(u64, Job, Next)> = jobs
            .into_iter()
            .map(|(ticket, mut job)| {
                let next = job();
                (ticket, job, next)
            })
            .collect();
        let mut table = self.table();
        let now = self.sys.now();
        let mut gone = Vec::new();
        for (ticket, job, next) in answers {
            let Some(at) = table.timers.iter().position(|t| t.ticket == ticket) else {
                // Disarmed while it ran.
                gone.push(job);
                continue;
            };
            let timer = &mut table.timers[at];
            if timer.detached && !matches!(next, Next::At(_)) {
                // Done (or Signal, which a detached job has nobody to send to): nobody will
                // disarm it, so it goes now.
                table.timers.swap_remove(at);
                gone.push(job);
                continue;
            }
            match next {
                Next::At(at) => {
                    timer.stage = Stage::Waiting;
                    timer.due = at;
                    timer.job = Some(job);
                }
                Next::Signal => {
                    self.sys.signal(timer.fire(now));
                    gone.push(job);
                }
                Next::Done => {
                    timer.stage = Stage::Finished;
                    gone.push(job);
                }
            }
        }
        if !gone.is_empty() {
            drop(table);
            drop(gone);
            table = self.table();
        }
        table
    }

    /// The timer thread: runs until [`Sys::wait`] ends it, which in production it never does.
    pub(crate) fn run(&self) {
        let mut table = self.table();
        loop {
            let now = self.sys.now();
            let mut next: Option<Instant> = None;
            let mut jobs = Vec::new();
            // Planted bug (b) only: a signal to send once the mutex is let go.
            let mut unlocked = None;
            let live = |t: &&mut Timer<S::Thread>| match t.stage {
                Stage::Waiting => true,
                Stage::Signalled => !S::SIGNAL_ONCE,
                Stage::Running | Stage::Finished => false,
            };
            for timer in table.timers.iter_mut().filter(live) {
                if timer.due <= now
                    && let Some(job) = timer.job.take()
                {
                    timer.stage = Stage::Running;
                    jobs.push((timer.ticket, job));
                    continue;
                }
                if timer.due <= now {
                    // Due, or signalled and not disarmed yet: the signal may have landed
                    // before the thread blocked, so it is sent again until the thread disarms.
                    let thread = timer.fire(now);
                    if S::SIGNAL_UNLOCKED {
                        unlocked = Some(thread);
                    } else {
                        self.sys.signal(thread);
                    }
                }
                next = Some(next.map_or(timer.due, |n| n.min(timer.due)));
            }
            if let Some(thread) = unlocked {
                // Planted bug (b): the timer may be disarmed before this signal goes.
                drop(table);
                self.sys.signal(thread);
                table = self.table();
                if jobs.is_empty() {
                    // The table may have changed meanwhile.
                    continue;
                }
            }
            if !jobs.is_empty() {
                // Their answers may arm them again: look at the table afresh.
                table.armed = true;
                table = self.run_jobs(table, jobs);
                continue;
            }
            let until = match next {
                Some(due) => Some(due),
                None if table.armed => Some(now + LINGER),
                None => None,
            };
            table.armed = false;
            table.sleeps_until = until;
            table = match self.sys.wait(table, now, until) {
                Some(table) => table,
                None => return,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file in a fresh directory, opened twice: the first description (`flock`ed exclusively)
    /// and the second, whose `flock(LOCK_EX)` blocks; the directory is removed when dropped.
    fn locked_pair() -> (tempfile::TempDir, std::fs::File, std::fs::File) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("l");
        let a = std::fs::File::create(&path).expect("create");
        let b = std::fs::File::open(&path).expect("open");
        rustix::fs::flock(&a, rustix::fs::FlockOperation::LockExclusive).expect("lock");
        (dir, a, b)
    }

    #[test]
    fn an_armed_timer_interrupts_a_blocked_flock() {
        let (_dir, _a, b) = locked_pair();
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

    /// A signal that lands before its thread blocks (here: during a sleep just after `arm`) is
    /// sent again until the thread disarms, so the `flock` that follows is still interrupted.
    /// Without the resend the flock blocked until the lock was let go.
    #[test]
    fn a_signal_that_lands_before_the_flock_is_sent_again() {
        let (_dir, a, b) = locked_pair();
        let waker = Waker::get(std::process::id()).expect("waker");
        assert!(interruptible());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let blocked = std::thread::spawn(move || {
            let ticket = waker.arm(Instant::now());
            // The timer thread signals now; the handler runs during this sleep (std retries the
            // interrupted `nanosleep`).
            std::thread::sleep(Duration::from_millis(50));
            let got = rustix::fs::flock(&b, rustix::fs::FlockOperation::LockExclusive);
            let fired = waker.disarm(ticket);
            let _ = done_tx.send(());
            (got, fired)
        });
        let interrupted_in_time = done_rx.recv_timeout(Duration::from_secs(5)).is_ok();
        // Lets a flock that was never interrupted return, so the test ends either way.
        rustix::fs::flock(&a, rustix::fs::FlockOperation::Unlock).expect("unlock");
        let (got, fired) = blocked.join().expect("thread");
        assert!(fired, "the timer fired");
        assert!(
            interrupted_in_time && got == Err(rustix::io::Errno::INTR),
            "the flock after a lost signal: {got:?}, within 5 s: {interrupted_in_time}"
        );
    }

    /// A thread that blocks `SIGURG` (here: it takes each signal with `sigtimedwait`, counting
    /// them) cannot be interrupted, so it disarms only when its wait ends: it is still signalled
    /// again, but less and less often. In 300 ms the resends at 2, 4, 8, ... ms intervals come
    /// 8 times; at a steady 2 ms they came about 150 times.
    #[test]
    fn a_thread_that_blocks_the_signal_is_signalled_less_and_less_often() {
        let waker = Waker::get(std::process::id()).expect("waker");
        let counted = std::thread::spawn(move || {
            // SAFETY: zeroed sigset_t values are valid storage for these calls, which only
            // read and write them; the mask changes only this (test) thread's.
            let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            unsafe {
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, SIGNAL);
                assert_eq!(
                    libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
                    0
                );
            }
            let start = Instant::now();
            let end = start + Duration::from_millis(300);
            let ticket = waker.arm(start);
            let mut signals = 0;
            while let Some(left) = end.checked_duration_since(Instant::now()) {
                let timeout = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::c_long::try_from(left.as_nanos()).unwrap_or(0),
                };
                // SAFETY: valid set and timeout; no siginfo wanted.
                let got = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
                if got == SIGNAL {
                    signals += 1;
                }
            }
            let fired = waker.disarm(ticket);
            (signals, fired)
        });
        let (signals, fired) = counted.join().expect("thread");
        assert!(fired, "the timer fired");
        assert!(
            (2..=20).contains(&signals),
            "signals taken in 300 ms: {signals} (the first and a few resends expected)"
        );
    }

    /// A detached job (`spawn`: the manager's scan) runs again while it answers `At`, and once
    /// it answers `Done` it leaves the table, since nobody disarms it: kept as a finished timer,
    /// as an armed job that is done is until its thread disarms it, every scan would leave one
    /// behind for good.
    #[test]
    fn a_detached_job_runs_until_done_and_then_leaves_the_table() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::atomic::Ordering::SeqCst;
        let waker = Waker::get(std::process::id()).expect("waker");
        let runs = Arc::new(AtomicUsize::new(0));
        let (done, is_done) = std::sync::mpsc::channel();
        let counted = Arc::clone(&runs);
        waker.spawn(
            Instant::now(),
            Box::new(move || {
                if counted.fetch_add(1, SeqCst) < 2 {
                    Next::At(Instant::now() + Duration::from_millis(5))
                } else {
                    let _ = done.send(());
                    Next::Done
                }
            }),
        );
        is_done
            .recv_timeout(Duration::from_secs(5))
            .expect("the job answered Done");
        // Its answer is applied under the table's mutex right after it ran: then no finished
        // detached timer is left (other tests' timers may come and go meanwhile, but a detached
        // one never stays finished).
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&runs) > 1
            || waker
                .table()
                .timers
                .iter()
                .any(|t| t.detached && t.stage == Stage::Finished)
        {
            assert!(
                Instant::now() < deadline,
                "the finished job stayed in the table"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(runs.load(SeqCst), 3);
    }

    /// A child forked while another thread holds the waker's and the installer's locks gets a
    /// waker of its own, with a running timer thread that interrupts its blocked `flock`. With
    /// plain `static Mutex`es the child hung in `Waker::get`.
    #[test]
    fn a_child_forked_while_the_waker_is_locked_gets_its_own() {
        let (_dir, _a, b) = locked_pair();
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
