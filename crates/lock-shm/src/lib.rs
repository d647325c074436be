//! lock-shm: lockyard's production lock table in a /dev/shm segment.
#![doc = include_str!("../README.md")]

mod bitmap;
mod client;
mod fork;
mod futex;
mod layout;
mod lockword;
mod manager;
#[cfg(test)]
mod model;
mod segment;

pub use layout::MAX_CAPACITY;
pub use lock_api::{
    self, Acquired, Error, HeldLock, Holder, Inspect, LockId, Locker, Manager, Result,
};
pub use manager::{ShmLocker, ShmManager};
pub use segment::MAX_NAME_LEN;
