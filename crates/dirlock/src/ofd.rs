//! Open file description locks on record files (`fcntl(2)` `F_OFD_SETLK`, `F_OFD_GETLK`): the
//! kernel's own word on whether a record's writer still has it open.
//!
//! A holder write-locks its record file through the descriptor it created it with, before the
//! record is published. That descriptor is close-on-exec, and the holder closes it only after
//! removing every level name of the file. The kernel drops an OFD lock when the last
//! descriptor of its open file description closes: at `exec` (close-on-exec), at exit, or
//! when the holder lets go of the file. So while the holder's process runs its program and
//! claims a level through the file, the file is locked; an unlocked published record means its
//! writer has exited or called `exec`. (The lock may outlive the claim, in forked children
//! that inherited the descriptor: that errs on the side of "held".)
//!
//! Unlike a classic `F_SETLK` lock, an OFD lock is not dropped when the process closes some
//! other descriptor of the same file (another handle reading `lock0`), and it belongs to the
//! open file description, not to the thread that took it.
//!
//! Waiters learn of the release through the same lock: a watcher thread asks for a *read* lock
//! on the holder's file and blocks (`F_OFD_SETLKW`) until the kernel grants it, which is the
//! moment no write lock is left (watch.rs). So the probe asks whether a *read* lock could be
//! placed: only a write lock, which only writers of records take, answers "locked"; a watcher's
//! read lock, held for the microseconds between its grant and its `close`, never does.
//!
//! Invariants (cited by the `SAFETY` comments below):
//! 1. The `flock` passed to `fcntl(2)` is a live, initialised local that the call may read and,
//!    for `F_OFD_GETLK`, write; nothing else refers to it.
//! 2. The descriptor is borrowed, so it stays open for the duration of the call.
#![allow(
    unsafe_code,
    reason = "fcntl(2) with a struct flock has no safe wrapper (rustix's fcntl_lock is F_SETLK)"
)]

use std::os::fd::{AsRawFd, BorrowedFd};

/// What `F_OFD_GETLK` says about a record file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// Some other open file description holds a lock on the file.
    Locked,
    /// Nobody holds a lock on the file.
    Unlocked,
    /// Not asked (the record promised no lock), or the file system could not tell.
    Unknown,
}

/// A whole-file lock request of type `l_type`; `l_pid` is 0, as OFD commands require.
fn whole_file(l_type: libc::c_short) -> libc::flock {
    // SAFETY: `flock` is plain integers, for which all-zero bytes are a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = l_type;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start 0 and l_len 0: from the first byte to the end, however the file grows.
    fl
}

/// Write-locks the whole file through `fd` (`fcntl(2)` `F_OFD_SETLK`, `F_WRLCK`) without
/// waiting; whether the lock was taken.
///
/// `fd` must be open for writing. Any failure (a kernel older than 3.15, a file system without
/// locks, `ENOLCK`) is `false`: the caller then promises no lock in its record, and readers
/// fall back on the pid and start time alone.
pub(crate) fn lock(fd: BorrowedFd<'_>) -> bool {
    let mut fl = whole_file(libc::F_WRLCK as libc::c_short);
    // SAFETY: by invariant 1 `fl` is a valid flock the call may read; by invariant 2 `fd` is
    // open.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    r == 0
}

/// Whether an open file description other than `fd`'s holds a write lock on the file
/// (`fcntl(2)` `F_OFD_GETLK`, asking about a whole-file read lock, which only a write lock
/// conflicts with: the read locks of waiters' watchers are not an answer).
///
/// `fd` may be read-only: the query takes no lock. An error is [`Probe::Unknown`].
pub(crate) fn probe(fd: BorrowedFd<'_>) -> Probe {
    let mut fl = whole_file(libc::F_RDLCK as libc::c_short);
    // SAFETY: by invariant 1 `fl` is a valid flock the call may read and overwrite with the
    // first conflicting lock; by invariant 2 `fd` is open.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r != 0 {
        Probe::Unknown
    } else if fl.l_type == libc::F_UNLCK as libc::c_short {
        Probe::Unlocked
    } else {
        Probe::Locked
    }
}

/// Waits until no other open file description holds a write lock on the file, then read-locks
/// it through `fd` (`fcntl(2)` `F_OFD_SETLKW`, `F_RDLCK`, whole file): returns when the writer
/// of the record has let go of its descriptor, by exit, `exec` or release. Interrupted waits are
/// resumed. The read lock lasts until `fd`'s description closes.
///
/// `fd` must be open for reading.
///
/// # Errors
///
/// What `fcntl(2)` reports: `ENOLCK`, `EINVAL` on a file system without OFD locks, `EBADF`.
pub(crate) fn wait_unlocked(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    loop {
        let mut fl = whole_file(libc::F_RDLCK as libc::c_short);
        // SAFETY: by invariant 1 `fl` is a valid flock the call may read; by invariant 2 `fd` is
        // open for the whole call, however long it blocks.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLKW, &mut fl) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_lock_is_seen_through_another_description_until_its_last_descriptor_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record");
        let writer = std::fs::File::create(&path).unwrap();
        let reader = std::fs::File::open(&path).unwrap();
        assert_eq!(probe(reader.as_fd()), Probe::Unlocked);
        assert!(lock(writer.as_fd()));
        assert_eq!(probe(reader.as_fd()), Probe::Locked);
        // A duplicate shares the description: closing one copy keeps the lock.
        let copy = writer.try_clone().unwrap();
        drop(writer);
        assert_eq!(probe(reader.as_fd()), Probe::Locked);
        // Another reader of the same file closing (a classic F_SETLK lock would go here).
        drop(std::fs::File::open(&path).unwrap());
        assert_eq!(probe(reader.as_fd()), Probe::Locked);
        drop(copy);
        assert_eq!(probe(reader.as_fd()), Probe::Unlocked);
    }

    #[test]
    fn a_watchers_read_lock_is_granted_at_release_and_is_no_answer_to_the_probe() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record");
        let writer = std::fs::File::create(&path).unwrap();
        assert!(lock(writer.as_fd()));
        let watcher = std::fs::File::open(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let granted = wait_unlocked(watcher.as_fd());
            tx.send(()).unwrap();
            (granted.is_ok(), watcher)
        });
        // Still blocked while the writer's description is open (no timing: a grant now would be
        // a bug whenever it is seen).
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            rx.try_recv().is_err(),
            "granted while the writer holds its lock"
        );
        drop(writer);
        let (granted, watcher) = thread.join().unwrap();
        assert!(granted);
        // The watcher holds a read lock now; a probe from a third description says unlocked.
        let reader = std::fs::File::open(&path).unwrap();
        assert_eq!(probe(reader.as_fd()), Probe::Unlocked);
        drop(watcher);
    }
}
