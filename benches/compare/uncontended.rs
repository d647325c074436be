//! Group 1: lock+unlock of an uncontended lock, one thread, every backend and peer; and dirlock
//! measured beside its peer, the pid file, in interleaved batches.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use lockyard_bench_support::Unit;

use crate::subject::{Mutexish, Subject, Work, prepare};
use crate::takeover::median;
use crate::{Ctx, Pace};

const GROUP: &str = "compare-uncontended";
const ROW: &str = "lock+unlock, uncontended";
/// The row of the interleaved measurement (its name must not begin with [`ROW`]: the report
/// finds a target's row by its beginning).
const INTERLEAVED_ROW: &str = "interleaved batches: lock+unlock, uncontended";

/// Backends measured in batches that alternate with their peer's: the cost of creating and
/// removing files moves by several times over seconds (a pid file on ext4 measured 6 to 20 µs
/// a pair from one run to the next), so two criterion functions measured one after the other
/// compare two moments of the file system as much as two lock protocols. (`flock` works on
/// locks in memory, and file's criterion cell beside flock's does not move so.)
const INTERLEAVED: &[(Subject, Subject)] = &[(Subject::Dirlock, Subject::PidFile)];
/// About how long one batch lasts: long enough that the clock reads are nothing beside it,
/// short enough that both sides see the same moment of the file system.
const BATCH_TIME: Duration = Duration::from_micros(500);

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
            g.bench_function(s.name(), |b| b.iter(|| parking_lot_pair(&mutex)));
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
    for &(ours, peer) in INTERLEAVED {
        if subjects.contains(&ours) && subjects.contains(&peer) {
            interleaved(ctx, ours, peer);
        }
    }
}

/// The parking_lot peer's lock+unlock: two out-of-line calls, like every other subject's
/// halves (see [`Mutexish`]).
fn parking_lot_pair(mutex: &parking_lot::Mutex<u64>) {
    #[inline(never)]
    fn lock(mutex: &parking_lot::Mutex<u64>) -> parking_lot::MutexGuard<'_, u64> {
        black_box(mutex).lock()
    }
    #[inline(never)]
    fn unlock(guard: parking_lot::MutexGuard<'_, u64>) {
        drop(guard);
    }
    let mut guard = lock(mutex);
    *guard = black_box(*guard);
    unlock(guard);
}

/// Measures `ours` and `peer` in alternating batches of lock+unlock pairs, each side going
/// first in every other round, and records each side's median ns per pair over the batches in
/// [`INTERLEAVED_ROW`].
fn interleaved(ctx: &Ctx, ours: Subject, peer: Subject) {
    let total = if ctx.smoke {
        Duration::ZERO
    } else if ctx.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2)
    };
    let name = format!("interleaved-{}", ours.name());
    let ours_store = prepare(ours, ctx, &name, 16);
    let peer_store = prepare(peer, ctx, &name, 16);
    let (ours_ns, peer_ns) = ours_store.open(
        1,
        Outer {
            peer: &peer_store,
            total,
        },
    );
    for (subject, ns) in [(ours, ours_ns), (peer, peer_ns)] {
        ctx.figure("uncontended", INTERLEAVED_ROW, subject.name(), ns, Unit::Ns);
    }
}

/// The interleaved measurement with our lock open: opens the peer's.
struct Outer<'p> {
    peer: &'p crate::subject::Prepared,
    total: Duration,
}

impl Work for Outer<'_> {
    type Out = (f64, f64);

    fn run<M: Mutexish + 'static>(self, locks: Vec<M>) -> (f64, f64) {
        self.peer.open(
            1,
            Inner {
                ours: locks,
                total: self.total,
            },
        )
    }
}

/// The interleaved measurement with both locks open.
struct Inner<O> {
    ours: Vec<O>,
    total: Duration,
}

impl<O: Mutexish + 'static> Work for Inner<O> {
    type Out = (f64, f64);

    fn run<P: Mutexish + 'static>(self, locks: Vec<P>) -> (f64, f64) {
        let (ours, peer) = (&self.ours[0], &locks[0]);
        // Twenty pairs of each as a warm-up, which also sizes the batches.
        let pairs = |lock: &dyn Fn(), n: u32| {
            let start = Instant::now();
            for _ in 0..n {
                lock();
            }
            start.elapsed().as_nanos() as f64 / f64::from(n)
        };
        let ours_pair = || {
            black_box(ours.acquire());
            ours.release();
        };
        let peer_pair = || {
            black_box(peer.acquire());
            peer.release();
        };
        let slowest = pairs(&ours_pair, 20).max(pairs(&peer_pair, 20));
        let batch = (BATCH_TIME.as_nanos() as f64 / slowest.max(1.0)).clamp(10.0, 5_000.0) as u32;
        let (mut ours_ns, mut peer_ns) = (Vec::new(), Vec::new());
        let end = Instant::now() + self.total;
        let mut round = 0u32;
        // At least one round, so that a smoke run has a figure to record.
        while round == 0 || Instant::now() < end {
            if round.is_multiple_of(2) {
                ours_ns.push(pairs(&ours_pair, batch));
                peer_ns.push(pairs(&peer_pair, batch));
            } else {
                peer_ns.push(pairs(&peer_pair, batch));
                ours_ns.push(pairs(&ours_pair, batch));
            }
            round += 1;
        }
        ours_ns.sort_by(f64::total_cmp);
        peer_ns.sort_by(f64::total_cmp);
        (median(&ours_ns), median(&peer_ns))
    }
}
