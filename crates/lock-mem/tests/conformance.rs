//! Runs the lockyard conformance suite on lock-mem.

use std::process::ExitCode;

use lock_conformance::{Backend, Capabilities};
use lock_mem::{MemManager, Result};

/// lock-mem under test: each trial gets a fresh in-process table.
struct Mem;

impl Backend for Mem {
    type Manager = MemManager;

    fn name(&self) -> &'static str {
        "mem"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALLOCATION | Capabilities::OWNER_PER_MANAGER
    }

    fn create(&self, _store: &str, capacity: u32) -> Result<MemManager> {
        MemManager::new(capacity)
    }

    fn second_owner(&self, _store: &str, manager: &MemManager) -> Result<MemManager> {
        Ok(manager.new_owner())
    }
}

fn main() -> ExitCode {
    lock_conformance::run(Mem)
}
