//! Group 3: P processes on one lock, P = 1, 2, 4, 8: ns per lock+unlock pair (all processes
//! together), fairness (min ÷ max pairs per process), and the two parts it is made of: the CPU
//! share (min ÷ max CPU time per process) and the pairs per CPU-second (min ÷ max).
//!
//! Each sample puts `iters` tickets in a pool in shared memory; the P worker processes take one
//! ticket per pair, under the lock, until the pool is empty. So every sample does exactly
//! `iters` pairs, and a lost update would show as a wrong total (checked). The workers start
//! together: each waits at the crew's start line, which one `FUTEX_WAKE` opens for all. The
//! pool empties for all of them at once, so every worker is measured over the same window, from
//! the first worker's start to the taking of the last ticket, read from one clock
//! (CLOCK_MONOTONIC).
//!
//! How many pairs a process does depends on how much CPU it used and on how many pairs it made
//! of that CPU (rather than spinning while others took the lock). The first is the scheduler's
//! doing (with more processes than CPUs: which processes it put together on one CPU, and for how
//! long) and the lock's (a process the lock keeps asleep uses no CPU); the second is the lock's
//! alone. So each worker's CPU time over the whole benchmark (warm-up included, every thread,
//! read from /proc before the first sample and after the last) is recorded too.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use lockyard_bench_support::Unit;

use crate::child::{CTL_FINISHED, CTL_REMAINING, Crew};
use crate::subject::{Subject, prepare};
use crate::{Ctx, Pace};

const GROUP: &str = "compare-contention";
pub(crate) const PROCESSES: [usize; 4] = [1, 2, 4, 8];

const SUBJECTS: &[Subject] = &[
    Subject::Shm,
    Subject::File,
    Subject::Dirlock,
    #[cfg(feature = "etcd")]
    Subject::Etcd,
    Subject::Glibc,
    Subject::Flock,
    // The peer of the etcd target "4 processes on one lock ÷ the Lock RPC's throughput".
    #[cfg(feature = "etcd")]
    Subject::EtcdRpc,
];

/// One sample of `iters` pairs by the crew: its duration, and each worker's pairs added to
/// `counts`.
fn sample(crew: &mut Crew, subject: Subject, iters: u64, counts: &mut [u64]) -> Duration {
    crew.ctl()
        .u64(CTL_REMAINING)
        .store(iters, Ordering::Release);
    crew.ctl().u64(CTL_FINISHED).store(0, Ordering::Release);
    let done = crew.round(|_| "go".to_string());
    let total: u64 = done.iter().map(|d| d.ops).sum();
    assert_eq!(
        total,
        iters,
        "{}: pairs lost or doubled: exclusion broken",
        subject.name()
    );
    for (count, d) in counts.iter_mut().zip(&done) {
        *count += d.ops;
    }
    let first = done.iter().map(|d| d.start).min().unwrap_or(0);
    let finished = match crew.ctl().u64(CTL_FINISHED).load(Ordering::Acquire) {
        // No ticket to take (iters = 0): the last worker's end.
        0 => done.iter().map(|d| d.end).max().unwrap_or(first),
        at => at,
    };
    Duration::from_nanos(finished.saturating_sub(first))
}

pub(crate) fn run(c: &mut Criterion, ctx: &Ctx) {
    let Some((mut g, subjects)) = ctx.group(c, GROUP, SUBJECTS, Pace::Contended) else {
        return;
    };
    let mut fairness = Vec::new();
    let mut parts = Vec::new();
    // Process count first, subject second: ours and its peer at one count are measured seconds
    // apart rather than a whole subject's sweep apart, so a change in the machine's load between
    // the two (it is shared) skews their ratio less.
    let stores: Vec<_> = subjects
        .iter()
        .map(|&s| (s, prepare(s, ctx, &format!("contention-{}", s.name()), 16)))
        .collect();
    for p in PROCESSES {
        for (s, store) in &stores {
            let s = *s;
            let mut crew = Crew::spawn(ctx, "contend", store, 1, p);
            let counts = RefCell::new(vec![0u64; p]);
            let cpu_before = crew.cpu_ns();
            g.bench_with_input(BenchmarkId::new(s.name(), p), &p, |b, _| {
                b.iter_custom(|iters| sample(&mut crew, s, iters, &mut counts.borrow_mut()))
            });
            let cpu_after = crew.cpu_ns();
            drop(crew);
            let counts = counts.into_inner();
            if let Some(f) = min_over_max(counts.iter().map(|&n| n as f64)) {
                fairness.push((s, p, f));
                if let (Some(before), Some(after)) = (cpu_before, cpu_after)
                    && let Some(f) = cpu_parts(&counts, &before, &after)
                {
                    parts.push((s, p, f));
                }
            }
        }
    }
    g.finish();
    for &s in &subjects {
        for p in PROCESSES {
            let param = p.to_string();
            ctx.criterion_figure(
                (GROUP, s.name(), Some(&param)),
                ("contention", &format!("P = {p}: ns per lock+unlock pair")),
                |ns| (ns, Unit::Ns),
            );
        }
    }
    for (s, p, f) in fairness {
        ctx.figure(
            "contention",
            &format!("P = {p}: fairness (min ÷ max pairs per process)"),
            s.name(),
            f,
            Unit::Ratio,
        );
    }
    for (s, p, (share, rate)) in parts {
        for (row, value) in [
            ("CPU share (min ÷ max CPU time per process)", share),
            ("pairs per CPU-second (min ÷ max)", rate),
        ] {
            ctx.figure(
                "contention",
                &format!("P = {p}: {row}"),
                s.name(),
                value,
                Unit::Ratio,
            );
        }
    }
}

/// Min ÷ max over the workers of their CPU time, and of their pairs per CPU-second, from each
/// worker's pairs and its CPU time (ns) before and after; `None` when a worker used no CPU that
/// /proc could see.
fn cpu_parts(counts: &[u64], before: &[u64], after: &[u64]) -> Option<(f64, f64)> {
    let cpu: Vec<u64> = before
        .iter()
        .zip(after)
        .map(|(&b, &a)| a.saturating_sub(b))
        .collect();
    if cpu.contains(&0) {
        return None;
    }
    let share = min_over_max(cpu.iter().map(|&ns| ns as f64))?;
    let rate = min_over_max(
        counts
            .iter()
            .zip(&cpu)
            .map(|(&pairs, &ns)| pairs as f64 / ns as f64),
    )?;
    Some((share, rate))
}

/// Min ÷ max of non-negative values; `None` when the largest is not positive.
fn min_over_max(values: impl Iterator<Item = f64> + Clone) -> Option<f64> {
    let min = values.clone().fold(f64::INFINITY, f64::min);
    let max = values.fold(0.0, f64::max);
    (max > 0.0).then(|| min / max)
}
