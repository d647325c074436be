//! Exit codes, one per kind of failure, as documented in docs/lockctl.md.

use std::process::ExitCode;

use lockyard::Error;

/// What went wrong, and so which exit code lockctl returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Bad arguments, a refused operation, or any error without a code of its own.
    Usage,
    /// The store spec does not parse, or names a backend this build lacks.
    BadSpec,
    /// The store does not exist.
    Missing,
    /// The store exists but cannot be read: permissions, damage, another format.
    Unreadable,
    /// `run --timeout` elapsed before every lock was taken.
    Timeout,
    /// `run` was chosen as the victim of a deadlock.
    Deadlock,
}

impl Failure {
    /// The documented exit code.
    pub(crate) fn code(self) -> u8 {
        match self {
            Failure::Usage => 2,
            Failure::BadSpec => 3,
            Failure::Missing => 4,
            Failure::Unreadable => 5,
            Failure::Timeout => 6,
            Failure::Deadlock => 7,
        }
    }

    /// The kind of failure an error is.
    pub(crate) fn of(error: &Error) -> Failure {
        match error {
            Error::InvalidArgument { what } if what.starts_with("store spec") => Failure::BadSpec,
            Error::Unsupported(what) if what.contains("cargo feature") => Failure::BadSpec,
            Error::NotFound { .. } => Failure::Missing,
            Error::Incompatible { .. } | Error::Corrupt { .. } => Failure::Unreadable,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
                Failure::Unreadable
            }
            Error::Timeout => Failure::Timeout,
            Error::Deadlock { .. } => Failure::Deadlock,
            _ => Failure::Usage,
        }
    }
}

/// A failure with its one-line message.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) failure: Failure,
    pub(crate) message: String,
}

impl Failed {
    pub(crate) fn new(failure: Failure, message: impl Into<String>) -> Failed {
        Failed {
            failure,
            message: message.into(),
        }
    }

    /// Prints the message on one line of stderr and gives the exit code.
    pub(crate) fn report(&self) -> ExitCode {
        let line = self.message.replace('\n', " ");
        eprintln!("lockctl: {line}");
        ExitCode::from(self.failure.code())
    }
}

impl From<Error> for Failed {
    fn from(error: Error) -> Failed {
        Failed::new(Failure::of(&error), error.to_string())
    }
}
