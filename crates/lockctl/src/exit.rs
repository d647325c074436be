//! Exit codes, one per kind of failure, as documented in docs/lockctl.md.

use std::io::Write;
use std::process::ExitCode;

use lockyard::Error;

use crate::escape::printable;

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
    /// `run`: a lock was lost while the command held it (the command ran without the exclusion
    /// it asked for).
    Lost,
    /// `remove`: the store has live holders or waiters, and `--force` was not given.
    InUse,
    /// Whoever read lockctl's output went away (a broken pipe): nothing to say, and no failure.
    ReaderGone,
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
            Failure::Lost => 8,
            Failure::InUse => 9,
            Failure::ReaderGone => 0,
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
            Error::InUse { .. } => Failure::InUse,
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

    /// Prints the message on one line of stderr (escaped: it may quote the spec, paths and
    /// other text from outside) and gives the exit code.
    pub(crate) fn report(&self) -> ExitCode {
        if self.failure != Failure::ReaderGone {
            say(&self.message);
        }
        ExitCode::from(self.failure.code())
    }
}

impl From<Error> for Failed {
    fn from(error: Error) -> Failed {
        Failed::new(Failure::of(&error), error.to_string())
    }
}

/// Writes `lockctl: MESSAGE` as one line on stderr, escaped so that it is one line. A stderr that
/// cannot be written (closed, full) is ignored: there is nowhere left to say it, and `eprintln!`
/// would panic.
pub(crate) fn say(message: &str) {
    let line = format!("lockctl: {}\n", printable(message));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
