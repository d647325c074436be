//! lock-mem lock+unlock against parking_lot::Mutex, measured in the same run.
#![allow(
    missing_docs,
    reason = "criterion_group! generates undocumented functions"
)]

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use lock_mem::{LockId, Locker, Manager, MemManager};

fn lock_unlock(c: &mut Criterion) {
    let mut group = c.benchmark_group("mem-lock-unlock");
    let manager = MemManager::new(1024).expect("table");
    let lock = manager.retrieve(LockId(7)).expect("retrieve");
    group.bench_function("ours", |b| {
        b.iter(|| {
            let _ = black_box(black_box(&lock).lock().expect("lock"));
            black_box(&lock).unlock().expect("unlock");
        })
    });
    let mutex = parking_lot::Mutex::new(0u64);
    group.bench_function("peer", |b| {
        b.iter(|| {
            let mut guard = black_box(&mutex).lock();
            *guard = black_box(*guard);
            drop(guard);
        })
    });
    group.finish();
}

criterion_group!(benches, lock_unlock);
criterion_main!(benches);
