//! Who has a store open, as far as removing it goes: every open manager holds a shared `flock`
//! on the store's marker, and a remover of an unused store ([`claim`]) takes an exclusive one
//! without waiting, so it fails while any manager has the store open.
//!
//! The opener registers last ([`register`]): it takes its shared lock (waiting while a remover
//! holds the exclusive one), then fails with `NotFound` if the marker has no name left, the
//! store having been deleted meanwhile. The remover holds its exclusive lock until the store is
//! deleted (or put back). The kernel grants one file's `flock` locks in one order, so an opener
//! that the remover's try did not see registered after the remover took its lock, and sees the
//! outcome: the store deleted, or kept. No manager goes on with a store such a remover deleted.
//!
//! Both halves are written once, over [`RegistrySys`]: store.rs gives them the system calls,
//! and the loom model (`registry_model.rs`) a modelled kernel, with three planted bugs it must
//! catch.

use lock_api::{Error, Result};

/// What the protocol needs of the kernel, for one store's marker.
pub(crate) trait RegistrySys {
    /// Planted bug (a), set only by the model check: the opener looks at the marker's name
    /// before it registers.
    const NAME_FIRST: bool = false;
    /// Planted bug (b), set only by the model check: the remover lets go before it deletes.
    const RELEASE_FIRST: bool = false;
    /// Planted bug (c), set only by the model check: the opener does not register.
    const NO_REGISTRATION: bool = false;
    /// Takes a shared lock on the marker without waiting; `false` while a remover holds it.
    fn try_shared(&self) -> Result<bool>;
    /// Takes an exclusive lock on the marker without waiting; `false` while anyone holds it.
    fn try_exclusive(&self) -> Result<bool>;
    /// Lets go of this description's lock.
    fn release(&self) -> Result<()>;
    /// Whether the marker still has a name (its link count is not zero).
    fn linked(&self) -> Result<bool>;
    /// Waits a little before the opener tries again; fails once it has waited long enough for
    /// a remover that will not finish.
    fn pause(&self) -> Result<()>;
}

/// The opener's registration, the last step of an open.
///
/// # Errors
///
/// `NotFound` when the store was deleted while it was being opened; whatever
/// [`RegistrySys::pause`] fails with (a remover that does not finish); whatever the system calls
/// fail with.
pub(crate) fn register<S: RegistrySys>(sys: &S, what: &str) -> Result<()> {
    let removed = || Error::NotFound {
        what: format!("{what} (removed while it was being opened)"),
    };
    if S::NAME_FIRST && !sys.linked()? {
        return Err(removed());
    }
    if !S::NO_REGISTRATION {
        while !sys.try_shared()? {
            sys.pause()?;
        }
    }
    if !S::NAME_FIRST && !sys.linked()? {
        return Err(removed());
    }
    Ok(())
}

/// The remover: takes the exclusive lock, runs `delete` under it, and lets go after.
///
/// # Errors
///
/// `InUse` when a manager has the store open (or another remover holds it), and `delete` is
/// not run; whatever `delete` and the system calls fail with.
pub(crate) fn claim<S: RegistrySys>(
    sys: &S,
    what: &str,
    delete: impl FnOnce() -> Result<()>,
) -> Result<()> {
    if !sys.try_exclusive()? {
        return Err(Error::InUse {
            what: format!("{what} (a manager has it open, or another process is removing it)"),
        });
    }
    if S::RELEASE_FIRST {
        sys.release()?;
    }
    let deleted = delete();
    if !S::RELEASE_FIRST {
        sys.release()?;
    }
    deleted
}
