//! The etcd client (one per endpoint, fail-over, retries, error mapping) and the blocking API's
//! own runtime thread.
//!
//! [`Ctx`] is the client the async API uses on the caller's runtime; it owns no runtime.
//! [`Shared`] is the blocking API's connection: every public operation is one future run on a
//! private multi-threaded tokio runtime (one worker thread named `lock-etcd`). A plain calling
//! thread polls the future itself while the worker drives I/O and timers; a thread inside another
//! tokio runtime hands the future to the worker and waits on a channel instead, so the blocking
//! API may be used from any thread. Session keepalives and key watches are tasks on the same
//! runtime: they continue while the caller is busy inside its critical section.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use etcd_client::proto::{PbKeyValue, PbRangeResponse, PbTxnOpResponse, PbTxnResponse};
use etcd_client::{Client, ConnectOptions, GetOptions, GetResponse};
use lock_api::{Error, Result};
use tokio::runtime::{Builder, Handle, Runtime};
use tokio::time::{sleep, timeout_at};

use crate::clients::Registration;
use crate::lease::Monitor;
use crate::options::EtcdOptions;
use crate::record::Local;
use crate::session::SessionCore;

/// Who this process is, written into every owner record.
#[derive(Debug)]
pub(crate) struct Identity {
    pub(crate) pid: u32,
    /// The inode of this process's pid namespace (0: unknown), written into its records.
    pub(crate) pid_ns: u32,
    pub(crate) host: String,
    /// Where this process runs on its host, written into its client records (`clients.rs`);
    /// `None` when `/proc` cannot tell.
    pub(crate) local: Option<Local>,
}

impl Identity {
    /// A new owner key: this process and host, and 64 random bits, so keys never repeat across
    /// processes, hosts or reused pids (they tell owners apart in a wait-for graph).
    pub(crate) fn new_owner(&self) -> Arc<str> {
        use std::hash::{BuildHasher, RandomState};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // Seeded from the OS once per process, then a different key per instance.
        let nonce = RandomState::new().hash_one(NEXT.fetch_add(1, Ordering::Relaxed));
        format!("{}@{}/{nonce:016x}", self.pid, self.host).into()
    }

    pub(crate) fn current() -> Identity {
        let uname = rustix::system::uname();
        let pid = std::process::id();
        Identity {
            pid,
            pid_ns: lock_api::pid_namespace(),
            host: uname.nodename().to_string_lossy().into_owned(),
            local: Local::current(pid),
        }
    }
}

/// Everything a task needs: cheap to clone, owns no runtime (a task that dropped the last
/// reference to the runtime would try to shut it down from inside itself).
///
/// There is one client per endpoint and one *preferred* endpoint that every request goes to
/// until it fails or does not answer within the attempt timeout; then the next endpoint is
/// preferred. A member that is stopped (SIGSTOP, a partition) keeps its TCP connections open
/// and answers nothing, and a balancing channel would keep sending it requests; failing over on
/// silence avoids it within one attempt timeout.
#[derive(Clone)]
pub(crate) struct Ctx {
    clients: Arc<[Client]>,
    preferred: Arc<AtomicUsize>,
    /// A search for the leader is running (at most one at a time).
    seeking: Arc<AtomicBool>,
    /// The highest raft term a member has told us (0: none yet); a higher one means an election
    /// since, so the leader may have moved.
    term: Arc<AtomicU64>,
    /// When each endpoint last failed an attempt, in ms after `epoch` plus 1 (0: never).
    failures: Arc<[AtomicU64]>,
    epoch: Instant,
    /// The fork generation the connection was made in (`lockyard_fork`): in a forked child,
    /// which has none of the runtime's threads, every request is refused.
    forks: u32,
    pub(crate) request_timeout: Duration,
    pub(crate) identity: Arc<Identity>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// The runtime, the context and the default session, shared by every handle of one blocking
/// connection.
#[derive(Debug)]
pub(crate) struct Shared {
    runtime: Option<Runtime>,
    handle: Handle,
    pub(crate) ctx: Ctx,
    pub(crate) options: EtcdOptions,
    /// The lease TTL of the default session, in whole seconds.
    pub(crate) ttl_secs: i64,
    /// The session of every handle not made through an explicit session; replaced when lost.
    session: tokio::sync::Mutex<Option<Arc<SessionCore>>>,
    /// The client keys of this connection's open tables (`clients.rs`), put again on each new
    /// default session. Changed only under `session`'s lock.
    registrations: std::sync::Mutex<Vec<Registration>>,
    /// Whether [`keep_listed`] runs. Changed only under `session`'s lock.
    keeping: AtomicBool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let session = self.session.get_mut().take();
        if self.ctx.usable().is_err() {
            // A forked child: the runtime's threads, and what its mutexes guard, are the
            // parent's. Shutting it down or revoking from here could wait for ever; leak both.
            std::mem::forget(session);
            std::mem::forget(self.runtime.take());
            return;
        }
        if let Some(runtime) = self.runtime.take() {
            if let Some(session) = session
                && Handle::try_current().is_err()
            {
                // Revoke the default session's lease, bounded by the request timeout: in an
                // outage it expires by itself one TTL later.
                let limit = self.ctx.request_timeout;
                runtime.block_on(async move {
                    let _ = tokio::time::timeout(limit, session.close()).await;
                });
            }
            // Never blocks and never panics, even when dropped inside another runtime.
            runtime.shutdown_background();
        }
    }
}

impl Ctx {
    /// Connects to `endpoints` and proves, within the connect timeout, that a member with a
    /// leader answers. Runs on the caller's runtime.
    pub(crate) async fn connect(endpoints: &[String], options: &EtcdOptions) -> Result<Ctx> {
        options.validate()?;
        if endpoints.is_empty() {
            return Err(Error::invalid("no etcd endpoint given"));
        }
        let connect_timeout = options.connect_timeout_value();
        let request_timeout = options.request_timeout_value();
        let probe_key = options.prefix_value().to_owned();
        let eps = endpoints.to_vec();
        let identity = Arc::new(Identity::current());
        let forks = lockyard_fork::generation()?;
        {
            let deadline = Instant::now() + connect_timeout;
            let connect_options = ConnectOptions::new()
                .with_connect_timeout(connect_timeout.min(Duration::from_secs(2)))
                .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
                .with_keep_alive_while_idle(true)
                .with_require_leader(true);
            let mut clients = Vec::with_capacity(eps.len());
            for endpoint in &eps {
                // Building a client does not connect yet.
                let client = Client::connect([endpoint], Some(connect_options.clone()))
                    .await
                    .map_err(|e| match e {
                        etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => {
                            Error::invalid(format!("etcd endpoint {endpoint:?}: {e}"))
                        }
                        e => map_err(e),
                    })?;
                clients.push(client);
            }
            let ctx = Ctx {
                clients: clients.into(),
                preferred: Arc::new(AtomicUsize::new(0)),
                seeking: Arc::new(AtomicBool::new(false)),
                term: Arc::new(AtomicU64::new(0)),
                failures: (0..eps.len()).map(|_| AtomicU64::new(0)).collect(),
                epoch: Instant::now(),
                forks,
                request_timeout,
                identity,
            };
            // One linearizable read proves that a member with a leader answers.
            let probe = retry(&ctx, deadline, |mut c| {
                let key = probe_key.clone();
                async move { c.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await;
            match probe {
                Ok(_) => {
                    ctx.prefer_leader().await;
                    Ok(ctx)
                }
                Err(Error::Unavailable { source }) => Err(Error::unavailable(format!(
                    "no etcd endpoint of {eps:?} answered within {connect_timeout:?}: {source}"
                ))),
                Err(e) => Err(e),
            }
        }
    }
}

impl Shared {
    /// Starts the runtime, connects and proves the cluster answers within the connect timeout.
    pub(crate) fn connect(endpoints: &[String], options: EtcdOptions) -> Result<Arc<Shared>> {
        let ttl_secs = options.validate()?;
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lock-etcd")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start runtime thread", "lock-etcd", e))?;
        let handle = runtime.handle().clone();
        let eps = endpoints.to_vec();
        let opts = options.clone();
        let ctx = run(&handle, async move { Ctx::connect(&eps, &opts).await })?;
        Ok(Arc::new(Shared {
            runtime: Some(runtime),
            handle,
            ctx,
            options,
            ttl_secs,
            session: tokio::sync::Mutex::new(None),
            registrations: std::sync::Mutex::new(Vec::new()),
            keeping: AtomicBool::new(false),
        }))
    }

    /// The default session, granted on first use and replaced when it was lost.
    pub(crate) async fn default_session(&self) -> Result<Arc<SessionCore>> {
        let mut session = self.session.lock().await;
        self.live_session(&mut session).await
    }

    /// The default session, given its lock: a new one when there is none or it was lost, with
    /// the client key of every table open on this connection put on it again (best effort: a
    /// table removed meanwhile gets none).
    async fn live_session(&self, slot: &mut Option<Arc<SessionCore>>) -> Result<Arc<SessionCore>> {
        if let Some(current) = slot.as_ref()
            && !current.is_lost()
        {
            return Ok(Arc::clone(current));
        }
        let fresh = SessionCore::grant(&self.ctx, self.ttl_secs).await?;
        *slot = Some(Arc::clone(&fresh));
        let again = self.registrations().clone();
        for registration in &again {
            let _ = registration.put(&self.ctx, fresh.lease()).await;
        }
        Ok(fresh)
    }

    fn registrations(&self) -> std::sync::MutexGuard<'_, Vec<Registration>> {
        self.registrations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Puts an opening table's client key on the default session and keeps it for the next
    /// ones, which [`keep_listed`] grants as soon as one is lost; `Ok(false)` when the table no
    /// longer exists.
    pub(crate) async fn register(self: &Arc<Self>, registration: Registration) -> Result<bool> {
        let mut slot = self.session.lock().await;
        // A session lost without anyone noticing yet is seen at the put: once more on a new one.
        for _ in 0..2 {
            let session = self.live_session(&mut slot).await?;
            match registration.put(&self.ctx, session.lease()).await {
                Err(Error::Lost) => session.monitor.fire(),
                Ok(true) => {
                    self.registrations().push(registration);
                    if !self.keeping.swap(true, Ordering::Relaxed) {
                        let lost = Arc::clone(&session.monitor);
                        self.handle.spawn(keep_listed(Arc::downgrade(self), lost));
                    }
                    return Ok(true);
                }
                other => return other,
            }
        }
        Err(Error::Lost)
    }

    /// Deletes a closing table's client key, which is then never put again.
    pub(crate) async fn unregister(&self, key: &str) -> Result<()> {
        let _slot = self.session.lock().await;
        self.registrations().retain(|r| r.key != key);
        Registration::delete(&self.ctx, key).await
    }

    /// The default session if one is alive, without granting one.
    pub(crate) fn current_session(&self) -> Option<Arc<SessionCore>> {
        self.session
            .try_lock()
            .ok()
            .and_then(|s| s.as_ref().filter(|s| !s.is_lost()).cloned())
    }

    /// Runs `fut` on the runtime thread and waits for its result.
    pub(crate) fn block_on<T, F>(&self, fut: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        // Before the runtime is touched: in a forked child its threads are gone.
        self.ctx.usable()?;
        run(&self.handle, fut)
    }
}

/// How long [`keep_listed`] waits before it tries again to grant a default session it could
/// not: about what an acquisition's own attempt would cost in an outage, so the keeper adds a
/// request or so per second to a cluster that does not answer.
const RELIST_RETRY: Duration = Duration::from_secs(1);

/// Keeps the tables open on a connection listed (`clients.rs`): whenever the default session
/// (first the one whose lost signal is `current`) is lost while a table is open, grants the next
/// one, which puts their client keys again, rather than leave them unlisted, and `remove_unused`
/// free to delete them, until the connection's next acquisition. Ends when no table is open
/// (the next registration starts it again) or the connection is gone. It holds the connection
/// only while it grants after a loss, never while it waits: a connection dropped during a
/// grant is dropped on the runtime's thread, where its lease may be left to expire (one TTL).
async fn keep_listed(shared: Weak<Shared>, mut current: Arc<Monitor>) {
    loop {
        current.lost().await;
        current = loop {
            let next = {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let mut slot = shared.session.lock().await;
                if shared.registrations().is_empty() {
                    shared.keeping.store(false, Ordering::Relaxed);
                    return;
                }
                shared
                    .live_session(&mut slot)
                    .await
                    .map(|session| Arc::clone(&session.monitor))
            };
            match next {
                Ok(monitor) => break monitor,
                Err(_) => sleep(RELIST_RETRY).await,
            }
        };
    }
}

fn run<T, F>(handle: &Handle, fut: F) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    if Handle::try_current().is_err() {
        // A plain thread: poll the future right here (no hand-off to the worker and back); the
        // worker thread drives I/O and timers and runs the tasks the future spawns.
        return handle.block_on(fut);
    }
    // Inside another runtime, where blocking on a runtime would panic: run it on our worker and
    // wait on a channel.
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    drop(handle.spawn(async move {
        let _ = tx.send(fut.await);
    }));
    rx.recv()
        .unwrap_or_else(|_| Err(Error::unavailable("the lock-etcd runtime has shut down")))
}

impl Ctx {
    /// Fails in a forked child of the process that made the connection: the child has none of
    /// the runtime's threads (a call would wait for ever on them) and shares the parent's
    /// sockets. One relaxed load and a compare.
    pub(crate) fn usable(&self) -> Result<()> {
        if lockyard_fork::current() != self.forks {
            return Err(Error::invalid(format!(
                "this etcd connection was made by process {} and inherited across fork(2) by \
                 process {}; its runtime threads and sockets stay with the parent, so a child \
                 must connect again (and leak, not drop, what it inherited)",
                self.identity.pid,
                std::process::id()
            )));
        }
        Ok(())
    }

    /// Makes the leader the preferred endpoint, if one answers within the attempt timeout:
    /// a write sent to a follower is forwarded to the leader, one more hop for every Txn.
    /// Members that do not answer are left alone; the preference is only a start (fail-over
    /// moves it on as before). Runs at connect, and again after a request that had to fail
    /// over succeeds or a member tells of a newer raft term ([`seek_leader`](Self::seek_leader)).
    ///
    /// A leader whose endpoint failed an attempt within the last request timeout is not
    /// preferred: it answers a status request, but the request that failed over from it may
    /// be one of several of an operation, and the next would wait out another attempt there
    /// (in tests/faults.rs, a member whose answers to some requests are lost made `free` fail
    /// with "no answer within 1s" once in a handful of full runs).
    pub(crate) async fn prefer_leader(&self) {
        let limit = Instant::now() + self.attempt_timeout();
        let asks = self.clients.iter().enumerate().map(|(index, client)| {
            let mut client = client.clone();
            async move {
                let status = timeout_at(limit.into(), client.status()).await.ok()?.ok()?;
                self.term.fetch_max(status.raft_term(), Ordering::AcqRel);
                let member = status.header()?.member_id();
                Some((index, member, status.leader()))
            }
        });
        let answers: Vec<(usize, u64, u64)> = futures_join_all(asks).await;
        let leader = answers
            .iter()
            .find(|(_, member, leader)| member == leader)
            .map(|(index, _, _)| *index);
        if let Some(index) = leader
            && !self.failed_lately(index)
        {
            self.preferred.store(index, Ordering::Relaxed);
        }
    }

    /// Whether endpoint `index` failed an attempt within the last request timeout.
    fn failed_lately(&self, index: usize) -> bool {
        let at = self
            .failures
            .get(index)
            .map_or(0, |f| f.load(Ordering::Relaxed));
        at != 0 && self.ms_since_epoch().saturating_sub(at - 1) < millis(self.request_timeout)
    }

    /// Milliseconds since `epoch`.
    fn ms_since_epoch(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    /// Looks for the leader again in the background, unless a search is running: after a
    /// request had to fail over, or an election, the member written to may be a follower, which
    /// would forward every later write to the leader for the rest of the connection's life.
    /// Needs a tokio runtime (every request runs on one); the search runs on the caller's.
    fn seek_leader(&self) {
        if self.seeking.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = Handle::try_current() else {
            self.seeking.store(false, Ordering::Release);
            return;
        };
        let ctx = self.clone();
        drop(runtime.spawn(async move {
            ctx.prefer_leader().await;
            ctx.seeking.store(false, Ordering::Release);
        }));
    }

    /// Notes the raft term a member answered with (every answer to [`retry`] and every lease
    /// renewal tells it): a term higher than any seen before means an election happened, and
    /// the leader may have moved without any request failing (a leader transfer), so the leader
    /// is sought again ([`seek_leader`](Self::seek_leader)).
    pub(crate) fn saw_term(&self, term: u64) {
        let before = self.term.fetch_max(term, Ordering::AcqRel);
        if before != 0 && term > before {
            self.seek_leader();
        }
    }

    /// The preferred endpoint's index and client.
    pub(crate) fn pick(&self) -> (usize, Client) {
        // `connect` refuses an empty endpoint list, so the modulo leaves a valid index.
        let index = self.preferred.load(Ordering::Relaxed) % self.clients.len();
        (index, self.clients[index].clone())
    }

    /// Marks endpoint `index` as failing: the next one becomes preferred, unless another request
    /// already moved on.
    pub(crate) fn failed(&self, index: usize) {
        if let Some(f) = self.failures.get(index) {
            f.store(self.ms_since_epoch().saturating_add(1), Ordering::Relaxed);
        }
        let next = (index + 1) % self.clients.len();
        let _ = self
            .preferred
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// How long one attempt may go unanswered before the next endpoint is tried: a quarter of
    /// the request timeout, at least 250 ms.
    pub(crate) fn attempt_timeout(&self) -> Duration {
        (self.request_timeout / 4).max(Duration::from_millis(250))
    }

    /// The deadline of a request started now.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.request_timeout
    }

    /// Runs one request, retrying transient failures until the request timeout.
    pub(crate) async fn call<T: Answer, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        retry(self, self.deadline(), f).await
    }
}

/// An answer from etcd, which tells the raft term of the member that gave it (its header).
pub(crate) trait Answer {
    /// The answering member's raft term, when the answer has a header.
    fn raft_term(&self) -> Option<u64>;
}

/// Implements [`Answer`] for etcd-client's response types, which all carry a header.
macro_rules! answers {
    ($($response:ty),* $(,)?) => {$(
        impl Answer for $response {
            fn raft_term(&self) -> Option<u64> {
                self.header().map(etcd_client::ResponseHeader::raft_term)
            }
        }
    )*};
}

answers!(
    etcd_client::TxnResponse,
    etcd_client::GetResponse,
    etcd_client::PutResponse,
    etcd_client::DeleteResponse,
    etcd_client::LeaseGrantResponse,
    etcd_client::LeaseRevokeResponse,
    etcd_client::LeaseTimeToLiveResponse,
);

/// Runs `f` until it succeeds, fails for good, or `deadline` passes, moving to the next
/// endpoint after each transient failure or unanswered attempt.
///
/// Every operation this crate retries is safe to repeat: lock keys are unique per lease and are
/// created under a `create_revision == 0` compare, a repeated delete or revoke is recognised, and
/// a table's allocation key carries a token of the call that wrote it (`EtcdTable::mark`).
pub(crate) async fn retry<T: Answer, F, Fut>(ctx: &Ctx, deadline: Instant, mut f: F) -> Result<T>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    ctx.usable()?;
    let mut backoff = Duration::from_millis(20);
    let mut last;
    let mut attempts = 0usize;
    // Endpoints in a row that answered like no etcd member.
    let mut not_etcd = 0usize;
    loop {
        let (index, client) = ctx.pick();
        let attempt_deadline = deadline.min(Instant::now() + ctx.attempt_timeout());
        match timeout_at(attempt_deadline.into(), f(client)).await {
            Ok(Ok(value)) => {
                if attempts > 0 {
                    // Answered after a fail-over: the cluster may have a new leader.
                    ctx.seek_leader();
                } else if let Some(term) = value.raft_term() {
                    // Every answer tells the member's raft term, so a connection hears of a
                    // leader transfer at its next request, with or without a session.
                    ctx.saw_term(term);
                }
                return Ok(value);
            }
            Ok(Err(e)) if is_transient(&e) => {
                ctx.failed(index);
                last = e.to_string();
                not_etcd = 0;
            }
            // This endpoint is no etcd member (an HTTP proxy answering 404, say): another may
            // be, so every endpoint is tried before the answer is taken for the cluster's.
            Ok(Err(e)) if is_not_etcd(&e) && not_etcd + 1 < ctx.clients.len() => {
                ctx.failed(index);
                last = e.to_string();
                not_etcd += 1;
            }
            Ok(Err(e)) => return Err(map_err(e)),
            Err(_) => {
                ctx.failed(index);
                last = format!("no answer within {:?}", ctx.attempt_timeout());
            }
        }
        attempts += 1;
        // Every endpoint failed once: pause before the next round (an election takes a while).
        let pause = if attempts.is_multiple_of(ctx.clients.len()) {
            let pause = backoff;
            backoff = (backoff * 2).min(Duration::from_millis(500));
            pause
        } else {
            Duration::ZERO
        };
        if Instant::now() + pause >= deadline {
            return Err(Error::unavailable(format!(
                "etcd did not answer in time; last error: {last}"
            )));
        }
        sleep(pause).await;
    }
}

/// The largest answer a [`range_all`] page may be: a page holds at most [`VALUE_PAGE`] keys,
/// each at most etcd's default request limit (1.5 MiB; lock-etcd itself writes at most
/// [`MAX_DATA_LEN`](crate::MAX_DATA_LEN) and a short header), so a page of lock-etcd's own keys
/// stays under 100 MiB. tonic's default is 4 MiB, which five holders of 1 MiB each passed.
pub(crate) const MAX_ANSWER: usize = 128 << 20;

/// Keys per page of a [`range_all`] that reads values.
pub(crate) const VALUE_PAGE: i64 = 64;

/// Keys per page of a [`range_all`] that reads keys only (a key is at most
/// [`MAX_PREFIX_LEN`](crate::MAX_PREFIX_LEN) + [`MAX_NAME_LEN`](crate::MAX_NAME_LEN) + a few
/// dozen bytes, so a page stays under 10 MiB).
pub(crate) const KEY_PAGE: i64 = 10_000;

/// One page of a [`range_all`]; `None` when its revision was compacted meanwhile.
pub(crate) struct Page(Option<GetResponse>);

impl Answer for Page {
    fn raft_term(&self) -> Option<u64> {
        self.0.as_ref().and_then(Answer::raft_term)
    }
}

/// Whether a request failed because the revision it read at was compacted.
fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::OutOfRange && s.message().contains("compacted"))
}

/// The first key after every key that starts with `prefix` (etcd's range end of a prefix).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Every key under `prefix` (with values unless `keys_only`), in key order, read in pages of
/// [`VALUE_PAGE`] or [`KEY_PAGE`] keys at the revision of the first page, so the whole is one
/// consistent view however many keys and bytes there are; returns that revision too. A page
/// whose revision was compacted meanwhile starts the read over at the newest revision.
///
/// One Range over a prefix used to be read in one answer, which tonic refuses past 4 MiB:
/// five holders of 1 MiB of data each, or ~94,000 allocation keys.
pub(crate) async fn range_all(
    ctx: &Ctx,
    prefix: &str,
    keys_only: bool,
) -> Result<(i64, Vec<PbKeyValue>)> {
    let end = prefix_end(prefix.as_bytes());
    let page_size = if keys_only { KEY_PAGE } else { VALUE_PAGE };
    'read: loop {
        let mut kvs = Vec::new();
        let mut revision = 0i64;
        let mut from = prefix.as_bytes().to_vec();
        loop {
            let page = ctx
                .call(|c| {
                    let mut options = GetOptions::new()
                        .with_range(end.clone())
                        .with_limit(page_size)
                        .with_revision(revision);
                    if keys_only {
                        options = options.with_keys_only();
                    }
                    let key = from.clone();
                    async move {
                        let mut kv = c.kv_client().max_decoding_message_size(MAX_ANSWER);
                        match kv.get(key, Some(options)).await {
                            Ok(answer) => Ok(Page(Some(answer))),
                            Err(e) if is_compacted(&e) => Ok(Page(None)),
                            Err(e) => Err(e),
                        }
                    }
                })
                .await?;
            let Some(mut answer) = page.0 else {
                continue 'read;
            };
            if revision == 0 {
                revision = answer.0.header.as_ref().map_or(0, |h| h.revision);
                if revision <= 0 {
                    return Err(Error::unavailable(format!(
                        "etcd answered a read of {prefix} without a revision"
                    )));
                }
            }
            let more = answer.0.more;
            let page = std::mem::take(&mut answer.0.kvs);
            let last = page.last().map(|kv| kv.key.clone());
            kvs.extend(page);
            match last {
                Some(mut last) if more => {
                    // The next page starts right after the last key read.
                    last.push(0);
                    from = last;
                }
                _ => return Ok((revision, kvs)),
            }
        }
    }
}

/// Runs every future at once and collects the `Some` outputs (a tiny `join_all`: the crate does
/// not depend on `futures`).
async fn futures_join_all<T, F>(futures: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: Future<Output = Option<T>>,
{
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<Option<T>>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (fut, slot) in set.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(out) => *slot = Some(out),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    done.into_iter().flatten().flatten().collect()
}

/// Whether a failed request may succeed when repeated (possibly on another member).
pub(crate) fn is_transient(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Unknown
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::Internal
                | Code::Cancelled
        ),
        _ => false,
    }
}

/// Whether an error says the endpoint that gave it is no etcd member: gRPC's readings of HTTP
/// 404, 401 and 403 from something in front of it (a proxy, a web server). etcd itself answers
/// every RPC lock-etcd sends, and without authentication, so these are the endpoint's, not the
/// cluster's.
fn is_not_etcd(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    matches!(e, etcd_client::Error::GRpcStatus(s) if matches!(
        s.code(),
        Code::Unimplemented | Code::Unauthenticated | Code::PermissionDenied
    ))
}

/// Whether an error says the lease no longer exists.
pub(crate) fn is_lease_gone(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::NotFound || s.message().contains("lease not found")
        }
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

/// Maps a client error to the shared error enum: a vanished lease is [`Error::Lost`]; an
/// `OutOfRange` status (an answer larger than the client accepts, a revision compacted or in the
/// future) is [`Error::Corrupt`]: the server was reached and answered, and lock-etcd's own keys
/// never make an answer that large ([`range_all`] pages its reads), so the store holds what
/// lock-etcd did not write. Anything else means the service did not do what was asked,
/// [`Error::Unavailable`] with the cause.
pub(crate) fn map_err(e: etcd_client::Error) -> Error {
    if is_lease_gone(&e) {
        return Error::Lost;
    }
    match &e {
        etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::OutOfRange => {
            Error::corrupt(format!(
                "etcd answer out of range (larger than {MAX_ANSWER} bytes, or at a revision \
                 etcd no longer has): {}",
                s.message()
            ))
        }
        _ => Error::unavailable(e),
    }
}

/// A Txn's `index`-th response when it is a read, without the client's panicking accessors.
pub(crate) fn txn_range(resp: &PbTxnResponse, index: usize) -> Option<&PbRangeResponse> {
    match resp.responses.get(index)?.response.as_ref()? {
        PbTxnOpResponse::ResponseRange(range) => Some(range),
        _ => None,
    }
}

/// The keys of a Txn's `index`-th response (none when it is no read).
pub(crate) fn txn_kvs(resp: &PbTxnResponse, index: usize) -> &[PbKeyValue] {
    txn_range(resp, index).map_or(&[], |range| &range.kvs)
}

/// The first key of a Txn's `index`-th response.
pub(crate) fn txn_first_kv(resp: &PbTxnResponse, index: usize) -> Option<&PbKeyValue> {
    txn_kvs(resp, index).first()
}

/// `d` in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, message))
    }

    /// An answer over the client's limit is `Corrupt`, not `Unavailable`: the server answered
    /// (it was `Unavailable { OutOfRange "decoded message length too large" }`).
    #[test]
    fn an_answer_out_of_range_is_corrupt() {
        let too_large = status(
            tonic::Code::OutOfRange,
            "Error, decoded message length too large: found 5244629 bytes, the limit is: \
             4194304 bytes",
        );
        assert!(!is_transient(&too_large));
        assert!(matches!(map_err(too_large), Error::Corrupt { .. }));
        let compacted = status(
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
        assert!(is_compacted(&compacted));
        assert!(matches!(
            map_err(status(tonic::Code::Unavailable, "no leader")),
            Error::Unavailable { .. }
        ));
    }

    /// What a proxy's 404, 401 and 403 become is the endpoint's answer, not the cluster's.
    #[test]
    fn answers_of_something_else_than_etcd_are_told_apart() {
        for code in [
            tonic::Code::Unimplemented,
            tonic::Code::Unauthenticated,
            tonic::Code::PermissionDenied,
        ] {
            assert!(is_not_etcd(&status(code, "")), "{code:?}");
        }
        assert!(!is_not_etcd(&status(
            tonic::Code::NotFound,
            "lease not found"
        )));
        assert!(!is_not_etcd(&status(
            tonic::Code::InvalidArgument,
            "too large"
        )));
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"a/lock/"), b"a/lock0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
