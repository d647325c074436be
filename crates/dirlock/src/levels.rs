//! The multi-level takeover: a stale level N is replaced only by the holder of level N+1.
//!
//! Invariants (argued in the crate README):
//! 1. A level name is created only by `link(2)`, which fails if it exists, or replaced by
//!    `rename(2)` from its staging name by the holder of the next level.
//! 2. A level is removed only by its holder (`unlock`, checked by inode), by the holder of the
//!    next level replacing it, or by an operator's `break_lock`.
//! 3. A level is replaced only after its holder was judged certainly dead, and only if, once
//!    the next level is held, it still holds the very record (inode and bytes) that was judged.
//!    A dead holder cannot change its level, and nobody else can while we hold the next one, so
//!    the record we replace is the one we judged.

use lock_api::{Acquired, Error, Result};

use crate::dir::{Dir, LEVELS, RecordFile, Seen, level_name};
use crate::liveness::{HeldBecause, Identity, Verdict, judge};

/// How often a level is re-examined within one attempt when it keeps changing under us
/// (released, re-taken) before the attempt reports it as busy.
const RETRIES: usize = 8;

/// The result of one attempt on one level.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// We now hold the level.
    Taken(Acquired),
    /// A live (or unverifiable) holder has it, or another process is reclaiming it: what stood
    /// in the way, for a waiter to watch (wait.rs).
    Busy(Blocked),
    /// Our record file lost every name and cannot be linked again: the caller writes a new
    /// one and tries again at once. We hold no level.
    Spent,
}

/// What made an attempt busy, as far as a waiter needs to know.
#[derive(Debug)]
pub(crate) enum Blocked {
    /// A process of this host, boot and pid namespace that holds the level and was judged
    /// alive (or unverifiable, which the second field says): its record and the descriptor it
    /// was read through. (Boxed: the uncontended path returns `Attempt::Taken`, and should not
    /// move a record around.)
    Process(Box<Seen>, HeldBecause),
    /// A holder on another host: it releases on another machine, which inotify does not report
    /// on a network file system.
    ForeignHost,
    /// A holder in another pid namespace of this host: held until it releases or an operator
    /// breaks the lock, both changes made on this host.
    ForeignNamespace,
    /// The level kept changing under the attempt.
    Churn,
}

impl Blocked {
    fn held(why: HeldBecause, seen: Seen) -> Blocked {
        match why {
            HeldBecause::Alive | HeldBecause::Unverifiable => Blocked::Process(Box::new(seen), why),
            HeldBecause::ForeignHost => Blocked::ForeignHost,
            HeldBecause::ForeignPidNamespace => Blocked::ForeignNamespace,
        }
    }
}

/// Tries to take level `n` with `file` without waiting, reclaiming it from a dead holder
/// through level `n + 1` if needed.
///
/// # Errors
///
/// Any error reading, judging or replacing a level: a damaged record (`Corrupt`,
/// `Incompatible`), an OS error (`Io`), or every level up to the last one stale (`Corrupt`).
/// On error this call holds no level it did not hold before.
pub(crate) fn try_take(
    dir: &Dir,
    file: &RecordFile<'_>,
    me: &Identity,
    n: usize,
) -> Result<Attempt> {
    take(dir, file, me, n, true)
}

/// [`try_take`] for a caller whose own `link(2)` of `file` as level `n` has just failed with
/// `EEXIST`: the first look is at the level's record, not another `link`.
///
/// # Errors
///
/// As for [`try_take`].
pub(crate) fn try_take_taken(
    dir: &Dir,
    file: &RecordFile<'_>,
    me: &Identity,
    n: usize,
) -> Result<Attempt> {
    take(dir, file, me, n, false)
}

fn take(
    dir: &Dir,
    file: &RecordFile<'_>,
    me: &Identity,
    n: usize,
    mut publish: bool,
) -> Result<Attempt> {
    if n >= LEVELS {
        return Err(Error::corrupt(format!(
            "lock directory {}: every level up to lock{} is held by a dead process; an operator \
             must break the lock",
            dir.path().display(),
            LEVELS - 1
        )));
    }
    for _ in 0..RETRIES {
        if publish {
            if file.is_spent()? {
                return Ok(Attempt::Spent);
            }
            if dir.publish(file, n)? {
                return Ok(Attempt::Taken(Acquired::Clean));
            }
        }
        publish = true;
        let Some(seen) = dir.read(n)? else {
            // Released between our link and our read: try the link again.
            continue;
        };
        if let Verdict::Held(why) = judge(&seen.record, seen.lock, me)? {
            return Ok(Attempt::Busy(Blocked::held(why, seen)));
        }
        // Stale. Only the holder of the next level may replace it.
        match try_take(dir, file, me, n + 1)? {
            Attempt::Taken(_) => {}
            other => return Ok(other),
        }
        let replaced = replace_if_unchanged(dir, file, n, &seen);
        let released = file
            .id()
            .and_then(|id| dir.remove_if(&level_name(n + 1), id));
        match (replaced, released) {
            (Ok(true), Ok(_)) => return Ok(Attempt::Taken(Acquired::OwnerDied)),
            // The level changed hands (someone reclaimed it before we held the next level, or
            // an operator broke it): look again.
            (Ok(false), Ok(_)) => continue,
            (Ok(true), Err(e)) => {
                // We hold level n but could not release level n + 1: give level n back rather
                // than report an error while holding it.
                let _ = file.id().and_then(|id| dir.remove_if(&level_name(n), id));
                return Err(e);
            }
            (Err(e), _) | (Ok(false), Err(e)) => return Err(e),
        }
    }
    Ok(Attempt::Busy(Blocked::Churn))
}

/// Replaces level `n` by our record if it still is exactly `seen`; whether it did.
fn replace_if_unchanged(
    dir: &Dir,
    file: &RecordFile<'_>,
    n: usize,
    seen: &crate::dir::Seen,
) -> Result<bool> {
    match dir.read(n)? {
        Some(now) if now.same_record(seen) => {
            dir.replace(file, n)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Clears what reclaimers that died mid-takeover left above the master level: every stale
/// level N >= 1 is reclaimed and released, and the staging name it guarded removed.
///
/// Leftovers are harmless (the next takeover of the level below goes through them), so this
/// runs only after taking the master level, never blocks, and skips levels held by live
/// processes. Returns whether nothing is left above the master level (no level was busy).
///
/// # Errors
///
/// As for [`try_take`]; the caller holds the master level whatever happens here.
pub(crate) fn tidy(dir: &Dir, file: &RecordFile<'_>, me: &Identity) -> Result<bool> {
    let mut clear = true;
    for n in dir.upper_levels()? {
        let name = level_name(n);
        match try_take(dir, file, me, n)? {
            Attempt::Taken(_) => {
                let staging = dir.remove_staging(n - 1);
                dir.remove_if(&name, file.id()?)?;
                staging?;
            }
            Attempt::Busy(_) => clear = false,
            // Cannot happen while we hold the master level through this file; stop anyway.
            Attempt::Spent => return Ok(false),
        }
    }
    Ok(clear)
}
