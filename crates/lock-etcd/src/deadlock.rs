//! Deadlock detection across processes: a per-table detection lock in etcd and one snapshot.
//!
//! A waiter on a table lock that has waited past its manager's deadlock timeout:
//! 1. takes the table's *detection lock*, the key `<root>/deadlock`, created in a Txn guarded by
//!    `create_revision == 0` and attached to the waiter's session lease (so a detector that dies
//!    frees it within its TTL); its value is the detector's own key, which no one else writes.
//!    A detection lock held by a live detector (leased, naming a queue key of the table that
//!    exists on the same lease and is older) is waited for by a watch on its deletion, writing
//!    nothing; anything else there is stale or foreign and is taken over by a Txn guarded by its
//!    ModRevision (a leaseless key used to disable detection for good, and waiters retried a
//!    write Txn every 20 ms while a check ran);
//! 2. reads one snapshot: one Range over `<root>/lock/`, one revision (`snapshot.rs`);
//! 3. runs [`find_cycle`] from its own owner key. If it closes a cycle, one Txn deletes its own
//!    waiter key *and* the detection lock, guarded by both still being its own: the withdrawal is
//!    visible before (in fact at the same revision as) the release, so the next detector, which
//!    can only read after taking the lock, sees the cycle broken. The waiter then fails with
//!    `Error::Deadlock`. Otherwise it deletes the detection lock and waits on, checking again
//!    each further timeout period.
//!
//! Checks are serialised by the detection lock, so two members of one cycle cannot both abort;
//! exactly one member, the first to check, is the victim. A dead holder (its key gone with its
//! lease) is flagged dead in the snapshot and is no edge, so it gives `OwnerDied`, never
//! `Deadlock`; a wait that resolves before the timeout is never checked, and one that resolves
//! during a check has no live holder on the lock it waited for, hence no edge.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::proto::PbKeyValue;
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use lock_api::{Cycle, Error, Result, find_cycle};
use tokio::time::{sleep, sleep_until};

use crate::client::{Ctx, range_all, txn_first_kv};
use crate::lease::watch_deletion;
use crate::snapshot::lock_states;
use crate::table::parse_decimal;

/// What one try for the detection lock found.
enum Taken {
    /// This waiter holds it.
    Ours,
    /// A live detector holds it, the key created at this revision: wait for its deletion.
    Busy(i64),
    /// It changed under the try (released, or taken over by another waiter): try again.
    Again,
}

/// How long a blocked `lock` waits before it checks for a deadlock, unless set otherwise
/// (PostgreSQL's `deadlock_timeout`).
pub const DEFAULT_DEADLOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// The first pause before a detector tries again for the detection lock when the watch on
/// another detector's hold broke (a detection lock that is held is waited for by a watch, not by
/// trying again: trying every 20 ms cost a raft proposal per waiter each time); it doubles up
/// to [`TAKE_RETRY_MAX`].
const TAKE_RETRY: Duration = Duration::from_millis(20);
const TAKE_RETRY_MAX: Duration = Duration::from_secs(1);

/// How often a waiter with detection turned off looks whether it was turned on.
const OFF_RECHECK: Duration = Duration::from_secs(1);

/// What a table's waiter needs to check for deadlocks.
#[derive(Debug, Clone)]
pub(crate) struct Detector {
    /// The table's root key, `<prefix>/table/<store>`.
    pub(crate) root: Arc<str>,
    /// The table's capacity (ids at or beyond it are no lock of the table).
    pub(crate) capacity: u32,
    /// The owner key of the waiter's manager: its node in the wait-for graph.
    pub(crate) owner: Arc<str>,
    /// The manager's deadlock timeout in milliseconds; 0 is off.
    pub(crate) timeout_ms: Arc<AtomicU64>,
}

/// Puts `own_key` at the detection key `key` on `lease` when `compare` holds, else reads the
/// key: one Txn, retried by `ctx` on transient errors. `unsure` is set while the Txn is in flight
/// (the future may be dropped there) and stays set if an attempt before the last may still be
/// applied by a member that was silent.
async fn put_when(
    ctx: &Ctx,
    key: &str,
    own_key: &str,
    lease: i64,
    compare: Compare,
    unsure: &mut bool,
) -> Result<etcd_client::TxnResponse> {
    let was = *unsure;
    *unsure = true;
    let mut attempts = 0u32;
    let answer = ctx
        .call(|mut c| {
            attempts += 1;
            let txn = Txn::new()
                .when([compare.clone()])
                .and_then([TxnOp::put(
                    key,
                    own_key,
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key, Some(GetOptions::new()))]);
            async move { c.txn(txn).await }
        })
        .await?;
    *unsure = was || attempts > 1;
    Ok(answer)
}

/// The key of a table's detection lock.
pub(crate) fn detection_key(root: &str) -> String {
    format!("{root}/deadlock")
}

/// Milliseconds for a timeout: 0 only for zero, so a nonzero timeout below a millisecond does
/// not turn detection off.
pub(crate) fn timeout_ms(timeout: Duration) -> u64 {
    match timeout.as_millis() {
        0 if timeout.is_zero() => 0,
        0 => 1,
        ms => u64::try_from(ms).unwrap_or(u64::MAX),
    }
}

impl Detector {
    fn next_check(&self, from: Instant) -> Option<Instant> {
        match self.timeout_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => from.checked_add(Duration::from_millis(ms)),
        }
    }

    /// When a waiter that started waiting at `since` checks first.
    pub(crate) fn first_check(&self, since: Instant) -> Option<Instant> {
        self.next_check(since)
    }

    /// Waits for `turn` (one stretch of the wait for the lock), checking for a deadlock when
    /// `next` (the time of the next check, kept by the caller across stretches) comes, and
    /// each deadlock timeout after a check. `own_key` (created at `revision`, attached to
    /// `lease`) is the waiter.
    ///
    /// The check itself is never cut short by the turn: once the detection lock is taken, it is
    /// released before this returns. `unsure` is set when a Txn that takes the detection lock
    /// went unanswered on some member, which may still apply it later (see `session.rs`).
    #[allow(clippy::too_many_arguments)] // reason: one call site; a struct would only rename them
    pub(crate) async fn wait(
        &self,
        ctx: &Ctx,
        turn: impl Future<Output = Result<()>>,
        next: &mut Option<Instant>,
        own_key: &str,
        revision: i64,
        lease: i64,
        unsure: &mut bool,
    ) -> Result<()> {
        tokio::pin!(turn);
        loop {
            match *next {
                None => {
                    tokio::select! {
                        result = &mut turn => return result,
                        () = sleep(OFF_RECHECK) => {
                            *next = self.next_check(Instant::now());
                            continue;
                        }
                    }
                }
                Some(at) => {
                    tokio::select! {
                        result = &mut turn => return result,
                        () = sleep_until(at.into()) => {}
                    }
                }
            }
            // Take the detection lock; while another detector holds it, wait for its release by
            // a watch (no write while it is held), and the turn may still come meanwhile.
            let mut pause = TAKE_RETRY;
            loop {
                match self.take(ctx, own_key, lease, unsure).await? {
                    Taken::Ours => break,
                    Taken::Again => continue,
                    Taken::Busy(created) => {
                        let key = detection_key(&self.root).into_bytes();
                        let released = tokio::select! {
                            result = &mut turn => return result,
                            released = watch_deletion(ctx, key, None, Some(created)) => released,
                        };
                        if released {
                            pause = TAKE_RETRY;
                            continue;
                        }
                        // The watch broke (a member failing): pause, then look again.
                        tokio::select! {
                            result = &mut turn => return result,
                            () = sleep(pause) => {}
                        }
                        pause = (pause * 2).min(TAKE_RETRY_MAX);
                    }
                }
            }
            if let Some(cycle) = self.check(ctx, own_key, revision).await? {
                return Err(Error::Deadlock { cycle });
            }
            *next = self.next_check(Instant::now());
        }
    }

    /// Tries once to take the detection lock.
    ///
    /// A detection key held by someone else is a live detector's only if it has a lease and
    /// names a queue key of this table that still exists on that lease and was created before
    /// it (a detector holds the lock only while its waiting key exists, on the same lease; a
    /// name made again later is a later acquisition). Anything else (no lease: nothing
    /// lock-etcd writes; a value that is no queue key; a named key gone or on another lease, as
    /// after a release that failed for good) is stale or foreign and is taken over, by a Txn
    /// guarded by the key's ModRevision, so of several waiters that saw it one wins.
    async fn take(&self, ctx: &Ctx, own_key: &str, lease: i64, unsure: &mut bool) -> Result<Taken> {
        let key = detection_key(&self.root);
        let key = key.as_str();
        let create = Compare::create_revision(key, CompareOp::Equal, 0);
        let answer = put_when(ctx, key, own_key, lease, create, unsure).await?;
        if answer.0.succeeded {
            return Ok(Taken::Ours);
        }
        let Some(found) = txn_first_kv(&answer.0, 0) else {
            return Ok(Taken::Again);
        };
        // A retried Txn whose first attempt was applied finds its own value there.
        if found.value == own_key.as_bytes() {
            return Ok(Taken::Ours);
        }
        if self.live(ctx, found).await? {
            return Ok(Taken::Busy(found.create_revision));
        }
        // A late copy succeeds only while the stale key is unchanged, and is swept like a late
        // create (`session.rs`, invariant 4).
        let unchanged = Compare::mod_revision(key, CompareOp::Equal, found.mod_revision);
        let answer = put_when(ctx, key, own_key, lease, unchanged, unsure).await?;
        let ours = answer.0.succeeded
            || txn_first_kv(&answer.0, 0).is_some_and(|kv| kv.value == own_key.as_bytes());
        Ok(if ours { Taken::Ours } else { Taken::Again })
    }

    /// Whether the detection key `found` is a live detector's (see [`take`](Self::take)).
    async fn live(&self, ctx: &Ctx, found: &PbKeyValue) -> Result<bool> {
        if found.lease == 0 {
            return Ok(false);
        }
        let Some(named) = std::str::from_utf8(&found.value)
            .ok()
            .filter(|v| self.is_queue_key(v))
        else {
            return Ok(false);
        };
        let answer = ctx
            .call(
                |mut c| async move { c.get(named, Some(GetOptions::new().with_keys_only())).await },
            )
            .await?;
        Ok(answer.kvs().first().is_some_and(|kv| {
            kv.lease() == found.lease && kv.create_revision() < found.create_revision
        }))
    }

    /// Whether `key` is a queue key of this table: `<root>/lock/<id>/<leaf>`.
    fn is_queue_key(&self, key: &str) -> bool {
        key.strip_prefix(&*self.root)
            .and_then(|rest| rest.strip_prefix("/lock/"))
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(id, leaf)| {
                parse_decimal(id).is_some_and(|id| id < self.capacity)
                    && !leaf.is_empty()
                    && !leaf.contains('/')
            })
    }

    /// Reads the snapshot and decides, holding the detection lock; releases it in every case.
    /// `Some(cycle)` when this waiter closes a cycle: its key is withdrawn.
    async fn check(&self, ctx: &Ctx, own_key: &str, revision: i64) -> Result<Option<Cycle>> {
        let cycle = match self.find(ctx).await {
            Ok(cycle) => cycle,
            Err(e) => {
                let _ = self.release(ctx, own_key, None).await;
                return Err(e);
            }
        };
        match cycle {
            None => {
                self.release(ctx, own_key, None).await?;
                Ok(None)
            }
            Some(cycle) => {
                if self.release(ctx, own_key, Some(revision)).await? {
                    Ok(Some(cycle))
                } else {
                    // Our key or our hold on the detection lock vanished (the lease is gone):
                    // someone else may be checking now, so this waiter cannot be the victim.
                    Err(Error::Lost)
                }
            }
        }
    }

    /// The cycle this waiter closes in a snapshot read now, if any.
    async fn find(&self, ctx: &Ctx) -> Result<Option<Cycle>> {
        let prefix = format!("{}/lock/", self.root);
        // In pages at one revision: one Range failed past tonic's 4 MiB answer limit (five
        // holders of 1 MiB of data), which failed every contended wait at its first check.
        let (_, kvs) = range_all(ctx, &prefix, false).await?;
        let states = lock_states(&prefix, self.capacity, &kvs, &ctx.identity)?;
        Ok(find_cycle(&states, &self.owner))
    }

    /// Releases the detection lock; with `withdraw` (the own key's CreateRevision) deletes the
    /// own key in the same Txn. Returns whether both were still ours.
    async fn release(&self, ctx: &Ctx, own_key: &str, withdraw: Option<i64>) -> Result<bool> {
        let key = detection_key(&self.root);
        let key = key.as_str();
        let mut attempts = 0u32;
        let answer = ctx
            .call(|mut c| {
                attempts += 1;
                let ours = Compare::value(key, CompareOp::Equal, own_key);
                let mut guard = vec![ours.clone()];
                let mut ops = vec![TxnOp::delete(key, None)];
                if let Some(revision) = withdraw {
                    guard.push(Compare::create_revision(
                        own_key,
                        CompareOp::Equal,
                        revision,
                    ));
                    ops.push(TxnOp::delete(own_key, None));
                }
                // Whatever else changed, a detection lock that is ours is released.
                let fallback = Txn::new().when([ours]).and_then([TxnOp::delete(key, None)]);
                let txn = Txn::new()
                    .when(guard)
                    .and_then(ops)
                    .or_else([TxnOp::txn(fallback)]);
                async move { c.txn(txn).await }
            })
            .await?;
        // A retried Txn whose first attempt was applied finds nothing left to delete.
        Ok(answer.0.succeeded || attempts > 1)
    }
}
