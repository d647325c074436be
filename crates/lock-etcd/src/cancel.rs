//! Cancelling a blocked acquisition from another thread.

use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;

/// A cancellation request that another thread can make while an acquisition blocks, as Go's
/// `context.Context` is to `Mutex.Lock`.
///
/// Cheap to clone; every clone cancels the same acquisitions. Once cancelled it stays cancelled:
/// an acquisition started with a cancelled token gives up at once.
///
/// ```no_run
/// use lock_etcd::{CancelToken, EtcdLocks, EtcdOptions, Locker};
///
/// let locks = EtcdLocks::connect(["http://127.0.0.1:2379"], EtcdOptions::new())?;
/// let lock = locks.named("report")?;
/// let cancel = CancelToken::new();
/// let canceller = cancel.clone();
/// std::thread::spawn(move || canceller.cancel());
/// match lock.lock_until_cancelled(&cancel)? {
///     Some(_) => lock.unlock()?,
///     None => println!("gave up; nothing was left in etcd"),
/// }
/// # Ok::<(), lock_etcd::Error>(())
/// ```
#[derive(Clone)]
pub struct CancelToken {
    tx: Arc<watch::Sender<bool>>,
}

impl CancelToken {
    /// A token nobody has cancelled yet.
    pub fn new() -> CancelToken {
        CancelToken {
            tx: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Cancels every acquisition waiting on this token, now and later.
    pub fn cancel(&self) {
        self.tx.send_replace(true);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        *self.tx.borrow()
    }

    pub(crate) fn receiver(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

impl Default for CancelToken {
    fn default() -> Self {
        CancelToken::new()
    }
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}
