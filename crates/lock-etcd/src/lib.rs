//! lock-etcd: distributed locks on an etcd cluster, with leases, fencing tokens and a lost signal.
#![doc = include_str!("../README.md")]

mod cancel;
mod client;
mod clients;
mod data;
mod deadlock;
mod handle;
mod info;
mod lease;
mod mutex;
mod nonblocking;
mod options;
mod record;
mod session;
mod snapshot;
mod table;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

pub use lock_api;
use lock_api::PerProcess;
pub use lock_api::{
    Acquired, Cycle, Error, EtcdSpec, Fenced, HeldLock, Holder, Inspect, Leased, LockData,
    LockGuard, LockId, LockState, Locker, LostSignal, Manager, Result, Store, StoreSpec,
};

pub use crate::cancel::CancelToken;
pub use crate::deadlock::DEFAULT_DEADLOCK_TIMEOUT;
pub use crate::handle::{EtcdGuard, EtcdLock, EtcdSession};
pub use crate::info::Info;
pub use crate::nonblocking::{AsyncGuard, EtcdClient, Session};
pub use crate::options::{
    EtcdOptions, MAX_DATA_LEN, MAX_NAME_LEN, MAX_PREFIX_LEN, MAX_TIMEOUT, MAX_TTL, MIN_TTL,
    RESERVED_SEGMENTS, validate_name,
};
pub use crate::table::EtcdTable;

use crate::client::Shared;
use crate::mutex::Target;
use crate::table::OpenMode;

/// Connections made for store specs, shared by every store of the same endpoints and options in
/// this process (each connection is a runtime thread and a client per endpoint). A forked child
/// starts with none: its parent's connections refuse it, and their registry's lock may have been
/// held by a thread of the parent at the fork.
type Connections = Vec<((Vec<String>, EtcdOptions), Weak<Shared>)>;
static CONNECTIONS: PerProcess<Connections> = PerProcess::new();

/// A blocking connection to an etcd cluster: named locks under `<prefix>/lock/<name>/` and lock
/// tables under `<prefix>/table/<store>/`.
///
/// Cheap to clone; every clone shares one client, one runtime thread and one default session
/// (one lease, TTL from the options, shared by every handle not made from an explicit
/// [`EtcdSession`]). The runtime stops, and the default session's lease is revoked, when the last
/// clone and the last lock handle are dropped. For async code use [`EtcdClient`].
#[derive(Clone)]
pub struct EtcdLocks {
    shared: Arc<Shared>,
}

impl fmt::Debug for EtcdLocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdLocks")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl EtcdLocks {
    /// Connects to the cluster at `endpoints` (`http://host:port`) and checks, within the connect
    /// timeout, that a member with a leader answers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for bad options (a TTL below [`MIN_TTL`], an empty prefix, no
    /// endpoint); [`Error::Unavailable`] when no endpoint answered in time.
    pub fn connect<I, S>(endpoints: I, options: EtcdOptions) -> Result<EtcdLocks>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.as_ref().to_owned())
            .collect();
        Ok(EtcdLocks {
            shared: Shared::connect(&endpoints, options)?,
        })
    }

    /// The connection a store spec names: its endpoints (`HOST:PORT`, reached over `http://`),
    /// its prefix, and its TTL (or the default); every other option is
    /// [`EtcdOptions::new`]'s. Opening the same endpoints with the same options again in this
    /// process reuses the connection while any handle of it lives.
    ///
    /// # Errors
    ///
    /// As for [`connect`](Self::connect); an option the spec sets that
    /// [`connect`](Self::connect) would refuse (a TTL out of range) is an
    /// [`Error::InvalidArgument`] that names the spec, as a spec that does not parse is.
    pub fn for_spec(spec: &EtcdSpec) -> Result<EtcdLocks> {
        let endpoints: Vec<String> = spec
            .endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        let mut options = EtcdOptions::new().prefix(spec.prefix.clone());
        if let Some(ttl) = spec.ttl {
            options = options.ttl(ttl);
        }
        options.validate().map_err(|e| match e {
            Error::InvalidArgument { what } => Error::invalid(format!(
                "store spec {}: {what}",
                StoreSpec::Etcd(spec.clone())
            )),
            other => other,
        })?;
        let key = (endpoints, options);
        let mut connections = CONNECTIONS.lock(std::process::id());
        connections.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(shared) = connections
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, weak)| weak.upgrade())
        {
            return Ok(EtcdLocks { shared });
        }
        // Connecting under the lock: two threads opening one spec at once make one connection.
        let shared = Shared::connect(&key.0, key.1.clone())?;
        connections.push((key, Arc::downgrade(&shared)));
        Ok(EtcdLocks { shared })
    }

    /// The options this connection was made with.
    pub fn options(&self) -> &EtcdOptions {
        &self.shared.options
    }

    /// A handle on the named lock `name` (nothing is acquired yet). Each handle is its own owner.
    ///
    /// Named locks report [`LockId`] 0 and cannot be freed.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a name [`validate_name`] refuses.
    pub fn named(&self, name: &str) -> Result<EtcdLock> {
        let prefix = self.shared.options.prefix_value();
        Ok(EtcdLock::new(
            Arc::clone(&self.shared),
            None,
            LockId(0),
            Target::named(prefix, name, &self.shared.ctx.identity)?,
            None,
        ))
    }

    /// A new session with its own lease of `ttl` (rounded up to whole seconds, at least
    /// [`MIN_TTL`]), kept alive on this connection's runtime thread; locks made from it share
    /// its lease. Handles from [`named`](Self::named) use the connection's default session
    /// instead (TTL from the options, granted on first use, replaced when lost).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a TTL out of range; [`Error::Unavailable`].
    pub fn session(&self, ttl: Duration) -> Result<EtcdSession> {
        let ttl_secs = self.shared.options.clone().ttl(ttl).validate()?;
        let ctx = self.shared.ctx.clone();
        let core = self
            .shared
            .block_on(async move { session::SessionCore::grant(&ctx, ttl_secs).await })?;
        Ok(EtcdSession::new(Arc::clone(&self.shared), core))
    }

    /// Acquires the named lock, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// As for [`named`](Self::named) and [`Locker::lock`]; [`Error::Lost`] when the
    /// session's lease expired while it waited (it is then never reported as held).
    pub fn lock(&self, name: &str) -> Result<EtcdGuard> {
        let lock = self.named(name)?;
        let acquired = lock.lock()?;
        Ok(EtcdGuard::new(lock, acquired))
    }

    /// Acquires the named lock if nobody holds it.
    ///
    /// # Errors
    ///
    /// As for [`lock`](Self::lock).
    pub fn try_lock(&self, name: &str) -> Result<Option<EtcdGuard>> {
        let lock = self.named(name)?;
        Ok(lock
            .try_lock()?
            .map(|acquired| EtcdGuard::new(lock, acquired)))
    }

    /// Acquires the named lock, waiting at most `timeout`; a timed-out attempt leaves no key.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the time ran out; otherwise as for [`lock`](Self::lock).
    pub fn try_lock_for(&self, name: &str, timeout: Duration) -> Result<EtcdGuard> {
        let lock = self.named(name)?;
        let acquired = lock.try_lock_for(timeout)?;
        Ok(EtcdGuard::new(lock, acquired))
    }

    fn table_root(&self, store: &str) -> Result<String> {
        validate_name(store)?;
        Ok(format!(
            "{}/table/{store}",
            self.shared.options.prefix_value()
        ))
    }

    /// Creates the lock table `store` of `capacity` locks.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`] when it exists; [`Error::InvalidArgument`] for a zero capacity
    /// or a bad name; [`Error::Unavailable`].
    pub fn create_table(&self, store: &str, capacity: u32) -> Result<EtcdTable> {
        let root = self.table_root(store)?;
        EtcdTable::open_at(Arc::clone(&self.shared), root, OpenMode::Create(capacity))
            .map(|(t, _)| t)
    }

    /// Opens the existing lock table `store`; its capacity is read from etcd.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when it does not exist; [`Error::Incompatible`] when its format
    /// differs; [`Error::Corrupt`] when its header cannot be parsed.
    pub fn open_table(&self, store: &str) -> Result<EtcdTable> {
        let root = self.table_root(store)?;
        EtcdTable::open_at(Arc::clone(&self.shared), root, OpenMode::Open).map(|(t, _)| t)
    }

    /// Opens the lock table `store`, creating it when missing; the flag says whether this call
    /// created it. Any number of processes may race here: exactly one creates.
    ///
    /// # Errors
    ///
    /// As for [`create_table`](Self::create_table) and [`open_table`](Self::open_table).
    pub fn open_or_create_table(&self, store: &str, capacity: u32) -> Result<(EtcdTable, bool)> {
        let root = self.table_root(store)?;
        EtcdTable::open_at(
            Arc::clone(&self.shared),
            root,
            OpenMode::OpenOrCreate(capacity),
        )
    }

    /// Deletes the lock table `store` and every key under it. Locks still held in it are lost
    /// (their holders' lost signals fire).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when it does not exist; [`Error::Incompatible`] or
    /// [`Error::Corrupt`], with nothing deleted, when its header is not a lockyard table's;
    /// [`Error::InvalidArgument`] for a bad name; [`Error::Unavailable`].
    pub fn remove_table(&self, store: &str) -> Result<()> {
        let root = self.table_root(store)?;
        EtcdTable::remove_at(&self.shared, &root)
    }

    /// Deletes the lock table `store` only if no other manager has it open, deciding that and
    /// deleting in one Txn: a table opened meanwhile is either seen, or finds the table gone at
    /// its first request. Managers of processes of this host that have ended do not count (their
    /// client keys stay until their lease expires); those of other hosts count until then.
    ///
    /// # Errors
    ///
    /// [`Error::InUse`] naming the managers that have it open; otherwise as
    /// [`remove_table`](Self::remove_table), and [`Error::Corrupt`] for a client key that is not
    /// a client record.
    pub fn remove_unused_table(&self, store: &str) -> Result<()> {
        let root = self.table_root(store)?;
        crate::clients::remove_unused_at(&self.shared, &root)
    }
}
