//! Group 3: P processes on one lock, P = 1, 2, 4, 8: ns per lock+unlock pair (all processes
//! together) and fairness (min ÷ max pairs per process).
//!
//! Each sample puts `iters` tickets in a pool in shared memory; the P worker processes take one
//! ticket per pair, under the lock, until the pool is empty. So every sample does exactly
//! `iters` pairs, a lost update would show as a wrong total (checked), and the time is from the
//! first worker's start to the last one's end, read from one clock (CLOCK_MONOTONIC).

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use lockyard_bench_support::Unit;

use crate::child::{CTL_ENV, Child, LOCKS_ENV, STORE_ENV, SUBJECT_ENV};
use crate::roles::REMAINING;
use crate::subject::{Subject, prepare};
use crate::sys::Shared;
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
];

/// A sample's outcome from each worker line `done <pairs> <start> <end>`.
pub(crate) fn gather(workers: &[Child], counts: &mut [u64]) -> (u64, u64, u64) {
    let (mut first, mut last, mut total) = (u64::MAX, 0u64, 0u64);
    for (w, count) in workers.iter().zip(counts.iter_mut()) {
        let line = w.expect("done", Duration::from_secs(600));
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().expect("done field"))
            .collect();
        let [pairs, start, end] = fields[..] else {
            panic!("bad done line {line:?}");
        };
        *count += pairs;
        total += pairs;
        first = first.min(start);
        last = last.max(end);
    }
    (total, first, last)
}

pub(crate) fn run(c: &mut Criterion, ctx: &Ctx) {
    if !ctx.wanted(GROUP) {
        return;
    }
    let subjects = ctx.subjects(SUBJECTS);
    let mut fairness = Vec::new();
    let mut g = c.benchmark_group(GROUP);
    ctx.pace(&mut g, Pace::Procs);
    for &s in &subjects {
        let store = prepare(s, ctx, "contention", 16);
        for p in PROCESSES {
            let ctl_path =
                PathBuf::from("/dev/shm").join(format!("{}-ctl-{}-{p}", ctx.tag, s.name()));
            let ctl = Shared::create(&ctl_path, 4096);
            let mut workers: Vec<Child> = (0..p)
                .map(|_| {
                    Child::spawn(
                        "contend",
                        &[
                            (SUBJECT_ENV, s.name().to_string()),
                            (STORE_ENV, store.store.clone()),
                            (LOCKS_ENV, "1".to_string()),
                            (CTL_ENV, ctl_path.display().to_string()),
                        ],
                    )
                })
                .collect();
            for w in &workers {
                w.expect("ready", Duration::from_secs(60));
            }
            let counts = RefCell::new(vec![0u64; p]);
            g.bench_with_input(BenchmarkId::new(s.name(), p), &p, |b, _| {
                b.iter_custom(|iters| {
                    ctl.u64(REMAINING).store(iters, Ordering::Release);
                    for w in workers.iter_mut() {
                        w.send("go");
                    }
                    let (total, first, last) = gather(&workers, &mut counts.borrow_mut());
                    assert_eq!(
                        total,
                        iters,
                        "{}: pairs lost or doubled: exclusion broken",
                        s.name()
                    );
                    Duration::from_nanos(last.saturating_sub(first))
                })
            });
            drop(workers);
            let counts = counts.into_inner();
            let (min, max) = (
                counts.iter().copied().min().unwrap_or(0),
                counts.iter().copied().max().unwrap_or(0),
            );
            if max > 0 {
                fairness.push((s, p, min as f64 / max as f64));
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
}
