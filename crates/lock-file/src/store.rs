//! The store directory: race-free create, validating open, remove.
//!
//! - `create` builds the whole store (every lock file, the table, the marker) in a temporary
//!   directory beside the target and publishes it with `renameat2(RENAME_NOREPLACE)`: nobody ever
//!   sees a half-built store, and of many concurrent creators exactly one wins.
//! - `open` reads and checks everything before using anything and writes nothing, so a failed
//!   open leaves a damaged or foreign directory exactly as it was.
//! - `remove` renames the store out of the way (so openers see `NotFound` at once) and then
//!   deletes it, and refuses a directory that is not a store.
//!
//! Files inside the store are opened relative to the store's directory descriptor with
//! `O_NOFOLLOW`, and their type is checked, so a lock file replaced by a symlink or a directory
//! is an error, never followed.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use lock_api::{Error, Result};
use rustix::fs::{CWD, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::format::{
    LOCKS_DIR, Layout, MARKER_FILE, MARKER_MAGIC, MARKER_MAX_LEN, MAX_CAPACITY, Marker, TABLE_FILE,
};
use crate::table::Table;

/// The longest store directory name: leaves room for the temporary names made beside it.
const MAX_NAME_LEN: usize = 200;
/// Directories are created `rwxr-xr-x` and files `rw-r--r--`, less the umask.
const DIR_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;

/// An open, validated store.
#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) path: PathBuf,
    pub(crate) marker: Marker,
    /// The `locks` directory, opened once: lock files are opened relative to it.
    pub(crate) locks_dir: OwnedFd,
    pub(crate) locks_path: PathBuf,
    pub(crate) table: Table,
}

/// The error for an OS error while doing `op` to `path`.
fn io(op: &'static str, path: &Path, errno: Errno) -> Error {
    Error::io(op, path, std::io::Error::from(errno))
}

/// Splits a store path into its parent directory and its final name, refusing paths whose last
/// component is not a plain name (`..`, `/`) and over-long names.
fn split(path: &Path) -> Result<(PathBuf, OsString)> {
    check_nul(path)?;
    let name = match path.components().next_back() {
        Some(Component::Normal(name)) => name,
        _ => {
            return Err(Error::invalid(format!(
                "store path {} must end in a directory name",
                path.display()
            )));
        }
    };
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "store name in {} is {} bytes, at most {MAX_NAME_LEN} allowed",
            path.display(),
            name.len()
        )));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name.to_os_string()))
}

/// Refuses a path with a NUL byte, which no system call can take.
fn check_nul(path: &Path) -> Result<()> {
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(Error::invalid(format!(
            "store path {:?} contains a NUL byte",
            path
        )));
    }
    Ok(())
}

/// A name for a temporary sibling of `name`, unique to this process and moment.
fn temp_name(name: &OsStr, what: &str) -> OsString {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut out = OsString::from(".");
    out.push(name);
    out.push(format!(
        ".lockyard-{what}-{}-{nanos}-{n}",
        std::process::id()
    ));
    out
}

/// Opens a directory (following symlinks only if `follow`).
fn open_dir(at: impl AsFd, path: &Path, rel: &OsStr, follow: bool) -> Result<OwnedFd> {
    let mut flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    rustix::fs::openat(at, rel, flags, Mode::empty()).map_err(|e| match e {
        Errno::NOTDIR | Errno::LOOP if !follow => Error::corrupt(format!(
            "{} is not a directory (a file or a symbolic link)",
            path.display()
        )),
        e => io("open", path, e),
    })
}

/// Opens a regular file inside a store with `O_NOFOLLOW` and checks its type: a symlink, a
/// directory or a missing file are `Corrupt`.
pub(crate) fn open_file(at: impl AsFd, path: &Path, rel: &OsStr, write: bool) -> Result<File> {
    let access = if write { OFlags::RDWR } else { OFlags::RDONLY };
    let flags = access | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = rustix::fs::openat(at, rel, flags, Mode::empty()).map_err(|e| match e {
        Errno::NOENT => Error::corrupt(format!("{} is missing", path.display())),
        Errno::LOOP => Error::corrupt(format!("{} is a symbolic link", path.display())),
        Errno::ISDIR => Error::corrupt(format!("{} is a directory", path.display())),
        e => io("open", path, e),
    })?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| io("fstat", path, e))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(Error::corrupt(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(File::from(fd))
}

/// The path of lock `id`'s file in a `locks` directory.
pub(crate) fn lock_name(id: u32) -> OsString {
    OsString::from(id.to_string())
}

/// Creates a store of `marker.capacity` locks at `path`.
///
/// # Errors
///
/// `InvalidArgument` for a capacity outside `1..=MAX_CAPACITY` or a bad path; `AlreadyExists` when
/// anything is at `path`; `Io` for OS errors (the temporary directory is removed then).
pub(crate) fn create(path: &Path, marker: Marker) -> Result<Store> {
    if marker.capacity == 0 || marker.capacity > MAX_CAPACITY {
        return Err(Error::invalid(format!(
            "capacity {} is outside 1..={MAX_CAPACITY}",
            marker.capacity
        )));
    }
    let (parent_path, name) = split(path)?;
    let parent = open_dir(CWD, &parent_path, parent_path.as_os_str(), true)?;
    let exists = || Error::AlreadyExists {
        what: format!("lock-file store {}", path.display()),
    };
    // Cheap early answer; the rename below is what really decides.
    match rustix::fs::statat(&parent, &name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => return Err(exists()),
        Err(Errno::NOENT) => {}
        Err(e) => return Err(io("stat", path, e)),
    }
    let temp = temp_name(&name, "new");
    let temp_path = parent_path.join(&temp);
    rustix::fs::mkdirat(&parent, &temp, Mode::from_raw_mode(DIR_MODE))
        .map_err(|e| io("mkdir", &temp_path, e))?;
    let built = build(&parent, &temp, &temp_path, marker).and_then(|()| {
        rustix::fs::renameat_with(&parent, &temp, &parent, &name, RenameFlags::NOREPLACE).map_err(
            |e| match e {
                Errno::EXIST | Errno::NOTEMPTY => exists(),
                e => io("renameat2", path, e),
            },
        )
    });
    if let Err(e) = built {
        // The build error is the one to report; a leftover temporary directory is named in it
        // only if removing it fails too, which the caller cannot act on anyway.
        let _ = std::fs::remove_dir_all(&temp_path);
        return Err(e);
    }
    rustix::fs::fsync(&parent).map_err(|e| io("fsync", &parent_path, e))?;
    open(path)
}

/// Fills the fresh directory `temp` with every lock file, the table and the marker, all synced.
fn build(parent: &OwnedFd, temp: &OsStr, temp_path: &Path, marker: Marker) -> Result<()> {
    let dir = open_dir(parent, temp_path, temp, false)?;
    let create = |at: &OwnedFd, rel: &OsStr, at_path: &Path| -> Result<File> {
        let flags =
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rustix::fs::openat(at, rel, flags, Mode::from_raw_mode(FILE_MODE))
            .map(File::from)
            .map_err(|e| io("create", &at_path.join(rel), e))
    };

    let locks_path = temp_path.join(LOCKS_DIR);
    rustix::fs::mkdirat(&dir, LOCKS_DIR, Mode::from_raw_mode(DIR_MODE))
        .map_err(|e| io("mkdir", &locks_path, e))?;
    let locks = open_dir(&dir, &locks_path, OsStr::new(LOCKS_DIR), false)?;
    for id in 0..marker.capacity {
        create(&locks, &lock_name(id), &locks_path)?;
    }
    rustix::fs::fsync(&locks).map_err(|e| io("fsync", &locks_path, e))?;

    let layout = Layout::new(marker.capacity);
    let table_path = temp_path.join(TABLE_FILE);
    let table = create(&dir, OsStr::new(TABLE_FILE), temp_path)?;
    table
        .set_len(layout.len_bytes())
        .map_err(|e| Error::io("ftruncate", &table_path, e))?;
    let header: Vec<u8> = layout
        .header(marker.owner_death)
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    table
        .write_all_at(&header, 0)
        .map_err(|e| Error::io("write", &table_path, e))?;
    table
        .sync_all()
        .map_err(|e| Error::io("fsync", &table_path, e))?;

    let marker_path = temp_path.join(MARKER_FILE);
    let mut file = create(&dir, OsStr::new(MARKER_FILE), temp_path)?;
    file.write_all(marker.render().as_bytes())
        .map_err(|e| Error::io("write", &marker_path, e))?;
    file.sync_all()
        .map_err(|e| Error::io("fsync", &marker_path, e))?;
    rustix::fs::fsync(&dir).map_err(|e| io("fsync", temp_path, e))
}

/// Reads and parses the marker of the store directory `dir` at `path`.
///
/// A missing marker means the directory is not a store: `Incompatible`.
fn read_marker(dir: &OwnedFd, path: &Path) -> Result<Marker> {
    let marker_path = path.join(MARKER_FILE);
    let mut file = match open_file(dir, &marker_path, OsStr::new(MARKER_FILE), false) {
        Err(Error::Corrupt { .. }) if !exists_at(dir, MARKER_FILE) => {
            return Err(Error::incompatible(
                format!("directory {}", path.display()),
                format!("a lockyard lock-file store (a {MARKER_FILE} file)"),
                format!("no {MARKER_FILE} file"),
            ));
        }
        other => other?,
    };
    let mut text = Vec::new();
    (&mut file)
        .take(MARKER_MAX_LEN + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::io("read", &marker_path, e))?;
    if text.len() as u64 > MARKER_MAX_LEN {
        return Err(Error::incompatible(
            format!("marker {}", marker_path.display()),
            format!("at most {MARKER_MAX_LEN} bytes"),
            "a larger file",
        ));
    }
    Marker::parse(&text, &marker_path)
}

/// Whether anything (even a dangling symlink) is at `rel` in `dir`.
fn exists_at(dir: &OwnedFd, rel: &str) -> bool {
    !matches!(
        rustix::fs::statat(dir, rel, rustix::fs::AtFlags::SYMLINK_NOFOLLOW),
        Err(Errno::NOENT)
    )
}

/// Opens and validates the store at `path`. Writes nothing.
///
/// # Errors
///
/// `NotFound` when nothing is at `path`; `Incompatible` when it is not a store or of another
/// format version; `Corrupt` when it is damaged; `Io` for OS errors such as `EACCES`.
pub(crate) fn open(path: &Path) -> Result<Store> {
    check_nul(path)?;
    let dir = rustix::fs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOENT => Error::NotFound {
            what: format!("lock-file store {}", path.display()),
        },
        Errno::NOTDIR => Error::incompatible(
            format!("lock-file store {}", path.display()),
            "a directory",
            "a file that is not a directory",
        ),
        e => io("open", path, e),
    })?;
    let marker = read_marker(&dir, path)?;
    let layout = Layout::new(marker.capacity);
    let locks_path = path.join(LOCKS_DIR);
    let locks_dir =
        open_dir(&dir, &locks_path, OsStr::new(LOCKS_DIR), false).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == ErrorKind::NotFound => {
                Error::corrupt(format!("{} is missing", locks_path.display()))
            }
            e => e,
        })?;
    let table_path = path.join(TABLE_FILE);
    let file = open_file(&dir, &table_path, OsStr::new(TABLE_FILE), true)?;
    let table = Table::map(file, layout, marker.owner_death, &table_path)?;
    Ok(Store {
        path: path.to_path_buf(),
        marker,
        locks_dir,
        locks_path,
        table,
    })
}

/// Removes the store at `path`.
///
/// # Errors
///
/// `NotFound` when nothing is there; `Incompatible` when it is not a lockyard lock-file store
/// (of any version): nothing is deleted then; `Io` for OS errors.
pub(crate) fn remove(path: &Path) -> Result<()> {
    let (parent_path, name) = split(path)?;
    let parent = open_dir(CWD, &parent_path, parent_path.as_os_str(), true)?;
    let dir = match rustix::fs::openat(
        &parent,
        &name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(dir) => dir,
        Err(Errno::NOENT) => {
            return Err(Error::NotFound {
                what: format!("lock-file store {}", path.display()),
            });
        }
        Err(Errno::NOTDIR | Errno::LOOP) => {
            return Err(Error::incompatible(
                format!("lock-file store {}", path.display()),
                "a directory",
                "a file or a symbolic link",
            ));
        }
        Err(e) => return Err(io("open", path, e)),
    };
    // Any version of our marker will do: removing a store of a newer format is legitimate, but
    // a directory that is not a store at all is never deleted.
    let marker_path = path.join(MARKER_FILE);
    let mut head = [0u8; MARKER_MAGIC.len() + 1];
    let ours = match open_file(&dir, &marker_path, OsStr::new(MARKER_FILE), false) {
        Ok(file) => {
            let n = file
                .read_at(&mut head, 0)
                .map_err(|e| Error::io("read", &marker_path, e))?;
            n == head.len()
                && head[..MARKER_MAGIC.len()] == *MARKER_MAGIC.as_bytes()
                && head[n - 1] == b'\n'
        }
        Err(Error::Io { source, .. }) => return Err(Error::io("open", &marker_path, source)),
        Err(_) => false,
    };
    if !ours {
        return Err(Error::incompatible(
            format!("directory {}", path.display()),
            "a lockyard lock-file store",
            format!("no valid {MARKER_FILE} file: refusing to remove it"),
        ));
    }
    drop(dir);
    let doomed = temp_name(&name, "removed");
    let doomed_path = parent_path.join(&doomed);
    rustix::fs::renameat_with(&parent, &name, &parent, &doomed, RenameFlags::NOREPLACE).map_err(
        |e| match e {
            Errno::NOENT => Error::NotFound {
                what: format!("lock-file store {}", path.display()),
            },
            e => io("renameat2", path, e),
        },
    )?;
    std::fs::remove_dir_all(&doomed_path).map_err(|e| Error::io("remove", &doomed_path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_refuses_paths_without_a_final_name() {
        for bad in ["/", "..", "a/..", ""] {
            assert!(
                matches!(split(Path::new(bad)), Err(Error::InvalidArgument { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            split(Path::new(&"x".repeat(MAX_NAME_LEN + 1))),
            Err(Error::InvalidArgument { .. })
        ));
        let (parent, name) = split(Path::new("store")).expect("plain name");
        assert_eq!(
            (parent, name),
            (PathBuf::from("."), OsString::from("store"))
        );
        let (parent, name) = split(Path::new("/a/b/./c")).expect("nested");
        assert_eq!((parent, name), (PathBuf::from("/a/b"), OsString::from("c")));
    }
}
