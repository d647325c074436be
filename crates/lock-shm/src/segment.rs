//! The segment file in /dev/shm: race-free creation, validating open, atomic access, OFD locks.
#![allow(unsafe_code)] // reason: shared memory is reached through raw pointers, OFD locks through fcntl(2)
//!
//! # Invariants
//!
//! 1. `Segment::map` maps exactly `Segment::len` bytes of the file, read-write and shared, for
//!    the whole life of the `Segment`; the mapping starts on a page boundary.
//! 2. `len` equals the total size of the [`Layout`] that was validated (or computed) for this
//!    segment, and that layout's regions all lie inside `0..len`.
//! 3. Every access to the mapping goes through [`Segment::u32`] or [`Segment::u64`], which check
//!    the offset's bounds and alignment before forming a reference; the references are atomics
//!    ([`Le32`], [`Le64`]: little-endian whatever the host), because other processes change the
//!    memory underneath at any time.
//! 4. Before the segment is published under its name (a `linkat(2)` of an `O_TMPFILE` inode)
//!    no other process can reach it, so its creator may initialise it with plain writes.
//!
//! The mapping can still fault (`SIGBUS`) if another process truncates the file after open:
//! that is a property of every shared mapping, and only a process with write access to the
//! segment can do it.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use lock_api::{Error, Result};
use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{AtFlags, Mode, OFlags};

use crate::layout::{self, HEADER_SIZE, Layout, field};

/// Where shm segments live on Linux (`shm_open(3)` and `rustix::shm` use this directory).
pub(crate) const SHM_DIR: &str = "/dev/shm";
/// The longest segment name accepted (NAME_MAX is 255; this leaves room for tooling).
pub const MAX_NAME_LEN: usize = 200;

/// Checks that `name` is a plain shm name: not empty, at most [`MAX_NAME_LEN`] bytes, no `/`,
/// no NUL, no `..`.
///
/// # Errors
///
/// `InvalidArgument` naming what is wrong.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::invalid(format!("segment name {name:?}: {why}")));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad(&format!("longer than {MAX_NAME_LEN} bytes"));
    }
    if name.contains('/') {
        return bad("contains '/'");
    }
    if name.contains('\0') {
        return bad("contains NUL");
    }
    if name.contains("..") || name == "." {
        return bad("contains '..' or is '.'");
    }
    Ok(())
}

/// The path of segment `name`, for error messages and `linkat(2)`.
pub(crate) fn path_of(name: &str) -> PathBuf {
    PathBuf::from(SHM_DIR).join(name)
}

/// A little-endian `u32` in the segment, accessed atomically: values are converted with
/// `to_le`/`from_le` (no-ops on little-endian hosts), so the bytes in shared memory are the same
/// whatever the host's byte order.
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct Le32(AtomicU32);

impl Le32 {
    #[inline]
    pub(crate) fn load(&self, order: Ordering) -> u32 {
        u32::from_le(self.0.load(order))
    }

    #[inline]
    pub(crate) fn store(&self, value: u32, order: Ordering) {
        self.0.store(value.to_le(), order);
    }

    #[inline]
    pub(crate) fn compare_exchange(
        &self,
        current: u32,
        new: u32,
        success: Ordering,
        failure: Ordering,
    ) -> std::result::Result<u32, u32> {
        self.0
            .compare_exchange(current.to_le(), new.to_le(), success, failure)
            .map(u32::from_le)
            .map_err(u32::from_le)
    }

    /// Sets the bits of `mask` (a bitwise operation: the byte order of mask and word agree).
    #[inline]
    pub(crate) fn fetch_or(&self, mask: u32, order: Ordering) -> u32 {
        u32::from_le(self.0.fetch_or(mask.to_le(), order))
    }

    /// Keeps only the bits of `mask`.
    #[inline]
    pub(crate) fn fetch_and(&self, mask: u32, order: Ordering) -> u32 {
        u32::from_le(self.0.fetch_and(mask.to_le(), order))
    }

    /// The raw word, for `futex(2)`; compare it with `value.to_le()`.
    #[inline]
    pub(crate) fn futex_word(&self) -> &AtomicU32 {
        &self.0
    }
}

/// A little-endian `u64` in the segment, accessed atomically (see [`Le32`]).
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct Le64(AtomicU64);

impl Le64 {
    #[inline]
    pub(crate) fn load(&self, order: Ordering) -> u64 {
        u64::from_le(self.0.load(order))
    }

    #[inline]
    pub(crate) fn store(&self, value: u64, order: Ordering) {
        self.0.store(value.to_le(), order);
    }
}

/// An open, mapped segment.
#[derive(Debug)]
pub(crate) struct Segment {
    map: MmapRaw,
    len: usize,
    file: File,
    path: PathBuf,
}

fn io_err(op: &'static str, path: &std::path::Path, e: rustix::io::Errno) -> Error {
    Error::io(op, path, io::Error::from(e))
}

impl Segment {
    /// Creates segment `name` with `layout`, initialised and marked ready, published atomically:
    /// an `O_TMPFILE` inode in /dev/shm is sized, mapped and initialised, then linked under its
    /// name with `linkat(2)`, which fails with `EEXIST` rather than replace anything.
    ///
    /// # Errors
    ///
    /// `AlreadyExists` when a segment of that name exists; `Io` for OS errors.
    pub(crate) fn create(name: &str, layout: &Layout) -> Result<Segment> {
        let path = path_of(name);
        let fd: OwnedFd = rustix::fs::open(
            SHM_DIR,
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io_err("open(O_TMPFILE)", std::path::Path::new(SHM_DIR), e))?;
        rustix::fs::ftruncate(&fd, layout.total_size as u64)
            .map_err(|e| io_err("ftruncate", &path, e))?;
        let file = File::from(fd);
        let seg = Segment::map(file, layout.total_size, path.clone())?;
        seg.initialise(layout)?;
        let proc_path = format!("/proc/self/fd/{}", seg.file.as_raw_fd());
        let linked = match rustix::fs::linkat(
            rustix::fs::CWD,
            proc_path.as_str(),
            rustix::fs::CWD,
            &path,
            AtFlags::SYMLINK_FOLLOW,
        ) {
            // No /proc: name the descriptor itself (needs CAP_DAC_READ_SEARCH).
            Err(rustix::io::Errno::NOENT) => {
                rustix::fs::linkat(&seg.file, "", rustix::fs::CWD, &path, AtFlags::EMPTY_PATH)
            }
            other => other,
        };
        match linked {
            Ok(()) => Ok(seg),
            Err(rustix::io::Errno::EXIST) => Err(Error::AlreadyExists {
                what: format!("segment {}", path.display()),
            }),
            Err(e) => Err(io_err("linkat", &path, e)),
        }
    }

    /// Opens and validates segment `name`; `capacity` is checked when given.
    ///
    /// Nothing is written to the segment: the header is read with `pread(2)` and validated
    /// before anything is mapped, so a failed open leaves the segment byte for byte unchanged.
    ///
    /// # Errors
    ///
    /// `NotFound` when it does not exist; `Incompatible` when the name is a symbolic link or
    /// not a regular file; `Incompatible` or `Corrupt` as [`Layout::validate`] says; `Io` for OS
    /// errors.
    pub(crate) fn open(name: &str, capacity: Option<u32>) -> Result<(Segment, Layout)> {
        let path = path_of(name);
        let mut header = [0u8; HEADER_SIZE];
        let (fd, stat, got) = open_checked(&path, Purpose::Map, &mut header)?;
        let file_size = u64::try_from(stat.st_size).unwrap_or(0);
        let what = path.display().to_string();
        let layout = Layout::validate(&what, &header[..got], file_size, capacity)?;
        let seg = Segment::map(File::from(fd), layout.total_size, path)?;
        Ok((seg, layout))
    }

    fn map(file: File, len: usize, path: PathBuf) -> Result<Segment> {
        let map = MmapOptions::new()
            .len(len)
            .map_raw(&file)
            .map_err(|e| Error::io("mmap", &path, e))?;
        if map.len() != len {
            return Err(Error::io(
                "mmap",
                &path,
                io::Error::other(format!("mapped {} bytes, asked for {len}", map.len())),
            ));
        }
        Ok(Segment {
            map,
            len,
            file,
            path,
        })
    }

    /// Writes the header and the bitmap's padding bits, then sets the ready flag.
    fn initialise(&self, layout: &Layout) -> Result<()> {
        let header = layout.header_bytes();
        for (i, chunk) in header.chunks_exact(4).enumerate() {
            let mut b = [0u8; 4];
            b.copy_from_slice(chunk);
            self.u32(i * 4)?
                .store(u32::from_le_bytes(b), Ordering::Relaxed);
        }
        crate::bitmap::Bitmap::new(self, layout).reset()?;
        self.u64(field::EPOCH)?
            .store(unix_now().as_secs(), Ordering::Relaxed);
        self.u32(field::READY)?
            .store(layout::READY, Ordering::Release);
        Ok(())
    }

    /// The path of the segment, for error messages.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The 32-bit atomic at byte offset `off`.
    ///
    /// # Errors
    ///
    /// `Corrupt` when `off` is out of bounds or misaligned (a bug or a hostile index).
    #[inline]
    pub(crate) fn u32(&self, off: usize) -> Result<&Le32> {
        if !off.is_multiple_of(4) || off.checked_add(4).is_none_or(|end| end > self.len) {
            return Err(self.out_of_bounds(off));
        }
        // SAFETY: by invariant 1 the mapping is live, writable and page-aligned for as long as
        // `self`; the check above keeps `off..off + 4` inside it and 4-aligned (invariant 3), and
        // the memory is only ever accessed atomically, by this and other processes. `Le32` is a
        // `repr(transparent)` wrapper of `AtomicU32`.
        Ok(unsafe { &*self.map.as_mut_ptr().add(off).cast::<Le32>() })
    }

    /// The `count` consecutive 32-bit atomics from byte offset `off`, checked once for the whole
    /// run (a pass over the lock words then costs one load per word).
    ///
    /// # Errors
    ///
    /// `Corrupt` when the run is out of bounds or misaligned.
    pub(crate) fn u32s(&self, off: usize, count: usize) -> Result<&[Le32]> {
        let end = count.checked_mul(4).and_then(|n| off.checked_add(n));
        if !off.is_multiple_of(4) || end.is_none_or(|end| end > self.len) {
            return Err(self.out_of_bounds(off));
        }
        // SAFETY: as for `u32`: by invariant 1 the mapping is live for as long as `self`, and the
        // check above keeps `off..off + 4 * count` inside it and 4-aligned (invariant 3); `Le32`
        // is a `repr(transparent)` `AtomicU32`, so the run is a valid slice of atomics, which
        // other processes may change at any time.
        Ok(unsafe {
            std::slice::from_raw_parts(self.map.as_mut_ptr().add(off).cast::<Le32>(), count)
        })
    }

    /// The 64-bit atomic at byte offset `off`.
    ///
    /// # Errors
    ///
    /// `Corrupt` when `off` is out of bounds or misaligned.
    #[inline]
    pub(crate) fn u64(&self, off: usize) -> Result<&Le64> {
        if !off.is_multiple_of(8) || off.checked_add(8).is_none_or(|end| end > self.len) {
            return Err(self.out_of_bounds(off));
        }
        // SAFETY: as for `u32`: invariants 1 and 3, with an 8-byte bounds and alignment check;
        // `Le64` is a `repr(transparent)` wrapper of `AtomicU64`.
        Ok(unsafe { &*self.map.as_mut_ptr().add(off).cast::<Le64>() })
    }

    #[cold]
    fn out_of_bounds(&self, off: usize) -> Error {
        Error::corrupt(format!(
            "segment {}: access at offset {off} outside its {} bytes",
            self.path.display(),
            self.len
        ))
    }

    /// A second mapping of the first `len` bytes of this segment (the header and the client
    /// table, for watch.rs), over a duplicate of this segment's descriptor: it lives on after
    /// this `Segment` is dropped, and holds no lock.
    ///
    /// # Errors
    ///
    /// `Io` for OS errors; `Corrupt` when `len` exceeds the segment.
    pub(crate) fn prefix(&self, len: usize) -> Result<Segment> {
        if len > self.len {
            return Err(self.out_of_bounds(len));
        }
        let file = self
            .file
            .try_clone()
            .map_err(|e| Error::io("dup", &self.path, e))?;
        Segment::map(file, len, self.path.clone())
    }

    /// A second open file description of this segment's file, for the client slot's OFD lock
    /// (client.rs). It is not mapped: a mapping holds a reference on the description it was
    /// made from, and the slot lock must go away with the manager even while a watcher thread
    /// (watch.rs) still uses the mapping. Opened through `/proc/self/fd/N` (a new description of
    /// the same inode), or, without `/proc`, by name and checked to be the same inode.
    ///
    /// # Errors
    ///
    /// `Io` for OS errors, or when the name no longer leads to this segment.
    pub(crate) fn slot_description(&self) -> Result<SlotLock> {
        let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let proc_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        let fd = match rustix::fs::open(
            proc_path.as_str(),
            OFlags::RDWR | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(_) => {
                let fd = rustix::fs::open(&self.path, flags, Mode::empty())
                    .map_err(|e| io_err("open", &self.path, e))?;
                let ours =
                    rustix::fs::fstat(&self.file).map_err(|e| io_err("fstat", &self.path, e))?;
                let theirs = rustix::fs::fstat(&fd).map_err(|e| io_err("fstat", &self.path, e))?;
                if (ours.st_dev, ours.st_ino) != (theirs.st_dev, theirs.st_ino) {
                    return Err(Error::io(
                        "reopen",
                        &self.path,
                        io::Error::other("the name leads to another file than the one mapped"),
                    ));
                }
                fd
            }
        };
        Ok(SlotLock {
            fd,
            path: self.path.clone(),
        })
    }

    /// Waits for a shared OFD lock (`fcntl(2)` `F_OFD_SETLKW`, `F_RDLCK`) on byte `off`
    /// through this segment's (mapped) description: it is granted once no other description
    /// holds an exclusive lock on the byte, that is, once the client slot's owner is gone.
    /// Release it with [`ofd_unlock`](Segment::ofd_unlock).
    ///
    /// # Errors
    ///
    /// `Io` for OS errors (a signal only makes it retry).
    pub(crate) fn ofd_read_lock_wait(&self, off: usize) -> Result<()> {
        loop {
            let mut fl = flock_at(off, libc::F_RDLCK as libc::c_short);
            // SAFETY: `fl` is a valid, initialised `struct flock` that outlives the call, and the
            // fd is open for the life of `self`.
            let r = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_OFD_SETLKW, &mut fl) };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(Error::io("fcntl(F_OFD_SETLKW)", &self.path, e));
            }
        }
    }

    /// Releases this description's OFD lock on byte `off` (`fcntl(2)` `F_OFD_SETLK`, `F_UNLCK`).
    ///
    /// # Errors
    ///
    /// `Io` for OS errors.
    pub(crate) fn ofd_unlock(&self, off: usize) -> Result<()> {
        ofd_unlock(self.file.as_raw_fd(), off, &self.path)
    }

    /// Fails when this segment is being removed or was removed: called by an opener after it
    /// claimed its slot (removal.rs, [`opened`](crate::removal::opened)).
    ///
    /// # Errors
    ///
    /// `NotFound` when the segment was unlinked (by any remover); `Unavailable` when a remover
    /// held the remove byte for all of [`REMOVER_WAIT`] (stopped mid-removal); `Io` for OS
    /// errors.
    pub(crate) fn not_removed(&self) -> Result<()> {
        let sys = Removal::new(self, None);
        crate::removal::opened(&sys, &format!("segment {}", self.path.display()))
    }

    /// Whether the segment's name still leads to this file.
    fn still_named(&self) -> Result<bool> {
        let ours = rustix::fs::fstat(&self.file).map_err(|e| io_err("fstat", &self.path, e))?;
        match rustix::fs::lstat(&self.path) {
            Ok(now) => Ok((now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino)),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(io_err("lstat", &self.path, e)),
        }
    }

    /// Whether another open file description holds an OFD lock on byte `off` (`fcntl(2)`
    /// `F_OFD_GETLK`). Locks held through this segment's own (mapped) description are not seen;
    /// client slots are locked through their own descriptions ([`SlotLock`]), so every owner's
    /// slot is seen, this process's included.
    ///
    /// # Errors
    ///
    /// `Io` for OS errors.
    pub(crate) fn ofd_is_locked(&self, off: usize) -> Result<bool> {
        let mut fl = flock_at(off, libc::F_WRLCK as libc::c_short);
        // SAFETY: as for `ofd_read_lock_wait`; F_OFD_GETLK only writes into `fl`.
        let r = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
        if r != 0 {
            return Err(Error::io(
                "fcntl(F_OFD_GETLK)",
                &self.path,
                io::Error::last_os_error(),
            ));
        }
        Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
    }
}

/// The open file description through which a manager holds its client slot's OFD lock: it
/// holds nothing else, and nothing else holds it, so the lock lasts exactly as long as the
/// manager (or a forked child that inherited the descriptor).
#[derive(Debug)]
pub(crate) struct SlotLock {
    fd: OwnedFd,
    path: PathBuf,
}

impl SlotLock {
    /// Takes an exclusive OFD lock (`fcntl(2)` `F_OFD_SETLK`) on byte `off`, without waiting.
    /// Returns whether it was taken. The lock lasts until the description is closed.
    ///
    /// # Errors
    ///
    /// `Io` for errors other than a conflicting lock.
    pub(crate) fn try_lock(&self, off: usize) -> Result<bool> {
        let mut fl = flock_at(off, libc::F_WRLCK as libc::c_short);
        // SAFETY: `fl` is a valid, initialised `struct flock` that outlives the call, and the fd
        // is open for the life of `self`.
        let r = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EACCES) => Ok(false),
            _ => Err(Error::io("fcntl(F_OFD_SETLK)", &self.path, e)),
        }
    }

    /// Releases the lock on byte `off`.
    ///
    /// # Errors
    ///
    /// `Io` for OS errors.
    pub(crate) fn unlock(&self, off: usize) -> Result<()> {
        ofd_unlock(self.fd.as_raw_fd(), off, &self.path)
    }
}

/// `fcntl(fd, F_OFD_SETLK, F_UNLCK)` on byte `off`.
fn ofd_unlock(fd: std::os::fd::RawFd, off: usize, path: &std::path::Path) -> Result<()> {
    let mut fl = flock_at(off, libc::F_UNLCK as libc::c_short);
    // SAFETY: `fl` is a valid, initialised `struct flock` that outlives the call; the caller's
    // descriptor is open for the call.
    let r = unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &mut fl) };
    if r != 0 {
        return Err(Error::io(
            "fcntl(F_OFD_SETLK, F_UNLCK)",
            path,
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn flock_at(off: usize, l_type: libc::c_short) -> libc::flock {
    // SAFETY: `struct flock` is plain old data for which all-zero bytes are a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = l_type;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = off as libc::off_t;
    fl.l_len = 1;
    fl.l_pid = 0;
    fl
}

/// The wall clock as a duration since the unix epoch (zero before 1970).
pub(crate) fn unix_now() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Why a segment file is opened: to map it, or to check it before it is unlinked.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    Map,
    Remove,
}

impl Purpose {
    fn flags(self) -> OFlags {
        match self {
            Purpose::Map => OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Purpose::Remove => {
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC
            }
        }
    }

    /// What a refusal says was found: a symbolic link, or anything else but a regular file.
    fn refused(self) -> (&'static str, &'static str) {
        match self {
            Purpose::Map => ("symbolic link (not followed)", "something else"),
            Purpose::Remove => (
                "symbolic link (not removed)",
                "something else (not removed)",
            ),
        }
    }
}

/// Opens the segment file at `path` for `purpose`, checks that it is a regular file, and reads
/// its first `start.len()` bytes into `start` with `pread(2)`; returns the descriptor, its
/// `fstat(2)` and how many bytes it read (fewer for a shorter file). Nothing is written.
///
/// Not `shm_open`: rustix's follows a symlink at the name, glibc's does not. A symlink is
/// refused rather than followed, so a segment is always the file its name is.
///
/// # Errors
///
/// `NotFound` when nothing is at `path`; `Incompatible` for a symbolic link or anything but a
/// regular file; `Io` for OS errors.
fn open_checked(
    path: &std::path::Path,
    purpose: Purpose,
    start: &mut [u8],
) -> Result<(OwnedFd, rustix::fs::Stat, usize)> {
    let (symlink, other) = purpose.refused();
    let file_type = || format!("segment {} file type", path.display());
    let fd = match rustix::fs::open(path, purpose.flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => {
            return Err(Error::NotFound {
                what: format!("segment {}", path.display()),
            });
        }
        Err(rustix::io::Errno::LOOP) => {
            return Err(Error::incompatible(file_type(), "regular file", symlink));
        }
        // A directory at the name (opened for writing): not a segment, like any other file type.
        Err(rustix::io::Errno::ISDIR) => {
            return Err(Error::incompatible(
                file_type(),
                "regular file",
                "directory",
            ));
        }
        Err(e) => return Err(io_err("open", path, e)),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|e| io_err("fstat", path, e))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(Error::incompatible(file_type(), "regular file", other));
    }
    let mut got = 0;
    while got < start.len() {
        match rustix::io::pread(&fd, &mut start[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(io_err("pread", path, e)),
        }
    }
    Ok((fd, stat, got))
}

/// Unlinks segment `name`, but only when what is there is a lock-shm segment: a regular file
/// (not a symbolic link) that starts with the magic. Its version and the rest of its header do
/// not matter, so a segment of another version or a damaged one can be removed; a foreign file
/// cannot.
///
/// # Errors
///
/// `InvalidArgument` for a bad name; `NotFound` when nothing is there; `Incompatible` for a
/// symbolic link, something that is not a regular file, or a file without the magic (nothing is
/// removed then); `Io` for OS errors.
pub(crate) fn remove(name: &str) -> Result<()> {
    validate_name(name)?;
    let path = path_of(name);
    let not_found = || Error::NotFound {
        what: format!("segment {}", path.display()),
    };
    // The name is checked through a descriptor, then unlinked only if it still names the same
    // file: a file swapped in between is caught by its inode, and the removal is retried.
    for _ in 0..4 {
        let mut magic = [0u8; 8];
        let (_fd, stat, got) = open_checked(&path, Purpose::Remove, &mut magic)?;
        if magic[..got] != layout::MAGIC {
            return Err(Error::incompatible(
                format!("segment {} magic (not removed)", path.display()),
                hex(&layout::MAGIC),
                hex(&magic[..got]),
            ));
        }
        let now = match rustix::fs::lstat(&path) {
            Ok(now) => now,
            Err(rustix::io::Errno::NOENT) => return Err(not_found()),
            Err(e) => return Err(io_err("lstat", &path, e)),
        };
        if (now.st_dev, now.st_ino) != (stat.st_dev, stat.st_ino) {
            continue;
        }
        return match rustix::fs::unlink(&path) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::NOENT) => Err(not_found()),
            Err(e) => Err(io_err("unlink", &path, e)),
        };
    }
    Err(Error::io(
        "remove",
        &path,
        io::Error::other("the file at the name kept changing while being checked"),
    ))
}

/// How long an opener waits for a remover that holds the segment's
/// [`REMOVE_LOCK`](field::REMOVE_LOCK) byte: a remover holds it for one pass over the client
/// slots and an unlink, so only a stopped or stalled remover makes an open wait this long.
const REMOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Unlinks segment `name` only if no manager has it open (removal.rs), deciding and unlinking
/// under the segment's [`REMOVE_LOCK`](field::REMOVE_LOCK) byte, locked through a description
/// of its own. Returns the pids of the slots found open (`None`: another pid namespace) when it
/// removed nothing.
///
/// # Errors
///
/// As [`Segment::open`] for a segment that is missing, damaged or of another format (nothing is
/// removed; [`remove`] removes those); `InUse` when another process is removing it at the same
/// moment; `Io` for OS errors.
pub(crate) fn remove_unused(name: &str) -> Result<Vec<Option<u32>>> {
    validate_name(name)?;
    let (seg, layout) = Segment::open(name, None)?;
    let sys = Removal::new(&seg, Some((seg.slot_description()?, &layout)));
    let what = format!("segment {}", seg.path.display());
    let open = crate::removal::remove_unused(&sys, layout::CLIENT_SLOTS, &what)?;
    let pid_ns = lockyard_fork::pid_namespace();
    open.into_iter()
        .map(|slot| crate::client::slot_pid(&seg, &layout, slot, pid_ns))
        .collect()
}

/// The system calls of removal.rs for one segment: a remover's (with the description its
/// remove byte is locked through, and the layout to find the slots) or an opener's.
struct Removal<'a> {
    seg: &'a Segment,
    remover: Option<(SlotLock, &'a Layout)>,
    deadline: std::time::Instant,
}

impl<'a> Removal<'a> {
    fn new(seg: &'a Segment, remover: Option<(SlotLock, &'a Layout)>) -> Removal<'a> {
        Removal {
            seg,
            remover,
            deadline: std::time::Instant::now() + REMOVER_WAIT,
        }
    }

    fn remover(&self) -> Result<&(SlotLock, &'a Layout)> {
        self.remover
            .as_ref()
            .ok_or_else(|| Error::invalid("an opener does not remove"))
    }
}

impl crate::removal::RemovalSys for Removal<'_> {
    fn take_remove_byte(&self) -> Result<bool> {
        self.remover()?.0.try_lock(field::REMOVE_LOCK)
    }

    fn release_remove_byte(&self) -> Result<()> {
        self.remover()?.0.unlock(field::REMOVE_LOCK)
    }

    fn remove_byte_held(&self) -> Result<bool> {
        self.seg.ofd_is_locked(field::REMOVE_LOCK)
    }

    fn slot_open(&self, slot: u32) -> Result<bool> {
        let layout = self.remover()?.1;
        self.seg.ofd_is_locked(layout.slot_offset(slot))
    }

    fn linked(&self) -> Result<bool> {
        let stat =
            rustix::fs::fstat(&self.seg.file).map_err(|e| io_err("fstat", &self.seg.path, e))?;
        Ok(stat.st_nlink != 0)
    }

    fn unlink(&self) -> Result<bool> {
        // Only the file this remover looked at: a name that leads elsewhere now was removed (and
        // perhaps made again) by someone else meanwhile.
        if !self.seg.still_named()? {
            return Ok(false);
        }
        match rustix::fs::unlink(&self.seg.path) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(io_err("unlink", &self.seg.path, e)),
        }
    }

    fn pause(&self) -> Result<()> {
        if std::time::Instant::now() >= self.deadline {
            return Err(Error::unavailable(io::Error::other(format!(
                "segment {} is being removed by another process, which has not finished within {REMOVER_WAIT:?}",
                self.seg.path.display()
            ))));
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "(empty file)".to_owned();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
