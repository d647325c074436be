//! Removing a segment only while no manager has it open, and the opener's side of it.
//!
//! `remove` unlinks a segment whoever has it open; the managers that do keep locking in the
//! unlinked file while every later `open` of the name finds nothing (or makes a new segment), so
//! the two sides no longer exclude each other. [`remove_unused`] refuses instead, and decides
//! in one step with the unlink, so a manager that opens the segment meanwhile cannot slip
//! between the decision and the unlink:
//!
//! - The remover takes an exclusive OFD lock on the header's *remove byte*
//!   ([`REMOVE_LOCK`](crate::layout::field::REMOVE_LOCK)) through a description of its own, tests
//!   every client slot's byte, and only when none is locked unlinks the name; it releases the
//!   remove byte after the unlink.
//! - An opener, right after it has locked its slot's byte ([`opened`]), waits while the remove
//!   byte is locked, then fails with `NotFound` if the file has no name left.
//!
//! Why that is enough: the kernel takes and tests the record locks of one file under one lock,
//! in one order. If the remover's test of the opener's slot found it unlocked, the opener locked
//! it after that test, hence after the remover took the remove byte, and tests the remove byte
//! later still: either the remover still holds it (the opener waits, and the remover has
//! unlinked the name by the time it lets go, or decided to keep the segment), or the remover has
//! let go, after its unlink. An opener that the remover did see makes the remover keep the
//! segment. So no manager is left using a segment [`remove_unused`] unlinked.
//!
//! The two halves are written once, over [`RemovalSys`]: segment.rs gives them the system calls,
//! and the loom model (model.rs) a modelled kernel, with three planted bugs it must catch.

use lock_api::{Error, Result};

/// What the protocol needs of the kernel, for one segment.
pub(crate) trait RemovalSys {
    /// Planted bug (a), set only by the model check: the opener looks at the file's name before
    /// the remove byte.
    const NAME_FIRST: bool = false;
    /// Planted bug (b), set only by the model check: the remover lets go of the remove byte
    /// before it unlinks.
    const RELEASE_FIRST: bool = false;
    /// Planted bug (c), set only by the model check: the opener does not look at the remove byte.
    const NO_REMOVE_BYTE: bool = false;
    /// Takes the remove byte without waiting; `false` when another remover holds it.
    fn take_remove_byte(&self) -> Result<bool>;
    /// Lets go of the remove byte.
    fn release_remove_byte(&self) -> Result<()>;
    /// Whether another description holds the remove byte.
    fn remove_byte_held(&self) -> Result<bool>;
    /// Whether client slot `slot`'s byte is locked: a manager has the segment open.
    fn slot_open(&self, slot: u32) -> Result<bool>;
    /// Whether the file still has a name (its link count is not zero).
    fn linked(&self) -> Result<bool>;
    /// Unlinks the segment's name if it still leads to this file; `false` when it did not.
    fn unlink(&self) -> Result<bool>;
    /// Waits a little before the opener looks at the remove byte again; fails once it has
    /// waited long enough for a remover that will not finish.
    fn pause(&self) -> Result<()>;
}

/// The remover: returns the slots found open (nothing removed), or an empty list once the name
/// is unlinked.
///
/// # Errors
///
/// `InUse` when another remover holds the remove byte; `NotFound` when the name no longer leads
/// to this file; whatever the system calls fail with.
pub(crate) fn remove_unused<S: RemovalSys>(sys: &S, slots: u32, what: &str) -> Result<Vec<u32>> {
    if !sys.take_remove_byte()? {
        return Err(Error::InUse {
            what: format!("{what} (another process is removing it)"),
        });
    }
    let mut open = Vec::new();
    for slot in 0..slots {
        if sys.slot_open(slot)? {
            open.push(slot);
        }
    }
    if !open.is_empty() {
        sys.release_remove_byte()?;
        return Ok(open);
    }
    if S::RELEASE_FIRST {
        sys.release_remove_byte()?;
    }
    let unlinked = sys.unlink();
    if !S::RELEASE_FIRST {
        sys.release_remove_byte()?;
    }
    if unlinked? {
        Ok(open)
    } else {
        Err(Error::NotFound {
            what: what.to_owned(),
        })
    }
}

/// The opener, after it has locked its slot's byte: fails while or once a remover of an unused
/// segment has unlinked it.
///
/// # Errors
///
/// `NotFound` when the file has no name left; whatever [`RemovalSys::pause`] fails with (a
/// remover that does not finish); whatever the system calls fail with.
pub(crate) fn opened<S: RemovalSys>(sys: &S, what: &str) -> Result<()> {
    let removed = || Error::NotFound {
        what: format!("{what} (removed while it was being opened)"),
    };
    if S::NAME_FIRST && !sys.linked()? {
        return Err(removed());
    }
    if !S::NO_REMOVE_BYTE {
        while sys.remove_byte_held()? {
            sys.pause()?;
        }
    }
    if !S::NAME_FIRST && !sys.linked()? {
        return Err(removed());
    }
    Ok(())
}
