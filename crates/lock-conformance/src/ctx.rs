//! `Ctx`: what one trial gets: the backend, a fresh store name, children, and cleanup.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use lock_api::{Error, Manager, Store};

use crate::child::{ChildProcess, Params, Role};
use crate::{Backend, Capabilities, Failed};

static NEXT_STORE: AtomicU32 = AtomicU32::new(0);

/// The context of one trial: its backend, its own store name and scratch directory.
///
/// Dropping the context removes the store (if the trial created one) and the scratch
/// directory; children are killed by their own handles.
#[derive(Debug)]
pub struct Ctx<'a, B: Backend> {
    /// The backend under test.
    pub backend: &'a B,
    store: String,
    made: Mutex<bool>,
    scratch: tempfile::TempDir,
}

impl<'a, B: Backend> Ctx<'a, B> {
    /// A context with a store name no other trial, process or earlier run uses.
    ///
    /// # Errors
    ///
    /// The scratch directory cannot be created.
    pub fn new(backend: &'a B) -> Result<Self, Failed> {
        let seq = NEXT_STORE.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let store = format!("lyc-{:x}-{seq}-{nanos:x}", std::process::id());
        let scratch = tempfile::Builder::new()
            .prefix("lockyard-conformance-")
            .tempdir()?;
        Ok(Ctx {
            backend,
            store,
            made: Mutex::new(false),
            scratch,
        })
    }

    /// This trial's store name.
    pub fn store(&self) -> &str {
        &self.store
    }

    /// Whether the backend claims every capability in `caps`.
    pub fn has(&self, caps: Capabilities) -> bool {
        self.backend.capabilities().contains(caps)
    }

    /// A file path in this trial's scratch directory.
    pub fn scratch_file(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    fn mark_made(&self) {
        if let Ok(mut made) = self.made.lock() {
            *made = true;
        }
    }

    /// Creates this trial's store with `capacity` locks; it is removed when the trial ends.
    ///
    /// # Errors
    ///
    /// The backend's error.
    pub fn create(&self, capacity: u32) -> Result<B::Manager, Error> {
        self.mark_made();
        B::Manager::create_spec(&self.backend.parsed_spec(&self.store)?, capacity)
    }

    /// Opens this trial's store; its capacity comes from the store.
    ///
    /// # Errors
    ///
    /// The backend's error.
    pub fn open(&self) -> Result<B::Manager, Error> {
        B::Manager::open_spec(&self.backend.parsed_spec(&self.store)?)
    }

    /// Opens or creates this trial's store.
    ///
    /// # Errors
    ///
    /// The backend's error.
    pub fn open_or_create(&self, capacity: u32) -> Result<(B::Manager, bool), Error> {
        self.mark_made();
        B::Manager::open_or_create_spec(&self.backend.parsed_spec(&self.store)?, capacity)
    }

    /// Removes this trial's store.
    ///
    /// # Errors
    ///
    /// The backend's error.
    pub fn remove(&self) -> Result<(), Error> {
        B::Manager::remove_spec(&self.backend.parsed_spec(&self.store)?)
    }

    /// Removes this trial's store only if no manager has it open
    /// ([`Store::remove_unused`](lock_api::Store::remove_unused)).
    ///
    /// # Errors
    ///
    /// The backend's error.
    pub fn remove_unused(&self) -> Result<(), Error> {
        B::Manager::remove_unused_spec(&self.backend.parsed_spec(&self.store)?)
    }

    /// A second owner of the same table as `manager`.
    ///
    /// # Errors
    ///
    /// The backend's error.
    pub fn second_owner(&self, manager: &B::Manager) -> Result<B::Manager, lock_api::Error> {
        self.backend.second_owner(&self.store, manager)
    }

    /// Starts a child process in `role` on this trial's store.
    ///
    /// # Errors
    ///
    /// The child cannot be started.
    pub fn child(
        &self,
        role: Role,
        capacity: u32,
        id: u32,
        count: u32,
    ) -> Result<ChildProcess, Failed> {
        self.spawn(role, &self.params(capacity, id, count))
    }

    /// The parameters [`child`](Ctx::child) would use, to adjust before [`spawn`](Ctx::spawn).
    pub fn params(&self, capacity: u32, id: u32, count: u32) -> Params {
        Params {
            store: self.store.clone(),
            capacity,
            id,
            count,
            counter: Some(self.scratch_file("counter")),
            ..Params::default()
        }
    }

    /// Starts a child process in `role` with `params`.
    ///
    /// # Errors
    ///
    /// The child cannot be started.
    pub fn spawn(&self, role: Role, params: &Params) -> Result<ChildProcess, Failed> {
        self.mark_made();
        ChildProcess::spawn(role, params)
    }

    /// The capacity of `manager`, which every table backend knows.
    ///
    /// # Errors
    ///
    /// The manager reports no capacity.
    pub fn capacity_of(&self, manager: &B::Manager) -> Result<u32, Failed> {
        manager
            .capacity()
            .ok_or_else(|| Failed("manager reports no capacity".into()))
    }
}

impl<B: Backend> Drop for Ctx<'_, B> {
    fn drop(&mut self) {
        let made = self.made.lock().map(|m| *m).unwrap_or(true);
        if !made {
            return;
        }
        let removed = match self.remove() {
            Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
            // A store the trial damaged on purpose is no longer one: the backend scrubs it.
            Err(Error::Incompatible { .. } | Error::Corrupt { .. }) => {
                self.backend.scrub(&self.store)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = removed {
            eprintln!(
                "lock-conformance: could not remove store {}: {e}",
                self.store
            );
        }
    }
}
