//! The table file mapped shared into every process: header, allocation bitmap, owner records.
#![allow(unsafe_code)] // the table is shared memory: viewing the mapping as atomics needs unsafe.
//!
//! Invariants, relied on by every `unsafe` block here:
//!
//! 1. `map` covers exactly `layout.total_words * 8` bytes of the file: the file's size was checked
//!    with `fstat` before mapping and the mapping's length after. Mappings start on a page, so the
//!    start is 8-byte aligned.
//! 2. `map` is unmapped only when the `Table` drops, so slices borrowed from `&self` stay valid.
//! 3. This process touches the mapping only through `AtomicU64`. Other processes are other
//!    lockyard instances doing the same, or a hostile writer: either can change values at any
//!    time, so every value read is untrusted (bitmap bits are masked to the capacity, records are
//!    only compared), never used as an index or a length.
//!
//! Truncating the table file under a running process makes its next access raise `SIGBUS`, as for
//! any mapped file. lockyard never truncates it; anyone who can is also able to delete the lock
//! files and break exclusion outright, so this is outside what the store can defend against.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use lock_api::{Error, Result};
use memmap2::{MmapOptions, MmapRaw};

use crate::format::{HEADER_WORDS, Layout, NEXT_OWNER_WORD, RECORD_WORDS};

/// The mapped table file of one open store.
pub(crate) struct Table {
    file: File,
    map: MmapRaw,
    layout: Layout,
    path: PathBuf,
}

impl Table {
    /// Maps `file` (the table at `path`) after checking that it is a regular file of exactly the
    /// size `layout` requires, then checks its header against the marker.
    ///
    /// # Errors
    ///
    /// `Corrupt` when the file is not regular, has the wrong size or a header that disagrees;
    /// `Io` when `fstat` or `mmap` fail.
    pub(crate) fn map(file: File, layout: Layout, owner_death: bool, path: &Path) -> Result<Table> {
        let meta = file.metadata().map_err(|e| Error::io("fstat", path, e))?;
        if !meta.file_type().is_file() {
            return Err(Error::corrupt(format!(
                "table {} is not a regular file",
                path.display()
            )));
        }
        let want = layout.len_bytes();
        if meta.len() != want {
            return Err(Error::corrupt(format!(
                "table {} is {} bytes, expected {want} for a store of {} locks",
                path.display(),
                meta.len(),
                layout.capacity
            )));
        }
        let len = usize::try_from(want)
            .map_err(|_| Error::corrupt(format!("table {} is too large", path.display())))?;
        let map = MmapOptions::new()
            .len(len)
            .map_raw(&file)
            .map_err(|e| Error::io("mmap", path, e))?;
        if map.len() != len {
            return Err(Error::corrupt(format!(
                "table {}: mapped {} bytes, expected {len}",
                path.display(),
                map.len()
            )));
        }
        let table = Table {
            file,
            map,
            layout,
            path: path.to_path_buf(),
        };
        table
            .layout
            .check_header(&table.header(), owner_death, path)?;
        Ok(table)
    }

    /// The whole mapping as words.
    #[inline]
    fn words(&self) -> &[AtomicU64] {
        // SAFETY: by invariant 1 the mapping holds `total_words` 8-byte-aligned words; by invariant
        // 2 it outlives `&self`; by invariant 3 it is only accessed atomically, and `AtomicU64`
        // allows shared mutation, so other writers do not make this reference unsound.
        unsafe {
            std::slice::from_raw_parts(
                self.map.as_mut_ptr().cast::<AtomicU64>().cast_const(),
                self.layout.total_words,
            )
        }
    }

    /// The header words, as stored (little-endian) converted to native.
    pub(crate) fn header(&self) -> [u64; HEADER_WORDS] {
        let mut out = [0; HEADER_WORDS];
        for (o, w) in out.iter_mut().zip(self.words()) {
            *o = load(w, Ordering::Acquire);
        }
        out
    }

    /// The summary bitmap words.
    pub(crate) fn summary(&self) -> &[AtomicU64] {
        let l = &self.layout;
        &self.words()[l.summary_at..l.summary_at + l.summary_words]
    }

    /// The leaf bitmap words.
    pub(crate) fn leaves(&self) -> &[AtomicU64] {
        let l = &self.layout;
        &self.words()[l.leaves_at..l.leaves_at + l.leaf_words]
    }

    /// The owner record of lock `id`; `id < capacity` (checked by every caller).
    #[inline]
    pub(crate) fn record(&self, id: u32) -> &[AtomicU64] {
        let at = self.layout.records_at + RECORD_WORDS * id as usize;
        &self.words()[at..at + RECORD_WORDS]
    }

    /// Takes the next owner number from the header's counter: 1, 2, 3, ... for the life of the
    /// store, across every process, so no two opens ever get the same one.
    pub(crate) fn next_owner(&self) -> u64 {
        let word = &self.words()[NEXT_OWNER_WORD];
        let mut raw = word.load(Ordering::Relaxed);
        loop {
            // The counter is stored little-endian like every word: add in native order. Owner
            // numbers stay below 2^63 (the record's HELD bit); 2^63 opens never happen, so
            // the mask only matters for a counter someone scribbled on.
            let next = (u64::from_le(raw).wrapping_add(1) & crate::record::OWNER_MASK).max(1);
            match word.compare_exchange_weak(raw, next.to_le(), Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(now) => raw = now,
            }
        }
    }

    /// The table file, for the allocation `flock(2)` and `fsync(2)`.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The table file's path, for error messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("path", &self.path)
            .field("capacity", &self.layout.capacity)
            .finish()
    }
}

/// Loads a little-endian word.
#[inline]
pub(crate) fn load(word: &AtomicU64, order: Ordering) -> u64 {
    u64::from_le(word.load(order))
}

/// Stores a word little-endian.
#[inline]
pub(crate) fn store(word: &AtomicU64, value: u64, order: Ordering) {
    word.store(value.to_le(), order);
}
