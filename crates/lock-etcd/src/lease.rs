//! One acquisition's lease: the keepalive task, the own-key watch, and the lost signal they fire.
//!
//! Invariants:
//! 1. `confirmed_until` is the send time of the last keepalive the server answered plus the TTL it
//!    granted: the server cannot expire the lease before then (it renewed it after we sent), so
//!    the lock is certainly ours until then and possibly not after.
//! 2. The lost signal fires at most once per acquisition and never un-fires; it fires when a
//!    keepalive answer says TTL <= 0 (the lease is gone), when `confirmed_until` passes with no
//!    newer answer, or when the own key is deleted, but never for a deletion this handle is making
//!    itself (`releasing`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use etcd_client::{Event, GetOptions, WatchFilterType, WatchOptions};
use lock_api::{LostSignal, LostTrigger};
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, timeout_at};

use crate::client::{Ctx, is_lease_gone};

/// How long to wait before retrying a broken stream.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How long an acquisition runs before its own-key watch opens. The watch starts from the key's
/// CreateRevision, so nothing that happens meanwhile is missed: a deletion during the first
/// 100 ms fires the lost signal 100 ms late, and a hold shorter than that never costs a watch
/// stream.
const WATCH_DELAY: Duration = Duration::from_millis(100);

/// The state shared by a held lock and its background tasks.
#[derive(Debug)]
pub(crate) struct Monitor {
    trigger: LostTrigger,
    lost_tx: watch::Sender<bool>,
    confirmed_until: Mutex<Instant>,
    releasing: AtomicBool,
}

impl Monitor {
    pub(crate) fn new(confirmed_until: Instant) -> Arc<Monitor> {
        let (trigger, _signal) = LostTrigger::new();
        Arc::new(Monitor {
            trigger,
            lost_tx: watch::Sender::new(false),
            confirmed_until: Mutex::new(confirmed_until),
            releasing: AtomicBool::new(false),
        })
    }

    /// Fires the lost signal, unless this handle is deleting its own key right now.
    pub(crate) fn fire(&self) {
        if self.releasing.load(Ordering::SeqCst) {
            return;
        }
        // The state first: whoever wakes on the signal must see `is_lost()`.
        self.lost_tx.send_replace(true);
        self.trigger.fire();
    }

    pub(crate) fn is_lost(&self) -> bool {
        *self.lost_tx.borrow()
    }

    pub(crate) fn signal(&self) -> LostSignal {
        self.trigger.signal()
    }

    /// Marks the start (or, on failure, the end) of this handle's own release.
    pub(crate) fn set_releasing(&self, releasing: bool) {
        self.releasing.store(releasing, Ordering::SeqCst);
    }

    /// Resolves when the lock is lost.
    pub(crate) async fn lost(&self) {
        let mut rx = self.lost_tx.subscribe();
        // The sender lives as long as `self`, so this only ends when the value is true.
        let _ = rx.wait_for(|lost| *lost).await;
    }

    pub(crate) fn confirmed_until(&self) -> Instant {
        *self
            .confirmed_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn confirm(&self, until: Instant) {
        let mut current = self
            .confirmed_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if until > *current {
            *current = until;
        }
    }

    /// Time the lease certainly has left, or `None` once it may have expired.
    pub(crate) fn time_left(&self) -> Option<Duration> {
        if self.is_lost() {
            return None;
        }
        self.confirmed_until()
            .checked_duration_since(Instant::now())
    }
}

/// The outcome of one keepalive exchange.
enum Renewal {
    /// A new stream was opened; its opening keepalive was answered with a positive TTL.
    Opened,
    /// The server answered with this TTL (<= 0: the lease is gone).
    Answered(i64),
    /// The server closed the stream.
    Closed,
}

/// Keeps `lease` alive every TTL/3 until aborted; fires the lost signal when it cannot.
pub(crate) async fn keep_alive(ctx: Ctx, lease: i64, ttl: Duration, monitor: Arc<Monitor>) {
    let period = ttl / 3;
    let mut stream = None;
    let mut endpoint = 0;
    let mut next = Instant::now() + period;
    loop {
        sleep_until(next.into()).await;
        // One renewal, retried until it succeeds or the lease may have expired (invariant 1).
        loop {
            let deadline = monitor.confirmed_until();
            let sent = Instant::now();
            if sent >= deadline {
                monitor.fire();
                return;
            }
            let attempt_deadline = deadline.min(sent + ctx.attempt_timeout());
            let attempt = timeout_at(attempt_deadline.into(), async {
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
                    Some(answer) => Renewal::Answered(answer.ttl()),
                    None => Renewal::Closed,
                })
            })
            .await;
            match attempt {
                Ok(Ok(Renewal::Opened)) => {
                    monitor.confirm(sent + ttl);
                    break;
                }
                Ok(Ok(Renewal::Answered(granted))) if granted > 0 => {
                    let granted = u64::try_from(granted).unwrap_or(0);
                    monitor.confirm(sent + Duration::from_secs(granted));
                    break;
                }
                Ok(Ok(Renewal::Answered(_))) => {
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
/// is deleted by anyone but this handle.
pub(crate) async fn watch_own_key(ctx: Ctx, key: String, revision: i64, monitor: Arc<Monitor>) {
    sleep(WATCH_DELAY).await;
    let mut from = revision + 1;
    loop {
        if monitor.is_lost() {
            return;
        }
        if watch_deletion(&ctx, key.clone().into_bytes(), from).await {
            monitor.fire();
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
                    monitor.fire();
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

/// Whether a watch event is a deletion (read from the raw field: the client's own accessor panics
/// on an event type it does not know).
/// Watches `key` from revision `from`: true when it is deleted, false when the watch cannot be
/// opened or breaks (compaction, no leader, a dead member), so the caller re-reads and retries.
pub(crate) async fn watch_deletion(ctx: &Ctx, key: Vec<u8>, from: i64) -> bool {
    let options = WatchOptions::new()
        .with_start_revision(from)
        .with_filters([WatchFilterType::NoPut]);
    let (endpoint, mut client) = ctx.pick();
    let opened = timeout_at(
        (Instant::now() + ctx.attempt_timeout()).into(),
        client.watch(key, Some(options)),
    )
    .await;
    let Ok(Ok(mut stream)) = opened else {
        ctx.failed(endpoint);
        return false;
    };
    // Ends when the stream closes or fails.
    while let Ok(Some(answer)) = stream.message().await {
        if answer.events().iter().any(is_delete) {
            return true;
        }
        if answer.canceled() {
            break;
        }
    }
    false
}

fn is_delete(event: &Event) -> bool {
    event.0.r#type == 1
}
