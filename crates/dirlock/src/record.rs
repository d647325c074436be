//! The lock record: who holds a level, in a small versioned text format (docs/lock-record.md).
//!
//! A record is written in full to an unnamed (or private) file before it is published under a
//! level's name, so a reader never sees a partial one; parsing is still strict, because a record
//! may come from another version of this code, an operator's editor or a damaged disk.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lock_api::{Error, Result};

/// The first word of every record; a file without it is not a lock record.
pub const MAGIC: &str = "dirlock-record";

/// The record format version this code writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Records larger than this are refused unread: a real record is about 200 bytes.
pub const MAX_RECORD_LEN: usize = 4096;

/// Longest host name or boot id accepted in a record (Linux host names are at most 64 bytes).
const MAX_FIELD_LEN: usize = 255;

/// The keys of a version-1 record, in the order they must appear.
const KEYS: [&str; 8] = [
    "boot_id",
    "pid_ns",
    "pid",
    "start_time",
    "host",
    "uid",
    "time_ns",
    "nonce",
];

/// One holder's claim on one level of a directory lock, as stored in `lock<N>`.
///
/// The fields identify the holding process well enough to decide with certainty whether it is
/// dead: the host and boot it ran in, its pid namespace, its pid and the start time of that pid
/// (which tells a reused pid apart).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Record {
    /// `/proc/sys/kernel/random/boot_id` of the holder's boot.
    pub boot_id: String,
    /// Inode number of the holder's pid namespace (`stat /proc/self/ns/pid`).
    pub pid_ns: u64,
    /// The holder's pid, in its pid namespace.
    pub pid: u32,
    /// The holder's start time in clock ticks after boot (field 22 of `/proc/<pid>/stat`).
    pub start_time: u64,
    /// The holder's host name (`uname -n`).
    pub host: String,
    /// The holder's real user id.
    pub uid: u32,
    /// When the record was written, in nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// A random number that makes every record unique, even two written in the same nanosecond.
    pub nonce: u64,
}

impl Record {
    /// When the record was written.
    pub fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.time_ns)
    }

    /// The record as stored on disk.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut text = String::with_capacity(256);
        // Writing to a String cannot fail.
        let _ = write!(
            text,
            "{MAGIC} {FORMAT_VERSION}\nboot_id {}\npid_ns {}\npid {}\nstart_time {}\nhost {}\nuid {}\ntime_ns {}\nnonce {:016x}\n",
            self.boot_id,
            self.pid_ns,
            self.pid,
            self.start_time,
            self.host,
            self.uid,
            self.time_ns,
            self.nonce,
        );
        text.into_bytes()
    }

    /// Parses a stored record; `what` names it in errors (`"lock record /x/lock0"`).
    ///
    /// # Errors
    ///
    /// [`Error::Incompatible`] for a record of another format version;
    /// [`Error::Corrupt`] for anything else that is not exactly a version-1 record: a foreign
    /// file, garbage, a truncated record (every record ends with a newline), a record longer
    /// than [`MAX_RECORD_LEN`], unknown, missing, repeated or out-of-range fields.
    pub fn parse(bytes: &[u8], what: &str) -> Result<Record> {
        let corrupt = |why: &str| Error::corrupt(format!("{what}: {why}"));
        if bytes.len() > MAX_RECORD_LEN {
            return Err(corrupt(&format!(
                "{} bytes, more than the {MAX_RECORD_LEN} a record may have",
                bytes.len()
            )));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| corrupt("not UTF-8 text"))?;
        let mut lines = text.split('\n');
        let header = lines.next().unwrap_or_default();
        let version = header
            .strip_prefix(MAGIC)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or_else(|| corrupt("not a dirlock record (bad magic)"))?;
        let version: u32 = parse_number(version).ok_or_else(|| corrupt("unreadable version"))?;
        if version != FORMAT_VERSION {
            return Err(Error::incompatible(
                format!("{what} format version"),
                FORMAT_VERSION,
                version,
            ));
        }
        if !text.ends_with('\n') {
            return Err(corrupt("truncated (no final newline)"));
        }
        let mut values = [""; KEYS.len()];
        for (slot, key) in values.iter_mut().zip(KEYS) {
            let line = lines
                .next()
                .filter(|line| !line.is_empty())
                .ok_or_else(|| corrupt(&format!("truncated (no {key})")))?;
            let (found, value) = line
                .split_once(' ')
                .ok_or_else(|| corrupt(&format!("line {line:?} is not `key value`")))?;
            if found != key {
                return Err(corrupt(&format!("expected {key}, found {found:?}")));
            }
            *slot = value;
        }
        // What is left is the empty string after the final newline.
        if lines.next() != Some("") || lines.next().is_some() {
            return Err(corrupt("trailing data after the last field"));
        }
        let [boot_id, pid_ns, pid, start_time, host, uid, time_ns, nonce] = values;
        fn number<T: std::str::FromStr>(key: &str, value: &str, what: &str) -> Result<T> {
            parse_number(value)
                .ok_or_else(|| Error::corrupt(format!("{what}: {key} {value:?} is not a number")))
        }
        let pid: u32 = number("pid", pid, what)?;
        if pid == 0 || pid > i32::MAX as u32 {
            return Err(corrupt(&format!("pid {pid} is out of range")));
        }
        let nonce = u64::from_str_radix(nonce, 16)
            .ok()
            .filter(|_| nonce.len() == 16)
            .ok_or_else(|| corrupt(&format!("nonce {nonce:?} is not 16 hex digits")))?;
        Ok(Record {
            boot_id: checked_word(boot_id, "boot_id").map_err(|why| corrupt(&why))?,
            pid_ns: number("pid_ns", pid_ns, what)?,
            pid,
            start_time: number("start_time", start_time, what)?,
            host: checked_word(host, "host").map_err(|why| corrupt(&why))?,
            uid: number("uid", uid, what)?,
            time_ns: number("time_ns", time_ns, what)?,
            nonce,
        })
    }
}

/// A decimal number without sign, spaces or leading `+`.
fn parse_number<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A non-empty field of printable characters without spaces, of bounded length.
pub(crate) fn checked_word(text: &str, key: &str) -> std::result::Result<String, String> {
    if text.is_empty() || text.len() > MAX_FIELD_LEN {
        return Err(format!("{key} has length {}", text.len()));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{key} {text:?} contains spaces or control characters"
        ));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            boot_id: "0b7b3b8e-9b43-4d0e-8d53-1f6d2a0c4e11".into(),
            pid_ns: 4026531836,
            pid: 4242,
            start_time: 123456,
            host: "build-1".into(),
            uid: 1000,
            time_ns: 1_700_000_000_123_456_789,
            nonce: 0x0123_4567_89ab_cdef,
        }
    }

    #[test]
    fn round_trips() {
        let record = sample();
        let bytes = record.to_bytes();
        assert_eq!(Record::parse(&bytes, "r").unwrap(), record);
        assert!(bytes.len() < 300);
    }

    #[test]
    fn every_truncation_is_corrupt() {
        let bytes = sample().to_bytes();
        for len in 0..bytes.len() {
            let err = Record::parse(&bytes[..len], "r").unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "len {len}: {err:?}");
        }
    }

    #[test]
    fn unknown_version_is_incompatible() {
        let text = String::from_utf8(sample().to_bytes()).unwrap();
        let future = text.replacen("dirlock-record 1", "dirlock-record 2", 1);
        assert!(matches!(
            Record::parse(future.as_bytes(), "r"),
            Err(Error::Incompatible { .. })
        ));
    }

    #[test]
    fn garbage_is_corrupt() {
        let text = String::from_utf8(sample().to_bytes()).unwrap();
        let cases = [
            text.replace("pid 4242", "pid -1"),
            text.replace("pid 4242", "pid 0"),
            text.replace("pid 4242", "pid 99999999999"),
            text.replace("uid 1000", "uid +1000"),
            text.replace("host build-1", "host build 1"),
            text.replace("host build-1", "host "),
            text.replace("nonce 0123456789abcdef", "nonce 123"),
            text.replace("boot_id", "bootid"),
            format!("{text}extra 1\n"),
            text.replace("\npid_ns", "\n\npid_ns"),
            "hello world\n".to_owned(),
            String::new(),
        ];
        for case in cases {
            let err = Record::parse(case.as_bytes(), "r").unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{case:?}: {err:?}");
        }
        assert!(matches!(
            Record::parse(&[0xff, 0xfe], "r"),
            Err(Error::Corrupt { .. })
        ));
        let huge = vec![b'a'; MAX_RECORD_LEN + 1];
        assert!(matches!(
            Record::parse(&huge, "r"),
            Err(Error::Corrupt { .. })
        ));
    }
}
