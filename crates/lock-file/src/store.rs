//! The store directory: race-free create, validating open, remove.
//!
//! - `create` builds the whole store (every lock file, the table, the marker) in a temporary
//!   directory beside the target and publishes it with `renameat2(RENAME_NOREPLACE)`: nobody ever
//!   sees a half-built store, and of many concurrent creators exactly one wins.
//! - `open` reads and checks everything before using anything and writes nothing, so a failed
//!   open leaves a damaged or foreign directory exactly as it was.
//! - `remove` renames the store out of the way (so openers see `NotFound` at once) and then
//!   deletes it, its marker last, and refuses a directory that is not a store. A deletion that
//!   fails midway puts what is left back at the store's name (`RENAME_NOREPLACE`), so the store
//!   never disappears into a hidden directory, and the remove can be retried.
//! - Both decide what is a store by one function, `identify` (create opens what it made, so it
//!   goes through it too): they never disagree about a path.
//!
//! The store directory itself and the files inside it are opened with `O_NOFOLLOW` (files
//! relative to the store's directory descriptor), and their type is checked, so a symlinked
//! store path, or a lock file replaced by a symlink or a directory, is an error, never followed.
//! Only the directories above the store are reached through symlinks.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use lock_api::{Error, Result};
use rustix::fs::{CWD, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::format::{
    CLIENTS_FILE, DETECT_FILE, LOCKS_DIR, Layout, MARKER_FILE, MARKER_MAX_LEN, MAX_CAPACITY,
    Marker, OWNERS_DIR, TABLE_FILE,
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
    /// The `owners` directory, where managers that wait keep their waiter files.
    pub(crate) owners_dir: OwnedFd,
    pub(crate) owners_path: PathBuf,
    /// The `deadlock` file, whose `flock` serialises deadlock checks.
    pub(crate) detect: File,
    pub(crate) detect_path: PathBuf,
    /// The `clients` file, opened for this manager alone: its OFD lock on the manager's entry
    /// lasts as long as this description (`clients.rs`).
    pub(crate) clients: File,
    pub(crate) clients_path: PathBuf,
    /// The marker, opened and held with a shared `flock` for as long as the store is open: what
    /// tells [`remove_unused`] that a manager has it open. Never read after the open.
    #[allow(
        dead_code,
        reason = "held for its shared flock, released when it is dropped"
    )]
    registration: File,
}

/// The error for an OS error while doing `op` to `path`.
pub(crate) fn io(op: &'static str, path: &Path, errno: Errno) -> Error {
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

/// The ids below `capacity` whose lock file in the `locks` directory `dir` at `path` is healthy,
/// as a bitset laid out like the allocation leaves (bit `id % 64` of word `id / 64`).
///
/// Healthy means what [`open_file`] requires of a lock file: a regular file, not followed
/// through a symlink. One pass of `getdents(2)` reads the types the directory records, so this
/// costs no `open` per id; an entry of unknown type (some filesystems do not record it) is
/// checked with `fstatat(2)`. A missing file, a directory or a symlink in its place, or an entry
/// whose name is not an id written as `lock_name` writes it, leaves its bit clear.
pub(crate) fn healthy_lock_files(dir: &OwnedFd, path: &Path, capacity: u32) -> Result<Vec<u64>> {
    use rustix::fs::FileType;
    let mut healthy = vec![0u64; (capacity as usize).div_ceil(64)];
    let entries = rustix::fs::Dir::read_from(dir).map_err(|e| io("open", path, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io("getdents", path, e))?;
        let Some(id) = parse_lock_name(entry.file_name().to_bytes()).filter(|&id| id < capacity)
        else {
            continue;
        };
        let regular = match entry.file_type() {
            FileType::RegularFile => true,
            FileType::Unknown => {
                match rustix::fs::statat(
                    dir,
                    entry.file_name(),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                ) {
                    Ok(st) => FileType::from_raw_mode(st.st_mode) == FileType::RegularFile,
                    // Gone since it was listed: as good as missing.
                    Err(Errno::NOENT) => false,
                    Err(e) => return Err(io("stat", &path.join(lock_name(id)), e)),
                }
            }
            _ => false,
        };
        if regular {
            healthy[id as usize / 64] |= 1 << (id % 64);
        }
    }
    Ok(healthy)
}

/// The number a file name stands for, if it is written the one way `to_string` writes it:
/// decimal digits without a leading zero (so `03` is not lock 3's file). Lock files and waiter
/// files are named so.
pub(crate) fn parse_name(name: &[u8]) -> Option<u64> {
    let canonical = !name.is_empty()
        && name.len() <= 20
        && name.iter().all(u8::is_ascii_digit)
        && (name[0] != b'0' || name.len() == 1);
    if !canonical {
        return None;
    }
    std::str::from_utf8(name).ok()?.parse().ok()
}

/// The id a lock file's name stands for, if it is one written as [`lock_name`] writes it.
fn parse_lock_name(name: &[u8]) -> Option<u32> {
    parse_name(name).and_then(|n| u32::try_from(n).ok())
}

/// Refuses a capacity no store can have: `InvalidArgument` outside `1..=MAX_CAPACITY`. `create`
/// and `open_or_create` check it before anything else, so a bad capacity is the same error
/// whether or not a store exists.
pub(crate) fn check_capacity(capacity: u32) -> Result<()> {
    if capacity == 0 || capacity > MAX_CAPACITY {
        return Err(Error::invalid(format!(
            "capacity {capacity} is outside 1..={MAX_CAPACITY}"
        )));
    }
    Ok(())
}

/// Creates a store of `marker.capacity` locks at `path`.
///
/// # Errors
///
/// `InvalidArgument` for a capacity outside `1..=MAX_CAPACITY` or a bad path; `AlreadyExists` when
/// anything is at `path` (a symlink too, even a dangling one); `Io` for OS errors, a missing
/// parent included (the temporary directory is removed then).
pub(crate) fn create(path: &Path, marker: Marker) -> Result<Store> {
    check_capacity(marker.capacity)?;
    let Location {
        parent_path,
        parent,
        name,
    } = locate(path)?;
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
    let owners_path = temp_path.join(OWNERS_DIR);
    rustix::fs::mkdirat(&dir, OWNERS_DIR, Mode::from_raw_mode(DIR_MODE))
        .map_err(|e| io("mkdir", &owners_path, e))?;
    create(&dir, OsStr::new(DETECT_FILE), temp_path)?;
    create(&dir, OsStr::new(CLIENTS_FILE), temp_path)?;

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

/// Where a store lives: its parent directory, opened, and its name there.
#[derive(Debug)]
struct Location {
    parent_path: PathBuf,
    parent: OwnedFd,
    name: OsString,
}

/// Refuses a store path that does not end in a plain name, and opens its parent directory.
///
/// Symlinks up to the parent are followed: reaching a store through a symlinked directory
/// (`/var/run` is one on many systems) is ordinary. The store's own name is never followed.
fn locate(path: &Path) -> Result<Location> {
    let (parent_path, name) = split(path)?;
    let parent = open_dir(CWD, &parent_path, parent_path.as_os_str(), true)?;
    Ok(Location {
        parent_path,
        parent,
        name,
    })
}

/// A directory that [`identify`] found to be a lockyard lock-file store, of some version.
#[derive(Debug)]
struct Identified {
    location: Location,
    dir: OwnedFd,
    /// The marker's bytes: the first line is the magic, the rest is not checked yet.
    marker: Vec<u8>,
    marker_path: PathBuf,
    /// The marker, opened: an opener registers on it, a remover of an unused store locks it.
    marker_file: File,
}

/// The one rule by which `open` (and so `create` and `open_or_create`, which open what they
/// made or found) and `remove` decide that `path` is a lock-file store:
///
/// 1. `path` holds no NUL and ends in a plain name (`InvalidArgument`);
/// 2. its parent directory exists (`NotFound` if not) and is reached following symlinks;
/// 3. the store directory is opened with `O_NOFOLLOW`: nothing there is `NotFound`; a symbolic
///    link (whatever it points to, even a store) or anything but a directory is `Incompatible`;
/// 4. its marker is a regular file (a symlink or a directory there is `Corrupt`, as for every
///    file inside a store) of at most `MARKER_MAX_LEN` bytes whose first line is exactly the
///    magic ended by LF ([`Marker::is_ours`]); no marker, a larger one or another first line
///    (CRLF included) is `Incompatible`: the directory is not a store.
///
/// What follows differs on purpose: `open` parses the rest of the marker and checks the table
/// and refuses another version; `remove` deletes a store of any version or a damaged one.
fn identify(path: &Path) -> Result<Identified> {
    let not_found = || Error::NotFound {
        what: format!("lock-file store {}", path.display()),
    };
    let location = match locate(path) {
        Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            return Err(not_found());
        }
        other => other?,
    };
    let dir = rustix::fs::openat(
        &location.parent,
        &location.name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOENT => not_found(),
        // O_NOFOLLOW | O_DIRECTORY on a symlink is ENOTDIR on Linux, ELOOP elsewhere.
        Errno::NOTDIR | Errno::LOOP => {
            let symlink = rustix::fs::statat(
                &location.parent,
                &location.name,
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .is_ok_and(|st| {
                rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink
            });
            Error::incompatible(
                format!("lock-file store {}", path.display()),
                "a directory (not a symbolic link to one)",
                if symlink {
                    "a symbolic link"
                } else {
                    "a file that is not a directory"
                },
            )
        }
        e => io("open", path, e),
    })?;

    let marker_path = path.join(MARKER_FILE);
    let mut file = match open_file(&dir, &marker_path, OsStr::new(MARKER_FILE), false) {
        Err(Error::Corrupt { .. }) if !exists_at(&dir, MARKER_FILE) => {
            return Err(Error::incompatible(
                format!("directory {}", path.display()),
                format!("a lockyard lock-file store (a {MARKER_FILE} file)"),
                format!("no {MARKER_FILE} file"),
            ));
        }
        other => other?,
    };
    let mut marker = Vec::new();
    (&mut file)
        .take(MARKER_MAX_LEN + 1)
        .read_to_end(&mut marker)
        .map_err(|e| Error::io("read", &marker_path, e))?;
    if marker.len() as u64 > MARKER_MAX_LEN {
        return Err(Error::incompatible(
            format!("marker {}", marker_path.display()),
            format!("at most {MARKER_MAX_LEN} bytes"),
            "a larger file",
        ));
    }
    if !Marker::is_ours(&marker) {
        return Err(Marker::foreign(&marker, &marker_path));
    }
    Ok(Identified {
        location,
        dir,
        marker,
        marker_path,
        marker_file: file,
    })
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
/// As for [`identify`]; then `Incompatible` for another format version; `Corrupt` when the
/// marker's fields, the `locks` directory or the table are damaged; `Io` for OS errors such as
/// `EACCES`.
pub(crate) fn open(path: &Path) -> Result<Store> {
    let found = identify(path)?;
    let marker = Marker::parse(&found.marker, &found.marker_path)?;
    let dir = found.dir;
    let layout = Layout::new(marker.capacity);
    let locks_path = path.join(LOCKS_DIR);
    let locks_dir =
        open_dir(&dir, &locks_path, OsStr::new(LOCKS_DIR), false).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == ErrorKind::NotFound => {
                Error::corrupt(format!("{} is missing", locks_path.display()))
            }
            e => e,
        })?;
    let owners_path = path.join(OWNERS_DIR);
    let owners_dir =
        open_dir(&dir, &owners_path, OsStr::new(OWNERS_DIR), false).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == ErrorKind::NotFound => {
                Error::corrupt(format!("{} is missing", owners_path.display()))
            }
            e => e,
        })?;
    let detect_path = path.join(DETECT_FILE);
    let detect = open_file(&dir, &detect_path, OsStr::new(DETECT_FILE), false)?;
    let table_path = path.join(TABLE_FILE);
    let file = open_file(&dir, &table_path, OsStr::new(TABLE_FILE), true)?;
    let table = Table::map(file, layout, marker.owner_death, &table_path)?;
    let clients_path = path.join(CLIENTS_FILE);
    let clients = open_file(&dir, &clients_path, OsStr::new(CLIENTS_FILE), true)?;
    register(&found.marker_file, path, &found.marker_path)?;
    Ok(Store {
        path: path.to_path_buf(),
        marker,
        locks_dir,
        locks_path,
        table,
        owners_dir,
        owners_path,
        detect,
        detect_path,
        clients,
        clients_path,
        registration: found.marker_file,
    })
}

/// How long an opener waits for a remover of an unused store ([`remove_unused`]) that holds
/// the marker's exclusive `flock`: it holds it while it renames the store away and deletes it,
/// so only a stopped or stalled remover makes an open wait this long.
const REMOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// An opener's registration, the last step of [`open`] (registry.rs): a shared `flock` on the
/// marker, held for the manager's life.
///
/// # Errors
///
/// `NotFound` when the store was deleted while it was being opened; `Unavailable` when a
/// remover held the marker for all of [`REMOVER_WAIT`]; `Io` for OS errors.
fn register(marker: &File, path: &Path, marker_path: &Path) -> Result<()> {
    let sys = Registry::new(marker, path, marker_path);
    crate::registry::register(&sys, &format!("lock-file store {}", path.display()))
}

/// Removes the store at `path` as [`remove`] does, only if no manager has it open (registry.rs):
/// it holds an exclusive `flock` on the marker, taken without waiting, from before it looks
/// until the store is deleted (or put back), and every open manager holds a shared one.
///
/// # Errors
///
/// `InUse` when a manager has the store open (nothing is removed); otherwise as [`remove`].
pub(crate) fn remove_unused(path: &Path) -> Result<()> {
    let found = identify(path)?;
    // The same open file description as `found`'s, which `remove_found` keeps to the end.
    let marker_path = found.marker_path.clone();
    let marker = found
        .marker_file
        .try_clone()
        .map_err(|e| Error::io("dup", &marker_path, e))?;
    // Opened before the store may go, to name its managers should it be in use; a store of an
    // older format has no such file, and is refused in plainer words.
    let clients_path = path.join(CLIENTS_FILE);
    let clients = open_file(&found.dir, &clients_path, OsStr::new(CLIENTS_FILE), false).ok();
    let sys = Registry::new(&marker, path, &marker_path);
    let what = format!("lock-file store {}", path.display());
    let claimed = crate::registry::claim(&sys, &what, || remove_found(found, path));
    match claimed {
        Err(Error::InUse { what: said }) => Err(Error::InUse {
            what: clients
                .and_then(|file| name_users(&file, &clients_path, &what))
                .unwrap_or(said),
        }),
        other => other,
    }
}

/// What keeps the store `what` in use: the managers listed in its `clients` file (clients.rs),
/// by pid where this process's pid namespace is theirs. This process holds no entry there, so
/// every live one is seen. `None` when the file cannot be read or lists nobody (a manager
/// beyond the entries, or another remover), and the error keeps its plainer words.
fn name_users(clients: &File, clients_path: &Path, what: &str) -> Option<String> {
    let here = lockyard_fork::pid_namespace();
    let open: Vec<Option<u32>> = crate::clients::others(clients, clients_path)
        .ok()?
        .iter()
        .map(|entry| lock_api::pid_seen_here(entry.pid, entry.pid_ns, here))
        .collect();
    (!open.is_empty()).then(|| format!("{what} ({})", lock_api::managers_open(&open)))
}

/// The system calls of registry.rs, on one store's marker.
struct Registry<'a> {
    marker: &'a File,
    path: &'a Path,
    marker_path: &'a Path,
    deadline: std::time::Instant,
}

impl<'a> Registry<'a> {
    fn new(marker: &'a File, path: &'a Path, marker_path: &'a Path) -> Registry<'a> {
        Registry {
            marker,
            path,
            marker_path,
            deadline: std::time::Instant::now() + REMOVER_WAIT,
        }
    }

    fn try_flock(&self, how: rustix::fs::FlockOperation) -> Result<bool> {
        loop {
            match rustix::fs::flock(self.marker, how) {
                Ok(()) => return Ok(true),
                Err(Errno::INTR) => {}
                Err(Errno::WOULDBLOCK) => return Ok(false),
                Err(e) => return Err(io("flock", self.marker_path, e)),
            }
        }
    }
}

impl crate::registry::RegistrySys for Registry<'_> {
    fn try_shared(&self) -> Result<bool> {
        self.try_flock(rustix::fs::FlockOperation::NonBlockingLockShared)
    }

    fn try_exclusive(&self) -> Result<bool> {
        self.try_flock(rustix::fs::FlockOperation::NonBlockingLockExclusive)
    }

    fn release(&self) -> Result<()> {
        rustix::fs::flock(self.marker, rustix::fs::FlockOperation::Unlock)
            .map_err(|e| io("flock", self.marker_path, e))
    }

    fn linked(&self) -> Result<bool> {
        let stat = rustix::fs::fstat(self.marker).map_err(|e| io("fstat", self.marker_path, e))?;
        Ok(stat.st_nlink != 0)
    }

    fn pause(&self) -> Result<()> {
        if std::time::Instant::now() >= self.deadline {
            return Err(Error::unavailable(std::io::Error::other(format!(
                "lock-file store {} is being removed by another process, which has not finished within {REMOVER_WAIT:?}",
                self.path.display()
            ))));
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
        Ok(())
    }
}

/// Removes the store at `path`: renames it to a hidden sibling (`.NAME.lockyard-removed-*`), so
/// that openers see `NotFound` at once, then deletes that, the marker last.
///
/// When the deletion fails midway (a directory inside may not be written, say), what is left
/// is renamed back to `path` with `RENAME_NOREPLACE` (never over something that appeared there
/// meanwhile), so the store stays reachable: `open` then reports it as it now is (`Corrupt`
/// when parts are gone), and since the marker goes last, `remove` recognises it and can be
/// retried once the cause is fixed.
///
/// # Errors
///
/// As for [`identify`]: `NotFound` when nothing is there; `Incompatible` when it is not a
/// lockyard lock-file store (of any version) or is a symlink; `Corrupt` when its marker is a
/// symlink or a directory. Nothing is deleted then. `Io` for OS errors: a failed deletion is
/// `Io` with `op` "remove" and the path of the entry that could not be deleted, as it is after
/// the store was put back; if putting it back failed too, the path is the entry's in the hidden
/// directory, and the message says that renaming it back failed, and why.
pub(crate) fn remove(path: &Path) -> Result<()> {
    // Any version of our marker will do, and so will a damaged store of ours: removing a store
    // of a newer format is legitimate, but a directory that is not a store is never deleted.
    remove_found(identify(path)?, path)
}

/// The rest of [`remove`], for the store `identify` found at `path`.
fn remove_found(found: Identified, path: &Path) -> Result<()> {
    // The marker stays open to the end: `remove_unused`'s lock on it lasts that long.
    let Identified {
        location,
        dir,
        marker_file: _marker,
        ..
    } = found;
    drop(dir);
    let Location {
        parent_path,
        parent,
        name,
    } = location;
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
    let Err((entry, source)) = delete(&parent, &doomed, &doomed_path) else {
        return Ok(());
    };
    put_back(&parent, &doomed, &doomed_path, &name, path, entry, source)
}

/// Deletes the directory `doomed` in `parent` (at `doomed_path`) and everything in it: every
/// entry but the marker in name order, then the marker, then the directory itself. On failure,
/// returns the name of the entry that could not be deleted (empty for the directory itself) and
/// the error.
fn delete(
    parent: &OwnedFd,
    doomed: &OsStr,
    doomed_path: &Path,
) -> std::result::Result<(), (OsString, std::io::Error)> {
    let whole = |e: Errno| (OsString::new(), std::io::Error::from(e));
    let dir = rustix::fs::openat(
        parent,
        doomed,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(whole)?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir).map_err(whole)? {
        let name = entry.map_err(whole)?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name));
        }
    }
    // The marker last: until the very end, what is left is still a store that `remove`
    // recognises, should it have to be put back.
    names.sort_by(|a, b| (a == MARKER_FILE, a).cmp(&(b == MARKER_FILE, b)));
    for name in names {
        let failed = |e: std::io::Error| (name.clone(), e);
        let is_dir = rustix::fs::statat(&dir, &name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir())
            .map_err(|e| failed(e.into()))?;
        if is_dir {
            // `remove_dir_all` does not follow symlinks inside, and this name is our own.
            std::fs::remove_dir_all(doomed_path.join(&name)).map_err(failed)?;
        } else {
            rustix::fs::unlinkat(&dir, &name, rustix::fs::AtFlags::empty())
                .map_err(|e| failed(e.into()))?;
        }
    }
    rustix::fs::unlinkat(parent, doomed, rustix::fs::AtFlags::REMOVEDIR).map_err(whole)
}

/// After [`delete`] failed on `entry` with `source`: renames what is left of the store from
/// `doomed` back to `name` without replacing anything there, and returns the deletion's error
/// (naming the entry where it now is), or, if the rename fails too, an error that says both.
#[cold]
fn put_back(
    parent: &OwnedFd,
    doomed: &OsStr,
    doomed_path: &Path,
    name: &OsStr,
    path: &Path,
    entry: OsString,
    source: std::io::Error,
) -> Result<()> {
    let at = |dir: &Path| {
        if entry.is_empty() {
            dir.to_path_buf()
        } else {
            dir.join(&entry)
        }
    };
    match rustix::fs::renameat_with(parent, doomed, parent, name, RenameFlags::NOREPLACE) {
        Ok(()) => Err(Error::io("remove", at(path), source)),
        Err(back) => {
            let back = std::io::Error::from(back);
            Err(Error::io(
                "remove",
                at(doomed_path),
                std::io::Error::new(
                    source.kind(),
                    format!(
                        "{source}; putting the store back at {} failed too ({back}), so what is \
                         left of it stays at {}",
                        path.display(),
                        doomed_path.display()
                    ),
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_lock_names_are_ids() {
        for id in [0, 7, 10, 1 << 20, u32::MAX] {
            assert_eq!(parse_lock_name(lock_name(id).as_bytes()), Some(id));
        }
        for bad in [
            "",
            "03",
            "00",
            "-1",
            "+1",
            "1a",
            " 1",
            "4294967296",
            "99999999999",
            ".",
        ] {
            assert_eq!(parse_lock_name(bad.as_bytes()), None, "{bad:?}");
        }
    }

    /// When the store cannot be put back (something took its name meanwhile), the error says
    /// so, names the entry in the hidden directory, keeps the deletion's kind, and nothing is
    /// replaced.
    #[test]
    fn a_store_that_cannot_be_put_back_is_named_where_it_stays() {
        let root = tempfile::tempdir().expect("temp dir");
        let store = root.path().join("store");
        let doomed = root.path().join(".store.lockyard-removed-test");
        std::fs::create_dir(&store).expect("mkdir");
        std::fs::write(store.join("newcomer"), b"x").expect("write");
        std::fs::create_dir_all(doomed.join(LOCKS_DIR)).expect("mkdir");
        let parent = open_dir(CWD, root.path(), root.path().as_os_str(), true).expect("open");
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        match put_back(
            &parent,
            doomed.file_name().expect("name"),
            &doomed,
            OsStr::new("store"),
            &store,
            OsString::from(LOCKS_DIR),
            denied,
        ) {
            Err(Error::Io { op, path, source }) => {
                assert_eq!(op, "remove");
                assert_eq!(path, doomed.join(LOCKS_DIR));
                assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
                let text = source.to_string();
                assert!(text.contains("putting the store back"), "{text}");
                assert!(text.contains(&store.display().to_string()), "{text}");
            }
            other => panic!("expected Io, got {other:?}"),
        }
        assert!(store.join("newcomer").exists(), "the newcomer was replaced");
        assert!(doomed.join(LOCKS_DIR).is_dir());
    }

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
