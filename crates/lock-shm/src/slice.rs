//! Short time slices for the threads a holder's death wakes, so that they run at once instead
//! of behind the dying holder's exit.
#![allow(unsafe_code)] // reason: sched_getattr(2) and sched_setattr(2) take a raw struct pointer
//!
//! The kernel wakes a sleeper of a dead owner's life word from inside the owner's exit (life.rs),
//! early, before it tears the owner's memory down. The woken thread is often placed on the CPU
//! that runs that exit (its previous CPU, or the waker's), and the scheduler (EEVDF, Linux 6.6
//! and later) lets a running task finish its slice before a task of the same weight that just
//! woke: the waiter then sits in the run queue until the dying process has unmapped its memory,
//! which is the whole delay the life word was there to avoid. Traced on this project's VM
//! (`perf sched`, the comparison bench's takeover group): the woken waiter stayed 300-400 µs
//! behind the exiting holder in most trials, with the other CPU idle; glibc's robust mutex waits
//! the same way.
//!
//! Linux 6.12 lets an unprivileged thread ask for a shorter slice (`sched_setattr(2)`,
//! `sched_runtime` of a `SCHED_OTHER` thread, 0.1 ms at least), and a woken task with a shorter
//! slice than the running one preempts it. A slice changes no weight: the thread gets the same
//! CPU share, in shorter turns. So:
//!
//! - a watcher thread (watch.rs) asks for [`SHORT_NS`] for its whole life: it wakes for a death
//!   and for nothing else, and sleeps again after a few system calls;
//! - a waiter that sleeps on a holder's life word asks for [`SHORT_NS`] once its wait has lasted
//!   1 ms (wait.rs, `URGENT_AFTER`: under contention, a waiter on a short slice woken by a
//!   release preempts the process that released), until the wait ends ([`Urgent`]), and then
//!   gets its own slice back, however the wait ended.
//!
//! Everything here is best effort: a kernel without custom slices ignores the field (or refuses
//! the call), a seccomp filter may refuse it, a thread with another policy (real-time, batch,
//! idle) is left alone; the only loss is the latency above.

use std::mem::size_of;

/// The slice asked for: the kernel's minimum.
pub(crate) const SHORT_NS: u64 = 100_000;

/// `SCHED_OTHER`.
const SCHED_OTHER: u32 = 0;
/// `SCHED_FLAG_RESET_ON_FORK`: the only flag `sched_getattr` reports that is given back.
const RESET_ON_FORK: u64 = 0x01;

/// `struct sched_attr` as of Linux 3.14 (`SCHED_ATTR_SIZE_VER0`): what this module reads and
/// writes; later fields (utilisation clamps) are left as they are by a call that omits them.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// The calling thread's scheduling attributes, when the kernel tells them.
fn get() -> Option<SchedAttr> {
    let mut attr = SchedAttr::default();
    let size = size_of::<SchedAttr>() as libc::c_uint;
    // SAFETY: `attr` is a writable `struct sched_attr` of `size` bytes (VER0, which every kernel
    // with the call accepts), and pid 0 is the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &raw mut attr,
            size,
            0 as libc::c_uint,
        )
    };
    (rc == 0).then_some(attr)
}

/// Sets the calling thread's slice to `runtime_ns`, keeping the policy, nice value and flags of
/// `old`. Returns whether the kernel took it.
fn set(old: &SchedAttr, runtime_ns: u64) -> bool {
    let attr = SchedAttr {
        size: size_of::<SchedAttr>() as u32,
        policy: old.policy,
        flags: old.flags & RESET_ON_FORK,
        nice: old.nice,
        priority: old.priority,
        runtime: runtime_ns,
        ..SchedAttr::default()
    };
    // SAFETY: `attr` is a valid `struct sched_attr` whose `size` says how much of it the kernel
    // reads; pid 0 is the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &raw const attr,
            0 as libc::c_uint,
        )
    };
    rc == 0
}

/// Whether a thread with `attr` is one whose slice this module shortens.
fn applies(attr: &SchedAttr) -> bool {
    attr.policy == SCHED_OTHER && attr.runtime > SHORT_NS
}

/// Gives the calling thread the short slice for the rest of its life (a watcher thread).
pub(crate) fn shorten_for_good() {
    if let Some(attr) = get()
        && applies(&attr)
    {
        let _ = set(&attr, SHORT_NS);
    }
}

/// The calling thread's short slice while this lives; its own slice back on drop. Not `Send`:
/// it must be dropped by the thread that made it.
#[derive(Debug)]
pub(crate) struct Urgent {
    /// The thread's attributes before, when they were changed.
    old: Option<SchedAttr>,
    _thread_bound: std::marker::PhantomData<*const ()>,
}

impl Urgent {
    /// Shortens the calling thread's slice (module docs), when it applies.
    pub(crate) fn begin() -> Urgent {
        let old = get().filter(applies).filter(|old| set(old, SHORT_NS));
        Urgent {
            old,
            _thread_bound: std::marker::PhantomData,
        }
    }

    /// Whether the slice was changed.
    #[cfg(test)]
    pub(crate) fn changed(&self) -> bool {
        self.old.is_some()
    }
}

impl Drop for Urgent {
    fn drop(&mut self) {
        if let Some(old) = self.old.take() {
            // The slice the thread had. The kernel then counts it as chosen by the thread (it
            // no longer follows the `base_slice_ns` tunable), which only an administrator who
            // changes that tunable while this thread lives could notice.
            let _ = set(&old, old.runtime);
        }
    }
}

/// The calling thread's slice in ns (`sched_runtime`), when the kernel tells it.
#[cfg(test)]
pub(crate) fn current() -> Option<u64> {
    get().map(|a| a.runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wait's short slice is given back when it ends; on a kernel without custom slices
    /// nothing changes at all.
    #[test]
    fn urgent_restores_the_threads_slice() {
        std::thread::spawn(|| {
            let before = current().expect("sched_getattr");
            let urgent = Urgent::begin();
            if urgent.changed() {
                assert_eq!(current(), Some(SHORT_NS));
            } else {
                assert_eq!(current(), Some(before));
            }
            drop(urgent);
            assert_eq!(current(), Some(before));
        })
        .join()
        .expect("thread");
    }

    /// A thread that chose a policy other than `SCHED_OTHER` is left alone.
    #[test]
    fn batch_threads_are_left_alone() {
        std::thread::spawn(|| {
            let mut attr = get().expect("sched_getattr");
            attr.policy = 3; // SCHED_BATCH
            assert!(set(&attr, attr.runtime), "SCHED_BATCH needs no privilege");
            let before = get().expect("sched_getattr");
            let urgent = Urgent::begin();
            assert!(!urgent.changed());
            assert_eq!(
                get().map(|a| (a.policy, a.runtime)),
                Some((3, before.runtime))
            );
        })
        .join()
        .expect("thread");
    }
}
