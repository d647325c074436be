//! lock-etcd on sessions against etcd's own Lock and Unlock RPCs on a shared session lease, on
//! the same 3-member cluster (started here through the testkit) in the same run.
//!
//! Lines (`NAME: ours X, peer Y, ratio Z`, recorded for `cargo xtask bench etcd`):
//! - `etcd-lock-unlock`: one uncontended lock+unlock through the blocking API (`EtcdLock` on the
//!   connection's default session) against `Lock` with a lease granted once and kept alive,
//!   then `Unlock`. Target: ratio <= 1.0.
//! - `etcd-async-lock-unlock`: the same through the async API (`Session::lock`,
//!   `AsyncGuard::unlock`) on the peer's own runtime.
//! - `etcd-proposals-per-pair`: raft proposals per lock+unlock pair, counted from the members'
//!   `etcd_server_proposals_committed_total`. Target: exactly 2 (one Txn each way).
//! - `etcd-contended-4proc`: four processes taking one lock in turn as fast as they can, in
//!   lock+unlock pairs per second summed over the processes. Target: ratio >= 1.2.
//!
//! Timings alternate ours and the peer's in rounds and report medians, and the ratio is the
//! median of the per-round ratios, so that a noisy neighbour on a shared machine hits both sides
//! alike.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, LockOptions};
use lock_etcd::testkit::{EtcdCluster, proposals_committed};
use lock_etcd::{EtcdClient, EtcdLock, EtcdLocks, EtcdOptions, Locker, Session};
use lockyard_bench_support::{human, measuring, quick, record_line};
use tokio::runtime::Runtime;

/// Set in a contending child process: the cluster's endpoints.
const CHILD_ENV: &str = "LOCK_ETCD_BENCH_CHILD";
const PREFIX: &str = "lockyard-bench";
const TTL_SECS: i64 = 10;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

fn options() -> EtcdOptions {
    EtcdOptions::new()
        .prefix(PREFIX)
        .ttl(Duration::from_secs(TTL_SECS as u64))
}

/// etcd's Lock RPC on one session lease, granted once and kept alive by a task (what Go's
/// `concurrency.Session` and etcdctl lock do).
struct Peer {
    client: Client,
    lease: i64,
}

impl Peer {
    async fn connect(endpoints: &[String]) -> Peer {
        let (client, lease) = lock_etcd::testkit::lock_rpc_peer(endpoints, TTL_SECS)
            .await
            .expect("the Lock RPC peer");
        Peer { client, lease }
    }

    async fn pair(&mut self, name: &str) {
        let held = self
            .client
            .lock(name, Some(LockOptions::new().with_lease(self.lease)))
            .await
            .expect("peer lock");
        self.client
            .unlock(held.key().to_vec())
            .await
            .expect("peer unlock");
    }

    async fn close(mut self) {
        let _ = self.client.lease_revoke(self.lease).await;
    }
}

fn blocking_pair(lock: &EtcdLock) {
    let acquired = lock.lock().expect("lock");
    assert!(!acquired.owner_died());
    lock.unlock().expect("unlock");
}

async fn async_pair(session: &Session) {
    let guard = session.lock("ours-async").await.expect("async lock");
    guard.unlock().await.expect("async unlock");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// ns per pair of `n` pairs run by `f`.
fn timed(n: u32, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

fn uncontended(endpoints: &[String]) {
    let rt = runtime();
    let locks = EtcdLocks::connect(endpoints, options()).expect("connect");
    let lock = locks.named("ours").expect("named");
    let (client, session, mut peer) = rt.block_on(async {
        let client = EtcdClient::connect(endpoints, options())
            .await
            .expect("async connect");
        let session = client
            .session(Duration::from_secs(TTL_SECS as u64))
            .await
            .expect("session");
        (client, session, Peer::connect(endpoints).await)
    });
    let (rounds, n) = match (measuring(), quick()) {
        (false, _) => (1, 3),
        (true, true) => (5, 30),
        (true, false) => (21, 100),
    };
    // Warm up every path (the default session is granted by the first acquisition).
    for _ in 0..5 {
        blocking_pair(&lock);
        rt.block_on(async_pair(&session));
        rt.block_on(peer.pair("peer"));
    }

    // Raft proposals per pair, each side on its own, nothing else writing meanwhile.
    let pairs = if measuring() { 100 } else { 5 };
    let count = |f: &mut dyn FnMut()| {
        let before = proposals_committed(endpoints).expect("metrics");
        for _ in 0..pairs {
            f();
        }
        let after = proposals_committed(endpoints).expect("metrics");
        (after - before) as f64 / f64::from(pairs)
    };
    let ours_proposals = count(&mut || blocking_pair(&lock));
    let async_proposals = count(&mut || rt.block_on(async_pair(&session)));
    let peer_proposals = count(&mut || rt.block_on(peer.pair("peer")));
    assert_eq!(
        ours_proposals, async_proposals,
        "the blocking and the async API cost different proposals"
    );
    record_line(
        "etcd-proposals-per-pair",
        &format!(
            "etcd-proposals-per-pair: ours {ours_proposals:.2}, peer {peer_proposals:.2}, ratio {:.2}",
            ours_proposals / peer_proposals
        ),
    );

    let (mut ours, mut asy, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ratios, mut async_ratios) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut o = 0.0;
        let mut a = 0.0;
        let mut p = 0.0;
        // Rotate the order, so that none always follows another.
        for step in 0..3 {
            match (round + step) % 3 {
                0 => o = timed(n, || blocking_pair(&lock)),
                1 => a = timed(n, || rt.block_on(async_pair(&session))),
                _ => p = timed(n, || rt.block_on(peer.pair("peer"))),
            }
        }
        ours.push(o);
        asy.push(a);
        theirs.push(p);
        ratios.push(o / p);
        async_ratios.push(a / p);
    }
    let peer_ns = median(theirs);
    for (group, ns, ratio) in [
        ("etcd-lock-unlock", median(ours), median(ratios)),
        ("etcd-async-lock-unlock", median(asy), median(async_ratios)),
    ] {
        record_line(
            group,
            &format!(
                "{group}: ours {}, peer {}, ratio {ratio:.2}",
                human(ns),
                human(peer_ns)
            ),
        );
    }
    rt.block_on(async {
        session.close().await.expect("close");
        peer.close().await;
    });
    drop(client);
    drop(lock);
    drop(locks);
}

/// A contending process: takes its orders (`ours MS`, `peer MS`) on stdin, runs lock+unlock
/// pairs for MS milliseconds and answers with the number of pairs.
fn child(endpoints: &str) {
    let endpoints: Vec<String> = endpoints.split(',').map(str::to_owned).collect();
    let rt = runtime();
    let locks = EtcdLocks::connect(&endpoints, options()).expect("child connect");
    let lock = locks.named("contended-ours").expect("named");
    let mut peer = rt.block_on(Peer::connect(&endpoints));
    blocking_pair(&lock);
    rt.block_on(peer.pair("contended-peer"));
    let stdout = std::io::stdout();
    println!("ready");
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        let (Some(which), Some(ms)) = (words.next(), words.next()) else {
            break;
        };
        let until = Instant::now() + Duration::from_millis(ms.parse().expect("ms"));
        let mut pairs = 0u64;
        while Instant::now() < until {
            if which == "ours" {
                let _ = lock.lock().expect("lock");
                lock.unlock().expect("unlock");
            } else {
                rt.block_on(peer.pair("contended-peer"));
            }
            pairs += 1;
        }
        let mut out = stdout.lock();
        writeln!(out, "{pairs}").expect("stdout");
        out.flush().expect("stdout");
    }
    rt.block_on(peer.close());
}

/// A contending child, killed if it is still there when dropped.
struct Contender(Child);

impl Drop for Contender {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn contended(endpoints: &[String], processes: usize) {
    let group = "etcd-contended-4proc";
    let mut children: Vec<_> = (0..processes)
        .map(|_| {
            Contender(
                Command::new(std::env::current_exe().expect("current exe"))
                    .env(CHILD_ENV, endpoints.join(","))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("spawn contender"),
            )
        })
        .collect();
    let mut pipes: Vec<_> = children
        .iter_mut()
        .map(|c| {
            let to = c.0.stdin.take().expect("stdin");
            let from = BufReader::new(c.0.stdout.take().expect("stdout")).lines();
            (to, from)
        })
        .collect();
    for (_, from) in &mut pipes {
        let ready = from.next().expect("contender exited").expect("read");
        assert_eq!(ready, "ready");
    }
    let (rounds, ms) = match (measuring(), quick()) {
        (false, _) => (1, 300),
        (true, true) => (3, 2_000),
        (true, false) => (7, 4_000),
    };
    let mut run = |which: &str| -> f64 {
        for (to, _) in &mut pipes {
            writeln!(to, "{which} {ms}").expect("to contender");
            to.flush().expect("to contender");
        }
        let total: u64 = pipes
            .iter_mut()
            .map(|(_, from)| {
                from.next()
                    .expect("contender exited")
                    .expect("read")
                    .parse::<u64>()
                    .expect("a count")
            })
            .sum();
        total as f64 * 1000.0 / ms as f64
    };
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (o, p) = if round % 2 == 0 {
            let o = run("ours");
            (o, run("peer"))
        } else {
            let p = run("peer");
            (run("ours"), p)
        };
        ours.push(o);
        theirs.push(p);
        ratios.push(o / p);
    }
    drop(pipes);
    for mut child in children.drain(..) {
        let _ = child.0.wait();
    }
    record_line(
        group,
        &format!(
            "{group}: ours {:.1} ops/s, peer {:.1} ops/s, ratio {:.2}",
            median(ours),
            median(theirs),
            median(ratios)
        ),
    );
}

fn main() {
    if let Ok(endpoints) = std::env::var(CHILD_ENV) {
        child(&endpoints);
        return;
    }
    let cluster = EtcdCluster::start().unwrap_or_else(|e| panic!("etcd bench cluster: {e}"));
    let endpoints = cluster.endpoints();
    uncontended(&endpoints);
    contended(&endpoints, 4);
    drop(cluster);
}
