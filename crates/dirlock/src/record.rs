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

/// The record format version this code writes. It reads this one and version 1.
///
/// Version 2 adds the `ofd_lock` line: a writer that says `ofd_lock 1` holds an OFD lock on the
/// record's file for as long as it holds a level with it, so that a reader can tell a holder
/// that has called `exec` (same pid, same start time) from a live one. Version-1 code reports
/// a version-2 record as [`Error::Incompatible`] rather than misjudge it.
pub const FORMAT_VERSION: u32 = 2;

/// The oldest record format version this code reads (with `ofd_lock` taken as false).
pub const OLDEST_FORMAT_VERSION: u32 = 1;

/// Records larger than this are refused unread: a real record is about 200 bytes.
pub const MAX_RECORD_LEN: usize = 4096;

/// Longest host name or boot id accepted in a record (Linux host names are at most 64 bytes).
const MAX_FIELD_LEN: usize = 255;

/// The keys of a version-2 record, in the order they must appear; a version-1 record has all
/// but the last.
const KEYS: [&str; 9] = [
    "boot_id",
    "pid_ns",
    "pid",
    "start_time",
    "host",
    "uid",
    "time_ns",
    "nonce",
    "ofd_lock",
];

/// How many of [`KEYS`] a version-1 record has.
const KEYS_V1: usize = 8;

/// One holder's claim on one level of a directory lock, as stored in `lock<N>`.
///
/// The fields identify the holding process well enough to decide with certainty whether it is
/// dead: the host and boot it ran in, its pid namespace, its pid and the start time of that pid
/// (which tells a reused pid apart), and whether the file is locked while its writer holds it
/// (which tells a holder that has called `exec` apart).
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
    /// Whether the writer holds an OFD write lock (`F_OFD_SETLK`) on the record's file, through
    /// a close-on-exec descriptor, for as long as it holds a level with it. Readers then take
    /// an unlocked file for a holder that has exited or called `exec`. Always false in
    /// version-1 records; false too where the file system refused the lock.
    pub ofd_lock: bool,
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
            "{MAGIC} {FORMAT_VERSION}\nboot_id {}\npid_ns {}\npid {}\nstart_time {}\nhost {}\nuid {}\ntime_ns {}\nnonce {:016x}\nofd_lock {}\n",
            self.boot_id,
            self.pid_ns,
            self.pid,
            self.start_time,
            self.host,
            self.uid,
            self.time_ns,
            self.nonce,
            u8::from(self.ofd_lock),
        );
        text.into_bytes()
    }

    /// Parses a stored record; `what` names it in errors (`"lock record /x/lock0"`).
    ///
    /// # Errors
    ///
    /// [`Error::Incompatible`] for a record of a format version other than 1 and 2;
    /// [`Error::Corrupt`] for anything else that is not exactly such a record: a foreign
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
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(Error::incompatible(
                format!("{what} format version"),
                format!("{OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}"),
                version,
            ));
        }
        if !text.ends_with('\n') {
            return Err(corrupt("truncated (no final newline)"));
        }
        let keys = if version == 1 { KEYS_V1 } else { KEYS.len() };
        let mut values = [""; KEYS.len()];
        for (slot, key) in values.iter_mut().zip(KEYS).take(keys) {
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
        let [
            boot_id,
            pid_ns,
            pid,
            start_time,
            host,
            uid,
            time_ns,
            nonce,
            ofd_lock,
        ] = values;
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
        let ofd_lock = match (version, ofd_lock) {
            (1, _) | (_, "0") => false,
            (_, "1") => true,
            (_, other) => return Err(corrupt(&format!("ofd_lock {other:?} is not 0 or 1"))),
        };
        Ok(Record {
            boot_id: checked_word(boot_id, "boot_id").map_err(|why| corrupt(&why))?,
            pid_ns: number("pid_ns", pid_ns, what)?,
            pid,
            start_time: number("start_time", start_time, what)?,
            host: checked_word(host, "host").map_err(|why| corrupt(&why))?,
            uid: number("uid", uid, what)?,
            time_ns: number("time_ns", time_ns, what)?,
            nonce,
            ofd_lock,
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
            ofd_lock: true,
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
        for version in ["0", "3", "99"] {
            let other = text.replacen("dirlock-record 2", &format!("dirlock-record {version}"), 1);
            assert!(matches!(
                Record::parse(other.as_bytes(), "r"),
                Err(Error::Incompatible { .. })
            ));
        }
    }

    #[test]
    fn version_1_is_read_without_a_lock_promise() {
        let text = String::from_utf8(sample().to_bytes()).unwrap();
        let v1 = text
            .replacen("dirlock-record 2", "dirlock-record 1", 1)
            .replace("ofd_lock 1\n", "");
        let record = Record::parse(v1.as_bytes(), "r").unwrap();
        assert_eq!(
            record,
            Record {
                ofd_lock: false,
                ..sample()
            }
        );
        // A version-1 record with the version-2 line, or a version-2 one without it: damage.
        let v1_with_line = text.replacen("dirlock-record 2", "dirlock-record 1", 1);
        let v2_without_line = text.replace("ofd_lock 1\n", "");
        for case in [v1_with_line, v2_without_line] {
            let err = Record::parse(case.as_bytes(), "r").unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{case:?}: {err:?}");
        }
        let unlocked = Record {
            ofd_lock: false,
            ..sample()
        };
        assert_eq!(Record::parse(&unlocked.to_bytes(), "r").unwrap(), unlocked);
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
            text.replace("ofd_lock 1", "ofd_lock 2"),
            text.replace("ofd_lock 1", "ofd_lock yes"),
            text.replace("ofd_lock 1", "ofd_lock"),
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
