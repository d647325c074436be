//! The behaviour suite every lockyard backend passes (in progress).
mod backend;
pub use backend::{Backend, Capabilities, Damage, LockerOf};
