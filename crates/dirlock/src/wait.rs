//! Waiting for a release: inotify on the lock directory, with a short adaptive poll as backstop.
//!
//! A release (`unlink` of a level, or `rename` over it) is an inotify event on the directory,
//! so a blocked waiter wakes at once. A holder's death is not a file system event, and inotify
//! says nothing about changes made by other hosts on network file systems, so the waiter also
//! re-checks on a timer that starts at 1 ms and doubles up to 20 ms.
//!
//! Closing an inotify instance waits for an SRCU grace period in the kernel (10 to 20 ms
//! measured here), which would land on every `lock` that had to wait. So instances are pooled
//! per process and reused: a waiter adds its watch to a pooled instance and removes it when
//! done, which is cheap.

use std::os::fd::OwnedFd;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use rustix::io::Errno;
use rustix::process::Pid;

use crate::dir::Dir;
use crate::wipeonfork::getpid;

/// Idle inotify instances of this process (tagged with the pid that made them: a forked child
/// must not share its parent's event queue).
static POOL: Mutex<Vec<(Pid, OwnedFd)>> = Mutex::new(Vec::new());
/// More idle instances than this are closed rather than kept (as many waiters at once).
const POOL_MAX: usize = 32;

fn take_pooled() -> Option<OwnedFd> {
    let me = getpid();
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    while let Some((pid, fd)) = pool.pop() {
        if pid == me {
            drop(pool);
            drain(&fd);
            return Some(fd);
        }
        // Inherited from the parent across fork: closing our duplicate is cheap (the parent
        // still holds the instance) and leaves the parent's queue alone.
    }
    None
}

fn give_back(fd: OwnedFd) {
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if pool.len() < POOL_MAX {
        pool.push((getpid(), fd));
    }
}

/// Discards queued events: the caller re-examines the directory anyway.
fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = rustix::io::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// The first re-check interval.
const FIRST_POLL: Duration = Duration::from_millis(1);
/// The longest re-check interval: the bound on noticing a dead holder.
pub(crate) const MAX_POLL: Duration = Duration::from_millis(20);

/// Sleeps until the directory changes or the current backoff interval passes.
#[derive(Debug)]
pub(crate) struct Waiter {
    /// The instance and watch descriptor; `None` when inotify is unavailable (instance limit
    /// reached): the timer alone then.
    inotify: Option<(OwnedFd, i32)>,
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
            interval: FIRST_POLL,
        }
    }

    /// Waits for a change in the directory, the current poll interval, or `deadline`,
    /// whichever comes first.
    pub(crate) fn wait(&mut self, deadline: Option<Instant>) {
        let mut timeout = self.interval;
        if let Some(deadline) = deadline {
            timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
        }
        self.interval = (self.interval * 2).min(MAX_POLL);
        let Some((fd, _)) = &self.inotify else {
            std::thread::sleep(timeout);
            return;
        };
        let spec = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match poll(&mut fds, Some(&spec)) {
            Ok(_) | Err(Errno::INTR) => {}
            // poll(2) on one valid descriptor has no other failure worth reporting; sleeping
            // keeps the wait bounded and the loop correct.
            Err(_) => std::thread::sleep(timeout),
        }
        drain(fd);
    }
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
