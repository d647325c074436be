//! Group 1: lock+unlock of an uncontended lock, one thread, every backend and peer.

use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use lockyard_bench_support::Unit;

use crate::subject::{Mutexish, Subject, Work, prepare};
use crate::{Ctx, Pace};

const GROUP: &str = "compare-uncontended";
const ROW: &str = "lock+unlock, uncontended";

const SUBJECTS: &[Subject] = &[
    Subject::Mem,
    Subject::Shm,
    Subject::File,
    Subject::Dirlock,
    #[cfg(feature = "etcd")]
    Subject::Etcd,
    Subject::ParkingLot,
    Subject::Glibc,
    Subject::Flock,
    Subject::PidFile,
    #[cfg(feature = "etcd")]
    Subject::EtcdRpc,
];

struct Pair<'g, 'c> {
    group: &'g mut BenchmarkGroup<'c, WallTime>,
    name: &'static str,
}

impl Work for Pair<'_, '_> {
    type Out = ();

    fn run<M: Mutexish + 'static>(self, locks: Vec<M>) {
        let lock = &locks[0];
        self.group.bench_function(self.name, |b| {
            b.iter(|| {
                black_box(lock.acquire());
                lock.release();
            })
        });
    }
}

pub(crate) fn run(c: &mut Criterion, ctx: &Ctx) {
    let Some((mut g, subjects)) = ctx.group(c, GROUP, SUBJECTS, Pace::Fast) else {
        return;
    };
    for &s in &subjects {
        if s == Subject::ParkingLot {
            let mutex = parking_lot::Mutex::new(0u64);
            g.bench_function(s.name(), |b| {
                b.iter(|| {
                    let mut guard = black_box(&mutex).lock();
                    *guard = black_box(*guard);
                    drop(guard);
                })
            });
            continue;
        }
        prepare(s, ctx, "uncontended", 16).open(
            1,
            Pair {
                group: &mut g,
                name: s.name(),
            },
        );
    }
    g.finish();
    ctx.criterion_figures(GROUP, &subjects, ("uncontended", ROW), |ns| (ns, Unit::Ns));
}
