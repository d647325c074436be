//! Group 5: allocate+free with all but one id taken (the last one free, the worst case for a
//! scan), at 2^11, 2^16 and 2^20 locks, against a linear first-fit bitmap scan.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion};
use lock_api::{LockId, Locker};
use lockyard_bench_support::Unit;
use lockyard_benches::{Backend, FileManager, MemManager, ShmManager};

use crate::subject::Subject;
use crate::{Ctx, Pace};

const GROUP: &str = "compare-alloc";
pub(crate) const SHIFTS: [u32; 3] = [11, 16, 20];
const FIRST_FIT: &str = "first-fit";
const SUBJECTS: &[Subject] = &[
    Subject::Mem,
    Subject::Shm,
    Subject::File,
    #[cfg(feature = "etcd")]
    Subject::Etcd,
];

/// Podman's allocation: scan 32-bit bitmap words from the first for one that is not full and
/// take its lowest clear bit. (Podman also holds its segment mutex around the scan; this is the
/// scan alone.)
#[derive(Debug)]
struct FirstFit {
    words: Vec<u32>,
}

impl FirstFit {
    /// A bitmap with every id of `capacity` (a multiple of 32) taken. (Filling it through
    /// `allocate` would take quadratic time.)
    fn full(capacity: u32) -> FirstFit {
        FirstFit {
            words: vec![u32::MAX; capacity.div_ceil(32) as usize],
        }
    }

    #[inline(never)]
    fn allocate(&mut self) -> Option<u32> {
        for (i, word) in self.words.iter_mut().enumerate() {
            if *word != u32::MAX {
                let bit = (!*word).trailing_zeros();
                *word |= 1 << bit;
                return Some(i as u32 * 32 + bit);
            }
        }
        None
    }

    #[inline(never)]
    fn free(&mut self, id: u32) {
        self.words[(id / 32) as usize] &= !(1 << (id % 32));
    }
}

/// Removes a store on drop (unless it is kept for the next run).
struct Remove<B: Backend>(Option<String>, std::marker::PhantomData<B>);

impl<B: Backend> Drop for Remove<B> {
    fn drop(&mut self) {
        if let Some(spec) = self.0.take() {
            let _ = B::remove_store(&spec);
        }
    }
}

/// Where a store too slow to create every run is kept between runs: a lock-file store of 2^20
/// locks is 2^20 lock files, which took 30 to 190 s to create on this machine.
fn kept_store(name: &str) -> PathBuf {
    lockyard_bench_support::line_dir().join("kept").join(name)
}

fn backend<B: Backend>(g: &mut BenchmarkGroup<'_, WallTime>, ctx: &Ctx, capacity: u32, keep: bool) {
    let (spec, manager, remove) = if keep {
        let path = kept_store(&format!("{}-{capacity}", B::NAME));
        let spec = B::spec(
            path.parent().unwrap_or(&path),
            &format!("{}-{capacity}", B::NAME),
        );
        let manager = match B::open_store(&spec) {
            Ok(m) if m.capacity() == Some(capacity) => m,
            _ => {
                let _ = B::remove_store(&spec);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).expect("kept-store directory");
                }
                eprintln!("{GROUP}: creating {spec} once; later runs reuse it");
                B::create_store(&spec, capacity).unwrap_or_else(|e| panic!("create {spec}: {e}"))
            }
        };
        manager.free_all().expect("free_all");
        (spec, manager, None)
    } else {
        let spec = ctx.spec::<B>(&format!("{}-alloc-{capacity}", ctx.tag));
        let manager =
            B::create_store(&spec, capacity).unwrap_or_else(|e| panic!("create {spec}: {e}"));
        (spec.clone(), manager, Some(spec))
    };
    let _remove = Remove::<B>(remove, std::marker::PhantomData);
    for _ in 0..capacity {
        drop(
            manager
                .allocate()
                .unwrap_or_else(|e| panic!("fill {spec}: {e}")),
        );
    }
    manager
        .retrieve(LockId(capacity - 1))
        .and_then(|l| l.free())
        .expect("free the last id");
    g.bench_with_input(BenchmarkId::new(B::NAME, capacity), &capacity, |b, _| {
        b.iter(|| {
            let lock = manager.allocate().expect("allocate");
            black_box(lock.id());
            lock.free().expect("free");
        })
    });
    assert_eq!(manager.available().expect("available"), Some(1));
}

pub(crate) fn run(c: &mut Criterion, ctx: &Ctx) {
    let Some((mut g, subjects)) = ctx.group(c, GROUP, SUBJECTS, Pace::Fast) else {
        return;
    };
    for shift in SHIFTS {
        let capacity = 1u32 << shift;
        for &s in &subjects {
            match s {
                Subject::Mem => backend::<MemManager>(&mut g, ctx, capacity, false),
                Subject::Shm => backend::<ShmManager>(&mut g, ctx, capacity, false),
                // Creating 2^20 lock files does not fit a quick run; a full run creates the
                // store once and keeps it for later runs.
                Subject::File
                    if shift == 20 && ctx.quick && !kept_store("file-1048576").exists() =>
                {
                    eprintln!(
                        "{GROUP}: file at 2^20 skipped in a quick run until a full run kept its store"
                    );
                }
                Subject::File => backend::<FileManager>(&mut g, ctx, capacity, shift == 20),
                // A network round trip per allocation: the design asks for 2^11 only.
                #[cfg(feature = "etcd")]
                Subject::Etcd if shift == 11 => {
                    backend::<lockyard_benches::EtcdTable>(&mut g, ctx, capacity, false)
                }
                #[cfg(feature = "etcd")]
                Subject::Etcd => {}
                _ => unreachable!("alloc subjects are table backends"),
            }
        }
        let mut peer = FirstFit::full(capacity);
        peer.free(capacity - 1);
        g.bench_with_input(BenchmarkId::new(FIRST_FIT, capacity), &capacity, |b, _| {
            b.iter(|| {
                let id = peer.allocate().expect("allocate");
                peer.free(black_box(id));
            })
        });
    }
    g.finish();
    let names = subjects.iter().map(|s| s.name()).chain([FIRST_FIT]);
    for name in names {
        for shift in SHIFTS {
            let param = (1u32 << shift).to_string();
            ctx.criterion_figure(
                (GROUP, name, Some(&param)),
                (
                    "alloc",
                    &format!("allocate+free, all but one id taken: 2^{shift}"),
                ),
                |ns| (ns, Unit::Ns),
            );
        }
    }
}
