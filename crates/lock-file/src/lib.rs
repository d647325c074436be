//! lockyard's lock table in a directory of `flock(2)` lock files.
#![doc = include_str!("../README.md")]

mod adopt;
#[cfg(test)]
mod adopt_model;
mod bias;
mod bitmap;
mod clients;
mod flock;
mod format;
mod locker;
mod manager;
#[cfg(test)]
mod model;
mod owner;
mod record;
mod registry;
#[cfg(test)]
mod registry_model;
mod slot;
#[cfg(test)]
mod slot_model;
mod store;
mod table;
mod wake;

pub use format::{FORMAT_VERSION, MARKER_FILE, MAX_CAPACITY};
pub use lock_api;
pub use lock_api::{
    Acquired, Cycle, Error, HeldLock, Holder, Inspect, LockGuard, LockId, LockState, Locker,
    Manager, Result, Store, StoreSpec,
};
pub use locker::FileLocker;
pub use manager::{DEFAULT_DEADLOCK_TIMEOUT, FileManager, StoreOptions};
