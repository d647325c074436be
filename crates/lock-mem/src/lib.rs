//! lockyard's in-process lock table, with the multiprocess backends' semantics.
#![doc = include_str!("../README.md")]

mod bitmap;
mod sighting;
#[cfg(test)]
mod sighting_model;
mod table;

pub use lock_api::*;
pub use table::{DEFAULT_DEADLOCK_TIMEOUT, MAX_CAPACITY, MemLocker, MemManager};
