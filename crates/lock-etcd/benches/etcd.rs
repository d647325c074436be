//! etcd lock+unlock latency: our client-side recipe against etcd's own Lock and Unlock RPCs.
//!
//! Both sides run on the same 3-member cluster (started here through the testkit), one
//! acquisition at a time, each with a fresh lease that is revoked afterwards:
//! - `ours`: `EtcdLock::lock` + `unlock` (lease grant, one Txn, then a guarded delete Txn and a
//!   revoke; the keepalive and the key watch start in the background);
//! - `peer`: etcd-client's `lease_grant`, `lock` with that lease, `unlock`, `lease_revoke`.

use std::time::Duration;

use criterion::{Criterion, black_box};
use etcd_client::{Client, LockOptions};
use lock_etcd::testkit::EtcdCluster;
use lock_etcd::{EtcdLocks, EtcdOptions, Locker};

fn lock_unlock(c: &mut Criterion, endpoints: &[String]) {
    let locks = EtcdLocks::connect(
        endpoints,
        EtcdOptions::new()
            .prefix("lockyard-bench")
            .ttl(Duration::from_secs(10)),
    )
    .expect("connect");
    let ours = locks.named("ours").expect("named");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut client = runtime
        .block_on(Client::connect(endpoints, None))
        .expect("peer connect");

    let mut group = c.benchmark_group("etcd-lock-unlock");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("ours", |b| {
        b.iter(|| {
            let acquired = ours.lock().expect("lock");
            assert!(!black_box(acquired).owner_died());
            ours.unlock().expect("unlock");
        });
    });
    group.bench_function("peer", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let lease = client.lease_grant(10, None).await.expect("grant").id();
                let held = client
                    .lock(
                        "lockyard-bench/peer",
                        Some(LockOptions::new().with_lease(lease)),
                    )
                    .await
                    .expect("lock");
                client.unlock(held.key()).await.expect("unlock");
                client.lease_revoke(lease).await.expect("revoke");
            });
        });
    });
    group.finish();
}

fn main() {
    let cluster = EtcdCluster::start().unwrap_or_else(|e| panic!("etcd bench cluster: {e}"));
    let endpoints = cluster.endpoints();
    let mut criterion = Criterion::default().configure_from_args();
    lock_unlock(&mut criterion, &endpoints);
    criterion.final_summary();
    drop(cluster);
}
