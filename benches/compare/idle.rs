//! Group 7 (hand-timed): the CPU that 50 waiter processes burn while blocked on a lock whose
//! holder (this process) is alive and idle, read per thread (helper threads included) from
//! /proc/PID/task/*/schedstat (nanoseconds on the CPU) and the context-switch counts of
//! /proc/PID/task/*/status (wake-ups).

use std::time::Duration;

use lockyard_bench_support::Unit;

use crate::Ctx;
use crate::child::Child;
use crate::subject::{Mutexish, Subject, Work, prepare};
use crate::sys::cpu_and_switches;

const GROUP: &str = "compare-idle";
const SUBJECTS: &[Subject] = &[
    Subject::Shm,
    Subject::File,
    Subject::Dirlock,
    Subject::Glibc,
];
const WAITERS: usize = 50;

struct Idle<'a> {
    subject: Subject,
    store: &'a str,
    window: Duration,
}

impl Work for Idle<'_> {
    /// CPU-seconds and wake-ups of all waiters over the window.
    type Out = (f64, u64);

    fn run<M: Mutexish + 'static>(self, locks: Vec<M>) -> (f64, u64) {
        locks[0].acquire();
        let waiters: Vec<Child> = (0..WAITERS)
            .map(|_| Child::worker("wait", self.subject, self.store, 1, &[]))
            .collect();
        for w in &waiters {
            w.expect("ready", Duration::from_secs(120));
        }
        // Let every waiter get past its first attempts and into its wait.
        std::thread::sleep(Duration::from_millis(500));
        let sample = || -> Vec<(u64, u64)> {
            waiters
                .iter()
                .map(|w| cpu_and_switches(w.pid()).expect("read /proc of a waiter"))
                .collect()
        };
        let before = sample();
        std::thread::sleep(self.window);
        let after = sample();
        drop(waiters);
        locks[0].release();
        // Saturating: a thread that ended in the window took its counts with it (sys.rs).
        let cpu: u64 = after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.0.saturating_sub(b.0))
            .sum();
        let switches: u64 = after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.1.saturating_sub(b.1))
            .sum();
        (cpu as f64 / 1e9, switches)
    }
}

pub(crate) fn run(ctx: &Ctx) {
    let window = match (ctx.smoke, ctx.quick) {
        (true, _) => Duration::from_millis(200),
        (false, true) => Duration::from_secs(2),
        (false, false) => Duration::from_secs(10),
    };
    let secs = window.as_secs_f64();
    for s in ctx.subjects_in(GROUP, SUBJECTS) {
        let store = prepare(s, ctx, "idle", 16);
        let (cpu, wakeups) = store.open(
            1,
            Idle {
                subject: s,
                store: &store.store,
                window,
            },
        );
        ctx.figure(
            "idle",
            &format!("{WAITERS} waiters blocked {secs} s on a live holder: CPU they burn"),
            s.name(),
            cpu,
            Unit::CpuSeconds,
        );
        ctx.figure(
            "idle",
            &format!("{WAITERS} waiters blocked {secs} s on a live holder: wake-ups"),
            s.name(),
            wakeups as f64,
            Unit::Count,
        );
    }
}
