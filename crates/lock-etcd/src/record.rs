//! The owner record stored as the value of every lock key, and the data carried with it.
//!
//! Format (version 1): a text header of `field=value` lines, a blank line, then the lock data as
//! raw bytes.
//!
//! ```text
//! lockyard-etcd-owner 1
//! pid=4242
//! host=build-7
//! since=1767225600123
//!
//! <data bytes>
//! ```
//!
//! `since` is milliseconds since the Unix epoch. Fields this version does not know are ignored,
//! so a later version can add some; a different first line is refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lock_api::{Error, Result};

const MAGIC: &str = "lockyard-etcd-owner 1";

/// What the holder of a lock says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) pid: u32,
    pub(crate) host: String,
    pub(crate) since: SystemTime,
    pub(crate) data: Vec<u8>,
}

impl Record {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let millis = self
            .since
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis();
        // A host name never holds a newline; strip control characters anyway so the header
        // stays parseable whatever uname says.
        let host: String = self.host.chars().filter(|c| !c.is_control()).collect();
        let mut out =
            format!("{MAGIC}\npid={}\nhost={host}\nsince={millis}\n\n", self.pid).into_bytes();
        out.extend_from_slice(&self.data);
        out
    }

    /// Parses a record read from `key`.
    pub(crate) fn decode(key: &str, value: &[u8]) -> Result<Record> {
        let corrupt = |why: &str| Error::corrupt(format!("owner record of etcd key {key}: {why}"));
        let split = value
            .windows(2)
            .position(|w| w == b"\n\n")
            .ok_or_else(|| corrupt("no end of header"))?;
        let header =
            std::str::from_utf8(&value[..split]).map_err(|_| corrupt("header is not UTF-8"))?;
        let data = value[split + 2..].to_vec();
        let mut lines = header.lines();
        let first = lines.next().unwrap_or("");
        if first != MAGIC {
            if first.starts_with("lockyard-etcd-owner ") {
                return Err(Error::incompatible(
                    format!("owner record version of etcd key {key}"),
                    MAGIC,
                    first,
                ));
            }
            return Err(corrupt("not a lockyard owner record"));
        }
        let (mut pid, mut host, mut since) = (None, None, None);
        for line in lines {
            let (field, value) = line
                .split_once('=')
                .ok_or_else(|| corrupt("header line without '='"))?;
            match field {
                "pid" => pid = Some(value.parse::<u32>().map_err(|_| corrupt("bad pid"))?),
                "host" => host = Some(value.to_owned()),
                "since" => {
                    let ms = value.parse::<u64>().map_err(|_| corrupt("bad since"))?;
                    since = UNIX_EPOCH.checked_add(Duration::from_millis(ms));
                    if since.is_none() {
                        return Err(corrupt("since out of range"));
                    }
                }
                _ => {}
            }
        }
        Ok(Record {
            pid: pid.ok_or_else(|| corrupt("no pid"))?,
            host: host.ok_or_else(|| corrupt("no host"))?,
            since: since.ok_or_else(|| corrupt("no since"))?,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(data: &[u8]) -> Record {
        Record {
            pid: 42,
            host: "h1".into(),
            since: UNIX_EPOCH + Duration::from_millis(1_767_225_600_123),
            data: data.to_vec(),
        }
    }

    #[test]
    fn round_trips_with_binary_data() {
        for data in [&b""[..], b"hello", b"\n\n\0\xff"] {
            let r = sample(data);
            assert_eq!(Record::decode("k", &r.encode()).ok(), Some(r));
        }
    }

    #[test]
    fn garbage_is_corrupt_and_other_versions_incompatible() {
        for bad in [
            &b""[..],
            b"x",
            b"lockyard-etcd-owner 1\npid=x\n\n",
            b"\xff\xfe\n\n",
        ] {
            assert!(
                matches!(Record::decode("k", bad), Err(Error::Corrupt { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Record::decode("k", b"lockyard-etcd-owner 2\n\n"),
            Err(Error::Incompatible { .. })
        ));
        let missing = b"lockyard-etcd-owner 1\npid=1\n\n";
        assert!(Record::decode("k", missing).is_err());
    }
}
