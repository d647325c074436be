//! Sessions: one lease, kept alive, shared by every acquisition made through it.
//!
//! Like Go's `concurrency.Session`: an uncontended lock is one Txn and an unlock one Txn, because
//! no acquisition grants or revokes a lease of its own. Invariants:
//! 1. A session's lease is granted once and kept alive every TTL/3 by one task on the runtime
//!    the session was made on (the caller's for the async API, the library's own thread for
//!    the blocking one). The session is lost when a renewal says the lease is gone or the
//!    deadline passes (`lease.rs`); losing it loses every lock held through it, and the task then
//!    revokes the lease, so every key of the session goes at once.
//! 2. Every acquisition's key is `<lock prefix>/<lease hex>-<sequence hex>`: no two acquisitions
//!    that may exist at once share one, so two handles of one session on one lock are two owners
//!    that exclude each other. A name is used again only after a clean release whose writes were
//!    all answered at their first attempt (no ghost can bring it back, invariant 4): etcd keeps a
//!    deleted key in its index until the cluster compacts, and every read of a queue visits
//!    every name the queue ever had, so a new name per acquisition made each acquisition of a
//!    busy lock slower than the last (1.32 ms a pair growing to 1.67 ms over 5,000 pairs in the
//!    crate bench, against a flat 1.1-1.3 ms for etcd's Lock RPC, whose key is one per session).
//!    Reused names are kept per queue, a few per queue and for a bounded number of queues
//!    ([`FREE_PER_QUEUE`], [`FREE_QUEUES`]). An incarnation of a name is told apart by its
//!    CreateRevision wherever it matters: the fencing token, every guard of a write, and the wait
//!    for a predecessor (`mutex.rs`).
//! 3. A session that is closed, or whose last handle is dropped, revokes its lease, after the
//!    clean-ups of cancelled acquisitions still under way (they delete held markers, which have
//!    no lease). A lost session is never revived: the blocking API's default session is
//!    replaced by a new one at the next acquisition, or at once while a table is open on the
//!    connection (`client.rs`, `keep_listed`).
//! 4. *Ghosts.* A request that went unanswered (a stopped or partitioned member) may still be
//!    applied later, when that member wakes up, although the library gave up on it and retried
//!    elsewhere. With a lease per acquisition such a late write failed (the lease was revoked);
//!    with a session's lease it would succeed: a late acquisition Txn re-creates a key that was
//!    released (a *ghost* holding or queueing for the lock), a late detection-lock Txn re-takes
//!    the detection lock. Only writes guarded by `create_revision == 0` can come back this way
//!    (every other write is guarded by the key's CreateRevision or value, so a late copy fails),
//!    and the takeover of a stale detection lock (`deadlock.rs`), guarded by that key's
//!    ModRevision: it too writes the detection lock with the acquisition's key as its value, and
//!    is remembered and swept the same way.
//!    So every acquisition whose such Txn was not answered at its first attempt (or was cut
//!    off) is remembered as a *suspect* once it ends; while the session lives, a sweeper reads
//!    the suspects about once a second and deletes any that reappeared (and a marker they
//!    claimed); `close` revokes the lease first (no late write can succeed after that) and then
//!    deletes suspects' markers. A ghost therefore holds or blocks a lock for about a second at
//!    most, never for the session's life.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use etcd_client::proto::PbTxnOpResponse;
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use lock_api::{Error, PerProcess, Result};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::client::{Ctx, retry};
use crate::lease::{LockMonitor, Monitor, keep_alive, watch_own_key};

/// How many released names of one queue a session keeps for reuse (invariant 2): as many as it
/// may hold or queue at once on one lock, in the common case.
const FREE_PER_QUEUE: usize = 4;

/// For how many queues a session keeps released names (invariant 2); past that, released names
/// are forgotten, and new acquisitions on other locks make new names, as before reuse.
const FREE_QUEUES: usize = 1024;

/// How often the sweeper looks for ghosts (invariant 4).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The most suspects a session remembers; the oldest are forgotten first.
const MAX_SUSPECTS: usize = 1024;

/// How long a lock is held before a watch on its own key opens. The watch starts from the key's
/// CreateRevision, so nothing that happens meanwhile is missed: a deletion during the first
/// 100 ms fires the lost signal that much late, and a hold shorter than that (the common case)
/// costs no watch stream and no task.
const WATCH_DELAY: Duration = Duration::from_millis(100);

/// The least time between two runs of a session's watch timer, so that a stream of short holds
/// (each due [`WATCH_DELAY`] after its acquisition, then released) wakes the runtime's thread a
/// few times per `WATCH_DELAY`, not once per hold: a watch opens between `WATCH_DELAY` and
/// `WATCH_DELAY + WATCH_TICK` into its hold.
const WATCH_TICK: Duration = Duration::from_millis(25);

/// The own-key watch of one held lock, opened by the session's timer once the lock has been held
/// for [`WATCH_DELAY`], and stopped by the release.
#[derive(Debug, Default)]
pub(crate) struct KeyWatch {
    /// Stopped, and the watch task once it runs.
    state: Mutex<(bool, Option<AbortHandle>)>,
}

impl KeyWatch {
    /// Stops the watch, or keeps it from ever starting.
    pub(crate) fn stop(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = true;
        if let Some(task) = state.1.take() {
            task.abort();
        }
    }
}

/// A held lock waiting for its own-key watch.
#[derive(Debug)]
struct Due {
    at: Instant,
    key: String,
    revision: i64,
    monitor: Weak<LockMonitor>,
    watch: Weak<KeyWatch>,
}

/// An ended acquisition whose writes might still be applied late (invariant 4), or one that is
/// being cleaned up (`mutex.rs`, invariant 5): what it may have written.
#[derive(Debug, Clone)]
pub(crate) struct Suspect {
    /// Its key: if it exists again, it is a ghost.
    pub(crate) key: String,
    /// The lock's held marker, which it may have claimed.
    pub(crate) marker: Option<String>,
    /// The detection lock, which it may have taken.
    pub(crate) detection: Option<String>,
}

impl Suspect {
    /// The Txn that deletes what this acquisition left: its key (when `key` says so), the held
    /// marker while it names this acquisition (its key's name is never used again once it is a
    /// suspect, `reuse_key`), and the detection lock while it holds this key. One Txn, so the
    /// waiter the key's deletion wakes never finds the marker of an acquisition that is gone
    /// and takes it for a dead holder's.
    pub(crate) fn erase(&self, key: bool) -> Txn {
        let mut ops = Vec::new();
        if key {
            ops.push(TxnOp::delete(self.key.as_str(), None));
        }
        if let Some(marker) = &self.marker {
            let (low, high) = crate::record::Marker::bounds(crate::mutex::leaf_of(&self.key));
            ops.push(TxnOp::txn(
                Txn::new()
                    .when([
                        Compare::value(marker.as_str(), CompareOp::Greater, low),
                        Compare::value(marker.as_str(), CompareOp::Less, high),
                    ])
                    .and_then([TxnOp::delete(marker.as_str(), None)]),
            ));
        }
        if let Some(detection) = &self.detection {
            ops.push(TxnOp::txn(
                Txn::new()
                    .when([Compare::value(
                        detection.as_str(),
                        CompareOp::Equal,
                        self.key.as_str(),
                    )])
                    .and_then([TxnOp::delete(detection.as_str(), None)]),
            ));
        }
        Txn::new().and_then(ops)
    }

    /// Runs [`erase`](Suspect::erase) through `ctx`, retrying like any request. Errors are
    /// dropped: the key goes with its lease, and a marker left behind costs the next holder a
    /// spurious `OwnerDied`.
    pub(crate) async fn erase_through(&self, ctx: &Ctx, key: bool) {
        let _ = ctx
            .call(|mut c| {
                let txn = self.erase(key);
                async move { c.txn(txn).await }
            })
            .await;
    }
}

/// The sessions alive in this process, by lease, so a holder's expiry can be told in ms without
/// asking etcd when the holder is one of ours. A forked child starts with none (its parent's
/// are not its own), and never locks its parent's copy.
static SESSIONS: PerProcess<Vec<(i64, Weak<SessionCore>)>> = PerProcess::new();

/// One session: its lease, its keepalive task and its lost state.
#[derive(Debug)]
pub(crate) struct SessionCore {
    pub(crate) ctx: Ctx,
    lease: i64,
    ttl: Duration,
    pub(crate) monitor: Arc<Monitor>,
    keepalive: AbortHandle,
    /// The runtime the session lives on: clean-ups and the final revoke are spawned there.
    handle: Handle,
    next: AtomicU64,
    /// Names released cleanly, by queue, for reuse (invariant 2).
    free: Mutex<HashMap<String, Vec<String>>>,
    closed: AtomicBool,
    /// Clean-ups of cancelled acquisitions under way (invariant 3).
    pending: AtomicUsize,
    settled: Notify,
    /// Ended acquisitions that may come back as ghosts (invariant 4).
    suspects: Mutex<Vec<Suspect>>,
    sweeping: AtomicBool,
    /// Held locks whose own-key watch is yet to open, and whether the timer that opens them runs.
    due: Mutex<(Vec<Due>, bool)>,
}

impl SessionCore {
    /// The `Debug` of a session type named `name` (the blocking and the async one show the same
    /// fields).
    pub(crate) fn debug_as(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("lease", &format_args!("{:016x}", self.lease()))
            .field("ttl", &self.ttl())
            .field("lost", &self.is_lost())
            .finish()
    }

    /// Grants a lease of `ttl_secs` and starts keeping it alive on the current runtime.
    pub(crate) async fn grant(ctx: &Ctx, ttl_secs: i64) -> Result<Arc<SessionCore>> {
        let sent = Instant::now();
        let grant = retry(ctx, ctx.deadline(), |mut c| async move {
            c.lease_grant(ttl_secs, None).await
        })
        .await?;
        let lease = grant.id();
        let ttl = crate::lease::answered_ttl(grant.ttl());
        if ttl.is_zero() {
            return Err(Error::unavailable(format!(
                "etcd granted lease {lease:x} with TTL {}",
                grant.ttl()
            )));
        }
        let monitor = Monitor::new(sent, ttl);
        let task = {
            let ctx = ctx.clone();
            let monitor = Arc::clone(&monitor);
            tokio::spawn(async move {
                keep_alive(ctx.clone(), lease, ttl, monitor).await;
                // Invariant 1: a lost session takes its keys with it.
                revoke(&ctx, lease).await;
            })
        };
        let core = Arc::new(SessionCore {
            ctx: ctx.clone(),
            lease,
            ttl,
            monitor,
            keepalive: task.abort_handle(),
            handle: Handle::current(),
            next: AtomicU64::new(0),
            free: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            settled: Notify::new(),
            suspects: Mutex::new(Vec::new()),
            sweeping: AtomicBool::new(false),
            due: Mutex::new((Vec::new(), false)),
        });
        let mut sessions = SESSIONS.lock(std::process::id());
        sessions.retain(|(_, s)| s.strong_count() > 0);
        sessions.push((lease, Arc::downgrade(&core)));
        Ok(core)
    }

    /// The session of this process whose lease is `lease`, if it is alive.
    pub(crate) fn find(lease: i64) -> Option<Arc<SessionCore>> {
        SESSIONS
            .lock(std::process::id())
            .iter()
            .find(|(l, _)| *l == lease)
            .and_then(|(_, s)| s.upgrade())
    }

    pub(crate) fn lease(&self) -> i64 {
        self.lease
    }

    /// The TTL etcd granted.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.monitor.is_lost()
    }

    /// When the server may expire the lease at the earliest: ms precision, known locally.
    pub(crate) fn expires(&self) -> Option<SystemTime> {
        self.monitor.expires()
    }

    /// Asks etcd whether the lease still exists, and marks the session lost when it does not
    /// (after an acquisition found its key gone: the lease may have expired, or only the key
    /// may have been deleted). An unanswered question changes nothing.
    pub(crate) async fn check_lease(&self) {
        let lease = self.lease;
        let answer = self
            .ctx
            .call(|mut c| async move { c.lease_time_to_live(lease, None).await })
            .await;
        match answer {
            Ok(a) if a.ttl() > 0 => {}
            Ok(_) | Err(Error::Lost) => self.monitor.fire(),
            Err(_) => {}
        }
    }

    /// A key for a new acquisition in the queue `queue`: a name released cleanly, or a new one
    /// (invariant 2).
    pub(crate) fn next_key(&self, queue: &str) -> String {
        {
            let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(names) = free.get_mut(queue)
                && let Some(name) = names.pop()
            {
                if names.is_empty() {
                    free.remove(queue);
                }
                return name;
            }
        }
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{queue}{:016x}-{seq:x}", self.lease)
    }

    /// Takes back the name `key`, in the queue `queue`, of an acquisition released cleanly,
    /// every write of which was answered at its first attempt (invariant 2).
    pub(crate) fn reuse_key(&self, queue: &str, key: &str) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if !free.contains_key(queue) && free.len() >= FREE_QUEUES {
            return;
        }
        let names = free.entry(queue.to_owned()).or_default();
        if names.len() < FREE_PER_QUEUE {
            names.push(key.to_owned());
        }
    }

    /// Runs `job` on the session's runtime, counted until it ends so `close` waits for it.
    pub(crate) fn spawn_cleanup<F>(self: &Arc<Self>, job: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.pending.fetch_add(1, Ordering::SeqCst);
        let core = Arc::clone(self);
        drop(self.handle.spawn(async move {
            job.await;
            if core.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
                core.settled.notify_waiters();
            }
        }));
    }

    fn suspects(&self) -> MutexGuard<'_, Vec<Suspect>> {
        self.suspects.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers an ended acquisition that may come back as a ghost, and starts the sweeper
    /// (invariant 4).
    pub(crate) fn suspect(self: &Arc<Self>, suspect: Suspect) {
        {
            let mut suspects = self.suspects();
            if suspects.len() >= MAX_SUSPECTS {
                suspects.remove(0);
            }
            suspects.push(suspect);
        }
        if !self.sweeping.swap(true, Ordering::SeqCst) {
            let weak = Arc::downgrade(self);
            self.spawn(async move {
                loop {
                    tokio::time::sleep(SWEEP_EVERY).await;
                    // The sweeper does not keep the session alive.
                    let Some(core) = weak.upgrade() else { return };
                    if core.is_lost() || core.closed.load(Ordering::SeqCst) {
                        return;
                    }
                    core.sweep().await;
                }
            });
        }
    }

    /// Reads the suspects' keys and deletes those that came back, with what they wrote.
    async fn sweep(&self) {
        let suspects = self.suspects().clone();
        for chunk in suspects.chunks(32) {
            let keys: Vec<&str> = chunk.iter().map(|s| s.key.as_str()).collect();
            let answer = self
                .ctx
                .call(|mut c| {
                    let ops: Vec<TxnOp> = keys
                        .iter()
                        .map(|k| TxnOp::get(*k, Some(GetOptions::new().with_count_only())))
                        .collect();
                    let txn = Txn::new().and_then(ops);
                    async move { c.txn(txn).await }
                })
                .await;
            let Ok(answer) = answer else { return };
            for (suspect, response) in chunk.iter().zip(answer.0.responses.iter()) {
                let back = matches!(
                    &response.response,
                    Some(PbTxnOpResponse::ResponseRange(range)) if range.count > 0
                );
                if back {
                    self.exorcise(suspect, true).await;
                }
            }
        }
    }

    /// Deletes a ghost: its key (when `key` says so) and what it may have written.
    async fn exorcise(&self, suspect: &Suspect, key: bool) {
        suspect.erase_through(&self.ctx, key).await;
    }

    /// Arranges a watch on the own key of a lock just acquired (`key`, created at `revision`),
    /// opened after [`WATCH_DELAY`] unless the lock was released by then. One timer per session
    /// opens them, so a short hold spawns no task at all.
    pub(crate) fn watch_key_later(
        self: &Arc<Self>,
        key: &str,
        revision: i64,
        monitor: &Arc<LockMonitor>,
    ) -> Arc<KeyWatch> {
        let watch = Arc::new(KeyWatch::default());
        let start = {
            let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
            due.0.push(Due {
                at: Instant::now() + WATCH_DELAY,
                key: key.to_owned(),
                revision,
                monitor: Arc::downgrade(monitor),
                watch: Arc::downgrade(&watch),
            });
            !std::mem::replace(&mut due.1, true)
        };
        if start {
            let weak = Arc::downgrade(self);
            self.spawn(async move { open_due_watches(weak).await });
        }
        watch
    }

    /// Runs `job` on the session's runtime without waiting for it.
    pub(crate) fn spawn<F>(&self, job: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(job));
    }

    /// Ends the session: waits (at most the request timeout) for clean-ups under way, revokes
    /// the lease and fires the lost signal of every lock still held through it.
    pub(crate) async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let deadline = Instant::now() + self.ctx.request_timeout;
        while self.pending.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            let settled = self.settled.notified();
            tokio::select! {
                () = settled => {}
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        self.keepalive.abort();
        self.monitor.fire();
        let lease = self.lease;
        let answer = self
            .ctx
            .call(|mut c| async move { c.lease_revoke(lease).await })
            .await;
        let revoked = match answer {
            Ok(_) | Err(Error::Lost) => Ok(()),
            Err(e) => Err(e),
        };
        if revoked.is_ok() {
            // Invariant 4: no late write can succeed now; delete what ghosts left without lease.
            let suspects = std::mem::take(&mut *self.suspects());
            for suspect in &suspects {
                self.exorcise(suspect, false).await;
            }
        }
        revoked
    }
}

impl Drop for SessionCore {
    fn drop(&mut self) {
        if self.ctx.usable().is_err() {
            // A forked child: the keepalive task and the runtime are the parent's.
            return;
        }
        self.keepalive.abort();
        if !self.closed.swap(true, Ordering::SeqCst) {
            // Invariant 3. Nothing can be pending: clean-ups hold the session.
            let ctx = self.ctx.clone();
            let lease = self.lease;
            let suspects = std::mem::take(&mut *self.suspects());
            drop(self.handle.spawn(async move {
                revoke(&ctx, lease).await;
                for suspect in &suspects {
                    suspect.erase_through(&ctx, false).await;
                }
            }));
        }
    }
}

/// The session's watch timer: opens the own-key watch of every lock held past its due time, and
/// ends when none is waiting (the next acquisition starts it again).
async fn open_due_watches(weak: Weak<SessionCore>) {
    loop {
        let next = {
            let Some(core) = weak.upgrade() else { return };
            let now = Instant::now();
            let mut due = core.due.lock().unwrap_or_else(PoisonError::into_inner);
            let (ready, waiting): (Vec<Due>, Vec<Due>) = std::mem::take(&mut due.0)
                .into_iter()
                .partition(|d| d.at <= now);
            due.0 = waiting;
            // Holds released since they were queued are dropped now, not at their due time.
            due.0.retain(|d| {
                d.watch
                    .upgrade()
                    .is_some_and(|w| !w.state.lock().unwrap_or_else(PoisonError::into_inner).0)
            });
            let next = due.0.iter().map(|d| d.at.max(now + WATCH_TICK)).min();
            if next.is_none() {
                due.1 = false;
            }
            drop(due);
            for entry in ready {
                let (Some(watch), Some(monitor)) = (entry.watch.upgrade(), entry.monitor.upgrade())
                else {
                    continue;
                };
                let mut state = watch.state.lock().unwrap_or_else(PoisonError::into_inner);
                if state.0 {
                    continue;
                }
                let ctx = core.ctx.clone();
                let session = Arc::downgrade(&core);
                let task = core.handle.spawn(async move {
                    watch_own_key(ctx, entry.key, entry.revision, monitor).await;
                    // Our key went behind our back (the task is stopped before our own
                    // release): if with the lease, every lock of the session is lost, now
                    // rather than at the next keepalive.
                    if let Some(session) = session.upgrade()
                        && !session.is_lost()
                    {
                        session.check_lease().await;
                    }
                });
                state.1 = Some(task.abort_handle());
            }
            next
        };
        match next {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => return,
        }
    }
}

/// Revokes `lease` (deleting its keys); a lease that is already gone is not an error, and other
/// errors are dropped because the lease expires by itself once no longer kept alive.
pub(crate) async fn revoke(ctx: &Ctx, lease: i64) {
    let _ = ctx
        .call(|mut c| async move { c.lease_revoke(lease).await })
        .await;
}
