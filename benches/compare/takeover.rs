//! Group 6 (hand-timed): a holder process is SIGKILLed while a waiter is blocked on its lock;
//! the figure is the time from the kill to the waiter holding the lock.
//!
//! The kill comes at a uniformly random time 10-30 ms after the waiter started waiting, so it
//! falls at a random phase of whatever cycle the waiter's wait runs on (a probe every few ms, a
//! backoff): a fixed sleep would land at the same phase every trial and measure that phase.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use lockyard_bench_support::Unit;

use crate::Ctx;
use crate::child::Child;
use crate::subject::{Mutexish, Subject, Work, prepare};

const GROUP: &str = "compare-takeover";
const SUBJECTS: &[Subject] = &[
    Subject::Shm,
    Subject::File,
    Subject::Dirlock,
    #[cfg(feature = "etcd")]
    Subject::Etcd,
    Subject::Glibc,
];
/// How long a waiter waits at most before the trial counts as a failure.
const BOUND: Duration = Duration::from_secs(30);

struct Trials<'a> {
    subject: Subject,
    store: &'a str,
    trials: usize,
}

/// Per trial: the delay from kill to acquisition, and whether the waiter was told the owner died.
type Outcome = Vec<(Duration, bool)>;

impl Work for Trials<'_> {
    type Out = Outcome;

    fn run<M: Mutexish + 'static>(self, locks: Vec<M>) -> Outcome {
        let lock = &locks[0];
        let mut out = Vec::with_capacity(self.trials);
        for _ in 0..self.trials {
            let mut holder = Child::worker("hold", self.subject, self.store, 1, &[]);
            holder.expect("held", Duration::from_secs(60));
            let delay = Duration::from_nanos(rand::random_range(10_000_000..30_000_000));
            let outcome = std::thread::scope(|scope| {
                let (started_tx, started_rx) = mpsc::channel();
                let waiter = scope.spawn(move || {
                    let _ = started_tx.send(());
                    let got = lock.acquire_for(BOUND);
                    let at = Instant::now();
                    // Released by the thread that took it: glibc binds a mutex to its thread.
                    if got.is_some() {
                        lock.release();
                    }
                    (got, at)
                });
                started_rx.recv().expect("waiter started");
                std::thread::sleep(delay);
                let killed = Instant::now();
                holder.kill();
                let (got, at) = waiter.join().expect("waiter");
                match got {
                    Some(died) => (at.saturating_duration_since(killed), died),
                    None => {
                        eprintln!(
                            "{}: takeover timed out after {BOUND:?}",
                            self.subject.name()
                        );
                        (BOUND, false)
                    }
                }
            });
            drop(holder);
            out.push(outcome);
        }
        out
    }
}

pub(crate) fn run(ctx: &Ctx) {
    let trials = match (ctx.smoke, ctx.quick) {
        (true, _) => 2,
        (false, true) => 20,
        (false, false) => 30,
    };
    for s in ctx.subjects_in(GROUP, SUBJECTS) {
        let store = prepare(s, ctx, "takeover", 16);
        let outcome = store.open(
            1,
            Trials {
                subject: s,
                store: &store.store,
                trials,
            },
        );
        let mut delays: Vec<f64> = outcome.iter().map(|(d, _)| d.as_nanos() as f64).collect();
        delays.sort_by(f64::total_cmp);
        let median = median(&delays);
        let max = delays.last().copied().unwrap_or(0.0);
        let told = outcome.iter().filter(|(_, died)| *died).count();
        let row = |what: &str| {
            format!("SIGKILLed holder → blocked waiter holds the lock: {what} of {trials}")
        };
        ctx.figure("takeover", &row("median"), s.name(), median, Unit::Ns);
        ctx.figure("takeover", &row("max"), s.name(), max, Unit::Ns);
        ctx.figure(
            "takeover",
            "takeovers reported as owner death (share of trials)",
            s.name(),
            told as f64 / trials as f64,
            Unit::Ratio,
        );
    }
}

/// The median of sorted values.
pub(crate) fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}
