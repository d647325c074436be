//! The lockyard conformance suite on etcd: a table per store, reached through `etcd://` specs,
//! on a real 3-member cluster.
//!
//! The first process starts the cluster (or takes `LOCKYARD_ETCD_ENDPOINTS`), then re-executes
//! this binary with the endpoints in `LOCKYARD_ETCD_CONFORMANCE_ENDPOINTS` and waits for it; the
//! suite runs in that second process, and every child process the suite spawns inherits the
//! variable and reaches the same cluster. The cluster is stopped when the suite ends, pass, fail
//! or crash, after checking that no key and no lease was left behind.

mod common;

use std::process::ExitCode;
use std::time::Duration;

use lock_conformance::{Backend, Capabilities, Damage, LockerOf};
use lock_etcd::{EtcdTable, Fenced, Inspect, Leased, LockData};

const ENDPOINTS_ENV: &str = "LOCKYARD_ETCD_CONFORMANCE_ENDPOINTS";
const PREFIX: &str = "lockyard-conformance";

/// The etcd backend: store `S` is `etcd://<endpoints>/lockyard-conformance/S?ttl=3s`. The TTL is
/// short so that a SIGKILLed holder is taken over within seconds.
struct EtcdBackend {
    endpoints: Vec<String>,
}

impl EtcdBackend {
    fn root(store: &str) -> String {
        format!("{PREFIX}/table/{store}")
    }
}

impl Backend for EtcdBackend {
    type Manager = EtcdTable;

    fn name(&self) -> &'static str {
        "etcd"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALLOCATION
            | Capabilities::MULTIPROCESS
            | Capabilities::OWNER_DEATH
            | Capabilities::PERSISTENT
            | Capabilities::FENCED
            | Capabilities::LEASED
            | Capabilities::INSPECT
            | Capabilities::LOCK_DATA
            | Capabilities::WAITERS
            | Capabilities::DEADLOCK
            | Capabilities::DAMAGEABLE
            | Capabilities::FORK_REFUSED
            | Capabilities::CLIENTS
    }

    fn spec(&self, store: &str) -> String {
        let hosts: Vec<&str> = self
            .endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect();
        format!("etcd://{}/{PREFIX}/{store}?ttl=3s", hosts.join(","))
    }

    fn scrub(&self, store: &str) -> lock_etcd::Result<()> {
        common::delete_prefix(&self.endpoints, &format!("{}/", Self::root(store)));
        Ok(())
    }

    fn damage(&self, store: &str, damage: Damage) -> lock_etcd::Result<()> {
        let value: &[u8] = match damage {
            Damage::Foreign => b"not a lockyard table",
            Damage::FutureVersion => b"lockyard-etcd-table 99\ncapacity=8\n",
            Damage::Truncated => b"lockyard-etcd-tab",
            Damage::Garbage => b"lockyard-etcd-table 1\ncapacity=\xff\xfe banana\n",
        };
        let key = format!("{}/meta", Self::root(store));
        let value = value.to_vec();
        common::raw(&self.endpoints, async move |c| {
            c.put(key, value, None).await.map(drop)
        });
        Ok(())
    }

    fn as_fenced<'a>(&self, locker: &'a LockerOf<Self>) -> Option<&'a dyn Fenced> {
        Some(locker)
    }

    fn as_leased<'a>(&self, locker: &'a LockerOf<Self>) -> Option<&'a dyn Leased> {
        Some(locker)
    }

    fn as_inspect<'a>(&self, locker: &'a LockerOf<Self>) -> Option<&'a dyn Inspect> {
        Some(locker)
    }

    fn as_lock_data<'a>(&self, locker: &'a LockerOf<Self>) -> Option<&'a dyn LockData> {
        Some(locker)
    }
}

/// Starts the cluster, runs the suite in a re-executed copy of this binary, stops the cluster.
fn supervise() -> ExitCode {
    let cluster = common::TestCluster::get();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("conformance: current_exe: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(ENDPOINTS_ENV, cluster.endpoints.join(","))
        .status();
    let code = match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("conformance: the suite exited with {s}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("conformance: cannot run the suite: {e}");
            ExitCode::FAILURE
        }
    };
    if cluster.own.is_some() && code == ExitCode::SUCCESS {
        // Every trial removed its table and released its locks: nothing may be left.
        common::assert_nothing_left(&cluster.endpoints, PREFIX, Duration::from_secs(10));
        eprintln!("conformance: no leaked keys or leases");
    }
    drop(cluster);
    code
}

fn main() -> ExitCode {
    let Ok(endpoints) = std::env::var(ENDPOINTS_ENV) else {
        return supervise();
    };
    let endpoints = endpoints.split(',').map(str::to_owned).collect();
    lock_conformance::run(EtcdBackend { endpoints })
}
