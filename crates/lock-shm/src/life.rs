//! The life word: the kernel tells a waiter that an owner died early in the owner's exit, not
//! at its end.
#![allow(unsafe_code)] // reason: set_robust_list(2) and get_robust_list(2) take raw pointers
//!
//! The OFD lock on an owner's client slot goes when the owner's last descriptor closes, and the
//! kernel closes descriptors only after it has torn down the whole address space: measured on
//! this project's VM, 0.3 ms after `kill` for a small process and 10 ms for one with 256 MiB
//! resident, against 0.1-0.25 ms for a glibc robust mutex. What glibc uses is the *robust
//! list*: every thread may register a list of futex words with `set_robust_list(2)`, and the
//! kernel walks it at the very start of the thread's exit (before the memory goes), setting
//! `FUTEX_OWNER_DIED` in every listed word that still holds the thread's id, and waking one
//! sleeper of each word that has `FUTEX_WAITERS` set.
//!
//! Glibc binds a mutex to the thread that locked it; lockyard's owner is the manager, and any of
//! its threads may unlock. So the robust list is used here as a death signal of the manager, not
//! as the lock: each manager starts one *sentinel* thread, which registers a robust list of one
//! entry, its slot's life word, stores its own thread id there, and then blocks, with every
//! signal blocked, until the manager is dropped. The sentinel never exits while its manager
//! lives, so its exit means one of:
//!
//! - the process is exiting (any exit, any fatal signal: every thread goes, the sentinel too);
//! - the process is executing another program (exec kills every other thread first);
//! - the manager is being dropped: the sentinel then marks the word itself exactly as the kernel
//!   would, and puts glibc's own list back before it returns.
//!
//! Each of these ends the manager, so `FUTEX_OWNER_DIED` in a slot's life word proves the slot's
//! owner dead, like an unlocked slot byte does, only sooner. What it does not prove is that
//! every *other* thread of a killed process has stopped: a thread that was inside a system call
//! that the kill cannot interrupt (a disk write) finishes that call first. Glibc's robust
//! mutexes have the same window for every thread but the one that locked, and Podman's lock
//! table is made of them; ARCHITECTURE.md ("Noticing a death when it happens") weighs it.
//!
//! # The word (slot offset 16, native byte order, as the kernel reads and writes it)
//!
//! `0`: not armed (being claimed, or an owner without a sentinel: then only the OFD lock tells
//! its death). Otherwise bits 0-29 are the sentinel's thread id (in its own pid namespace: only
//! the kernel compares it), bit 30 is `FUTEX_OWNER_DIED` and bit 31 `FUTEX_WAITERS`.
//!
//! - The claimer of a slot stores 0 before it stores its generation (client.rs), and wakes every
//!   sleeper on the word after, so the word never carries a previous owner's state into a
//!   generation.
//! - Its sentinel arms it (stores its thread id) before the manager is handed to the caller, so
//!   before any lock word holds the new token.
//! - A watcher of the slot (watch.rs) sets `FUTEX_WAITERS` and sleeps on the word; the kernel
//!   wakes one sleeper at the death, and every watcher that sees the death wakes all the others
//!   (one per process that waits), then announces it on the death word, where waiters sleep.
//! - The kernel wakes the sleeper that queued first. A waiter that has waited long enough to
//!   sleep on a short slice (wait.rs, `URGENT_AFTER`) wants to be that one, since it then runs at
//!   once instead of after its watcher has run and woken it: it wakes one sleeper of the word as
//!   it joins, and a watcher woken without a death steps out of the queue for [`STEP_BACK`]
//!   before it queues again ([`LifeSys::step_back`]), behind the waiter.
//!
//! # Why `FUTEX_OWNER_DIED` names the right owner
//!
//! A watcher reads the generation `g`, then the life word, then the generation again. The first
//! read (`Acquire`) sees the claimer's store of `g`, so the life word read after it is the
//! claimer's 0 or something later: never a previous owner's death. If the generation still reads
//! `g` after the life word, the death in it is that of `g`'s owner (a later owner stores its
//! generation before it arms the word, so a death of a later owner read with `Acquire` would
//! make the second read see that later generation). The protocol is [`watch`], which the loom model runs
//! (model.rs, `model_life_*`).

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::thread::JoinHandle;

use lock_api::Result;

use crate::segment::Le32;
use crate::watch::Watchers;

/// The sentinel's thread id (`FUTEX_TID_MASK`).
pub(crate) const TID: u32 = 0x3fff_ffff;
/// Set by the kernel (or a sentinel told to stop) when the sentinel is gone.
pub(crate) const OWNER_DIED: u32 = 0x4000_0000;
/// Someone sleeps, or is about to sleep, on the word: the kernel wakes one sleeper at the
/// death only when this is set.
pub(crate) const SLEEPERS: u32 = 0x8000_0000;

/// How long a watcher woken without a death stays out of the word's queue before it sleeps
/// there again, so that the waiter that woke it (a waiter joining the queue on a short slice,
/// module docs) queues first: much longer than that waiter's path from its wake-up call to its
/// sleep (two system calls), short against the time a watcher is there for. A death in the
/// meantime wakes that waiter (or, with none queued, nobody: the watcher then sees it when it
/// reads the word again), so the announcement on the death word may come this much later.
const STEP_BACK: std::time::Duration = std::time::Duration::from_micros(100);

/// Stack of a sentinel thread: it makes three system calls in all.
const STACK: usize = 64 * 1024;

/// What a watcher learnt from a slot's life word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Watched {
    /// The owner of this generation died: announce it.
    Died(u32),
    /// The word is not armed: only the OFD lock can tell this owner's death.
    Unarmed,
}

/// What [`watch`] needs of the system: the slot's generation, and the futex.
pub(crate) trait LifeSys {
    /// Planted bug (a), set only by the model check: sleep without setting [`SLEEPERS`], so the
    /// kernel wakes nobody at the death.
    const NO_SLEEPERS_BIT: bool = false;
    /// Planted bug (b), set only by the model check: a watcher that sees the death does not
    /// wake the others, so only the one the kernel woke learns of it.
    const NO_WAKE_ALL: bool = false;
    /// Planted bug (e), set only by the model check: a watcher takes any wake-up for the death,
    /// although a waiter that joins the word's sleepers wakes one of them (module docs).
    const TRUSTS_A_WAKE: bool = false;
    /// Loads the slot's generation (`Acquire`).
    fn generation(&self) -> u32;
    /// Sets [`SLEEPERS`] in the word if it holds exactly `seen` (a compare-and-swap); returns
    /// what it holds now.
    fn mark(&self, seen: u32) -> u32;
    /// Sleeps while the word holds `expected`; spurious returns are allowed.
    ///
    /// # Errors
    ///
    /// Whatever the futex fails with.
    fn wait(&self, expected: u32) -> Result<()>;
    /// Loads the word (`Acquire`).
    fn load(&self) -> u32;
    /// Wakes every sleeper on the word.
    ///
    /// # Errors
    ///
    /// Whatever the futex fails with.
    fn wake_all(&self) -> Result<()>;
    /// After a wake-up that showed no death: stays out of the word's queue for a moment, so that
    /// whoever woke this watcher queues ahead of it (module docs). Only a matter of time: the
    /// model check does nothing here.
    fn step_back(&self) {}
}

/// Waits until the slot's owner is gone, as the life word tells it (module docs), and wakes the
/// word's other sleepers when it is; returns the generation that died. Returns at once with
/// [`Watched::Unarmed`] when the word is not armed.
///
/// Like a watcher of the OFD lock, it watches the slot, not one generation: if the owner it was
/// started for is gone and the slot was claimed again before it looked, it watches the new owner
/// (the claimer announced the old one's death). So it reads the life word between two reads of
/// the generation, and trusts a death only when both reads agree: then the death is that
/// generation's (module docs). The same holds for a word marked, reset and armed again with the
/// same thread id while it slept (a reused thread id): it wakes, and reads again.
///
/// # Errors
///
/// Whatever the futex fails with.
pub(crate) fn watch<S: LifeSys>(sys: &S) -> Result<Watched> {
    loop {
        let generation = sys.generation();
        let life = sys.load();
        if sys.generation() != generation {
            continue;
        }
        if life & OWNER_DIED != 0 {
            // The kernel woke one sleeper of the word: this one, or another that wakes the rest.
            if !S::NO_WAKE_ALL {
                sys.wake_all()?;
            }
            return Ok(Watched::Died(generation));
        }
        if life & TID == 0 {
            return Ok(Watched::Unarmed);
        }
        let expected = if life & SLEEPERS != 0 || S::NO_SLEEPERS_BIT {
            life
        } else {
            let now = sys.mark(life);
            if now != life | SLEEPERS {
                continue;
            }
            now
        };
        sys.wait(expected)?;
        if S::TRUSTS_A_WAKE {
            return Ok(Watched::Died(generation));
        }
        if sys.load() & OWNER_DIED == 0 {
            sys.step_back();
        }
    }
}

/// The life word as the production system sees it: a word of the segment, read and written in
/// native byte order.
pub(crate) struct Slot<'a> {
    pub(crate) generation: &'a Le32,
    pub(crate) life: &'a Le32,
}

impl LifeSys for Slot<'_> {
    fn generation(&self) -> u32 {
        self.generation.load(Acquire)
    }

    fn mark(&self, seen: u32) -> u32 {
        match self
            .life
            .futex_word()
            .compare_exchange(seen, seen | SLEEPERS, Relaxed, Acquire)
        {
            Ok(_) => seen | SLEEPERS,
            Err(now) => now,
        }
    }

    fn wait(&self, expected: u32) -> Result<()> {
        // Native byte order: `futex::wait` takes the little-endian value the segment stores.
        crate::futex::wait(self.life, u32::from_le(expected), None)
    }

    fn load(&self) -> u32 {
        self.life.futex_word().load(Acquire)
    }

    fn step_back(&self) {
        std::thread::sleep(STEP_BACK);
    }

    fn wake_all(&self) -> Result<()> {
        crate::futex::wake_all(self.life, "life word")
    }
}

/// Marks the word as the kernel would for the thread `tid`: `FUTEX_OWNER_DIED`, keeping
/// `FUTEX_WAITERS`, if the word still holds `tid`; then wakes every sleeper. Returns whether it
/// marked it.
fn mark_dead(life: &Le32, tid: u32) -> bool {
    let word = life.futex_word();
    let mut v = word.load(Relaxed);
    loop {
        if v & TID != tid {
            return false;
        }
        match word.compare_exchange(v, OWNER_DIED | (v & SLEEPERS), Release, Relaxed) {
            Ok(_) => {
                let _ = crate::futex::wake_all(life, "life word");
                return true;
            }
            Err(now) => v = now,
        }
    }
}

/// `struct robust_list` of `<linux/futex.h>`.
#[repr(C)]
struct RobustList {
    next: *const RobustList,
}

/// `struct robust_list_head` of `<linux/futex.h>`.
#[repr(C)]
struct RobustListHead {
    list: RobustList,
    futex_offset: libc::c_long,
    list_op_pending: *const RobustList,
}

/// A manager's sentinel thread (module docs). Dropping it stops the thread, which marks the
/// life word dead, and waits for it.
#[derive(Debug)]
pub(crate) struct Sentinel {
    stop: Arc<AtomicU32>,
    thread: Option<JoinHandle<()>>,
    /// The fork generation it was started in: a forked child has no such thread.
    forks: u32,
}

impl Sentinel {
    /// Starts the sentinel of `slot`, whose life word it finds in the watchers' mapping (which
    /// it keeps alive), and waits until it has armed the word. `None` when it could not: no
    /// thread, or no robust list here (the owner's death is then told by its OFD lock alone).
    pub(crate) fn start(map: Arc<Watchers>, slot: u32, forks: u32) -> Option<Sentinel> {
        let stop = Arc::new(AtomicU32::new(0));
        let (armed_tx, armed_rx) = std::sync::mpsc::sync_channel(1);
        let theirs = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("lock-shm-sentinel".into())
            .stack_size(STACK)
            .spawn(move || {
                let Ok(word) = map.life(slot) else {
                    let _ = armed_tx.send(false);
                    return;
                };
                run(word, &theirs, &armed_tx);
            })
            .ok()?;
        if armed_rx.recv() == Ok(true) {
            Some(Sentinel {
                stop,
                thread: Some(thread),
                forks,
            })
        } else {
            let _ = thread.join();
            None
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if lockyard_fork::current() != self.forks {
            // A forked child: the thread is the parent's, and so is the word.
            std::mem::forget(self.thread.take());
            return;
        }
        self.stop.store(1, Release);
        let _ = rustix::thread::futex::wake(&self.stop, rustix::thread::futex::Flags::PRIVATE, 1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The sentinel thread: registers a robust list holding `life`, arms the word, says so on
/// `armed`, blocks until `stop` is set, then marks the word dead and puts the thread's previous
/// robust list back.
fn run(life: &Le32, stop: &AtomicU32, armed: &std::sync::mpsc::SyncSender<bool>) {
    // No signal handler runs here: this thread only waits.
    // SAFETY: a zeroed sigset_t is valid storage for sigfillset to fill.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `all` is valid; blocking signals on this thread only changes where the process's
    // signals are delivered.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
    let tid = u32::try_from(rustix::thread::gettid().as_raw_nonzero().get()).unwrap_or(0);
    if tid == 0 || tid & !TID != 0 {
        let _ = armed.send(false);
        return;
    }
    // The thread's current list (glibc's, for its robust mutexes), to put back at the end. Where
    // the call is refused (a sandbox may filter it), a null list is put back instead: the kernel
    // then walks nothing at this thread's exit, and glibc's list of this thread was empty anyway
    // (the thread locks no pthread mutex).
    let mut previous: *mut libc::c_void = std::ptr::null_mut();
    let mut previous_len: libc::size_t = std::mem::size_of::<RobustListHead>();
    // SAFETY: both out-pointers are valid for writes; pid 0 is the calling thread.
    let got = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut previous as *mut *mut libc::c_void,
            &mut previous_len as *mut libc::size_t,
        )
    };
    if got != 0 {
        previous = std::ptr::null_mut();
        previous_len = std::mem::size_of::<RobustListHead>();
    }
    // One entry, whose futex word is `life`: the entry lives in this thread's heap, the word in
    // the segment, and the head's offset joins them. Both are handed to the kernel as raw
    // pointers and freed below, after the registration is undone.
    let entry: *mut RobustList = Box::into_raw(Box::new(RobustList {
        next: std::ptr::null(),
    }));
    let word_at = life.futex_word().as_ptr() as usize;
    let head: *mut RobustListHead = Box::into_raw(Box::new(RobustListHead {
        list: RobustList { next: entry },
        futex_offset: (word_at as libc::c_long).wrapping_sub(entry as libc::c_long),
        list_op_pending: std::ptr::null(),
    }));
    // SAFETY: `entry` came from `Box::into_raw` above and nothing else refers to it yet. It
    // points back at the head's list field (the first field of a `repr(C)` struct, so at the
    // head's address), closing the list.
    unsafe {
        (*entry).next = head.cast::<RobustList>();
    }
    let free = || {
        // SAFETY: both came from `Box::into_raw` above, are freed once, and the kernel no longer
        // refers to them (never registered, or the registration was undone first).
        unsafe {
            drop(Box::from_raw(entry));
            drop(Box::from_raw(head));
        }
    };
    // SAFETY: `head` is a valid `robust_list_head` whose list is closed and whose one entry's
    // word is a 4-byte aligned futex word in a mapping that outlives this thread (the caller's
    // `Arc`); both allocations outlive the registration, which is undone before they are freed.
    let set = unsafe {
        libc::syscall(
            libc::SYS_set_robust_list,
            head.cast_const(),
            std::mem::size_of::<RobustListHead>(),
        )
    };
    if set != 0 {
        free();
        let _ = armed.send(false);
        return;
    }
    life.futex_word().store(tid, Release);
    let _ = armed.send(true);
    while stop.load(Acquire) == 0 {
        let _ = rustix::thread::futex::wait(stop, rustix::thread::futex::Flags::PRIVATE, 0, None);
    }
    // The manager is being dropped: its end, said as the kernel would say it.
    mark_dead(life, tid);
    // SAFETY: `previous` and `previous_len` are what the kernel had registered for this thread,
    // or a null list, which the kernel accepts and never walks.
    let restored = unsafe { libc::syscall(libc::SYS_set_robust_list, previous, previous_len) };
    if restored == 0 {
        free();
    }
    // Otherwise the kernel still holds our list, and walks it at this thread's exit: the entry
    // and head stay allocated (a few bytes, once per manager in a process that refuses the call).
}
