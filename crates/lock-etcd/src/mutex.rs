//! The mutex recipe over KV, Txn, Watch and Lease (not etcd's `Lock` RPC), on a session.
//!
//! A lock is a key range, its *queue*: `<lock prefix>/` followed by one key per acquisition,
//! `<lock prefix>/<lease hex>-<sequence hex>`, attached to the lease of the session it was made
//! through (`session.rs`; a session uses a name again after a clean release, invariant 2 there, so
//! a key's name says which session, and its CreateRevision which acquisition). The key with the
//! lowest CreateRevision holds the lock; the others wait in CreateRevision order.
//!
//! Invariants:
//! 1. An acquisition creates its key in one Txn guarded by `create_revision == 0`, which also reads
//!    the first key of the queue: an uncontended lock is one Txn (one raft proposal), and so is
//!    an unlock (invariant 6).
//! 2. A waiter watches only its immediate predecessor (the last key created before its own), from
//!    the revision of the read that found it, so no deletion is missed and a release wakes one
//!    waiter, not the herd.
//! 3. A waiter that finds no predecessor left claims the lock in a Txn guarded by its own key's
//!    CreateRevision and lease: if its session's lease expired while it waited (etcd#11456) the
//!    key is gone and the answer is `Error::Lost`, never success.
//! 4. The fencing token is the own key's CreateRevision: etcd revisions only grow, so tokens of
//!    successive holders strictly increase.
//! 5. Every acquisition that does not end holding the lock (timeout, cancellation, error, a
//!    dropped future at any await point) deletes its key, the held marker if it names this
//!    acquisition, and the detection lock if it is this key's, in one Txn (as a release does, so
//!    the waiter its deletion wakes never reads the marker as a dead holder's), by a clean-up
//!    task on the session's runtime.
//!    When the library ends the attempt it waits for that task, but at most [`CLEAN_UP_WAIT`]:
//!    an unreachable cluster must not stretch a timeout or a cancellation by request timeouts.
//!    If the clean-up fails for good the key goes with the session's lease.
//! 6. Release is one Txn that deletes the key and the marker only while the key's CreateRevision is
//!    still ours. The session's lease is not touched: other locks live on it.
//! 7. The *held marker*, the single key `<lock prefix>` (the queue without its trailing `/`), exists
//!    exactly while some holder has claimed the lock and not released it cleanly: the claim writes
//!    it (in the acquisition Txn when the queue was empty, or in the claim Txn after waiting), a
//!    clean release deletes it with the own key in one Txn. A claim that finds a marker left by
//!    another acquisition therefore follows a holder that died or lost its lease while holding the
//!    lock, and reports `Acquired::OwnerDied`. The marker has no lease, so it survives its writer.
//!    It names the claiming acquisition's key and carries a copy of its owner record (pid, host,
//!    owner, claim time), so that a dead holder's lock can be listed, flagged dead, with who held
//!    it.
//! 8. A waiter on a table lock that has waited past its manager's deadlock timeout checks the
//!    wait-for graph under the table's detection lock (`deadlock.rs`); when it closes a cycle it
//!    withdraws its own key in the Txn that releases the detection lock, and fails with
//!    `Error::Deadlock`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::proto::{PbKeyValue, PbTxnOpResponse, PbTxnResponse};
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp};
use lock_api::{Acquired, Error, Result};
use tokio::sync::watch;
use tokio::time::{sleep, timeout_at};

use crate::client::{Ctx, Identity, txn_first_kv, txn_kvs};
use crate::deadlock::{Detector, detection_key};
use crate::lease::{LockMonitor, Monitor, watch_deletion};
use crate::record::{Marker, Record};
use crate::session::{KeyWatch, SessionCore, Suspect};
use crate::snapshot::{Standing, standing};

/// A pause before re-reading the queue after a watch broke.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long an acquisition that ends without the lock waits for its own clean-up before it
/// returns and leaves the rest to the session's runtime: a healthy cluster answers well within
/// it, and an unreachable one does not delay a timeout or a cancellation by a request timeout.
const CLEAN_UP_WAIT: Duration = Duration::from_millis(250);

/// One acquisition that holds the lock.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) key: String,
    pub(crate) revision: i64,
    pub(crate) acquired: Acquired,
    pub(crate) session: Arc<SessionCore>,
    pub(crate) monitor: Arc<LockMonitor>,
    /// The owner record written into the key (without data).
    pub(crate) record: Record,
    /// What may come back as a ghost once this acquisition ends (`session.rs`, invariant 4):
    /// `None` when every write that could was answered at its first attempt.
    ghost: Option<Suspect>,
    /// The watch on our key, opened a while into the hold.
    watch: Arc<KeyWatch>,
}

impl Held {
    /// Hands the ghost suspect to the session; `clean` says whether the lock was released
    /// cleanly (then a marker it claimed must not exist), or lost (then the marker stays, the
    /// sign of a holder that did not release).
    fn end(&mut self, clean: bool) {
        if clean && self.ghost.is_none() {
            // Nothing of this acquisition can come back: its name may serve the next one.
            self.session.reuse_key(queue_of(&self.key), &self.key);
        }
        if let Some(mut ghost) = self.ghost.take() {
            if !clean {
                ghost.marker = None;
            }
            self.session.suspect(ghost);
        }
    }

    /// Stops the key watch.
    pub(crate) fn stop_tasks(&self) {
        self.watch.stop();
    }

    /// The session lease the key is attached to.
    pub(crate) fn lease(&self) -> i64 {
        self.session.lease()
    }

    /// What [`read_info`] needs, detached from the handle's state.
    pub(crate) fn view(&self) -> HeldView {
        HeldView {
            session: Arc::clone(&self.session),
            key: self.key.clone(),
            revision: self.revision,
            acquired: self.acquired,
            monitor: Arc::clone(&self.monitor),
        }
    }
}

/// The parts of a [`Held`] an `info` call reads.
#[derive(Debug, Clone)]
pub(crate) struct HeldView {
    session: Arc<SessionCore>,
    key: String,
    revision: i64,
    acquired: Acquired,
    monitor: Arc<LockMonitor>,
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
    /// For the locks of a table: its header key and the CreateRevision the handle opened. The
    /// acquisition Txn compares it, so a handle of a table removed since (or removed and created
    /// again) is `NotFound` and writes nothing.
    pub(crate) table: Option<(String, i64)>,
}

impl Target {
    /// The named lock `name` under `prefix` (`<prefix>/lock/<name>/`), with a new owner of
    /// this process: what `EtcdLocks::named`, `EtcdSession::named` and the async `Session` lock.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a name [`crate::validate_name`] refuses.
    pub(crate) fn named(prefix: &str, name: &str, identity: &Identity) -> Result<Target> {
        crate::validate_name(name)?;
        Ok(Target {
            queue: format!("{prefix}/lock/{name}/"),
            owner: identity.new_owner(),
            detector: None,
            table: None,
        })
    }
}

/// How long an acquisition may wait for the holder.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// Do not wait at all (`try_lock`).
    Never,
    /// Wait until the deadline, or forever.
    Until(Option<Instant>),
}

impl Wait {
    /// Wait at most `timeout` from now: forever when the deadline is past what the clock can
    /// hold, or so close to its end that tokio's timer, which rounds a deadline up to the next
    /// millisecond, could not add to it.
    pub(crate) fn at_most(timeout: Duration) -> Wait {
        let deadline = Instant::now()
            .checked_add(timeout)
            .filter(|d| d.checked_add(Duration::from_secs(1)).is_some());
        Wait::Until(deadline)
    }
}

/// A request to give up, from another thread (the blocking API's cancellation).
pub(crate) type Cancel = watch::Receiver<bool>;

/// Why an acquisition failed.
#[derive(Debug)]
pub(crate) enum AcquireError {
    /// The session's lease was gone before the acquisition wrote anything: a caller with a
    /// replaceable session (the blocking API's default one) may retry on a new session.
    StaleSession,
    /// Anything else.
    Other(Error),
}

impl From<Error> for AcquireError {
    fn from(e: Error) -> Self {
        AcquireError::Other(e)
    }
}

impl From<AcquireError> for Error {
    fn from(e: AcquireError) -> Self {
        match e {
            AcquireError::StaleSession => Error::Lost,
            AcquireError::Other(e) => e,
        }
    }
}

/// The marker the acquisition Txn found: the nested Txn's read, which ran only when there was one.
fn previous_marker(resp: &PbTxnResponse) -> Option<&PbKeyValue> {
    match resp.responses.first()?.response.as_ref()? {
        PbTxnOpResponse::ResponseTxn(nested) if !nested.succeeded => txn_first_kv(nested, 0),
        _ => None,
    }
}

/// Whether the claim Txn wrote the marker: its second response is the nested Txn that writes it
/// when there is none (succeeded) or, in its else branch, when it is of this version.
fn marker_written(resp: &PbTxnResponse) -> bool {
    let Some(outer) = nested_txn(resp, 1) else {
        return false;
    };
    outer.succeeded || nested_txn(outer, 0).is_some_and(|inner| inner.succeeded)
}

/// The nested Txn answer of a Txn's `index`-th response.
fn nested_txn(resp: &PbTxnResponse, index: usize) -> Option<&PbTxnResponse> {
    match resp.responses.get(index)?.response.as_ref()? {
        PbTxnOpResponse::ResponseTxn(t) => Some(t),
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

/// The queue of the lock whose own key is `key`: the key up to its last `/`, included.
fn queue_of(key: &str) -> &str {
    key.rfind('/').map_or(key, |at| &key[..=at])
}

/// The last segment of an own key (`<lock prefix>/<leaf>`): what a marker names.
pub(crate) fn leaf_of(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(_, leaf)| leaf)
}

/// How a claim by the acquisition `own_key`, created at `own_revision`, went, from the marker it
/// found (invariant 7): a marker naming another acquisition that was ahead of ours (or one of
/// this version's that does not parse: the claim only replaces markers that start with this
/// version's first line) was left by a holder that did not release cleanly. A marker naming a key
/// created after ours was written by a newcomer in the gap before our claim: no death.
fn claimed(previous_marker: Option<&PbKeyValue>, own_key: &str, own_revision: i64) -> Acquired {
    let Some(kv) = previous_marker else {
        return Acquired::Clean;
    };
    match Marker::decode(own_key, &kv.value) {
        Ok(marker) if marker.key == leaf_of(own_key) => Acquired::Clean,
        Ok(marker) if marker.rev.unwrap_or(kv.mod_revision) > own_revision => Acquired::Clean,
        _ => Acquired::OwnerDied,
    }
}

/// The marker bytes an acquisition writes when it claims the lock at `since`; `revision` is its
/// key's CreateRevision when the marker is written by a later Txn than the key's.
fn marker_bytes(
    own_key: &str,
    record: &Record,
    since: SystemTime,
    revision: Option<i64>,
) -> Vec<u8> {
    Marker {
        key: leaf_of(own_key).to_owned(),
        rev: revision,
        record: Record {
            since,
            data: Vec::new(),
            ..record.clone()
        },
    }
    .encode()
}

/// What a cancelled or failed acquisition may have left in etcd, and the clean-up that removes
/// it (invariant 5). Dropped while armed, it spawns the clean-up on the session's runtime.
struct Pending {
    session: Arc<SessionCore>,
    key: String,
    marker: String,
    /// The detection lock's key, for table locks.
    detection: Option<String>,
    /// Whether a Txn that may come back as a ghost went unanswered at its first attempt.
    unsure: bool,
    /// Whether a Txn taking the detection lock did.
    detection_unsure: bool,
    armed: bool,
}

impl Pending {
    /// What this acquisition may have written that a late copy of a request could write again.
    fn suspect(&self) -> Suspect {
        Suspect {
            key: self.key.clone(),
            marker: Some(self.marker.clone()),
            detection: self.detection.clone().filter(|_| self.detection_unsure),
        }
    }

    fn job(&mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.armed = false;
        // A Txn that was in flight when the attempt ended, or answered only after a retry, may
        // still be applied late (`session.rs`, invariant 4).
        if self.unsure || self.detection_unsure {
            self.session.suspect(self.suspect());
        }
        let ctx = self.session.ctx.clone();
        let written = Suspect {
            key: std::mem::take(&mut self.key),
            marker: Some(std::mem::take(&mut self.marker)),
            detection: self.detection.take(),
        };
        async move { written.erase_through(&ctx, true).await }
    }

    /// Cleans up on the session's runtime, waiting at most [`CLEAN_UP_WAIT`] for it to finish.
    async fn clean_up(mut self) {
        let job = self.job();
        let (done, finished) = tokio::sync::oneshot::channel();
        self.session.spawn_cleanup(async move {
            job.await;
            let _ = done.send(());
        });
        let _ = tokio::time::timeout(CLEAN_UP_WAIT, finished).await;
    }

    /// The acquisition ended holding the lock: nothing to clean up.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            let job = self.job();
            self.session.spawn_cleanup(job);
        }
    }
}

/// Acquires the lock `target` names through `session`.
///
/// Returns `Ok(None)` when `wait` is [`Wait::Never`] and someone holds it, or when `cancel`
/// fired; then, as after any error, the attempt's clean-up has run or, if etcd is slow to
/// answer, goes on on the session's runtime (invariant 5). The future may be dropped at any
/// await point: the clean-up then runs on the session's runtime.
pub(crate) async fn acquire(
    session: Arc<SessionCore>,
    target: &Target,
    wait: Wait,
    cancel: Option<Cancel>,
) -> Result<Option<Held>, AcquireError> {
    let ctx = &session.ctx;
    let queue = target.queue.as_str();
    if session.is_lost() {
        return Err(AcquireError::StaleSession);
    }
    let deadline = match wait {
        Wait::Never => None,
        Wait::Until(deadline) => deadline,
    };
    if matches!(wait, Wait::Never) {
        // Cheap refusal without writing anything while the lock is visibly held.
        let answer = ctx
            .call(
                |mut c| async move { c.get(queue, Some(queue_options().with_count_only())).await },
            )
            .await?;
        if answer.count() > 0 {
            return Ok(None);
        }
    }
    let key = session.next_key(queue);
    let since = SystemTime::now();
    let record = Record {
        pid: ctx.identity.pid,
        pid_ns: ctx.identity.pid_ns,
        host: ctx.identity.host.clone(),
        owner: Some(target.owner.to_string()),
        since,
        data: Vec::new(),
    };
    let mut pending = Pending {
        session: Arc::clone(&session),
        key: key.clone(),
        marker: marker_key(queue).to_owned(),
        detection: target.detector.as_ref().map(|d| detection_key(&d.root)),
        unsure: false,
        detection_unsure: false,
        armed: true,
    };
    let outcome = {
        // Boxed: the attempt's state is large (in debug builds hundreds of kilobytes), and a
        // caller's stack holds the future that awaits it.
        let attempt = Box::pin(enqueue_and_wait(
            &session,
            target,
            &key,
            &record,
            wait,
            &mut pending,
        ));
        let attempt = async {
            match deadline {
                Some(d) => timeout_at(d.into(), attempt)
                    .await
                    .unwrap_or(Err(AcquireError::Other(Error::Timeout))),
                None => attempt.await,
            }
        };
        match cancel {
            None => attempt.await,
            Some(mut cancel) => {
                tokio::select! {
                    outcome = attempt => outcome,
                    _ = cancel.wait_for(|c| *c) => Ok(None),
                }
            }
        }
    };
    match outcome {
        Ok(Some((revision, acquired))) => {
            pending.disarm();
            let ghost = (pending.unsure || pending.detection_unsure).then(|| pending.suspect());
            let monitor = LockMonitor::new(&session.monitor);
            let watch = session.watch_key_later(&key, revision, &monitor);
            Ok(Some(Held {
                key,
                revision,
                acquired,
                session,
                monitor,
                record,
                ghost,
                watch,
            }))
        }
        other => {
            match &other {
                // etcd said the lease is gone.
                Err(AcquireError::StaleSession) => session.monitor.fire(),
                // Our key is gone: if with the lease, the session is over.
                Err(AcquireError::Other(Error::Lost)) => session.check_lease().await,
                _ => {}
            }
            pending.clean_up().await;
            other.map(|_| None)
        }
    }
}

/// The key an acquisition waits behind, and its CreateRevision: the name may be used again by a
/// later acquisition of the same session once this one is released (`session.rs`, invariant 2).
struct Predecessor {
    key: Vec<u8>,
    revision: i64,
}

/// The outcome of a claim Txn.
enum Claim {
    /// The lock is ours.
    Claimed(Acquired),
    /// Someone is still ahead of us (`None`: not found in the same Txn, which cannot happen
    /// while the compare holds; the caller pauses and claims again).
    Behind(Option<Predecessor>),
}

/// Creates the own key, then waits for the turn; returns the own key's CreateRevision once the
/// lock is ours, `None` when `wait` is [`Wait::Never`] and it is not.
///
/// No read is on the way: the acquisition Txn returns the immediate predecessor with its own
/// key, and a claim Txn that finds a key still ahead of ours returns that one.
async fn enqueue_and_wait(
    session: &SessionCore,
    target: &Target,
    key: &str,
    record: &Record,
    wait: Wait,
    pending: &mut Pending,
) -> Result<Option<(i64, Acquired)>, AcquireError> {
    let ctx = &session.ctx;
    let lease = session.lease();
    let queue = target.queue.as_str();
    let value = record.encode();
    let marker = marker_key(queue);
    let mark = marker_bytes(key, record, record.since, None);
    let mut attempts = 0u32;
    let mut when = vec![Compare::create_revision(key, CompareOp::Equal, 0)];
    let mut or_else = vec![TxnOp::get(key, Some(GetOptions::new().with_keys_only()))];
    if let Some((header, created)) = &target.table {
        when.push(Compare::create_revision(
            header.as_str(),
            CompareOp::Equal,
            *created,
        ));
        or_else.push(TxnOp::get(
            header.as_str(),
            Some(GetOptions::new().with_keys_only()),
        ));
    }
    // Set while the Txn is in flight: the future may be dropped there.
    pending.unsure = true;
    let answer = ctx
        .call(|mut c| {
            attempts += 1;
            let txn = Txn::new()
                .when(when.clone())
                .and_then([
                    // 0: claim the marker if there is none, else read it (invariant 7). A
                    // compare on one key: a compare over the queue's range costs etcd 3.4 far
                    // more. When someone is ahead of us the marker written here is premature,
                    // and the claim of the first in the queue overwrites it.
                    TxnOp::txn(
                        Txn::new()
                            .when([Compare::create_revision(marker, CompareOp::Equal, 0)])
                            .and_then([TxnOp::put(marker, mark.clone(), None)])
                            .or_else([TxnOp::get(marker, None)]),
                    ),
                    TxnOp::put(
                        key,
                        value.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                    // 2: the last two keys of the queue: ours and our predecessor, if any.
                    TxnOp::get(
                        queue,
                        Some(
                            queue_options()
                                .with_sort(SortTarget::Create, SortOrder::Descend)
                                .with_limit(2)
                                .with_keys_only(),
                        ),
                    ),
                ])
                .or_else(or_else.clone());
            async move { c.txn(txn).await }
        })
        .await
        .map_err(|e| match e {
            // The put named a lease etcd no longer has. Nothing was written if this was the
            // first attempt; after an unanswered one, our key may have been written and gone
            // with the lease while we waited unknowingly, and such a waiter is told `Lost`.
            Error::Lost if attempts == 1 => AcquireError::StaleSession,
            e => AcquireError::Other(e),
        })?;
    // An earlier attempt may still be applied late by a member that did not answer.
    pending.unsure = attempts > 1;
    let raw = &answer.0;
    let txn_revision = raw.header.as_ref().map_or(0, |h| h.revision);
    let revision = if raw.succeeded {
        // Every write of a Txn happens at the Txn's revision.
        txn_revision
    } else if let Some(kv) = txn_first_kv(raw, 0) {
        // A retried Txn whose first attempt was applied: our key exists already.
        kv.create_revision
    } else if let Some((header, created)) = &target.table
        && txn_first_kv(raw, 1).is_none_or(|kv| kv.create_revision != *created)
    {
        return Err(Error::NotFound {
            what: format!(
                "etcd lock table of {header} (removed since this handle opened it): lock {queue}"
            ),
        }
        .into());
    } else {
        0
    };
    if revision <= 0 {
        return Err(Error::unavailable(format!(
            "etcd answered the acquisition of {key} without a revision"
        ))
        .into());
    }
    let mut predecessor = None;
    let mut first = false;
    if raw.succeeded {
        let last = txn_kvs(raw, 2);
        first = last.len() == 1 && last[0].create_revision == revision;
        if first && previous_marker(raw).is_none() {
            // Invariant 1: the Txn itself saw our key alone in the queue, and claimed the marker.
            return Ok(Some((revision, Acquired::Clean)));
        }
        predecessor = last
            .iter()
            .find(|kv| kv.create_revision < revision)
            .map(|kv| Predecessor {
                key: kv.key.clone(),
                revision: kv.create_revision,
            });
    }
    if matches!(wait, Wait::Never) && !first {
        return Ok(None);
    }
    // First in the queue but a marker is there (a holder that died): claim it below.
    let mut next_check = target
        .detector
        .as_ref()
        .and_then(|d| d.first_check(Instant::now()));
    loop {
        if let Some(ahead) = predecessor.take() {
            // Invariant 2: wait for the predecessor to go.
            let turn = wait_gone(ctx, ahead, &session.monitor);
            match &target.detector {
                None => turn.await?,
                Some(detector) => {
                    let unsure = &mut pending.detection_unsure;
                    detector
                        .wait(ctx, turn, &mut next_check, key, revision, lease, unsure)
                        .await?;
                }
            }
        }
        // Invariant 3: claim only if our key (hence our lease) still exists and no key is ahead
        // of it; the same Txn claims the marker (invariant 7), recording when.
        let mark = marker_bytes(key, record, SystemTime::now(), Some(revision));
        match claim(ctx, queue, key, revision, lease, mark).await? {
            Some(Claim::Claimed(acquired)) => {
                if session.is_lost() {
                    return Err(Error::Lost.into());
                }
                return Ok(Some((revision, acquired)));
            }
            Some(Claim::Behind(_)) if matches!(wait, Wait::Never) => return Ok(None),
            Some(Claim::Behind(Some(ahead))) => predecessor = Some(ahead),
            Some(Claim::Behind(None)) => sleep(RETRY_PAUSE).await,
            None => return Err(Error::Lost.into()),
        }
    }
}

/// One claim Txn: guarded by our key's CreateRevision and lease and by every key of the queue
/// being ours or later (`create_revision > ours - 1` over the prefix). `None` when our key is
/// gone (etcd#11456: never success).
async fn claim(
    ctx: &Ctx,
    queue: &str,
    key: &str,
    revision: i64,
    lease: i64,
    mark: Vec<u8>,
) -> Result<Option<Claim>> {
    let marker = marker_key(queue);
    let (low, high) = Marker::version_bounds();
    let answer = ctx
        .call(|mut c| {
            // The marker is claimed when there is none or it is one of this format version;
            // any other value is state lock-etcd did not write (another version's, or garbage),
            // which it reports and never overwrites.
            let ours_or_none = Txn::new()
                .when([Compare::create_revision(marker, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(marker, mark.clone(), None)])
                .or_else([TxnOp::txn(
                    Txn::new()
                        .when([
                            Compare::value(marker, CompareOp::Greater, low.clone()),
                            Compare::value(marker, CompareOp::Less, high.clone()),
                        ])
                        .and_then([TxnOp::put(marker, mark.clone(), None)]),
                )]);
            let txn = Txn::new()
                .when([
                    Compare::create_revision(key, CompareOp::Equal, revision),
                    Compare::lease(key, CompareOp::Equal, lease),
                    Compare::create_revision(queue, CompareOp::Greater, revision - 1).with_prefix(),
                ])
                .and_then([TxnOp::get(marker, None), TxnOp::txn(ours_or_none)])
                .or_else([
                    TxnOp::get(key, Some(GetOptions::new().with_keys_only())),
                    TxnOp::get(
                        queue,
                        Some(
                            queue_options()
                                .with_sort(SortTarget::Create, SortOrder::Descend)
                                .with_max_create_revision(revision - 1)
                                .with_limit(1)
                                .with_keys_only(),
                        ),
                    ),
                ]);
            async move { c.txn(txn).await }
        })
        .await?;
    let raw = &answer.0;
    if raw.succeeded {
        let previous = txn_first_kv(raw, 0);
        if !marker_written(raw) {
            // Not claimed: say why, from the marker that was left in place.
            let found = previous.map_or(&[][..], |kv| kv.value.as_slice());
            return Err(match Marker::decode(marker, found) {
                Err(e) => e,
                // Changed between the compare and the read: cannot be, the Txn is atomic.
                Ok(_) => Error::corrupt(format!("held marker {marker}: not claimable")),
            });
        }
        return Ok(Some(Claim::Claimed(claimed(previous, key, revision))));
    }
    let ours =
        txn_first_kv(raw, 0).is_some_and(|kv| kv.create_revision == revision && kv.lease == lease);
    if !ours {
        return Ok(None);
    }
    Ok(Some(Claim::Behind(txn_first_kv(raw, 1).map(|kv| {
        Predecessor {
            key: kv.key.clone(),
            revision: kv.create_revision,
        }
    }))))
}

/// Resolves when `ahead` is deleted, or when its watch breaks (then after a pause, so a broken
/// cluster is not hammered; the claim that follows finds out where we stand), or fails with
/// `Lost` when the session is lost meanwhile.
async fn wait_gone(ctx: &Ctx, ahead: Predecessor, session: &Monitor) -> Result<()> {
    if session.is_lost() {
        return Err(Error::Lost);
    }
    tokio::select! {
        // From now: served as events happen (see `watch_deletion`).
        deleted = watch_deletion(ctx, ahead.key, None, Some(ahead.revision)) => {
            if !deleted {
                sleep(RETRY_PAUSE).await;
            }
            Ok(())
        }
        () = session.lost() => Err(Error::Lost),
    }
}

/// Releases a held lock (invariant 6): one Txn.
///
/// A lock that is lost, before or during the release, returns [`Error::Lost`] at once: the
/// acquisition is over either way. When etcd does not answer, the release goes on in the
/// background until it succeeds or the session is lost (then the key goes with the lease), and
/// this returns [`Error::Unavailable`].
pub(crate) async fn release(mut held: Held) -> Result<()> {
    let ctx = held.session.ctx.clone();
    held.monitor.set_releasing(true);
    if held.monitor.is_lost() {
        held.stop_tasks();
        held.end(false);
        return Err(Error::Lost);
    }
    let mut attempts = 0u32;
    let delete = delete_held(&ctx, &held.key, held.revision, &mut attempts);
    // Our own deletion does not fire the signal (`releasing`), so only a loss ends this early.
    let answer = tokio::select! {
        answer = delete => Some(answer),
        () = held.monitor.lost() => None,
    };
    held.stop_tasks();
    match answer {
        Some(Ok(true)) => {
            held.end(true);
            Ok(())
        }
        // A retried delete whose first attempt was applied (the session still vouched for the
        // lease, so nobody else removed the key).
        Some(Ok(false)) if attempts > 1 && !held.monitor.is_lost() => {
            held.end(true);
            Ok(())
        }
        Some(Ok(false)) => {
            held.monitor.set_releasing(false);
            held.monitor.fire();
            held.end(false);
            Err(Error::Lost)
        }
        None => {
            held.end(false);
            Err(Error::Lost)
        }
        Some(Err(e)) => {
            let session = Arc::clone(&held.session);
            session.spawn(release_later(held));
            Err(e)
        }
    }
}

/// The release Txn: deletes the own key and the marker while the key is ours; true when it did.
async fn delete_held(ctx: &Ctx, key: &str, revision: i64, attempts: &mut u32) -> Result<bool> {
    let answer = ctx
        .call(|mut c| {
            *attempts += 1;
            let txn = Txn::new()
                .when([Compare::create_revision(key, CompareOp::Equal, revision)])
                .and_then([
                    TxnOp::delete(key, None),
                    TxnOp::delete(marker_key_of(key), None),
                ]);
            async move { c.txn(txn).await }
        })
        .await?;
    Ok(answer.succeeded())
}

/// Retries a release that etcd did not answer, until it is done or the session is lost.
async fn release_later(mut held: Held) {
    let ctx = held.session.ctx.clone();
    let mut pause = RETRY_PAUSE;
    while !held.session.is_lost() {
        let mut attempts = 0;
        if let Ok(deleted) = delete_held(&ctx, &held.key, held.revision, &mut attempts).await {
            held.end(deleted || attempts > 1);
            return;
        }
        sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
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
    // A marker of another version is `Incompatible`, garbage `Corrupt`: it was reported as a
    // holder nobody knows, alive.
    let marker = Marker::decode(marker, &found.value)?;
    let first = txn_first_kv(&answer.0, 1);
    let first_leaf = first.map(|kv| leaf_of(&String::from_utf8_lossy(&kv.key)).to_owned());
    let head = first
        .zip(first_leaf.as_deref())
        .map(|(kv, leaf)| (leaf, kv.create_revision));
    match standing(&marker, found.mod_revision, head) {
        Standing::Premature => Ok(None),
        Standing::Dead => Ok(Some((marker.record.holder(&ctx.identity).dead(true), None))),
        Standing::Alive => {
            let Some(kv) = first else {
                return Ok(None);
            };
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let record = Record::decode(&key, &kv.value)?;
            Ok(Some((
                marker.record.holder(&ctx.identity),
                Some((record, kv.lease)),
            )))
        }
    }
}

/// The holder's own view of `held`, read in one Txn: its key (still ours, with its data) and the
/// held marker (the claim time); `expires` comes from the session's deadline, in ms.
pub(crate) async fn read_info(held: &HeldView) -> Result<crate::Info> {
    let ctx = &held.session.ctx;
    let key = held.key.as_str();
    let marker = marker_key_of(key);
    let answer = ctx
        .call(|mut c| {
            let txn = Txn::new().and_then([TxnOp::get(key, None), TxnOp::get(marker, None)]);
            async move { c.txn(txn).await }
        })
        .await?;
    let own = txn_first_kv(&answer.0, 0).filter(|kv| kv.create_revision == held.revision);
    let Some(own) = own else {
        held.monitor.key_deleted();
        return Err(Error::Lost);
    };
    let record = Record::decode(key, &own.value)?;
    let since = txn_first_kv(&answer.0, 1)
        .and_then(|kv| Marker::decode(marker, &kv.value).ok())
        .filter(|m| m.key == leaf_of(key))
        .map_or(record.since, |m| m.record.since);
    let expires = match (held.monitor.is_lost(), held.session.expires()) {
        (false, Some(expires)) => crate::info::to_ms(expires),
        _ => return Err(Error::Lost),
    };
    let mut holder = record.holder(&ctx.identity).since(since).expires(expires);
    holder.dead = false;
    Ok(crate::Info {
        holder,
        token: u64::try_from(held.revision).unwrap_or(0),
        acquired: held.acquired,
        data: record.data,
    })
}

/// When the lease `lease` expires: in ms from the session when it is one of this process's,
/// otherwise as the server says now (whole seconds).
pub(crate) async fn holder_expiry(ctx: &Ctx, lease: i64) -> Result<Option<SystemTime>> {
    if let Some(session) = SessionCore::find(lease) {
        return Ok(session.expires().map(crate::info::to_ms));
    }
    lease_expiry(ctx, lease).await
}

/// When the lease `lease` expires, as far as the server says now.
pub(crate) async fn lease_expiry(ctx: &Ctx, lease: i64) -> Result<Option<SystemTime>> {
    let answer = ctx
        .call(|mut c| async move { c.lease_time_to_live(lease, None).await })
        .await;
    match answer {
        Ok(a) if a.ttl() >= 0 => Ok(Some(
            SystemTime::now() + crate::lease::answered_ttl(a.ttl()),
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
        assert_eq!(queue_of("p/lock/a/00000000000000ff-2"), queue);
        assert!(!marker_key(queue).starts_with(queue));
    }

    #[test]
    fn a_marker_of_another_acquisition_means_owner_died() {
        let record = Record {
            pid: 1,
            pid_ns: 0,
            host: "h".into(),
            owner: None,
            since: SystemTime::now(),
            data: Vec::new(),
        };
        // Markers written at revision 10 by the Txn that created the named key.
        let marker = |key: &str, rev: Option<i64>| PbKeyValue {
            value: marker_bytes(key, &record, record.since, rev),
            mod_revision: 10,
            ..PbKeyValue::default()
        };
        let mine = marker("p/lock/a/07", None);
        let theirs = marker("p/lock/a/08", None);
        let garbage = PbKeyValue {
            value: b"garbage".to_vec(),
            ..PbKeyValue::default()
        };
        assert_eq!(claimed(None, "p/lock/a/07", 20), Acquired::Clean);
        assert_eq!(claimed(Some(&mine), "p/lock/a/07", 20), Acquired::Clean);
        assert_eq!(
            claimed(Some(&theirs), "p/lock/a/07", 20),
            Acquired::OwnerDied
        );
        assert_eq!(
            claimed(Some(&garbage), "p/lock/a/07", 20),
            Acquired::OwnerDied
        );
        // Written by a newcomer created after us (revision 10 > 5): premature, no death.
        assert_eq!(claimed(Some(&theirs), "p/lock/a/07", 5), Acquired::Clean);
        // A marker that says its key was created at 3, although written at 10: ahead of us.
        let waited = marker("p/lock/a/08", Some(3));
        assert_eq!(
            claimed(Some(&waited), "p/lock/a/07", 5),
            Acquired::OwnerDied
        );
    }
}
