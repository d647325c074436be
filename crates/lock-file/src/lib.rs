//! lockyard's lock table in a directory of `flock(2)` lock files.
#![doc = include_str!("../README.md")]

mod bitmap;
mod flock;
mod format;
mod locker;
mod manager;
mod record;
mod slot;
mod store;
mod table;

pub use format::{FORMAT_VERSION, MARKER_FILE, MAX_CAPACITY};
pub use lock_api;
pub use lock_api::{
    Acquired, Error, HeldLock, Holder, Inspect, LockGuard, LockId, Locker, Manager, Result,
};
pub use locker::FileLocker;
pub use manager::{FileManager, StoreOptions};
