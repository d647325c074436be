//! Hostile segments: garbage headers, truncated files, foreign versions, mismatched capacities,
//! and garbage in the mutable words. Every case gives a typed error or a repair, never a panic,
//! and a failed open leaves the segment byte for byte as it was.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use lock_shm::{Acquired, Error, Inspect, LockId, Locker, MAX_CAPACITY, Manager, ShmManager};

/// A segment name unique to this test and process, removed on drop.
struct Name(String);

impl Name {
    fn new(test: &str) -> Name {
        let name = format!("lockyard-test-hostile-{test}-{}", std::process::id());
        let n = Name(name);
        n.unlink();
        n
    }

    /// Removes whatever is at the name: `ShmManager::remove` refuses what is not a segment.
    fn unlink(&self) {
        let _ = std::fs::remove_file(self.path());
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/dev/shm").join(&self.0)
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(self.path()).expect("read segment")
    }

    fn write_at(&self, off: u64, bytes: &[u8]) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path())
            .expect("open segment for writing");
        f.write_all_at(bytes, off).expect("write segment");
    }

    fn read_u32(&self, off: u64) -> u32 {
        let at = usize::try_from(off).expect("offset");
        let bytes = self.bytes();
        u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
    }

    fn set_len(&self, len: u64) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path())
            .expect("open segment for writing");
        f.set_len(len).expect("truncate segment");
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        self.unlink();
    }
}

const CAPACITY: u32 = 5000;
/// Header fields that open checks, with their widths (bytes 0..104 of the header).
const FIELDS: [(u64, usize); 18] = [
    (0, 4),
    (4, 4),
    (8, 4),
    (12, 4),
    (16, 4),
    (20, 4),
    (24, 4),
    (28, 4),
    (32, 4),
    (36, 4),
    (40, 8),
    (48, 8),
    (56, 8),
    (64, 8),
    (72, 8),
    (80, 8),
    (88, 8),
    (96, 8),
];

/// Opens the damaged segment every way and checks the error and that nothing was written.
fn assert_refused(n: &Name, why: &str) {
    let before = n.bytes();
    for attempt in 0..3 {
        let r = match attempt {
            0 | 1 => ShmManager::open(&n.0).map(|_| ()),
            _ => ShmManager::open_or_create(&n.0, CAPACITY).map(|_| ()),
        };
        assert!(
            matches!(r, Err(Error::Incompatible { .. } | Error::Corrupt { .. })),
            "{why}: open #{attempt} gave {r:?}"
        );
        assert!(
            n.bytes() == before,
            "{why}: failed open #{attempt} modified the segment"
        );
    }
}

/// Garbage in any header field is refused with Incompatible or Corrupt, and changes nothing.
#[test]
fn garbage_in_every_header_field_is_refused() {
    let n = Name::new("garbage");
    drop(ShmManager::create(&n.0, CAPACITY).unwrap());
    let pristine = n.bytes();
    for (off, width) in FIELDS {
        for garbage in [0u64, u64::MAX, 0x0101_0101_0101_0101, 1, 4096, 1 << 40] {
            let bytes = &garbage.to_le_bytes()[..width];
            if pristine[off as usize..off as usize + width] == *bytes {
                continue;
            }
            n.write_at(0, &pristine[..256]);
            n.write_at(off, bytes);
            assert_refused(&n, &format!("field at {off} = {garbage:#x}"));
        }
    }
    // Restored, it opens again.
    n.write_at(0, &pristine[..256]);
    ShmManager::open(&n.0).unwrap();
}

/// A truncated or extended file is refused.
#[test]
fn truncated_and_resized_files_are_refused() {
    let n = Name::new("truncated");
    drop(ShmManager::create(&n.0, CAPACITY).unwrap());
    let full = n.bytes().len() as u64;
    for len in [
        full + 4096,
        full - 1,
        full - 4096,
        300,
        256,
        255,
        100,
        8,
        7,
        0,
    ] {
        n.set_len(len);
        assert_refused(&n, &format!("length {len} of {full}"));
    }
}

/// A segment of another format version is Incompatible, versions 1 (which wrapped slot
/// generations), 2 (which had no waiter entries), 3 (which had no death words), 4 (which had
/// no life words), 5 (which had no hand-offs) and 6 (which had no pid namespaces) included.
#[test]
fn other_version_is_incompatible() {
    let n = Name::new("version");
    drop(ShmManager::create(&n.0, CAPACITY).unwrap());
    for v in [0u32, 1, 2, 3, 4, 5, 6, 8, 99, u32::MAX] {
        n.write_at(8, &v.to_le_bytes());
        let r = ShmManager::open(&n.0);
        assert!(
            matches!(r, Err(Error::Incompatible { .. })),
            "version {v}: {r:?}"
        );
    }
}

/// Opening (or creating) with another capacity is Incompatible and changes nothing.
#[test]
fn capacity_mismatch_is_incompatible() {
    let n = Name::new("capacity");
    drop(ShmManager::create(&n.0, CAPACITY).unwrap());
    let before = n.bytes();
    for c in [1, CAPACITY - 1, CAPACITY + 1, MAX_CAPACITY] {
        let r = ShmManager::open_or_create(&n.0, c);
        assert!(
            matches!(r, Err(Error::Incompatible { .. })),
            "capacity {c}: {r:?}"
        );
    }
    assert!(n.bytes() == before);
}

/// Zero and absurd capacities are refused before anything is created.
#[test]
fn zero_and_absurd_capacities_are_refused() {
    let n = Name::new("zero");
    for c in [0, MAX_CAPACITY + 1, u32::MAX] {
        assert!(matches!(
            ShmManager::create(&n.0, c),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            ShmManager::open_or_create(&n.0, c),
            Err(Error::InvalidArgument { .. })
        ));
    }
    assert!(!n.path().exists());
}

/// A file that is not a lock-shm segment at all (random bytes of a plausible size).
#[test]
fn foreign_file_is_incompatible() {
    let n = Name::new("foreign");
    std::fs::write(n.path(), vec![0xa5u8; 1 << 16]).unwrap();
    assert_refused(&n, "random bytes");
    std::fs::write(n.path(), b"").unwrap();
    assert_refused(&n, "empty file");
}

/// `remove` deletes a segment whatever its version or damage after the magic, refuses (and
/// leaves alone) a file without the magic, and says `NotFound` when nothing is there.
#[test]
fn remove_deletes_segments_only() {
    let n = Name::new("remove");
    assert!(matches!(
        ShmManager::remove(&n.0),
        Err(Error::NotFound { .. })
    ));
    for damage in [&b"LKYDSHM\0\x63\0\0\0"[..], &b"LKYDSHM\0"[..]] {
        drop(ShmManager::create(&n.0, CAPACITY).unwrap());
        n.write_at(0, damage);
        n.set_len(damage.len() as u64);
        ShmManager::remove(&n.0).unwrap();
        assert!(!n.path().exists());
    }
    for foreign in [&b"not a segment at all"[..], &b""[..], &b"LKYDSH"[..]] {
        std::fs::write(n.path(), foreign).unwrap();
        assert!(
            matches!(ShmManager::remove(&n.0), Err(Error::Incompatible { .. })),
            "{foreign:?}"
        );
        assert_eq!(
            std::fs::read(n.path()).unwrap(),
            foreign,
            "the file was touched"
        );
    }
    n.unlink();
    std::fs::create_dir(n.path()).unwrap();
    assert!(matches!(
        ShmManager::remove(&n.0),
        Err(Error::Incompatible { .. })
    ));
    std::fs::remove_dir(n.path()).unwrap();
}

/// Offsets of the mutable header words.
const ALLOC_LOCK: u64 = 128;
const ALLOCATED: u64 = 132;

/// An allocation lock left by a dead owner, with a summary half-updated, is taken over and the
/// bitmap repaired from its leaves.
#[test]
fn dead_allocation_lock_is_taken_over_and_repaired() {
    let n = Name::new("alloclock");
    let m = ShmManager::create(&n.0, 4096).unwrap();
    for _ in 0..70 {
        drop(m.allocate().unwrap());
    }
    let bitmap = 256 + 1024 * 128;
    // Slot 1000 generation 7: nobody holds that slot, so the owner is dead.
    let token: u32 = (7 << 10) | 1000;
    n.write_at(ALLOC_LOCK, &token.to_le_bytes());
    // Leaf word 1 gets a bit nobody counted; the summary claims leaf 0 is free; the counter lies.
    n.write_at(bitmap + 8, &(0b11_1111u64 | 1 << 40).to_le_bytes());
    n.write_at(bitmap + 64 * 8, &0u64.to_le_bytes());
    n.write_at(ALLOCATED, &3u32.to_le_bytes());
    let l = m.allocate().unwrap();
    assert_eq!(l.id(), LockId(70));
    assert_eq!(m.available().unwrap(), Some(4096 - 72));
}

/// Garbage in a lock word (a token no manager writes) is taken over as a dead owner.
#[test]
fn garbage_lock_word_is_taken_over() {
    let n = Name::new("lockword");
    let m = ShmManager::create(&n.0, 64).unwrap();
    let locks = 256 + 1024 * 128 + 64;
    n.write_at(locks + 4 * 3, &0x8000_03ffu32.to_le_bytes());
    n.write_at(locks + 4 * 4, &0x7fff_fc05u32.to_le_bytes());
    let held = m.held().unwrap();
    assert_eq!(
        held.iter().map(|h| h.id).collect::<Vec<_>>(),
        [LockId(3), LockId(4)]
    );
    let a = m.retrieve(LockId(3)).unwrap();
    assert_eq!(a.try_lock().unwrap(), Some(Acquired::OwnerDied));
    a.unlock().unwrap();
    let b = m.retrieve(LockId(4)).unwrap();
    assert_eq!(
        b.try_lock_for(Duration::from_secs(5)).unwrap(),
        Acquired::OwnerDied
    );
    b.unlock().unwrap();
    assert!(m.held().unwrap().is_empty());
}

/// A counter damaged after open gives Corrupt, never a panic; summaries damaged after open are
/// rebuilt from the leaves (the truth) by the allocation that finds them wrong.
#[test]
fn runtime_damage_is_corrupt_or_repaired() {
    let n = Name::new("runtime");
    let m = ShmManager::create(&n.0, 4096).unwrap();
    n.write_at(ALLOCATED, &5000u32.to_le_bytes());
    assert!(matches!(m.available(), Err(Error::Corrupt { .. })));
    n.write_at(ALLOCATED, &0u32.to_le_bytes());
    let bitmap = 256 + 1024 * 128;
    // Leaf 0 full while the summary says it is not.
    n.write_at(bitmap, &u64::MAX.to_le_bytes());
    assert_eq!(m.allocate().unwrap().id(), LockId(64));
    assert_eq!(m.available().unwrap(), Some(4096 - 65));
    // Padding bits of the top word cleared: would point past the table.
    let m2n = Name::new("padding");
    let m2 = ShmManager::create(&m2n.0, 10).unwrap();
    for _ in 0..10 {
        drop(m2.allocate().unwrap());
    }
    assert!(matches!(m2.allocate(), Err(Error::Exhausted { .. })));
    m2n.write_at(bitmap, &0x3ffu64.to_le_bytes());
    assert!(matches!(m2.allocate(), Err(Error::Exhausted { .. })));
    assert_eq!(m2n.read_u32(bitmap), u32::MAX, "padding not restored");
}

/// A summary that says every id is taken while the leaves have free ones (a stray write) hides
/// nothing: allocate agrees with `available` and hands out the lowest free id. It gave a false
/// `Exhausted` until `free_all`.
#[test]
fn a_summary_full_over_free_leaves_is_rebuilt() {
    let n = Name::new("summary");
    let m = ShmManager::create(&n.0, 100).unwrap();
    let bitmap = 256 + 1024 * 128;
    // Capacity 100: two leaf words (bitmap, bitmap + 8), then the top word.
    n.write_at(bitmap + 16, &u64::MAX.to_le_bytes());
    assert_eq!(m.available().unwrap(), Some(100));
    assert_eq!(m.allocate().unwrap().id(), LockId(0));
    let taken = m.allocate_and_retrieve(LockId(5)).unwrap();
    taken.free().unwrap();
    assert_eq!(m.allocate().unwrap().id(), LockId(1));
    assert_eq!(m.available().unwrap(), Some(98));
}

/// The header's epoch (offset 104), which open accepts whatever it holds: damaged past any time
/// the system can name, holds are still listed and inspected, without a since. It panicked.
#[test]
fn a_damaged_epoch_leaves_holds_listed_without_a_time() {
    const EPOCH: u64 = 104;
    let n = Name::new("epoch");
    ShmManager::create(&n.0, 16).unwrap();
    n.write_at(EPOCH, &u64::MAX.to_le_bytes());
    let m = ShmManager::open(&n.0).unwrap();
    let lock = m.allocate().unwrap();
    assert_eq!(lock.try_lock().unwrap(), Some(Acquired::Clean));
    let held = m.held().unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    let holder = held[0].holder.as_ref().expect("a holder");
    assert_eq!(holder.pid, Some(std::process::id()));
    assert_eq!(holder.since, None);
    let holder = lock.holder().unwrap().expect("held");
    assert_eq!(holder.since, None);
    assert_eq!(m.snapshot().unwrap().len(), 1);
    lock.unlock().unwrap();
    assert!(m.held().unwrap().is_empty());
}

/// Random bytes written anywhere in an open segment (mutable header words, client table,
/// bitmap, lock words) never make an operation panic or hang; errors are typed.
#[test]
fn random_damage_after_open_never_panics() {
    use rand::{Rng, SeedableRng};
    let n = Name::new("fuzz");
    let m = ShmManager::create(&n.0, 300).unwrap();
    let other = ShmManager::open(&n.0).unwrap();
    let len = n.bytes().len() as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x10c4_5a4d);
    for round in 0..300 {
        for _ in 0..rng.random_range(1..8) {
            let off = rng.random_range(128..len - 8);
            let garbage: u64 = rng.random();
            let width = rng.random_range(1..=8);
            n.write_at(off, &garbage.to_le_bytes()[..width]);
        }
        let id = LockId(rng.random_range(0..300));
        let l = if rng.random_bool(0.5) { &m } else { &other }
            .retrieve(id)
            .unwrap();
        let r: Result<(), Error> = match round % 8 {
            0 => m.allocate().map(drop),
            1 => l.free(),
            2 => l.try_lock().map(drop),
            3 => l.try_lock_for(Duration::from_millis(2)).map(drop),
            4 => l.unlock(),
            5 => m.held().map(drop),
            6 => m.available().map(drop),
            _ => other.allocate_and_retrieve(id).map(drop),
        };
        if let Err(e) = r {
            assert!(
                matches!(
                    e,
                    Error::Corrupt { .. }
                        | Error::Exhausted { .. }
                        | Error::NotAllocated(_)
                        | Error::AlreadyAllocated(_)
                        | Error::NotHeld(_)
                        | Error::Timeout
                ),
                "round {round}: {e:?}"
            );
        }
    }
    // Repairable by the operator's recovery path: free_all and re-allocation work again.
    let bitmap = 256 + 1024 * 128;
    n.write_at(bitmap, &[0u8; 64]);
    m.free_all().unwrap();
    assert_eq!(m.available().unwrap(), Some(300));
}

/// A symbolic link at the segment's name is refused with a typed error, never followed, whether
/// it points to a real segment or nowhere; the target is left alone.
#[test]
fn symlink_at_the_segment_name_is_refused() {
    let target = Name::new("symlink-target");
    let link = Name::new("symlink");
    drop(ShmManager::create(&target.0, CAPACITY).unwrap());
    let before = target.bytes();
    std::os::unix::fs::symlink(target.path(), link.path()).unwrap();
    for attempt in 0..3 {
        let r = match attempt {
            0 | 1 => ShmManager::open(&link.0).map(|_| ()),
            _ => ShmManager::open_or_create(&link.0, CAPACITY).map(|_| ()),
        };
        assert!(
            matches!(r, Err(Error::Incompatible { .. })),
            "open #{attempt} through a symlink gave {r:?}"
        );
    }
    assert!(
        target.bytes() == before,
        "the symlink's target was modified"
    );
    // Dangling: still refused, and not mistaken for a missing segment to create.
    ShmManager::remove(&target.0).unwrap();
    let r = ShmManager::open_or_create(&link.0, CAPACITY);
    assert!(
        matches!(r, Err(Error::Incompatible { .. })),
        "open_or_create over a dangling symlink gave {r:?}"
    );
    assert!(
        !target.path().exists(),
        "created through a dangling symlink"
    );
    // remove refuses the symlink (it is not a segment) and leaves it alone.
    assert!(matches!(
        ShmManager::remove(&link.0),
        Err(Error::Incompatible { .. })
    ));
    assert!(std::fs::symlink_metadata(link.path()).is_ok());
    std::fs::remove_file(link.path()).unwrap();
}

/// A wrong `allocated` counter (within the capacity, or past it) never bricks the segment:
/// open and allocation repair it from the bitmap, and it never exceeds the capacity.
#[test]
fn wrong_allocated_counter_is_repaired() {
    let n = Name::new("counter");
    let m = ShmManager::create(&n.0, 8).unwrap();
    let mine: Vec<_> = (0..3).map(|_| m.allocate().unwrap()).collect();
    // Says full while 3 of 8 are allocated; opening and allocating must not brick the segment.
    n.write_at(ALLOCATED, &8u32.to_le_bytes());
    let m2 = ShmManager::open(&n.0).unwrap();
    let fourth = m.allocate().unwrap();
    assert_eq!(fourth.id(), LockId(3));
    let r = ShmManager::open(&n.0);
    assert!(r.is_ok(), "the segment is bricked: {r:?}");
    assert_eq!(m.available().unwrap(), Some(4));
    assert_eq!(m2.available().unwrap(), Some(4));
    // Repaired at open even before anyone allocates.
    n.write_at(ALLOCATED, &7u32.to_le_bytes());
    let m3 = ShmManager::open(&n.0).unwrap();
    assert_eq!(m3.available().unwrap(), Some(4), "not repaired at open");
    // Past the capacity: still opens, repaired.
    n.write_at(ALLOCATED, &9000u32.to_le_bytes());
    let m3 = ShmManager::open(&n.0).unwrap();
    assert_eq!(m3.available().unwrap(), Some(4), "not repaired at open");
    // Says empty while 4 are allocated: free and allocate keep it exact.
    n.write_at(ALLOCATED, &0u32.to_le_bytes());
    fourth.free().unwrap();
    assert_eq!(m.available().unwrap(), Some(5));
    n.write_at(ALLOCATED, &0u32.to_le_bytes());
    while m.allocate().is_ok() {}
    assert_eq!(m.available().unwrap(), Some(0));
    m.free_all().unwrap();
    assert_eq!(m3.available().unwrap(), Some(8));
    drop(mine);
    ShmManager::open(&n.0).unwrap();
}

/// A lock word holding only the waiters bit is a lock handed to its sleepers (lockword.rs,
/// "Handing off"); here nobody sleeps, as after a hand-off whose taker died before it took the
/// lock. It is free everywhere: `held()` and `holder()` do not list it, and `try_lock`, `lock`
/// (after its short grace) and `try_lock_for` take it, cleanly: nobody died holding it.
#[test]
fn a_word_handed_to_nobody_is_free() {
    let n = Name::new("handed");
    let m = ShmManager::create(&n.0, 64).unwrap();
    let locks = 256 + 1024 * 128 + 64;
    let word = locks + 4 * 6;
    let l = m.retrieve(LockId(6)).unwrap();
    for attempt in 0..3 {
        n.write_at(word, &0x8000_0000u32.to_le_bytes());
        let held = m.held().unwrap();
        assert!(held.is_empty(), "held() lists a handed word: {held:?}");
        assert_eq!(l.holder().unwrap(), None);
        let acquired = match attempt {
            0 => l.try_lock().unwrap(),
            1 => Some(l.lock().unwrap()),
            _ => Some(l.try_lock_for(Duration::ZERO).unwrap()),
        };
        assert_eq!(acquired, Some(Acquired::Clean), "attempt {attempt}");
        let held = m.held().unwrap();
        assert!(held.len() == 1 && held[0].holder.as_ref().is_some_and(|h| !h.dead));
        l.unlock().unwrap();
        assert!(m.held().unwrap().is_empty());
        assert_eq!(
            n.read_u32(word),
            0,
            "attempt {attempt}: the unlock left {:#x}",
            n.read_u32(word)
        );
    }
}

/// Runs `f` on a thread and waits at most `limit` for its result: `None` when it hangs (the
/// thread is then left behind, and the test fails).
fn bounded<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

/// A slot that looks alive to shared memory alone (a generation and an armed, unmarked life
/// word, as a stray write or a checkpoint restored without its processes leaves it) but whose
/// OFD lock nobody holds is dead: the kernel has the last word. Its table lock is taken over by
/// `lock` and by `try_lock_for`, the allocation lock it appears to hold by `allocate`, and `held`
/// flags it dead.
#[test]
fn an_armed_life_word_without_its_owner_is_dead() {
    let n = Name::new("armed");
    let m = std::sync::Arc::new(ShmManager::create(&n.0, 100).unwrap());
    let (a, b) = (m.allocate().unwrap(), m.allocate().unwrap());
    let slot = 256 + 1000 * 128;
    n.write_at(slot, &5u32.to_le_bytes());
    // The life word is in native byte order (the kernel's): an armed thread id, no flags.
    n.write_at(slot + 16, &12_345u32.to_ne_bytes());
    let token: u32 = (5 << 10) | 1000;
    let locks = u64::from(n.read_u32(72));
    for id in [a.id(), b.id()] {
        n.write_at(locks + 4 * u64::from(id.0), &token.to_le_bytes());
    }
    n.write_at(ALLOC_LOCK, &token.to_le_bytes());
    let limit = Duration::from_secs(20);

    let held = m.held().unwrap();
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(
        held.iter()
            .all(|h| h.holder.as_ref().is_some_and(|who| who.dead)),
        "the holder is not flagged dead: {held:?}"
    );
    let acquired = bounded(limit, move || a.lock().map(|got| (got, a)));
    let (got, a) = acquired.expect("lock hung on a dead holder").unwrap();
    assert_eq!(got, Acquired::OwnerDied);
    a.unlock().unwrap();
    assert_eq!(
        b.try_lock_for(Duration::from_millis(300)).unwrap(),
        Acquired::OwnerDied
    );
    b.unlock().unwrap();
    let m2 = m.clone();
    let allocated = bounded(limit, move || m2.allocate().map(|l| l.id()));
    assert!(
        allocated
            .expect("allocate hung on a dead allocation lock")
            .is_ok(),
        "allocate failed"
    );
}

/// A directory at the segment's name is not a segment: `Incompatible`, as any other file type
/// (it was `Io`, from the open's `EISDIR`), and it is left alone.
#[test]
fn a_directory_at_the_name_is_incompatible() {
    let n = Name::new("directory");
    std::fs::create_dir(n.path()).unwrap();
    let opened = ShmManager::open(&n.0).map(drop);
    let either = ShmManager::open_or_create(&n.0, CAPACITY).map(drop);
    std::fs::remove_dir(n.path()).unwrap();
    assert!(
        matches!(opened, Err(Error::Incompatible { .. })),
        "{opened:?}"
    );
    assert!(
        matches!(either, Err(Error::Incompatible { .. })),
        "{either:?}"
    );
}

/// A client table written over with generations no claim writes leaves no slot to claim: that
/// is damage (`Corrupt`), not a busy table (`Unavailable`), and the open writes nothing.
#[test]
fn a_client_table_of_garbage_is_corrupt() {
    let n = Name::new("clients");
    drop(ShmManager::create(&n.0, 64).unwrap());
    n.write_at(256, &vec![0xffu8; 1024 * 128]);
    let before = n.bytes();
    let r = ShmManager::open(&n.0).map(drop);
    assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
    assert!(n.bytes() == before, "a refused open wrote to the segment");
}
