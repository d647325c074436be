//! Telling a forked child from the process that opened a lockyard manager, at the cost of one load.
#![doc = include_str!("../README.md")]
#![allow(unsafe_code)] // reason: pthread_atfork(3) is registered through libc
//!
//! # How it works
//!
//! Every manager records the fork generation it was opened in, and every operation compares it
//! with the current one: a process-wide counter that a `pthread_atfork(3)` child handler,
//! registered once, bumps in every child that `fork(2)` makes. In the parent the counter never
//! changes, so the check is one relaxed load of a read-mostly word and a compare, with no system
//! call: nothing measurable beside a lock's own compare-and-swap or system call.
//!
//! # Invariants
//!
//! 1. The child handler runs in the child, on the thread that called `fork`, before `fork`
//!    returns there: everything the child does afterwards is sequenced after the bump (threads it
//!    starts later synchronize with it through their spawn), so `Relaxed` suffices.
//! 2. The handler only increments an atomic: async-signal-safe, as a handler run after `fork`
//!    in a multithreaded process must be.
//!

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use lock_api::{Error, OnceValue, Result};

/// Bumped in every child `fork(2)` makes, once the handler is registered.
static FORKS: AtomicU32 = AtomicU32::new(0);
/// The result of registering the handler: 0, or the error number `pthread_atfork` returned.
///
/// A `OnceValue`, not a `OnceLock`: a child forked while another thread was registering would
/// wait for ever on a `OnceLock`'s initialisation. The price: threads whose first opens race may
/// each register the handler, and every fork then bumps the counter more than once, which the
/// equality check of [`current`] does not mind.
static REGISTERED: OnceValue<i32> = OnceValue::new();

extern "C" fn in_child() {
    FORKS.fetch_add(1, Relaxed);
}

/// The fork generation of this process, registering the child handler on first use. A manager
/// records it when it is opened.
///
/// # Errors
///
/// `Io` when `pthread_atfork(3)` fails (out of memory).
pub fn generation() -> Result<u32> {
    let registered = *REGISTERED.get_or_make(|| {
        // SAFETY: `in_child` is an `extern "C" fn()` that lives as long as the program and only
        // increments an atomic (invariant 2); no prepare or parent handler is registered.
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) }
    });
    if registered != 0 {
        return Err(Error::io(
            "pthread_atfork",
            "lockyard fork handler",
            std::io::Error::from_raw_os_error(registered),
        ));
    }
    Ok(FORKS.load(Relaxed))
}

/// The current fork generation; compare it with the one a manager recorded at open.
#[inline]
pub fn current() -> u32 {
    FORKS.load(Relaxed)
}

/// The pid namespace of this process (`lock_api::pid_namespace`, an inode number, 0 when
/// unknown), read once per fork generation: a process never changes its own pid namespace, but
/// a child forked after `unshare(CLONE_NEWPID)` is in another one, and a child's generation
/// differs from its parent's. Reading `/proc/self/ns/pid` costs several microseconds (a path
/// walk in procfs), which every manager's open used to pay.
pub fn pid_namespace() -> u32 {
    /// `(generation + 1) << 32 | namespace`; 0 before the first read.
    static CACHED: AtomicU64 = AtomicU64::new(0);
    let Ok(generation) = generation() else {
        return lock_api::pid_namespace();
    };
    let tag = u64::from(generation) + 1;
    let cached = CACHED.load(Relaxed);
    if cached >> 32 == tag {
        return cached as u32;
    }
    let ns = lock_api::pid_namespace();
    CACHED.store(tag << 32 | u64::from(ns), Relaxed);
    ns
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The generation stays put in the process that read it, and differs in a forked child.
    #[test]
    fn a_forked_child_sees_another_generation() {
        let opened = generation().expect("handler");
        assert_eq!(current(), opened);
        assert_eq!(
            generation().expect("handler"),
            opened,
            "read twice, registered once"
        );
        let status = lock_conformance::fork::fork_and_wait(Duration::from_secs(10), || {
            i32::from(current() == opened)
        })
        .expect("fork");
        assert_eq!(status, Some(0), "the child saw its parent's generation");
        assert_eq!(current(), opened, "the parent's generation did not move");
    }

    /// The cached pid namespace is read again in a forked child: a child forked after
    /// `unshare(CLONE_NEWPID)` is in a namespace of its own. The unshare happens in a first
    /// child (single-threaded, so it may make a user namespace too when not root), which then
    /// forks the second.
    #[test]
    fn a_child_in_a_new_pid_namespace_reads_its_own() {
        let here = pid_namespace();
        assert_eq!(here, lock_api::pid_namespace());
        assert_ne!(here, 0, "/proc/self/ns/pid cannot be read");
        let limit = Duration::from_secs(10);
        let status = lock_conformance::fork::fork_and_wait(limit, || {
            if pid_namespace() != here {
                return 2;
            }
            let mut flags = libc::CLONE_NEWPID;
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                flags |= libc::CLONE_NEWUSER;
            }
            // SAFETY: unshare(2) takes flags only; this child is single-threaded.
            if unsafe { libc::unshare(flags) } != 0 {
                return 3;
            }
            let grandchild = lock_conformance::fork::fork_and_wait(limit, || {
                let theirs = pid_namespace();
                i32::from(theirs == here || theirs != lock_api::pid_namespace())
            });
            match grandchild {
                Ok(Some(code)) => code,
                _ => 4,
            }
        })
        .expect("fork");
        assert_eq!(
            status,
            Some(0),
            "1: the grandchild read its grandparent's namespace; 2: the child did not see its \
             parent's; 3: unshare failed; 4: the grandchild did not exit"
        );
    }
}
