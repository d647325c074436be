//! The `Store` trait: the one lifecycle of every table backend (create, open, open-or-create,
//! remove).

use std::borrow::Borrow;

use crate::{Manager, Result, StoreSpec};

/// A lock table that lives in a named store: the lifecycle every table backend shares.
///
/// Every backend spells it the same way, with the same return types and errors, so generic code
/// (the conformance suite, the `lockyard` crate, `lockctl`) drives them all through one path:
///
/// | call | on success | errors every backend returns |
/// |---|---|---|
/// | [`create`](Store::create) | a manager on a new store | `AlreadyExists`, `InvalidArgument` (zero capacity) |
/// | [`open`](Store::open) | a manager on the existing store; capacity read from it | `NotFound`, `Incompatible`, `Corrupt` |
/// | [`open_or_create`](Store::open_or_create) | the manager and whether this call created it | as both above, and `Incompatible` when the existing capacity differs |
/// | [`remove`](Store::remove) | the store is gone | `NotFound`, `Incompatible` / `Corrupt` for something that is not a store |
///
/// Opening is race-free: N processes calling `open_or_create` on a missing store at once all
/// succeed, and exactly one of them is told it created it.
pub trait Store: Manager + Sized {
    /// How this backend addresses a store: a shm name, a directory path, an etcd table.
    type Address: ?Sized + ToOwned;

    /// The address a [`StoreSpec`] names.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) when the spec names another
    /// backend's store.
    fn address(spec: &StoreSpec) -> Result<<Self::Address as ToOwned>::Owned>;

    /// Creates a new store of `capacity` locks.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`](crate::Error::AlreadyExists) when one is there;
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a zero capacity or a
    /// capacity the backend cannot hold.
    fn create(store: &Self::Address, capacity: u32) -> Result<Self>;

    /// Opens an existing store, reading its capacity from it.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`](crate::Error::NotFound) when it does not exist;
    /// [`Error::Incompatible`](crate::Error::Incompatible) or
    /// [`Error::Corrupt`](crate::Error::Corrupt) when it is not a store of this format.
    fn open(store: &Self::Address) -> Result<Self>;

    /// Opens the store, creating it with `capacity` locks when it is missing. The flag is `true`
    /// when this call created it.
    ///
    /// # Errors
    ///
    /// As [`create`](Store::create) and [`open`](Store::open);
    /// [`Error::Incompatible`](crate::Error::Incompatible) when the existing store has another
    /// capacity.
    fn open_or_create(store: &Self::Address, capacity: u32) -> Result<(Self, bool)>;

    /// Removes the store. Managers still open on it keep working on what they mapped or hold,
    /// but no new open finds it.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`](crate::Error::NotFound) when it does not exist;
    /// [`Error::Incompatible`](crate::Error::Incompatible) or
    /// [`Error::Corrupt`](crate::Error::Corrupt) when what is there is not a store of this
    /// backend (nothing is removed then).
    fn remove(store: &Self::Address) -> Result<()>;

    /// Removes the store only if no other manager has it open, deciding that and removing it in
    /// one step: a manager that opens the store meanwhile either is seen, and the store stays,
    /// or finds it removed (`NotFound`). What `lockctl remove` does without `--force`.
    ///
    /// # Errors
    ///
    /// [`Error::InUse`](crate::Error::InUse) naming who has it open (nothing is removed);
    /// [`Error::Unsupported`](crate::Error::Unsupported) for backends that cannot tell who has
    /// a store open (the default); otherwise as [`remove`](Store::remove), and as
    /// [`open`](Store::open) for a store that cannot be read.
    fn remove_unused(store: &Self::Address) -> Result<()> {
        let _ = store;
        Err(crate::Error::Unsupported(
            "removing a store only while no other process has it open",
        ))
    }

    /// [`create`](Store::create) the store a spec names.
    ///
    /// # Errors
    ///
    /// As [`address`](Store::address) and [`create`](Store::create).
    fn create_spec(spec: &StoreSpec, capacity: u32) -> Result<Self> {
        Self::create(Self::address(spec)?.borrow(), capacity)
    }

    /// [`open`](Store::open) the store a spec names.
    ///
    /// # Errors
    ///
    /// As [`address`](Store::address) and [`open`](Store::open).
    fn open_spec(spec: &StoreSpec) -> Result<Self> {
        Self::open(Self::address(spec)?.borrow())
    }

    /// [`open_or_create`](Store::open_or_create) the store a spec names.
    ///
    /// # Errors
    ///
    /// As [`address`](Store::address) and [`open_or_create`](Store::open_or_create).
    fn open_or_create_spec(spec: &StoreSpec, capacity: u32) -> Result<(Self, bool)> {
        Self::open_or_create(Self::address(spec)?.borrow(), capacity)
    }

    /// [`remove`](Store::remove) the store a spec names.
    ///
    /// # Errors
    ///
    /// As [`address`](Store::address) and [`remove`](Store::remove).
    fn remove_spec(spec: &StoreSpec) -> Result<()> {
        Self::remove(Self::address(spec)?.borrow())
    }

    /// [`remove_unused`](Store::remove_unused) the store a spec names.
    ///
    /// # Errors
    ///
    /// As [`address`](Store::address) and [`remove_unused`](Store::remove_unused).
    fn remove_unused_spec(spec: &StoreSpec) -> Result<()> {
        Self::remove_unused(Self::address(spec)?.borrow())
    }
}

/// The error [`Store::address`] returns for a spec of another backend.
pub fn wrong_scheme(expected: &str, spec: &StoreSpec) -> crate::Error {
    crate::Error::invalid(format!(
        "store spec {spec} names a {} store, not a {expected} store",
        spec.scheme()
    ))
}
