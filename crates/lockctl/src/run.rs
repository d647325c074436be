//! `lockctl run`: take locks in order, run a command under them, release, pass its status on.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use lockyard::{Acquired, DynLocker, DynManager, Error, LockId, Locker};

use crate::exit::{Failed, Failure};

/// Takes every lock in `ids`, in order, within `timeout` if one is given.
fn take_all(
    manager: &DynManager,
    ids: &[u32],
    timeout: Option<Duration>,
) -> Result<Vec<DynLocker>, Failed> {
    let deadline = timeout.map(|t| Instant::now().checked_add(t));
    let mut held: Vec<DynLocker> = Vec::with_capacity(ids.len());
    for &id in ids {
        let lock = manager.retrieve(LockId(id))?;
        let acquired = match deadline {
            None => lock.lock(),
            Some(None) => lock.lock(),
            Some(Some(deadline)) => {
                lock.try_lock_for(deadline.saturating_duration_since(Instant::now()))
            }
        };
        match acquired {
            Ok(Acquired::Clean) => held.push(lock),
            Ok(Acquired::OwnerDied) => {
                eprintln!(
                    "lockctl: lock {id}: its previous holder died holding it; \
                     what it protected may be half-written"
                );
                held.push(lock);
            }
            Err(error) => {
                release(&held);
                let message = match &error {
                    Error::Timeout => format!(
                        "timed out waiting for lock {id} (held {} of {} locks)",
                        held.len(),
                        ids.len()
                    ),
                    Error::Deadlock { cycle } => {
                        format!("deadlock waiting for lock {id}, gave up: {cycle}")
                    }
                    other => format!("lock {id}: {other}"),
                };
                return Err(Failed::new(Failure::of(&error), message));
            }
        }
    }
    Ok(held)
}

/// Releases in reverse order; a failure to release is reported, not fatal.
fn release(held: &[DynLocker]) {
    for lock in held.iter().rev() {
        if let Err(e) = lock.unlock() {
            eprintln!("lockctl: releasing lock {}: {e}", lock.id());
        }
    }
}

/// Runs `command` under the locks and returns the exit code to leave with: the command's own,
/// or 128 + the signal that killed it (as a shell reports it).
pub(crate) fn run(
    manager: &DynManager,
    ids: &[u32],
    timeout: Option<Duration>,
    command: &[OsString],
) -> Result<ExitCode, Failed> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| Failed::new(Failure::Usage, "run: no command after --"))?;
    let held = take_all(manager, ids, timeout)?;
    let status = Command::new(program).args(args).status();
    release(&held);
    let status = status.map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        };
        eprintln!("lockctl: cannot run {}: {e}", program.to_string_lossy());
        code
    });
    let code = match status {
        Err(code) => code,
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 1,
        },
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
