//! `DirTable`: a table of directory locks, the store behind `dir:PATH` specs.
//!
//! A *store* is a directory holding a marker file, `dirlock-store`, and one lock directory per
//! id, `0` to `capacity - 1`, each locked exactly as [`DirLock::new`] locks a directory. It is
//! built in full under a private name in the parent directory and published with
//! `renameat2(RENAME_NOREPLACE)`, so concurrent creators see nothing or a whole store, and
//! exactly one of them creates it.
//!
//! A directory *without* the marker is a table of one lock, id 0: the directory itself, as
//! `DirLock::new(PATH)` uses it. So `dir:PATH` reaches any directory that programs lock with
//! [`DirLock`] directly, and an operator can inspect it. Such a directory is not a store that
//! dirlock made, and [`Store::remove`] refuses it.
//!
//! Allocation is not a dirlock concept: `allocate`, `allocate_and_retrieve` and `free_all` are
//! [`Error::Unsupported`], and `available` is `None`.

use std::path::{Path, PathBuf};

use lock_api::{
    Error, HeldLock, Holder, LockId, LockState, Manager, Result, Store, StoreSpec, wrong_scheme,
};
use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::dir::Dir;
use crate::{DirLock, holder, liveness};

/// The name of the marker file that makes a directory a store of directory locks.
pub const MARKER: &str = "dirlock-store";

/// The store format version this code writes and reads (the marker's first line).
pub const STORE_VERSION: u32 = 1;

/// The largest capacity [`DirTable::create`] accepts: every lock is a directory.
pub const MAX_CAPACITY: u32 = 1 << 20;

/// Markers larger than this are refused unread; a real one is about 30 bytes.
const MAX_MARKER_LEN: usize = 4096;

/// A table of directory locks: a store made by [`Store::create`], or a plain directory seen as
/// a table of one lock (see the [crate documentation](crate)).
///
/// Handles from [`retrieve`](Manager::retrieve) are [`DirLock`]s: ownership is per handle.
#[derive(Debug)]
pub struct DirTable {
    path: PathBuf,
    capacity: u32,
    /// A plain directory: one lock, the directory itself.
    single: bool,
}

fn errno_io(e: Errno) -> std::io::Error {
    e.into()
}

/// What a store is called in errors.
fn store_what(path: &Path) -> String {
    format!("dirlock store {}", path.display())
}

/// The parent directory and the last component of `path`, for names built beside it.
fn split(path: &Path) -> Result<(PathBuf, String)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid(format!("{}: no directory name to use", path.display())))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name.to_owned()))
}

/// A name in `parent` that no other process picks: `.<name>.dirlock-<what>-<random>`.
fn private_name(parent: &Path, name: &str, what: &str) -> PathBuf {
    parent.join(format!(
        ".{name}.dirlock-{what}-{:016x}",
        rand::random::<u64>()
    ))
}

/// Removes a half-built store on every path out of `create`.
struct Scaffold(Option<PathBuf>);

impl Drop for Scaffold {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Best effort: only a private directory of ours, which nobody else has seen.
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

fn marker_text(capacity: u32) -> String {
    format!("{MARKER} {STORE_VERSION}\ncapacity {capacity}\n")
}

/// Parses a marker's bytes into the capacity.
///
/// # Errors
///
/// [`Error::Incompatible`] for another magic word or version; [`Error::Corrupt`] for anything
/// else that is not exactly a marker.
fn parse_marker(bytes: &[u8], path: &Path) -> Result<u32> {
    let what = format!("store marker {}", path.display());
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::corrupt(format!("{what}: not UTF-8 text")))?;
    let mut lines = text.split('\n');
    let header = lines.next().unwrap_or_default();
    let Some(version) = header
        .strip_prefix(MARKER)
        .and_then(|v| v.strip_prefix(' '))
    else {
        return Err(Error::incompatible(
            format!("{what} magic"),
            MARKER,
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
    if capacity == 0 || capacity > MAX_CAPACITY {
        return Err(Error::corrupt(format!(
            "{what}: capacity {capacity} outside 1 to {MAX_CAPACITY}"
        )));
    }
    Ok(capacity)
}

/// Opens `path` as a directory without following a symlink.
///
/// # Errors
///
/// [`Error::NotFound`] when it is missing, [`Error::Incompatible`] when it is not a directory
/// (a symlink included), [`Error::Io`] otherwise.
fn open_dir(path: &Path) -> Result<std::os::fd::OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(CWD, path, flags, Mode::empty()).map_err(|e| match e {
        Errno::NOENT => Error::NotFound {
            what: store_what(path),
        },
        Errno::NOTDIR | Errno::LOOP => Error::incompatible(
            format!("dir:{}", path.display()),
            "a directory",
            "a file or symlink (symlinks are not followed)",
        ),
        e => Error::io("open", path, errno_io(e)),
    })
}

/// Reads the marker of the directory `fd` (at `path`): `Some(capacity)` for a store, `None`
/// for a plain directory.
///
/// # Errors
///
/// As [`parse_marker`]; [`Error::Corrupt`] when the marker is not a regular file or is too
/// large; [`Error::Io`] when it cannot be read.
fn read_marker(fd: &std::os::fd::OwnedFd, path: &Path) -> Result<Option<u32>> {
    let marker = path.join(MARKER);
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = match rustix::fs::openat(fd, MARKER, flags, Mode::empty()) {
        Ok(file) => file,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP) => {
            return Err(Error::corrupt(format!(
                "{}: a symlink where the store marker belongs",
                marker.display()
            )));
        }
        Err(e) => return Err(Error::io("open", marker, errno_io(e))),
    };
    let stat = rustix::fs::fstat(&file).map_err(|e| Error::io("fstat", &marker, errno_io(e)))?;
    let file_type = FileType::from_raw_mode(stat.st_mode);
    if file_type != FileType::RegularFile {
        return Err(Error::corrupt(format!(
            "{}: a {file_type:?} where the store marker belongs",
            marker.display()
        )));
    }
    let mut bytes = vec![0u8; MAX_MARKER_LEN + 1];
    let mut len = 0;
    while len < bytes.len() {
        match rustix::io::read(&file, &mut bytes[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(Error::io("read", marker, errno_io(e))),
        }
    }
    if len > MAX_MARKER_LEN {
        return Err(Error::corrupt(format!(
            "{}: more than the {MAX_MARKER_LEN} bytes a marker may have",
            marker.display()
        )));
    }
    bytes.truncate(len);
    parse_marker(&bytes, &marker).map(Some)
}

impl DirTable {
    /// The table's directory, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this is a plain directory seen as one lock, rather than a store.
    pub fn is_single(&self) -> bool {
        self.single
    }

    /// The directory of lock `id` (checked against the capacity by the caller).
    fn lock_dir(&self, id: LockId) -> PathBuf {
        if self.single {
            self.path.clone()
        } else {
            self.path.join(id.to_string())
        }
    }

    fn check(&self, id: LockId) -> Result<()> {
        if id.get() >= self.capacity {
            return Err(Error::OutOfRange {
                id,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// What lock `id` holds: `None` when free or its directory is gone; `Some(None)` when its
    /// record is damaged (the lock cannot be taken, and nobody can say by whom it is held).
    fn holder_of(&self, id: LockId, me: &liveness::Identity) -> Result<Option<Option<Holder>>> {
        let dir = match Dir::open_readable(&self.lock_dir(id)) {
            Ok(dir) => dir,
            // A store missing a lock directory is damaged there, and nobody holds that lock.
            Err(Error::NotFound { .. }) if !self.single => return Ok(None),
            Err(e) => return Err(e),
        };
        match dir.read(0) {
            Ok(Some(seen)) => Ok(Some(Some(holder(&seen, me)?))),
            Ok(None) => Ok(None),
            // One damaged record costs its own lock only, not the whole list.
            Err(Error::Corrupt { .. } | Error::Incompatible { .. }) => Ok(Some(None)),
            Err(e) => Err(e),
        }
    }
}

impl Manager for DirTable {
    type Locker = DirLock;

    fn allocate(&self) -> Result<DirLock> {
        Err(Error::Unsupported("allocate on a table of directory locks"))
    }

    /// A new [`DirLock`] on lock `id`'s directory (for a plain directory, id 0 is the directory
    /// itself). Each handle is its own owner.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`] when `id >= capacity`; [`Error::Corrupt`] when the store lost the
    /// lock's directory; as [`DirLock::new`] otherwise.
    fn retrieve(&self, id: LockId) -> Result<DirLock> {
        self.check(id)?;
        match DirLock::new(self.lock_dir(id)) {
            Ok(lock) => Ok(lock.with_id(id)),
            Err(Error::NotFound { .. }) if !self.single => Err(Error::corrupt(format!(
                "{}: the directory of lock {id} is missing",
                store_what(&self.path)
            ))),
            Err(e) => Err(e),
        }
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

    /// `None`: a table of directory locks keeps no allocations.
    fn available(&self) -> Result<Option<u32>> {
        Ok(None)
    }

    /// Every lock whose `lock0` holds a record, with the holder it names (see
    /// [`Inspect`](lock_api::Inspect) on [`DirLock`]); a holder this process judges certainly
    /// dead is listed with `dead` set. A lock whose record is damaged is listed with no holder:
    /// nobody can take it until an operator breaks it. It reads one record per lock and needs
    /// no write access.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when a lock directory or record cannot be read.
    fn held(&self) -> Result<Vec<HeldLock>> {
        let me = liveness::current()?;
        let mut held = Vec::new();
        for id in (0..self.capacity).map(LockId) {
            if let Some(holder) = self.holder_of(id, &me)? {
                held.push(HeldLock::new(id, holder));
            }
        }
        Ok(held)
    }

    /// As [`held`](Manager::held), with no waiters (dirlock does not publish them); a lock
    /// whose record is damaged has a holder with nothing known about it, since it is not free.
    fn snapshot(&self) -> Result<Vec<LockState>> {
        Ok(self
            .held()?
            .into_iter()
            .map(|h| LockState::new(h.id, Some(h.holder.unwrap_or_default()), Vec::new()))
            .collect())
    }
}

/// The lifecycle of `dir:PATH` stores.
///
/// | call | on a store | on a plain directory | on nothing |
/// |---|---|---|---|
/// | `create(PATH, n)` | `AlreadyExists` | `AlreadyExists` | builds and publishes a store of `n` |
/// | `open(PATH)` | its capacity from the marker | a table of one lock, id 0 | `NotFound` |
/// | `open_or_create(PATH, n)` | opened (`Incompatible` unless `n` is its capacity) | opened if `n` is 1, else `Incompatible` | created |
/// | `remove(PATH)` | removed | `Incompatible`, nothing removed | `NotFound` |
///
/// A marker of another format is `Incompatible`, a damaged one `Corrupt`; a file or symlink at
/// `PATH` is `Incompatible`.
impl Store for DirTable {
    type Address = Path;

    fn address(spec: &StoreSpec) -> Result<PathBuf> {
        match spec {
            StoreSpec::Dir(path) => Ok(path.clone()),
            other => Err(wrong_scheme("dir", other)),
        }
    }

    /// Builds the store under a private name beside `store` (`.<name>.dirlock-new-<random>`)
    /// and publishes it with `renameat2(RENAME_NOREPLACE)`. Directories are made with mode
    /// 0777 and the marker with 0666, less the umask, as `mkdir(1)` would.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a capacity of 0 or above [`MAX_CAPACITY`], or a path
    /// with no last component; [`Error::AlreadyExists`] when anything is at `store`;
    /// [`Error::Io`] when the parent directory cannot be written. Nothing is left behind on
    /// error; a creator killed while building leaves its private directory.
    fn create(store: &Path, capacity: u32) -> Result<DirTable> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(Error::invalid(format!(
                "capacity {capacity} of a dirlock store: want 1 to {MAX_CAPACITY}"
            )));
        }
        let (parent, name) = split(store)?;
        let build = private_name(&parent, &name, "new");
        std::fs::create_dir(&build).map_err(|e| Error::io("mkdir", &build, e))?;
        let mut scaffold = Scaffold(Some(build.clone()));
        for id in 0..capacity {
            let lock_dir = build.join(id.to_string());
            std::fs::create_dir(&lock_dir).map_err(|e| Error::io("mkdir", &lock_dir, e))?;
        }
        let marker = build.join(MARKER);
        std::fs::write(&marker, marker_text(capacity))
            .map_err(|e| Error::io("write", &marker, e))?;
        match rustix::fs::renameat_with(CWD, &build, CWD, store, RenameFlags::NOREPLACE) {
            Ok(()) => {
                // Published under its final name: nothing is left to clean up.
                scaffold.0 = None;
                Ok(DirTable {
                    path: store.to_owned(),
                    capacity,
                    single: false,
                })
            }
            Err(Errno::EXIST | Errno::NOTEMPTY) => Err(Error::AlreadyExists {
                what: store_what(store),
            }),
            Err(e) => Err(Error::io("rename(RENAME_NOREPLACE)", store, errno_io(e))),
        }
    }

    /// Opens a store (capacity from its marker) or a plain directory (one lock).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when nothing is at `store`; [`Error::Incompatible`] for a file, a
    /// symlink or a marker of another format; [`Error::Corrupt`] for a damaged marker or a
    /// store whose last lock directory is missing; [`Error::Io`] otherwise.
    fn open(store: &Path) -> Result<DirTable> {
        let fd = open_dir(store)?;
        let Some(capacity) = read_marker(&fd, store)? else {
            return Ok(DirTable {
                path: store.to_owned(),
                capacity: 1,
                single: true,
            });
        };
        // A cheap check that the store is whole: its last lock directory is there.
        let last = (capacity - 1).to_string();
        match rustix::fs::statat(&fd, last.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {}
            Ok(_) | Err(Errno::NOENT) => {
                return Err(Error::corrupt(format!(
                    "{}: the directory of lock {last} is missing",
                    store_what(store)
                )));
            }
            Err(e) => return Err(Error::io("stat", store.join(&last), errno_io(e))),
        }
        Ok(DirTable {
            path: store.to_owned(),
            capacity,
            single: false,
        })
    }

    fn open_or_create(store: &Path, capacity: u32) -> Result<(DirTable, bool)> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(Error::invalid(format!(
                "capacity {capacity} of a dirlock store: want 1 to {MAX_CAPACITY}"
            )));
        }
        let opened = match DirTable::open(store) {
            Ok(table) => table,
            Err(Error::NotFound { .. }) => match DirTable::create(store, capacity) {
                Ok(table) => return Ok((table, true)),
                // Another process created it first: it is whole, since it was renamed in.
                Err(Error::AlreadyExists { .. }) => DirTable::open(store)?,
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        };
        if opened.capacity != capacity {
            return Err(Error::incompatible(
                format!("{} capacity", store_what(store)),
                capacity,
                opened.capacity,
            ));
        }
        Ok((opened, false))
    }

    /// Removes a store that dirlock made: it is renamed to a private name beside it (so no
    /// later `open` finds it), checked to be the very directory whose marker was read, and
    /// deleted with everything in it. Handles still open on its locks keep their files until
    /// they drop them, but can no longer lock.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when nothing is there (or another process removed it first);
    /// [`Error::Incompatible`] for a plain directory without a marker (a user's directory,
    /// perhaps locked with [`DirLock`] directly: it is never deleted), a file or a marker of
    /// another format; [`Error::Corrupt`] for a damaged marker; nothing is removed then.
    /// [`Error::Io`] when renaming or deleting fails.
    fn remove(store: &Path) -> Result<()> {
        let fd = open_dir(store)?;
        if read_marker(&fd, store)?.is_none() {
            return Err(Error::incompatible(
                format!("dir:{}", store.display()),
                "a dirlock store (with a dirlock-store marker)",
                "a plain directory, which remove never deletes",
            ));
        }
        let seen = rustix::fs::fstat(&fd).map_err(|e| Error::io("fstat", store, errno_io(e)))?;
        let (parent, name) = split(store)?;
        let doomed = private_name(&parent, &name, "removed");
        match rustix::fs::renameat(CWD, store, CWD, &doomed) {
            Ok(()) => {}
            Err(Errno::NOENT) => {
                return Err(Error::NotFound {
                    what: store_what(store),
                });
            }
            Err(e) => return Err(Error::io("rename", store, errno_io(e))),
        }
        let moved = rustix::fs::statat(CWD, &doomed, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| Error::io("stat", &doomed, errno_io(e)))?;
        if (moved.st_dev, moved.st_ino) != (seen.st_dev, seen.st_ino) {
            // Between the check and the rename, our store went and something else took its
            // name: put that back untouched. Our store is gone.
            let _ = rustix::fs::renameat_with(CWD, &doomed, CWD, store, RenameFlags::NOREPLACE);
            return Err(Error::NotFound {
                what: store_what(store),
            });
        }
        std::fs::remove_dir_all(&doomed).map_err(|e| Error::io("remove", &doomed, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_parse_strictly() {
        let path = Path::new("/x/dirlock-store");
        assert_eq!(parse_marker(marker_text(7).as_bytes(), path).unwrap(), 7);
        for (bytes, incompatible) in [
            (&b"#!/bin/sh\n"[..], true),
            (b"dirlock-store 2\ncapacity 7\n", true),
            (b"dirlock-store 1\ncapacity 7", false),
            (b"dirlock-store 1\ncapacity 0\n", false),
            (b"dirlock-store 1\ncapacity 99999999999\n", false),
            (b"dirlock-store 1\ncapacity 7\nmore\n", false),
            (b"dirlock-store 1\n", false),
            (b"\xff\xfe", false),
        ] {
            let result = parse_marker(bytes, path);
            if incompatible {
                assert!(
                    matches!(result, Err(Error::Incompatible { .. })),
                    "{result:?}"
                );
            } else {
                assert!(matches!(result, Err(Error::Corrupt { .. })), "{result:?}");
            }
        }
    }
}
