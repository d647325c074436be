//! lock-shm: lockyard's production lock table in a /dev/shm segment.
#![doc = include_str!("../README.md")]

mod bitmap;
mod client;
mod futex;
mod layout;
mod life;
mod lockword;
mod manager;
#[cfg(test)]
mod model;
mod observe;
mod removal;
mod segment;
mod slice;
mod turn;
mod wait;
mod watch;

pub use layout::MAX_CAPACITY;
pub use lock_api::{
    self, Acquired, Cycle, Error, HeldLock, Holder, Inspect, LockId, LockState, Locker, Manager,
    Result, Store, StoreSpec,
};
pub use manager::{DEFAULT_DEADLOCK_TIMEOUT, ShmLocker, ShmManager};
pub use segment::MAX_NAME_LEN;
