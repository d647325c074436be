//! The mutex recipe over KV, Txn, Watch and Lease (not etcd's `Lock` RPC).
//!
//! A lock is a key range, its *queue*: `<lock prefix>/` followed by one key per acquisition,
//! `<lock prefix>/<lease id in hex>`, attached to that acquisition's own lease. The key with the
//! lowest CreateRevision holds the lock; the others wait in CreateRevision order.
//!
//! Invariants:
//! 1. An acquisition creates its key in one Txn guarded by `create_revision == 0`, which also reads
//!    the first key of the queue: an uncontended lock costs a lease grant and one Txn.
//! 2. A waiter watches only its immediate predecessor (the last key created before its own), from
//!    the revision of the read that found it, so no deletion is missed and a release wakes one
//!    waiter, not the herd.
//! 3. A waiter that finds no predecessor left re-reads its own key before it claims the lock: if
//!    its lease expired while it waited (etcd#11456) the key is gone and the answer is
//!    `Error::Lost`, never success.
//! 4. The fencing token is the own key's CreateRevision: etcd revisions only grow, so tokens of
//!    successive holders strictly increase.
//! 5. Every acquisition that does not end holding the lock revokes its lease, which deletes its
//!    key; if even that fails the lease is no longer kept alive and expires within the TTL.
//! 6. Release deletes the key only while its CreateRevision is still ours, then revokes the lease.
//! 7. The *held marker*, the single key `<lock prefix>` (the queue without its trailing `/`), exists
//!    exactly while some holder has claimed the lock and not released it cleanly: the claim writes
//!    it (in the acquisition Txn when the queue was empty, or in the claim Txn after waiting), a
//!    clean release deletes it with the own key in one Txn. A claim that finds a marker left by
//!    another acquisition therefore follows a holder that died or lost its lease while holding the
//!    lock, and reports `Acquired::OwnerDied`. The marker has no lease, so it survives its writer.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::proto::{PbKeyValue, PbTxnOpResponse, PbTxnResponse};
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp};
use lock_api::{Acquired, Error, Result};
use tokio::task::AbortHandle;
use tokio::time::{sleep, timeout_at};

use crate::client::Ctx;
use crate::deadlock::Detector;
use crate::lease::{Monitor, keep_alive, watch_deletion, watch_own_key};
use crate::record::{Marker, Record};

/// A pause before re-reading the queue after a watch broke.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// One acquisition that holds the lock.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) key: String,
    pub(crate) lease: i64,
    pub(crate) revision: i64,
    pub(crate) ttl: Duration,
    pub(crate) since: SystemTime,
    pub(crate) acquired: Acquired,
    pub(crate) monitor: Arc<Monitor>,
    tasks: Vec<AbortHandle>,
}

impl Held {
    /// Stops the keepalive and the key watch.
    pub(crate) fn stop_tasks(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Which lock an acquisition is for, and on whose behalf.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The lock's queue: its key prefix, ending in `/`.
    pub(crate) queue: String,
    /// The owner key written into every record of this handle's acquisitions.
    pub(crate) owner: Arc<str>,
    /// Deadlock detection, for the locks of a table.
    pub(crate) detector: Option<Detector>,
}

/// How long an acquisition may wait for the holder.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// Do not wait at all (`try_lock`).
    Never,
    /// Wait until the deadline, or forever.
    Until(Option<Instant>),
}

/// The first key of a Txn's `index`-th response, read without the client's panicking accessor.
fn txn_first_kv(resp: &PbTxnResponse, index: usize) -> Option<&PbKeyValue> {
    match resp.responses.get(index)?.response.as_ref()? {
        PbTxnOpResponse::ResponseRange(range) => range.kvs.first(),
        _ => None,
    }
}

fn queue_options() -> GetOptions {
    GetOptions::new().with_prefix()
}

/// The held marker of the lock whose queue is `queue` (invariant 7).
pub(crate) fn marker_key(queue: &str) -> &str {
    queue.trim_end_matches('/')
}

/// The marker of the lock whose own key is `key` (`<lock prefix>/<lease hex>`).
fn marker_key_of(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(queue, _)| queue)
}

/// The last segment of an own key (`<lock prefix>/<leaf>`): what a marker names.
pub(crate) fn leaf_of(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(_, leaf)| leaf)
}

/// How a claim went, from the marker it found (invariant 7): a marker that names another
/// acquisition, or that nobody can read, was left by a holder that did not release cleanly.
fn claimed(previous_marker: Option<&PbKeyValue>, own_key: &str) -> Acquired {
    match previous_marker {
        None => Acquired::Clean,
        Some(kv) => match Marker::decode(own_key, &kv.value) {
            Ok(marker) if marker.key == leaf_of(own_key) => Acquired::Clean,
            _ => Acquired::OwnerDied,
        },
    }
}

/// The marker bytes an acquisition writes when it claims the lock at `since`.
fn marker_bytes(own_key: &str, record: &Record, since: SystemTime) -> Vec<u8> {
    Marker {
        key: leaf_of(own_key).to_owned(),
        record: Record {
            since,
            data: Vec::new(),
            ..record.clone()
        },
    }
    .encode()
}

/// Acquires the lock `target` names.
///
/// Returns `Ok(None)` when `wait` is [`Wait::Never`] and someone holds it.
pub(crate) async fn acquire(ctx: Ctx, target: Target, wait: Wait) -> Result<Option<Held>> {
    let queue = target.queue.clone();
    let deadline = match wait {
        Wait::Never => None,
        Wait::Until(deadline) => deadline,
    };
    if matches!(wait, Wait::Never) {
        // Cheap refusal without creating a lease while the lock is visibly held.
        let answer = ctx
            .call(|mut c| {
                let queue = queue.clone();
                async move { c.get(queue, Some(queue_options().with_count_only())).await }
            })
            .await?;
        if answer.count() > 0 {
            return Ok(None);
        }
    }
    let sent = Instant::now();
    let grant_deadline = deadline.map_or(ctx.deadline(), |d| d.min(ctx.deadline()));
    let ttl_secs = ctx.ttl_secs;
    let grant = crate::client::retry(&ctx, grant_deadline, |mut c| async move {
        c.lease_grant(ttl_secs, None).await
    })
    .await
    .map_err(|e| match (e, deadline) {
        (Error::Unavailable { .. }, Some(d)) if Instant::now() >= d => Error::Timeout,
        (e, _) => e,
    })?;
    let lease = grant.id();
    let ttl = Duration::from_secs(u64::try_from(grant.ttl()).unwrap_or(0));
    if ttl.is_zero() {
        return Err(Error::unavailable(format!(
            "etcd granted lease {lease:x} with TTL {}",
            grant.ttl()
        )));
    }
    let monitor = Monitor::new(sent, ttl);
    let mut tasks = vec![
        tokio::spawn(keep_alive(ctx.clone(), lease, ttl, Arc::clone(&monitor))).abort_handle(),
    ];
    let key = format!("{queue}{lease:016x}");
    let since = SystemTime::now();
    let record = Record {
        pid: ctx.identity.pid,
        host: ctx.identity.host.clone(),
        owner: Some(target.owner.to_string()),
        since,
        data: Vec::new(),
    };
    let attempt = enqueue_and_wait(
        &ctx, &target, &key, lease, &record, wait, &monitor, &mut tasks,
    );
    let outcome = match deadline {
        Some(d) => timeout_at(d.into(), attempt)
            .await
            .unwrap_or(Err(Error::Timeout)),
        None => attempt.await,
    };
    match outcome {
        Ok(Some((revision, acquired))) => Ok(Some(Held {
            key,
            lease,
            revision,
            ttl,
            since,
            acquired,
            monitor,
            tasks,
        })),
        other => {
            for task in &tasks {
                task.abort();
            }
            if other.is_err() {
                // A claim may have been applied just before the deadline cut the answer off:
                // give the marker back, or the next holder would think a holder died.
                unclaim(&ctx, marker_key(&queue), &key).await;
            }
            revoke(&ctx, lease).await;
            other.map(|_| None)
        }
    }
}

/// Deletes the held marker if this acquisition (`own_key`) wrote it; errors are dropped (the
/// worst outcome is a spurious `OwnerDied` for the next holder).
async fn unclaim(ctx: &Ctx, marker: &str, own_key: &str) {
    let Ok(answer) = ctx
        .call(|mut c| async move { c.get(marker, None).await })
        .await
    else {
        return;
    };
    let Some(kv) = answer.kvs().first() else {
        return;
    };
    let ours = Marker::decode(marker, kv.value()).is_ok_and(|m| m.key == leaf_of(own_key));
    if !ours {
        return;
    }
    let revision = kv.mod_revision();
    let _ = ctx
        .call(|mut c| {
            let txn = Txn::new()
                .when([Compare::mod_revision(marker, CompareOp::Equal, revision)])
                .and_then([TxnOp::delete(marker, None)]);
            async move { c.txn(txn).await }
        })
        .await;
}

/// Creates the own key, then waits for the turn; returns the own key's CreateRevision once the
/// lock is ours, `None` when `wait` is [`Wait::Never`] and it is not.
#[allow(clippy::too_many_arguments)] // reason: one call site; a struct would only rename them
async fn enqueue_and_wait(
    ctx: &Ctx,
    target: &Target,
    key: &str,
    lease: i64,
    record: &Record,
    wait: Wait,
    monitor: &Arc<Monitor>,
    tasks: &mut Vec<AbortHandle>,
) -> Result<Option<(i64, Acquired)>> {
    let queue = target.queue.as_str();
    let value = record.encode();
    let marker = marker_key(queue);
    let mark = marker_bytes(key, record, record.since);
    let answer = ctx
        .call(|mut c| {
            let txn = Txn::new()
                .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                .and_then([
                    // 0: the marker as it was; 1: claim it if the queue is empty (invariant 7).
                    TxnOp::get(marker, None),
                    TxnOp::txn(
                        Txn::new()
                            .when([
                                Compare::create_revision(queue, CompareOp::Equal, 0).with_prefix()
                            ])
                            .and_then([TxnOp::put(marker, mark.clone(), None)]),
                    ),
                    TxnOp::put(
                        key,
                        value.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                    TxnOp::get(
                        queue,
                        Some(
                            queue_options()
                                .with_sort(SortTarget::Create, SortOrder::Ascend)
                                .with_limit(1)
                                .with_keys_only(),
                        ),
                    ),
                ])
                .or_else([TxnOp::get(key, Some(GetOptions::new().with_keys_only()))]);
            async move { c.txn(txn).await }
        })
        .await?;
    let raw = &answer.0;
    let revision = if raw.succeeded {
        // Every write of a Txn happens at the Txn's revision.
        raw.header.as_ref().map(|h| h.revision).unwrap_or(0)
    } else {
        // A retried Txn whose first attempt was applied: our key exists already.
        txn_first_kv(raw, 0)
            .map(|kv| kv.create_revision)
            .unwrap_or(0)
    };
    if revision <= 0 {
        return Err(Error::unavailable(format!(
            "etcd answered the acquisition of {key} without a revision"
        )));
    }
    tasks.push(
        tokio::spawn(watch_own_key(
            ctx.clone(),
            key.to_owned(),
            revision,
            Arc::clone(monitor),
        ))
        .abort_handle(),
    );
    if raw.succeeded && txn_first_kv(raw, 3).is_some_and(|kv| kv.create_revision == revision) {
        // Invariant 1: the Txn itself saw our key first in the queue, and claimed the marker.
        return Ok(Some((revision, claimed(txn_first_kv(raw, 0), key))));
    }
    if matches!(wait, Wait::Never) {
        return Ok(None);
    }
    match &target.detector {
        None => wait_for_turn(ctx, queue, revision, monitor).await?,
        Some(detector) => {
            let turn = wait_for_turn(ctx, queue, revision, monitor);
            detector.wait(ctx, turn, key, revision, lease).await?;
        }
    }
    // Invariant 3: claim only if our key (hence our lease) still exists; the same Txn claims the
    // marker (invariant 7), recording when the lock was claimed.
    let mark = marker_bytes(key, record, SystemTime::now());
    let claim = ctx
        .call(|mut c| {
            let txn = Txn::new()
                .when([
                    Compare::create_revision(key, CompareOp::Equal, revision),
                    Compare::lease(key, CompareOp::Equal, lease),
                ])
                .and_then([
                    TxnOp::get(marker, None),
                    TxnOp::put(marker, mark.clone(), None),
                ]);
            async move { c.txn(txn).await }
        })
        .await?;
    if !claim.0.succeeded || monitor.is_lost() {
        return Err(Error::Lost);
    }
    Ok(Some((revision, claimed(txn_first_kv(&claim.0, 0), key))))
}

/// Waits until no key created before `revision` is left in `queue` (invariant 2).
async fn wait_for_turn(ctx: &Ctx, queue: &str, revision: i64, monitor: &Monitor) -> Result<()> {
    loop {
        if monitor.is_lost() {
            return Err(Error::Lost);
        }
        let answer = ctx
            .call(|mut c| async move {
                c.get(
                    queue,
                    Some(
                        queue_options()
                            .with_sort(SortTarget::Create, SortOrder::Descend)
                            .with_max_create_revision(revision - 1)
                            .with_limit(1)
                            .with_keys_only(),
                    ),
                )
                .await
            })
            .await?;
        let Some(predecessor) = answer.kvs().first() else {
            return Ok(());
        };
        let from = answer.header().map_or(0, |h| h.revision()) + 1;
        let key = predecessor.key().to_vec();
        tokio::select! {
            () = wait_deleted(ctx, key, from) => {}
            () = monitor.lost() => return Err(Error::Lost),
        }
    }
}

/// Resolves when `key` is deleted at or after revision `from`, or when the watch breaks (the
/// caller then reads the queue again, after a pause so a broken cluster is not hammered).
async fn wait_deleted(ctx: &Ctx, key: Vec<u8>, from: i64) {
    if !watch_deletion(ctx, key, from).await {
        sleep(RETRY_PAUSE).await;
    }
}

/// Releases a held lock (invariant 6).
///
/// A lock that is lost, before or during the release, returns [`Error::Lost`] at once: the
/// acquisition is over either way, and the revoke, which in an outage would wait out the whole
/// request timeout, goes on in the background (the lease expires by itself if it fails).
pub(crate) async fn release(ctx: Ctx, held: Held) -> Result<()> {
    held.monitor.set_releasing(true);
    if held.monitor.is_lost() {
        held.stop_tasks();
        revoke_in_background(&ctx, held.lease);
        return Err(Error::Lost);
    }
    let mut attempts = 0u32;
    let delete = ctx.call(|mut c| {
        attempts += 1;
        let txn = Txn::new()
            .when([Compare::create_revision(
                held.key.as_str(),
                CompareOp::Equal,
                held.revision,
            )])
            .and_then([
                TxnOp::delete(held.key.as_str(), None),
                TxnOp::delete(marker_key_of(&held.key), None),
            ]);
        async move { c.txn(txn).await }
    });
    // Our own deletion does not fire the signal (`releasing`), so only a loss ends this early.
    let answer = tokio::select! {
        answer = delete => Some(answer),
        () = held.monitor.lost() => None,
    };
    held.stop_tasks();
    match answer {
        Some(Ok(answer)) if answer.succeeded() => {
            revoke(&ctx, held.lease).await;
            Ok(())
        }
        // A retried delete whose first attempt was applied (the keepalive still vouched for the
        // lease, so nobody else removed the key).
        Some(Ok(_)) if attempts > 1 && held.monitor.time_left().is_some() => {
            revoke(&ctx, held.lease).await;
            Ok(())
        }
        Some(Ok(_)) => {
            held.monitor.set_releasing(false);
            held.monitor.fire();
            revoke_in_background(&ctx, held.lease);
            Err(Error::Lost)
        }
        None => {
            revoke_in_background(&ctx, held.lease);
            Err(Error::Lost)
        }
        Some(Err(e)) => {
            // The lease is no longer kept alive, so the key goes within the TTL; try to make it
            // sooner in the background.
            revoke_in_background(&ctx, held.lease);
            Err(e)
        }
    }
}

/// Starts a [`revoke`] without waiting for it.
fn revoke_in_background(ctx: &Ctx, lease: i64) {
    let ctx = ctx.clone();
    drop(tokio::spawn(async move { revoke(&ctx, lease).await }));
}

/// Revokes `lease` (deleting its keys); a lease that is already gone is not an error, and other
/// errors are dropped because the lease expires by itself once no longer kept alive.
pub(crate) async fn revoke(ctx: &Ctx, lease: i64) {
    let _ = ctx
        .call(|mut c| async move { c.lease_revoke(lease).await })
        .await;
}

/// Rewrites the own key's value while it is still ours.
pub(crate) async fn rewrite(
    ctx: &Ctx,
    held_key: &str,
    revision: i64,
    lease: i64,
    value: Vec<u8>,
) -> Result<()> {
    let answer = ctx
        .call(|mut c| {
            let txn = Txn::new()
                .when([Compare::create_revision(
                    held_key,
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::put(
                    held_key,
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            async move { c.txn(txn).await }
        })
        .await?;
    if answer.succeeded() {
        Ok(())
    } else {
        Err(Error::Lost)
    }
}

/// The holder of the lock whose queue is `queue`, read in one Txn: the held marker and the first
/// key of the queue. The holder is the acquisition the marker names; it is dead when that key is
/// no longer first in the queue (see `snapshot.rs`). Also returns the holder's own record (with
/// its data) and lease while it is alive.
pub(crate) async fn holder_info(
    ctx: &Ctx,
    queue: &str,
) -> Result<Option<(lock_api::Holder, Option<(Record, i64)>)>> {
    let marker = marker_key(queue);
    let answer = ctx
        .call(|mut c| {
            let txn = Txn::new().and_then([
                TxnOp::get(marker, None),
                TxnOp::get(
                    queue,
                    Some(
                        queue_options()
                            .with_sort(SortTarget::Create, SortOrder::Ascend)
                            .with_limit(1),
                    ),
                ),
            ]);
            async move { c.txn(txn).await }
        })
        .await?;
    let Some(found) = txn_first_kv(&answer.0, 0) else {
        return Ok(None);
    };
    let Ok(marker) = Marker::decode(marker, &found.value) else {
        // Held by someone nobody can describe.
        return Ok(Some((lock_api::Holder::default(), None)));
    };
    let first = txn_first_kv(&answer.0, 1)
        .filter(|kv| leaf_of(&String::from_utf8_lossy(&kv.key)) == marker.key);
    let alive = match first {
        Some(kv) => {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            Some((Record::decode(&key, &kv.value)?, kv.lease))
        }
        None => None,
    };
    let holder = marker.record.holder().dead(alive.is_none());
    Ok(Some((holder, alive)))
}

/// When the lease `lease` expires, as far as the server says now.
pub(crate) async fn lease_expiry(ctx: &Ctx, lease: i64) -> Result<Option<SystemTime>> {
    let answer = ctx
        .call(|mut c| async move { c.lease_time_to_live(lease, None).await })
        .await;
    match answer {
        Ok(a) if a.ttl() >= 0 => Ok(Some(
            SystemTime::now() + Duration::from_secs(u64::try_from(a.ttl()).unwrap_or(0)),
        )),
        Ok(_) | Err(Error::Lost) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_keys_are_outside_the_queue() {
        let queue = "p/lock/a/";
        assert_eq!(marker_key(queue), "p/lock/a");
        assert_eq!(marker_key_of("p/lock/a/00000000000000ff"), "p/lock/a");
        assert!(!marker_key(queue).starts_with(queue));
    }

    #[test]
    fn a_marker_of_another_acquisition_means_owner_died() {
        let record = Record {
            pid: 1,
            host: "h".into(),
            owner: None,
            since: SystemTime::now(),
            data: Vec::new(),
        };
        let marker = |key: &str| PbKeyValue {
            value: marker_bytes(key, &record, record.since),
            ..PbKeyValue::default()
        };
        let (mine, theirs) = (marker("p/lock/a/07"), marker("p/lock/a/08"));
        let garbage = PbKeyValue {
            value: b"garbage".to_vec(),
            ..PbKeyValue::default()
        };
        assert_eq!(claimed(None, "p/lock/a/07"), Acquired::Clean);
        assert_eq!(claimed(Some(&mine), "p/lock/a/07"), Acquired::Clean);
        assert_eq!(claimed(Some(&theirs), "p/lock/a/07"), Acquired::OwnerDied);
        assert_eq!(claimed(Some(&garbage), "p/lock/a/07"), Acquired::OwnerDied);
    }
}
