//! What a backend tells the suite: how to make stores, and which capabilities it claims.

use std::fmt;

use lock_api::{Error, Fenced, Inspect, Leased, LockData, Manager, Result, Store, StoreSpec};

/// The capabilities a backend claims. A behaviour runs iff every capability it needs is claimed;
/// the rest are reported as not applicable, never silently skipped.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(u32);

impl Capabilities {
    /// No optional capability: the in-process contract only.
    pub const NONE: Capabilities = Capabilities(0);
    /// Stores are shared between processes: `open` in a child sees the parent's table.
    pub const MULTIPROCESS: Capabilities = Capabilities(1 << 0);
    /// A holder that dies (SIGKILL) releases its locks, and the next acquirer gets `OwnerDied`.
    pub const OWNER_DEATH: Capabilities = Capabilities(1 << 1);
    /// Stores have names and outlive the manager: create / open / open-or-create / remove.
    pub const PERSISTENT: Capabilities = Capabilities(1 << 2);
    /// Lockers implement [`Fenced`].
    pub const FENCED: Capabilities = Capabilities(1 << 3);
    /// Lockers implement [`Leased`].
    pub const LEASED: Capabilities = Capabilities(1 << 4);
    /// Lockers implement [`Inspect`].
    pub const INSPECT: Capabilities = Capabilities(1 << 5);
    /// Lockers implement [`LockData`].
    pub const LOCK_DATA: Capabilities = Capabilities(1 << 6);
    /// The manager keeps allocation state: `allocate`, `allocate_and_retrieve`, `free`,
    /// `free_all` and `available` work (a lone dirlock has only `retrieve`).
    pub const ALLOCATION: Capabilities = Capabilities(1 << 7);
    /// Every handle retrieved from one manager acts for the same owner, so a lock taken through
    /// one handle (or thread) may be unlocked through another. Without it, each handle is its
    /// own owner (dirlock, etcd).
    pub const OWNER_PER_MANAGER: Capabilities = Capabilities(1 << 8);
    /// A blocked `lock` or `try_lock_for` is published, and [`Manager::snapshot`] lists it as a
    /// waiter of its lock.
    pub const WAITERS: Capabilities = Capabilities(1 << 9);
    /// A blocked `lock` past the manager's deadlock timeout checks the wait-for graph, and
    /// exactly one member of a cycle returns `Error::Deadlock`.
    pub const DEADLOCK: Capabilities = Capabilities(1 << 10);
    /// The store is bytes outside the process (a segment, files, keys) that
    /// [`Backend::damage`] can damage, for the damaged-store behaviours.
    pub const DAMAGEABLE: Capabilities = Capabilities(1 << 11);
    /// A manager (and its lockers) inherited across `fork(2)` refuses every operation in the
    /// child with `Error::InvalidArgument`: the child shares the parent's descriptors (or lacks
    /// its threads), and must open its own.
    pub const FORK_REFUSED: Capabilities = Capabilities(1 << 12);
    /// [`Manager::clients`] lists the other managers that have the store open; without it,
    /// `clients()` is `Unsupported`.
    pub const CLIENTS: Capabilities = Capabilities(1 << 13);

    const NAMES: [(Capabilities, &'static str); 14] = [
        (Self::ALLOCATION, "allocation"),
        (Self::OWNER_PER_MANAGER, "owner-per-manager"),
        (Self::MULTIPROCESS, "multiprocess"),
        (Self::OWNER_DEATH, "owner-death"),
        (Self::PERSISTENT, "persistent"),
        (Self::FENCED, "fenced"),
        (Self::LEASED, "leased"),
        (Self::INSPECT, "inspect"),
        (Self::LOCK_DATA, "lock-data"),
        (Self::WAITERS, "waiters"),
        (Self::DEADLOCK, "deadlock"),
        (Self::DAMAGEABLE, "damageable"),
        (Self::FORK_REFUSED, "fork-refused"),
        (Self::CLIENTS, "clients"),
    ];

    /// The raw bits (for set arithmetic).
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// A set from raw bits; unknown bits are kept and name nothing.
    pub const fn from_bits(bits: u32) -> Capabilities {
        Capabilities(bits)
    }

    /// Whether every capability in `other` is in `self`.
    pub const fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of two sets.
    pub const fn union(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 | other.0)
    }

    /// The names of the capabilities in this set.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(c, _)| self.contains(*c))
            .map(|(_, n)| *n)
            .collect()
    }
}

impl std::ops::BitOr for Capabilities {
    type Output = Capabilities;
    fn bitor(self, rhs: Capabilities) -> Capabilities {
        self.union(rhs)
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

/// A way to damage a store on disk or in memory, for the damaged-store behaviours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The store's magic number or format marker is wrong: a foreign file or directory.
    Foreign,
    /// The store claims a format version this code does not know.
    FutureVersion,
    /// The store is cut short (a truncated segment, a missing lock file).
    Truncated,
    /// Header fields hold garbage (sizes and counts that do not add up).
    Garbage,
}

impl Damage {
    /// Every kind of damage, in the order the suite applies them.
    pub const ALL: [Damage; 4] = [
        Damage::Foreign,
        Damage::FutureVersion,
        Damage::Truncated,
        Damage::Garbage,
    ];
}

/// The locker type of a backend's manager.
pub type LockerOf<B> = <<B as Backend>::Manager as Manager>::Locker;

/// A backend under test.
///
/// The suite reaches every store through its spec and the [`Store`] lifecycle, the same path
/// the `lockyard` crate and `lockctl` take; the backend only says which spec a store name maps
/// to. Store names given to the backend are short, unique per trial, and valid as a file name
/// and a shm name (`[a-z0-9-]`, at most 40 bytes). A child process builds its backend value
/// the same way the parent did, from the same test binary, and must map a name to the same
/// spec.
pub trait Backend: Send + Sync + 'static {
    /// The manager type under test. Its handles must be `'static` so the suite can move them
    /// into threads whose time it bounds.
    type Manager: Store + Manager<Locker: 'static> + 'static;

    /// A short name for the matrix (`mem`, `shm`, `file`, `dirlock`, `etcd`).
    fn name(&self) -> &'static str;

    /// The capabilities this backend claims.
    fn capabilities(&self) -> Capabilities;

    /// The spec of the store named `store` (`shm:lyc-...`, `file:/tmp/root/lyc-...`).
    fn spec(&self, store: &str) -> String;

    /// The parsed spec of the store named `store`.
    ///
    /// # Errors
    ///
    /// The backend's spec does not parse: the trial fails.
    fn parsed_spec(&self, store: &str) -> Result<StoreSpec> {
        StoreSpec::parse(&self.spec(store))
    }

    /// Deletes whatever is left of a store that [`Store::remove`] refused because the suite
    /// damaged it on purpose. The default does nothing.
    ///
    /// # Errors
    ///
    /// Any error while deleting it.
    fn scrub(&self, store: &str) -> Result<()> {
        let _ = store;
        Ok(())
    }

    /// Damages a persistent store the way `damage` says, for the damaged-store behaviours.
    ///
    /// # Errors
    ///
    /// Any error while damaging it: the trial then fails.
    fn damage(&self, store: &str, damage: Damage) -> Result<()> {
        let _ = (store, damage);
        Err(Error::Unsupported("damage"))
    }

    /// A second, independent owner of the same table as `manager`, as another process opening
    /// the same store would get. The default opens the store again through its spec.
    ///
    /// # Errors
    ///
    /// As [`Store::open`].
    fn second_owner(&self, store: &str, manager: &Self::Manager) -> Result<Self::Manager> {
        let _ = manager;
        Self::Manager::open_spec(&self.parsed_spec(store)?)
    }

    /// The locker as [`Fenced`], for backends that claim [`Capabilities::FENCED`].
    fn as_fenced<'a>(&self, locker: &'a LockerOf<Self>) -> Option<&'a dyn Fenced> {
        let _ = locker;
        None
    }

    /// The locker as [`Leased`], for backends that claim [`Capabilities::LEASED`].
    fn as_leased<'a>(&self, locker: &'a LockerOf<Self>) -> Option<&'a dyn Leased> {
        let _ = locker;
        None
    }

    /// The locker as [`Inspect`], for backends that claim [`Capabilities::INSPECT`].
    fn as_inspect<'a>(&self, locker: &'a LockerOf<Self>) -> Option<&'a dyn Inspect> {
        let _ = locker;
        None
    }

    /// The locker as [`LockData`], for backends that claim [`Capabilities::LOCK_DATA`].
    fn as_lock_data<'a>(&self, locker: &'a LockerOf<Self>) -> Option<&'a dyn LockData> {
        let _ = locker;
        None
    }
}
