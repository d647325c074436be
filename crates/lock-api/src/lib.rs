//! The lockyard contract: ids, errors, the `Manager` and `Locker` traits, guards and capabilities.
#![doc = include_str!("../README.md")]

mod capability;
mod deadlock;
mod error;
mod guard;
mod id;
mod local;
mod locker;
mod manager;
mod process;
mod spec;
mod store;

pub use capability::{Fenced, Inspect, Leased, LockData, LostSignal, LostTrigger};
pub use deadlock::{Cycle, WaitEdge, find_cycle};
pub use error::{Error, Result};
pub use guard::LockGuard;
pub use id::LockId;
pub use local::{ProcessState, boot_id, process_start_time, process_state};
pub use locker::{Acquired, Locker};
pub use manager::{BoxedManager, DynLocker, DynManager, HeldLock, Holder, LockState, Manager};
pub use process::{
    OnceValue, PerProcess, coarse_now_ms, host_name, managers_open, pid_namespace, pid_seen_here,
};
pub use spec::{EtcdSpec, MAX_NAME_LEN, StoreSpec, format_duration, parse_duration};
pub use store::{Store, wrong_scheme};
