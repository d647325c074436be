//! The two-level allocation bitmap in the table file: lowest free id first, in O(capacity / 4096).
//!
//! Leaf bit `i` is set while id `i` is allocated. Summary bit `l` set means "leaf word `l` is
//! full"; it is only a hint that lets allocation skip full leaves. Every operation runs under the
//! table's allocation lock (an in-process mutex plus `flock(2)` on the table file), but a process
//! may die between two stores, so the stores are ordered to keep the hint conservative:
//!
//! - a set summary bit always means a full leaf: `free` clears the summary bit before the leaf
//!   bit, `allocate` sets the leaf bit before the summary bit;
//! - a clear summary bit over a full leaf is harmless: allocation finds the leaf full, repairs the
//!   hint and moves on.
//!
//! A set summary bit over a leaf with free ids is never written by this code, but the table is
//! untrusted shared memory: a scribbled summary word would hide those ids and make allocation
//! report `Exhausted` with ids free. So a search that finds nothing is not believed at once: it
//! checks the leaves under every set summary bit in its range, clears the bits that lie, and
//! searches again (`repair_full_hints`). That costs a read of the leaves, but only when the search
//! came back empty (the table is full from `from` on, or the hint lied), never on the way to a
//! free id.
//!
//! Bits beyond the capacity in the last words are never trusted: they are masked out, so a
//! garbage word can never yield an id out of range.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::table::{load, store};

/// The allocation bitmap of one table, borrowed from its mapping (or from a test's vectors).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bitmap<'a> {
    summary: &'a [AtomicU64],
    leaves: &'a [AtomicU64],
    capacity: u32,
}

impl<'a> Bitmap<'a> {
    /// A bitmap of `capacity` ids; the slices have the lengths `Layout::new(capacity)` gives.
    pub(crate) fn new(summary: &'a [AtomicU64], leaves: &'a [AtomicU64], capacity: u32) -> Self {
        debug_assert_eq!(leaves.len(), (capacity as usize).div_ceil(64));
        debug_assert_eq!(summary.len(), leaves.len().div_ceil(64));
        Bitmap {
            summary,
            leaves,
            capacity,
        }
    }

    /// The bits of leaf word `leaf` that stand for real ids.
    #[inline]
    fn leaf_mask(&self, leaf: usize) -> u64 {
        let first = leaf as u64 * 64;
        let left = u64::from(self.capacity).saturating_sub(first);
        if left >= 64 { !0 } else { (1u64 << left) - 1 }
    }

    /// The bits of summary word `word` that stand for real leaf words.
    #[inline]
    fn summary_mask(&self, word: usize) -> u64 {
        let first = word * 64;
        let left = self.leaves.len().saturating_sub(first);
        if left >= 64 { !0 } else { (1u64 << left) - 1 }
    }

    /// The lowest free id at or above `from`, or `None`. Marks nothing: the caller `set`s the
    /// id it takes (allocation first checks the id's lock file, see `Manager::allocate`).
    ///
    /// Full leaves under a clear summary bit (a process died between the two stores) are
    /// repaired on the way; a set summary bit over a leaf with free ids (garbage in the table)
    /// is found and repaired when the search comes back empty, so it hides nothing.
    #[inline]
    pub(crate) fn lowest_free(&self, from: u32) -> Option<u32> {
        if from >= self.capacity {
            return None;
        }
        match self.search(from) {
            Some(id) => Some(id),
            None if self.repair_full_hints(from) => self.search(from),
            None => None,
        }
    }

    /// The search of [`lowest_free`](Self::lowest_free), trusting set summary bits.
    /// `from < capacity`.
    fn search(&self, from: u32) -> Option<u32> {
        let first_leaf = from as usize / 64;
        for w in first_leaf / 64..self.summary.len() {
            let mut candidates = !load(&self.summary[w], Ordering::Acquire) & self.summary_mask(w);
            if w == first_leaf / 64 {
                candidates &= !0u64 << (first_leaf % 64);
            }
            while candidates != 0 {
                let leaf = w * 64 + candidates.trailing_zeros() as usize;
                candidates &= candidates - 1;
                let mut free = !load(&self.leaves[leaf], Ordering::Acquire) & self.leaf_mask(leaf);
                if free == 0 {
                    // A stale hint (a process died between the two stores): repair it.
                    self.mark_full(leaf, true);
                    continue;
                }
                if leaf == first_leaf {
                    free &= !0u64 << (from % 64);
                    if free == 0 {
                        continue;
                    }
                }
                return Some(leaf as u32 * 64 + free.trailing_zeros());
            }
        }
        None
    }

    /// Clears every summary bit from `from`'s summary word on that claims "full" over a leaf
    /// with a free id; returns whether it cleared any. The slow path of `lowest_free`, taken
    /// when its search found nothing.
    ///
    /// Clearing a summary bit is always safe: a clear bit only makes allocation look at the
    /// leaf, and the next search that finds the leaf full sets it again. The caller holds the
    /// allocation lock, as for every operation here, so no lockyard process moves a bit meanwhile.
    #[cold]
    #[inline(never)]
    fn repair_full_hints(&self, from: u32) -> bool {
        let mut repaired = false;
        for w in from as usize / 64 / 64..self.summary.len() {
            let mut claimed = load(&self.summary[w], Ordering::Acquire) & self.summary_mask(w);
            while claimed != 0 {
                let leaf = w * 64 + claimed.trailing_zeros() as usize;
                claimed &= claimed - 1;
                if !load(&self.leaves[leaf], Ordering::Acquire) & self.leaf_mask(leaf) != 0 {
                    self.mark_full(leaf, false);
                    repaired = true;
                }
            }
        }
        repaired
    }

    /// Marks the lowest free id allocated and returns it, or `None` when every id is taken.
    #[cfg(test)]
    pub(crate) fn allocate_lowest(&self) -> Option<u32> {
        let id = self.lowest_free(0)?;
        self.set(id).then_some(id)
    }

    /// Marks `id` allocated; returns false when it already was. `id < capacity`.
    pub(crate) fn set(&self, id: u32) -> bool {
        let leaf = id as usize / 64;
        let bit = 1u64 << (id % 64);
        let word = load(&self.leaves[leaf], Ordering::Acquire);
        if word & bit != 0 {
            return false;
        }
        let now = word | bit;
        store(&self.leaves[leaf], now, Ordering::Release);
        if !now & self.leaf_mask(leaf) == 0 {
            self.mark_full(leaf, true);
        }
        true
    }

    /// Marks `id` free; returns false when it was not allocated. `id < capacity`.
    pub(crate) fn clear(&self, id: u32) -> bool {
        let leaf = id as usize / 64;
        let bit = 1u64 << (id % 64);
        let word = load(&self.leaves[leaf], Ordering::Acquire);
        if word & bit == 0 {
            return false;
        }
        // Summary first: a set summary bit must never stand over a leaf with a free id.
        self.mark_full(leaf, false);
        store(&self.leaves[leaf], word & !bit, Ordering::Release);
        true
    }

    /// Whether `id` is allocated. `id < capacity`.
    #[cfg(test)]
    pub(crate) fn is_set(&self, id: u32) -> bool {
        load(&self.leaves[id as usize / 64], Ordering::Acquire) & 1 << (id % 64) != 0
    }

    /// Frees every id (summary first, for the same reason as in `clear`).
    pub(crate) fn clear_all(&self) {
        for word in self.summary {
            store(word, 0, Ordering::Release);
        }
        for word in self.leaves {
            store(word, 0, Ordering::Release);
        }
    }

    /// The number of allocated ids.
    #[cfg(test)]
    pub(crate) fn count_allocated(&self) -> u32 {
        self.leaves
            .iter()
            .enumerate()
            .map(|(l, w)| (load(w, Ordering::Acquire) & self.leaf_mask(l)).count_ones())
            .sum()
    }

    /// The number of free ids whose bit is set in `usable` (one bit per id, laid out like the
    /// leaves; missing words count as zero).
    pub(crate) fn count_free_in(&self, usable: &[u64]) -> u32 {
        self.leaves
            .iter()
            .zip(usable)
            .enumerate()
            .map(|(l, (w, u))| (!load(w, Ordering::Acquire) & u & self.leaf_mask(l)).count_ones())
            .sum()
    }

    /// Sets or clears the summary bit of leaf word `leaf`.
    fn mark_full(&self, leaf: usize, full: bool) {
        let word = &self.summary[leaf / 64];
        let bit = 1u64 << (leaf % 64);
        let old = load(word, Ordering::Acquire);
        let new = if full { old | bit } else { old & !bit };
        if new != old {
            store(word, new, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Layout;

    struct Owned {
        summary: Vec<AtomicU64>,
        leaves: Vec<AtomicU64>,
        capacity: u32,
    }

    impl Owned {
        fn new(capacity: u32) -> Owned {
            let l = Layout::new(capacity);
            Owned {
                summary: (0..l.summary_words).map(|_| AtomicU64::new(0)).collect(),
                leaves: (0..l.leaf_words).map(|_| AtomicU64::new(0)).collect(),
                capacity,
            }
        }
        fn bitmap(&self) -> Bitmap<'_> {
            Bitmap::new(&self.summary, &self.leaves, self.capacity)
        }
    }

    #[test]
    fn allocates_every_id_lowest_first_then_none() {
        for capacity in [1, 63, 64, 65, 4095, 4096, 4097, 10_000] {
            let t = Owned::new(capacity);
            let b = t.bitmap();
            for want in 0..capacity {
                assert_eq!(b.allocate_lowest(), Some(want), "capacity {capacity}");
            }
            assert_eq!(b.allocate_lowest(), None);
            assert_eq!(b.count_allocated(), capacity);
        }
    }

    #[test]
    fn freed_id_is_the_next_one_allocated() {
        let t = Owned::new(5000);
        let b = t.bitmap();
        while b.allocate_lowest().is_some() {}
        for id in [4999, 64, 4096, 0] {
            assert!(b.clear(id));
            assert!(!b.clear(id), "double free of {id}");
            assert_eq!(b.allocate_lowest(), Some(id));
        }
        assert_eq!(b.allocate_lowest(), None);
    }

    #[test]
    fn set_refuses_an_allocated_id_and_keeps_the_hint_right() {
        let t = Owned::new(130);
        let b = t.bitmap();
        for id in 0..64 {
            assert!(b.set(id));
        }
        assert!(!b.set(3));
        assert!(b.is_set(63));
        assert_eq!(b.allocate_lowest(), Some(64));
        b.clear_all();
        assert_eq!(b.count_allocated(), 0);
        assert_eq!(b.allocate_lowest(), Some(0));
    }

    #[test]
    fn lowest_free_from_skips_what_lies_below() {
        let t = Owned::new(5000);
        let b = t.bitmap();
        assert_eq!(b.lowest_free(0), Some(0));
        assert_eq!(b.lowest_free(3), Some(3));
        assert_eq!(b.lowest_free(4999), Some(4999));
        assert_eq!(b.lowest_free(5000), None);
        assert_eq!(b.lowest_free(u32::MAX), None);
        for id in 0..4200 {
            assert!(b.set(id));
        }
        // Across a full summary word and within a leaf.
        for from in [0, 63, 64, 4095, 4096, 4199, 4200] {
            assert_eq!(b.lowest_free(from), Some(4200), "from {from}");
        }
        assert!(b.clear(70));
        assert_eq!(b.lowest_free(0), Some(70));
        assert_eq!(b.lowest_free(70), Some(70));
        assert_eq!(b.lowest_free(71), Some(4200));
        assert!(b.set(4201));
        assert_eq!(b.lowest_free(4201), Some(4202));
        // Nothing was marked by looking.
        assert_eq!(b.count_allocated(), 4200);
    }

    #[test]
    fn free_ids_are_counted_only_where_usable() {
        let t = Owned::new(130);
        let b = t.bitmap();
        for id in [0, 1, 64, 129] {
            assert!(b.set(id));
        }
        assert_eq!(b.count_free_in(&[!0, !0, !0]), 126);
        // Bits beyond the capacity never count; a missing word counts as unusable.
        assert_eq!(b.count_free_in(&[0b1110, 0, !0]), 3);
        assert_eq!(b.count_free_in(&[!0]), 62);
    }

    #[test]
    fn garbage_padding_and_stale_hints_are_harmless() {
        let t = Owned::new(70);
        // Garbage beyond the capacity in the last leaf, a stale "not full" hint on a full leaf.
        store(&t.leaves[1], !0 << 6, Ordering::Relaxed);
        store(&t.leaves[0], !0, Ordering::Relaxed);
        let b = t.bitmap();
        assert_eq!(b.count_allocated(), 64);
        for want in 64..70 {
            assert_eq!(b.allocate_lowest(), Some(want));
        }
        assert_eq!(b.allocate_lowest(), None);
        // A set hint over a leaf with free ids: never a wrong id.
        store(&t.summary[0], !0, Ordering::Relaxed);
        assert!(b.clear(3));
        assert_eq!(b.allocate_lowest(), Some(3));
    }

    #[test]
    fn a_full_hint_over_a_leaf_with_free_ids_hides_nothing_and_is_repaired() {
        // One summary word, then several, with the garbage in the first and the last.
        for capacity in [70, 128, 5000, 4096 * 3 + 1] {
            let t = Owned::new(capacity);
            let b = t.bitmap();
            for word in &t.summary {
                store(word, !0, Ordering::Relaxed);
            }
            for want in 0..capacity {
                assert_eq!(b.allocate_lowest(), Some(want), "capacity {capacity}");
            }
            assert_eq!(b.allocate_lowest(), None);
            // Every leaf is full now, so the hint is right again.
            for (w, word) in t.summary.iter().enumerate() {
                assert_eq!(
                    load(word, Ordering::Relaxed) & b.summary_mask(w),
                    b.summary_mask(w)
                );
            }
            // A leaf freed behind the hint's back, searched from within it and from below.
            let last = capacity - 1;
            let leaf = last as usize / 64;
            store(&t.leaves[leaf], 0, Ordering::Relaxed);
            assert_eq!(b.lowest_free(last), Some(last));
            assert_eq!(b.lowest_free(0), Some(leaf as u32 * 64));
            // The repair cleared the hint over that leaf and kept the true ones.
            assert_eq!(
                load(&t.summary[leaf / 64], Ordering::Relaxed) & 1 << (leaf % 64),
                0
            );
            if leaf > 0 {
                assert_ne!(load(&t.summary[0], Ordering::Relaxed) & 1, 0);
            }
            for id in leaf as u32 * 64..capacity {
                assert!(b.set(id));
            }
            assert_eq!(b.lowest_free(0), None);
        }
    }
}
