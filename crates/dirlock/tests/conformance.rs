//! The lockyard conformance suite on dirlock: a table of directory locks, `<root>/<store>/<id>`.
//!
//! A dirlock is one lock, not a table, so the backend here is a thin table of them: a store is
//! a directory holding a marker file (`dirlock-store`, with format version and capacity) and one
//! lock directory per id, created in a private directory and published with
//! `rename(RENAME_NOREPLACE)` so that concurrent creators see either nothing or a whole store.
//! Allocation is not a dirlock concept: `allocate` and friends return `Unsupported` and the
//! backend does not claim `ALLOCATION`.
#![allow(
    unsafe_code,
    reason = "std::env::set_var is unsafe in edition 2024; used once, before any thread"
)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use dirlock::DirLock;
use dirlock::lock_api::{Error, HeldLock, Inspect, LockId, Manager, Result};
use lock_conformance::{Backend, Capabilities, Damage, LockerOf};
use rustix::fs::{CWD, RenameFlags};

/// The root directory of every store, set by the parent and inherited by its children.
const ROOT_ENV: &str = "DIRLOCK_CONFORMANCE_ROOT";
const MARKER: &str = "dirlock-store";
const STORE_VERSION: u32 = 1;
const MAX_MARKER_LEN: u64 = 4096;

#[derive(Debug)]
struct DirlockBackend {
    root: PathBuf,
}

/// A fixed table of directory locks.
#[derive(Debug)]
struct DirTable {
    dir: PathBuf,
    capacity: u32,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(op, path, e)
}

impl DirTable {
    fn lock_dir(&self, id: LockId) -> PathBuf {
        self.dir.join(id.to_string())
    }
}

impl Manager for DirTable {
    type Locker = DirLock;

    fn allocate(&self) -> Result<DirLock> {
        Err(Error::Unsupported("allocate on a table of directory locks"))
    }

    fn retrieve(&self, id: LockId) -> Result<DirLock> {
        if id.get() >= self.capacity {
            return Err(Error::OutOfRange {
                id,
                capacity: self.capacity,
            });
        }
        Ok(DirLock::new(self.lock_dir(id))?.with_id(id))
    }

    fn allocate_and_retrieve(&self, _id: LockId) -> Result<DirLock> {
        Err(Error::Unsupported(
            "allocate_and_retrieve on a table of directory locks",
        ))
    }

    fn free_all(&self) -> Result<()> {
        Err(Error::Unsupported("free_all on a table of directory locks"))
    }

    fn capacity(&self) -> Option<u32> {
        Some(self.capacity)
    }

    fn available(&self) -> Result<Option<u32>> {
        Ok(None)
    }

    fn held(&self) -> Result<Vec<HeldLock>> {
        let mut held = Vec::new();
        for id in (0..self.capacity).map(LockId) {
            if let Some(holder) = DirLock::new(self.lock_dir(id))?.holder()? {
                held.push(HeldLock::new(id, Some(holder)));
            }
        }
        Ok(held)
    }
}

fn parse_marker(text: &str, path: &Path) -> Result<u32> {
    let what = format!("store marker {}", path.display());
    let mut lines = text.split('\n');
    let header = lines.next().unwrap_or_default();
    let Some(version) = header.strip_prefix("dirlock-store ") else {
        return Err(Error::incompatible(
            format!("{what} magic"),
            "dirlock-store",
            header.chars().take(32).collect::<String>(),
        ));
    };
    let version: u32 = version
        .parse()
        .map_err(|_| Error::corrupt(format!("{what}: version {version:?}")))?;
    if version != STORE_VERSION {
        return Err(Error::incompatible(
            format!("{what} version"),
            STORE_VERSION,
            version,
        ));
    }
    let capacity = lines
        .next()
        .and_then(|line| line.strip_prefix("capacity "))
        .ok_or_else(|| Error::corrupt(format!("{what}: truncated (no capacity)")))?;
    let capacity: u32 = capacity
        .parse()
        .map_err(|_| Error::corrupt(format!("{what}: capacity {capacity:?}")))?;
    if lines.next() != Some("") || lines.next().is_some() {
        return Err(Error::corrupt(format!(
            "{what}: truncated or trailing data"
        )));
    }
    if capacity == 0 {
        return Err(Error::corrupt(format!("{what}: zero capacity")));
    }
    Ok(capacity)
}

impl DirlockBackend {
    fn store_dir(&self, store: &str) -> PathBuf {
        self.root.join(store)
    }

    fn marker_text(capacity: u32) -> String {
        format!("{MARKER} {STORE_VERSION}\ncapacity {capacity}\n")
    }
}

impl Backend for DirlockBackend {
    type Manager = DirTable;

    fn name(&self) -> &'static str {
        "dirlock"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::MULTIPROCESS
            | Capabilities::OWNER_DEATH
            | Capabilities::PERSISTENT
            | Capabilities::INSPECT
    }

    fn create(&self, store: &str, capacity: u32) -> Result<DirTable> {
        if capacity == 0 {
            return Err(Error::invalid("zero capacity"));
        }
        let dir = self.store_dir(store);
        let build = tempfile::Builder::new()
            .prefix(".build-")
            .tempdir_in(&self.root)
            .map_err(io("mkdtemp", &self.root))?;
        for id in 0..capacity {
            let lock_dir = build.path().join(id.to_string());
            std::fs::create_dir(&lock_dir).map_err(io("mkdir", &lock_dir))?;
        }
        let marker = build.path().join(MARKER);
        std::fs::write(&marker, Self::marker_text(capacity)).map_err(io("write", &marker))?;
        match rustix::fs::renameat_with(CWD, build.path(), CWD, &dir, RenameFlags::NOREPLACE) {
            Ok(()) => {
                // The directory now lives under its final name; nothing is left to clean up.
                let _ = build.keep();
                Ok(DirTable { dir, capacity })
            }
            Err(rustix::io::Errno::EXIST | rustix::io::Errno::NOTEMPTY) => {
                Err(Error::AlreadyExists {
                    what: format!("dirlock store {}", dir.display()),
                })
            }
            Err(e) => Err(Error::io("rename", &dir, e.into())),
        }
    }

    fn open(&self, store: &str, capacity: u32) -> Result<DirTable> {
        let dir = self.store_dir(store);
        let marker = dir.join(MARKER);
        let text = match std::fs::metadata(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    what: format!("dirlock store {}", dir.display()),
                });
            }
            Err(e) => return Err(Error::io("stat", &dir, e)),
            Ok(_) => {
                let len = std::fs::metadata(&marker)
                    .map_err(|_| Error::corrupt(format!("{}: no store marker", dir.display())))?
                    .len();
                if len > MAX_MARKER_LEN {
                    return Err(Error::corrupt(format!(
                        "{}: marker too large",
                        marker.display()
                    )));
                }
                let bytes = std::fs::read(&marker).map_err(io("read", &marker))?;
                String::from_utf8(bytes)
                    .map_err(|_| Error::corrupt(format!("{}: not text", marker.display())))?
            }
        };
        let found = parse_marker(&text, &marker)?;
        if found != capacity {
            return Err(Error::incompatible(
                format!("dirlock store {} capacity", dir.display()),
                capacity,
                found,
            ));
        }
        for id in 0..capacity {
            let lock_dir = dir.join(id.to_string());
            if !lock_dir.is_dir() {
                return Err(Error::corrupt(format!(
                    "dirlock store {}: lock directory {id} is missing",
                    dir.display()
                )));
            }
        }
        Ok(DirTable { dir, capacity })
    }

    fn open_or_create(&self, store: &str, capacity: u32) -> Result<(DirTable, bool)> {
        match self.create(store, capacity) {
            Ok(table) => Ok((table, true)),
            Err(Error::AlreadyExists { .. }) => Ok((self.open(store, capacity)?, false)),
            Err(e) => Err(e),
        }
    }

    fn remove(&self, store: &str) -> Result<()> {
        let dir = self.store_dir(store);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("rmdir", &dir, e)),
            _ => Ok(()),
        }
    }

    fn damage(&self, store: &str, damage: Damage) -> Result<()> {
        let dir = self.store_dir(store);
        let marker = dir.join(MARKER);
        let text = std::fs::read_to_string(&marker).map_err(io("read", &marker))?;
        let damaged = match damage {
            Damage::Foreign => "#!/bin/sh\necho not a lock store\n".to_owned(),
            Damage::FutureVersion => text.replacen("dirlock-store 1", "dirlock-store 99", 1),
            Damage::Truncated => {
                // Cut the marker short and lose a lock directory, as a half-copied store would.
                let lock_dir = dir.join("0");
                std::fs::remove_dir_all(&lock_dir).map_err(io("rmdir", &lock_dir))?;
                text[..text.len() / 2].to_owned()
            }
            Damage::Garbage => format!("{MARKER} {STORE_VERSION}\ncapacity 99999999999999\n"),
        };
        std::fs::write(&marker, damaged).map_err(io("write", &marker))
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
    lock_conformance::run(DirlockBackend { root })
}
