//! Forked children for tests of what a `fork(2)` without `exec` inherits.
#![allow(unsafe_code)] // reason: fork(2), waitpid(2), kill(2) and _exit(2) go through libc.
//!
//! # Invariants
//!
//! 1. The child runs only the caller's closure and `_exit`: it never returns into the caller's
//!    frames, runs no destructor of the parent's and never reaches the test harness. What the
//!    closure may safely do after a fork of a multithreaded process is the caller's business
//!    (glibc's fork handlers keep its allocator and thread creation usable).
//! 2. Only our own child is waited for or signalled, and it is always reaped.

use std::time::{Duration, Instant};

/// Forks; the child runs `child` and exits with the code it returns. The parent waits at most
/// `limit` for it: `Some(code)` when it exited, `None` when it was killed by a signal, or did not
/// exit in time (it is then SIGKILLed and reaped). `Err` when `fork` fails.
///
/// # Errors
///
/// The `fork(2)` error.
pub fn fork_and_wait(limit: Duration, child: impl FnOnce() -> i32) -> std::io::Result<Option<i32>> {
    // SAFETY: invariant 1: the child side below runs `child` and `_exit` only.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        let code = child();
        // SAFETY: invariant 1: ends the child without unwinding into the parent's frames.
        unsafe { libc::_exit(code) };
    }
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: invariant 2: `pid` is our child; `status` is a valid out-pointer.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            return Ok(libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)));
        }
        if start.elapsed() > limit {
            // SAFETY: invariant 2: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
