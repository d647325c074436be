//! Runs the lockyard conformance suite on lock-mem, through `mem:` specs.

use std::process::ExitCode;

use lock_conformance::{Backend, Capabilities};
use lock_mem::MemManager;

/// lock-mem under test: each trial's store is the named in-process table `mem:<store>`.
struct Mem;

impl Backend for Mem {
    type Manager = MemManager;

    fn name(&self) -> &'static str {
        "mem"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALLOCATION
            | Capabilities::OWNER_PER_MANAGER
            | Capabilities::PERSISTENT
            | Capabilities::WAITERS
            | Capabilities::DEADLOCK
    }

    fn spec(&self, store: &str) -> String {
        format!("mem:{store}")
    }
}

fn main() -> ExitCode {
    lock_conformance::run(Mem)
}
