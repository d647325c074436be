//! This process's pid without a system call: cached in a page that the kernel wipes in a forked
//! child (`madvise(2)` `MADV_WIPEONFORK`, Linux 4.14).
//!
//! dirlock needs its own pid on every acquisition and release (the record names it, and a
//! forked child must not take its parent's lock for its own). `getpid(2)` is a system call
//! each time; glibc stopped caching it because a child made by a raw `clone` kept the parent's
//! value. A wipe-on-fork page has no such hole: the kernel itself zeroes it in the child of
//! every `fork`, `_Fork` or `clone` without `CLONE_VM`, whatever library made it, before the child
//! runs a single instruction. So a zero says "not known in this process", and any other value
//! was stored by this very process.
//!
//! Invariants (cited by the `SAFETY` comments below):
//! 1. [`PAGE`] is 0 (not set up yet), [`UNAVAILABLE`], or the address of a private, anonymous,
//!    readable and writable mapping of at least [`PAGE_LEN`] bytes that is never unmapped once
//!    published, so a reference into it is valid for `'static`.
//! 2. The mapping is only ever accessed through the [`AtomicI32`] at its start; the kernel may
//!    zero it at fork, when the child has one thread and no access is in progress.
//!
//! A child created with `CLONE_VM` but without `CLONE_THREAD` (the `vfork` of `posix_spawn`)
//! shares the parent's memory and would see the parent's pid; such a child may only call
//! `exec` or `_exit`, so it never reaches dirlock.
#![allow(
    unsafe_code,
    reason = "mmap(2) and madvise(2) work on raw memory; the cached pid lives in such a mapping"
)]

use std::ffi::c_void;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use rustix::mm::{Advice, MapFlags, ProtFlags, madvise, mmap_anonymous, munmap};
use rustix::process::Pid;

/// The address of the wipe-on-fork page, [`UNAVAILABLE`], or 0 before the first call.
static PAGE: AtomicUsize = AtomicUsize::new(0);
/// The kernel refused the page: every call asks `getpid(2)`.
const UNAVAILABLE: usize = 1;
/// The length asked for; the kernel rounds it up to its page size.
const PAGE_LEN: usize = 4096;

/// The pid of the calling process, as `getpid(2)` would say, from the cache when this process
/// has asked before.
#[inline]
pub(crate) fn getpid() -> Pid {
    match cell() {
        Some(cell) => match Pid::from_raw(cell.load(Ordering::Relaxed)) {
            Some(pid) => pid,
            None => {
                let pid = rustix::process::getpid();
                cell.store(pid.as_raw_nonzero().get(), Ordering::Relaxed);
                pid
            }
        },
        None => rustix::process::getpid(),
    }
}

/// [`getpid`] as the number [`lock_api::PerProcess`] keys its state by.
#[inline]
pub(crate) fn pid() -> u32 {
    getpid().as_raw_nonzero().get().unsigned_abs()
}

/// The cache cell, once set up; `None` where the kernel has no `MADV_WIPEONFORK`.
#[inline]
fn cell() -> Option<&'static AtomicI32> {
    let mut page = PAGE.load(Ordering::Acquire);
    if page == 0 {
        page = set_up();
    }
    if page == UNAVAILABLE {
        return None;
    }
    // SAFETY: by invariant 1 `page` is the start of a live, writable mapping of at least
    // PAGE_LEN bytes that is never unmapped, aligned to a page, hence to an i32; by invariant 2
    // it is only accessed as this atomic.
    Some(unsafe { &*(page as *const AtomicI32) })
}

/// Maps and publishes the page (or [`UNAVAILABLE`]); returns what [`PAGE`] holds afterwards.
///
/// Lock-free on purpose: a thread that forks while another one is in here leaves the child
/// nothing to wait for.
#[cold]
fn set_up() -> usize {
    let mapped = map_wiped().unwrap_or(UNAVAILABLE);
    match PAGE.compare_exchange(0, mapped, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => mapped,
        Err(winner) => {
            if mapped != UNAVAILABLE {
                // SAFETY: `mapped` is our own mapping of PAGE_LEN bytes, never published (the
                // exchange failed), so nothing refers to it.
                let _ = unsafe { munmap(mapped as *mut c_void, PAGE_LEN) };
            }
            winner
        }
    }
}

/// A fresh zeroed page marked wipe-on-fork; `None` when the kernel refuses either step.
fn map_wiped() -> Option<usize> {
    // SAFETY: a new private anonymous mapping at an address the kernel picks aliases no memory
    // of ours.
    let ptr = unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            PAGE_LEN,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    }
    .ok()?;
    // SAFETY: `ptr` is the page-aligned start of the mapping just made, PAGE_LEN bytes long;
    // the advice changes only what a forked child sees there.
    if unsafe { madvise(ptr, PAGE_LEN, Advice::LinuxWipeOnFork) }.is_err() {
        // SAFETY: the mapping is ours and nothing refers to it yet.
        let _ = unsafe { munmap(ptr, PAGE_LEN) };
        return None;
    }
    let address = ptr as usize;
    // 0 and UNAVAILABLE are never page addresses.
    (address > UNAVAILABLE).then_some(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cached_pid_is_the_real_one() {
        assert_eq!(getpid(), rustix::process::getpid());
        assert_eq!(getpid(), rustix::process::getpid());
    }
}
