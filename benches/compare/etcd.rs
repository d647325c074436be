//! The etcd peer: etcd's own Lock and Unlock RPCs (etcd-client) on one session lease per process,
//! granted once, as Go's `concurrency.Mutex` on a `Session` does. It runs in the uncontended group
//! and, one lease per worker process, in the contention group (the target on 4 processes).

use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, LockOptions};

use crate::subject::Mutexish;

/// The peer's session lease TTL, renewed every third of it.
const LEASE_SECS: i64 = 60;

/// The name every acquisition of the peer locks.
const NAME: &str = "lockyard-bench/etcd-lock-rpc";

/// One lock through etcd's Lock RPC.
pub(crate) struct LockRpc {
    runtime: tokio::runtime::Runtime,
    client: Client,
    lease: i64,
    key: Mutex<Option<Vec<u8>>>,
}

impl LockRpc {
    /// Connects to `endpoints` (comma-separated), grants the session lease (60 s) and keeps it
    /// alive from a task on the peer's runtime, as a Go `Session` does: a slow machine must not
    /// lose the peer's lease in the middle of a group.
    pub(crate) fn connect(endpoints: &str) -> LockRpc {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let endpoints: Vec<&str> = endpoints.split(',').collect();
        let (client, lease) = runtime
            .block_on(lock_etcd::testkit::lock_rpc_peer(&endpoints, LEASE_SECS))
            .expect("the Lock RPC peer");
        LockRpc {
            runtime,
            client,
            lease,
            key: Mutex::new(None),
        }
    }
}

impl Mutexish for LockRpc {
    #[inline(never)]
    fn acquire(&self) -> bool {
        let mut client = self.client.clone();
        let key = self
            .runtime
            .block_on(client.lock(NAME, Some(LockOptions::new().with_lease(self.lease))))
            .expect("Lock RPC")
            .key()
            .to_vec();
        *self.key.lock().expect("key") = Some(key);
        false
    }

    fn acquire_for(&self, _timeout: Duration) -> Option<bool> {
        panic!("the Lock RPC peer only runs in the uncontended and contention groups")
    }

    #[inline(never)]
    fn try_acquire(&self) -> bool {
        panic!("etcd's Lock RPC has no try_lock")
    }

    #[inline(never)]
    fn release(&self) {
        let key = self.key.lock().expect("key").take().expect("held");
        let mut client = self.client.clone();
        self.runtime
            .block_on(client.unlock(key))
            .expect("Unlock RPC");
    }
}
