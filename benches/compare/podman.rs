//! Group 4: a Podman-like load: 8 processes lock random locks of 2048, each for a 1 µs
//! critical section. Criterion times one operation of all processes together; the report
//! quotes operations per second.

use std::time::Duration;

use criterion::Criterion;
use lockyard_bench_support::Unit;

use crate::child::{Child, INDEX_ENV, LOCKS_ENV, STORE_ENV, SUBJECT_ENV};
use crate::contention::gather;
use crate::subject::{Subject, prepare};
use crate::{Ctx, Pace};

const GROUP: &str = "compare-podman";
const PROCESSES: usize = 8;
const LOCKS: u32 = 2048;
const ROW: &str = "Podman-like: 8 processes, random locks of 2048, 1 µs critical section";

const SUBJECTS: &[Subject] = &[
    Subject::Shm,
    Subject::File,
    #[cfg(feature = "etcd")]
    Subject::Etcd,
    Subject::Glibc,
];

pub(crate) fn run(c: &mut Criterion, ctx: &Ctx) {
    if !ctx.wanted(GROUP) {
        return;
    }
    let subjects = ctx.subjects(SUBJECTS);
    let mut g = c.benchmark_group(GROUP);
    ctx.pace(&mut g, Pace::Procs);
    for &s in &subjects {
        let store = prepare(s, ctx, "podman", LOCKS);
        let mut workers: Vec<Child> = (0..PROCESSES)
            .map(|i| {
                Child::spawn(
                    "podman",
                    &[
                        (SUBJECT_ENV, s.name().to_string()),
                        (STORE_ENV, store.store.clone()),
                        (LOCKS_ENV, LOCKS.to_string()),
                        (INDEX_ENV, i.to_string()),
                    ],
                )
            })
            .collect();
        for w in &workers {
            w.expect("ready", Duration::from_secs(60));
        }
        let mut counts = vec![0u64; PROCESSES];
        g.bench_function(s.name(), |b| {
            b.iter_custom(|iters| {
                let n = PROCESSES as u64;
                for (i, w) in workers.iter_mut().enumerate() {
                    let quota = iters / n + u64::from((i as u64) < iters % n);
                    w.send(&format!("go {quota}"));
                }
                let (total, first, last) = gather(&workers, &mut counts);
                assert_eq!(total, iters);
                Duration::from_nanos(last.saturating_sub(first))
            })
        });
        drop(workers);
    }
    g.finish();
    for &s in &subjects {
        ctx.criterion_figure((GROUP, s.name(), None), ("podman", ROW), |ns| {
            (1e9 / ns, Unit::OpsPerSec)
        });
    }
}
