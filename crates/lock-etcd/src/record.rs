//! The owner record stored as the value of every lock key, the held marker that carries a copy
//! of it, and the data carried with it.
//!
//! Owner record (version 1): a text header of `field=value` lines, a blank line, then the lock
//! data as raw bytes.
//!
//! ```text
//! lockyard-etcd-owner 1
//! pid=4242
//! pidns=4026531836
//! host=build-7
//! owner=4242@build-7/1f3a9c0d5e7b2a64
//! since=1767225600123
//!
//! <data bytes>
//! ```
//!
//! Held marker (version 1): the same header under its own first line, naming the key of the
//! acquisition that claimed the lock and, when it claimed after waiting, that key's
//! CreateRevision (`rev=`; without it the named key was created by the Txn that wrote the marker,
//! at the marker's own ModRevision), and no data.
//!
//! ```text
//! lockyard-etcd-held 1
//! key=000000000000a1b2-0
//! rev=8812
//! pid=4242
//! pidns=4026531836
//! host=build-7
//! owner=4242@build-7/1f3a9c0d5e7b2a64
//! since=1767225600456
//!
//! ```
//!
//! Client record (version 1), the value of a table's client key (`clients.rs`): the owner
//! record's header under its own first line, with no data, and when the process runs, so that
//! a reader on the same host can tell, with the header's `pidns`, whether it has ended: the boot
//! id and the process's start time in clock ticks after boot (both or none).
//!
//! ```text
//! lockyard-etcd-client 1
//! boot=5c1b2e0a-8d7f-4c44-9a0e-2f8e1d3b6a77
//! start=912345
//! pid=4242
//! pidns=4026531836
//! host=build-7
//! owner=4242@build-7/1f3a9c0d5e7b2a64
//! since=1767225600456
//!
//! ```
//!
//! `pidns` is the inode of the writer's pid namespace (absent when `/proc` could not tell, and in
//! records written before it was added): a reader of the same host shows the pid only from its
//! own namespace, since a pid of another one names another process here (DESIGN §7; lock-shm and
//! lock-file record it likewise). In a client record it also tells, with `boot` and `start`,
//! whether the process has ended.
//! `since` is milliseconds since the Unix epoch: in an owner record when the acquisition started
//! (for a waiter, when it started waiting), in a marker when the lock was claimed, in a client
//! record when the table was opened. `owner` is the owner key that tells owners apart in a
//! wait-for graph (one per table handle, one per named lock handle); records without it are read
//! as having none. Fields this version does not know are ignored, so a later version can add
//! some; a different first line is refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lock_api::{Error, Holder, Result};

use crate::client::Identity;

const OWNER_MAGIC: &str = "lockyard-etcd-owner";
const MARKER_MAGIC: &str = "lockyard-etcd-held";
const CLIENT_MAGIC: &str = "lockyard-etcd-client";
const VERSION: &str = "1";

/// What an acquisition says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) pid: u32,
    /// The inode of the writer's pid namespace; 0 when not recorded.
    pub(crate) pid_ns: u32,
    pub(crate) host: String,
    pub(crate) owner: Option<String>,
    pub(crate) since: SystemTime,
    pub(crate) data: Vec<u8>,
}

/// The held marker: which acquisition claimed the lock, and its owner record (no data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marker {
    /// The last segment of the claiming acquisition's own key.
    pub(crate) key: String,
    /// The CreateRevision of that key, when it was not created with the marker.
    pub(crate) rev: Option<i64>,
    pub(crate) record: Record,
}

/// A manager's registration, the value of its client key: its owner record (`since`: when it
/// opened the table; no data), and where its process runs, for a reader on the same host to
/// tell whether that process has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Client {
    pub(crate) record: Record,
    /// `None` where `/proc` could not tell (the process is then never judged dead).
    pub(crate) local: Option<Local>,
}

/// When a process runs on its host: the boot and the process's start time (clock ticks after
/// boot), which together with the pid and the pid namespace (the record's) name one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Local {
    pub(crate) boot: String,
    pub(crate) start: u64,
}

impl Local {
    /// This process's, or `None` when `/proc` cannot tell.
    pub(crate) fn current(pid: u32) -> Option<Local> {
        let boot = clean(&lock_api::boot_id().ok()?);
        let start = lock_api::process_start_time(pid).ok()??;
        (!boot.is_empty()).then_some(Local { boot, start })
    }
}

impl Client {
    pub(crate) fn encode(&self) -> Vec<u8> {
        use std::fmt::Write as _;
        let mut out = format!("{CLIENT_MAGIC} {VERSION}\n");
        if let Some(local) = &self.local {
            let _ = write!(out, "boot={}\nstart={}\n", local.boot, local.start);
        }
        self.record.header(&mut out);
        out.into_bytes()
    }

    /// Parses a client key's value read from `key`.
    pub(crate) fn decode(key: &str, value: &[u8]) -> Result<Client> {
        let (fields, _) = split(key, CLIENT_MAGIC, "client record", value)?;
        let local = match (&fields.boot, fields.start) {
            (Some(boot), Some(start)) => Some(Local {
                boot: boot.clone(),
                start,
            }),
            _ => None,
        };
        Ok(Client {
            record: fields.record(key, "client record")?,
            local,
        })
    }

    /// Whether the process that wrote this record has certainly ended, as seen by a process
    /// at `here`: only a process of the same host, boot and (known) pid namespace can be
    /// checked (its pid and start time, `lock_api::process_state`), and one of the same host
    /// in another boot has ended with that boot. Everything else counts as running.
    pub(crate) fn has_ended(&self, here: &Identity) -> bool {
        let (Some(theirs), Some(ours)) = (&self.local, &here.local) else {
            return false;
        };
        if self.record.host != here.host {
            return false;
        }
        if theirs.boot != ours.boot {
            return true;
        }
        self.record.pid_ns != 0
            && self.record.pid_ns == here.pid_ns
            && lock_api::process_state(self.record.pid, theirs.start)
                .is_ok_and(lock_api::ProcessState::is_dead)
    }
}

fn millis(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
}

/// A header value without control characters, so the header stays parseable whatever uname or
/// a caller says.
fn clean(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).collect()
}

impl Record {
    fn header(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(out, "pid={}", self.pid);
        if self.pid_ns != 0 {
            let _ = writeln!(out, "pidns={}", self.pid_ns);
        }
        let _ = writeln!(out, "host={}", clean(&self.host));
        if let Some(owner) = &self.owner {
            let _ = writeln!(out, "owner={}", clean(owner));
        }
        let _ = write!(out, "since={}\n\n", millis(self.since));
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = format!("{OWNER_MAGIC} {VERSION}\n");
        self.header(&mut out);
        let mut out = out.into_bytes();
        out.extend_from_slice(&self.data);
        out
    }

    /// Parses a record read from `key`.
    pub(crate) fn decode(key: &str, value: &[u8]) -> Result<Record> {
        let (fields, data) = split(key, OWNER_MAGIC, "owner record", value)?;
        let mut record = fields.record(key, "owner record")?;
        record.data = data.to_vec();
        Ok(record)
    }

    /// The pid a reader at `here` may show: none for a process of this host in another pid
    /// namespace, whose pid names another process here.
    pub(crate) fn pid_seen(&self, here: &Identity) -> Option<u32> {
        if self.host == here.host {
            lock_api::pid_seen_here(self.pid, self.pid_ns, here.pid_ns)
        } else {
            Some(self.pid)
        }
    }

    /// The record as a lock-api [`Holder`] (not dead, no expiry), as a reader at `here` may show
    /// it ([`pid_seen`](Self::pid_seen)).
    pub(crate) fn holder(&self, here: &Identity) -> Holder {
        let mut holder = Holder::default().host(self.host.clone()).since(self.since);
        holder.pid = self.pid_seen(here);
        holder.owner = self.owner.clone();
        holder
    }
}

impl Marker {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Marker::start(&self.key);
        if let Some(rev) = self.rev {
            out.push_str(&format!("rev={rev}\n"));
        }
        self.record.header(&mut out);
        out.into_bytes()
    }

    /// The first line of every marker naming `leaf`, and the one that names it.
    fn start(leaf: &str) -> String {
        format!("{MARKER_MAGIC} {VERSION}\nkey={}\n", clean(leaf))
    }

    /// Two values that every marker naming the acquisition `leaf` lies strictly between, and no
    /// other marker: etcd can compare a key's value with them in a Txn, and so delete the marker
    /// of one acquisition whatever claim time it carries.
    pub(crate) fn bounds(leaf: &str) -> (Vec<u8>, Vec<u8>) {
        let low = Marker::start(leaf).into_bytes();
        let mut high = low.clone();
        // The start ends in a newline, which `clean` keeps out of the leaf: no byte overflows.
        if let Some(last) = high.last_mut() {
            *last += 1;
        }
        (low, high)
    }

    /// Two values that every marker of this format version lies strictly between, and nothing
    /// else that starts otherwise: a claim replaces only a marker between them, so a marker of
    /// another version (or a value lock-etcd never wrote) is reported, never overwritten.
    pub(crate) fn version_bounds() -> (Vec<u8>, Vec<u8>) {
        let low = format!("{MARKER_MAGIC} {VERSION}\n").into_bytes();
        let mut high = low.clone();
        if let Some(last) = high.last_mut() {
            *last += 1;
        }
        (low, high)
    }

    /// Parses a marker read from `key`.
    pub(crate) fn decode(key: &str, value: &[u8]) -> Result<Marker> {
        let (fields, _) = split(key, MARKER_MAGIC, "held marker", value)?;
        let leaf = fields
            .key
            .clone()
            .ok_or_else(|| corrupt(key, "held marker", "no key"))?;
        Ok(Marker {
            key: leaf,
            rev: fields.rev,
            record: fields.record(key, "held marker")?,
        })
    }
}

fn corrupt(key: &str, what: &str, why: &str) -> Error {
    Error::corrupt(format!("{what} of etcd key {key}: {why}"))
}

#[derive(Default)]
struct Fields {
    key: Option<String>,
    rev: Option<i64>,
    pid: Option<u32>,
    host: Option<String>,
    owner: Option<String>,
    since: Option<SystemTime>,
    boot: Option<String>,
    pid_ns: Option<u32>,
    start: Option<u64>,
}

impl Fields {
    fn record(self, key: &str, what: &str) -> Result<Record> {
        Ok(Record {
            pid: self.pid.ok_or_else(|| corrupt(key, what, "no pid"))?,
            pid_ns: self.pid_ns.unwrap_or(0),
            host: self.host.ok_or_else(|| corrupt(key, what, "no host"))?,
            owner: self.owner,
            since: self.since.ok_or_else(|| corrupt(key, what, "no since"))?,
            data: Vec::new(),
        })
    }
}

/// Splits `value` into its parsed header (which must start with `magic`) and the data after it.
fn split<'v>(key: &str, magic: &str, what: &str, value: &'v [u8]) -> Result<(Fields, &'v [u8])> {
    let split = value
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or_else(|| corrupt(key, what, "no end of header"))?;
    let header = std::str::from_utf8(&value[..split])
        .map_err(|_| corrupt(key, what, "header is not UTF-8"))?;
    let data = &value[split + 2..];
    let mut lines = header.lines();
    let first = lines.next().unwrap_or("");
    match first.strip_prefix(magic).and_then(|v| v.strip_prefix(' ')) {
        Some(VERSION) => {}
        Some(_) => {
            return Err(Error::incompatible(
                format!("{what} version of etcd key {key}"),
                format!("{magic} {VERSION}"),
                first,
            ));
        }
        None => return Err(corrupt(key, what, &format!("not a lockyard {what}"))),
    }
    let mut fields = Fields::default();
    for line in lines {
        let (field, value) = line
            .split_once('=')
            .ok_or_else(|| corrupt(key, what, "header line without '='"))?;
        match field {
            "key" => fields.key = Some(value.to_owned()),
            "rev" => {
                fields.rev = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| corrupt(key, what, "bad rev"))?,
                );
            }
            "pid" => {
                fields.pid = Some(
                    value
                        .parse::<u32>()
                        .map_err(|_| corrupt(key, what, "bad pid"))?,
                );
            }
            "host" => fields.host = Some(value.to_owned()),
            "boot" => fields.boot = Some(value.to_owned()),
            "pidns" => {
                fields.pid_ns = Some(
                    value
                        .parse::<u32>()
                        .map_err(|_| corrupt(key, what, "bad pidns"))?,
                );
            }
            "start" => {
                fields.start = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| corrupt(key, what, "bad start"))?,
                );
            }
            "owner" => fields.owner = Some(value.to_owned()),
            "since" => {
                let ms = value
                    .parse::<u64>()
                    .map_err(|_| corrupt(key, what, "bad since"))?;
                fields.since = Some(
                    UNIX_EPOCH
                        .checked_add(Duration::from_millis(ms))
                        .ok_or_else(|| corrupt(key, what, "since out of range"))?,
                );
            }
            _ => {}
        }
    }
    Ok((fields, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(data: &[u8]) -> Record {
        Record {
            pid: 42,
            pid_ns: 4_026_531_836,
            host: "h1".into(),
            owner: Some("42@h1/7".into()),
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
        let mut anonymous = sample(b"x");
        anonymous.owner = None;
        assert_eq!(
            Record::decode("k", &anonymous.encode()).ok(),
            Some(anonymous)
        );
    }

    #[test]
    fn a_pid_of_another_pid_namespace_of_this_host_is_not_shown() {
        let here = Identity::current();
        assert_ne!(here.pid_ns, 0, "this process's pid namespace");
        let record = |host: &str, pid_ns: u32| Record {
            host: host.into(),
            pid_ns,
            ..sample(b"")
        };
        let shown = |r: Record| r.holder(&here).pid;
        assert_eq!(shown(record(&here.host, here.pid_ns)), Some(42));
        assert_eq!(shown(record(&here.host, here.pid_ns ^ 1)), None);
        assert_eq!(shown(record(&here.host, 0)), Some(42), "not recorded");
        assert_eq!(shown(record("elsewhere", here.pid_ns ^ 1)), Some(42));
        // A record written before `pidns` existed reads as not recorded.
        let old = b"lockyard-etcd-owner 1\npid=7\nhost=h\nsince=1\n\n";
        assert_eq!(Record::decode("k", old).map(|r| r.pid_ns).ok(), Some(0));
    }

    #[test]
    fn a_client_round_trips_and_only_a_local_ended_process_has_ended() {
        let me = std::process::id();
        let ns = lock_api::pid_namespace();
        let local = Local::current(me).expect("this process's boot and start");
        let reader = |local: Option<Local>| Identity {
            pid: me,
            pid_ns: ns,
            host: "h1".into(),
            local,
        };
        let here = reader(Some(local.clone()));
        let client = |pid: u32, host: &str, pid_ns: u32, local: Option<Local>| Client {
            record: Record {
                pid,
                pid_ns,
                host: host.into(),
                ..sample(b"")
            },
            local,
        };
        let mine = client(me, "h1", ns, Some(local.clone()));
        assert_eq!(Client::decode("k", &mine.encode()).ok(), Some(mine.clone()));
        let unknown = client(me, "h1", ns, None);
        assert_eq!(
            Client::decode("k", &unknown.encode()).ok(),
            Some(unknown.clone())
        );
        assert!(!mine.has_ended(&here));
        assert!(!unknown.has_ended(&here));
        let restarted = Local {
            start: local.start + 1,
            ..local.clone()
        };
        assert!(client(me, "h1", ns, Some(restarted.clone())).has_ended(&here));
        // Another host, namespace or nothing known here: never judged.
        assert!(!client(me, "h2", ns, Some(restarted.clone())).has_ended(&here));
        assert!(!client(me, "h1", ns ^ 1, Some(restarted.clone())).has_ended(&here));
        assert!(!client(me, "h1", 0, Some(restarted.clone())).has_ended(&here));
        assert!(!client(me, "h1", ns, Some(restarted)).has_ended(&reader(None)));
        let earlier_boot = Local {
            boot: "another-boot".into(),
            ..local.clone()
        };
        assert!(client(me, "h1", ns, Some(earlier_boot)).has_ended(&here));
        assert!(matches!(
            Client::decode(
                "k",
                b"lockyard-etcd-client 1\npid=1\nhost=h\nsince=1\npidns=x\n\n"
            ),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn the_bounds_of_a_leaf_hold_its_markers_only() {
        let marker = |key: &str, rev: Option<i64>, since_ms: u64| {
            Marker {
                key: key.into(),
                rev,
                record: Record {
                    since: UNIX_EPOCH + Duration::from_millis(since_ms),
                    ..sample(b"")
                },
            }
            .encode()
        };
        let (low, high) = Marker::bounds("00000000000000ff-1");
        for ours in [
            marker("00000000000000ff-1", None, 1),
            marker("00000000000000ff-1", Some(7), 1_767_225_600_123),
        ] {
            assert!(low < ours && ours < high);
        }
        for theirs in [
            marker("00000000000000ff-10", None, 1),
            marker("00000000000000ff-", None, 1),
            marker("00000000000000fe-1", None, 1),
            marker("00000000000000ff-2", Some(7), 1),
        ] {
            assert!(!(low < theirs && theirs < high), "{theirs:?}");
        }
    }

    #[test]
    fn version_bounds_hold_this_versions_markers_only() {
        let (low, high) = Marker::version_bounds();
        let ours = Marker {
            key: "00000000000000ff-1".into(),
            rev: Some(3),
            record: sample(b""),
        }
        .encode();
        assert!(low < ours && ours < high);
        for theirs in [
            &b"lockyard-etcd-held 9\n\n"[..],
            b"lockyard-etcd-held 10\nkey=a\n\n",
            b"lockyard-etcd-held 1",
            b"\xff\xfegarbage",
            b"",
        ] {
            assert!(
                !(low.as_slice() < theirs && theirs < high.as_slice()),
                "{theirs:?}"
            );
        }
    }

    #[test]
    fn markers_round_trip_and_are_not_owner_records() {
        let marker = Marker {
            key: "00000000000000ff".into(),
            rev: None,
            record: sample(b""),
        };
        let bytes = marker.encode();
        assert_eq!(Marker::decode("k", &bytes).ok(), Some(marker.clone()));
        let waited = Marker {
            rev: Some(8812),
            ..marker.clone()
        };
        assert_eq!(Marker::decode("k", &waited.encode()).ok(), Some(waited));
        assert!(Record::decode("k", &bytes).is_err());
        assert!(Marker::decode("k", &marker.record.encode()).is_err());
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
        assert!(matches!(
            Marker::decode("k", b"lockyard-etcd-held 1\npid=1\nhost=h\nsince=1\n\n"),
            Err(Error::Corrupt { .. })
        ));
    }
}
