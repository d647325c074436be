//! Who has a store open: every manager claims an entry in the store's `clients` file for its
//! life, which is what [`Manager::clients`](lock_api::Manager::clients) lists.
#![allow(unsafe_code)] // byte-range OFD locks go through libc::fcntl, which rustix does not wrap.
//!
//! The file is an array of 32-byte entries of little-endian words, grown as entries are first
//! used:
//!
//! ```text
//! word 0  owner number (0: never used)
//! word 1  pid (bits 0..32) | inode number of the pid namespace (bits 32..64; 0 unknown)
//! word 2  when the manager opened the store, ms since the Unix epoch
//! word 3  owner number XOR "LKYDCLNT": tells an entry from garbage
//! ```
//!
//! Entry `k` is live while some open file description holds an OFD write lock on its first
//! byte (`k * 32`). A manager opens the file, takes the first entry whose byte it can lock
//! without waiting (`F_OFD_SETLK`), and writes its identity there; the lock lasts until the
//! description is closed, so the kernel ends the entry when the manager drops or its process
//! dies, however it dies (a forked child that inherited the descriptor keeps it meanwhile).
//! A reader asks the kernel which entries are locked (`F_OFD_GETLK`) and reads those. Locks
//! held through the reader's own description are not conflicts, so a manager never lists
//! itself.
//!
//! An entry is taken before it is written, so a reader that comes in between reads the previous
//! (dead) owner's identity under the new owner's lock for that moment, and a read may see a
//! write half done (the check word then disagrees, and the entry is skipped): `clients()` is a
//! snapshot, and at worst names one open from a moment ago. At most [`MAX_CLIENTS`] managers
//! get an entry at once; a manager opened beyond that works as usual but is not listed.
//! Nothing here decides exclusion or removal: `remove_unused` relies on the marker's `flock`
//! (registry.rs).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lock_api::{Error, Result};

/// Bytes per entry.
const ENTRY_LEN: u64 = 32;
/// The most entries in use at once, which bounds a claim's scan and a reader's read (128 KiB).
pub(crate) const MAX_CLIENTS: u64 = 4096;
/// "LKYDCLNT" read as a little-endian word.
const CHECK: u64 = u64::from_le_bytes(*b"LKYDCLNT");

/// What an entry says of its manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The manager's owner number (`Holder::owner` is `file owner N`).
    pub(crate) owner: u64,
    /// Its process's pid in its own pid namespace (0: unknown).
    pub(crate) pid: u32,
    /// The inode number of that pid namespace (0: unknown).
    pub(crate) pid_ns: u32,
    /// When it opened the store, ms since the Unix epoch (0: unknown).
    pub(crate) since_ms: u64,
}

impl Entry {
    /// The entry's bytes.
    fn encode(&self) -> [u8; ENTRY_LEN as usize] {
        let words = [
            self.owner,
            u64::from(self.pid) | u64::from(self.pid_ns) << 32,
            self.since_ms,
            self.owner ^ CHECK,
        ];
        let mut out = [0u8; ENTRY_LEN as usize];
        for (chunk, word) in out.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// The entry `bytes` hold, or `None` for one never used, or garbage.
    fn decode(bytes: &[u8]) -> Option<Entry> {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(bytes.get(i * 8..i * 8 + 8)?);
            Some(u64::from_le_bytes(w))
        };
        let (owner, ids, since_ms, check) = (word(0)?, word(1)?, word(2)?, word(3)?);
        (owner != 0 && check == owner ^ CHECK).then_some(Entry {
            owner,
            pid: ids as u32,
            pid_ns: (ids >> 32) as u32,
            since_ms,
        })
    }

    /// When the manager opened the store, if recorded.
    pub(crate) fn since(&self) -> Option<SystemTime> {
        (self.since_ms != 0).then(|| UNIX_EPOCH + Duration::from_millis(self.since_ms))
    }
}

/// Claims the first free entry of the `clients` file `file` (at `path`, opened for reading and
/// writing by this manager alone, which keeps it open for its life) and writes `me` there.
/// Returns the entry, or `None` when all [`MAX_CLIENTS`] are in use or the file system refuses
/// (no OFD locks, a full disk): being listed is not worth failing an open for, and the manager
/// then works as usual, unlisted. An entry whose write failed is unlocked again, so that it
/// never shows a dead manager's identity as live.
pub(crate) fn claim(file: &File, path: &Path, me: &Entry) -> Option<u64> {
    for k in 0..MAX_CLIENTS {
        let off = k * ENTRY_LEN;
        if !ofd(file, path, off, Op::TryLock).ok()? {
            continue;
        }
        if file.write_all_at(&me.encode(), off).is_ok() {
            return Some(k);
        }
        // If even the unlock fails, the description's close ends the lock.
        let _ = ofd(file, path, off, Op::Unlock);
        return None;
    }
    None
}

/// The entries of the live managers other than the one whose description `file` is, in entry
/// order.
///
/// # Errors
///
/// `Io` naming the file (`path`) for OS errors.
pub(crate) fn others(file: &File, path: &Path) -> Result<Vec<Entry>> {
    let len = file
        .metadata()
        .map_err(|e| Error::io("fstat", path, e))?
        .len()
        .min(MAX_CLIENTS * ENTRY_LEN);
    let mut bytes = vec![0u8; len as usize];
    let mut read = 0;
    while read < bytes.len() {
        match file.read_at(&mut bytes[read..], read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
    let mut out = Vec::new();
    for (k, chunk) in bytes[..read].chunks_exact(ENTRY_LEN as usize).enumerate() {
        let Some(entry) = Entry::decode(chunk) else {
            continue;
        };
        // Locked through another description: a live manager (never this one).
        if !ofd(file, path, k as u64 * ENTRY_LEN, Op::Probe)? {
            out.push(entry);
        }
    }
    Ok(out)
}

/// What [`ofd`] does with an entry's byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `F_OFD_SETLK` of a write lock: whether it was taken.
    TryLock,
    /// `F_OFD_SETLK` of `F_UNLCK`: always `true`.
    Unlock,
    /// `F_OFD_GETLK` of a write lock: whether it could be taken (no other description holds a
    /// lock on the byte).
    Probe,
}

/// `op` on byte `off` of `file` (at `path`), through the file's own description.
fn ofd(file: &File, path: &Path, off: u64, op: Op) -> Result<bool> {
    let (cmd, l_type) = match op {
        Op::TryLock => (libc::F_OFD_SETLK, libc::F_WRLCK),
        Op::Unlock => (libc::F_OFD_SETLK, libc::F_UNLCK),
        Op::Probe => (libc::F_OFD_GETLK, libc::F_WRLCK),
    };
    // SAFETY: `struct flock` is plain old data for which all-zero bytes are a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = l_type as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = off as libc::off_t;
    fl.l_len = 1;
    loop {
        // SAFETY: `fl` is a valid, initialised `struct flock` that outlives the call, and the
        // caller's descriptor is open for the call.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) };
        if r == 0 {
            return Ok(op != Op::Probe || fl.l_type == libc::F_UNLCK as libc::c_short);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN | libc::EACCES) if op == Op::TryLock => return Ok(false),
            _ => {
                let name = if op == Op::Probe {
                    "fcntl(F_OFD_GETLK)"
                } else {
                    "fcntl(F_OFD_SETLK)"
                };
                return Err(Error::io(name, path, e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(owner: u64) -> Entry {
        Entry {
            owner,
            pid: 4711,
            pid_ns: 0xf000_0001,
            since_ms: 1_700_000_000_000,
        }
    }

    fn open(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("open clients file")
    }

    #[test]
    fn entries_round_trip_and_garbage_is_no_entry() {
        let entry = me(9);
        assert_eq!(Entry::decode(&entry.encode()), Some(entry));
        assert_eq!(Entry::decode(&[0u8; 32]), None, "never used");
        let mut bad = entry.encode();
        bad[8] ^= 1;
        assert_eq!(
            Entry::decode(&bad).map(|e| e.pid),
            Some(4710),
            "ids are not checked"
        );
        bad[0] ^= 1;
        assert_eq!(Entry::decode(&bad), None, "owner and check disagree");
        assert_eq!(Entry::decode(&[0xff; 31]), None, "short");
        assert_eq!(
            entry.since(),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
    }

    #[test]
    fn each_manager_sees_the_others_until_they_close() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("clients");
        File::create(&path).expect("create");
        let (a, b) = (open(&path), open(&path));
        assert_eq!(claim(&a, &path, &me(1)), Some(0));
        assert_eq!(claim(&b, &path, &me(2)), Some(1));
        assert_eq!(others(&a, &path).expect("others"), vec![me(2)]);
        assert_eq!(others(&b, &path).expect("others"), vec![me(1)]);
        drop(a);
        assert_eq!(others(&b, &path).expect("others"), vec![]);
        // The first free entry is taken again, and the dead one's bytes are overwritten.
        let c = open(&path);
        assert_eq!(claim(&c, &path, &me(3)), Some(0));
        assert_eq!(others(&b, &path).expect("others"), vec![me(3)]);
        assert_eq!(others(&c, &path).expect("others"), vec![me(2)]);
    }

    /// A claim the file system refuses leaves no entry: without write access no lock is taken,
    /// and an entry whose write fails (here: beyond the file size limit) is unlocked again, so
    /// no reader takes the previous owner's bytes for a live manager.
    #[test]
    fn a_refused_claim_leaves_no_entry() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("clients");
        File::create(&path).expect("create");
        let read_only = File::open(&path).expect("open");
        assert_eq!(claim(&read_only, &path, &me(1)), None);
        let limit = Duration::from_secs(10);
        let status = lock_conformance::fork::fork_and_wait(limit, || {
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: libc::RLIM_INFINITY,
            };
            // SAFETY: plain system calls on values that outlive them, in a single-threaded
            // child: ignoring SIGXFSZ makes the oversized write fail with EFBIG instead.
            let set = unsafe {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN) != libc::SIG_ERR
                    && libc::setrlimit(libc::RLIMIT_FSIZE, &zero) == 0
            };
            if !set {
                return 2;
            }
            let file = open(&path);
            if claim(&file, &path, &me(1)).is_some() {
                return 3;
            }
            let other = open(&path);
            match ofd(&other, &path, 0, Op::Probe) {
                Ok(true) => 0,
                _ => 4,
            }
        })
        .expect("fork");
        assert_eq!(
            status,
            Some(0),
            "2: setrlimit; 3: the write did not fail; 4: the entry stayed locked"
        );
    }

    #[test]
    fn a_garbage_file_lists_nobody_and_still_gives_entries() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("clients");
        std::fs::write(&path, vec![0xa5u8; 1000]).expect("write garbage");
        let (a, b) = (open(&path), open(&path));
        assert_eq!(others(&a, &path).expect("others"), vec![]);
        claim(&a, &path, &me(1));
        claim(&b, &path, &me(2));
        assert_eq!(others(&a, &path).expect("others"), vec![me(2)]);
        assert_eq!(others(&b, &path).expect("others"), vec![me(1)]);
    }
}
