//! Shared test support: a cluster (own, or one named by `LOCKYARD_ETCD_ENDPOINTS`), raw etcd
//! access behind the library's back, leak checks, and child processes in a role (through
//! lock-conformance's `ChildProcess`, which kills them on drop).
#![allow(dead_code, unreachable_pub)] // reason: each test binary uses a different part

/// Fails the test with the message unless the condition holds (a trial returns
/// `Result<(), Failed>`).
#[allow(unused_macros, reason = "each test binary uses a different part")]
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

pub mod proxy;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, DeleteOptions, GetOptions};
use lock_conformance::child::ChildProcess;
use lock_etcd::testkit::EtcdCluster;
use lock_etcd::{EtcdLocks, EtcdOptions};

/// Environment variable with the endpoints of a running cluster to reuse (comma-separated).
pub const ENDPOINTS_ENV: &str = "LOCKYARD_ETCD_ENDPOINTS";

/// A cluster for this test binary: our own, or the one `LOCKYARD_ETCD_ENDPOINTS` names.
pub struct TestCluster {
    pub own: Option<EtcdCluster>,
    pub endpoints: Vec<String>,
}

impl TestCluster {
    /// Reuses `$LOCKYARD_ETCD_ENDPOINTS` or starts a cluster; panics with the install hint when
    /// etcd is missing (the tests fail, never skip).
    pub fn get() -> TestCluster {
        if let Ok(eps) = std::env::var(ENDPOINTS_ENV) {
            let endpoints = eps.split(',').map(str::to_owned).collect();
            return TestCluster {
                own: None,
                endpoints,
            };
        }
        TestCluster::start()
    }

    /// Always starts a new cluster (fault tests kill its members).
    pub fn start() -> TestCluster {
        let cluster = match EtcdCluster::start() {
            Ok(c) => c,
            Err(e) => panic!("cannot start the etcd test cluster: {e}"),
        };
        TestCluster {
            endpoints: cluster.endpoints(),
            own: Some(cluster),
        }
    }

    pub fn cluster(&mut self) -> &mut EtcdCluster {
        self.own.as_mut().expect("this test needs its own cluster")
    }

    pub fn connect(&self, prefix: &str, ttl: Duration) -> EtcdLocks {
        EtcdLocks::connect(
            &self.endpoints,
            EtcdOptions::new()
                .prefix(prefix)
                .ttl(ttl)
                .connect_timeout(Duration::from_secs(5))
                .request_timeout(Duration::from_secs(3)),
        )
        .expect("connect to the test cluster")
    }
}

/// A unique key prefix for one test.
pub fn prefix(test: &str) -> String {
    format!("lockyard-test/{}-{}", test, std::process::id())
}

/// Runs `f` with a raw client on `endpoints`, bounded by 10 s.
pub fn raw<T>(
    endpoints: &[String],
    f: impl AsyncFnOnce(&mut Client) -> Result<T, etcd_client::Error>,
) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut client = Client::connect(
            endpoints,
            Some(ConnectOptions::new().with_connect_timeout(Duration::from_secs(5))),
        )
        .await
        .expect("raw connect");
        tokio::time::timeout(Duration::from_secs(10), f(&mut client))
            .await
            .expect("raw etcd call timed out")
            .expect("raw etcd call")
    })
}

/// Keys (with their lease) under `prefix`.
pub fn keys(endpoints: &[String], prefix: &str) -> Vec<(String, i64)> {
    let prefix = prefix.to_owned();
    raw(endpoints, async move |c| {
        let r = c
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        Ok(r.kvs()
            .iter()
            .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.lease()))
            .collect())
    })
}

/// The queue entries (keys with a lease) under `prefix`, without the held markers.
pub fn queue_keys(endpoints: &[String], prefix: &str) -> Vec<(String, i64)> {
    keys(endpoints, prefix)
        .into_iter()
        .filter(|(_, lease)| *lease != 0)
        .collect()
}

/// Every lease on the cluster.
pub fn leases(endpoints: &[String]) -> Vec<i64> {
    raw(endpoints, async move |c| {
        Ok(c.leases().await?.leases().iter().map(|l| l.id()).collect())
    })
}

/// Deletes every key under `prefix`.
pub fn delete_prefix(endpoints: &[String], prefix: &str) {
    let prefix = prefix.to_owned();
    raw(endpoints, async move |c| {
        c.delete(prefix, Some(DeleteOptions::new().with_prefix()))
            .await
            .map(drop)
    });
}

/// Neither a key under `prefix` nor any lease is left on `endpoints` within `within`: what
/// every test that made locks checks at its end ([`assert_no_keys`], [`assert_no_leases`]).
pub fn assert_nothing_left(endpoints: &[String], prefix: &str, within: Duration) {
    assert_no_keys(endpoints, prefix, within);
    assert_no_leases(endpoints, within);
}

/// Asserts that within `within` no key is left under `prefix`.
pub fn assert_no_keys(endpoints: &[String], prefix: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let k = keys(endpoints, prefix);
        if k.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("leaked keys under {prefix}: {k:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that no lease is left on the cluster at all (for tests that own their cluster).
pub fn assert_no_leases(endpoints: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let l = leases(endpoints);
        if l.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("leaked leases: {l:x?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The env var that tells a re-executed test binary which role to play.
pub const ROLE_ENV: &str = "LOCK_ETCD_TEST_ROLE";

/// What a child prints before each line meant for its parent: libtest prints its own text
/// around the child's (`test name ... `), and only marked lines reach [`ChildProcess::expect`].
pub const CHILD_MARK: &str = "lock-etcd-child: ";

/// Prints one line for the parent, marked with [`CHILD_MARK`] (child side).
pub fn tell(line: &str) {
    println!("{CHILD_MARK}{line}");
}

/// Re-executes this test binary running only `test`, with `role` and `env` set; the child is
/// SIGKILLed and reaped when the handle is dropped.
pub fn spawn_child(test: &str, role: &str, env: &[(&str, String)]) -> ChildProcess {
    let exe = std::env::current_exe().expect("current_exe");
    start_child(Command::new(exe), test, role, env)
}

/// [`spawn_child`], in a new pid namespace (and user namespace, so no privilege is needed).
pub fn spawn_child_in_pid_namespace(
    test: &str,
    role: &str,
    env: &[(&str, String)],
) -> ChildProcess {
    let exe = std::env::current_exe().expect("current_exe");
    let command = lock_conformance::child::in_new_pid_namespace(exe);
    start_child(command, test, role, env)
}

/// Starts `cmd` (this test binary, or a program that runs it) running only `test` in `role`.
fn start_child(mut cmd: Command, test: &str, role: &str, env: &[(&str, String)]) -> ChildProcess {
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .envs(env.iter().map(|(k, v)| (k, v)));
    ChildProcess::start(cmd, role, Some(CHILD_MARK)).expect("spawn child")
}

/// Reads one line from stdin (a child waiting for its parent's go).
pub fn read_stdin_line() -> String {
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    line.trim().to_owned()
}

/// A resource that remembers the highest fencing token it has seen and rejects lower ones,
/// shared between processes through a file guarded by flock(2).
pub struct FencedResource {
    pub path: std::path::PathBuf,
}

impl FencedResource {
    /// Accepts a write carrying `token` unless a higher token was seen; returns whether it did.
    pub fn write(&self, token: u64) -> bool {
        use std::io::{Read, Seek};
        let mut file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .expect("open resource");
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).expect("flock");
        let mut text = String::new();
        file.read_to_string(&mut text).expect("read resource");
        let highest: u64 = text.trim().parse().unwrap_or(0);
        if token < highest {
            return false;
        }
        file.set_len(0).expect("truncate");
        file.rewind().expect("rewind");
        write!(file, "{token}").expect("write resource");
        true
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on this machine, so that
/// instants taken in different processes can be ordered.
pub fn mono_ns() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u128::try_from(t.tv_sec).expect("monotonic seconds");
    let nanos = u128::try_from(t.tv_nsec).expect("monotonic nanoseconds");
    secs * 1_000_000_000 + nanos
}

/// The raft proposals the cluster has committed (see the testkit).
pub fn proposals_committed(endpoints: &[String]) -> Option<u64> {
    lock_etcd::testkit::proposals_committed(endpoints)
}

/// How many watchers the member at `endpoint` serves (its `etcd_debugging_mvcc_watcher_total`
/// metric), or `None` when it does not answer within a second.
pub fn watchers(endpoint: &str) -> Option<u64> {
    lock_etcd::testkit::metric(endpoint, "etcd_debugging_mvcc_watcher_total").map(|v| v as u64)
}

/// A test of a suite: it gets the cluster's endpoints.
pub type SuiteTest = fn(&[String]) -> Result<(), libtest_mimic::Failed>;

/// Runs the suite `name` (`tests`, each named) on the shared test cluster with libtest's
/// arguments; when the cluster is the suite's own and every test passed, checks within
/// `leases_within` that no lease is left (every test released what it took).
pub fn run_suite(
    name: &str,
    tests: &[(&'static str, SuiteTest)],
    leases_within: Duration,
) -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let cluster = TestCluster::get();
    let eps = std::sync::Arc::new(cluster.endpoints.clone());
    let trials = tests
        .iter()
        .map(|&(test, f)| {
            let eps = std::sync::Arc::clone(&eps);
            libtest_mimic::Trial::test(test, move || f(&eps))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if cluster.own.is_some() && !args.list && conclusion.num_failed == 0 {
        assert_no_leases(&eps, leases_within);
        eprintln!("{name}: no leaked keys or leases");
    }
    drop(cluster);
    conclusion.exit_code()
}
