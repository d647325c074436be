//! What a re-executed bench binary does in each role.
//!
//! - `hold`: locks lock 0, prints `held`, holds it until stdin closes (or it is killed).
//! - `contend` (a [`Crew`](crate::child::Crew) worker): prints `ready`; on each `go` line says
//!   `set`, waits at the start line, then takes tickets from the shared pool under lock 0 until
//!   none are left, and prints `done <pairs> <start ns> <end ns>`.
//! - `podman` (a crew worker): prints `ready`; on each `go N` line says `set`, waits at the start
//!   line, then does N lock+unlock pairs on random locks with a 1 µs critical section, and prints
//!   `done <N> <start ns> <end ns>`.
//! - `wait`: prints `ready`, then blocks in a lock of lock 0 (at most five minutes).

use std::io::BufRead;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::child::{
    CTL_ENV, CTL_FINISHED, CTL_REMAINING, CTL_START, INDEX_ENV, LOCKS_ENV, STORE_ENV, SUBJECT_ENV,
    exit_on_stdin_eof, param,
};
use crate::subject::{Mutexish, Subject, Work, open_locks};
use crate::sys::{Shared, now_ns, wait_at_start};

/// The length of the Podman-like critical section.
pub(crate) const CRITICAL_NS: u64 = 1_000;

pub(crate) fn run(role: &str) {
    let subject = param(SUBJECT_ENV);
    let subject = Subject::from_name(&subject).unwrap_or_else(|| panic!("subject {subject}"));
    let store = param(STORE_ENV);
    let locks: u32 = param(LOCKS_ENV).parse().expect("lock count");
    match role {
        "hold" => open_locks(subject, &store, locks, Hold),
        "contend" => open_locks(
            subject,
            &store,
            locks,
            Contend {
                ctl: Shared::open(Path::new(&param(CTL_ENV))),
            },
        ),
        "podman" => open_locks(
            subject,
            &store,
            locks,
            Podman {
                seed: param(INDEX_ENV).parse().expect("index"),
                ctl: Shared::open(Path::new(&param(CTL_ENV))),
            },
        ),
        "wait" => open_locks(subject, &store, locks, Wait),
        other => panic!("unknown role {other}"),
    }
}

/// Prints a line for the parent right away.
fn say(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Says `set`, waits at the crew's start line until the round after `seen` starts, and returns
/// the new round's number.
fn start_line(line: &AtomicU32, seen: u32) -> u32 {
    say("set");
    wait_at_start(line, seen)
}

/// The lines the parent sends, until it closes stdin.
fn commands() -> impl Iterator<Item = String> {
    std::io::stdin().lock().lines().map_while(Result::ok)
}

struct Hold;

impl Work for Hold {
    type Out = ();

    fn run<M: Mutexish + 'static>(self, locks: Vec<M>) {
        locks[0].acquire();
        say("held");
        for _ in commands() {}
        locks[0].release();
    }
}

struct Contend {
    ctl: Shared,
}

impl Work for Contend {
    type Out = ();

    fn run<M: Mutexish + 'static>(self, locks: Vec<M>) {
        let lock = &locks[0];
        let remaining = self.ctl.u64(CTL_REMAINING);
        let finished = self.ctl.u64(CTL_FINISHED);
        let line = self.ctl.u32(CTL_START);
        let mut round = line.load(Ordering::Acquire);
        say("ready");
        for _ in commands() {
            round = start_line(line, round);
            let start = now_ns();
            let mut pairs = 0u64;
            loop {
                lock.acquire();
                // Only ever touched under the lock: a lost update would show as a wrong total.
                let left = remaining.load(Ordering::Relaxed);
                if left == 0 {
                    lock.release();
                    break;
                }
                remaining.store(left - 1, Ordering::Relaxed);
                lock.release();
                pairs += 1;
                if left == 1 {
                    // The last ticket: the round's work ends here, for every worker at once.
                    finished.store(now_ns(), Ordering::Release);
                }
            }
            say(&format!("done {pairs} {start} {}", now_ns()));
        }
    }
}

struct Podman {
    seed: u64,
    ctl: Shared,
}

impl Work for Podman {
    type Out = ();

    fn run<M: Mutexish + 'static>(self, locks: Vec<M>) {
        // xorshift64*: cheap, and good enough to spread ids.
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (self.seed.wrapping_add(1) << 17);
        let n = locks.len() as u64;
        let line = self.ctl.u32(CTL_START);
        let mut round = line.load(Ordering::Acquire);
        say("ready");
        for order in commands() {
            let count: u64 = order
                .strip_prefix("go ")
                .and_then(|c| c.parse().ok())
                .expect("go N");
            round = start_line(line, round);
            let start = now_ns();
            for _ in 0..count {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let id = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) % n;
                let lock = &locks[id as usize];
                lock.acquire();
                let entered = now_ns();
                while now_ns() - entered < CRITICAL_NS {
                    std::hint::spin_loop();
                }
                lock.release();
            }
            say(&format!("done {count} {start} {}", now_ns()));
        }
    }
}

struct Wait;

impl Work for Wait {
    type Out = ();

    fn run<M: Mutexish + 'static>(self, locks: Vec<M>) {
        exit_on_stdin_eof();
        say("ready");
        if locks[0].acquire_for(Duration::from_secs(300)).is_some() {
            say("acquired");
            locks[0].release();
        }
    }
}
