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

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use lock_api::{
    Error, HeldLock, Holder, LockId, LockState, Manager, Result, Store, StoreSpec, wrong_scheme,
};
use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::dir::{Dir, Place};
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

/// `NAME_MAX` on Linux: the longest file name, in bytes, when the file system does not say.
const NAME_MAX: usize = 255;

/// The longest file name the file system of `dir` allows (`statvfs(3)` `f_namemax`), or
/// [`NAME_MAX`] when it cannot be asked (the directory is missing: the caller then fails on
/// it anyway) or answers something no file system means.
fn name_max(dir: &Path) -> usize {
    rustix::fs::statvfs(dir)
        .ok()
        .and_then(|vfs| usize::try_from(vfs.f_namemax).ok())
        .filter(|&max| max > PRIVATE_LEN)
        .unwrap_or(NAME_MAX)
}

/// The store's parent directory, its last component, and the longest name that parent's file
/// system allows, for the private names built beside it.
///
/// # Errors
///
/// [`Error::InvalidArgument`] when `path` has no last component, or when that component is
/// longer than the file system allows, so no call can ever find a store there: checked before
/// anything is created.
fn split(path: &Path) -> Result<(PathBuf, OsString, usize)> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{}: no directory name to use", path.display())))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let limit = name_max(&parent);
    if name.len() > limit {
        return Err(Error::invalid(format!(
            "dir:{}: its last component is {} bytes, longer than the {limit} bytes a file name \
             may have there (NAME_MAX)",
            path.display(),
            name.len()
        )));
    }
    Ok((parent, name.to_owned(), limit))
}

/// The bytes a private name adds to the store's name: `.`, `.dirlock-removed-` (the longest
/// `what`) and 16 hex digits.
const PRIVATE_LEN: usize = 1 + ".dirlock-removed-".len() + 16;

/// A name in `parent` that no other process picks: `.<name>.dirlock-<what>-<random>`, at most
/// `limit` bytes long.
///
/// A store's name may be as long as the file system allows, so `<name>` is cut short (at a
/// character boundary) where the whole would not fit: the random part alone keeps private
/// names apart, and the prefix only tells an operator whose leftover it is.
fn private_name(parent: &Path, name: &OsStr, what: &str, limit: usize) -> PathBuf {
    let suffix = format!(".dirlock-{what}-{:016x}", rand::random::<u64>());
    let bytes = name.as_bytes();
    let mut keep = bytes.len().min(limit.saturating_sub(1 + suffix.len()));
    // Never end inside a UTF-8 sequence: back off over its continuation bytes.
    while keep > 0 && keep < bytes.len() && bytes[keep] & 0xC0 == 0x80 {
        keep -= 1;
    }
    let mut private = Vec::with_capacity(1 + keep + suffix.len());
    private.push(b'.');
    private.extend_from_slice(&bytes[..keep]);
    private.extend_from_slice(suffix.as_bytes());
    parent.join(OsString::from_vec(private))
}

/// The error for `ENAMETOOLONG` on `path`: a component or the whole path is longer than the
/// file system allows, so no store can be there.
fn too_long(path: &Path) -> Error {
    let longest = path
        .components()
        .map(|c| c.as_os_str().len())
        .max()
        .unwrap_or(0);
    let limit = path.parent().map_or(NAME_MAX, name_max);
    Error::invalid(format!(
        "dir:{}: too long for the file system (a component of {longest} bytes, at most {limit} \
         allowed (NAME_MAX); the path {} bytes, at most {} (PATH_MAX))",
        path.display(),
        path.as_os_str().len(),
        libc::PATH_MAX - 1
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
/// (a symlink included), [`Error::InvalidArgument`] when it is longer than the file system
/// allows (`ENAMETOOLONG`), [`Error::Io`] otherwise.
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
        Errno::NAMETOOLONG => too_long(path),
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

    /// Where this table's lock directories are: the path the user gave, for a plain
    /// directory; inside the store otherwise.
    fn place(&self) -> Place {
        if self.single {
            Place::Given
        } else {
            Place::InStore
        }
    }

    /// What lock `id` holds: `None` when free, or when its directory in a store is gone or is
    /// not a directory; `Some(None)` when its record is damaged (the lock cannot be taken, and
    /// nobody can say by whom it is held).
    fn holder_of(&self, id: LockId, me: &liveness::Identity) -> Result<Option<Option<Holder>>> {
        let dir = match Dir::open_readable(&self.lock_dir(id), self.place()) {
            Ok(dir) => dir,
            // A store whose lock directory is missing, or is a file or a symlink, is damaged
            // there, and nobody holds that lock (nobody can take it: `retrieve` is `Corrupt`).
            Err(Error::Corrupt { .. }) if !self.single => return Ok(None),
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
    /// [`Error::OutOfRange`] when `id >= capacity`; [`Error::Corrupt`] when the store's
    /// directory of the lock is missing, or is a file or a symlink; as [`DirLock::new`]
    /// otherwise.
    fn retrieve(&self, id: LockId) -> Result<DirLock> {
        self.check(id)?;
        DirLock::open_at(&self.lock_dir(id), self.place()).map(|lock| lock.with_id(id))
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
    /// nobody can take it until an operator breaks it. A lock whose directory in a store is
    /// missing, or is a file or a symlink, is not listed (nobody holds it; `retrieve` of it is
    /// `Corrupt`), and the other locks are listed as usual. It reads one record per lock and
    /// needs no write access.
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
    /// whose record is damaged has a holder marked [`damaged`](Holder::damaged) with nothing
    /// else known about it, since it is not free.
    fn snapshot(&self) -> Result<Vec<LockState>> {
        Ok(self
            .held()?
            .into_iter()
            .map(|h| {
                let holder = h.holder.unwrap_or_else(|| Holder::default().damaged(true));
                LockState::new(h.id, Some(holder), Vec::new())
            })
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

    /// Builds the store under a private name beside `store` (`.<name>.dirlock-new-<random>`,
    /// with `<name>` cut short when the whole would be too long for the file system)
    /// and publishes it with `renameat2(RENAME_NOREPLACE)`. Directories are made with mode
    /// 0777 and the marker with 0666, less the umask, as `mkdir(1)` would.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a capacity of 0 or above [`MAX_CAPACITY`], a path with
    /// no last component, or a last component longer than the file system allows (its
    /// `f_namemax`, `NAME_MAX` = 255 on Linux), checked before anything is made. Any shorter
    /// name works: the private name is cut to fit.
    /// [`Error::AlreadyExists`] when anything is at `store`;
    /// [`Error::Io`] when the parent directory cannot be written. Nothing is left behind on
    /// error; a creator killed while building leaves its private directory.
    fn create(store: &Path, capacity: u32) -> Result<DirTable> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(Error::invalid(format!(
                "capacity {capacity} of a dirlock store: want 1 to {MAX_CAPACITY}"
            )));
        }
        let (parent, name, limit) = split(store)?;
        let build = private_name(&parent, &name, "new", limit);
        std::fs::create_dir(&build).map_err(|e| match e.raw_os_error() {
            Some(libc::ENAMETOOLONG) => too_long(store),
            _ => Error::io("mkdir", &build, e),
        })?;
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
    /// store whose last lock directory is missing or not a directory;
    /// [`Error::InvalidArgument`] for a path longer than the file system allows;
    /// [`Error::Io`] otherwise.
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
            Ok(_) => {
                return Err(Error::corrupt(format!(
                    "{}: the directory of lock {last} is not a directory",
                    store_what(store)
                )));
            }
            Err(Errno::NOENT) => {
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
    /// deleted with everything in it: the lock directories in increasing order, then anything
    /// else, the marker last. Handles still open on its locks keep their files until they
    /// drop them, but can no longer lock.
    ///
    /// When the deletion fails midway (a lock directory this user may not empty, say), what
    /// is left is renamed back to `store` with `renameat2(RENAME_NOREPLACE)`, so it never
    /// replaces anything that appeared there meanwhile. It is still a store of the same
    /// capacity, with its marker and its last lock directory, so `open` finds it and `remove`
    /// can be retried once the cause is fixed; the locks deleted before the failure are
    /// missing from it (`retrieve` is `Corrupt`, `held` does not list them).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when nothing is there (or another process removed it first);
    /// [`Error::Incompatible`] for a plain directory without a marker (a user's directory,
    /// perhaps locked with [`DirLock`] directly: it is never deleted), a file or a marker of
    /// another format; [`Error::Corrupt`] for a damaged marker; nothing is removed then.
    /// [`Error::InvalidArgument`] for a path longer than the file system allows.
    /// [`Error::Io`] when renaming fails, or deleting: then it names the path that could not
    /// be deleted, under `store` once what is left is back there; if the rename back failed
    /// too, its message says so, and the path is under the private name, where what is left
    /// stays.
    fn remove(store: &Path) -> Result<()> {
        let fd = open_dir(store)?;
        let Some(capacity) = read_marker(&fd, store)? else {
            return Err(Error::incompatible(
                format!("dir:{}", store.display()),
                "a dirlock store (with a dirlock-store marker)",
                "a plain directory, which remove never deletes",
            ));
        };
        let seen = rustix::fs::fstat(&fd).map_err(|e| Error::io("fstat", store, errno_io(e)))?;
        let (parent, name, limit) = split(store)?;
        let doomed = private_name(&parent, &name, "removed", limit);
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
        delete_store(&doomed, capacity).map_err(|(failed, e)| put_back(store, &doomed, &failed, e))
    }
}

/// Removes `path` whatever it is, a directory with everything in it included, without
/// following a symlink; nothing there is no error.
fn remove_entry(path: &Path) -> std::io::Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Deletes the store renamed to `doomed`, in an order that keeps what is left a store of
/// `capacity` at every step: the lock directories in increasing order (so the last one, which
/// `open` checks, goes last), then anything else, then the marker, then the directory.
///
/// # Errors
///
/// The path that could not be deleted and why; the deletion stops there.
fn delete_store(doomed: &Path, capacity: u32) -> Result<(), (PathBuf, std::io::Error)> {
    for id in 0..capacity {
        let lock_dir = doomed.join(id.to_string());
        remove_entry(&lock_dir).map_err(|e| (lock_dir, e))?;
    }
    let entries = std::fs::read_dir(doomed).map_err(|e| (doomed.to_owned(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| (doomed.to_owned(), e))?;
        if entry.file_name() != MARKER {
            let path = entry.path();
            remove_entry(&path).map_err(|e| (path, e))?;
        }
    }
    let marker = doomed.join(MARKER);
    remove_entry(&marker).map_err(|e| (marker, e))?;
    std::fs::remove_dir(doomed).map_err(|e| (doomed.to_owned(), e))
}

/// After the deletion of `doomed` (the store renamed away) failed at `failed` with `error`:
/// renames what is left back to `store` with `RENAME_NOREPLACE`, so the store stays reachable
/// and its `remove` can be retried, and never replaces what appeared at `store` meanwhile.
///
/// Returns the deletion's [`Error::Io`], naming the failed path where it now is; when the
/// rename back fails too, its message says so and where what is left stays.
fn put_back(store: &Path, doomed: &Path, failed: &Path, error: std::io::Error) -> Error {
    match rustix::fs::renameat_with(CWD, doomed, CWD, store, RenameFlags::NOREPLACE) {
        Ok(()) => {
            let path = match failed.strip_prefix(doomed) {
                Ok(rest) if !rest.as_os_str().is_empty() => store.join(rest),
                _ => store.to_owned(),
            };
            Error::io("remove", path, error)
        }
        Err(back) => {
            let source = std::io::Error::new(
                error.kind(),
                format!(
                    "{error}; renaming the store back to {} failed too ({}), so what is left \
                     of it stays at {}",
                    store.display(),
                    errno_io(back),
                    doomed.display()
                ),
            );
            Error::io("remove", failed, source)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Private names fit the limit whatever the store's name, cut at a character boundary,
    /// and keep the whole name when it fits.
    #[test]
    fn private_names_fit_the_file_systems_limit() {
        let parent = Path::new("/p");
        let short = private_name(parent, OsStr::new("store"), "removed", NAME_MAX);
        let short = short.file_name().unwrap().to_str().unwrap();
        assert!(short.starts_with(".store.dirlock-removed-"), "{short}");
        assert_eq!(short.len(), PRIVATE_LEN + "store".len());
        for name in [
            "n".repeat(NAME_MAX),
            "é".repeat(120),
            "x".repeat(NAME_MAX - PRIVATE_LEN),
        ] {
            for what in ["new", "removed"] {
                let private = private_name(parent, OsStr::new(&name), what, NAME_MAX);
                let private = private.file_name().unwrap();
                assert!(private.len() <= NAME_MAX, "{what}: {}", private.len());
                let text = private.to_str().expect("cut at a character boundary");
                let kept = &text[1..text.find(".dirlock-").unwrap()];
                assert!(name.starts_with(kept), "{text}");
            }
        }
    }

    /// A failed deletion puts the store back, naming the path that failed under the store's
    /// name; when something appeared at that name meanwhile, it is not replaced, and the error
    /// says where what is left stays.
    #[test]
    fn a_failed_deletion_puts_the_store_back_but_never_over_something_else() {
        let root = tempfile::tempdir().unwrap();
        let store = root.path().join("store");
        let doomed = root.path().join(".store.dirlock-removed-0");
        std::fs::create_dir_all(doomed.join("1")).unwrap();
        let denied = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        match put_back(&store, &doomed, &doomed.join("1"), denied()) {
            Error::Io { op, path, source } => {
                assert_eq!((op, path), ("remove", store.join("1")));
                assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
            }
            other => panic!("{other:?}"),
        }
        assert!(store.join("1").is_dir() && !doomed.exists());

        std::fs::rename(&store, &doomed).unwrap();
        std::fs::create_dir(&store).unwrap();
        std::fs::write(store.join("theirs"), "x").unwrap();
        match put_back(&store, &doomed, &doomed.join("1"), denied()) {
            Error::Io { path, source, .. } => {
                assert_eq!(path, doomed.join("1"));
                assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
                let text = source.to_string();
                assert!(text.contains("renaming the store back"), "{text}");
                assert!(text.contains(&doomed.display().to_string()), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert!(doomed.join("1").is_dir());
        assert_eq!(std::fs::read_to_string(store.join("theirs")).unwrap(), "x");
    }

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
