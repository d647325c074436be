//! Watcher threads: a waiter learns of its holder's death when it happens.
//!
//! An owner that armed its slot's life word (life.rs) is watched there: the watcher sleeps on
//! the word, and the kernel wakes it early in the owner's exit, before the owner's memory is
//! torn down. The watcher then announces the death exactly as below. Owners without a life word
//! (no sentinel thread could be started) are watched through their OFD lock:
//!
//! A live owner holds an exclusive OFD lock on its client slot's byte for its whole life, and the
//! kernel drops it when the owner's open file description goes away, whatever killed the
//! process, in whatever pid namespace. A watcher is a thread that asks for a *shared* OFD lock on
//! that byte and waits (`F_OFD_SETLKW`): the kernel grants it the moment the owner is gone. The
//! watcher then reads the slot's generation (stable while it holds the shared lock: no claimer
//! can take the slot), writes it into the slot's death word, wakes every sleeper on that word,
//! and releases the byte. Waiters sleep on their lock word and their holder's death word at once
//! (`futex_waitv`, lockword.rs "Waking on a death"), so they wake within the kernel's own
//! latency, and never wake while the holder lives.
//!
//! One watcher per slot per manager, started by the first wait on an owner of that slot and
//! ended by that owner's death: a slot's next owner gets a new watcher when someone waits for
//! it. A watcher leaves the registry *before* it announces, so a wait on the slot's next owner
//! (which can only begin after the announcement, once a claimer took the slot) always starts a
//! new one. The registry and the watcher threads hold their own mapping of the header and client
//! table over a duplicate of the manager's mapped descriptor, never the client slot's own
//! descriptor (`SlotLock`): a watcher still blocked when its manager is dropped keeps no slot
//! alive and no lock held; it ends when the owner it watches ends, announcing that death for
//! whoever still cares.
//!
//! Before it sleeps, a watcher asks the kernel once whether the slot's byte is still locked:
//! an owner already gone is announced at once, whatever its life word says, so a life word armed
//! with no live sentinel behind it (a stray write, a checkpoint restored without its processes)
//! cannot keep a waiter asleep.
//!
//! A claimer that takes a slot announces its previous owner's death too (client.rs), which
//! covers a slot reclaimed before a watcher's request reached the kernel (the watcher then
//! blocks on the new owner, and the announcement comes from the claimer instead).

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use lock_api::Result;

use crate::client;
use crate::layout::Layout;
use crate::life::{self, Watched};
use crate::segment::Segment;

/// Stack of a watcher thread: it only makes a few system calls.
const STACK: usize = 64 * 1024;

/// The watcher threads of one manager.
#[derive(Debug)]
pub(crate) struct Watchers {
    /// The header and client table, mapped over a duplicate of the manager's mapped descriptor.
    seg: Segment,
    layout: Layout,
    /// Slots with a watcher thread that has not begun its announcement.
    active: Mutex<HashSet<u32>>,
    /// Set when a watcher's `F_OFD_SETLKW` failed: this manager's waiters poll from then on.
    failed: AtomicBool,
}

impl Watchers {
    /// The registry of a manager whose segment is `seg` with `layout`.
    ///
    /// # Errors
    ///
    /// `Io` when the descriptor cannot be duplicated or the table mapped.
    pub(crate) fn new(seg: &Segment, layout: &Layout) -> Result<Arc<Watchers>> {
        let len = layout.slot_offset(crate::layout::CLIENT_SLOTS - 1)
            + crate::layout::CLIENT_SLOT_SIZE as usize;
        Ok(Arc::new(Watchers {
            seg: seg.prefix(len)?,
            layout: layout.clone(),
            active: Mutex::new(HashSet::new()),
            failed: AtomicBool::new(false),
        }))
    }

    /// Makes sure a thread watches the owner of `slot`. Returns `false` when no thread could be
    /// started (the caller then polls).
    pub(crate) fn ensure(self: &Arc<Self>, slot: u32) -> bool {
        if self.failed.load(Relaxed) {
            return false;
        }
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        if active.contains(&slot) {
            return true;
        }
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("lock-shm-watch-{slot}"))
            .stack_size(STACK)
            .spawn(move || me.run(slot));
        if spawned.is_err() {
            return false;
        }
        active.insert(slot);
        true
    }

    /// The life word of `slot`, in this registry's mapping (which the sentinel keeps alive).
    pub(crate) fn life(&self, slot: u32) -> Result<&crate::segment::Le32> {
        client::life_word(&self.seg, &self.layout, slot)
    }

    /// Whether a watcher failed: waits of this manager poll instead of relying on watchers.
    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Relaxed)
    }

    /// A watcher thread: waits for the slot's owner to go, then announces it. It waits on the
    /// owner's life word when the owner armed one (life.rs: the kernel marks it early in the
    /// owner's exit), on the slot's OFD lock otherwise.
    fn run(&self, slot: u32) {
        // Woken by a death only, to run at once (slice.rs).
        crate::slice::shorten_for_good();
        let off = self.layout.slot_offset(slot);
        // The kernel first: an owner already gone is announced at once, whatever its life word
        // says (one armed with no live sentinel behind it would keep this watcher asleep for
        // ever; client.rs, "Claiming and probing").
        match self.gone(off) {
            Ok(Some(generation)) => {
                self.leave(slot);
                let _ = client::announce_death(&self.seg, &self.layout, slot, generation);
                return;
            }
            Ok(None) => {}
            Err(_) => return self.fail(slot),
        }
        let life = self.seg.u32(off).and_then(|generation| {
            let life = client::life_word(&self.seg, &self.layout, slot)?;
            life::watch(&life::Slot { generation, life })
        });
        match life {
            Ok(Watched::Died(generation)) => {
                self.leave(slot);
                let _ = client::announce_death(&self.seg, &self.layout, slot, generation);
            }
            Ok(Watched::Unarmed) => self.watch_ofd(slot, off),
            Err(_) => self.fail(slot),
        }
    }

    /// The generation of the slot's owner when the kernel says that owner is gone (its byte
    /// unlocked: read after the generation, so the owner of that generation or an earlier one;
    /// a live owner holds its byte from before it stores its generation until it ends).
    fn gone(&self, off: usize) -> Result<Option<u32>> {
        let generation = self.seg.u32(off)?.load(Acquire);
        if generation == 0 || self.seg.ofd_is_locked(off)? {
            return Ok(None);
        }
        Ok(Some(generation))
    }

    /// Leaves the registry (module docs): a wait that begins after this starts its own watcher.
    fn leave(&self, slot: u32) {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&slot);
    }

    /// No announcement can come from this watcher. Wakes the slot's sleepers without a death:
    /// they find the registry failed and poll instead (wait.rs).
    fn fail(&self, slot: u32) {
        self.leave(slot);
        self.failed.store(true, Relaxed);
        if let Ok(word) = client::death_word(&self.seg, &self.layout, slot) {
            let _ = crate::futex::wake_all(word, "death word");
        }
    }

    /// Waits for the slot's OFD lock (the owner armed no life word), then announces.
    fn watch_ofd(&self, slot: u32, off: usize) {
        let granted = self.seg.ofd_read_lock_wait(off);
        if granted.is_err() {
            self.fail(slot);
            return;
        }
        self.leave(slot);
        let announced = self.seg.u32(off).and_then(|generation| {
            client::announce_death(&self.seg, &self.layout, slot, generation.load(Acquire))
        });
        let _ = self.seg.ofd_unlock(off);
        drop(announced);
    }
}
