//! The segment's fixed little-endian layout: header fields, region offsets, validation.
//!
//! Everything here is plain arithmetic on integers: no memory is touched. The layout of a
//! segment is a pure function of its capacity ([`Layout::for_capacity`]); a header read from an
//! existing segment is accepted only when every field equals what that function computes, so
//! after [`Layout::validate`] the rest of the crate never trusts an offset or size read from
//! shared memory. `docs/segment-format.md` is the normative description of the same layout.

use lock_api::{Error, Result};

/// The first eight bytes of every segment.
pub(crate) const MAGIC: [u8; 8] = *b"LKYDSHM\0";
/// The format version this code reads and writes. Version 2 retired a client slot at its last
/// generation instead of wrapping it (client.rs); version 3 grew the client slot to 128 bytes for
/// waiter entries and added the since region and the deadlock detection lock; version 4 gave
/// each slot a death word that waiters sleep on (watch.rs). A process of another version would
/// ignore what this one publishes (a version 3 waiter would never be woken by a death, a version
/// 3 claimer would not announce one), so the versions never share a segment. Version 5 gave each
/// slot a life word (life.rs); version 6 gave the lock word `HANDED` and the since word its
/// starving bit (lockword.rs, "Handing off"), which a version 5 process would take for a dead
/// owner's hold. Version 7 gave each slot its owner's pid namespace (client.rs), which a version
/// 6 claimer would leave as the previous owner's.
pub(crate) const VERSION: u32 = 7;
/// Bytes reserved for the header; the client table starts here.
pub(crate) const HEADER_SIZE: usize = 256;
/// Bytes per lock word.
pub(crate) const LOCK_STRIDE: u32 = 4;
/// Client slots: how many managers may have the segment open at once.
pub(crate) const CLIENT_SLOTS: u32 = 1024;
/// Bytes per client slot record.
pub(crate) const CLIENT_SLOT_SIZE: u32 = 128;
/// Bytes per entry of the since region (one per lock).
pub(crate) const SINCE_STRIDE: u32 = 4;
/// The largest capacity a segment may have (a 256 MiB lock-word region).
pub const MAX_CAPACITY: u32 = 1 << 26;
/// Value of the ready field once the creator has initialised the segment.
pub(crate) const READY: u32 = 1;

/// Header field offsets (bytes from the start of the segment).
pub(crate) mod field {
    /// `[u8; 8]` magic.
    pub(crate) const MAGIC: usize = 0;
    /// `u32` format version.
    pub(crate) const VERSION: usize = 8;
    /// `u32` header size.
    pub(crate) const HEADER_SIZE: usize = 12;
    /// `u32` ready flag.
    pub(crate) const READY: usize = 16;
    /// `u32` number of locks.
    pub(crate) const CAPACITY: usize = 20;
    /// The byte a remover that removes only an unused segment holds an OFD write lock on while
    /// it decides (segment.rs, `remove_unused`); its content is never written (reserved, 0).
    pub(crate) const REMOVE_LOCK: usize = 112;
    /// `u32` bytes per lock word.
    pub(crate) const LOCK_STRIDE: usize = 24;
    /// `u32` number of client slots.
    pub(crate) const CLIENT_SLOTS: usize = 28;
    /// `u32` bytes per client slot.
    pub(crate) const CLIENT_SLOT_SIZE: usize = 32;
    /// `u32` number of bitmap levels.
    pub(crate) const BITMAP_LEVELS: usize = 36;
    /// `u64` total segment size.
    pub(crate) const TOTAL_SIZE: usize = 40;
    /// `u64` client table offset.
    pub(crate) const CLIENT_OFFSET: usize = 48;
    /// `u64` bitmap offset.
    pub(crate) const BITMAP_OFFSET: usize = 56;
    /// `u64` bitmap size in bytes.
    pub(crate) const BITMAP_SIZE: usize = 64;
    /// `u64` lock word region offset.
    pub(crate) const LOCKS_OFFSET: usize = 72;
    /// `u64` lock word region size in bytes.
    pub(crate) const LOCKS_SIZE: usize = 80;
    /// `u64` since region offset.
    pub(crate) const SINCE_OFFSET: usize = 88;
    /// `u64` since region size in bytes.
    pub(crate) const SINCE_SIZE: usize = 96;
    /// `u64` the epoch of the since region: unix seconds when the segment was created. Any
    /// value is accepted (a hold whose since it puts past what `SystemTime` can name is listed
    /// without one: observe.rs).
    pub(crate) const EPOCH: usize = 104;
    /// `u32` futex word of the segment-wide allocation lock (mutable).
    pub(crate) const ALLOC_LOCK: usize = 128;
    /// `u32` number of allocated ids (mutable, under the allocation lock).
    pub(crate) const ALLOCATED: usize = 132;
    /// `u32` futex word of the segment-wide deadlock detection lock (mutable).
    pub(crate) const DETECT_LOCK: usize = 136;
}

/// Where everything is in a segment of a given capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Number of locks.
    pub(crate) capacity: u32,
    /// Offset of the client table.
    pub(crate) client_offset: usize,
    /// Offset of the bitmap region (all levels, leaves first).
    pub(crate) bitmap_offset: usize,
    /// Size of the bitmap region in bytes.
    pub(crate) bitmap_size: usize,
    /// Word offset (in u64 words from `bitmap_offset`) and word count of each level, leaves first.
    pub(crate) levels: Vec<(usize, usize)>,
    /// Offset of the lock words.
    pub(crate) locks_offset: usize,
    /// Size of the lock word region.
    pub(crate) locks_size: usize,
    /// Offset of the since region (when each lock's holder took it, where known).
    pub(crate) since_offset: usize,
    /// Size of the since region.
    pub(crate) since_size: usize,
    /// Total size of the segment.
    pub(crate) total_size: usize,
}

const fn align_up(n: usize, align: usize) -> usize {
    n.div_ceil(align) * align
}

impl Layout {
    /// The layout of a segment with `capacity` locks.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a zero capacity or one above [`MAX_CAPACITY`].
    pub(crate) fn for_capacity(capacity: u32) -> Result<Layout> {
        if capacity == 0 {
            return Err(Error::invalid(
                "capacity 0: a lock table needs at least one lock",
            ));
        }
        if capacity > MAX_CAPACITY {
            return Err(Error::invalid(format!(
                "capacity {capacity} is above the maximum {MAX_CAPACITY}"
            )));
        }
        let client_offset = HEADER_SIZE;
        let client_size = (CLIENT_SLOTS * CLIENT_SLOT_SIZE) as usize;
        let bitmap_offset = align_up(client_offset + client_size, 64);
        let mut levels = Vec::new();
        let mut bits = capacity as usize;
        let mut words_before = 0;
        loop {
            let words = bits.div_ceil(64);
            levels.push((words_before, words));
            words_before += words;
            if words == 1 {
                break;
            }
            bits = words;
        }
        let bitmap_size = words_before * 8;
        let locks_offset = align_up(bitmap_offset + bitmap_size, 64);
        let locks_size = capacity as usize * LOCK_STRIDE as usize;
        let since_offset = align_up(locks_offset + locks_size, 64);
        let since_size = capacity as usize * SINCE_STRIDE as usize;
        let total_size = align_up(since_offset + since_size, 4096);
        Ok(Layout {
            capacity,
            client_offset,
            bitmap_offset,
            bitmap_size,
            levels,
            locks_offset,
            locks_size,
            since_offset,
            since_size,
            total_size,
        })
    }

    /// Offset of lock `id`'s futex word. The caller has checked `id < capacity`.
    #[inline]
    pub(crate) fn lock_offset(&self, id: u32) -> usize {
        self.locks_offset + id as usize * LOCK_STRIDE as usize
    }

    /// Offset of lock `id`'s since word. The caller has checked `id < capacity`.
    #[inline]
    pub(crate) fn since_at(&self, id: u32) -> usize {
        self.since_offset + id as usize * SINCE_STRIDE as usize
    }

    /// Offset of client slot `slot`'s record. The caller has checked `slot < CLIENT_SLOTS`.
    #[inline]
    pub(crate) fn slot_offset(&self, slot: u32) -> usize {
        self.client_offset + (slot * CLIENT_SLOT_SIZE) as usize
    }

    /// Offset of word `word` of bitmap level `level`. The caller has checked both.
    #[inline]
    pub(crate) fn bitmap_word_offset(&self, level: usize, word: usize) -> usize {
        self.bitmap_offset + (self.levels[level].0 + word) * 8
    }

    /// The header a creator writes, as bytes (mutable fields zero, ready flag clear).
    pub(crate) fn header_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut h = [0u8; HEADER_SIZE];
        let put32 = |h: &mut [u8; HEADER_SIZE], at: usize, v: u32| {
            h[at..at + 4].copy_from_slice(&v.to_le_bytes());
        };
        let put64 = |h: &mut [u8; HEADER_SIZE], at: usize, v: usize| {
            h[at..at + 8].copy_from_slice(&(v as u64).to_le_bytes());
        };
        h[field::MAGIC..field::MAGIC + 8].copy_from_slice(&MAGIC);
        put32(&mut h, field::VERSION, VERSION);
        put32(&mut h, field::HEADER_SIZE, HEADER_SIZE as u32);
        put32(&mut h, field::CAPACITY, self.capacity);
        put32(&mut h, field::LOCK_STRIDE, LOCK_STRIDE);
        put32(&mut h, field::CLIENT_SLOTS, CLIENT_SLOTS);
        put32(&mut h, field::CLIENT_SLOT_SIZE, CLIENT_SLOT_SIZE);
        put32(&mut h, field::BITMAP_LEVELS, self.levels.len() as u32);
        put64(&mut h, field::TOTAL_SIZE, self.total_size);
        put64(&mut h, field::CLIENT_OFFSET, self.client_offset);
        put64(&mut h, field::BITMAP_OFFSET, self.bitmap_offset);
        put64(&mut h, field::BITMAP_SIZE, self.bitmap_size);
        put64(&mut h, field::LOCKS_OFFSET, self.locks_offset);
        put64(&mut h, field::LOCKS_SIZE, self.locks_size);
        put64(&mut h, field::SINCE_OFFSET, self.since_offset);
        put64(&mut h, field::SINCE_SIZE, self.since_size);
        h
    }

    /// Checks a header read from an existing segment of `file_size` bytes and returns its
    /// layout. `expected_capacity` is the caller's capacity, if it named one.
    ///
    /// Nothing is trusted: the layout is recomputed from the capacity field and every other
    /// field must equal the recomputed value.
    ///
    /// # Errors
    ///
    /// `Incompatible` for a foreign magic, another version, a file size that differs from the
    /// header's, or a capacity other than `expected_capacity`; `Corrupt` for a short file, a
    /// segment not marked ready, or fields that do not add up.
    pub(crate) fn validate(
        what: &str,
        header: &[u8],
        file_size: u64,
        expected_capacity: Option<u32>,
    ) -> Result<Layout> {
        if header.len() < HEADER_SIZE || file_size < HEADER_SIZE as u64 {
            if file_size >= 8 && header.len() >= 8 && header[..8] != MAGIC {
                return Err(Error::incompatible(
                    format!("segment {what} magic"),
                    hex(&MAGIC),
                    hex(&header[..8]),
                ));
            }
            return Err(Error::corrupt(format!(
                "segment {what}: truncated to {file_size} bytes, shorter than its {HEADER_SIZE}-byte header"
            )));
        }
        let get32 = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&header[at..at + 4]);
            u32::from_le_bytes(b)
        };
        let get64 = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(b)
        };
        if header[..8] != MAGIC {
            return Err(Error::incompatible(
                format!("segment {what} magic"),
                hex(&MAGIC),
                hex(&header[..8]),
            ));
        }
        let version = get32(field::VERSION);
        if version != VERSION {
            return Err(Error::incompatible(
                format!("segment {what} format version"),
                VERSION,
                version,
            ));
        }
        let stride = get32(field::LOCK_STRIDE);
        if stride != LOCK_STRIDE {
            return Err(Error::incompatible(
                format!("segment {what} lock stride"),
                LOCK_STRIDE,
                stride,
            ));
        }
        let capacity = get32(field::CAPACITY);
        let layout = Layout::for_capacity(capacity).map_err(|_| {
            Error::corrupt(format!(
                "segment {what}: capacity field {capacity} is not in 1..={MAX_CAPACITY}"
            ))
        })?;
        let expect32 = [
            ("header size", field::HEADER_SIZE, HEADER_SIZE as u32),
            ("client slot count", field::CLIENT_SLOTS, CLIENT_SLOTS),
            (
                "client slot size",
                field::CLIENT_SLOT_SIZE,
                CLIENT_SLOT_SIZE,
            ),
            (
                "bitmap level count",
                field::BITMAP_LEVELS,
                layout.levels.len() as u32,
            ),
        ];
        for (name, at, want) in expect32 {
            let found = get32(at);
            if found != want {
                return Err(Error::corrupt(format!(
                    "segment {what}: {name} is {found}, expected {want} for capacity {capacity}"
                )));
            }
        }
        let expect64 = [
            ("total size", field::TOTAL_SIZE, layout.total_size),
            (
                "client table offset",
                field::CLIENT_OFFSET,
                layout.client_offset,
            ),
            ("bitmap offset", field::BITMAP_OFFSET, layout.bitmap_offset),
            ("bitmap size", field::BITMAP_SIZE, layout.bitmap_size),
            (
                "lock region offset",
                field::LOCKS_OFFSET,
                layout.locks_offset,
            ),
            ("lock region size", field::LOCKS_SIZE, layout.locks_size),
            (
                "since region offset",
                field::SINCE_OFFSET,
                layout.since_offset,
            ),
            ("since region size", field::SINCE_SIZE, layout.since_size),
        ];
        for (name, at, want) in expect64 {
            let found = get64(at);
            if found != want as u64 {
                return Err(Error::corrupt(format!(
                    "segment {what}: {name} is {found}, expected {want} for capacity {capacity}"
                )));
            }
        }
        let ready = get32(field::READY);
        if ready != READY {
            return Err(Error::corrupt(format!(
                "segment {what}: ready flag is {ready:#x}, expected {READY}"
            )));
        }
        if file_size != layout.total_size as u64 {
            return Err(Error::incompatible(
                format!("segment {what} file size"),
                layout.total_size,
                file_size,
            ));
        }
        if let Some(expected) = expected_capacity
            && expected != capacity
        {
            return Err(Error::incompatible(
                format!("segment {what} capacity"),
                expected,
                capacity,
            ));
        }
        // The `allocated` counter is not checked: a wrong one is repaired from the bitmap after
        // open (manager.rs), rather than make the whole table unusable.
        Ok(layout)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_header(layout: &Layout) -> [u8; HEADER_SIZE] {
        let mut h = layout.header_bytes();
        h[field::READY..field::READY + 4].copy_from_slice(&READY.to_le_bytes());
        h
    }

    #[test]
    fn levels_shrink_to_one_word() {
        let l = Layout::for_capacity(1 << 20).unwrap();
        assert_eq!(
            l.levels,
            vec![(0, 16384), (16384, 256), (16640, 4), (16644, 1)]
        );
        let l = Layout::for_capacity(64).unwrap();
        assert_eq!(l.levels, vec![(0, 1)]);
        let l = Layout::for_capacity(65).unwrap();
        assert_eq!(l.levels, vec![(0, 2), (2, 1)]);
    }

    #[test]
    fn regions_do_not_overlap_and_fit() {
        for cap in [1, 63, 64, 65, 4095, 4096, 4097, 1 << 20, MAX_CAPACITY] {
            let l = Layout::for_capacity(cap).unwrap();
            assert!(l.client_offset >= HEADER_SIZE);
            assert!(
                l.bitmap_offset >= l.client_offset + (CLIENT_SLOTS * CLIENT_SLOT_SIZE) as usize
            );
            assert!(l.locks_offset >= l.bitmap_offset + l.bitmap_size);
            assert!(l.since_offset >= l.locks_offset + l.locks_size);
            assert!(l.total_size >= l.since_offset + l.since_size);
            assert_eq!(l.since_offset % 64, 0);
            assert_eq!(l.bitmap_offset % 64, 0);
            assert_eq!(l.locks_offset % 64, 0);
        }
    }

    #[test]
    fn zero_and_absurd_capacity_refused() {
        assert!(matches!(
            Layout::for_capacity(0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            Layout::for_capacity(MAX_CAPACITY + 1),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn validate_accepts_its_own_header() {
        let l = Layout::for_capacity(2048).unwrap();
        let h = ready_header(&l);
        assert_eq!(
            Layout::validate("t", &h, l.total_size as u64, Some(2048)).unwrap(),
            l
        );
        assert!(matches!(
            Layout::validate("t", &h, l.total_size as u64, Some(4096)),
            Err(Error::Incompatible { .. })
        ));
        assert!(matches!(
            Layout::validate("t", &h, l.total_size as u64 - 4096, None),
            Err(Error::Incompatible { .. })
        ));
    }

    #[test]
    fn validate_refuses_every_garbled_field() {
        let l = Layout::for_capacity(2048).unwrap();
        let good = ready_header(&l);
        for at in (0..field::ALLOC_LOCK).step_by(4) {
            for garbage in [0u32, 0xffff_ffff, 0x1234_5678, 1] {
                let mut h = good;
                h[at..at + 4].copy_from_slice(&garbage.to_le_bytes());
                if h == good {
                    continue;
                }
                // The epoch and the reserved bytes after it are not checked.
                let reserved = at >= field::EPOCH;
                let r = Layout::validate("t", &h, l.total_size as u64, None);
                if reserved {
                    assert!(r.is_ok(), "reserved byte {at} is not checked");
                } else {
                    assert!(
                        matches!(r, Err(Error::Incompatible { .. } | Error::Corrupt { .. })),
                        "field at {at} = {garbage:#x} accepted: {r:?}"
                    );
                }
            }
        }
    }
}
