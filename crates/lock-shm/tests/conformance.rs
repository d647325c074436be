//! Runs the lockyard conformance suite on lock-shm, through `shm:lockyard-test-<store>` specs.
//!
//! `damage` rewrites a segment's bytes in place; `scrub` unlinks what `remove` refused (a
//! segment whose magic the suite overwrote), so every trial leaves /dev/shm as it found it.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use lock_conformance::{Backend, Capabilities, Damage, LockerOf};
use lock_shm::{Error, Inspect, Result, ShmManager};

/// lock-shm under test.
struct Shm;

fn path(store: &str) -> PathBuf {
    PathBuf::from("/dev/shm").join(format!("lockyard-test-{store}"))
}

fn damage_io(e: std::io::Error, store: &str) -> Error {
    Error::io("damage", path(store), e)
}

impl Backend for Shm {
    type Manager = ShmManager;

    fn name(&self) -> &'static str {
        "shm"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALLOCATION
            | Capabilities::OWNER_PER_MANAGER
            | Capabilities::MULTIPROCESS
            | Capabilities::OWNER_DEATH
            | Capabilities::PERSISTENT
            | Capabilities::INSPECT
            | Capabilities::WAITERS
            | Capabilities::CLIENTS
            | Capabilities::DEADLOCK
            | Capabilities::DAMAGEABLE
            | Capabilities::FORK_REFUSED
    }

    fn spec(&self, store: &str) -> String {
        format!("shm:lockyard-test-{store}")
    }

    /// A segment whose magic the suite overwrote is no longer one `remove` accepts: unlink it.
    fn scrub(&self, store: &str) -> Result<()> {
        match std::fs::remove_file(path(store)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(damage_io(e, store)),
            _ => Ok(()),
        }
    }

    fn damage(&self, store: &str, damage: Damage) -> Result<()> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path(store))
            .map_err(|e| damage_io(e, store))?;
        match damage {
            Damage::Foreign => {
                file.write_all(b"NOTASHM!")
                    .map_err(|e| damage_io(e, store))?;
            }
            Damage::FutureVersion => {
                file.seek(SeekFrom::Start(8))
                    .map_err(|e| damage_io(e, store))?;
                file.write_all(&99u32.to_le_bytes())
                    .map_err(|e| damage_io(e, store))?;
            }
            Damage::Truncated => {
                let len = file.metadata().map_err(|e| damage_io(e, store))?.len();
                file.set_len(len / 2).map_err(|e| damage_io(e, store))?;
            }
            Damage::Garbage => {
                // Keep magic and version, scramble every size and offset after them.
                let mut header = [0u8; 128];
                file.read_exact(&mut header)
                    .map_err(|e| damage_io(e, store))?;
                for (i, b) in header[12..128].iter_mut().enumerate() {
                    *b = (i as u8).wrapping_mul(37).wrapping_add(0x5a);
                }
                file.seek(SeekFrom::Start(0))
                    .map_err(|e| damage_io(e, store))?;
                file.write_all(&header).map_err(|e| damage_io(e, store))?;
            }
        }
        Ok(())
    }

    fn as_inspect<'a>(&self, locker: &'a LockerOf<Self>) -> Option<&'a dyn Inspect> {
        Some(locker)
    }
}

fn main() -> ExitCode {
    lock_conformance::run(Shm)
}
