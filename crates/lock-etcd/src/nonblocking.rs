//! The native async API: a client, sessions and guards on the caller's tokio runtime.
//!
//! Nothing here starts a runtime or a thread: connecting, keepalives, watches and clean-ups are
//! tasks on the runtime the calls are made on. The blocking API (`EtcdLocks`) runs the same
//! core (`mutex.rs`, `session.rs`) on a private runtime thread.
//!
//! Cancel-safety: a [`Session::lock`] future may be dropped at any await point (a `select!`, a
//! `tokio::time::timeout`, an aborted task). What it may have written (its key, the held marker
//! if it claimed the lock, the table's detection lock) is then deleted by a clean-up task spawned
//! on the session's runtime, which [`Session::close`] waits for before it revokes the lease. So a
//! dropped acquisition leaves no key behind, and a closed session no lease.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lock_api::{Acquired, Error, LostSignal, Result};

use crate::client::Ctx;
use crate::info::Info;
use crate::mutex::{self, Held, Target, Wait};
use crate::options::EtcdOptions;
use crate::session::SessionCore;

/// A connection to an etcd cluster for async code, on the caller's tokio runtime.
///
/// Cheap to clone. Locks are taken through [`Session`]s, each with its own lease and TTL.
///
/// ```no_run
/// # async fn demo() -> lock_etcd::Result<()> {
/// use std::time::Duration;
/// use lock_etcd::{EtcdClient, EtcdOptions};
///
/// let client = EtcdClient::connect(["http://127.0.0.1:2379"], EtcdOptions::new()).await?;
/// let session = client.session(Duration::from_secs(10)).await?;
/// let guard = session.lock("nightly-report").await?;
/// let token = guard.fencing_token()?;
/// tokio::select! {
///     () = guard.lost() => eprintln!("lost the lock; stop writing"),
///     () = tokio::time::sleep(Duration::from_secs(1)) => { /* work, passing `token` along */ }
/// }
/// guard.unlock().await?;
/// session.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdClient {
    ctx: Ctx,
    options: EtcdOptions,
}

impl fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdClient")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl EtcdClient {
    /// Connects to `endpoints` (`http://host:port`) and checks, within the connect timeout,
    /// that a member with a leader answers. The options' TTL is the default of
    /// [`session`](Self::session)s made without one.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for bad options or no endpoint; [`Error::Unavailable`] when no
    /// endpoint answered in time.
    pub async fn connect<I, S>(endpoints: I, options: EtcdOptions) -> Result<EtcdClient>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.as_ref().to_owned())
            .collect();
        let ctx = Ctx::connect(&endpoints, &options).await?;
        Ok(EtcdClient { ctx, options })
    }

    /// The options this client was made with.
    pub fn options(&self) -> &EtcdOptions {
        &self.options
    }

    /// A new session whose lease has `ttl` (rounded up to whole seconds, at least
    /// [`MIN_TTL`](crate::MIN_TTL)), kept alive by a task on the current runtime.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a TTL out of range; [`Error::Unavailable`].
    pub async fn session(&self, ttl: Duration) -> Result<Session> {
        let ttl_secs = self.options.clone().ttl(ttl).validate()?;
        let core = SessionCore::grant(&self.ctx, ttl_secs).await?;
        Ok(Session {
            core,
            prefix: self.options.prefix_value().to_owned(),
        })
    }
}

/// One lease shared by every lock taken through it (Go's `concurrency.Session`): an uncontended
/// lock is one Txn and an unlock one Txn.
///
/// Losing the lease (it expired, was revoked, or its keepalives went unanswered past the
/// deadline) loses every lock held through it. Cheap to clone; the lease is revoked by
/// [`close`](Self::close), or when the last clone and the last guard are dropped (by a task on
/// the session's runtime).
#[derive(Clone)]
pub struct Session {
    core: Arc<SessionCore>,
    prefix: String,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.debug_as("Session", f)
    }
}

impl Session {
    fn target(&self, name: &str) -> Result<Target> {
        Target::named(&self.prefix, name, &self.core.ctx.identity)
    }

    async fn acquire(&self, name: &str, wait: Wait) -> Result<Option<AsyncGuard>> {
        let target = self.target(name)?;
        let held = Box::pin(mutex::acquire(Arc::clone(&self.core), &target, wait, None))
            .await
            .map_err(Error::from)?;
        Ok(held.map(|held| AsyncGuard { held: Some(held) }))
    }

    /// Acquires the named lock, waiting as long as it takes. Cancel-safe: dropping the future
    /// at any point leaves nothing of the attempt in etcd (see the module docs).
    ///
    /// # Errors
    ///
    /// [`Error::Lost`] when the session is lost (before or while waiting: etcd#11456 is never
    /// reported as held); [`Error::InvalidArgument`] for a bad name; [`Error::Unavailable`].
    pub async fn lock(&self, name: &str) -> Result<AsyncGuard> {
        self.acquire(name, Wait::Until(None))
            .await?
            .ok_or(Error::Timeout)
    }

    /// Acquires the named lock if nobody holds it.
    ///
    /// # Errors
    ///
    /// As for [`lock`](Self::lock).
    pub async fn try_lock(&self, name: &str) -> Result<Option<AsyncGuard>> {
        self.acquire(name, Wait::Never).await
    }

    /// Acquires the named lock, waiting at most `timeout`; a timed-out attempt has deleted what
    /// it wrote before this returns, or, when etcd does not answer within a quarter of a second,
    /// leaves that to a task on the session's runtime, which [`close`](Self::close) waits for.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the time ran out; otherwise as for [`lock`](Self::lock).
    pub async fn lock_timeout(&self, name: &str, timeout: Duration) -> Result<AsyncGuard> {
        self.acquire(name, Wait::at_most(timeout))
            .await?
            .ok_or(Error::Timeout)
    }

    /// The session's lease id.
    pub fn lease_id(&self) -> i64 {
        self.core.lease()
    }

    /// The TTL etcd granted to the session's lease.
    pub fn ttl(&self) -> Duration {
        self.core.ttl()
    }

    /// Whether the session is lost.
    pub fn is_lost(&self) -> bool {
        self.core.is_lost()
    }

    /// Time until the session is declared lost unless a keepalive is answered meanwhile.
    pub fn time_left(&self) -> Option<Duration> {
        self.core.monitor.time_left()
    }

    /// Resolves when the session is lost.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let core = Arc::clone(&self.core);
        async move { core.monitor.lost().await }
    }

    /// The session's lost signal, for code without a runtime.
    pub fn lost_signal(&self) -> LostSignal {
        self.core.monitor.signal()
    }

    /// Ends the session: waits for clean-ups of dropped acquisitions, then revokes the lease, so
    /// every lock still held through it is lost.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when etcd did not answer; the lease then expires by itself.
    pub async fn close(self) -> Result<()> {
        self.core.close().await
    }
}

/// A held lock of the async API. Dropping it releases the lock (one Txn, run by a task on the
/// session's runtime); [`unlock`](Self::unlock) does the same and reports the outcome.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct AsyncGuard {
    held: Option<Held>,
}

impl fmt::Debug for AsyncGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncGuard")
            .field("key", &self.held.as_ref().map(|h| h.key.as_str()))
            .finish()
    }
}

impl AsyncGuard {
    fn held(&self) -> Result<&Held> {
        let held = self.held.as_ref().ok_or(Error::Lost)?;
        if held.monitor.is_lost() {
            return Err(Error::Lost);
        }
        Ok(held)
    }

    /// How the lock was acquired ([`Acquired::OwnerDied`] after a holder that died holding it).
    pub fn acquired(&self) -> Acquired {
        self.held.as_ref().map_or(Acquired::Clean, |h| h.acquired)
    }

    /// The fencing token: the key's CreateRevision, higher for every later acquisition.
    ///
    /// # Errors
    ///
    /// [`Error::Lost`] once the lock is lost.
    pub fn fencing_token(&self) -> Result<u64> {
        Ok(u64::try_from(self.held()?.revision).unwrap_or(0))
    }

    /// The key of this acquisition.
    pub fn key(&self) -> &str {
        self.held.as_ref().map_or("", |h| h.key.as_str())
    }

    /// Whether the lock is lost.
    pub fn is_lost(&self) -> bool {
        self.held.as_ref().is_none_or(|h| h.monitor.is_lost())
    }

    /// Time until the lock is declared lost unless its session's keepalive is answered.
    ///
    /// # Errors
    ///
    /// [`Error::Lost`] once the lock is lost.
    pub fn time_left(&self) -> Result<Duration> {
        self.held()?.monitor.time_left().ok_or(Error::Lost)
    }

    /// Resolves when the lock is lost: its session is lost (lease gone, or the deadline passed
    /// without an answered keepalive) or its key was deleted by someone else. Independent of
    /// the guard's lifetime, so it can be raced against the critical section.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let monitor = self.held.as_ref().map(|h| Arc::clone(&h.monitor));
        async move {
            if let Some(monitor) = monitor {
                monitor.lost().await;
            }
        }
    }

    /// The lost signal, for code without a runtime.
    pub fn lost_signal(&self) -> LostSignal {
        self.held.as_ref().map_or_else(
            || {
                let (trigger, signal) = lock_api::LostTrigger::new();
                trigger.fire();
                signal
            },
            |h| h.monitor.signal(),
        )
    }

    /// This acquisition read in one Txn: owner record, claim time, data, token and `expires` in
    /// milliseconds.
    ///
    /// # Errors
    ///
    /// [`Error::Lost`]; [`Error::Unavailable`].
    pub async fn info(&self) -> Result<Info> {
        mutex::read_info(&self.held()?.view()).await
    }

    /// Stores `data` with the lock, readable by others, while the key is ours.
    ///
    /// # Errors
    ///
    /// [`Error::Lost`]; [`Error::InvalidArgument`] over [`MAX_DATA_LEN`](crate::MAX_DATA_LEN)
    /// bytes; [`Error::Unavailable`].
    pub async fn write_data(&self, data: &[u8]) -> Result<()> {
        crate::data::check(data)?;
        let held = self.held()?;
        let result = crate::data::write(held, data).await;
        if matches!(result, Err(Error::Lost)) {
            held.monitor.fire();
        }
        result
    }

    /// Releases the lock: one Txn.
    ///
    /// # Errors
    ///
    /// [`Error::Lost`] when it was lost before or during the release; [`Error::Unavailable`]
    /// when etcd did not answer (the release is retried in the background).
    pub async fn unlock(mut self) -> Result<()> {
        match self.held.take() {
            Some(held) => mutex::release(held).await,
            None => Err(Error::Lost),
        }
    }
}

impl Drop for AsyncGuard {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            if held.session.ctx.usable().is_err() {
                // A forked child: the hold and the runtime are the parent's; touch nothing.
                std::mem::forget(held);
                return;
            }
            let session = Arc::clone(&held.session);
            session.spawn_cleanup(async move {
                let _ = mutex::release(held).await;
            });
        }
    }
}
