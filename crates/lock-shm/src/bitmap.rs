//! The allocation bitmap: leaf words of allocated bits under summary levels of full bits.
//!
//! Level 0 has one bit per lock (1 = allocated). Each higher level has one bit per word of the
//! level below (1 = that word is full), up to a top level of one word: two levels cover 4,096
//! locks, and each further level multiplies that by 64, so finding the lowest free id reads one
//! word per level, O(log64 n). Bits past the end of a level (padding) are kept at 1, so they
//! look allocated and full and are never handed out.
//!
//! Every function here runs under the segment-wide allocation lock, so plain relaxed loads and
//! stores suffice between its acquire and release; the leaf bit is the truth, and summaries can
//! be rebuilt from the leaves ([`Bitmap::rebuild`]) after a process died halfway through.

use std::sync::atomic::Ordering::Relaxed;

use lock_api::{Error, Result};

use crate::layout::Layout;
use crate::segment::Segment;

const FULL: u64 = u64::MAX;

/// The bitmap of one segment.
#[derive(Debug)]
pub(crate) struct Bitmap<'a> {
    seg: &'a Segment,
    layout: &'a Layout,
}

impl<'a> Bitmap<'a> {
    pub(crate) fn new(seg: &'a Segment, layout: &'a Layout) -> Self {
        Bitmap { seg, layout }
    }

    /// The number of meaningful bits at `level`: the capacity for the leaves, the word count of
    /// the level below otherwise.
    fn bits(&self, level: usize) -> usize {
        if level == 0 {
            self.layout.capacity as usize
        } else {
            self.layout.levels[level - 1].1
        }
    }

    fn load(&self, level: usize, word: usize) -> Result<u64> {
        Ok(self
            .seg
            .u64(self.layout.bitmap_word_offset(level, word))?
            .load(Relaxed))
    }

    fn store(&self, level: usize, word: usize, value: u64) -> Result<()> {
        self.seg
            .u64(self.layout.bitmap_word_offset(level, word))?
            .store(value, Relaxed);
        Ok(())
    }

    /// The padding mask of the last word of `level`: 1s where bits are past the end.
    fn padding(&self, level: usize) -> u64 {
        let used = self.bits(level) % 64;
        if used == 0 { 0 } else { FULL << used }
    }

    /// Marks every id free: leaves zero except padding, summaries zero except padding.
    pub(crate) fn reset(&self) -> Result<()> {
        for (level, &(_, words)) in self.layout.levels.iter().enumerate() {
            for w in 0..words {
                let v = if w == words - 1 {
                    self.padding(level)
                } else {
                    0
                };
                self.store(level, w, v)?;
            }
        }
        Ok(())
    }

    /// Recomputes every summary level from the leaves and re-asserts padding; returns the number
    /// of allocated ids. Used by whoever takes the allocation lock over from a dead process.
    pub(crate) fn rebuild(&self) -> Result<u32> {
        let levels = self.layout.levels.len();
        let mut allocated: u64 = 0;
        for level in 0..levels {
            let words = self.layout.levels[level].1;
            let pad = self.padding(level);
            for w in 0..words {
                let mut v = if level == 0 {
                    self.load(0, w)?
                } else {
                    let mut v = 0u64;
                    let child_words = self.layout.levels[level - 1].1;
                    for b in 0..64 {
                        let child = w * 64 + b;
                        if child >= child_words || self.load(level - 1, child)? == FULL {
                            v |= 1 << b;
                        }
                    }
                    v
                };
                if w == words - 1 {
                    v |= pad;
                }
                self.store(level, w, v)?;
                if level == 0 {
                    let real = if w == words - 1 { v & !pad } else { v };
                    allocated += u64::from(real.count_ones());
                }
            }
        }
        u32::try_from(allocated).map_err(|_| Error::corrupt("allocation count overflow"))
    }

    /// The number of allocated ids, counted from the leaves (padding excluded): the truth the
    /// `allocated` counter is repaired from. Reads one word per 64 ids and writes nothing.
    pub(crate) fn count(&self) -> Result<u32> {
        let words = self.layout.levels[0].1;
        let pad = self.padding(0);
        let mut allocated: u64 = 0;
        for w in 0..words {
            let mut v = self.load(0, w)?;
            if w == words - 1 {
                v &= !pad;
            }
            allocated += u64::from(v.count_ones());
        }
        u32::try_from(allocated).map_err(|_| Error::corrupt("allocation count overflow"))
    }

    /// Whether `id` is allocated. The caller has checked `id < capacity`.
    pub(crate) fn is_set(&self, id: u32) -> Result<bool> {
        let v = self.load(0, id as usize / 64)?;
        Ok(v & (1 << (id % 64)) != 0)
    }

    /// The lowest free id, or `None` when every id is allocated.
    ///
    /// # Errors
    ///
    /// `Corrupt` when a summary bit promises a free id below it that is not there.
    pub(crate) fn lowest_free(&self) -> Result<Option<u32>> {
        let top = self.layout.levels.len() - 1;
        let mut index = 0usize;
        for level in (0..=top).rev() {
            let v = self.load(level, index)?;
            if v == FULL {
                if level == top {
                    return Ok(None);
                }
                return Err(Error::corrupt(format!(
                    "segment {}: allocation summary level {} says word {index} of level {level} has a free bit, but it is full",
                    self.seg.path().display(),
                    level + 1
                )));
            }
            index = index * 64 + (!v).trailing_zeros() as usize;
        }
        if index >= self.layout.capacity as usize {
            return Err(Error::corrupt(format!(
                "segment {}: allocation bitmap padding is clear (free id {index} past capacity)",
                self.seg.path().display()
            )));
        }
        // Cannot truncate: index < capacity <= u32::MAX.
        Ok(Some(index as u32))
    }

    /// Marks `id` allocated and propagates fullness up. The caller has checked `id < capacity`
    /// and that it is free.
    pub(crate) fn set(&self, id: u32) -> Result<()> {
        let mut index = id as usize;
        for level in 0..self.layout.levels.len() {
            let word = index / 64;
            let v = self.load(level, word)? | (1 << (index % 64));
            self.store(level, word, v)?;
            if v != FULL {
                break;
            }
            index = word;
        }
        Ok(())
    }

    /// Marks `id` free and clears the full bits above it. The caller has checked `id < capacity`
    /// and that it is allocated.
    pub(crate) fn clear(&self, id: u32) -> Result<()> {
        let mut index = id as usize;
        for level in 0..self.layout.levels.len() {
            let word = index / 64;
            let old = self.load(level, word)?;
            self.store(level, word, old & !(1 << (index % 64)))?;
            if old != FULL {
                break;
            }
            index = word;
        }
        Ok(())
    }

    /// Frees every id.
    pub(crate) fn clear_all(&self) -> Result<()> {
        self.reset()
    }
}
