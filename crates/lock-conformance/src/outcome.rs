//! How a behaviour reports failure: `Outcome`, `Failed` and the `ensure!` macro.

use std::fmt;

/// Why a behaviour failed: a sentence saying what was expected and what happened.
#[derive(Debug)]
pub struct Failed(pub String);

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<lock_api::Error> for Failed {
    fn from(e: lock_api::Error) -> Self {
        Failed(format!("unexpected error: {e} ({e:?})"))
    }
}

impl From<std::io::Error> for Failed {
    fn from(e: std::io::Error) -> Self {
        Failed(format!("test machinery I/O error: {e}"))
    }
}

impl From<String> for Failed {
    fn from(s: String) -> Self {
        Failed(s)
    }
}

/// The result of one behaviour: `Ok(())` when the backend behaved as the sentence says.
pub type Outcome = Result<(), Failed>;

/// Fails the behaviour with a formatted message unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::Failed(format!($($msg)+)));
        }
    };
}

/// Fails the behaviour unless the expression is an `Err` matching the pattern.
#[macro_export]
macro_rules! ensure_err {
    ($expr:expr, $pat:pat $(if $guard:expr)?, $what:expr) => {
        match $expr {
            Err($pat) $(if $guard)? => {}
            Err(other) => {
                return Err($crate::Failed(format!(
                    "{}: expected {}, got error {other:?}",
                    $what,
                    stringify!($pat)
                )))
            }
            Ok(_) => {
                return Err($crate::Failed(format!(
                    "{}: expected {}, got Ok",
                    $what,
                    stringify!($pat)
                )))
            }
        }
    };
}
