//! Group 4: a Podman-like load: 8 processes lock random locks of 2048, each for a 1 µs
//! critical section. Criterion times one operation of all processes together; the report
//! quotes operations per second. Each sample splits its operations evenly over the processes,
//! which start together at the crew's start line; it lasts from the first one's start to the
//! last one's end.

use std::time::Duration;

use criterion::Criterion;
use lockyard_bench_support::Unit;

use crate::child::Crew;
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
    let Some((mut g, subjects)) = ctx.group(c, GROUP, SUBJECTS, Pace::Procs) else {
        return;
    };
    for &s in &subjects {
        let store = prepare(s, ctx, "podman", LOCKS);
        let mut crew = Crew::spawn(ctx, "podman", &store, LOCKS, PROCESSES);
        g.bench_function(s.name(), |b| {
            b.iter_custom(|iters| {
                let n = PROCESSES as u64;
                let done = crew.round(|i| {
                    let quota = iters / n + u64::from((i as u64) < iters % n);
                    format!("go {quota}")
                });
                assert_eq!(done.iter().map(|d| d.ops).sum::<u64>(), iters);
                let first = done.iter().map(|d| d.start).min().unwrap_or(0);
                let last = done.iter().map(|d| d.end).max().unwrap_or(first);
                Duration::from_nanos(last.saturating_sub(first))
            })
        });
        drop(crew);
    }
    g.finish();
    ctx.criterion_figures(GROUP, &subjects, ("podman", ROW), |ns| {
        (1e9 / ns, Unit::OpsPerSec)
    });
}
