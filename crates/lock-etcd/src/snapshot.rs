//! Who holds and who waits, read from one Range over a table's lock keys.
//!
//! A table's locks live under `<root>/lock/`: the held marker `lock/<id>` and the queue keys
//! `lock/<id>/<leaf>`. One Range over that prefix is one consistent view at one revision, so a
//! snapshot never mixes two moments.
//!
//! - The *holder* of a lock is the acquisition its held marker names (see `mutex.rs`,
//!   invariant 7), described by the marker's copy of its owner record. It is *dead* when the
//!   key the marker names is no longer in the queue: the holder's lease expired or was revoked,
//!   or its key was deleted, without a clean release, so the next acquirer gets `OwnerDied`.
//! - The *waiters* are every other queue key, in queue (CreateRevision) order, each described by
//!   its own owner record, whose `since` is when it started waiting. A queue with no marker has
//!   no holder: its first key is about to claim the lock.

use std::collections::BTreeMap;

use etcd_client::proto::PbKeyValue;
use lock_api::{Error, Holder, LockId, LockState, Result};

use crate::record::{Marker, Record};

#[derive(Default)]
struct Lock<'a> {
    marker: Option<&'a PbKeyValue>,
    queue: Vec<&'a PbKeyValue>,
}

/// The locks under `lock_prefix` (`<root>/lock/`) that are held or waited for, in id order.
///
/// # Errors
///
/// [`Error::Corrupt`] for a key under the prefix whose id is not a number. A record or marker
/// that cannot be parsed does not fail the snapshot: its entry is listed with what is known.
pub(crate) fn lock_states(lock_prefix: &str, kvs: &[PbKeyValue]) -> Result<Vec<LockState>> {
    let mut locks: BTreeMap<u32, Lock<'_>> = BTreeMap::new();
    for kv in kvs {
        let key = String::from_utf8_lossy(&kv.key);
        let Some(rest) = key.strip_prefix(lock_prefix) else {
            continue;
        };
        let (id, leaf) = match rest.split_once('/') {
            Some((id, leaf)) => (id, Some(leaf)),
            None => (rest, None),
        };
        let id = id
            .parse::<u32>()
            .map_err(|_| Error::corrupt(format!("etcd lock key {key}")))?;
        let lock = locks.entry(id).or_default();
        match leaf {
            None => lock.marker = Some(kv),
            Some(_) => lock.queue.push(kv),
        }
    }
    let mut states = Vec::with_capacity(locks.len());
    for (id, mut lock) in locks {
        lock.queue.sort_by_key(|kv| kv.create_revision);
        let marker = lock.marker.map(|kv| {
            let key = String::from_utf8_lossy(&kv.key);
            Marker::decode(&key, &kv.value).ok()
        });
        let holder_leaf = marker
            .as_ref()
            .and_then(|m| m.as_ref().map(|m| m.key.clone()));
        let holder = marker.map(|marker| match marker {
            Some(marker) => {
                let alive = lock.queue.iter().any(|kv| leaf_of(kv) == marker.key);
                marker.record.holder().dead(!alive)
            }
            // A marker nobody can read: held by someone unknown, never an edge of the graph.
            None => Holder::default(),
        });
        let waiters = lock
            .queue
            .iter()
            .filter(|kv| holder_leaf.as_deref() != Some(leaf_of(kv).as_str()))
            .map(|kv| {
                let key = String::from_utf8_lossy(&kv.key);
                Record::decode(&key, &kv.value)
                    .map(|r| r.holder())
                    .unwrap_or_default()
            })
            .collect();
        states.push(LockState::new(LockId(id), holder, waiters));
    }
    Ok(states)
}

/// The last segment of a queue key.
fn leaf_of(kv: &PbKeyValue) -> String {
    let key = String::from_utf8_lossy(&kv.key);
    key.rsplit_once('/')
        .map_or_else(|| key.to_string(), |(_, leaf)| leaf.to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn record(pid: u32, owner: &str) -> Record {
        Record {
            pid,
            host: "h".into(),
            owner: Some(owner.into()),
            since: UNIX_EPOCH + Duration::from_secs(pid.into()),
            data: Vec::new(),
        }
    }

    fn kv(key: &str, value: Vec<u8>, create_revision: i64) -> PbKeyValue {
        PbKeyValue {
            key: key.as_bytes().to_vec(),
            value,
            create_revision,
            ..PbKeyValue::default()
        }
    }

    fn marker(leaf: &str, pid: u32, owner: &str) -> Vec<u8> {
        Marker {
            key: leaf.into(),
            record: record(pid, owner),
        }
        .encode()
    }

    #[test]
    fn holder_from_the_marker_waiters_from_the_rest() {
        let kvs = [
            kv("t/lock/3", marker("a", 1, "A"), 5),
            kv("t/lock/3/b", record(2, "B").encode(), 7),
            kv("t/lock/3/a", record(1, "A").encode(), 5),
        ];
        let states = lock_states("t/lock/", &kvs).expect("snapshot");
        assert_eq!(states.len(), 1);
        let state = &states[0];
        assert_eq!(state.id, LockId(3));
        let holder = state.holder.as_ref().expect("holder");
        assert_eq!((holder.pid, holder.dead), (Some(1), false));
        assert_eq!(holder.owner.as_deref(), Some("A"));
        assert_eq!(state.waiters.len(), 1);
        assert_eq!(state.waiters[0].owner.as_deref(), Some("B"));
    }

    #[test]
    fn a_marker_without_its_key_is_a_dead_holder() {
        let kvs = [
            kv("t/lock/0", marker("a", 1, "A"), 5),
            kv("t/lock/0/b", record(2, "B").encode(), 9),
        ];
        let states = lock_states("t/lock/", &kvs).expect("snapshot");
        let holder = states[0].holder.as_ref().expect("holder");
        assert!(holder.dead);
        assert_eq!(holder.pid, Some(1));
        assert_eq!(states[0].waiters.len(), 1);
    }

    #[test]
    fn a_queue_without_a_marker_has_no_holder() {
        let kvs = [kv("t/lock/1/b", record(2, "B").encode(), 9)];
        let states = lock_states("t/lock/", &kvs).expect("snapshot");
        assert_eq!(states[0].holder, None);
        assert_eq!(states[0].waiters.len(), 1);
    }

    #[test]
    fn a_bad_id_is_corrupt_and_a_bad_record_is_listed() {
        let bad = [kv("t/lock/x/b", Vec::new(), 1)];
        assert!(matches!(
            lock_states("t/lock/", &bad),
            Err(Error::Corrupt { .. })
        ));
        let garbled = [kv("t/lock/2", b"garbage".to_vec(), 1)];
        let states = lock_states("t/lock/", &garbled).expect("snapshot");
        assert_eq!(states[0].holder, Some(Holder::default()));
    }
}
