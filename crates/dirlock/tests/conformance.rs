//! Runs the lockyard conformance suite on dirlock, through `dir:<root>/<store>` specs.
#![allow(
    unsafe_code,
    reason = "std::env::set_var is unsafe in edition 2024; used once, before any thread"
)]

use std::path::PathBuf;
use std::process::ExitCode;

use dirlock::lock_api::{Error, Inspect, Result};
use dirlock::{DirTable, MARKER, STORE_VERSION};
use lock_conformance::{Backend, Capabilities, Damage, LockerOf};

/// The root directory of every store, set by the parent and inherited by its children.
const ROOT_ENV: &str = "DIRLOCK_CONFORMANCE_ROOT";

/// dirlock under test: each trial's store is the `DirTable` at `<root>/<store>`.
struct Dir {
    root: PathBuf,
}

impl Backend for Dir {
    type Manager = DirTable;

    fn name(&self) -> &'static str {
        "dirlock"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::MULTIPROCESS
            | Capabilities::OWNER_DEATH
            | Capabilities::PERSISTENT
            | Capabilities::INSPECT
            | Capabilities::DAMAGEABLE
    }

    fn spec(&self, store: &str) -> String {
        format!("dir:{}", self.root.join(store).display())
    }

    /// Deletes a store whose marker the suite damaged (remove refuses it, as it should).
    fn scrub(&self, store: &str) -> Result<()> {
        let dir = self.root.join(store);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("rmdir", &dir, e)),
            _ => Ok(()),
        }
    }

    fn damage(&self, store: &str, damage: Damage) -> Result<()> {
        let dir = self.root.join(store);
        let marker = dir.join(MARKER);
        let text = std::fs::read_to_string(&marker).map_err(|e| Error::io("read", &marker, e))?;
        let damaged = match damage {
            Damage::Foreign => "#!/bin/sh\necho not a lock store\n".to_owned(),
            Damage::FutureVersion => text.replacen(
                &format!("{MARKER} {STORE_VERSION}"),
                &format!("{MARKER} 99"),
                1,
            ),
            Damage::Truncated => {
                // Cut the marker short and lose a lock directory, as a half-copied store would.
                let lock_dir = dir.join("0");
                std::fs::remove_dir_all(&lock_dir).map_err(|e| Error::io("rmdir", &lock_dir, e))?;
                text[..text.len() / 2].to_owned()
            }
            Damage::Garbage => format!("{MARKER} {STORE_VERSION}\ncapacity 99999999999999\n"),
        };
        std::fs::write(&marker, damaged).map_err(|e| Error::io("write", &marker, e))
    }

    fn as_inspect<'a>(&self, locker: &'a LockerOf<Self>) -> Option<&'a dyn Inspect> {
        Some(locker)
    }
}

fn main() -> ExitCode {
    let (root, _owned) = match std::env::var_os(ROOT_ENV) {
        // A child of the suite: the parent's root.
        Some(root) => (PathBuf::from(root), None),
        None => {
            let dir = match tempfile::Builder::new()
                .prefix("dirlock-conformance-")
                .tempdir()
            {
                Ok(dir) => dir,
                Err(e) => {
                    eprintln!("dirlock conformance: cannot create the store root: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // SAFETY: main has not started any thread yet, so nothing reads the environment
            // concurrently; children inherit the variable.
            unsafe { std::env::set_var(ROOT_ENV, dir.path()) };
            (dir.path().to_owned(), Some(dir))
        }
    };
    lock_conformance::run(Dir { root })
}
