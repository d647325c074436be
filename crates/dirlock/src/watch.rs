//! Watcher threads: a waiter learns when a holder's record file loses its OFD write lock, the
//! moment the kernel drops it (the holder exited, was killed, called `exec`, or released).
//!
//! A watcher is a thread blocked in `F_OFD_SETLKW` for a read lock on the record's file, through
//! the read-only descriptor the waiter read the record with (`ofd::wait_unlocked`). The kernel
//! grants it when no write lock is left, that is when the last descriptor of the holder's open
//! file description closes. The watcher then leaves the registry, closes its descriptor (which
//! drops its read lock) and writes to the eventfd ("bell") of every waiter subscribed to it;
//! waiters poll their bell together with the directory's inotify instance (wait.rs).
//!
//! One watcher per record file per process: the registry is keyed by the file's device and
//! inode, which cannot be reused while the watcher keeps the file open. A waiter that finds a
//! watcher for the file subscribes to it and closes its own descriptor. A waiter that gives up
//! (a timeout, or its holder changed) only unsubscribes: the watcher stays blocked until the
//! holder lets go of its file, which every holder does (its `unlock`, its exit or its `exec`),
//! so no watcher outlives the holding it watches, and repeated waits on one holder share one
//! thread.
//!
//! A forked child has copies of the registry's entries but not their threads, and its copy of
//! the registry's mutex may be locked for good (another thread of the parent held it at the
//! fork): the registry is a [`PerProcess`], so the child starts with an empty one of its own.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lock_api::PerProcess;

use crate::dir::FileId;
use crate::ofd;
use crate::wipeonfork;

/// Stack of a watcher thread: it makes a few system calls and nothing else.
const STACK: usize = 64 * 1024;

/// The watchers of this process, each blocked on one record file.
static WATCHES: PerProcess<Vec<Arc<Watch>>> = PerProcess::new();

fn watches() -> MutexGuard<'static, Vec<Arc<Watch>>> {
    WATCHES.lock(wipeonfork::pid())
}

/// Runs `f` holding the registry's lock (a test holds it across a `fork`).
#[cfg(test)]
pub(crate) fn while_locked<T>(f: impl FnOnce() -> T) -> T {
    let _all = watches();
    f()
}

/// How a watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The read lock was granted: nobody write-locks the file any more, for good (a closed
    /// descriptor is not given back).
    Unlocked,
    /// `F_OFD_SETLKW` failed: this watch says nothing.
    Failed,
}

#[derive(Debug)]
struct Watch {
    file: FileId,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    ended: Option<Ended>,
    /// The eventfds of the subscribed waiters.
    bells: Vec<Arc<OwnedFd>>,
}

impl Watch {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A waiter's interest in one watch: its bell rings when the watch ends. Dropping it
/// unsubscribes.
#[derive(Debug)]
pub(crate) struct Subscription {
    watch: Arc<Watch>,
    bell: Arc<OwnedFd>,
}

impl Subscription {
    /// How the watch ended, if it has.
    pub(crate) fn ended(&self) -> Option<Ended> {
        self.watch.state().ended
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.watch
            .state()
            .bells
            .retain(|bell| !Arc::ptr_eq(bell, &self.bell));
    }
}

/// Subscribes `bell` to the watch of the record file `file`, starting a watcher thread on
/// `fd` (a read-only descriptor of that file) if none watches it yet; `fd` is closed otherwise.
/// `None` when no thread could be started.
pub(crate) fn subscribe(fd: OwnedFd, file: FileId, bell: &Arc<OwnedFd>) -> Option<Subscription> {
    let mut all = watches();
    let watch = match all.iter().find(|w| w.file == file) {
        Some(watch) => Arc::clone(watch),
        None => {
            let watch = Arc::new(Watch {
                file,
                state: Mutex::new(State::default()),
            });
            let theirs = Arc::clone(&watch);
            std::thread::Builder::new()
                .name("dirlock-watch".into())
                .stack_size(STACK)
                .spawn(move || run(&theirs, fd))
                .ok()?;
            all.push(Arc::clone(&watch));
            watch
        }
    };
    drop(all);
    // Subscribed even when the watch has just ended: the waiter reads `ended` before it sleeps.
    watch.state().bells.push(Arc::clone(bell));
    Some(Subscription {
        watch,
        bell: Arc::clone(bell),
    })
}

/// A watcher thread: waits for the file's write lock to go, then rings every bell.
fn run(watch: &Arc<Watch>, fd: OwnedFd) {
    let ended = match ofd::wait_unlocked(fd.as_fd()) {
        Ok(()) => Ended::Unlocked,
        Err(_) => Ended::Failed,
    };
    // The waiters first: a takeover is waiting on this.
    let bells = {
        let mut state = watch.state();
        state.ended = Some(ended);
        std::mem::take(&mut state.bells)
    };
    for bell in bells {
        // An eventfd write fails only when its counter would overflow, which a waiter that
        // reads it after every wake-up never lets happen; the waiter also reads `ended`.
        let _ = rustix::io::write(&*bell, &1u64.to_ne_bytes());
    }
    // Out of the registry before the descriptor closes: while it is listed, its file's inode
    // cannot be reused, so the key names one file only. (Until the close, this thread holds a
    // read lock on the file, which no probe counts: ofd.rs.)
    watches().retain(|w| !Arc::ptr_eq(w, watch));
    drop(fd);
}
