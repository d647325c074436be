//! The lock directory: publishing records with `link(2)`, replacing them with `rename(2)`,
//! reading them back with bounds, and removing only the ones we own.
//!
//! Every operation goes through the directory's file descriptor (`*at` calls), so the lock stays
//! on the directory that was opened even if its path is renamed. Names never follow symlinks.

use std::borrow::Cow;
use std::cell::Cell;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use lock_api::{Error, Result};
use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::liveness::Identity;
use crate::ofd::{self, Probe};
use crate::record::{MAX_RECORD_LEN, Record};

/// How many levels a directory lock has: `lock0` (the master) up to `lock15`.
///
/// A stale level N is reclaimed through level N+1, so level N+1 is only ever left behind by a
/// process that died while reclaiming level N. Running out of levels takes 15 reclaimers dying
/// one after another in the middle of a reclaim; it is reported as an error and cleared with
/// `break_lock`.
pub(crate) const LEVELS: usize = 16;

/// Permissions of record files: readable by everyone, so other users can inspect the lock.
const RECORD_MODE: Mode = Mode::from_bits_truncate(0o644);

/// Prefix of the private names of records on file systems without `O_TMPFILE`.
pub(crate) const TEMP_PREFIX: &str = ".dirlock-tmp.";

/// Set once `linkat(2)` with `AT_EMPTY_PATH` was refused and the `/proc/self/fd` path worked:
/// this kernel (older than 6.10, without CAP_DAC_READ_SEARCH) wants the path.
static EMPTY_PATH_REFUSED: AtomicBool = AtomicBool::new(false);

/// Whose path a lock directory is, which decides what finding something else there means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// A path the caller chose (`DirLock::new`): a missing one is `NotFound`, and one that is
    /// not a directory is a bad argument.
    Given,
    /// Lock directory `N` of a `dir:` store, which the store's creator made: anything but a
    /// directory there, or nothing, is damage to the store (`Corrupt`).
    InStore,
}

/// The open lock directory.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// A file's identity: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    #[allow(
        clippy::unnecessary_cast,
        reason = "st_dev and st_ino are narrower than u64 on some targets"
    )]
    fn of(stat: &Stat) -> FileId {
        FileId {
            dev: stat.st_dev as u64,
            ino: stat.st_ino as u64,
        }
    }
}

/// A record read from a level: its file identity, its exact bytes and their meaning, whether
/// its file was locked when read, and the descriptor it was read through.
#[derive(Debug)]
pub(crate) struct Seen {
    pub(crate) id: FileId,
    pub(crate) bytes: Vec<u8>,
    pub(crate) record: Record,
    /// `F_OFD_GETLK` on the file read, when the record promises a lock; otherwise `Unknown`.
    pub(crate) lock: Probe,
    /// The read-only descriptor of the file: a waiter blocked by this record watches its lock
    /// through it (watch.rs), so it is kept rather than closed after reading.
    pub(crate) fd: OwnedFd,
}

impl Seen {
    /// Whether two reads found the very same record: same file and same bytes (the bytes
    /// include a nonce, so a recycled inode number never passes). The lock probe is not part
    /// of a record's identity.
    pub(crate) fn same_record(&self, other: &Seen) -> bool {
        self.id == other.id && self.bytes == other.bytes
    }
}

/// A record of ours, written in full, not yet (or no longer only) published.
///
/// The file is unnamed (`O_TMPFILE`) where the file system allows it, so a process killed at any
/// point leaves nothing behind; elsewhere it has a private name that the drop guard removes on
/// every path, errors included (only SIGKILL between create and drop can leave it).
///
/// Its close-on-exec descriptor holds an OFD write lock on the file when the record says
/// `ofd_lock 1` (see `ofd.rs`): the descriptor must be closed only once the file has no level
/// name left, or on `exec` and exit, which is what the lock is there to reveal.
#[derive(Debug)]
pub(crate) struct RecordFile<'d> {
    fd: OwnedFd,
    /// The file's identity, asked of `fstat(2)` only when a slow path needs it.
    id: Cell<Option<FileId>>,
    temp: TempName<'d>,
    /// Whether the file was ever given a name: an `O_TMPFILE` file whose names are all gone
    /// again cannot be linked a second time (`linkat` fails with `ENOENT`).
    linked: Cell<bool>,
}

/// The drop guard of a record's private name, when the file system has no `O_TMPFILE`.
#[derive(Debug)]
struct TempName<'d> {
    dir: &'d Dir,
    name: Option<CString>,
}

/// A published record this handle holds: the open file keeps its inode number from being
/// reused while we hold the lock, so comparing inode numbers is exact, and its descriptor
/// keeps the file's OFD lock, which tells readers that we have neither exited nor called
/// `exec`. Drop it only after removing our level names.
#[derive(Debug)]
pub(crate) struct Owned {
    fd: OwnedFd,
}

/// The names of the levels, so that naming one costs no allocation.
const LEVEL_NAMES: [&str; LEVELS] = [
    "lock0", "lock1", "lock2", "lock3", "lock4", "lock5", "lock6", "lock7", "lock8", "lock9",
    "lock10", "lock11", "lock12", "lock13", "lock14", "lock15",
];

/// The name of level `n`.
pub(crate) fn level_name(n: usize) -> Cow<'static, str> {
    match LEVEL_NAMES.get(n) {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(format!("lock{n}")),
    }
}

/// The staging name used to replace level `n`; only the holder of level `n + 1` touches it.
pub(crate) fn takeover_name(n: usize) -> String {
    format!("lock{n}.takeover")
}

fn errno_io(e: Errno) -> io::Error {
    e.into()
}

impl Dir {
    /// Opens `path`, which is at `place`, as a lock directory.
    ///
    /// # Errors
    ///
    /// As for [`open_readable`](Dir::open_readable); [`Error::Io`] when it cannot be written
    /// (`access(2)` with `W_OK`).
    pub(crate) fn open_at(path: &Path, place: Place) -> Result<Dir> {
        let dir = Dir::open_readable(path, place)?;
        rustix::fs::accessat(&dir.fd, ".", rustix::fs::Access::WRITE_OK, AtFlags::EACCESS)
            .map_err(|e| Error::io("access", path, errno_io(e)))?;
        Ok(dir)
    }

    /// Opens `path`, which is at `place`, as a lock directory to read its records only
    /// (`held`, for a user who may look but not lock).
    ///
    /// # Errors
    ///
    /// At [`Place::Given`], [`Error::NotFound`] when it does not exist and
    /// [`Error::InvalidArgument`] when it is not a directory (or is a symlink to one: the lock
    /// must not move under a changed link); at [`Place::InStore`], [`Error::Corrupt`] for
    /// both. [`Error::Io`] when it cannot be opened.
    pub(crate) fn open_readable(path: &Path, place: Place) -> Result<Dir> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(CWD, path, flags, Mode::empty()).map_err(|e| {
            match (e, place) {
                (Errno::NOENT, Place::Given) => Error::NotFound {
                    what: format!("lock directory {}", path.display()),
                },
                (Errno::NOTDIR | Errno::LOOP, Place::Given) => Error::invalid(format!(
                    "{} is not a directory (symlinks are not followed)",
                    path.display()
                )),
                (Errno::NOENT, Place::InStore) => Error::corrupt(format!(
                    "dirlock store: the lock directory {} is missing",
                    path.display()
                )),
                // ENOTDIR is also what a store replaced by a file after `open` gives: damage
                // all the same.
                (Errno::NOTDIR | Errno::LOOP, Place::InStore) => Error::corrupt(format!(
                    "dirlock store: {} is not a directory where a lock directory belongs \
                     (a file or a symlink, which is not followed)",
                    path.display()
                )),
                (e, _) => Error::io("open", path, errno_io(e)),
            }
        })?;
        Ok(Dir {
            fd,
            path: path.to_owned(),
        })
    }

    /// The directory's path, as given.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn at(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `record` in full to a new file that nobody can see under a level's name yet,
    /// write-locked through its descriptor (`F_OFD_SETLK`) where the file system allows it;
    /// the record's `ofd_lock` says whether it is.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from `open(2)` (an unwritable directory gives `PermissionDenied`),
    /// `write(2)` or `fstat(2)`.
    pub(crate) fn write_record(&self, me: &Identity) -> Result<RecordFile<'_>> {
        let tmpfile = rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
            RECORD_MODE,
        );
        match tmpfile {
            Ok(fd) => self.fill(fd, None, me),
            // No O_TMPFILE on this file system (or kernel): a private name instead.
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => self.write_record_named(me),
            Err(e) => Err(Error::io("open(O_TMPFILE)", &self.path, errno_io(e))),
        }
    }

    /// Like [`write_record`](Dir::write_record), with a private name
    /// `.dirlock-tmp.<pid>.<random>` that the drop guard removes (file systems without
    /// `O_TMPFILE`).
    ///
    /// # Errors
    ///
    /// As for [`write_record`](Dir::write_record).
    pub(crate) fn write_record_named(&self, me: &Identity) -> Result<RecordFile<'_>> {
        let name = format!(
            "{TEMP_PREFIX}{}.{:016x}",
            me.pid.as_raw_nonzero(),
            rand::random::<u64>()
        );
        let c_name = CString::new(name.as_str()).map_err(|_| Error::invalid("temporary name"))?;
        let fd = rustix::fs::openat(
            &self.fd,
            c_name.as_c_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
            RECORD_MODE,
        )
        .map_err(|e| Error::io("open", self.at(&name), errno_io(e)))?;
        self.fill(fd, Some(c_name), me)
    }

    /// Locks the new file `fd` (named `temp`, if it has a name) and writes our record, stamped
    /// now, into it.
    fn fill(&self, fd: OwnedFd, temp: Option<CString>, me: &Identity) -> Result<RecordFile<'_>> {
        // From here on the guard removes the private name on every path.
        let file = RecordFile {
            fd,
            id: Cell::new(None),
            temp: TempName {
                dir: self,
                name: temp,
            },
            linked: Cell::new(false),
        };
        // Locked before anyone can see it, so every published record that promises the lock has
        // it from the start. A refusal only costs readers the exec check (pid and start time
        // still apply), so it is no error.
        let bytes = me.record_bytes(ofd::lock(file.fd.as_fd()));
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            match rustix::io::write(&file.fd, rest) {
                Ok(0) => {
                    return Err(Error::io(
                        "write",
                        &self.path,
                        io::ErrorKind::WriteZero.into(),
                    ));
                }
                Ok(n) => rest = &rest[n..],
                Err(Errno::INTR) => {}
                Err(e) => return Err(Error::io("write", &self.path, errno_io(e))),
            }
        }
        Ok(file)
    }

    /// Publishes `file` as level `n` with `link(2)`; `false` when the level exists.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from `linkat(2)` for anything but `EEXIST`.
    pub(crate) fn publish(&self, file: &RecordFile<'_>, n: usize) -> Result<bool> {
        let name = level_name(n);
        match file.link_as(&name) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(Error::io("link", self.at(&name), errno_io(e))),
        }
    }

    /// Reads level `n`; `None` when it does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] when the level is a symlink, a directory or anything but a regular
    /// file, is larger than a record may be, or does not parse; [`Error::Incompatible`] for a
    /// record of another format version; [`Error::Io`] for OS errors. Nothing is removed.
    pub(crate) fn read(&self, n: usize) -> Result<Option<Seen>> {
        let name = level_name(n);
        let path = self.at(&name);
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.fd, &*name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => {
                return Err(Error::corrupt(format!(
                    "{}: a symlink where a lock record belongs",
                    path.display()
                )));
            }
            Err(e) => return Err(Error::io("open", path, errno_io(e))),
        };
        let stat = rustix::fs::fstat(&fd).map_err(|e| Error::io("fstat", &path, errno_io(e)))?;
        let file_type = FileType::from_raw_mode(stat.st_mode);
        if file_type != FileType::RegularFile {
            return Err(Error::corrupt(format!(
                "{}: a {file_type:?} where a lock record belongs",
                path.display()
            )));
        }
        // Read one byte more than allowed, so that a huge record is seen without reading it all.
        let mut bytes = vec![0u8; MAX_RECORD_LEN + 1];
        let mut len = 0;
        while len < bytes.len() {
            match rustix::io::read(&fd, &mut bytes[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(Errno::INTR) => {}
                Err(e) => return Err(Error::io("read", path, errno_io(e))),
            }
        }
        bytes.truncate(len);
        let what = format!("lock record {}", path.display());
        if len > MAX_RECORD_LEN {
            return Err(Error::corrupt(format!(
                "{what}: more than the {MAX_RECORD_LEN} bytes a record may have"
            )));
        }
        let record = Record::parse(&bytes, &what)?;
        // Asked through the descriptor just read, so the answer is about this very file.
        let lock = if record.ofd_lock {
            ofd::probe(fd.as_fd())
        } else {
            Probe::Unknown
        };
        Ok(Some(Seen {
            id: FileId::of(&stat),
            bytes,
            record,
            lock,
            fd,
        }))
    }

    /// The identity of level `n`'s file, without following symlinks; `None` when missing.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from `fstatat(2)` for anything but `ENOENT`.
    pub(crate) fn file_id(&self, name: &str) -> Result<Option<FileId>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(FileId::of(&stat))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(Error::io("stat", self.at(name), errno_io(e))),
        }
    }

    /// Replaces level `n` by our record in one step: `link(2)` to the level's staging name,
    /// then `rename(2)` over the level. Only the holder of level `n + 1` may call this, and
    /// only after checking that level `n` still holds the stale record it judged.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from `unlinkat`, `linkat` or `renameat`; the staging name is removed on
    /// error, and level `n` is then unchanged.
    pub(crate) fn replace(&self, file: &RecordFile<'_>, n: usize) -> Result<()> {
        let staging = takeover_name(n);
        // A reclaimer that died holding level n + 1 may have left the staging name behind;
        // we hold level n + 1 now, so it is ours to remove.
        self.remove_staging(n)?;
        file.link_as(&staging)
            .map_err(|e| Error::io("link", self.at(&staging), errno_io(e)))?;
        if let Err(e) = rustix::fs::renameat(&self.fd, &staging, &self.fd, level_name(n)) {
            let _ = rustix::fs::unlinkat(&self.fd, &staging, AtFlags::empty());
            return Err(Error::io("rename", self.at(&staging), errno_io(e)));
        }
        Ok(())
    }

    /// Removes level `n`'s staging name if it exists; the caller holds level `n + 1`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from `unlinkat(2)` for anything but `ENOENT`.
    pub(crate) fn remove_staging(&self, n: usize) -> Result<()> {
        let staging = takeover_name(n);
        match rustix::fs::unlinkat(&self.fd, &staging, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(Error::io("unlink", self.at(&staging), errno_io(e))),
        }
    }

    /// The levels above the master (`lock1` and up) that exist, in increasing order: one
    /// `getdents(2)` pass rather than a `stat` per level.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the directory cannot be read.
    pub(crate) fn upper_levels(&self) -> Result<Vec<usize>> {
        let mut dir = rustix::fs::Dir::read_from(&self.fd)
            .map_err(|e| Error::io("opendir", &self.path, errno_io(e)))?;
        let mut levels = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| Error::io("getdents", &self.path, errno_io(e)))?;
            let level = entry
                .file_name()
                .to_str()
                .ok()
                .and_then(|name| name.strip_prefix("lock"))
                .filter(|n| !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| (1..LEVELS).contains(&n));
            levels.extend(level);
        }
        levels.sort_unstable();
        Ok(levels)
    }

    /// Removes `name` if it is still the file `id`; returns whether it was.
    ///
    /// Between the check and `unlink(2)` the name could only change hands if its holder (us)
    /// were judged dead, which never happens to a live process, or if an operator broke the
    /// lock: the crate README discusses that window.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from `fstatat(2)` or `unlinkat(2)`.
    pub(crate) fn remove_if(&self, name: &str, id: FileId) -> Result<bool> {
        if self.file_id(name)? != Some(id) {
            return Ok(false);
        }
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(Error::io("unlink", self.at(name), errno_io(e))),
        }
    }

    /// Removes `name`, the level that `owned` holds, if the file is still ours; returns whether
    /// it was.
    ///
    /// One `fstat(2)` of our own descriptor, no lookup: while we hold only this level, the one
    /// name our file can have is `name` (see the crate's ARCHITECTURE notes). With no name
    /// left, someone broke the lock and nothing is removed. With more than one (a private name
    /// that stayed), or when `owned` may have kept another level's name (`exact`: clearing
    /// that level failed), the exact check of [`remove_if`](Dir::remove_if) decides.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from `fstat(2)`, `fstatat(2)` or `unlinkat(2)`.
    pub(crate) fn remove_own(&self, name: &str, owned: &Owned, exact: bool) -> Result<bool> {
        let stat = rustix::fs::fstat(&owned.fd)
            .map_err(|e| Error::io("fstat", self.at(name), errno_io(e)))?;
        match stat.st_nlink {
            0 => Ok(false),
            1 if !exact => match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
                Ok(()) => Ok(true),
                Err(Errno::NOENT) => Ok(false),
                Err(e) => Err(Error::io("unlink", self.at(name), errno_io(e))),
            },
            _ => self.remove_if(name, FileId::of(&stat)),
        }
    }

    /// Removes `name` if it is a regular file (operators' `break_lock`); whether it existed.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] when it is not a regular file (nothing is removed then);
    /// [`Error::Io`] from `fstatat(2)` or `unlinkat(2)`.
    pub(crate) fn remove_regular(&self, name: &str) -> Result<bool> {
        let stat = match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(Error::io("stat", self.at(name), errno_io(e))),
        };
        let file_type = FileType::from_raw_mode(stat.st_mode);
        if file_type != FileType::RegularFile {
            return Err(Error::corrupt(format!(
                "{}: a {file_type:?} where a lock record belongs; not removed",
                self.at(name).display()
            )));
        }
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(Error::io("unlink", self.at(name), errno_io(e))),
        }
    }
}

impl RecordFile<'_> {
    /// The file's identity (one `fstat(2)` the first time).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from `fstat(2)`.
    pub(crate) fn id(&self) -> Result<FileId> {
        if let Some(id) = self.id.get() {
            return Ok(id);
        }
        let stat = rustix::fs::fstat(&self.fd)
            .map_err(|e| Error::io("fstat", self.temp.dir.path(), errno_io(e)))?;
        let id = FileId::of(&stat);
        self.id.set(Some(id));
        Ok(id)
    }

    /// Whether this file can no longer be published: an unnamed (`O_TMPFILE`) file that was
    /// linked and has lost every name since (we released the levels it held).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from `fstat(2)`.
    pub(crate) fn is_spent(&self) -> Result<bool> {
        if self.temp.name.is_some() || !self.linked.get() {
            return Ok(false);
        }
        let stat = rustix::fs::fstat(&self.fd)
            .map_err(|e| Error::io("fstat", self.temp.dir.path(), errno_io(e)))?;
        Ok(stat.st_nlink == 0)
    }

    /// Gives the file a name in the directory with `link(2)`, failing with `EEXIST` if taken.
    fn link_as(&self, name: &str) -> std::result::Result<(), Errno> {
        let result = self.link_raw(name);
        if result.is_ok() {
            self.linked.set(true);
        }
        result
    }

    fn link_raw(&self, name: &str) -> std::result::Result<(), Errno> {
        let dir = &self.temp.dir.fd;
        match &self.temp.name {
            Some(temp) => rustix::fs::linkat(dir, temp.as_c_str(), dir, name, AtFlags::empty()),
            None if !EMPTY_PATH_REFUSED.load(Ordering::Relaxed) => {
                // An O_TMPFILE file is linked through its descriptor: `AT_EMPTY_PATH` works
                // since Linux 6.10 for a file opened with the caller's credentials (before,
                // only with CAP_DAC_READ_SEARCH), and costs no walk through /proc.
                match rustix::fs::linkat(&self.fd, "", dir, name, AtFlags::EMPTY_PATH) {
                    Err(Errno::NOENT) => {
                        // Refused (or the file cannot be linked at all): the /proc way decides,
                        // and if it works, this process uses it from now on.
                        self.link_proc(name)?;
                        EMPTY_PATH_REFUSED.store(true, Ordering::Relaxed);
                        Ok(())
                    }
                    other => other,
                }
            }
            None => self.link_proc(name),
        }
    }

    /// Links the unnamed file as `name` through its `/proc/self/fd` entry.
    #[cold]
    fn link_proc(&self, name: &str) -> std::result::Result<(), Errno> {
        let proc_path = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        rustix::fs::linkat(
            CWD,
            proc_path.as_str(),
            &self.temp.dir.fd,
            name,
            AtFlags::SYMLINK_FOLLOW,
        )
    }

    /// Keeps the open file as proof of ownership and drops the private name.
    pub(crate) fn into_owned(self) -> Owned {
        let RecordFile { fd, temp, .. } = self;
        drop(temp);
        Owned { fd }
    }
}

impl Drop for TempName<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            // Best effort: the name is ours alone, and Drop cannot report; failing to remove it
            // leaves a stray file, which is all a SIGKILL at this point could leave too.
            let _ = rustix::fs::unlinkat(&self.dir.fd, name.as_c_str(), AtFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::levels::{Attempt, try_take};
    use crate::liveness;
    use lock_api::Acquired;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn named_records_leave_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open_at(tmp.path(), Place::Given).unwrap();
        let me = liveness::current().unwrap();
        // Dropped before publication: the private name goes.
        let file = dir.write_record_named(&me).unwrap();
        assert_eq!(names(tmp.path()).len(), 1);
        drop(file);
        assert!(names(tmp.path()).is_empty());
        // Published, then owned: only the level is left.
        let file = dir.write_record_named(&me).unwrap();
        assert!(dir.publish(&file, 0).unwrap());
        let owned = file.into_owned();
        assert_eq!(names(tmp.path()), ["lock0"]);
        assert!(dir.remove_own("lock0", &owned, false).unwrap());
        assert!(names(tmp.path()).is_empty());
    }

    #[test]
    fn named_records_reclaim_through_levels() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open_at(tmp.path(), Place::Given).unwrap();
        let me = liveness::current().unwrap();
        let mut dead = me.record();
        dead.start_time += 1;
        std::fs::write(tmp.path().join("lock0"), dead.to_bytes()).unwrap();
        std::fs::write(tmp.path().join("lock1"), dead.to_bytes()).unwrap();
        let file = dir.write_record_named(&me).unwrap();
        assert!(matches!(
            try_take(&dir, &file, &me, 0).unwrap(),
            Attempt::Taken(Acquired::OwnerDied)
        ));
        // lock1 was reclaimed through lock2 and released; only lock0 and our private name.
        let owned = file.into_owned();
        assert_eq!(names(tmp.path()), ["lock0"]);
        assert!(dir.remove_own("lock0", &owned, false).unwrap());
        assert!(names(tmp.path()).is_empty());
    }

    #[test]
    fn unnamed_records_link_through_proc_too() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open_at(tmp.path(), Place::Given).unwrap();
        let me = liveness::current().unwrap();
        let file = dir.write_record(&me).unwrap();
        if file.temp.name.is_some() {
            return; // this file system has no O_TMPFILE: nothing to check
        }
        // The way a kernel older than 6.10 links it (AT_EMPTY_PATH refused).
        file.link_proc("lock0").unwrap();
        assert_eq!(names(tmp.path()), ["lock0"]);
        let seen = dir.read(0).unwrap().unwrap();
        assert_eq!(seen.id, file.id().unwrap());
        assert_eq!(seen.record.pid, me.record().pid);
        assert!(dir.remove_own("lock0", &file.into_owned(), false).unwrap());
        assert!(names(tmp.path()).is_empty());
    }

    #[test]
    fn removing_our_own_level_checks_the_names_left() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open_at(tmp.path(), Place::Given).unwrap();
        let me = liveness::current().unwrap();
        // No name left (the lock was broken): nothing removed.
        let file = dir.write_record(&me).unwrap();
        assert!(dir.publish(&file, 0).unwrap());
        let owned = file.into_owned();
        std::fs::remove_file(tmp.path().join("lock0")).unwrap();
        std::fs::write(tmp.path().join("lock0"), "someone else").unwrap();
        assert!(!dir.remove_own("lock0", &owned, false).unwrap());
        assert_eq!(names(tmp.path()), ["lock0"]);
        std::fs::remove_file(tmp.path().join("lock0")).unwrap();
        // Two names: the exact check decides.
        let file = dir.write_record(&me).unwrap();
        assert!(dir.publish(&file, 0).unwrap());
        assert!(dir.publish(&file, 3).unwrap());
        let owned = file.into_owned();
        assert!(dir.remove_own("lock0", &owned, false).unwrap());
        assert_eq!(names(tmp.path()), ["lock3"]);
        // One name left, but another level's, and lock0 is someone else's: with `exact`, the
        // inode comparison keeps it.
        std::fs::write(tmp.path().join("lock0"), "someone else").unwrap();
        assert!(!dir.remove_own("lock0", &owned, true).unwrap());
        assert_eq!(names(tmp.path()), ["lock0", "lock3"]);
    }

    #[test]
    fn unnamed_records_are_renewed_once_spent() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open_at(tmp.path(), Place::Given).unwrap();
        let me = liveness::current().unwrap();
        let file = dir.write_record(&me).unwrap();
        if file.temp.name.is_some() {
            return; // this file system has no O_TMPFILE: nothing to check
        }
        assert!(dir.publish(&file, 1).unwrap());
        assert!(dir.remove_if("lock1", file.id().unwrap()).unwrap());
        assert!(file.is_spent().unwrap());
        assert!(matches!(
            try_take(&dir, &file, &me, 0).unwrap(),
            Attempt::Spent
        ));
        assert!(names(tmp.path()).is_empty());
    }
}
