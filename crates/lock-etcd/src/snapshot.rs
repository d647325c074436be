//! Who holds and who waits, read from one Range over a table's lock keys.
//!
//! A table's locks live under `<root>/lock/`: the held marker `lock/<id>` and the queue keys
//! `lock/<id>/<leaf>`. One Range over that prefix is one consistent view at one revision, so a
//! snapshot never mixes two moments.
//!
//! - The *holder* of a lock is the acquisition its held marker names (see `mutex.rs`,
//!   invariant 7), described by the marker's copy of its owner record, when that key is first
//!   in the queue. It is *dead* when the key was created before the queue's first key (or the
//!   queue is empty) and is gone: the holder's lease expired or was revoked, or its key was
//!   deleted, without a clean release, so the next acquirer gets `OwnerDied`. A marker naming a
//!   key created after the queue's first key was written by a newcomer in a hand-over's gap
//!   (see [`standing`]): the lock has no holder then.
//! - A held marker that cannot be read fails the snapshot (`Corrupt`, or `Incompatible` for
//!   another format version), as does a key whose id lock-etcd would not write.
//! - The *waiters* are every other queue key, in queue (CreateRevision) order, each described by
//!   its own owner record, whose `since` is when it started waiting. A queue with no marker has
//!   no holder: its first key is about to claim the lock.

use std::collections::BTreeMap;

use etcd_client::proto::PbKeyValue;
use lock_api::{Error, LockId, LockState, Result};

use crate::client::Identity;
use crate::record::{Marker, Record};
use crate::table::parse_decimal;

/// What a held marker says about the lock, against the queue's first key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// The named acquisition is first in the queue: it holds the lock.
    Alive,
    /// The named key was created after the queue's first key: a newcomer wrote the marker in a
    /// hand-over's gap (it found no marker), and the first key is about to claim. No holder.
    Premature,
    /// The named key was ahead of every key left and is gone: its holder did not release.
    Dead,
}

/// Where the acquisition `marker` names stands; `marker_mod_revision` is the marker key's
/// ModRevision (the named key's CreateRevision when the marker carries none), `first` the
/// queue's first key (its last segment and CreateRevision).
pub(crate) fn standing(
    marker: &Marker,
    marker_mod_revision: i64,
    first: Option<(&str, i64)>,
) -> Standing {
    let named = marker.rev.unwrap_or(marker_mod_revision);
    match first {
        Some((leaf, _)) if leaf == marker.key => Standing::Alive,
        Some((_, first_revision)) if named > first_revision => Standing::Premature,
        _ => Standing::Dead,
    }
}

#[derive(Default)]
struct Lock<'a> {
    marker: Option<&'a PbKeyValue>,
    queue: Vec<&'a PbKeyValue>,
}

/// The locks under `lock_prefix` (`<root>/lock/`) of a table of `capacity` locks that are held
/// or waited for, in id order.
///
/// # Errors
///
/// [`Error::Corrupt`] for a key under the prefix whose id is not one lock-etcd writes (decimal,
/// no sign or leading zero: `lock/+3` and `lock/03` would be read as lock 3) or is at or beyond
/// the capacity; a held marker that cannot be parsed is [`Error::Corrupt`], one of another
/// format version [`Error::Incompatible`] (it used to be listed as a holder nobody knows, and
/// `try_lock` took the lock over as from a dead one). A waiter's record that cannot be parsed
/// does not fail the snapshot: the waiter is listed with what is known.
pub(crate) fn lock_states(
    lock_prefix: &str,
    capacity: u32,
    kvs: &[PbKeyValue],
    here: &Identity,
) -> Result<Vec<LockState>> {
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
        let id = parse_decimal(id)
            .filter(|id| *id < capacity)
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "etcd lock key {key:?} (ids are decimal, below the capacity {capacity})"
                ))
            })?;
        let lock = locks.entry(id).or_default();
        match leaf {
            None => lock.marker = Some(kv),
            Some(_) => lock.queue.push(kv),
        }
    }
    let mut states = Vec::with_capacity(locks.len());
    for (id, mut lock) in locks {
        lock.queue.sort_by_key(|kv| kv.create_revision);
        let first = lock
            .queue
            .first()
            .map(|kv| (leaf_of(kv), kv.create_revision));
        let mut holder_leaf = None;
        let holder = match lock.marker {
            Some(kv) => {
                let key = String::from_utf8_lossy(&kv.key);
                let marker = Marker::decode(&key, &kv.value)?;
                let first = first.as_ref().map(|(leaf, rev)| (leaf.as_str(), *rev));
                match standing(&marker, kv.mod_revision, first) {
                    Standing::Alive => {
                        holder_leaf = Some(marker.key.clone());
                        Some(marker.record.holder(here))
                    }
                    Standing::Premature => None,
                    Standing::Dead => Some(marker.record.holder(here).dead(true)),
                }
            }
            None => None,
        };
        let waiters = lock
            .queue
            .iter()
            .filter(|kv| holder_leaf.as_deref() != Some(leaf_of(kv).as_str()))
            .map(|kv| {
                let key = String::from_utf8_lossy(&kv.key);
                Record::decode(&key, &kv.value)
                    .map(|r| r.holder(here))
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

    use lock_api::Holder;

    use super::*;

    fn record(pid: u32, owner: &str) -> Record {
        Record {
            pid,
            pid_ns: 0,
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
            rev: None,
            record: record(pid, owner),
        }
        .encode()
    }

    fn with_mod(mut kv: PbKeyValue, mod_revision: i64) -> PbKeyValue {
        kv.mod_revision = mod_revision;
        kv
    }

    #[test]
    fn holder_from_the_marker_waiters_from_the_rest() {
        let kvs = [
            with_mod(kv("t/lock/3", marker("a", 1, "A"), 5), 5),
            kv("t/lock/3/b", record(2, "B").encode(), 7),
            kv("t/lock/3/a", record(1, "A").encode(), 5),
        ];
        let states = lock_states("t/lock/", 4, &kvs, &Identity::current()).expect("snapshot");
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
            with_mod(kv("t/lock/0", marker("a", 1, "A"), 5), 5),
            kv("t/lock/0/b", record(2, "B").encode(), 9),
        ];
        let states = lock_states("t/lock/", 4, &kvs, &Identity::current()).expect("snapshot");
        let holder = states[0].holder.as_ref().expect("holder");
        assert!(holder.dead);
        assert_eq!(holder.pid, Some(1));
        assert_eq!(states[0].waiters.len(), 1);
    }

    #[test]
    fn a_marker_a_newcomer_wrote_in_a_gap_is_no_holder() {
        // b (rev 9) waits at the head; c (rev 12) found no marker and wrote one.
        let kvs = [
            with_mod(kv("t/lock/0", marker("c", 3, "C"), 12), 12),
            kv("t/lock/0/b", record(2, "B").encode(), 9),
            kv("t/lock/0/c", record(3, "C").encode(), 12),
        ];
        let states = lock_states("t/lock/", 4, &kvs, &Identity::current()).expect("snapshot");
        assert_eq!(states[0].holder, None);
        assert_eq!(states[0].waiters.len(), 2);
    }

    #[test]
    fn a_queue_without_a_marker_has_no_holder() {
        let kvs = [kv("t/lock/1/b", record(2, "B").encode(), 9)];
        let states = lock_states("t/lock/", 4, &kvs, &Identity::current()).expect("snapshot");
        assert_eq!(states[0].holder, None);
        assert_eq!(states[0].waiters.len(), 1);
    }

    #[test]
    fn a_bad_id_is_corrupt_and_a_bad_record_is_listed() {
        for bad in [
            "t/lock/x/b",
            "t/lock/+3/b",
            "t/lock/03/b",
            "t/lock/4/b",
            "t/lock/99",
        ] {
            let kvs = [kv(bad, record(2, "B").encode(), 1)];
            assert!(
                matches!(
                    lock_states("t/lock/", 4, &kvs, &Identity::current()),
                    Err(Error::Corrupt { .. })
                ),
                "{bad}"
            );
        }
        let garbled = [kv("t/lock/2/b", b"garbage".to_vec(), 1)];
        let states = lock_states("t/lock/", 4, &garbled, &Identity::current()).expect("snapshot");
        assert_eq!(states[0].waiters, vec![Holder::default()]);
    }

    /// A marker nobody can read is `Corrupt`, one of another version `Incompatible`: it was
    /// listed as a holder nobody knows.
    #[test]
    fn an_unreadable_marker_fails_the_snapshot() {
        let garbled = [kv("t/lock/2", b"\xff\xfegarbage".to_vec(), 1)];
        assert!(matches!(
            lock_states("t/lock/", 4, &garbled, &Identity::current()),
            Err(Error::Corrupt { .. })
        ));
        let newer = [kv("t/lock/2", b"lockyard-etcd-held 9\n\n".to_vec(), 1)];
        assert!(matches!(
            lock_states("t/lock/", 4, &newer, &Identity::current()),
            Err(Error::Incompatible { .. })
        ));
    }
}
