//! A session's lease (the keepalive task and the session's lost state), each held lock's own lost
//! state on top of it, and the watches that notice a deleted key.
//!
//! A session holds one lease shared by every acquisition made through it ([`Monitor`]); each
//! held lock has a [`LockMonitor`] that is lost when its session is lost or when its own key is
//! deleted by someone else.
//!
//! Invariants:
//! 1. The *deadline* is the send time of the last keepalive the server answered, plus the TTL it
//!    granted, minus the safety margin ([`safety_margin`]). The server renewed the lease after we
//!    sent, so it cannot expire it before the deadline plus the margin: the lock is certainly
//!    ours until the deadline.
//! 2. A session's lost state is one state, under one mutex with the deadline: the session is
//!    lost once the lost flag is set, and the flag is set by whoever first sees the deadline
//!    passed (a call of `is_lost`, `time_left`, or the watchdog timer that sleeps until the
//!    deadline), by a keepalive answer with TTL <= 0, or by a request that found the lease gone.
//!    A lock is also lost by a deletion of its own key that its handle is not making itself
//!    (`releasing`). The [`LostSignal`] and the watch channel are fired under that same mutex, so
//!    `is_lost()` of the signal, `fencing_token()` and `time_left()` agree at every call: once
//!    one of them said lost, every later call of any of them says lost.
//! 3. The flag never clears, and a keepalive answered after the deadline does not move it: a
//!    lock is lost at its deadline, whatever comes later.
//! 4. A lock is lost when its session is lost or its own key was deleted, and never un-lost. A
//!    session that becomes lost fires every registered lock's signal; a lock that finds its
//!    session lost (by the deadline) fires its own. Lock order: a lock checks its session (and
//!    releases the session's mutex) before it touches its own state, and the session fires locks
//!    through their atomics and signals only, so the two never wait on each other.
//! 5. A watch is as alive as its member: when it has heard nothing (no event, no answer to a
//!    progress request) for the attempt timeout, it is dropped and its endpoint marked failing,
//!    exactly as an unanswered request is (see `client::retry`); the caller reads and watches
//!    again on the next endpoint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{Event, GetOptions, WatchFilterType, WatchOptions};
use lock_api::{LostSignal, LostTrigger};
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, timeout_at};

use crate::client::{Ctx, is_lease_gone};
use crate::options::MAX_TTL;

/// How long to wait before retrying a broken stream.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The smallest safety margin; see [`safety_margin`].
const MIN_SAFETY_MARGIN: Duration = Duration::from_millis(50);

/// The TTL of a server's answer (a grant, a renewal, a lease's time to live), in seconds: zero
/// for a negative one, and at most etcd's own maximum, [`MAX_TTL`]. A larger one comes only from
/// a broken or hostile server; taking it as the maximum renews sooner than that server asked,
/// and keeps every time computed from it in the clocks' range (`SystemTime::now()` plus an
/// `i64::MAX`-second TTL panicked).
pub(crate) fn answered_ttl(secs: i64) -> Duration {
    Duration::from_secs(u64::try_from(secs).unwrap_or(0)).min(MAX_TTL)
}

/// How long before the server may expire the lease the lock is declared lost: TTL/20, at least
/// 50 ms (100 ms with the 2 s minimum TTL, 500 ms with the default 10 s).
///
/// It absorbs what can make the local deadline late against the server's: the watchdog timer
/// waking late on a loaded runtime thread or machine, and the client's clock running slower than
/// the leader's (NTP bounds the rate error to 500 ppm, 0.05 % of the TTL). A holder that checks
/// `is_lost` or its token just before it writes still has the margin to do so.
pub(crate) fn safety_margin(ttl: Duration) -> Duration {
    (ttl / 20).max(MIN_SAFETY_MARGIN)
}

#[derive(Debug)]
struct State {
    deadline: Instant,
    lost: bool,
}

/// A session lease's state, shared by the session, its keepalive task and every lock held
/// through it.
#[derive(Debug)]
pub(crate) struct Monitor {
    trigger: LostTrigger,
    lost_tx: watch::Sender<bool>,
    state: Mutex<State>,
    margin: Duration,
    /// The locks held through this session, fired when it is lost (invariant 4).
    locks: Mutex<Vec<Weak<LockMonitor>>>,
}

impl Monitor {
    /// The monitor of a lease granted with `ttl` by a request sent at `sent`.
    pub(crate) fn new(sent: Instant, ttl: Duration) -> Arc<Monitor> {
        let (trigger, _signal) = LostTrigger::new();
        let margin = safety_margin(ttl);
        Arc::new(Monitor {
            trigger,
            lost_tx: watch::Sender::new(false),
            state: Mutex::new(State {
                deadline: sent + ttl.saturating_sub(margin),
                lost: false,
            }),
            margin,
            locks: Mutex::new(Vec::new()),
        })
    }

    /// Registers a lock held through this session; it is fired at once if the session is lost.
    pub(crate) fn register(&self, lock: &Arc<LockMonitor>) {
        {
            let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
            locks.retain(|l| l.strong_count() > 0);
            locks.push(Arc::downgrade(lock));
        }
        if self.is_lost() {
            lock.fire();
        }
    }

    /// When the server may expire the lease at the earliest unless a renewal is answered: the
    /// deadline plus the margin, on the wall clock; `None` once lost.
    pub(crate) fn expires(&self) -> Option<SystemTime> {
        let left = self.time_left()?;
        Some(SystemTime::now() + left + self.margin)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the lost flag and fires both signals, under the state lock (invariant 2).
    fn mark_lost(&self, state: &mut State) {
        if state.lost {
            return;
        }
        state.lost = true;
        self.lost_tx.send_replace(true);
        self.trigger.fire();
        // Invariant 4: locks are fired through their atomics and signals only.
        let locks = std::mem::take(&mut *self.locks.lock().unwrap_or_else(PoisonError::into_inner));
        for lock in locks.iter().filter_map(Weak::upgrade) {
            lock.fire();
        }
    }

    /// Whether the lock is lost; marks it lost when the deadline has passed (invariant 2).
    fn check(&self, state: &mut State, now: Instant) -> bool {
        if !state.lost && now >= state.deadline {
            self.mark_lost(state);
        }
        state.lost
    }

    /// Fires the lost signal.
    pub(crate) fn fire(&self) {
        self.mark_lost(&mut self.state());
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.check(&mut self.state(), Instant::now())
    }

    pub(crate) fn signal(&self) -> LostSignal {
        self.trigger.signal()
    }

    /// Resolves when the session is lost (its deadline passed, or the lease is gone).
    pub(crate) async fn lost(&self) {
        let mut rx = self.lost_tx.subscribe();
        // The sender lives as long as `self`, so this only ends when the value is true.
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// Records a keepalive sent at `sent` and answered with `granted` (invariants 1 and 3).
    fn confirm(&self, sent: Instant, granted: Duration) {
        let mut state = self.state();
        if self.check(&mut state, Instant::now()) {
            return;
        }
        let until = sent + granted.saturating_sub(self.margin);
        if until > state.deadline {
            state.deadline = until;
        }
    }

    /// Time left until the deadline, or `None` once the lock is lost.
    pub(crate) fn time_left(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut state = self.state();
        if self.check(&mut state, now) {
            return None;
        }
        Some(state.deadline - now)
    }

    /// Fires the lost signal when the deadline passes with no newer renewal: a timer of its own,
    /// so that nothing the keepalive waits for (an answer, a pause before a retry) can delay it.
    async fn expire(&self) {
        loop {
            let deadline = {
                let mut state = self.state();
                if self.check(&mut state, Instant::now()) {
                    return;
                }
                state.deadline
            };
            sleep_until(deadline.into()).await;
        }
    }
}

/// One held lock's lost state: lost when its session is lost or its own key is deleted by
/// someone else (invariant 4).
#[derive(Debug)]
pub(crate) struct LockMonitor {
    session: Arc<Monitor>,
    lost: AtomicBool,
    trigger: LostTrigger,
    lost_tx: watch::Sender<bool>,
    releasing: AtomicBool,
}

impl LockMonitor {
    /// The state of a lock held through the session whose monitor is `session`.
    pub(crate) fn new(session: &Arc<Monitor>) -> Arc<LockMonitor> {
        let (trigger, _signal) = LostTrigger::new();
        let lock = Arc::new(LockMonitor {
            session: Arc::clone(session),
            lost: AtomicBool::new(false),
            trigger,
            lost_tx: watch::Sender::new(false),
            releasing: AtomicBool::new(false),
        });
        session.register(&lock);
        lock
    }

    /// Fires the lost signal (once).
    pub(crate) fn fire(&self) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            self.lost_tx.send_replace(true);
            self.trigger.fire();
        }
    }

    /// Whether the lock is lost; fires it when the session is (invariants 2 and 4).
    pub(crate) fn is_lost(&self) -> bool {
        if self.lost.load(Ordering::SeqCst) {
            return true;
        }
        if self.session.is_lost() {
            self.fire();
            return true;
        }
        false
    }

    /// Time left until the session's deadline, or `None` once the lock is lost.
    pub(crate) fn time_left(&self) -> Option<Duration> {
        let left = self.session.time_left();
        if left.is_none() {
            self.fire();
        }
        if self.lost.load(Ordering::SeqCst) {
            return None;
        }
        left
    }

    /// Fires the lost signal for a deletion of the own key, unless this handle is deleting it
    /// right now.
    pub(crate) fn key_deleted(&self) {
        if !self.releasing.load(Ordering::SeqCst) {
            self.fire();
        }
    }

    /// Marks the start (or, on failure, the end) of this handle's own release.
    pub(crate) fn set_releasing(&self, releasing: bool) {
        self.releasing.store(releasing, Ordering::SeqCst);
    }

    pub(crate) fn signal(&self) -> LostSignal {
        self.trigger.signal()
    }

    /// Resolves when the lock is lost: its own signal, or its session's deadline passing.
    pub(crate) async fn lost(&self) {
        let mut rx = self.lost_tx.subscribe();
        tokio::select! {
            // The sender lives as long as `self`, so this only ends when the value is true.
            _ = rx.wait_for(|lost| *lost) => {}
            () = self.session.lost() => self.fire(),
        }
    }
}

/// The outcome of one keepalive exchange.
enum Renewal {
    /// A new stream was opened; its opening keepalive was answered with a positive TTL.
    Opened,
    /// The server answered with this TTL (<= 0: the lease is gone), in this raft term (0 when
    /// the answer has no header).
    Answered(i64, u64),
    /// The server closed the stream.
    Closed,
}

/// Keeps `lease` alive every TTL/3 until aborted; fires the lost signal when it cannot before the
/// deadline.
pub(crate) async fn keep_alive(ctx: Ctx, lease: i64, ttl: Duration, monitor: Arc<Monitor>) {
    tokio::select! {
        () = renew(&ctx, lease, ttl, &monitor) => {}
        () = monitor.expire() => {}
    }
}

/// Renews `lease` every TTL/3, retrying failed renewals on the next endpoint, until a renewal
/// says the lease is gone (the deadline is [`Monitor::expire`]'s business).
async fn renew(ctx: &Ctx, lease: i64, ttl: Duration, monitor: &Monitor) {
    let period = ttl / 3;
    let mut stream = None;
    let mut endpoint = 0;
    let mut next = Instant::now() + period;
    loop {
        sleep_until(next.into()).await;
        // One renewal, retried until it succeeds; the watchdog ends this at the deadline.
        loop {
            let sent = Instant::now();
            let attempt = timeout_at((sent + ctx.attempt_timeout()).into(), async {
                let Some((keeper, answers)) = stream.as_mut() else {
                    // Opening the stream sends one keepalive and awaits its answer, which the
                    // client checks for a positive TTL.
                    let (index, mut client) = ctx.pick();
                    endpoint = index;
                    stream = Some(client.lease_keep_alive(lease).await?);
                    return Ok(Renewal::Opened);
                };
                keeper.keep_alive().await?;
                Ok(match answers.message().await? {
                    Some(answer) => Renewal::Answered(
                        answer.ttl(),
                        answer.header().map_or(0, |h| h.raft_term()),
                    ),
                    None => Renewal::Closed,
                })
            })
            .await;
            match attempt {
                Ok(Ok(Renewal::Opened)) => {
                    monitor.confirm(sent, ttl);
                    break;
                }
                Ok(Ok(Renewal::Answered(granted, term))) if granted > 0 => {
                    monitor.confirm(sent, answered_ttl(granted));
                    // A renewal every TTL/3 is one way a connection hears of an election that
                    // failed none of its requests (a leader transfer).
                    ctx.saw_term(term);
                    break;
                }
                Ok(Ok(Renewal::Answered(..))) => {
                    monitor.fire();
                    return;
                }
                Ok(Err(e)) if is_lease_gone(&e) => {
                    monitor.fire();
                    return;
                }
                _ => {
                    ctx.failed(endpoint);
                    stream = None;
                    sleep(RETRY_PAUSE).await;
                }
            }
        }
        next = Instant::now() + period;
    }
}

/// Watches the own key `key` (created at `revision`) until aborted; fires the lost signal when it
/// is deleted by anyone but this handle. The session opens it a while into the hold
/// (`session::KeyWatch`); it starts from the key's CreateRevision, so nothing is missed.
pub(crate) async fn watch_own_key(ctx: Ctx, key: String, revision: i64, monitor: Arc<LockMonitor>) {
    let mut from = revision + 1;
    loop {
        if monitor.is_lost() {
            return;
        }
        if watch_deletion(&ctx, key.clone().into_bytes(), Some(from), None).await {
            monitor.key_deleted();
            return;
        }
        // The watch broke (compaction, no leader, a dead member): check the key by reading it,
        // then watch again from the revision of that read.
        let read = ctx
            .call(|mut c| {
                let key = key.clone();
                async move { c.get(key, Some(GetOptions::new().with_keys_only())).await }
            })
            .await;
        match read {
            Ok(answer) => {
                let ours = answer
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.create_revision() == revision);
                if !ours {
                    monitor.key_deleted();
                    return;
                }
                if let Some(header) = answer.header() {
                    from = from.max(header.revision() + 1);
                }
            }
            Err(_) => sleep(RETRY_PAUSE).await,
        }
    }
}

/// Watches `key` from revision `from`, or from now (`None`): true when it is deleted, false
/// when the watch cannot be opened, breaks (compaction, no leader, a dead member) or goes silent,
/// so the caller re-reads and retries.
///
/// From now: etcd serves a watch whose start lies in the past from a background loop that
/// catches up every 100 ms (its "unsynced" watchers), which on a busy lock delays every
/// hand-over by up to that much; a watch from now is served as events happen. What it cannot
/// see, a deletion before it was created, is checked by reading the key once it is: when
/// `incarnation` is given, a key of that name with another CreateRevision (made again after the
/// deletion) counts as deleted too, and a deletion seen later is the incarnation's, since a name
/// is made again only after it was deleted.
///
/// Silence is how a stopped or partitioned member looks: its TCP connection stays open and it
/// answers nothing. When nothing has arrived for half the attempt timeout the watch asks for a
/// progress report (etcd answers at once with an empty response); when nothing has arrived for a
/// whole attempt timeout the endpoint is marked failing, as for an unanswered request
/// (invariant 5), and the watch is dropped.
pub(crate) async fn watch_deletion(
    ctx: &Ctx,
    key: Vec<u8>,
    from: Option<i64>,
    incarnation: Option<i64>,
) -> bool {
    let mut options = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
    if let Some(from) = from {
        options = options.with_start_revision(from);
    }
    let probe = key.clone();
    let silence = ctx.attempt_timeout();
    let (endpoint, mut client) = ctx.pick();
    let opened = timeout_at(
        (Instant::now() + silence).into(),
        client.watch(key, Some(options)),
    )
    .await;
    let Ok(Ok(stream)) = opened else {
        ctx.failed(endpoint);
        return false;
    };
    let (mut requests, mut answers) = stream.split();
    let mut heard = Instant::now();
    let mut asked = false;
    loop {
        let wake = heard + if asked { silence } else { silence / 2 };
        tokio::select! {
            answer = answers.message() => match answer {
                Ok(Some(answer)) => {
                    if answer.events().iter().any(is_delete) {
                        return true;
                    }
                    if answer.canceled() {
                        // Compacted past `from`, or refused: not the member's fault.
                        return false;
                    }
                    if from.is_none() && answer.created() {
                        // Deleted before the watch began? Then it is gone now.
                        let probe = probe.as_slice();
                        let read = ctx
                            .call(|mut c| async move {
                                c.get(probe, Some(GetOptions::new().with_keys_only())).await
                            })
                            .await;
                        match read {
                            Ok(read) => {
                                let now = read.kvs().first().map(|kv| kv.create_revision());
                                if now.is_none() || incarnation.is_some_and(|r| now != Some(r)) {
                                    return true;
                                }
                            }
                            Err(_) => return false,
                        }
                    }
                    heard = Instant::now();
                    asked = false;
                }
                // The stream failed or the member closed it.
                Ok(None) | Err(_) => {
                    ctx.failed(endpoint);
                    return false;
                }
            },
            () = sleep_until(wake.into()) => {
                if asked {
                    ctx.failed(endpoint);
                    return false;
                }
                let sent = timeout_at((heard + silence).into(), requests.request_progress()).await;
                if !matches!(sent, Ok(Ok(()))) {
                    ctx.failed(endpoint);
                    return false;
                }
                asked = true;
            }
        }
    }
}

/// Whether a watch event is a deletion (read from the raw field: the client's own accessor panics
/// on an event type it does not know).
fn is_delete(event: &Event) -> bool {
    event.0.r#type == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ago(d: Duration) -> Instant {
        Instant::now()
            .checked_sub(d)
            .unwrap_or_else(|| panic!("the monotonic clock is younger than {d:?}"))
    }

    /// A server that answers a TTL past etcd's maximum gets the maximum: the monitor's times
    /// stay in range (`expires` panicked with an `i64::MAX`-second TTL).
    #[test]
    fn a_ttl_past_etcds_maximum_is_taken_as_the_maximum() {
        assert_eq!(answered_ttl(-1), Duration::ZERO);
        assert_eq!(answered_ttl(10), Duration::from_secs(10));
        assert_eq!(answered_ttl(i64::MAX), MAX_TTL);
        let monitor = Monitor::new(Instant::now(), answered_ttl(i64::MAX));
        let expires = monitor.expires().expect("not lost");
        assert!(expires <= SystemTime::now() + MAX_TTL, "{expires:?}");
        monitor.confirm(Instant::now(), answered_ttl(i64::MAX));
        assert!(monitor.expires().is_some());
    }

    #[test]
    fn margin_is_a_twentieth_of_the_ttl_and_at_least_50_ms() {
        assert_eq!(
            safety_margin(Duration::from_secs(2)),
            Duration::from_millis(100)
        );
        assert_eq!(
            safety_margin(Duration::from_secs(10)),
            Duration::from_millis(500)
        );
        assert_eq!(safety_margin(Duration::from_millis(500)), MIN_SAFETY_MARGIN);
    }

    #[test]
    fn time_left_ends_a_margin_before_the_lease_can_expire() {
        let ttl = Duration::from_secs(10);
        let monitor = Monitor::new(Instant::now(), ttl);
        let left = monitor.time_left().unwrap_or_default();
        assert!(left <= ttl - safety_margin(ttl), "{left:?}");
        assert!(left > ttl / 2, "{left:?}");
        assert!(!monitor.is_lost());
        assert!(!monitor.signal().is_lost());
    }

    #[test]
    fn every_view_fires_the_signal_once_the_deadline_passed() {
        let ttl = Duration::from_secs(2);
        // Sent just inside the margin: the lease may live on at the server, the lock is lost.
        let within_margin = ttl - safety_margin(ttl) / 2;
        let by_time_left = Monitor::new(ago(within_margin), ttl);
        assert_eq!(by_time_left.time_left(), None);
        assert!(by_time_left.signal().is_lost(), "time_left said lost first");
        let by_is_lost = Monitor::new(ago(within_margin), ttl);
        assert!(by_is_lost.is_lost());
        assert!(by_is_lost.signal().is_lost(), "is_lost said lost first");
    }

    #[test]
    fn a_late_renewal_does_not_revive_a_lost_lock() {
        let ttl = Duration::from_secs(2);
        let monitor = Monitor::new(ago(ttl), ttl);
        // Nobody looked yet: the answer arriving after the deadline still does not extend it.
        monitor.confirm(Instant::now(), ttl);
        assert!(monitor.is_lost());
        assert_eq!(monitor.time_left(), None);
        assert!(monitor.signal().is_lost());
    }

    #[test]
    fn a_timely_renewal_moves_the_deadline() {
        let ttl = Duration::from_secs(2);
        let monitor = Monitor::new(ago(ttl / 2), ttl);
        let before = monitor.time_left().unwrap_or_default();
        monitor.confirm(Instant::now(), ttl);
        let after = monitor.time_left().unwrap_or_default();
        assert!(after > before, "{before:?} then {after:?}");
    }

    #[test]
    fn own_deletion_is_not_a_loss_but_a_foreign_one_is() {
        let session = Monitor::new(Instant::now(), Duration::from_secs(10));
        let monitor = LockMonitor::new(&session);
        monitor.set_releasing(true);
        monitor.key_deleted();
        assert!(!monitor.is_lost());
        monitor.set_releasing(false);
        monitor.key_deleted();
        assert!(monitor.is_lost());
        assert!(monitor.signal().is_lost());
        assert!(!session.is_lost(), "one lock's key is not the session");
    }

    #[test]
    fn a_lost_session_loses_every_lock_and_a_later_one_at_once() {
        let session = Monitor::new(Instant::now(), Duration::from_secs(10));
        let (a, b) = (LockMonitor::new(&session), LockMonitor::new(&session));
        let (sa, sb) = (a.signal(), b.signal());
        session.fire();
        assert!(sa.is_lost() && sb.is_lost(), "the session fired its locks");
        assert!(a.is_lost() && b.is_lost());
        assert_eq!(a.time_left(), None);
        let late = LockMonitor::new(&session);
        assert!(late.signal().is_lost(), "registered after the loss");
    }

    #[test]
    fn a_lock_sees_its_sessions_deadline() {
        let ttl = Duration::from_secs(2);
        let session = Monitor::new(ago(ttl), ttl);
        let lock = LockMonitor::new(&session);
        assert_eq!(lock.time_left(), None);
        assert!(lock.signal().is_lost());
        assert!(session.signal().is_lost());
    }

    /// A waiter's predecessor was released and its name made again (by the same session, now
    /// behind the waiter) before the waiter's watch opened: the incarnation it waits for is gone,
    /// and the name's new one must not keep it waiting (it would wait for a key that waits for
    /// it). Before names were reused, the read after the watch opened asked only whether the
    /// name existed.
    #[cfg(feature = "testkit")]
    #[test]
    fn a_name_made_again_is_not_the_incarnation_waited_for() {
        let cluster = crate::testkit::EtcdCluster::start_members(1).expect("etcd");
        let endpoints = cluster.endpoints();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let ctx = Ctx::connect(&endpoints, &crate::EtcdOptions::new())
                .await
                .expect("connect");
            let key = b"t/lock/a/00000000000000ff-0".to_vec();
            let put = |value: &'static str| {
                let key = key.clone();
                ctx.call(move |mut c| {
                    let key = key.clone();
                    async move { c.put(key, value, None).await }
                })
            };
            let first = put("first")
                .await
                .expect("put")
                .header()
                .map_or(0, |h| h.revision());
            let k = key.clone();
            ctx.call(move |mut c| {
                let k = k.clone();
                async move { c.delete(k, None).await }
            })
            .await
            .expect("delete");
            put("again").await.expect("put again");
            let gone = tokio::time::timeout(
                Duration::from_secs(10),
                watch_deletion(&ctx, key.clone(), None, Some(first)),
            )
            .await;
            assert_eq!(gone, Ok(true), "waited for the name's new incarnation");
            // The incarnation that exists is waited for, and its deletion is seen.
            let now = tokio::time::timeout(
                Duration::from_millis(500),
                watch_deletion(&ctx, key.clone(), None, None),
            )
            .await;
            assert!(
                now.is_err(),
                "a key that exists counted as deleted: {now:?}"
            );
        });
        drop(cluster);
    }
}
