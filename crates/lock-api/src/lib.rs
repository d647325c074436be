//! The lockyard contract: ids, errors, the `Manager` and `Locker` traits, guards and capabilities.
#![doc = include_str!("../README.md")]

mod capability;
mod error;
mod guard;
mod id;
mod locker;
mod manager;

pub use capability::{Fenced, Inspect, Leased, LockData, LostSignal, LostTrigger};
pub use error::{Error, Result};
pub use guard::LockGuard;
pub use id::LockId;
pub use locker::{Acquired, Locker};
pub use manager::{BoxedManager, DynLocker, DynManager, HeldLock, Holder, Manager};
