//! Waiting for the lock: a blocked waiter sleeps until the directory changes or the process in
//! its way lets go, with no short timer while the holder lives.
//!
//! A waiter polls, in one `poll(2)`:
//!
//! 1. an inotify instance watching the directory for removals and renames of `lock*` names: a
//!    release (`unlink`), a takeover (`rename` over a level), an operator's `break_lock`, and
//!    the directory's own removal (events for other names, such as `.dirlock-tmp.*` files,
//!    are read and ignored);
//! 2. a pidfd of the holder that made the last attempt busy (`pidfd_open(2)`): it becomes
//!    readable when every thread of that process has exited (a zombie leader with a live thread
//!    is not readable), which is when the record's pid test turns to dead;
//! 3. an eventfd that a watcher thread rings (watch.rs) when the holder's record file loses its
//!    OFD write lock, which the kernel drops when the holder exits, is killed or calls `exec`.
//!    The file is unlocked a little before the process becomes a zombie (`exit_files` comes
//!    before `exit_notify` in the kernel), so after a SIGKILL this is the first signal, and the
//!    record's lock test (`StaleBecause::DescriptorClosed`) already says dead when the waiter
//!    looks.
//!
//! Each wake-up makes the waiter attempt again; only the attempt (levels.rs) decides anything,
//! with the same judge as before. So the wait decides only *when* to look again, never *what*
//! is found, and a wake-up too many costs one attempt and changes no outcome.
//!
//! # Dead or alive
//!
//! A waiter cannot take a live holder's lock: waking up takes nothing; the attempt that follows
//! takes a level only by `link` or, for a holder judged certainly dead by liveness.rs, by the
//! checked replacement of levels.rs. Neither the pidfd nor the watcher feeds that judgement.
//!
//! A waiter cannot sleep forever on a dead holder (it looks again at least every
//! [`SAFETY_NET`] whatever happens), and normally sleeps not at all on one:
//!
//! - The waiter arms its watches after the attempt that found the holder alive, and every one
//!   of them reports a state, not an edge: a pidfd of a process that has already exited is
//!   readable at once, `pidfd_open` of a pid already gone fails with `ESRCH` (looked at again
//!   at once), and `F_OFD_SETLKW` on a file already unlocked is granted at once. The inotify
//!   watch is set up before that attempt. So nothing that happens between the attempt and the
//!   sleep is missed.
//! - The pidfd is the holder's: after opening it, the waiter judges the record's pid again; if
//!   the pid still has the record's start time, it was the holder's the whole time (a pid
//!   number belongs to one process at a time), so the pidfd refers to the holder. Where
//!   `/proc` hides the start time (`hidepid`, `HeldBecause::Unverifiable`) this check cannot be
//!   made: a holder that died and whose pid was reused within the microseconds between the
//!   attempt and `pidfd_open` would leave the waiter watching the wrong process, until the
//!   watcher (for a record that promises the lock) or the safety net.
//! - Every way the holder's level turns stale is covered: death (the pidfd; also the watcher,
//!   unless a forked child inherited the descriptor), `exec` (the watcher, for a record that
//!   promises the lock and whose file was locked when read; without that promise `exec` does
//!   not make a record stale), a release, takeover or break (inotify). A record from an
//!   earlier boot is never waited on (it is stale at once), and a holder on another host or in
//!   another pid namespace is held until it releases or an operator breaks the lock.
//! - Watches that have fired (a readable pidfd, a granted watcher) are dropped, so a waiter
//!   whose holder the kernel reports gone while `/proc` still shows it (a zombie whose stat is
//!   hidden) polls with the backoff below instead of spinning on a readable descriptor.
//!
//! # The timers that remain
//!
//! - [`SAFETY_NET`], when every mechanism above is armed: a change that no local event reports,
//!   which is what a network file system does with changes made by other hosts (a remote
//!   `break_lock`), or a mechanism that failed silently. It is long because every wake-up of
//!   an idle waiter costs an attempt (some twenty system calls, 0.1 to 0.6 ms of CPU on the
//!   2 vCPU VM depending on its load): at 10 s, 50 idle waiters burnt 0.03 CPU-s in 10 s, over
//!   the 0.02 target. lock-shm's waiters probe as rarely, for the same reason.
//! - The [`FIRST_POLL`]-[`MAX_POLL`] backoff, where something is not covered: the holder is on
//!   another host (its release is a change that inotify does not report), inotify or pidfds
//!   are unavailable (instance limits, kernels before 5.3), no watcher thread could start or its
//!   `F_OFD_SETLKW` failed, the level kept changing under the attempt, or a fired watch left
//!   the holder still judged alive.
//! - The caller's deadline (`try_lock_for`).
//!
//! Closing an inotify instance waits for an SRCU grace period in the kernel (10 to 20 ms
//! measured here), which would land on every `lock` that had to wait. So instances are pooled
//! per process and reused: a waiter adds its watch to a pooled instance and removes it when
//! done, which is cheap. Pidfds and eventfds close cheaply and are the waiter's own.

use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_api::PerProcess;
use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd, poll};
use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use rustix::io::Errno;

use crate::dir::{Dir, FileId, Seen};
use crate::levels::Blocked;
use crate::liveness::{self, HolderPidfd, Identity};
use crate::ofd::Probe;
use crate::watch::{self, Ended, Subscription};
use crate::wipeonfork;

/// Idle inotify instances of this process (a forked child starts with none: it must not share
/// its parent's event queues, nor lock the parent's copy of the pool's mutex).
static POOL: PerProcess<Vec<OwnedFd>> = PerProcess::new();
/// More idle instances than this are closed rather than kept (as many waiters at once).
const POOL_MAX: usize = 32;

fn take_pooled() -> Option<OwnedFd> {
    let fd = POOL.lock(wipeonfork::pid()).pop()?;
    drain(&fd);
    Some(fd)
}

fn give_back(fd: OwnedFd) {
    let mut pool = POOL.lock(wipeonfork::pid());
    if pool.len() < POOL_MAX {
        pool.push(fd);
    }
}

/// Discards queued bytes (inotify events, an eventfd's count): the caller looks again anyway.
fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = rustix::io::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// Reads every queued inotify event; whether one may matter to the lock: a `lock*` name (a
/// level or a staging name), or an event without a name (the directory itself went, or the
/// queue overflowed).
fn relevant_events(fd: &OwnedFd) -> bool {
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    let mut reader = inotify::Reader::new(fd, &mut buf);
    let mut relevant = false;
    // Ends with EAGAIN when the queue is empty (the instance is non-blocking).
    while let Ok(event) = reader.next() {
        relevant |= event
            .file_name()
            .is_none_or(|name| name.to_bytes().starts_with(b"lock"));
    }
    relevant
}

/// The first backoff interval.
const FIRST_POLL: Duration = Duration::from_millis(1);
/// The longest backoff interval: the bound on noticing a change that nothing reports.
const MAX_POLL: Duration = Duration::from_millis(20);
/// How long a waiter whose holder is fully watched sleeps before it looks again anyway.
const SAFETY_NET: Duration = Duration::from_secs(30);

/// How long the next sleep may last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// Look again at once (the holder was gone when its watch was armed).
    Now,
    /// Every change is reported: the safety net only.
    Sleep,
    /// Something is not reported: the backoff.
    Poll,
}

/// What a waiter watches of the process that holds the level in its way.
#[derive(Debug)]
struct Watched {
    /// The record watched: its file and nonce (a new holding of the same inode is another).
    file: FileId,
    nonce: u64,
    /// Readable once every thread of the holder has exited; dropped once it has fired.
    pidfd: Option<OwnedFd>,
    /// The watcher of the record file's OFD lock, when the record promises one and it was held.
    subscription: Option<Subscription>,
    /// Whether the record promised a lock that was held when read (exec is then watched for).
    needs_ofd: bool,
    /// A watch fired, or the holder was found gone while arming: the kernel said the holder let
    /// go. If it is still judged alive, the waiter polls.
    fired: bool,
}

impl Watched {
    fn is(&self, seen: &Seen) -> bool {
        self.file == seen.id && self.nonce == seen.record.nonce
    }

    /// Drops a subscription whose watch has ended; true (and `fired` set) when it ended because
    /// the file's write lock went.
    fn settle(&mut self) -> bool {
        let Some(ended) = self.subscription.as_ref().and_then(Subscription::ended) else {
            return false;
        };
        self.subscription = None;
        let unlocked = ended == Ended::Unlocked;
        self.fired |= unlocked;
        unlocked
    }
}

/// Sleeps until the directory changes, the holder in the way lets go, the safety net or
/// backoff interval passes, or the deadline comes.
#[derive(Debug)]
pub(crate) struct Waiter {
    /// The instance and watch descriptor; `None` when inotify is unavailable (instance limit
    /// reached): polling then.
    inotify: Option<(OwnedFd, i32)>,
    /// The eventfd watcher threads ring, made when first needed.
    bell: Option<Arc<OwnedFd>>,
    watched: Option<Watched>,
    /// The next backoff interval.
    interval: Duration,
}

impl Waiter {
    /// Watches `dir` for removals and renames of its entries.
    ///
    /// Set up before the attempt that may fail, so a release between that attempt and the wait
    /// is not missed.
    pub(crate) fn new(dir: &Dir) -> Waiter {
        let inotify = take_pooled()
            .or_else(|| inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC).ok())
            .and_then(|fd| {
                let events = WatchFlags::DELETE
                    | WatchFlags::MOVED_FROM
                    | WatchFlags::MOVED_TO
                    | WatchFlags::DELETE_SELF
                    | WatchFlags::MOVE_SELF
                    | WatchFlags::ONLYDIR;
                // The watch is by path; the lock itself works through the directory's fd.
                match inotify::add_watch(&fd, dir.path(), events) {
                    Ok(wd) => Some((fd, wd)),
                    Err(_) => {
                        give_back(fd);
                        None
                    }
                }
            });
        Waiter {
            inotify,
            bell: None,
            watched: None,
            interval: FIRST_POLL,
        }
    }

    /// Waits after an attempt that found the lock busy because of `blocked` (`None`: no attempt
    /// was made, this handle holds the lock), until something may have changed or `deadline`.
    pub(crate) fn wait(
        &mut self,
        blocked: Option<Blocked>,
        me: &Identity,
        deadline: Option<Instant>,
    ) {
        let pace = self.watch(blocked, me);
        let timeout = match pace {
            Pace::Now => return,
            Pace::Sleep => SAFETY_NET,
            Pace::Poll => {
                let interval = self.interval;
                self.interval = (interval * 2).min(MAX_POLL);
                interval
            }
        };
        let mut until = Instant::now() + timeout;
        if let Some(deadline) = deadline {
            until = until.min(deadline);
        }
        while self.sleep(until) == Woke::Irrelevant {}
    }

    /// Arms the watches for `blocked` (keeping those of the same holding) and says how long the
    /// next sleep may last.
    fn watch(&mut self, blocked: Option<Blocked>, me: &Identity) -> Pace {
        let seen = match blocked {
            Some(Blocked::Process(seen, _)) => seen,
            Some(Blocked::ForeignHost | Blocked::Churn) => {
                self.watched = None;
                return Pace::Poll;
            }
            Some(Blocked::ForeignNamespace) | None => {
                self.watched = None;
                return self.sleep_or_poll(true);
            }
        };
        if !self.watched.as_ref().is_some_and(|w| w.is(&seen)) {
            let watched = self.arm(*seen, me);
            let fired = watched.fired;
            self.watched = Some(watched);
            if fired {
                return Pace::Now;
            }
        }
        let Some(watched) = self.watched.as_mut() else {
            return Pace::Poll;
        };
        // A watch that ended before its bell was polled (or that was joined after it rang).
        if watched.settle() {
            return Pace::Now;
        }
        let covered = !watched.fired
            && watched.pidfd.is_some()
            && (!watched.needs_ofd || watched.subscription.is_some());
        self.sleep_or_poll(covered)
    }

    fn sleep_or_poll(&self, covered: bool) -> Pace {
        if covered && self.inotify.is_some() {
            Pace::Sleep
        } else {
            Pace::Poll
        }
    }

    /// The watches of a new holding: a verified pidfd of its process, and a watcher of its
    /// record file's OFD lock when the record promises one and the file was locked when read.
    fn arm(&mut self, seen: Seen, me: &Identity) -> Watched {
        let mut watched = Watched {
            file: seen.id,
            nonce: seen.record.nonce,
            pidfd: None,
            subscription: None,
            needs_ofd: seen.record.ofd_lock && seen.lock == Probe::Locked,
            fired: false,
        };
        // Verified to be the holder's (module docs); without one, the waiter polls.
        match liveness::holder_pidfd(&seen.record, me) {
            HolderPidfd::Verified(pidfd, _) => watched.pidfd = Some(pidfd),
            HolderPidfd::Gone => watched.fired = true,
            HolderPidfd::Unavailable => {}
        }
        if watched.needs_ofd
            && !watched.fired
            && let Some(bell) = self.bell()
        {
            watched.subscription = watch::subscribe(seen.fd, seen.id, &bell);
        }
        watched
    }

    /// The eventfd for watcher threads, made on first use; `None` when it cannot be made.
    fn bell(&mut self) -> Option<Arc<OwnedFd>> {
        if self.bell.is_none() {
            let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).ok()?;
            self.bell = Some(Arc::new(fd));
        }
        self.bell.clone()
    }

    /// One `poll(2)` until `until` at the latest.
    fn sleep(&mut self, until: Instant) -> Woke {
        let timeout = until.saturating_duration_since(Instant::now());
        if timeout.is_zero() {
            return Woke::Timeout;
        }
        let spec = rustix::time::Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let pidfd = self.watched.as_ref().and_then(|w| w.pidfd.as_ref());
        let mut fds = Vec::with_capacity(3);
        let mut slots = [None; 3];
        for (slot, fd) in [
            self.inotify.as_ref().map(|(fd, _)| fd),
            self.bell.as_deref(),
            pidfd,
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(fd) = fd {
                slots[slot] = Some(fds.len());
                fds.push(PollFd::new(fd, PollFlags::IN));
            }
        }
        if fds.is_empty() {
            std::thread::sleep(timeout);
            return Woke::Timeout;
        }
        match poll(&mut fds, Some(&spec)) {
            Ok(0) => return Woke::Timeout,
            Ok(_) => {}
            Err(Errno::INTR) => return Woke::Irrelevant,
            // poll(2) on valid descriptors has no other failure worth reporting; a short sleep
            // keeps the wait bounded and the loop correct.
            Err(_) => {
                std::thread::sleep(timeout.min(MAX_POLL));
                return Woke::Timeout;
            }
        }
        let ready: [bool; 3] = slots.map(|slot| slot.is_some_and(|i| !fds[i].revents().is_empty()));
        drop(fds);
        let mut woke = Woke::Irrelevant;
        if ready[0]
            && let Some((fd, _)) = &self.inotify
            && relevant_events(fd)
        {
            woke = Woke::Changed;
        }
        if ready[1] {
            if let Some(bell) = &self.bell {
                drain(bell);
            }
            // Rung by the current subscription or by one dropped since: look either way.
            if let Some(watched) = self.watched.as_mut() {
                watched.settle();
            }
            woke = Woke::Changed;
        }
        if ready[2]
            && let Some(watched) = self.watched.as_mut()
        {
            // Readable for good: polled no more for this holding.
            watched.pidfd = None;
            watched.fired = true;
            woke = Woke::Changed;
        }
        woke
    }
}

/// Why a `poll(2)` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woke {
    /// Something that may matter to the lock happened.
    Changed,
    /// Only events about other names, or a signal: sleep on.
    Irrelevant,
    /// The time ran out.
    Timeout,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some((fd, wd)) = self.inotify.take() {
            // Removing a watch is cheap; failing to remove it only leaves events to drain.
            let _ = inotify::remove_watch(&fd, wd);
            give_back(fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DirLock;
    use lock_api::{Error, Locker};

    /// A child forked while another thread of its parent holds the locks of the process-wide
    /// registries (the watchers' and the inotify pool's) still waits, and its wait ends at its
    /// deadline: it never locks its parent's copies of those mutexes. With them as plain `static
    /// Mutex`es the child hung in its first wait.
    #[test]
    fn a_child_forked_while_the_registries_are_locked_still_waits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let holder = DirLock::new(dir.path()).expect("holder");
        let _ = holder.lock().expect("lock");
        let other = DirLock::new(dir.path()).expect("waiter");
        // One wait in the parent first, so that both registries have been used here.
        let waited = other.try_lock_for(Duration::from_millis(20));
        assert!(matches!(waited, Err(Error::Timeout)), "{waited:?}");

        let (locked, is_locked) = std::sync::mpsc::channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let registries = std::thread::spawn(move || {
            watch::while_locked(|| {
                let _pool = POOL.lock(wipeonfork::pid());
                locked.send(()).expect("locked");
                let _ = released.recv();
            });
        });
        is_locked.recv().expect("registries locked");
        let status = lock_conformance::fork::fork_and_wait(Duration::from_secs(10), || {
            let waited = other.try_lock_for(Duration::from_millis(50));
            i32::from(!matches!(waited, Err(Error::Timeout)))
        })
        .expect("fork");
        release.send(()).expect("release");
        registries.join().expect("registries thread");
        assert_eq!(
            status,
            Some(0),
            "the child hung (None) or its wait did not time out"
        );
        holder.unlock().expect("unlock");
    }
}
