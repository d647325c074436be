//! The on-disk format: the marker file's text and the table file's layout and header.
//!
//! A store is a directory holding (format version 3, described in the README):
//!
//! - `lockyard-store`, a short text marker naming the format, its version, the capacity and
//!   whether owner-death records are kept. A directory is a store iff this file says so.
//! - `table`, a fixed-size file of little-endian 64-bit words: a header, the two-level
//!   allocation bitmap and one owner record per lock. Every process maps it shared.
//! - `locks/0` .. `locks/<capacity-1>`, empty regular files that are only ever `flock(2)`ed.
//! - `deadlock`, an empty regular file whose `flock(2)` serialises deadlock checks.
//! - `owners/`, a directory where each manager that has waited keeps its waiter file
//!   (`owner.rs`).
//! - `clients`, where each open manager keeps an entry that says who it is (`clients.rs`).
//!
//! Nothing here does I/O: parsing and validation are pure so they can be tested on hostile input.

use std::fmt::Write as _;
use std::path::Path;

use lock_api::{Error, Result};

/// The name of the marker file that makes a directory a lock-file store.
pub const MARKER_FILE: &str = "lockyard-store";
/// The name of the table file (header, allocation bitmap, owner records).
pub(crate) const TABLE_FILE: &str = "table";
/// The name of the directory holding one lock file per id.
pub(crate) const LOCKS_DIR: &str = "locks";
/// The name of the file whose `flock(2)` serialises deadlock checks across processes.
pub(crate) const DETECT_FILE: &str = "deadlock";
/// The name of the directory holding one waiter file per manager that has waited.
pub(crate) const OWNERS_DIR: &str = "owners";
/// The name of the file where every open manager keeps an entry (`clients.rs`).
pub(crate) const CLIENTS_FILE: &str = "clients";

/// The first line of every marker file, whatever its version.
pub(crate) const MARKER_MAGIC: &str = "lockyard lock-file store";
/// The format version this code reads and writes (3: owner records gained the holder's pid
/// namespace; a store of another version is `Incompatible`).
pub const FORMAT_VERSION: u32 = 3;
/// The largest capacity a store may have: one lock file per id, so a bound keeps `create`
/// (which makes every lock file) and `held` (which reads every record) reasonable.
pub const MAX_CAPACITY: u32 = 1 << 20;
/// Marker files are a few dozen bytes; anything much larger is not ours.
pub(crate) const MARKER_MAX_LEN: u64 = 4096;

/// "LKYDFTBL" read as a little-endian word: the first word of every table file.
const TABLE_MAGIC: u64 = u64::from_le_bytes(*b"LKYDFTBL");
/// Header words before the summary bitmap.
pub(crate) const HEADER_WORDS: usize = 8;
/// Words per owner record: the held word (the owner), the acquisition time with the pid, and the
/// pid's namespace.
pub(crate) const RECORD_WORDS: usize = 3;
/// The header word that counts owners: every open takes the next number (never 0).
pub(crate) const NEXT_OWNER_WORD: usize = 7;
/// Header flag: owner records are kept (the store reports `OwnerDied`).
const FLAG_OWNER_DEATH: u64 = 1;

/// What a marker file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Marker {
    /// The number of locks.
    pub(crate) capacity: u32,
    /// Whether holders write owner records, so a dead holder's lock is reported `OwnerDied`.
    pub(crate) owner_death: bool,
}

impl Marker {
    /// The marker file's text for this store.
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = write!(
            text,
            "{MARKER_MAGIC}\nformat {FORMAT_VERSION}\ncapacity {}\nowner-death {}\n",
            self.capacity,
            if self.owner_death { "on" } else { "off" }
        );
        text
    }

    /// Whether `text` is a marker of ours, of any version: its first line is exactly
    /// [`MARKER_MAGIC`], ended by a line feed.
    ///
    /// This is the one test of "this directory is a store" that open and remove share. Lines end
    /// with LF alone, as `render` writes them: a carriage return is part of the line, so a marker
    /// rewritten with CRLF line ends is not recognised (lockyard never wrote it).
    pub(crate) fn is_ours(text: &[u8]) -> bool {
        text.strip_prefix(MARKER_MAGIC.as_bytes())
            .is_some_and(|rest| rest.first() == Some(&b'\n'))
    }

    /// The error for a marker at `path` that [`is_ours`](Marker::is_ours) refused: `Incompatible`,
    /// quoting its first line.
    pub(crate) fn foreign(text: &[u8], path: &Path) -> Error {
        let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
        let found = match std::str::from_utf8(first) {
            Ok(line) => format!("{:?}", truncate(line, 60)),
            Err(_) => "binary content".to_string(),
        };
        Error::incompatible(
            format!("marker {}", path.display()),
            format!("first line {MARKER_MAGIC:?} ended by a line feed"),
            found,
        )
    }

    /// Parses a marker file's text; `path` is the marker file, named in errors.
    ///
    /// The magic line is checked first ([`is_ours`](Marker::is_ours); another file:
    /// `Incompatible`), then the version (another version: `Incompatible`, whatever follows),
    /// then the rest (`Corrupt` when unparsable). Lines end with LF alone.
    pub(crate) fn parse(text: &[u8], path: &Path) -> Result<Marker> {
        let where_ = path.display();
        if !Marker::is_ours(text) {
            return Err(Marker::foreign(text, path));
        }
        let text = std::str::from_utf8(text).map_err(|_| {
            Error::corrupt(format!(
                "marker {where_}: binary content after the first line"
            ))
        })?;
        // Not `lines()`, which would also strip a carriage return: see `is_ours`.
        let mut lines = text.split('\n').skip(1);
        let version = field(lines.next(), "format", path)?;
        let version: u32 = version.parse().map_err(|_| {
            Error::corrupt(format!(
                "marker {where_}: format version {version:?} is not a number"
            ))
        })?;
        if version != FORMAT_VERSION {
            return Err(Error::incompatible(
                format!("lock-file store format version in {where_}"),
                FORMAT_VERSION,
                version,
            ));
        }
        let capacity = field(lines.next(), "capacity", path)?;
        let capacity: u32 = capacity.parse().map_err(|_| {
            Error::corrupt(format!(
                "marker {where_}: capacity {capacity:?} is not a number"
            ))
        })?;
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(Error::corrupt(format!(
                "marker {where_}: capacity {capacity} is outside 1..={MAX_CAPACITY}"
            )));
        }
        let owner_death = match field(lines.next(), "owner-death", path)? {
            "on" => true,
            "off" => false,
            other => {
                return Err(Error::corrupt(format!(
                    "marker {where_}: owner-death {:?} is neither on nor off",
                    truncate(other, 60)
                )));
            }
        };
        if let Some(extra) = lines.find(|l| !l.is_empty()) {
            return Err(Error::corrupt(format!(
                "marker {where_}: unexpected line {:?}",
                truncate(extra, 60)
            )));
        }
        Ok(Marker {
            capacity,
            owner_death,
        })
    }
}

/// The value of a `key value` line, or `Corrupt` naming the missing key.
fn field<'a>(line: Option<&'a str>, key: &str, path: &Path) -> Result<&'a str> {
    line.and_then(|l| l.strip_prefix(key))
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or_else(|| {
            Error::corrupt(format!(
                "marker {}: expected a {key:?} line, found {:?}",
                path.display(),
                truncate(line.unwrap_or("end of file"), 60)
            ))
        })
}

/// At most `max` bytes of `s`, cut at a character boundary, for error messages.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Where everything lives in the table file, in 64-bit words, computed from the capacity alone.
///
/// ```text
/// word 0                  header (HEADER_WORDS words)
/// word summary_at         summary bitmap: bit l set = leaf word l is full (a hint, see bitmap.rs)
/// word leaves_at          leaf bitmap: bit i set = id i is allocated
/// word records_at         owner records, RECORD_WORDS words per id
/// word total_words        end of file
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) capacity: u32,
    pub(crate) summary_at: usize,
    pub(crate) summary_words: usize,
    pub(crate) leaves_at: usize,
    pub(crate) leaf_words: usize,
    pub(crate) records_at: usize,
    pub(crate) total_words: usize,
}

impl Layout {
    /// The layout of a table of `capacity` locks (`1..=MAX_CAPACITY`, checked by the caller).
    pub(crate) fn new(capacity: u32) -> Layout {
        let ids = capacity as usize;
        let leaf_words = ids.div_ceil(64);
        let summary_words = leaf_words.div_ceil(64);
        let summary_at = HEADER_WORDS;
        let leaves_at = summary_at + summary_words;
        let records_at = leaves_at + leaf_words;
        let total_words = records_at + RECORD_WORDS * ids;
        Layout {
            capacity,
            summary_at,
            summary_words,
            leaves_at,
            leaf_words,
            records_at,
            total_words,
        }
    }

    /// The table file's size in bytes.
    pub(crate) fn len_bytes(&self) -> u64 {
        self.total_words as u64 * 8
    }

    /// The header words of a fresh table with this layout (the owner counter at 0).
    pub(crate) fn header(&self, owner_death: bool) -> [u64; HEADER_WORDS] {
        let flags = if owner_death { FLAG_OWNER_DEATH } else { 0 };
        [
            TABLE_MAGIC,
            u64::from(FORMAT_VERSION) | flags << 32,
            u64::from(self.capacity),
            self.summary_at as u64,
            self.leaves_at as u64,
            self.records_at as u64,
            self.total_words as u64,
            0,
        ]
    }

    /// Checks a table header read from `path` against this layout and the marker.
    ///
    /// Every field must be exactly what this code would have written: the offsets come from the
    /// capacity, so a header that disagrees is damaged, never trusted. The owner counter is the
    /// one word that changes, and any value of it is valid.
    pub(crate) fn check_header(
        &self,
        found: &[u64; HEADER_WORDS],
        owner_death: bool,
        path: &Path,
    ) -> Result<()> {
        let expected = self.header(owner_death);
        if found[0] != TABLE_MAGIC {
            return Err(Error::corrupt(format!(
                "table {}: bad magic {:#018x}",
                path.display(),
                found[0]
            )));
        }
        const NAMES: [&str; HEADER_WORDS] = [
            "magic",
            "version and flags",
            "capacity",
            "summary offset",
            "leaf offset",
            "record offset",
            "length",
            "owner counter",
        ];
        for (i, ((name, want), got)) in NAMES.iter().zip(expected).zip(found).enumerate() {
            if i != NEXT_OWNER_WORD && want != *got {
                return Err(Error::corrupt(format!(
                    "table {}: {name} is {got}, expected {want} for a store of {} locks",
                    path.display(),
                    self.capacity
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/s/lockyard-store")
    }

    #[test]
    fn marker_round_trips() {
        for (capacity, owner_death) in [(1, true), (4096, false), (MAX_CAPACITY, true)] {
            let m = Marker {
                capacity,
                owner_death,
            };
            assert_eq!(Marker::parse(m.render().as_bytes(), p()).ok(), Some(m));
        }
    }

    #[test]
    fn foreign_marker_is_incompatible() {
        for text in [
            &b""[..],
            b"hello\n",
            b"\xff\xfe",
            b"lockyard shm\nformat 1\n",
        ] {
            assert!(
                matches!(Marker::parse(text, p()), Err(Error::Incompatible { .. })),
                "{text:?}"
            );
        }
    }

    #[test]
    fn other_version_is_incompatible_whatever_follows() {
        let text = format!("{MARKER_MAGIC}\nformat 4\nsomething new\n");
        match Marker::parse(text.as_bytes(), p()) {
            Err(Error::Incompatible {
                expected, found, ..
            }) => {
                assert_eq!((expected.as_str(), found.as_str()), ("3", "4"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lines_end_with_lf_alone() {
        let crlf = format!("{MARKER_MAGIC}\r\nformat 3\r\ncapacity 8\r\nowner-death on\r\n");
        assert!(!Marker::is_ours(crlf.as_bytes()));
        assert!(matches!(
            Marker::parse(crlf.as_bytes(), p()),
            Err(Error::Incompatible { .. })
        ));
        let later = format!("{MARKER_MAGIC}\nformat 3\r\ncapacity 8\nowner-death on\n");
        assert!(Marker::is_ours(later.as_bytes()));
        assert!(matches!(
            Marker::parse(later.as_bytes(), p()),
            Err(Error::Corrupt { .. })
        ));
        for text in [MARKER_MAGIC.to_string(), format!("{MARKER_MAGIC} \n")] {
            assert!(!Marker::is_ours(text.as_bytes()), "{text:?}");
        }
        let good = Marker {
            capacity: 8,
            owner_death: false,
        }
        .render();
        assert!(Marker::is_ours(good.as_bytes()));
        let binary_after = [format!("{MARKER_MAGIC}\n").as_bytes(), b"\xff\n"].concat();
        assert!(matches!(
            Marker::parse(&binary_after, p()),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn garbage_fields_are_corrupt() {
        for body in [
            "format x\ncapacity 1\nowner-death on\n",
            "format 3\ncapacity 0\nowner-death on\n",
            "format 3\ncapacity 99999999999\nowner-death on\n",
            "format 3\ncapacity 2097152\nowner-death on\n",
            "format 3\ncapacity 8\nowner-death maybe\n",
            "format 3\ncapacity 8\n",
            "format 3\ncapacity 8\nowner-death on\nextra\n",
            "format 3\n",
        ] {
            let text = format!("{MARKER_MAGIC}\n{body}");
            assert!(
                matches!(
                    Marker::parse(text.as_bytes(), p()),
                    Err(Error::Corrupt { .. })
                ),
                "{body:?}"
            );
        }
    }

    #[test]
    fn layout_sizes_add_up() {
        let l = Layout::new(1);
        assert_eq!((l.summary_words, l.leaf_words), (1, 1));
        assert_eq!(l.total_words, HEADER_WORDS + 2 + RECORD_WORDS);
        let l = Layout::new(1 << 16);
        assert_eq!((l.summary_words, l.leaf_words), (16, 1024));
        let l = Layout::new(4097);
        assert_eq!((l.summary_words, l.leaf_words), (2, 65));
        assert_eq!(l.len_bytes(), l.total_words as u64 * 8);
    }

    #[test]
    fn header_check_rejects_every_changed_word() {
        let l = Layout::new(100);
        let good = l.header(true);
        assert!(l.check_header(&good, true, p()).is_ok());
        assert!(l.check_header(&good, false, p()).is_err());
        for i in 0..HEADER_WORDS {
            let mut bad = good;
            bad[i] ^= 1 << 40;
            let checked = l.check_header(&bad, true, p());
            if i == NEXT_OWNER_WORD {
                assert!(checked.is_ok(), "the owner counter may hold anything");
            } else {
                assert!(matches!(checked, Err(Error::Corrupt { .. })), "word {i}");
            }
        }
    }
}
