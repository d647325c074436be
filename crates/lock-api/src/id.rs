//! `LockId`, the number of a lock in a table.

use std::fmt;
use std::num::ParseIntError;
use std::str::FromStr;

/// The number of a lock in a [`Manager`](crate::Manager)'s table, `0..capacity`.
///
/// Ids are stable across processes: every handle with the same id on the same store is the same
/// lock. Podman stores them in its database and hands them back after a reboot through
/// [`Manager::allocate_and_retrieve`](crate::Manager::allocate_and_retrieve).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockId(pub u32);

impl LockId {
    /// The id as a plain number.
    #[inline]
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The id as an index into a table.
    #[inline]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl From<u32> for LockId {
    #[inline]
    fn from(id: u32) -> Self {
        LockId(id)
    }
}

impl From<LockId> for u32 {
    #[inline]
    fn from(id: LockId) -> Self {
        id.0
    }
}

impl fmt::Display for LockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for LockId {
    type Err = ParseIntError;

    /// Parses a decimal id, as printed by `Display`.
    ///
    /// # Errors
    ///
    /// The text is not a decimal number in `0..=u32::MAX`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        s.parse().map(LockId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        for n in [0, 1, 4095, u32::MAX] {
            let id = LockId(n);
            assert_eq!(id.to_string().parse::<LockId>(), Ok(id));
        }
        assert!("-1".parse::<LockId>().is_err());
        assert!("4294967296".parse::<LockId>().is_err());
        assert!("".parse::<LockId>().is_err());
    }
}
