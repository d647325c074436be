//! Open any lockyard store from a spec string: the backend is chosen at run time.
#![doc = include_str!("../README.md")]
#![cfg_attr(
    not(any(
        feature = "shm",
        feature = "file",
        feature = "mem",
        feature = "dirlock",
        feature = "etcd"
    )),
    allow(
        dead_code,
        unused_variables,
        reason = "a build with no backend opens nothing"
    )
)]

pub use lock_api::*;

/// What one lifecycle call asks for.
#[derive(Clone, Copy)]
enum Op {
    Create(u32),
    Open,
    OpenOrCreate(u32),
    Remove,
    RemoveUnused,
}

/// What one lifecycle call gives back.
struct Outcome {
    manager: Option<Box<DynManager>>,
    created: bool,
}

fn run<M>(spec: &StoreSpec, op: Op) -> Result<Outcome>
where
    M: Store + 'static,
    M::Locker: 'static,
{
    let (manager, created) = match op {
        Op::Create(capacity) => (Some(M::create_spec(spec, capacity)?), true),
        Op::Open => (Some(M::open_spec(spec)?), false),
        Op::OpenOrCreate(capacity) => {
            let (manager, created) = M::open_or_create_spec(spec, capacity)?;
            (Some(manager), created)
        }
        Op::Remove => {
            M::remove_spec(spec)?;
            (None, false)
        }
        Op::RemoveUnused => {
            M::remove_unused_spec(spec)?;
            (None, false)
        }
    };
    Ok(Outcome {
        manager: manager.map(BoxedManager::boxed),
        created,
    })
}

/// The error for a spec whose backend this build left out.
#[allow(dead_code, reason = "unused when every backend is compiled in")]
fn not_built(feature: &'static str) -> Error {
    Error::Unsupported(feature)
}

fn dispatch(spec: &str, op: Op) -> Result<Outcome> {
    let spec = StoreSpec::parse(spec)?;
    match &spec {
        #[cfg(feature = "shm")]
        StoreSpec::Shm(_) => run::<lock_shm::ShmManager>(&spec, op),
        #[cfg(not(feature = "shm"))]
        StoreSpec::Shm(_) => Err(not_built(
            "shm: stores in this build of lockyard (enable its cargo feature `shm`)",
        )),
        #[cfg(feature = "file")]
        StoreSpec::File(_) => run::<lock_file::FileManager>(&spec, op),
        #[cfg(not(feature = "file"))]
        StoreSpec::File(_) => Err(not_built(
            "file: stores in this build of lockyard (enable its cargo feature `file`)",
        )),
        #[cfg(feature = "mem")]
        StoreSpec::Mem(_) => run::<lock_mem::MemManager>(&spec, op),
        #[cfg(not(feature = "mem"))]
        StoreSpec::Mem(_) => Err(not_built(
            "mem: stores in this build of lockyard (enable its cargo feature `mem`)",
        )),
        #[cfg(feature = "dirlock")]
        StoreSpec::Dir(_) => run::<dirlock::DirTable>(&spec, op),
        #[cfg(not(feature = "dirlock"))]
        StoreSpec::Dir(_) => Err(not_built(
            "dir: stores in this build of lockyard (enable its cargo feature `dirlock`)",
        )),
        #[cfg(feature = "etcd")]
        StoreSpec::Etcd(_) => run::<lock_etcd::EtcdTable>(&spec, op),
        #[cfg(not(feature = "etcd"))]
        StoreSpec::Etcd(_) => Err(not_built(
            "etcd:// stores in this build of lockyard (enable its cargo feature `etcd`)",
        )),
        other => Err(Error::invalid(format!(
            "store spec {other}: no backend for scheme {}",
            other.scheme()
        ))),
    }
}

fn manager(outcome: Outcome) -> Result<Box<DynManager>> {
    outcome.manager.ok_or(Error::Unsupported(
        "a lifecycle call that returns no manager",
    ))
}

/// Creates the store `spec` names, with `capacity` locks.
///
/// # Errors
///
/// [`Error::InvalidArgument`] for a malformed spec or a zero capacity, [`Error::Unsupported`]
/// when the spec's backend is not compiled in, [`Error::AlreadyExists`] when the store exists,
/// and the backend's own errors.
pub fn create(spec: &str, capacity: u32) -> Result<Box<DynManager>> {
    manager(dispatch(spec, Op::Create(capacity))?)
}

/// Opens the existing store `spec` names; its capacity is read from the store.
///
/// # Errors
///
/// [`Error::InvalidArgument`] for a malformed spec, [`Error::Unsupported`] when the spec's
/// backend is not compiled in, [`Error::NotFound`] when the store is missing,
/// [`Error::Incompatible`] or [`Error::Corrupt`] when it is damaged or of another format.
pub fn open(spec: &str) -> Result<Box<DynManager>> {
    manager(dispatch(spec, Op::Open)?)
}

/// Opens the store `spec` names, creating it with `capacity` locks when it is missing. The flag
/// says whether this call created it.
///
/// # Errors
///
/// As [`create`] and [`open`]; [`Error::Incompatible`] when the existing store has another
/// capacity.
pub fn open_or_create(spec: &str, capacity: u32) -> Result<(Box<DynManager>, bool)> {
    let outcome = dispatch(spec, Op::OpenOrCreate(capacity))?;
    let created = outcome.created;
    Ok((manager(outcome)?, created))
}

/// Removes the store `spec` names.
///
/// # Errors
///
/// As [`open`]: [`Error::NotFound`] when it is missing, and nothing is removed when what is
/// there is not a store of that backend.
pub fn remove(spec: &str) -> Result<()> {
    dispatch(spec, Op::Remove).map(drop)
}

/// Removes the store `spec` names only if no other process has it open, deciding and removing
/// in one step (see [`Store::remove_unused`]).
///
/// # Errors
///
/// As [`remove`]; [`Error::InUse`] naming who has it open (nothing is removed);
/// [`Error::Unsupported`] for backends that cannot tell who has a store open (every one but
/// shm).
pub fn remove_unused(spec: &str) -> Result<()> {
    dispatch(spec, Op::RemoveUnused).map(drop)
}
