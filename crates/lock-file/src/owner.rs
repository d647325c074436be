//! Waiter files: a manager that waits for a lock says so in its own file in `owners/`.
#![allow(unsafe_code)] // the owner's waiter file is shared memory: viewing it as atomics needs unsafe.
//!
//! The first time a manager has to wait, it creates `owners/<owner number>` (4096 bytes of
//! little-endian 64-bit words), takes `flock(LOCK_EX)` on it for the rest of its life and maps
//! it. From then on, publishing a wait is two stores into the mapping and withdrawing it one: no
//! system call on the contended path.
//!
//! ```text
//! word 0     magic "LKYDOWNR"
//! word 1     owner number (the name of the file)
//! word 2     pid of the owner's process
//! word 3     inode number of the owner's pid namespace (0: unknown)
//! words 4-7  reserved, 0
//! then 252 entries of two words: lock id + 1 (0: entry free), when the wait began (ms since
//! the Unix epoch, coarse clock)
//! ```
//!
//! The file is built under a temporary name (`.<owner>.new`), locked, filled and only then
//! renamed into place, so a reader never finds an owner file that is incomplete or unlocked
//! while its owner lives. Readers tell live owners from dead ones by `flock(LOCK_SH | LOCK_NB)`:
//! the kernel drops a dead owner's lock, so a reader that gets it knows the owner is gone (pid
//! reuse and pid namespaces cannot fool it), and deletes the file. A manager deletes its own
//! file when it drops.
//!
//! Only files that are waiter files are ever deleted by anyone but their owner: a regular file
//! of `FILE_LEN` bytes whose header is the magic and the owner number its name says
//! (`is_waiter_file`), which every owner wrote before its file got its name. Anything else in
//! `owners/` (an operator's notes, a file of zeros, a directory, a symlink) is not ours: readers
//! and the sweep skip it and leave it where it is.
//!
//! Invariants, relied on by the `unsafe` block here:
//!
//! 1. `map` covers exactly `FILE_LEN` bytes of the file (its size is set before mapping and the
//!    mapping's length checked); mappings start on a page, so the words are 8-byte aligned.
//! 2. `map` is unmapped only when the `OwnerFile` drops, so slices borrowed from `&self` stay
//!    valid.
//! 3. This process touches the mapping only through `AtomicU64`. Readers in other processes use
//!    `pread(2)` and never write; anyone else who writes the file is hostile, and what this
//!    process reads back from it is never used as an index or a length.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lock_api::{Error, Result};
use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::store::io;
use crate::table::store;

/// The size of every owner file.
pub(crate) const FILE_LEN: usize = 4096;
/// "LKYDOWNR" read as a little-endian word.
const MAGIC: u64 = u64::from_le_bytes(*b"LKYDOWNR");
const HEADER_WORDS: usize = 8;
const ENTRY_WORDS: usize = 2;
/// How many waits one manager can publish at once (one per thread blocked on a distinct lock).
pub(crate) const MAX_WAITS: usize = (FILE_LEN / 8 - HEADER_WORDS) / ENTRY_WORDS;

/// One published wait: the index of its entry, to withdraw it.
#[derive(Debug)]
pub(crate) struct Entry(usize);

impl Entry {
    /// The entry's index, below [`MAX_WAITS`]: the wait's cell in `adopt.rs`.
    pub(crate) fn index(&self) -> usize {
        self.0
    }
}

/// A manager's own waiter file, mapped, and locked for as long as it lives.
pub(crate) struct OwnerFile {
    /// Holds the `flock` that tells readers this owner lives.
    _file: File,
    map: MmapRaw,
    name: OsString,
    /// Entries no wait of this manager uses, lowest last.
    free: Mutex<Vec<usize>>,
}

impl std::fmt::Debug for OwnerFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnerFile")
            .field("name", &self.name)
            .finish()
    }
}

impl OwnerFile {
    /// Creates, locks, fills and maps the waiter file of `owner` in the `owners` directory
    /// `dir` (at `dir_path`).
    ///
    /// # Errors
    ///
    /// `Io` naming the file for any OS error (the temporary file is removed then).
    pub(crate) fn create(
        dir: &OwnedFd,
        dir_path: &Path,
        owner: u64,
        pid: u32,
        pid_ns: u32,
    ) -> Result<Self> {
        let name = OsString::from(owner.to_string());
        let temp = OsString::from(format!(".{owner}.new"));
        let temp_path = dir_path.join(&temp);
        let flags =
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(dir, &temp, flags, Mode::from_raw_mode(0o644))
            .map_err(|e| io("create", &temp_path, e))?;
        let publish = || rustix::fs::renameat_with(dir, &temp, dir, &name, RenameFlags::NOREPLACE);
        let built = Self::fill(File::from(fd), &temp_path, owner, pid, pid_ns).and_then(|file| {
            let published = match publish() {
                // Owner numbers never repeat, unless the table was restored from a copy while
                // files of dead owners stayed: a dead owner's file may go.
                // A file there that is not a waiter file stays, and this fails with `EEXIST`
                // naming it: it is not ours to delete.
                Err(Errno::EXIST) if remove_if_dead(dir, owner) => publish(),
                other => other,
            };
            published.map_err(|e| io("renameat2", &dir_path.join(&name), e))?;
            Ok(file)
        });
        let (file, map) = match built {
            Ok(done) => done,
            Err(e) => {
                // The build error is the one to report.
                let _ = rustix::fs::unlinkat(dir, &temp, AtFlags::empty());
                return Err(e);
            }
        };
        Ok(OwnerFile {
            _file: file,
            map,
            name,
            free: Mutex::new((0..MAX_WAITS).rev().collect()),
        })
    }

    /// Locks the fresh file, gives it its size and header, and maps it.
    fn fill(file: File, path: &Path, owner: u64, pid: u32, pid_ns: u32) -> Result<(File, MmapRaw)> {
        rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| io("flock", path, e))?;
        file.set_len(FILE_LEN as u64)
            .map_err(|e| Error::io("ftruncate", path, e))?;
        let header: Vec<u8> = [MAGIC, owner, u64::from(pid), u64::from(pid_ns)]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        file.write_all_at(&header, 0)
            .map_err(|e| Error::io("write", path, e))?;
        let map = MmapOptions::new()
            .len(FILE_LEN)
            .map_raw(&file)
            .map_err(|e| Error::io("mmap", path, e))?;
        if map.len() != FILE_LEN {
            return Err(Error::io(
                "mmap",
                path,
                std::io::Error::other(format!("mapped {} bytes, expected {FILE_LEN}", map.len())),
            ));
        }
        Ok((file, map))
    }

    /// The file's name in the `owners` directory.
    pub(crate) fn name(&self) -> &OsStr {
        &self.name
    }

    /// The whole mapping as words.
    fn words(&self) -> &[AtomicU64] {
        // SAFETY: by invariant 1 the mapping holds FILE_LEN / 8 8-byte-aligned words; by
        // invariant 2 it outlives `&self`; by invariant 3 it is only accessed atomically, and
        // `AtomicU64` allows shared mutation, so other writers do not make this unsound.
        unsafe {
            std::slice::from_raw_parts(
                self.map.as_mut_ptr().cast::<AtomicU64>().cast_const(),
                FILE_LEN / 8,
            )
        }
    }

    /// Publishes that this owner waits for lock `id` since `since_ms`: two stores. `None` when
    /// [`MAX_WAITS`] waits of this owner are already published (the wait goes unpublished).
    #[inline]
    pub(crate) fn publish(&self, id: u32, since_ms: u64) -> Option<Entry> {
        let index = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()?;
        let at = HEADER_WORDS + ENTRY_WORDS * index;
        let words = self.words();
        store(&words[at + 1], since_ms, Ordering::Relaxed);
        store(&words[at], u64::from(id) + 1, Ordering::Release);
        Some(Entry(index))
    }

    /// Withdraws a published wait: one store.
    #[inline]
    pub(crate) fn withdraw(&self, entry: Entry) {
        let at = HEADER_WORDS + ENTRY_WORDS * entry.0;
        store(&self.words()[at], 0, Ordering::Release);
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry.0);
    }
}

/// One wait published by a live owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Waiting {
    pub(crate) owner: u64,
    pub(crate) pid: Option<u32>,
    /// The inode number of the owner's pid namespace (0: unknown): whether `pid` names a process
    /// in a reader's namespace (`lock_api::pid_seen_here`).
    pub(crate) pid_ns: u32,
    pub(crate) id: u32,
    pub(crate) since: Option<SystemTime>,
}

/// Whether `file` (named `owner` in the `owners` directory) is a waiter file as a manager
/// writes one: a regular file of [`FILE_LEN`] bytes whose header is [`MAGIC`] and `owner`. Its
/// owner wrote all that before the file got its name, so a file that fails this is not one of
/// ours, dead or alive, and must be neither read nor deleted.
///
/// # Errors
///
/// `Io` naming `path()` when `fstat(2)` or `pread(2)` fail (a file shrunk under the read is
/// simply not ours).
fn is_waiter_file(file: &File, owner: u64, path: &dyn Fn() -> PathBuf) -> Result<bool> {
    let stat = rustix::fs::fstat(file).map_err(|e| io("fstat", &path(), e))?;
    let regular =
        rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile;
    if !regular || stat.st_size != FILE_LEN as i64 {
        return Ok(false);
    }
    let mut header = [0u8; 16];
    match file.read_exact_at(&mut header, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(Error::io("read", path(), e)),
    }
    Ok(header[..8] == MAGIC.to_le_bytes() && header[8..] == owner.to_le_bytes())
}

/// Opens `owner`'s waiter file in `dir` the way every reader does: never following a symlink,
/// and never blocking (a FIFO put there opens at once and then fails [`is_waiter_file`]).
fn open_waiter_file(dir: &OwnedFd, name: &str) -> rustix::io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    rustix::fs::openat(dir, name, flags, Mode::empty()).map(File::from)
}

/// Removes `owner`'s waiter file in `dir` if it is one ([`is_waiter_file`]) and its owner is
/// dead (nobody holds its `flock`); returns whether it was removed. Errors count as "not
/// removed": this is housekeeping.
fn remove_if_dead(dir: &OwnedFd, owner: u64) -> bool {
    let name = owner.to_string();
    let Ok(file) = open_waiter_file(dir, &name) else {
        return false;
    };
    is_waiter_file(&file, owner, &|| PathBuf::from(&name)).unwrap_or(false)
        && rustix::fs::flock(&file, FlockOperation::NonBlockingLockShared).is_ok()
        && rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty()).is_ok()
}

/// Removes the waiter files of dead owners from `dir`: housekeeping a manager does before it
/// makes its own waiter file, so that files left by processes killed after they waited do not
/// pile up in a store nobody takes snapshots of. Files that are not waiter files are left
/// alone, as readers leave them. Errors only end the sweep early (a file that cannot be read
/// is skipped): the next manager sweeps again, and every reader skips (and removes) dead
/// owners' files anyway.
pub(crate) fn sweep(dir: &OwnedFd) {
    let Ok(entries) = rustix::fs::Dir::read_from(dir) else {
        return;
    };
    for entry in entries {
        let Ok(entry) = entry else { return };
        if let Some(owner) = parse_owner(entry.file_name().to_bytes()) {
            remove_if_dead(dir, owner);
        }
    }
}

/// The owner number a waiter file's name stands for (owner numbers start at 1).
fn parse_owner(name: &[u8]) -> Option<u64> {
    crate::store::parse_name(name).filter(|&n| n != 0)
}

/// Every wait published by a live owner in the `owners` directory `dir` (at `dir_path`), for
/// locks below `capacity`.
///
/// Files of dead owners (whose `flock` the kernel dropped) are deleted on the way, when the
/// directory lets us; files that are not owner files (other names, other sizes, another magic,
/// a header naming another owner) are skipped and left where they are: a live owner always
/// wrote a valid one before its file got its name, so they were never ours.
///
/// # Errors
///
/// `Io` when the directory cannot be read or an owner file cannot be opened or read for a
/// reason other than having gone.
pub(crate) fn read_all(dir: &OwnedFd, dir_path: &Path, capacity: u32) -> Result<Vec<Waiting>> {
    let mut out = Vec::new();
    let entries = rustix::fs::Dir::read_from(dir).map_err(|e| io("open", dir_path, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io("getdents", dir_path, e))?;
        if let Some(owner) = parse_owner(entry.file_name().to_bytes()) {
            out.extend(read_one(dir, dir_path, owner, capacity)?);
        }
    }
    Ok(out)
}

/// The waits owner `owner` publishes, if it lives (as [`read_all`] reads each file): none when
/// it has no waiter file (it never waited, or it dropped) or is dead (its file is deleted then),
/// or when the file at its name is not a waiter file ([`is_waiter_file`]; it is left alone).
///
/// # Errors
///
/// `Io` when the file cannot be opened or read for a reason other than having gone.
pub(crate) fn read_one(
    dir: &OwnedFd,
    dir_path: &Path,
    owner: u64,
    capacity: u32,
) -> Result<Vec<Waiting>> {
    let name = owner.to_string();
    let path = dir_path.join(&name);
    let file = match open_waiter_file(dir, &name) {
        Ok(file) => file,
        // No such owner file (never waited, or gone), or not a file we made.
        Err(Errno::NOENT | Errno::LOOP) => return Ok(Vec::new()),
        Err(e) => return Err(io("open", &path, e)),
    };
    if !is_waiter_file(&file, owner, &|| path.clone())? {
        return Ok(Vec::new());
    }
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockShared) {
        Ok(()) => {
            // Its owner is dead. Removing the file is housekeeping: a reader that may not
            // write the directory leaves it for the next one.
            let _ = rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty());
            return Ok(Vec::new());
        }
        Err(Errno::WOULDBLOCK) => {}
        Err(e) => return Err(io("flock", &path, e)),
    }
    let mut bytes = vec![0u8; FILE_LEN];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| Error::io("read", &path, e))?;
    Ok(parse(&bytes, owner, capacity))
}

/// The waits an owner file's bytes publish, if its header is `owner`'s.
fn parse(bytes: &[u8], owner: u64, capacity: u32) -> Vec<Waiting> {
    let words: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect();
    if words.len() != FILE_LEN / 8 || words[0] != MAGIC || words[1] != owner {
        return Vec::new();
    }
    let pid = u32::try_from(words[2]).ok().filter(|&p| p != 0);
    // A namespace word no owner writes says nothing of the pid beside it.
    let (pid, pid_ns) = match u32::try_from(words[3]) {
        Ok(ns) => (pid, ns),
        Err(_) => (None, 0),
    };
    words[HEADER_WORDS..]
        .chunks_exact(ENTRY_WORDS)
        .filter_map(|e| {
            let id = u32::try_from(e[0].checked_sub(1)?).ok()?;
            (id < capacity).then(|| Waiting {
                owner,
                pid,
                pid_ns,
                id,
                since: (e[1] != 0).then(|| UNIX_EPOCH + Duration::from_millis(e[1])),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The directory `path`, opened as the store's `owners/` is.
    fn open_dir(path: &std::path::Path) -> OwnedFd {
        rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open dir")
    }

    #[test]
    fn owner_names_are_canonical_numbers() {
        assert_eq!(parse_owner(b"17"), Some(17));
        for bad in [
            &b""[..],
            b"0",
            b"017",
            b".17.new",
            b"1a",
            b"99999999999999999999999",
        ] {
            assert_eq!(parse_owner(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn published_waits_are_read_back_and_withdrawn() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = open_dir(root.path());
        let file = OwnerFile::create(&dir, root.path(), 5, 77, 4).expect("create");
        assert_eq!(read_all(&dir, root.path(), 8).expect("read"), vec![]);
        let a = file.publish(3, 1_000).expect("publish");
        let b = file.publish(9, 2_000).expect("publish");
        let read = read_all(&dir, root.path(), 8).expect("read");
        assert_eq!(
            read,
            vec![Waiting {
                owner: 5,
                pid: Some(77),
                pid_ns: 4,
                id: 3,
                since: Some(UNIX_EPOCH + Duration::from_secs(1)),
            }],
            "id 9 is beyond the capacity and skipped"
        );
        file.withdraw(a);
        file.withdraw(b);
        assert!(read_all(&dir, root.path(), 16).expect("read").is_empty());
        // Every entry can be used at once, and no more.
        let all: Vec<_> = (0..MAX_WAITS).map(|_| file.publish(1, 1)).collect();
        assert!(all.iter().all(Option::is_some));
        assert!(file.publish(1, 1).is_none());
        assert_eq!(
            read_all(&dir, root.path(), 2).expect("read").len(),
            MAX_WAITS
        );
        // A live owner's file stays; once it is gone (closed), a reader deletes it.
        let name = file.name().to_owned();
        drop(file);
        assert!(read_all(&dir, root.path(), 2).expect("read").is_empty());
        assert!(
            !root.path().join(name).exists(),
            "dead owner's file removed"
        );
    }

    #[test]
    fn a_dead_owners_file_of_the_same_number_is_replaced() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = open_dir(root.path());
        // Closed without being unlinked: its owner died.
        drop(OwnerFile::create(&dir, root.path(), 9, 1, 0).expect("create"));
        let file = OwnerFile::create(&dir, root.path(), 9, 1, 0).expect("replaces a dead owner's");
        // A live owner's file is never replaced.
        assert!(matches!(
            OwnerFile::create(&dir, root.path(), 9, 2, 0),
            Err(Error::Io { .. })
        ));
        drop(file);
        // Nor is a file that is not a waiter file: the error names it, and it stays.
        let foreign = root.path().join("10");
        std::fs::write(&foreign, [0u8; FILE_LEN]).expect("foreign file");
        match OwnerFile::create(&dir, root.path(), 10, 1, 0) {
            Err(Error::Io { path, source, .. }) => {
                assert_eq!(path, foreign);
                assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists);
            }
            other => panic!("expected Io EEXIST, got {other:?}"),
        }
        assert_eq!(std::fs::read(&foreign).expect("read"), [0u8; FILE_LEN]);
        assert!(!root.path().join(".10.new").exists());
    }

    /// The sweep and the readers delete a dead owner's waiter file and nothing else: a file
    /// with an owner's name but not what a manager writes is not ours to delete.
    #[test]
    fn only_dead_owners_files_are_deleted() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = open_dir(root.path());
        let mut other_owner = vec![0u8; FILE_LEN];
        other_owner[..8].copy_from_slice(&MAGIC.to_le_bytes());
        other_owner[8..16].copy_from_slice(&8u64.to_le_bytes());
        let foreign = [
            ("5", b"notes".to_vec()),
            ("6", vec![0u8; FILE_LEN]),
            ("7", other_owner),
        ];
        for (name, bytes) in &foreign {
            std::fs::write(root.path().join(name), bytes).expect("write");
        }
        for (owner, read) in [(3, false), (4, true)] {
            // Closed without being unlinked: its owner died.
            drop(OwnerFile::create(&dir, root.path(), owner, 1, 0).expect("create"));
            assert!(root.path().join(owner.to_string()).exists());
            if read {
                for foreign_owner in [5, 6, 7] {
                    assert!(
                        read_one(&dir, root.path(), foreign_owner, 8)
                            .expect("read")
                            .is_empty()
                    );
                }
                assert!(read_all(&dir, root.path(), 8).expect("read").is_empty());
            } else {
                sweep(&dir);
            }
            assert!(
                !root.path().join(owner.to_string()).exists(),
                "dead owner {owner}'s file stays"
            );
            for (name, bytes) in &foreign {
                assert_eq!(
                    std::fs::read(root.path().join(name)).ok().as_ref(),
                    Some(bytes),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn foreign_files_are_skipped() {
        let mut bytes = vec![0u8; FILE_LEN];
        bytes[..8].copy_from_slice(&MAGIC.to_le_bytes());
        bytes[8..16].copy_from_slice(&4u64.to_le_bytes());
        bytes[64..72].copy_from_slice(&1u64.to_le_bytes());
        assert_eq!(parse(&bytes, 4, 1).len(), 1);
        assert!(parse(&bytes, 5, 1).is_empty(), "header names another owner");
        assert!(parse(&bytes[..100], 4, 1).is_empty(), "short");
        bytes[0] ^= 1;
        assert!(parse(&bytes, 4, 1).is_empty(), "bad magic");
    }
}
