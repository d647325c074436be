//! lockyard's in-process lock table, with the multiprocess backends' semantics.
#![doc = include_str!("../README.md")]

mod bitmap;
mod table;

pub use lock_api::*;
pub use table::{MAX_CAPACITY, MemLocker, MemManager};
