//! Group 2: try_lock of a lock that another process holds (another owner or thread for the
//! in-process subjects).

use std::hint::black_box;
use std::sync::mpsc;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use lockyard_bench_support::Unit;

use crate::child::Child;
use crate::subject::{Mutexish, Subject, Work, open_locks, prepare};
use crate::{Ctx, Pace};

const GROUP: &str = "compare-held";
const ROW: &str = "try_lock of a lock another process holds";

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
];

struct TryHeld<'g, 'c> {
    group: &'g mut BenchmarkGroup<'c, WallTime>,
    name: &'static str,
}

impl Work for TryHeld<'_, '_> {
    type Out = ();

    fn run<M: Mutexish + 'static>(self, locks: Vec<M>) {
        let lock = &locks[0];
        assert!(!lock.try_acquire(), "{}: the held lock was free", self.name);
        self.group
            .bench_function(self.name, |b| b.iter(|| black_box(lock.try_acquire())));
    }
}

/// Holds lock 0 of a subject on a thread of this process (another owner) until told to stop.
struct HoldOnThread {
    held: mpsc::Sender<()>,
    stop: mpsc::Receiver<()>,
}

impl Work for HoldOnThread {
    type Out = ();

    fn run<M: Mutexish + 'static>(self, locks: Vec<M>) {
        locks[0].acquire();
        let _ = self.held.send(());
        let _ = self.stop.recv();
        locks[0].release();
    }
}

pub(crate) fn run(c: &mut Criterion, ctx: &Ctx) {
    let Some((mut g, subjects)) = ctx.group(c, GROUP, SUBJECTS, Pace::Fast) else {
        return;
    };
    for &s in &subjects {
        match s {
            Subject::ParkingLot => {
                let mutex = std::sync::Arc::new(parking_lot::Mutex::new(0u64));
                let (held_tx, held_rx) = mpsc::channel();
                let (stop_tx, stop_rx) = mpsc::channel::<()>();
                let holder = {
                    let mutex = std::sync::Arc::clone(&mutex);
                    std::thread::spawn(move || {
                        let _guard = mutex.lock();
                        let _ = held_tx.send(());
                        let _ = stop_rx.recv();
                    })
                };
                held_rx.recv().expect("holder thread");
                g.bench_function(s.name(), |b| {
                    b.iter(|| black_box(black_box(&mutex).try_lock().is_some()))
                });
                drop(stop_tx);
                holder.join().expect("holder thread");
            }
            Subject::Mem => {
                let store = prepare(s, ctx, "held", 16);
                let (held_tx, held_rx) = mpsc::channel();
                let (stop_tx, stop_rx) = mpsc::channel();
                let spec = store.store.clone();
                let holder = std::thread::spawn(move || {
                    open_locks(
                        Subject::Mem,
                        &spec,
                        1,
                        HoldOnThread {
                            held: held_tx,
                            stop: stop_rx,
                        },
                    )
                });
                held_rx.recv().expect("holder thread");
                store.open(
                    1,
                    TryHeld {
                        group: &mut g,
                        name: s.name(),
                    },
                );
                let _ = stop_tx.send(());
                holder.join().expect("holder thread");
            }
            _ => {
                let store = prepare(s, ctx, "held", 16);
                let holder = Child::worker("hold", s, &store.store, 1, &[]);
                holder.expect("held", Duration::from_secs(60));
                store.open(
                    1,
                    TryHeld {
                        group: &mut g,
                        name: s.name(),
                    },
                );
                drop(holder);
            }
        }
    }
    g.finish();
    ctx.criterion_figures(GROUP, &subjects, ("held", ROW), |ns| (ns, Unit::Ns));
}
