//! The one error enum every backend returns.

use std::path::PathBuf;

use crate::LockId;

/// The result type of every lockyard operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in any lockyard backend.
///
/// Callers and the conformance suite match variants, never message text. Each variant names
/// Podman's equivalent errno in its documentation where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No free lock is left to allocate (Podman: `ENOSPC`).
    #[error("allocation failed; exceeded num_locks ({capacity})")]
    Exhausted {
        /// The number of locks in the table.
        capacity: u32,
    },

    /// An id at or beyond the table's capacity (Podman: `EINVAL`).
    #[error("lock id {id} is out of range: the table has {capacity} locks (0..{capacity})")]
    OutOfRange {
        /// The id that was asked for.
        id: LockId,
        /// The number of locks in the table.
        capacity: u32,
    },

    /// `allocate_and_retrieve` of an id that is already allocated (Podman: `EEXIST`).
    #[error("lock {0} is already allocated")]
    AlreadyAllocated(LockId),

    /// `free` of an id that is not allocated (Podman: `ENOENT`).
    #[error("lock {0} is not allocated")]
    NotAllocated(LockId),

    /// `unlock` of a lock this owner does not hold: it is unlocked, or another owner holds it
    /// (Podman: `EPERM`).
    #[error("lock {0} is not held by this owner")]
    NotHeld(LockId),

    /// A bounded wait elapsed before the lock (or the service) answered.
    #[error("timed out")]
    Timeout,

    /// This waiter closed a cycle of the wait-for graph and was chosen to break it: it gave up
    /// the wait, and the caller should release what it holds and retry (PostgreSQL's
    /// `deadlock detected`). The other members of the cycle keep waiting.
    #[error("deadlock detected, this waiter gave up: {cycle}")]
    Deadlock {
        /// Every member of the cycle, starting with this waiter.
        cycle: crate::Cycle,
    },

    /// A lease-based lock was lost: its lease expired or was revoked, or its key was deleted.
    /// Whatever the lock protected may now be changed by another holder.
    #[error("the lock was lost (lease expired, revoked or key deleted)")]
    Lost,

    /// An existing store (segment, directory, record) is of another format, version, size or
    /// capacity than this code or this call expects (Podman: `EBADF` / `ERANGE`).
    #[error("incompatible {what}: expected {expected}, found {found}")]
    Incompatible {
        /// What was being checked, with its location (`"segment /dev/shm/x capacity"`).
        what: String,
        /// The value this code or this call expects.
        expected: String,
        /// The value that was found.
        found: String,
    },

    /// Content that cannot be parsed or fails a bounds check: a damaged or hostile store.
    #[error("corrupt {what}")]
    Corrupt {
        /// What is damaged and how, with its location.
        what: String,
    },

    /// Open of a store that does not exist (Podman: `ENOENT`).
    #[error("{what} does not exist")]
    NotFound {
        /// The store that was looked for.
        what: String,
    },

    /// Create of a store that already exists (Podman: `EEXIST`).
    #[error("{what} already exists")]
    AlreadyExists {
        /// The store that was in the way.
        what: String,
    },

    /// An argument no backend could accept: zero capacity, an invalid store name, a TTL below the
    /// minimum.
    #[error("invalid argument: {what}")]
    InvalidArgument {
        /// What is wrong with the argument.
        what: String,
    },

    /// A store that others have open, which [`Store::remove_unused`](crate::Store::remove_unused)
    /// leaves in place.
    #[error("{what} is in use")]
    InUse {
        /// The store, and who has it open.
        what: String,
    },

    /// A remote service could not be reached in time.
    #[error("service unavailable: {source}")]
    Unavailable {
        /// Why the service could not be reached.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// The backend cannot perform this operation (Podman: `ErrNotImplemented`).
    #[error("not supported: {0}")]
    Unsupported(&'static str),

    /// Any other operating-system error, with what was being done and to what.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The operation, named after its syscall where there is one (`"flock"`, `"shm_open"`).
        op: &'static str,
        /// The file or object the operation was applied to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Builds an [`Error::Io`] from an operation, a path and an OS error.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Corrupt`].
    pub fn corrupt(what: impl Into<String>) -> Self {
        Error::Corrupt { what: what.into() }
    }

    /// Builds an [`Error::Incompatible`].
    pub fn incompatible(
        what: impl Into<String>,
        expected: impl ToString,
        found: impl ToString,
    ) -> Self {
        Error::Incompatible {
            what: what.into(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }

    /// Builds an [`Error::InvalidArgument`].
    pub fn invalid(what: impl Into<String>) -> Self {
        Error::InvalidArgument { what: what.into() }
    }

    /// Builds an [`Error::Unavailable`] from any error.
    pub fn unavailable(
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Unavailable {
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhausted_message_names_the_capacity() {
        let e = Error::Exhausted { capacity: 2048 };
        assert_eq!(
            e.to_string(),
            "allocation failed; exceeded num_locks (2048)"
        );
    }

    #[test]
    fn io_error_names_op_and_path() {
        let e = Error::io(
            "open",
            "/dev/shm/x",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        let text = e.to_string();
        assert!(text.starts_with("open /dev/shm/x: "), "{text}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn errors_are_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Error>();
    }
}
