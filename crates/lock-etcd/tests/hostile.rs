//! Key layouts that overlap, answers past the client's limits, and keys lock-etcd never writes:
//! each found by an audit, each checked here against a real cluster.
//!
//! Set `LOCKYARD_ETCD_ENDPOINTS` to run against a cluster that is already up; otherwise one is
//! started and stopped here (the proposal count runs on a one-member cluster of its own).

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_no_keys, delete_prefix, prefix, raw};
use etcd_client::{PutOptions, Txn, TxnOp};
use libtest_mimic::Failed;
use lock_etcd::testkit::EtcdCluster;
use lock_etcd::{
    Error, EtcdClient, EtcdLocks, EtcdOptions, EtcdTable, Inspect, LockData, LockId, Locker,
    MAX_DATA_LEN, MAX_NAME_LEN, MAX_PREFIX_LEN, Manager,
};

const TTL: Duration = Duration::from_secs(3);

type Test = common::SuiteTest;

/// Which error a damaged value must give.
type Expected = fn(&Error) -> bool;

fn options(prefix: &str) -> EtcdOptions {
    EtcdOptions::new()
        .prefix(prefix)
        .ttl(TTL)
        .request_timeout(Duration::from_secs(5))
}

/// Deletes every key under a prefix when dropped, so a failed check leaves nothing behind.
struct Scrub<'a> {
    eps: &'a [String],
    prefix: String,
}

impl Drop for Scrub<'_> {
    fn drop(&mut self) {
        delete_prefix(self.eps, &format!("{}/", self.prefix));
    }
}

fn put(eps: &[String], key: &str, value: &[u8]) {
    let (key, value) = (key.to_owned(), value.to_vec());
    raw(eps, async move |c| c.put(key, value, None).await.map(drop));
}

fn value_of(eps: &[String], key: &str) -> Option<Vec<u8>> {
    let key = key.to_owned();
    raw(eps, async move |c| {
        Ok(c.get(key, None)
            .await?
            .kvs()
            .first()
            .map(|kv| kv.value().to_vec()))
    })
}

/// A prefix with a segment `lock` or `table` would place its keys inside another prefix's
/// lock or table ranges: every entry point refuses it with InvalidArgument naming the words.
fn nested_prefixes_are_refused(eps: &[String]) -> Result<(), Failed> {
    let base = prefix("nested");
    let _scrub = Scrub {
        eps,
        prefix: base.clone(),
    };
    for nested in [
        format!("{base}/lock/a"),
        format!("{base}/table/t"),
        format!("{base}/table"),
        format!("{base}/lock"),
        format!("{base}/table/t/lock"),
        "lock".to_owned(),
        "table/x".to_owned(),
    ] {
        match EtcdLocks::connect(eps, options(&nested)) {
            Err(Error::InvalidArgument { what }) => {
                check!(
                    what.contains("lock") && what.contains("table"),
                    "the refusal does not name the reserved words: {what}"
                );
            }
            other => return Err(format!("prefix {nested:?}: {other:?}").into()),
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let async_connect = runtime.block_on(EtcdClient::connect(eps, options(&nested)));
        check!(
            matches!(async_connect, Err(Error::InvalidArgument { .. })),
            "async connect with prefix {nested:?}: {async_connect:?}"
        );
        let hosts: Vec<&str> = eps
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect();
        let spec = format!("etcd://{}/{nested}/u?ttl=3s", hosts.join(","));
        check!(
            matches!(
                lockyard::open_or_create(&spec, 4),
                Err(Error::InvalidArgument { .. })
            ),
            "spec {spec} accepted"
        );
    }
    // Segments that merely contain the words are no overlap.
    for fine in [
        format!("{base}/locks"),
        format!("{base}/tables/x"),
        format!("{base}/deadlock"),
    ] {
        let locks = EtcdLocks::connect(eps, options(&fine))?;
        let table = locks.create_table("t", 2)?;
        drop(table);
        locks.remove_table("t")?;
    }
    assert_no_keys(eps, &format!("{base}/"), Duration::from_secs(5));
    Ok(())
}

/// With five holders each storing a mebibyte of data (more than 4 MiB in all), `held()` and
/// `snapshot()` list them, and a contended `try_lock_for` with deadlock detection times out
/// rather than failing at its first check.
fn holders_with_a_mebibyte_of_data_are_listed(eps: &[String]) -> Result<(), Failed> {
    let prefix = prefix("bigdata");
    let _scrub = Scrub {
        eps,
        prefix: prefix.clone(),
    };
    let locks = EtcdLocks::connect(eps, options(&prefix))?;
    let table = locks.create_table("t", 6)?;
    let data = vec![0x5a_u8; MAX_DATA_LEN];
    let mut holders = Vec::new();
    for id in 0..5 {
        let lock = table.retrieve(LockId(id))?;
        let _ = lock.lock()?;
        lock.write_data(&data)?;
        holders.push(lock);
    }
    let outcome = (|| -> Result<(), Failed> {
        let held = table.held();
        check!(
            held.as_ref().is_ok_and(|h| h.len() == 5),
            "held(): {:?}",
            held.map(|h| h.len())
        );
        let snapshot = table.snapshot();
        check!(
            snapshot.as_ref().is_ok_and(|s| s.len() == 5),
            "snapshot(): {:?}",
            snapshot.map(|s| s.len())
        );
        let other = locks.open_table("t")?;
        other.set_deadlock_timeout(Duration::from_millis(100))?;
        let waiter = other.retrieve(LockId(0))?;
        let started = Instant::now();
        let waited = waiter.try_lock_for(Duration::from_millis(1500));
        check!(
            matches!(waited, Err(Error::Timeout)),
            "contended try_lock_for: {waited:?} after {:?}",
            started.elapsed()
        );
        Ok(())
    })();
    for lock in &holders {
        lock.unlock()?;
    }
    drop(holders);
    drop(table);
    locks.remove_table("t")?;
    outcome
}

/// `allocate` finds the lowest free id of a table with more allocation keys than fit one 4 MiB
/// answer (long keys under the longest prefix and table name), after a free in the middle too,
/// and refuses keys that are no ids.
fn allocation_reads_past_one_answer(eps: &[String]) -> Result<(), Failed> {
    const TAKEN: u32 = 6000;
    let base = prefix("alloc");
    let _scrub = Scrub {
        eps,
        prefix: base.clone(),
    };
    let long = format!("{base}/{}", "p".repeat(MAX_PREFIX_LEN - base.len() - 1));
    let name = "n".repeat(MAX_NAME_LEN);
    let locks = EtcdLocks::connect(eps, options(&long))?;
    let table = locks.create_table(&name, TAKEN + 10)?;
    let root = table.root().to_owned();
    for chunk in (0..TAKEN).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|id| TxnOp::put(format!("{root}/alloc/{id:010}"), "", None::<PutOptions>))
            .collect();
        raw(eps, async move |c| {
            c.txn(Txn::new().and_then(ops)).await.map(drop)
        });
    }
    let outcome = (|| -> Result<(), Failed> {
        let next = table.allocate().map(|l| l.id());
        check!(
            matches!(next, Ok(LockId(TAKEN))),
            "allocate after {TAKEN} allocations: {next:?}"
        );
        // A table this large is searched by counting keys in pieces: the lowest free id is
        // still the one handed out.
        delete_prefix(eps, &format!("{root}/alloc/{:010}", 4321));
        let next = table.allocate().map(|l| l.id());
        check!(
            matches!(next, Ok(LockId(4321))),
            "after freeing 4321: {next:?}"
        );
        let next = table.allocate().map(|l| l.id());
        check!(
            matches!(next, Ok(LockId(id)) if id == TAKEN + 1),
            "next: {next:?}"
        );
        // A key that is no id is Corrupt, inside the ids' range (a piece with more keys than
        // ids) or outside it (more keys under alloc/ than in the range).
        for bad in ["0000000001x", "0", "9999999999"] {
            let key = format!("{root}/alloc/{bad}");
            put(eps, &key, b"");
            let allocated = table.allocate().map(|l| l.id());
            // This key alone: `alloc/0` is a prefix of every allocation key.
            raw(eps, async move |c| c.delete(key, None).await.map(drop));
            check!(
                matches!(allocated, Err(Error::Corrupt { .. })),
                "allocate with alloc/{bad}: {allocated:?}"
            );
        }
        for _ in TAKEN + 2..TAKEN + 10 {
            table.allocate()?;
        }
        let full = table.allocate().map(|l| l.id());
        check!(
            matches!(full, Err(Error::Exhausted { .. })),
            "allocate in a full table: {full:?}"
        );
        Ok(())
    })();
    drop(table);
    locks.remove_table(&name)?;
    outcome
}

/// Two owners of one table, each holding one lock and waiting for the other's: one of them is
/// told `Deadlock` (with `timeout` per wait), the other acquires. Returns how many deadlocks.
fn run_cycle(a: &EtcdTable, b: &EtcdTable, timeout: Duration) -> Result<usize, Failed> {
    let a0 = a.retrieve(LockId(0))?;
    let b1 = b.retrieve(LockId(1))?;
    let _ = a0.lock()?;
    let _ = b1.lock()?;
    let a1 = a.retrieve(LockId(1))?;
    let b0 = b.retrieve(LockId(0))?;
    let outcomes = std::thread::scope(|s| {
        let first = s.spawn(|| {
            let r = a1.try_lock_for(timeout);
            if matches!(r, Err(Error::Deadlock { .. })) {
                let _ = a0.unlock();
            }
            r
        });
        let r = b0.try_lock_for(timeout);
        if matches!(r, Err(Error::Deadlock { .. })) {
            let _ = b1.unlock();
        }
        (first.join(), r)
    });
    let (first, second) = outcomes;
    let first = first.map_err(|_| "waiter thread panicked")?;
    let deadlocks = [&first, &second]
        .iter()
        .filter(|r| matches!(r, Err(Error::Deadlock { .. })))
        .count();
    for lock in [&a0, &a1, &b0, &b1] {
        let _ = lock.unlock();
    }
    if deadlocks != 1 {
        return Err(format!("cycle outcomes: {first:?}, {second:?}").into());
    }
    Ok(deadlocks)
}

/// A leaseless detection key no detector wrote does not disable deadlock detection.
fn a_stray_detection_key_is_taken_over(eps: &[String]) -> Result<(), Failed> {
    let prefix = prefix("stray");
    let _scrub = Scrub {
        eps,
        prefix: prefix.clone(),
    };
    let locks = EtcdLocks::connect(eps, options(&prefix))?;
    let a = locks.create_table("t", 2)?;
    let b = locks.open_table("t")?;
    for t in [&a, &b] {
        t.set_deadlock_timeout(Duration::from_millis(200))?;
    }
    put(eps, &format!("{}/deadlock", a.root()), b"stray");
    let outcome = run_cycle(&a, &b, Duration::from_secs(4));
    drop((a, b));
    locks.remove_table("t")?;
    outcome.map(drop)
}

/// While another detector holds the detection lock, a waiter past its deadlock timeout writes
/// nothing to etcd until it is released (it retried a write Txn every 20 ms), and a detection
/// key left by a detector whose key is gone is taken over.
fn a_held_detection_lock_costs_waiters_no_writes(_eps: &[String]) -> Result<(), Failed> {
    let own = EtcdCluster::start_members(1).map_err(|e| e.to_string())?;
    let eps = own.endpoints();
    let prefix = prefix("detector");
    let locks = EtcdLocks::connect(&eps, options(&prefix))?;
    let table = locks.create_table("t", 3)?;
    let root = table.root().to_owned();
    // A detector in the middle of a check: its waiting key and the detection lock naming it,
    // on one lease.
    let fake = format!("{root}/lock/2/fake");
    let (k1, k2) = (fake.clone(), format!("{root}/deadlock"));
    let lease = raw(&eps, async move |c| {
        let lease = c.lease_grant(30, None).await?.id();
        let record = "lockyard-etcd-owner 1\npid=1\nhost=h\nowner=x\nsince=1\n\n";
        c.put(
            k1.clone(),
            record,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
        c.put(k2, k1, Some(PutOptions::new().with_lease(lease)))
            .await?;
        Ok(lease)
    });
    let holder = table.retrieve(LockId(0))?;
    let _ = holder.lock()?;
    let other = locks.open_table("t")?;
    other.set_deadlock_timeout(Duration::from_millis(100))?;
    let waiter = other.retrieve(LockId(0))?;
    let before = common::proposals_committed(&eps).ok_or("no metrics")?;
    let waited = waiter.try_lock_for(Duration::from_secs(2));
    let after = common::proposals_committed(&eps).ok_or("no metrics")?;
    check!(matches!(waited, Err(Error::Timeout)), "wait: {waited:?}");
    // The acquisition, one try for the detection lock, the clean-up; a few more at most.
    check!(
        after - before <= 8,
        "{} raft proposals while waiting 2 s behind a held detection lock",
        after - before
    );
    // The fake detector's key goes (its lease stays): the detection key is stale now.
    let gone = fake.clone();
    raw(&eps, async move |c| c.delete(gone, None).await.map(drop));
    let a = table;
    let b = other;
    for t in [&a, &b] {
        t.set_deadlock_timeout(Duration::from_millis(200))?;
    }
    holder.unlock()?;
    drop(holder);
    let outcome = run_cycle(&a, &b, Duration::from_secs(4));
    raw(&eps, async move |c| c.lease_revoke(lease).await.map(drop));
    drop((a, b, waiter));
    locks.remove_table("t")?;
    outcome.map(drop)
}

/// A held marker of another format version is `Incompatible`, and one that cannot be parsed
/// `Corrupt`, from every call that reads it (`held`, `snapshot`, `holder`, `try_lock`), and
/// neither is overwritten.
fn unreadable_markers_are_reported_not_erased(eps: &[String]) -> Result<(), Failed> {
    let prefix = prefix("markers");
    let _scrub = Scrub {
        eps,
        prefix: prefix.clone(),
    };
    let locks = EtcdLocks::connect(eps, options(&prefix))?;
    let table = locks.create_table("t", 4)?;
    let cases: [(&[u8], Expected); 2] = [
        (b"lockyard-etcd-held 9\n\n", |e| {
            matches!(e, Error::Incompatible { .. })
        }),
        (b"\xff\xfegarbage", |e| matches!(e, Error::Corrupt { .. })),
    ];
    let outcome = (|| -> Result<(), Failed> {
        for (value, expected) in cases {
            let marker = format!("{}/lock/1", table.root());
            put(eps, &marker, value);
            let lock = table.retrieve(LockId(1))?;
            let held = table.held().map(|h| h.len());
            check!(matches!(&held, Err(e) if expected(e)), "held: {held:?}");
            let snapshot = table.snapshot().map(|s| s.len());
            check!(
                matches!(&snapshot, Err(e) if expected(e)),
                "snapshot: {snapshot:?}"
            );
            let holder = lock.holder();
            check!(
                matches!(&holder, Err(e) if expected(e)),
                "holder: {holder:?}"
            );
            let taken = lock.try_lock();
            check!(
                matches!(&taken, Err(e) if expected(e)),
                "try_lock: {taken:?}"
            );
            let waited = lock.try_lock_for(Duration::from_secs(1));
            check!(
                matches!(&waited, Err(e) if expected(e)),
                "try_lock_for: {waited:?}"
            );
            check!(
                value_of(eps, &marker).as_deref() == Some(value),
                "the marker was overwritten"
            );
            check!(
                common::queue_keys(eps, &format!("{}/lock/", table.root())).is_empty(),
                "an attempt left its key"
            );
            // A named lock's marker too.
            let named_marker = format!("{prefix}/lock/m");
            put(eps, &named_marker, value);
            let named = locks.named("m")?;
            let taken = named.try_lock();
            check!(
                matches!(&taken, Err(e) if expected(e)),
                "named try_lock: {taken:?}"
            );
            let holder = named.holder();
            check!(
                matches!(&holder, Err(e) if expected(e)),
                "named holder: {holder:?}"
            );
            check!(
                value_of(eps, &named_marker).as_deref() == Some(value),
                "the named marker was overwritten"
            );
        }
        Ok(())
    })();
    drop(table);
    locks.remove_table("t")?;
    outcome
}

/// Ids are read only in the format lock-etcd writes: a lock key `lock/99` of a capacity-4
/// table, `lock/+3` or `lock/03`, an allocation key `alloc/0` or `alloc/+000000001`, and
/// `capacity=+4` in the header are `Corrupt`, never taken for a lock or a number (nor counted
/// as an allocation by `available`).
fn ids_are_read_in_the_format_written(eps: &[String]) -> Result<(), Failed> {
    let prefix = prefix("ids");
    let _scrub = Scrub {
        eps,
        prefix: prefix.clone(),
    };
    let locks = EtcdLocks::connect(eps, options(&prefix))?;
    let table = locks.create_table("t", 4)?;
    let root = table.root().to_owned();
    let record = b"lockyard-etcd-owner 1\npid=1\nhost=h\nsince=1\n\n";
    let outcome = (|| -> Result<(), Failed> {
        for bad in ["99/x", "4/x", "+3/x", "03/x", "99"] {
            let key = format!("{root}/lock/{bad}");
            put(eps, &key, record);
            let held = table.held().map(|h| h.len());
            check!(
                matches!(held, Err(Error::Corrupt { .. })),
                "held with {bad}: {held:?}"
            );
            let snapshot = table.snapshot().map(|s| s.len());
            check!(
                matches!(snapshot, Err(Error::Corrupt { .. })),
                "snapshot with {bad}: {snapshot:?}"
            );
            delete_prefix(eps, &key);
        }
        for bad in ["0", "+000000001", "0000000009"] {
            let key = format!("{root}/alloc/{bad}");
            put(eps, &key, b"");
            let allocated = table.allocate().map(|l| l.id());
            check!(
                matches!(allocated, Err(Error::Corrupt { .. })),
                "allocate with alloc/{bad}: {allocated:?}"
            );
            let available = table.available();
            check!(
                matches!(available, Err(Error::Corrupt { .. })),
                "available with alloc/{bad}: {available:?}"
            );
            delete_prefix(eps, &key);
        }
        put(
            eps,
            &format!("{root}/meta"),
            b"lockyard-etcd-table 1\ncapacity=+4\n",
        );
        let opened = locks.open_table("t").map(|t| t.capacity());
        check!(
            matches!(opened, Err(Error::Corrupt { .. })),
            "open with capacity=+4: {opened:?}"
        );
        Ok(())
    })();
    drop(table);
    outcome
}

/// A server that speaks HTTP/2 but is no etcd member (an HTTP proxy with no route to it):
/// every request is answered `404`, which gRPC reads as `Unimplemented`. Stops on drop.
struct NotEtcd {
    port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NotEtcd {
    fn start() -> std::io::Result<NotEtcd> {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut handlers = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let stopped = Arc::clone(&stopped);
                        handlers.push(std::thread::spawn(move || {
                            let _ = NotEtcd::serve(stream, &stopped);
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for handler in handlers {
                let _ = handler.join();
            }
        });
        Ok(NotEtcd {
            port,
            stop,
            thread: Some(thread),
        })
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answers HTTP/2 frames: settings and pings acknowledged, every request `:status 404`.
    fn serve(
        mut stream: std::net::TcpStream,
        stop: &std::sync::atomic::AtomicBool,
    ) -> std::io::Result<()> {
        use std::io::{Read, Write};
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_millis(100)))?;
        let frame = |kind: u8, flags: u8, stream_id: u32, payload: &[u8]| {
            let len = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
            let mut out = vec![len[1], len[2], len[3], kind, flags];
            out.extend_from_slice(&stream_id.to_be_bytes());
            out.extend_from_slice(payload);
            out
        };
        stream.write_all(&frame(4, 0, 0, &[]))?;
        let mut buffer = Vec::new();
        let mut preface_seen = false;
        let mut chunk = [0u8; 16384];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
            if !preface_seen {
                if buffer.len() < 24 {
                    continue;
                }
                buffer.drain(..24);
                preface_seen = true;
            }
            while buffer.len() >= 9 {
                let len = usize::from(buffer[0]) << 16
                    | usize::from(buffer[1]) << 8
                    | usize::from(buffer[2]);
                if buffer.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (buffer[3], buffer[4]);
                let id =
                    u32::from_be_bytes([buffer[5], buffer[6], buffer[7], buffer[8]]) & 0x7fff_ffff;
                let payload: Vec<u8> = buffer[9..9 + len].to_vec();
                buffer.drain(..9 + len);
                match kind {
                    // SETTINGS, not an ack: acknowledge.
                    4 if flags & 1 == 0 => stream.write_all(&frame(4, 1, 0, &[]))?,
                    // PING, not an ack: answer it.
                    6 if flags & 1 == 0 => stream.write_all(&frame(6, 1, 0, &payload))?,
                    // HEADERS: a request; answer `:status 404` (HPACK static index 13), ended.
                    1 => stream.write_all(&frame(1, 0x5, id, &[0x8d]))?,
                    // GOAWAY
                    7 => return Ok(()),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

impl Drop for NotEtcd {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An endpoint that answers but is no etcd member (gRPC `Unimplemented`, as from an HTTP proxy
/// answering 404) does not fail `connect` or a request while another endpoint is healthy.
fn an_endpoint_that_is_not_etcd_is_skipped(eps: &[String]) -> Result<(), Failed> {
    let prefix = prefix("notetcd");
    let _scrub = Scrub {
        eps,
        prefix: prefix.clone(),
    };
    let bad = NotEtcd::start()?;
    let alone = EtcdLocks::connect([bad.endpoint()], options(&prefix));
    check!(
        alone.is_err(),
        "connect to an endpoint that is not etcd succeeded"
    );
    let mut endpoints = vec![bad.endpoint()];
    endpoints.extend(eps.iter().cloned());
    let locks = EtcdLocks::connect(&endpoints, options(&prefix));
    check!(
        locks.is_ok(),
        "connect with [not etcd, healthy...]: {locks:?}"
    );
    let locks = locks?;
    let guard = locks.try_lock_for("x", Duration::from_secs(5))?;
    guard.unlock()?;
    drop(locks);
    drop(bad);
    assert_no_keys(eps, &format!("{prefix}/"), Duration::from_secs(5));
    Ok(())
}

fn main() -> std::process::ExitCode {
    let tests: &[(&str, Test)] = &[
        (
            "an_endpoint_that_is_not_etcd_is_skipped",
            an_endpoint_that_is_not_etcd_is_skipped,
        ),
        ("nested_prefixes_are_refused", nested_prefixes_are_refused),
        (
            "holders_with_a_mebibyte_of_data_are_listed",
            holders_with_a_mebibyte_of_data_are_listed,
        ),
        (
            "allocation_reads_past_one_answer",
            allocation_reads_past_one_answer,
        ),
        (
            "a_stray_detection_key_is_taken_over",
            a_stray_detection_key_is_taken_over,
        ),
        (
            "a_held_detection_lock_costs_waiters_no_writes",
            a_held_detection_lock_costs_waiters_no_writes,
        ),
        (
            "unreadable_markers_are_reported_not_erased",
            unreadable_markers_are_reported_not_erased,
        ),
        (
            "ids_are_read_in_the_format_written",
            ids_are_read_in_the_format_written,
        ),
    ];
    common::run_suite("hostile", tests, Duration::from_secs(5))
}
