//! dirlock: one lock over a directory, with multi-level recovery from dead holders.
#![doc = include_str!("../README.md")]

mod dir;
mod levels;
mod liveness;
mod ofd;
mod record;
mod table;
mod wait;
mod watch;
mod wipeonfork;

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub use lock_api;
use lock_api::{Acquired, Error, Holder, Inspect, LockId, Locker, Result};
use rustix::process::Pid;

pub use crate::liveness::{HeldBecause, StaleBecause, Verdict};
pub use crate::record::{FORMAT_VERSION, MAGIC, MAX_RECORD_LEN, OLDEST_FORMAT_VERSION, Record};
pub use crate::table::{DirTable, MARKER, MAX_CAPACITY, STORE_VERSION};

use crate::dir::{Dir, FileId, Owned, Place, RecordFile, Seen, level_name, takeover_name};
use crate::levels::{Attempt, Blocked, tidy, try_take_taken};
use crate::liveness::Identity;
use crate::ofd::Probe;
use crate::wait::Waiter;
use crate::wipeonfork::getpid;

/// How many fresh record files one `try_acquire` writes when the previous one was spent.
const SPENT_RETRIES: usize = 4;

/// How many handles of one process may keep a [`Busy`] at once. Each keeps two descriptors
/// (the holder's record file and a pidfd), so a program that tries many busy locks once and
/// keeps the handles (a table of a thousand locks) would otherwise hold three descriptors per
/// handle instead of one, and meet the usual limit of 1024 at a third of the handles. Past the
/// budget a busy `try_lock` keeps nothing and the next one makes the full attempt (ARCHITECTURE,
/// "A `try_lock` that finds the lock held, again").
const MAX_KEPT_BUSY: usize = 64;

/// The [`Busy`] records kept now in this process (at most [`MAX_KEPT_BUSY`]).
static KEPT_BUSY: AtomicUsize = AtomicUsize::new(0);

/// The name of the master lock file inside the directory.
pub const MASTER: &str = "lock0";

/// The number of levels (`lock0` to `lock15`): how many reclaimers in a row may die in the
/// middle of a takeover before an operator must call [`DirLock::break_lock`].
pub const LEVELS: usize = dir::LEVELS;

/// One lock over a directory, held through the file `lock0` inside it.
///
/// Lock it through [`Locker`] (`lock`, `try_lock`, `try_lock_for`, `unlock`, `guard`): bring
/// the trait into scope with `use dirlock::lock_api::Locker`.
///
/// Ownership is per handle: a lock taken through one `DirLock` is held by that handle (in this
/// process), not by the process. Another handle, in this or any process, sees it held. The
/// handle is `Sync`, so threads may share it; any of them may unlock what it holds.
///
/// Dropping a handle that holds the lock releases it (errors are ignored: call
/// [`unlock`](Locker::unlock) to see them). A forked child inherits a copy of the handle but
/// not the lock: the lock belongs to the process that took it, and the child's copy reports
/// `NotHeld`.
///
/// # Re-locking
///
/// Not re-entrant: [`try_lock`](Locker::try_lock) on a handle that holds the lock returns
/// `Ok(None)`, and [`lock`](Locker::lock) waits until the lock is released (by another thread
/// through the same handle), so a single thread that locks twice waits forever and
/// [`try_lock_for`](Locker::try_lock_for) times out.
pub struct DirLock {
    dir: Dir,
    id: LockId,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    held: Option<Held>,
    /// Whether the levels above `lock0` may hold a dead reclaimer's leftovers that the next
    /// acquisition through this handle should clear: true for a new handle, after any attempt
    /// that found `lock0` taken, and after a clearing that could not finish. (Leftovers only
    /// come from reclaims, which only happen while `lock0` exists.)
    tidy_due: bool,
    /// The live holder that this handle's last `try_lock` found in `lock0`, so that the next one
    /// can find it still there in three system calls instead of some twenty (`still_held`).
    busy: Option<Busy>,
}

/// A live holder of `lock0`, as a `try_lock` found it.
///
/// Kept only for a record of this host, boot and pid namespace whose holder was judged alive
/// (not merely unverifiable) and that promises an OFD lock which was held when read. While the
/// file stays `lock0`, the pidfd stays unreadable and the file stays locked, the full attempt
/// would find what this found: the same record (a record file
/// is never rewritten, and its inode number cannot name another file while `file` is open
/// here), its process alive with the same start time (the pidfd is of that very process, and
/// becomes readable once every thread of it has exited, the record's "zombie" test), and its
/// descriptor not closed by exit or `exec` (the OFD lock). Whatever else changes sends the
/// next attempt the full way, which alone decides anything.
#[derive(Debug)]
struct Busy {
    /// The record file's identity and the read-only descriptor it was read through.
    id: FileId,
    file: OwnedFd,
    /// The record, judged again when the pidfd is opened.
    record: Record,
    /// A pidfd of the holder, opened at the second look (a `try_lock` that is not repeated
    /// does not pay for it) and verified to be the holder's (`liveness::holder_pidfd`).
    pidfd: Option<OwnedFd>,
    /// This record's place in the process's budget ([`MAX_KEPT_BUSY`]).
    _kept: Kept,
}

/// One place in the budget of kept [`Busy`] records, given back when dropped.
#[derive(Debug)]
struct Kept(());

impl Kept {
    /// A place, if fewer than [`MAX_KEPT_BUSY`] are taken.
    fn take() -> Option<Kept> {
        KEPT_BUSY
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_KEPT_BUSY).then_some(n + 1)
            })
            .ok()
            .map(|_| Kept(()))
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        KEPT_BUSY.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Busy {
    /// What to keep of an attempt that found the lock busy; `None` when it cannot be checked
    /// cheaply (another host or namespace, a holder whose start time `/proc` hides, a record
    /// without an OFD lock, a file not locked) or the process keeps [`MAX_KEPT_BUSY`] already.
    fn of(blocked: Blocked) -> Option<Busy> {
        let Blocked::Process(seen, HeldBecause::Alive) = blocked else {
            return None;
        };
        let Seen {
            id,
            record,
            lock,
            fd,
            ..
        } = *seen;
        if !(record.ofd_lock && lock == Probe::Locked) {
            return None;
        }
        Some(Busy {
            id,
            file: fd,
            record,
            pidfd: None,
            _kept: Kept::take()?,
        })
    }

    /// Whether the holder is still there, as the full attempt would find it (type docs).
    fn still_held(&mut self, dir: &Dir, me: &Identity) -> bool {
        if !matches!(dir.file_id(MASTER), Ok(Some(id)) if id == self.id) {
            return false;
        }
        let pidfd = match &mut self.pidfd {
            Some(pidfd) => pidfd,
            slot @ None => {
                let liveness::HolderPidfd::Verified(pidfd, HeldBecause::Alive) =
                    liveness::holder_pidfd(&self.record, me)
                else {
                    return false;
                };
                slot.insert(pidfd)
            }
        };
        let mut fds = [rustix::event::PollFd::new(
            pidfd,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if !matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(0)) {
            return false;
        }
        ofd::probe(self.file.as_fd()) == Probe::Locked
    }
}

#[derive(Debug)]
struct Held {
    /// Our published record, kept open so its inode number cannot be reused while we hold it.
    file: Owned,
    /// The process that took the lock (a forked child does not hold it).
    pid: Pid,
    /// Clearing leftovers failed, so our record may still have an upper level's name: unlock
    /// then compares `lock0`'s inode rather than counting our file's names.
    exact: bool,
}

impl DirLock {
    /// A handle on the lock over `dir`, which must exist and be writable.
    ///
    /// Nothing is written until the lock is taken.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when `dir` does not exist; [`Error::InvalidArgument`] when it is not
    /// a directory or is a symlink; [`Error::Io`] when it cannot be opened or is not writable.
    pub fn new(dir: impl AsRef<Path>) -> Result<DirLock> {
        DirLock::open_at(dir.as_ref(), Place::Given)
    }

    /// A handle on the lock over `dir`, which is at `place`: where a `dir:` store's lock
    /// directory is missing or not a directory, the error is `Corrupt` rather than
    /// [`new`](DirLock::new)'s `NotFound` or `InvalidArgument`.
    pub(crate) fn open_at(dir: &Path, place: Place) -> Result<DirLock> {
        Ok(DirLock {
            dir: Dir::open_at(dir, place)?,
            id: LockId(0),
            state: Mutex::new(State {
                held: None,
                tidy_due: true,
                busy: None,
            }),
        })
    }

    /// The same handle reporting `id` from [`Locker::id`] (for tables of directory locks).
    #[must_use]
    pub fn with_id(mut self, id: LockId) -> DirLock {
        self.id = id;
        self
    }

    /// The locked directory, as given to [`new`](DirLock::new).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Whether this handle holds the lock.
    pub fn is_held(&self) -> bool {
        self.holds(&self.state())
    }

    /// The record in `lock0`, or `None` when the lock is free.
    ///
    /// # Errors
    ///
    /// As for [`try_lock`](Locker::try_lock) when `lock0` is damaged.
    pub fn holder_record(&self) -> Result<Option<Record>> {
        Ok(self.dir.read(0)?.map(|seen| seen.record))
    }

    /// The record in `lock0` and what this process concludes from it (alive, dead, foreign).
    ///
    /// # Errors
    ///
    /// As for [`try_lock`](Locker::try_lock).
    pub fn status(&self) -> Result<Option<(Record, Verdict)>> {
        let me = liveness::current()?;
        match self.dir.read(0)? {
            Some(seen) => {
                let verdict = liveness::judge(&seen.record, seen.lock, &me)?;
                Ok(Some((seen.record, verdict)))
            }
            None => Ok(None),
        }
    }

    /// For operators: removes every level's lock file (`lock0` to `lock15`) and staging file,
    /// whoever holds them. Returns whether `lock0` existed.
    ///
    /// Use it when a holder on another host or in another pid namespace is known to be dead,
    /// or when a lock file is damaged. Breaking a lock whose holder is alive breaks mutual
    /// exclusion: that holder keeps working as if it held the lock (its `unlock` then reports
    /// [`Error::Lost`]).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] when a lock file is a directory, symlink or other non-regular file
    /// (it is not removed; an operator must look at it), [`Error::Io`] for OS errors. Files
    /// already removed stay removed.
    pub fn break_lock(&self) -> Result<bool> {
        let mut state = self.state();
        // Our record's descriptor (and its OFD lock) goes only after its name: until then a
        // reader must not take our own record for that of a holder that called exec.
        let _held = state.held.take();
        let master = self.dir.remove_regular(MASTER)?;
        for n in 0..LEVELS {
            if n > 0 {
                self.dir.remove_regular(&level_name(n))?;
            }
            self.dir.remove_regular(&takeover_name(n))?;
        }
        Ok(master)
    }

    /// One attempt at `lock0` with a fresh record; `None` when it is busy. When the last
    /// attempt found a live holder and that holder is still there, nothing is written (`Busy`).
    fn attempt(&self, state: &mut State, me: &Identity) -> Result<Option<Acquired>> {
        if let Some(busy) = &mut state.busy {
            if busy.still_held(&self.dir, me) {
                return Ok(None);
            }
            state.busy = None;
        }
        for _ in 0..SPENT_RETRIES {
            let file = self.dir.write_record(me)?;
            match self.take_master(state, &file, me)? {
                Attempt::Taken(acquired) => return Ok(Some(self.taken(state, file, me, acquired))),
                Attempt::Busy(blocked) => {
                    state.busy = Busy::of(blocked);
                    return Ok(None);
                }
                Attempt::Spent => {}
            }
        }
        // The levels kept changing under us: as good as busy.
        Ok(None)
    }

    /// Takes `lock0` with `file`: one `link(2)` when it is free; otherwise the multi-level
    /// attempt, and the leftovers of dead reclaimers are looked for after the next success.
    #[inline]
    fn take_master(
        &self,
        state: &mut State,
        file: &RecordFile<'_>,
        me: &Identity,
    ) -> Result<Attempt> {
        if self.dir.publish(file, 0)? {
            return Ok(Attempt::Taken(Acquired::Clean));
        }
        state.tidy_due = true;
        try_take_taken(&self.dir, file, me, 0)
    }

    fn acquire(&self, deadline: Option<Instant>) -> Result<Acquired> {
        let me = liveness::current()?;
        // Set up only once the lock was found busy: the attempt after it catches a release
        // that came before the watch.
        let mut waiter: Option<Waiter> = None;
        loop {
            // What the attempt found in the way; `None` when this handle holds the lock.
            let mut blocked = None;
            {
                let mut state = self.state();
                if !self.holds(&state) {
                    // A fresh record per attempt: its time is when the lock was taken, not
                    // when the wait began.
                    let file = self.dir.write_record(&me)?;
                    match self.take_master(&mut state, &file, &me)? {
                        Attempt::Taken(acquired) => {
                            return Ok(self.taken(&mut state, file, &me, acquired));
                        }
                        Attempt::Busy(why) => blocked = Some(why),
                        // The levels changed under us: look again at once.
                        Attempt::Spent => continue,
                    }
                }
            }
            match &mut waiter {
                None => waiter = Some(Waiter::new(&self.dir)),
                Some(waiter) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(Error::Timeout);
                    }
                    waiter.wait(blocked, &me, deadline);
                }
            }
        }
    }

    /// Records that we hold level 0 and, when due, clears leftovers of dead reclaimers.
    fn taken(
        &self,
        state: &mut State,
        file: RecordFile<'_>,
        me: &Identity,
        acquired: Acquired,
    ) -> Acquired {
        let mut exact = false;
        if state.tidy_due {
            // Tidying is best effort: the lock is held whatever it finds, and a level it cannot
            // read will give its error to whoever needs that level. It is due again until a
            // pass finds nothing left above lock0.
            let tidied = tidy(&self.dir, &file, me);
            exact = tidied.is_err();
            state.tidy_due = !matches!(tidied, Ok(true));
        }
        state.held = Some(Held {
            file: file.into_owned(),
            pid: me.pid,
            exact,
        });
        state.busy = None;
        acquired
    }

    #[inline]
    fn holds(&self, state: &State) -> bool {
        state.held.as_ref().is_some_and(|held| held.pid == getpid())
    }

    #[inline]
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        if self.is_held() {
            // Drop cannot report; `unlock` is the way to see this error.
            let _ = Locker::unlock(self);
        }
    }
}

impl fmt::Debug for DirLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirLock")
            .field("path", &self.dir.path())
            .field("id", &self.id)
            .field("held", &self.is_held())
            .finish()
    }
}

/// Locking a directory.
///
/// What does not fit the table contract: `free` is [`Error::Unsupported`] (a directory lock is
/// not allocated from a table), and ownership is per handle, not per manager.
impl Locker for DirLock {
    fn id(&self) -> LockId {
        self.id
    }

    /// Waits until the lock is taken.
    ///
    /// # Errors
    ///
    /// As for [`try_lock`](Locker::try_lock); a damaged lock file ends the wait with its error
    /// rather than waiting forever.
    fn lock(&self) -> Result<Acquired> {
        self.acquire(None)
    }

    /// Takes the lock without waiting and says how: [`Acquired::OwnerDied`] when it was
    /// reclaimed from a dead holder (whatever it protected may be half-written).
    ///
    /// Returns `Ok(None)` when the lock is held by a live process (this handle included), by a
    /// process on another host or in another pid namespace, or while another process reclaims
    /// it.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] when a lock file is not a valid record (garbage, truncated, too
    /// large, a directory, a symlink): it is never treated as stale and never removed;
    /// [`Error::Incompatible`] for a record of another format version; [`Error::Io`] for OS
    /// errors (`open`, `write`, `link`, `rename`, `kill`). After an error this handle does not
    /// hold the lock.
    fn try_lock(&self) -> Result<Option<Acquired>> {
        let mut state = self.state();
        if self.holds(&state) {
            return Ok(None);
        }
        let me = liveness::current()?;
        self.attempt(&mut state, &me)
    }

    /// Waits at most `timeout` for the lock.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the time elapsed first; otherwise as for
    /// [`try_lock`](Locker::try_lock).
    fn try_lock_for(&self, timeout: Duration) -> Result<Acquired> {
        // A timeout too long to add to the clock waits as `lock` does.
        self.acquire(Instant::now().checked_add(timeout))
    }

    /// Releases the lock this handle holds.
    ///
    /// Only the file this handle published is removed: the name `lock0` is checked to still be
    /// our file (same device and inode, kept open while held) before `unlink(2)`.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] when this handle does not hold the lock; [`Error::Lost`] when it did,
    /// but `lock0` is no longer its record (an operator broke the lock): nothing is removed
    /// and the handle no longer holds it; [`Error::Io`] when `unlink(2)` fails (the handle then
    /// still holds the lock).
    fn unlock(&self) -> Result<()> {
        let mut state = self.state();
        if !self.holds(&state) {
            return Err(Error::NotHeld(self.id));
        }
        let Some(held) = state.held.take() else {
            return Err(Error::NotHeld(self.id));
        };
        match self.dir.remove_own(MASTER, &held.file, held.exact) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Lost),
            Err(e) => {
                state.held = Some(held);
                Err(e)
            }
        }
    }

    fn free(&self) -> Result<()> {
        Err(Error::Unsupported("free of a directory lock"))
    }
}

/// The holder as recorded in `lock0` and judged from this process (pid, host, owner, since, dead).
impl Inspect for DirLock {
    fn holder(&self) -> Result<Option<Holder>> {
        match self.dir.read(0)? {
            Some(seen) => Ok(Some(holder(&seen, &*liveness::current()?)?)),
            None => Ok(None),
        }
    }
}

/// The holder a record names, as [`Inspect::holder`] and [`DirTable`]'s `held` report it:
/// `pid` and `host` from the record, `owner` `dir <pid>/<start time>/<nonce>` (the nonce is
/// fresh in every record, so the key tells every holding apart, and ownership is per handle),
/// `since` the record's write time, and `dead` when this process judges the holder certainly
/// dead (the next acquirer gets `OwnerDied`).
///
/// # Errors
///
/// As [`DirLock::status`].
fn holder(seen: &Seen, me: &Identity) -> Result<Holder> {
    let record = &seen.record;
    let verdict = liveness::judge(record, seen.lock, me)?;
    Ok(Holder::default()
        .pid(record.pid)
        .host(record.host.clone())
        .owner(format!(
            "dir {}/{}/{:016x}",
            record.pid, record.start_time, record.nonce
        ))
        .since(record.time())
        .dead(matches!(verdict, Verdict::Stale(_))))
}
