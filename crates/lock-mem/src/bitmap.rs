//! A hierarchical free-set bitmap: lowest free index first in O(log₆₄ n).

/// A set of free indices `0..len`, kept as levels of 64-bit words.
///
/// Level 0 holds one bit per index (set = free). Each level above holds one bit per word of the
/// level below, set when that word has any bit set. The top level is a single word, so finding
/// the lowest free index reads one word per level: six levels cover every `u32`.
#[derive(Debug)]
pub(crate) struct FreeSet {
    levels: Vec<Vec<u64>>,
    free: u32,
}

const BITS: usize = 64;

impl FreeSet {
    /// A set of `len` indices, all free.
    pub(crate) fn full(len: u32) -> FreeSet {
        let mut set = FreeSet {
            levels: Vec::new(),
            free: 0,
        };
        let mut count = len as usize;
        loop {
            let words = count.div_ceil(BITS).max(1);
            set.levels.push(vec![0; words]);
            if words == 1 {
                break;
            }
            count = words;
        }
        set.fill(len);
        set
    }

    /// Marks every index `0..len` free again.
    pub(crate) fn fill(&mut self, len: u32) {
        let mut count = len as usize;
        for level in &mut self.levels {
            for (w, word) in level.iter_mut().enumerate() {
                let start = w * BITS;
                *word = if count >= start + BITS {
                    u64::MAX
                } else if count > start {
                    (1u64 << (count - start)) - 1
                } else {
                    0
                };
            }
            count = count.div_ceil(BITS);
        }
        self.free = len;
    }

    /// How many indices are free.
    pub(crate) fn free(&self) -> u32 {
        self.free
    }

    /// Whether `index` is free.
    #[cfg(test)]
    pub(crate) fn contains(&self, index: u32) -> bool {
        let i = index as usize;
        self.levels[0]
            .get(i / BITS)
            .is_some_and(|w| w & (1 << (i % BITS)) != 0)
    }

    /// Removes and returns the lowest free index.
    pub(crate) fn take_first(&mut self) -> Option<u32> {
        let top = self.levels.len() - 1;
        if self.levels[top][0] == 0 {
            return None;
        }
        let mut index = 0usize;
        for level in self.levels.iter().rev() {
            let word = level[index];
            index = index * BITS + word.trailing_zeros() as usize;
        }
        let index = u32::try_from(index).ok()?;
        self.take(index);
        Some(index)
    }

    /// Marks `index` used; returns whether it was free.
    pub(crate) fn take(&mut self, index: u32) -> bool {
        let mut i = index as usize;
        let mut was_free = false;
        for (depth, level) in self.levels.iter_mut().enumerate() {
            let Some(word) = level.get_mut(i / BITS) else {
                return false;
            };
            let bit = 1u64 << (i % BITS);
            if depth == 0 {
                was_free = *word & bit != 0;
                if !was_free {
                    return false;
                }
            }
            *word &= !bit;
            if *word != 0 {
                break;
            }
            i /= BITS;
        }
        self.free -= 1;
        was_free
    }

    /// Marks `index` free; returns whether it was used.
    pub(crate) fn put(&mut self, index: u32) -> bool {
        let mut i = index as usize;
        for (depth, level) in self.levels.iter_mut().enumerate() {
            let Some(word) = level.get_mut(i / BITS) else {
                return false;
            };
            let bit = 1u64 << (i % BITS);
            if depth == 0 && *word & bit != 0 {
                return false;
            }
            let was_empty = *word == 0;
            *word |= bit;
            if !was_empty {
                break;
            }
            i /= BITS;
        }
        self.free += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::FreeSet;

    #[test]
    fn takes_lowest_first_across_levels() {
        for len in [1u32, 63, 64, 65, 4096, 4097, 300_000] {
            let mut set = FreeSet::full(len);
            assert_eq!(set.free(), len);
            for expect in 0..len.min(200) {
                assert_eq!(set.take_first(), Some(expect), "len {len}");
            }
            if len > 200 {
                assert!(set.take(len - 1));
                assert!(!set.take(len - 1));
                assert!(set.put(7));
                assert!(!set.put(7));
                assert_eq!(set.take_first(), Some(7));
                assert_eq!(set.take_first(), Some(200));
            }
        }
    }

    #[test]
    fn drains_then_refills() {
        let len = 5000;
        let mut set = FreeSet::full(len);
        for i in 0..len {
            assert_eq!(set.take_first(), Some(i));
        }
        assert_eq!(set.take_first(), None);
        assert_eq!(set.free(), 0);
        assert!(set.put(4095));
        assert!(set.put(64));
        assert_eq!(set.take_first(), Some(64));
        assert_eq!(set.take_first(), Some(4095));
        assert_eq!(set.take_first(), None);
        set.fill(len);
        assert_eq!(set.free(), len);
        assert!(set.contains(len - 1));
        assert!(!set.contains(len));
        assert!(!set.take(len));
    }
}
