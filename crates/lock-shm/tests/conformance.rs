//! Runs the lockyard conformance suite on lock-shm, with every capability it claims.
//!
//! Store names map to `/dev/shm/lockyard-test-<name>`; `remove` unlinks the segment and `damage`
//! rewrites its bytes in place, so every trial leaves /dev/shm as it found it.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use lock_conformance::{Backend, Capabilities, Damage, LockerOf};
use lock_shm::{Error, Inspect, Result, ShmManager};

/// lock-shm as a conformance backend.
struct Shm;

fn segment(store: &str) -> String {
    format!("lockyard-test-{store}")
}

fn path(store: &str) -> PathBuf {
    PathBuf::from("/dev/shm").join(segment(store))
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
    }

    fn create(&self, store: &str, capacity: u32) -> Result<ShmManager> {
        ShmManager::create(&segment(store), capacity)
    }

    fn open(&self, store: &str, capacity: u32) -> Result<ShmManager> {
        ShmManager::open(&segment(store), capacity)
    }

    fn open_or_create(&self, store: &str, capacity: u32) -> Result<(ShmManager, bool)> {
        ShmManager::open_or_create(&segment(store), capacity)
    }

    fn remove(&self, store: &str) -> Result<()> {
        ShmManager::remove(&segment(store)).map(|_| ())
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
