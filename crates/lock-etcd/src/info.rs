//! `Info`: what a holder knows about its own acquisition, read in one Txn.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lock_api::{Acquired, Holder};

/// One acquisition as its holder sees it, read in one Txn (distlock's `Info`): who holds it,
/// since when, until when, with which token, and the data stored with it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Info {
    /// This process as the holder: pid, host, owner key, `since` (when the lock was claimed, in
    /// milliseconds) and `expires`: the earliest instant the server may expire the session's
    /// lease unless a renewal is answered meanwhile (the send time of the last answered keepalive
    /// plus the granted TTL), in milliseconds, known locally without asking etcd.
    pub holder: Holder,
    /// The fencing token (the key's CreateRevision).
    pub token: u64,
    /// How the lock was acquired.
    pub acquired: Acquired,
    /// The data stored with the lock.
    pub data: Vec<u8>,
}

/// `t` truncated to whole milliseconds since the Unix epoch (what the records store).
pub(crate) fn to_ms(t: SystemTime) -> SystemTime {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}
