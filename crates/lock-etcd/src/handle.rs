//! `EtcdLock`, one lock handle (and owner), and `EtcdGuard`, an owned guard.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lock_api::{
    Acquired, Error, Fenced, Holder, Inspect, Leased, LockData, LockId, Locker, LostSignal, Result,
};

use crate::client::Shared;
use crate::mutex::{self, Held, Target, Wait};
use crate::options::MAX_DATA_LEN;
use crate::record::Record;

/// One etcd lock, named or numbered. The handle is the owner: every handle is its own owner,
/// even two handles on the same lock in one process (they exclude each other).
///
/// Dropping a handle that holds its lock releases it.
pub struct EtcdLock {
    shared: Arc<Shared>,
    id: LockId,
    /// The lock's queue, this handle's owner key and its table's deadlock detection.
    target: Target,
    /// The allocation key of a numbered lock (`None` for a named lock).
    alloc_key: Option<String>,
    held: Mutex<Option<Held>>,
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
        id: LockId,
        target: Target,
        alloc_key: Option<String>,
    ) -> EtcdLock {
        EtcdLock {
            shared,
            id,
            target,
            alloc_key,
            held: Mutex::new(None),
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

    /// The lease id of the current acquisition, or `None` when this handle does not hold the lock.
    pub fn lease_id(&self) -> Option<i64> {
        self.lock_state().as_ref().map(|h| h.lease)
    }

    fn lock_state(&self) -> MutexGuard<'_, Option<Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn acquire(&self, wait: Wait) -> Result<Option<Acquired>> {
        let ctx = self.shared.ctx.clone();
        let target = self.target.clone();
        let held = self
            .shared
            .block_on(async move { mutex::acquire(ctx, target, wait).await })?;
        let Some(held) = held else {
            return Ok(None);
        };
        let acquired = held.acquired;
        let previous = self.lock_state().replace(held);
        if let Some(old) = previous {
            // The queue granted us the lock, so an older acquisition of this handle is gone.
            old.stop_tasks();
            old.monitor.fire();
            let ctx = self.shared.ctx.clone();
            self.shared
                .spawn(async move { mutex::revoke(&ctx, old.lease).await });
        }
        Ok(Some(acquired))
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
    /// A holder that dies lets its lease expire, and the next acquirer takes over after the TTL
    /// with [`Acquired::OwnerDied`]: the previous holder claimed the lock and never released it
    /// cleanly (it died, or lost its lease or key while holding it). Use the fencing token to
    /// reject a paused holder's late writes.
    fn lock(&self) -> Result<Acquired> {
        match self.acquire(Wait::Until(None))? {
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
        self.acquire(Wait::Never)
    }

    fn try_lock_for(&self, timeout: Duration) -> Result<Acquired> {
        let deadline = Instant::now() + timeout;
        match self.acquire(Wait::Until(Some(deadline)))? {
            Some(acquired) => Ok(acquired),
            None => Err(Error::Timeout),
        }
    }

    /// Deletes the own key if its CreateRevision is still ours, then revokes the lease.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] when this handle does not hold the lock; [`Error::Lost`] when it was
    /// lost before or during the release (the acquisition is over either way), returned at once
    /// while the lease is revoked in the background; [`Error::Unavailable`] when etcd did not
    /// answer: the lease is no longer kept alive, so the lock is released within the TTL.
    fn unlock(&self) -> Result<()> {
        let held = self.lock_state().take().ok_or(Error::NotHeld(self.id))?;
        let ctx = self.shared.ctx.clone();
        self.shared
            .block_on(async move { mutex::release(ctx, held).await })
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
        let deleted = self.shared.block_on(async move {
            let answer = ctx
                .call(|mut c| {
                    let key = alloc_key.clone();
                    async move { c.delete(key, None).await }
                })
                .await?;
            Ok(answer.deleted())
        })?;
        if deleted == 0 {
            Err(Error::NotAllocated(self.id))
        } else {
            Ok(())
        }
    }
}

impl Drop for EtcdLock {
    fn drop(&mut self) {
        let held = self.lock_state().take();
        if let Some(held) = held {
            let ctx = self.shared.ctx.clone();
            // A drop cannot report; the lease expires by itself if this fails.
            let _ = self
                .shared
                .block_on(async move { mutex::release(ctx, held).await });
        }
    }
}

impl Fenced for EtcdLock {
    /// The own key's CreateRevision: etcd's revision counter only grows, so every later
    /// acquisition of this lock, by anyone, has a higher token.
    fn fencing_token(&self) -> Result<u64> {
        self.with_held(|h| u64::try_from(h.revision).unwrap_or(0))
    }
}

impl Leased for EtcdLock {
    /// The TTL etcd granted to the current acquisition's lease, or the configured one (rounded up
    /// to whole seconds) when the lock is not held.
    fn ttl(&self) -> Duration {
        self.lock_state().as_ref().map_or_else(
            || Duration::from_secs(u64::try_from(self.shared.ctx.ttl_secs).unwrap_or(0)),
            |h| h.ttl,
        )
    }

    /// Time until the lock is declared lost unless a keepalive is answered meanwhile: the send
    /// time of the last answered keepalive, plus the granted TTL, minus a safety margin (TTL/20,
    /// at least 50 ms), minus now. The lost signal fires when it reaches zero, and this,
    /// [`Fenced::fencing_token`] and the signal agree at every call.
    fn time_left(&self) -> Result<Option<Duration>> {
        let state = self.lock_state();
        let Some(held) = state.as_ref() else {
            return Ok(None);
        };
        match held.monitor.time_left() {
            Some(left) => Ok(Some(left)),
            None => Err(Error::Lost),
        }
    }

    fn lost(&self) -> Result<LostSignal> {
        let state = self.lock_state();
        let held = state.as_ref().ok_or(Error::NotHeld(self.id))?;
        Ok(held.monitor.signal())
    }
}

impl Inspect for EtcdLock {
    /// The holder named by the lock's held marker, read in one Txn with the queue's first key:
    /// pid, host, owner, when it claimed the lock, and whether it is dead (its key is gone
    /// without a clean release, so the next acquirer gets [`Acquired::OwnerDied`]). `expires` is
    /// when a live holder's lease ends unless renewed.
    fn holder(&self) -> Result<Option<Holder>> {
        let ctx = self.shared.ctx.clone();
        let queue = self.target.queue.clone();
        self.shared.block_on(async move {
            let Some((mut holder, alive)) = mutex::holder_info(&ctx, &queue).await? else {
                return Ok(None);
            };
            if let Some((_, lease)) = alive {
                holder.expires = mutex::lease_expiry(&ctx, lease).await?;
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
        if data.len() > MAX_DATA_LEN {
            return Err(Error::invalid(format!(
                "lock data of {} bytes is over the limit of {MAX_DATA_LEN}",
                data.len()
            )));
        }
        let (key, revision, lease, since) =
            self.with_held(|h| (h.key.clone(), h.revision, h.lease, h.since))?;
        let ctx = self.shared.ctx.clone();
        let record = Record {
            pid: ctx.identity.pid,
            host: ctx.identity.host.clone(),
            owner: Some(self.target.owner.to_string()),
            since,
            data: data.to_vec(),
        };
        let result = self.shared.block_on(async move {
            mutex::rewrite(&ctx, &key, revision, lease, record.encode()).await
        });
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
