//! The shared conformance suite on lock-file, through `file:<root>/<store>` specs: stores are
//! directories under one temporary root.
//!
//! The parent process creates the root and puts its path in `LOCKYARD_FILE_CONFORMANCE_ROOT`
//! before anything else runs, so the child processes the suite starts inherit it and find the
//! same stores by name. The parent removes the root when the suite ends.
#![allow(unsafe_code)] // `std::env::set_var` is unsafe in edition 2024; called before any thread.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;

use lock_api::{Error, Inspect, Result};
use lock_conformance::{Backend, Capabilities, Damage, LockerOf};
use lock_file::FileManager;

/// Where the parent tells its children the root is.
const ROOT_ENV: &str = "LOCKYARD_FILE_CONFORMANCE_ROOT";

/// lock-file under test.
#[derive(Debug)]
struct FileBackend {
    root: PathBuf,
    /// The parent owns (and at the end removes) the root; children only use it.
    _owned: Option<tempfile::TempDir>,
}

impl FileBackend {
    fn new() -> std::io::Result<FileBackend> {
        if let Some(root) = std::env::var_os(ROOT_ENV) {
            return Ok(FileBackend {
                root: PathBuf::from(root),
                _owned: None,
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("lockyard-file-conformance-")
            .tempdir()?;
        // SAFETY: called first thing in main, before the harness or anything else starts a
        // thread, so no other thread can be reading the environment.
        unsafe { std::env::set_var(ROOT_ENV, dir.path()) };
        Ok(FileBackend {
            root: dir.path().to_path_buf(),
            _owned: Some(dir),
        })
    }

    fn path(&self, store: &str) -> PathBuf {
        self.root.join(store)
    }
}

impl Backend for FileBackend {
    type Manager = FileManager;

    fn name(&self) -> &'static str {
        "file"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALLOCATION
            | Capabilities::OWNER_PER_MANAGER
            | Capabilities::MULTIPROCESS
            | Capabilities::OWNER_DEATH
            | Capabilities::PERSISTENT
            | Capabilities::INSPECT
            | Capabilities::WAITERS
            | Capabilities::DEADLOCK
            | Capabilities::DAMAGEABLE
            | Capabilities::FORK_REFUSED
            | Capabilities::CLIENTS
    }

    fn spec(&self, store: &str) -> String {
        format!("file:{}", self.path(store).display())
    }

    /// A store the suite damaged is no longer one `remove` accepts; it lives under our own
    /// root, so delete the directory outright.
    fn scrub(&self, store: &str) -> Result<()> {
        let path = self.path(store);
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("remove", &path, e))
            }
            _ => Ok(()),
        }
    }

    fn damage(&self, store: &str, damage: Damage) -> Result<()> {
        let dir = self.path(store);
        let marker = dir.join(lock_file::MARKER_FILE);
        let table = dir.join("table");
        let write = |path: &PathBuf, at: u64, bytes: &[u8]| -> Result<()> {
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| Error::io("open", path, e))?;
            file.write_all_at(bytes, at)
                .map_err(|e| Error::io("write", path, e))
        };
        match damage {
            Damage::Foreign => std::fs::write(&marker, "not a lockyard store\n")
                .map_err(|e| Error::io("write", &marker, e)),
            Damage::FutureVersion => {
                let text = "lockyard lock-file store\nformat 99\nnew fields\n";
                let mut file =
                    std::fs::File::create(&marker).map_err(|e| Error::io("create", &marker, e))?;
                file.write_all(text.as_bytes())
                    .map_err(|e| Error::io("write", &marker, e))
            }
            Damage::Truncated => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&table)
                    .map_err(|e| Error::io("open", &table, e))?;
                let len = file
                    .metadata()
                    .map_err(|e| Error::io("fstat", &table, e))?
                    .len();
                file.set_len(len / 2)
                    .map_err(|e| Error::io("ftruncate", &table, e))
            }
            // Word offsets and length that do not add up.
            Damage::Garbage => write(&table, 24, &[0xa5; 32]),
        }
    }

    fn as_inspect<'a>(&self, locker: &'a LockerOf<Self>) -> Option<&'a dyn Inspect> {
        Some(locker)
    }
}

fn main() -> ExitCode {
    match FileBackend::new() {
        Ok(backend) => lock_conformance::run(backend),
        Err(e) => {
            eprintln!("lock-file conformance: cannot create the store root: {e}");
            ExitCode::FAILURE
        }
    }
}
