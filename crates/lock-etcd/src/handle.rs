//! `EtcdLock`, one lock handle (and owner) of the blocking API, and `EtcdGuard`, an owned guard.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lock_api::{
    Acquired, Error, Fenced, Holder, Inspect, Leased, LockData, LockId, Locker, LostSignal, Result,
};

use crate::cancel::CancelToken;
use crate::client::Shared;
use crate::info::Info;
use crate::mutex::{self, Cancel, Held, Target, Wait};
use crate::session::SessionCore;

/// One etcd lock, named or numbered. The handle is the owner: every handle is its own owner,
/// even two handles on the same lock in one process (they exclude each other).
///
/// Acquisitions go through a session: the connection's default session (granted on first use,
/// replaced when lost), or the [`EtcdSession`](crate::EtcdSession) the handle was made from.
/// Dropping a handle that holds its lock releases it.
pub struct EtcdLock {
    id: LockId,
    /// The lock's queue, this handle's owner key and its table's deadlock detection.
    target: Target,
    /// The allocation key of a numbered lock (`None` for a named lock).
    alloc_key: Option<String>,
    held: Mutex<Option<Held>>,
    /// The session of a handle made from an explicit session; `None` for the default one.
    session: Option<Arc<SessionCore>>,
    // Last: the runtime outlives everything above.
    shared: Arc<Shared>,
}

impl fmt::Debug for EtcdLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdLock")
            .field("id", &self.id)
            .field("queue", &self.target.queue)
            .field("owner", &self.target.owner)
            .field("held", &self.lock_state().as_ref().map(|h| h.revision))
            .finish()
    }
}

impl EtcdLock {
    pub(crate) fn new(
        shared: Arc<Shared>,
        session: Option<Arc<SessionCore>>,
        id: LockId,
        target: Target,
        alloc_key: Option<String>,
    ) -> EtcdLock {
        EtcdLock {
            id,
            target,
            alloc_key,
            held: Mutex::new(None),
            session,
            shared,
        }
    }

    /// The key prefix under which this lock's queue lives (ends in `/`).
    pub fn key_prefix(&self) -> &str {
        &self.target.queue
    }

    /// The owner key this handle writes into its records: what [`Holder::owner`] reports for
    /// its acquisitions (one per table handle, shared by every lock retrieved from it; one per
    /// named-lock handle).
    pub fn owner(&self) -> &str {
        &self.target.owner
    }

    /// The own key of the current acquisition, or `None` when this handle does not hold the lock.
    pub fn own_key(&self) -> Option<String> {
        self.lock_state().as_ref().map(|h| h.key.clone())
    }

    /// The lease the current acquisition's key is attached to (its session's), or `None` when
    /// this handle does not hold the lock.
    pub fn lease_id(&self) -> Option<i64> {
        self.lock_state().as_ref().map(Held::lease)
    }

    fn lock_state(&self) -> MutexGuard<'_, Option<Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn acquire(&self, wait: Wait, cancel: Option<Cancel>) -> Result<Option<Acquired>> {
        let shared = Arc::clone(&self.shared);
        let fixed = self.session.clone();
        let target = self.target.clone();
        let held = self.shared.block_on(async move {
            let Some(session) = fixed else {
                // The default session may have been lost without anyone noticing yet (revoked,
                // expired while idle): etcd says so at the first write, and a new one is made.
                let deadline = match wait {
                    Wait::Until(deadline) => deadline,
                    Wait::Never => None,
                };
                for _ in 0..2 {
                    // A lease grant that etcd does not answer must not outlast the caller's
                    // deadline, any more than the rest of the attempt does.
                    let session = match deadline {
                        Some(d) => tokio::time::timeout_at(d.into(), shared.default_session())
                            .await
                            .unwrap_or(Err(Error::Timeout))?,
                        None => shared.default_session().await?,
                    };
                    match mutex::acquire(session, &target, wait, cancel.clone()).await {
                        Err(mutex::AcquireError::StaleSession) => continue,
                        other => return other.map_err(Error::from),
                    }
                }
                return Err(Error::Lost);
            };
            mutex::acquire(session, &target, wait, cancel)
                .await
                .map_err(Error::from)
        })?;
        let Some(held) = held else {
            return Ok(None);
        };
        let acquired = held.acquired;
        let previous = self.lock_state().replace(held);
        if let Some(old) = previous {
            // The queue granted us the lock, so an older acquisition of this handle is lost
            // (`try_lock` refuses while one is held and not lost).
            old.stop_tasks();
            old.monitor.fire();
        }
        Ok(Some(acquired))
    }

    /// Waits in the lock's queue like [`Locker::lock`] until it is this handle's turn or
    /// `cancel` is cancelled (by any thread); `Ok(None)` when cancelled. What the attempt wrote
    /// (its key, a marker, a detection lock) is deleted by then, or, when etcd does not answer
    /// within a quarter of a second, soon after by a task on the session's runtime, which the
    /// session's close waits for.
    ///
    /// # Errors
    ///
    /// As for [`Locker::lock`].
    pub fn lock_until_cancelled(&self, cancel: &CancelToken) -> Result<Option<Acquired>> {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        self.acquire(Wait::Until(None), Some(cancel.receiver()))
    }

    /// What this handle's current acquisition looks like, read in one Txn: owner record,
    /// claim time, data, token, and `expires` in milliseconds from the session's deadline.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] when this handle does not hold the lock; [`Error::Lost`] when it was
    /// lost (its key is gone or its session expired); [`Error::Unavailable`].
    pub fn info(&self) -> Result<Info> {
        let view = self.with_held(Held::view)?;
        self.shared
            .block_on(async move { mutex::read_info(&view).await })
    }

    /// Runs `f` on the current acquisition: `NotHeld` without one, `Lost` when it was lost.
    fn with_held<T>(&self, f: impl FnOnce(&Held) -> T) -> Result<T> {
        let state = self.lock_state();
        let held = state.as_ref().ok_or(Error::NotHeld(self.id))?;
        if held.monitor.is_lost() {
            return Err(Error::Lost);
        }
        Ok(f(held))
    }
}

impl Locker for EtcdLock {
    fn id(&self) -> LockId {
        self.id
    }

    /// Waits in the lock's queue until it is this handle's turn.
    ///
    /// A holder that dies lets its session's lease expire, and the next acquirer takes over after
    /// the TTL with [`Acquired::OwnerDied`]: the previous holder claimed the lock and never
    /// released it cleanly (it died, or lost its lease or key while holding it). Use the fencing
    /// token to reject a paused holder's late writes. A table lock that closes a cycle of waits
    /// fails with [`Error::Deadlock`] after the table's deadlock timeout.
    fn lock(&self) -> Result<Acquired> {
        match self.acquire(Wait::Until(None), None)? {
            Some(acquired) => Ok(acquired),
            None => Err(Error::Timeout),
        }
    }

    fn try_lock(&self) -> Result<Option<Acquired>> {
        let holding = self
            .lock_state()
            .as_ref()
            .is_some_and(|h| !h.monitor.is_lost());
        if holding {
            return Ok(None);
        }
        self.acquire(Wait::Never, None)
    }

    fn try_lock_for(&self, timeout: Duration) -> Result<Acquired> {
        match self.acquire(Wait::at_most(timeout), None)? {
            Some(acquired) => Ok(acquired),
            None => Err(Error::Timeout),
        }
    }

    /// Deletes the own key (and the held marker) in one Txn if its CreateRevision is still ours.
    /// The session's lease stays: other locks live on it.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] when this handle does not hold the lock; [`Error::Lost`] when it was
    /// lost before or during the release (the acquisition is over either way), returned at once;
    /// [`Error::Unavailable`] when etcd did not answer: the release is retried in the background
    /// until it succeeds or the session is lost, which takes the key with its lease.
    fn unlock(&self) -> Result<()> {
        let held = self.lock_state().take().ok_or(Error::NotHeld(self.id))?;
        self.shared
            .block_on(async move { mutex::release(held).await })
    }

    /// Marks a numbered lock free; named locks are not allocated.
    ///
    /// # Errors
    ///
    /// [`Error::NotAllocated`] when it is not allocated; [`Error::Unsupported`] for a named lock.
    fn free(&self) -> Result<()> {
        let alloc_key = self
            .alloc_key
            .clone()
            .ok_or(Error::Unsupported("free of a named etcd lock"))?;
        let ctx = self.shared.ctx.clone();
        let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let tries = Arc::clone(&attempts);
        let deleted = self.shared.block_on(async move {
            let answer = ctx
                .call(|mut c| {
                    tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let key = alloc_key.clone();
                    async move { c.delete(key, None).await }
                })
                .await?;
            Ok(answer.deleted())
        })?;
        // A retry after an attempt whose answer was lost finds nothing to delete when that
        // attempt did delete the key: the id is free either way, which is what was asked, so
        // only a first attempt's empty answer is `NotAllocated`.
        if deleted == 0 && attempts.load(std::sync::atomic::Ordering::Relaxed) <= 1 {
            Err(Error::NotAllocated(self.id))
        } else {
            Ok(())
        }
    }
}

impl Drop for EtcdLock {
    fn drop(&mut self) {
        let held = self.lock_state().take();
        if self.shared.ctx.usable().is_err() {
            // A forked child: the hold and its tasks are the parent's; touch nothing.
            std::mem::forget(held);
            return;
        }
        if let Some(held) = held {
            // A drop cannot report; the key goes with the session if this fails.
            let _ = self
                .shared
                .block_on(async move { mutex::release(held).await });
        }
    }
}

impl Fenced for EtcdLock {
    /// The own key's CreateRevision: etcd's revision counter only grows, so every later
    /// acquisition of this lock, by anyone, has a higher token.
    fn fencing_token(&self) -> Result<u64> {
        self.shared.ctx.usable()?;
        self.with_held(|h| u64::try_from(h.revision).unwrap_or(0))
    }
}

impl Leased for EtcdLock {
    /// The TTL etcd granted to the session of the current acquisition, or of the session the
    /// next one would use, or the configured one (rounded up to whole seconds) before any.
    fn ttl(&self) -> Duration {
        if let Some(held) = self.lock_state().as_ref() {
            return held.session.ttl();
        }
        let session = self
            .session
            .clone()
            .or_else(|| self.shared.current_session());
        session.map_or_else(
            || Duration::from_secs(u64::try_from(self.shared.ttl_secs).unwrap_or(0)),
            |s| s.ttl(),
        )
    }

    /// Time until the lock is declared lost unless a keepalive of its session is answered
    /// meanwhile: the send time of the session's last answered keepalive, plus the granted TTL,
    /// minus a safety margin (TTL/20, at least 50 ms), minus now. The lost signal fires when it
    /// reaches zero, and this, [`Fenced::fencing_token`] and the signal agree at every call.
    fn time_left(&self) -> Result<Option<Duration>> {
        self.shared.ctx.usable()?;
        let state = self.lock_state();
        let Some(held) = state.as_ref() else {
            return Ok(None);
        };
        match held.monitor.time_left() {
            Some(left) => Ok(Some(left)),
            None => Err(Error::Lost),
        }
    }

    /// Fires when the acquisition is lost: its session's lease is gone or its deadline passed
    /// (which loses every lock of the session), or its own key was deleted.
    fn lost(&self) -> Result<LostSignal> {
        self.shared.ctx.usable()?;
        let state = self.lock_state();
        let held = state.as_ref().ok_or(Error::NotHeld(self.id))?;
        Ok(held.monitor.signal())
    }
}

impl Inspect for EtcdLock {
    /// The holder named by the lock's held marker, read in one Txn with the queue's first key:
    /// pid, host, owner, when it claimed the lock, and whether it is dead (its key is gone
    /// without a clean release, so the next acquirer gets [`Acquired::OwnerDied`]). `expires`
    /// is when a live holder's lease ends unless renewed: in milliseconds, without asking etcd,
    /// when the holder's session is one of this process's; otherwise from a second request,
    /// in whole seconds (etcd reports no finer).
    fn holder(&self) -> Result<Option<Holder>> {
        let ctx = self.shared.ctx.clone();
        let queue = self.target.queue.clone();
        self.shared.block_on(async move {
            let Some((mut holder, alive)) = mutex::holder_info(&ctx, &queue).await? else {
                return Ok(None);
            };
            if let Some((_, lease)) = alive {
                holder.expires = mutex::holder_expiry(&ctx, lease).await?;
            }
            Ok(Some(holder))
        })
    }
}

impl LockData for EtcdLock {
    /// Stores `data` in the own key's value, next to the owner record, while the key is ours.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`], [`Error::Lost`], [`Error::InvalidArgument`] over
    /// [`MAX_DATA_LEN`](crate::MAX_DATA_LEN) bytes, [`Error::Unavailable`].
    fn write_data(&self, data: &[u8]) -> Result<()> {
        crate::data::check(data)?;
        let write = self.with_held(|h| crate::data::write(h, data))?;
        let result = self.shared.block_on(write);
        if matches!(result, Err(Error::Lost))
            && let Some(h) = self.lock_state().as_ref()
        {
            h.monitor.fire();
        }
        result
    }

    /// The data of the live holder's key; `None` when nobody holds the lock or its holder died.
    fn read_data(&self) -> Result<Option<Vec<u8>>> {
        let ctx = self.shared.ctx.clone();
        let queue = self.target.queue.clone();
        self.shared.block_on(async move {
            let info = mutex::holder_info(&ctx, &queue).await?;
            Ok(info
                .and_then(|(_, alive)| alive)
                .map(|(record, _)| record.data))
        })
    }
}

/// An owned guard from [`EtcdLocks::lock`](crate::EtcdLocks::lock): holds the lock until dropped
/// or [`unlock`](EtcdGuard::unlock)ed, and derefs to its [`EtcdLock`] for the fencing token, the
/// lost signal and the lock data.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct EtcdGuard {
    lock: EtcdLock,
    acquired: Acquired,
}

impl EtcdGuard {
    pub(crate) fn new(lock: EtcdLock, acquired: Acquired) -> EtcdGuard {
        EtcdGuard { lock, acquired }
    }

    /// How the lock was acquired ([`Acquired::OwnerDied`] after a holder that died: see
    /// [`Locker::lock`] on [`EtcdLock`]).
    pub fn acquired(&self) -> Acquired {
        self.acquired
    }

    /// Releases the lock and reports what dropping would swallow.
    ///
    /// # Errors
    ///
    /// As for [`Locker::unlock`], notably [`Error::Lost`] when the lock was lost while held.
    pub fn unlock(self) -> Result<()> {
        // Dropping the handle afterwards finds nothing held.
        self.lock.unlock()
    }
}

impl Deref for EtcdGuard {
    type Target = EtcdLock;

    fn deref(&self) -> &EtcdLock {
        &self.lock
    }
}

/// A session of the blocking API: one lease with its own TTL, kept alive on the connection's
/// runtime thread and shared by every lock handle made from it. From
/// [`EtcdLocks::session`](crate::EtcdLocks::session).
///
/// Losing the session's lease (it expired, was revoked, or its keepalives went unanswered past
/// the deadline) loses every lock held through it. A lost session stays lost: make a new one.
/// Dropping the last handle of a session (this value and every lock made from it) revokes its
/// lease.
pub struct EtcdSession {
    core: Arc<SessionCore>,
    // Last: the runtime outlives the session.
    shared: Arc<Shared>,
}

impl fmt::Debug for EtcdSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.debug_as("EtcdSession", f)
    }
}

impl EtcdSession {
    pub(crate) fn new(shared: Arc<Shared>, core: Arc<SessionCore>) -> EtcdSession {
        EtcdSession { core, shared }
    }

    /// A handle on the named lock `name` whose acquisitions go through this session.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a name [`validate_name`](crate::validate_name) refuses.
    pub fn named(&self, name: &str) -> Result<EtcdLock> {
        let prefix = self.shared.options.prefix_value();
        Ok(EtcdLock::new(
            Arc::clone(&self.shared),
            Some(Arc::clone(&self.core)),
            LockId(0),
            Target::named(prefix, name, &self.shared.ctx.identity)?,
            None,
        ))
    }

    /// Acquires the named lock through this session, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// As for [`Locker::lock`]; [`Error::Lost`] when the session is lost.
    pub fn lock(&self, name: &str) -> Result<EtcdGuard> {
        let lock = self.named(name)?;
        let acquired = lock.lock()?;
        Ok(EtcdGuard::new(lock, acquired))
    }

    /// The session's lease id.
    pub fn lease_id(&self) -> i64 {
        self.core.lease()
    }

    /// The TTL etcd granted to the session's lease.
    pub fn ttl(&self) -> Duration {
        self.core.ttl()
    }

    /// Whether the session is lost (and with it every lock held through it).
    pub fn is_lost(&self) -> bool {
        self.core.is_lost()
    }

    /// Time until the session is declared lost unless a keepalive is answered meanwhile, or
    /// `None` once it is lost.
    pub fn time_left(&self) -> Option<Duration> {
        self.core.monitor.time_left()
    }

    /// A signal that fires when the session is lost.
    pub fn lost(&self) -> LostSignal {
        self.core.monitor.signal()
    }

    /// Ends the session now: revokes its lease, so every lock held through it is lost at once
    /// (their holders' lost signals fire).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when etcd did not answer; the lease then expires by itself within
    /// its TTL, as nobody renews it any more.
    pub fn close(self) -> Result<()> {
        let core = Arc::clone(&self.core);
        self.shared.block_on(async move { core.close().await })
    }
}

impl Drop for EtcdSession {
    fn drop(&mut self) {
        // The last handle: revoke now, while the runtime is surely alive (a revoke spawned by
        // the session's own drop could be cut short by the runtime's shutdown).
        if Arc::strong_count(&self.core) == 1 {
            let core = Arc::clone(&self.core);
            let limit = self.shared.ctx.attempt_timeout();
            let _ = self.shared.block_on(async move {
                let _ = tokio::time::timeout(limit, core.close()).await;
                Ok(())
            });
        }
    }
}
