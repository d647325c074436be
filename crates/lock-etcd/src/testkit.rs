//! A real 3-member etcd cluster on 127.0.0.1 for tests and benchmarks (feature `testkit`).
//!
//! Members listen on free loopback ports, keep their data in a temporary directory (on the
//! `/dev/shm` tmpfs when there is one, so that fsync costs nothing and tests and benchmarks measure
//! the protocol rather than the disk; set `LOCKYARD_ETCD_DATA_ROOT` to choose), run with
//! `--heartbeat-interval 50 --election-timeout 500` so that a lost leader is replaced within about
//! a second, and are stopped by pid (SIGKILL) when the [`EtcdCluster`] is dropped.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use rustix::process::{Pid, Signal, kill_process};

/// The command that installs etcd on Debian and Ubuntu, named in every "etcd is missing" error.
pub const INSTALL_HINT: &str = "apt-get install etcd-server";

/// What went wrong while running the cluster.
#[derive(Debug)]
pub struct TestkitError(pub String);

impl std::fmt::Display for TestkitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TestkitError {}

fn err(msg: impl Into<String>) -> TestkitError {
    TestkitError(msg.into())
}

/// The `etcd` binary: `$ETCD_BIN`, else `etcd` on the PATH, else Debian's `/usr/bin/etcd`.
///
/// # Errors
///
/// A message naming [`INSTALL_HINT`] when no etcd binary runs.
pub fn etcd_binary() -> Result<PathBuf, TestkitError> {
    let candidates: Vec<PathBuf> = match std::env::var_os("ETCD_BIN") {
        Some(bin) => vec![PathBuf::from(bin)],
        None => vec![PathBuf::from("etcd"), PathBuf::from("/usr/bin/etcd")],
    };
    for bin in candidates {
        let ok = Command::new(&bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(bin);
        }
    }
    Err(err(format!(
        "etcd is not installed (no working `etcd` binary on the PATH or in $ETCD_BIN); \
         the lock-etcd tests need a real etcd: run `{INSTALL_HINT}` \
         (and `apt-get install protobuf-compiler libprotobuf-dev` to build etcd-client)"
    )))
}

/// Where temporary member data goes: `$LOCKYARD_ETCD_DATA_ROOT`, else `/dev/shm` when it is a
/// writable directory, else the system temporary directory.
fn data_root() -> PathBuf {
    if let Some(root) = std::env::var_os("LOCKYARD_ETCD_DATA_ROOT") {
        return PathBuf::from(root);
    }
    let shm = Path::new("/dev/shm");
    let writable = shm.is_dir()
        && tempfile::Builder::new()
            .prefix("lockyard-probe-")
            .tempfile_in(shm)
            .is_ok();
    if writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn free_port() -> Result<u16, TestkitError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| err(format!("bind: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| err(format!("local_addr: {e}")))
}

/// One etcd member.
#[derive(Debug)]
struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    child: Option<Child>,
    pid: Option<u32>,
}

/// A running etcd cluster; every member is killed and its data removed on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    binary: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    root: PathBuf,
    /// Removes `root` on drop, unless the cluster was detached.
    _dir: Option<tempfile::TempDir>,
}

impl EtcdCluster {
    /// Starts a 3-member cluster and waits (at most 30 s) until every member is healthy.
    ///
    /// # Errors
    ///
    /// etcd is missing (the message names [`INSTALL_HINT`]), or the cluster did not become
    /// healthy in time (the members' logs are quoted).
    pub fn start() -> Result<EtcdCluster, TestkitError> {
        Self::start_members(3)
    }

    /// Starts a cluster of `count` members (1 to 7).
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start).
    pub fn start_members(count: usize) -> Result<EtcdCluster, TestkitError> {
        let binary = etcd_binary()?;
        let mut last = None;
        // A free port found by binding may be taken again before etcd binds it: retry then.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("lockyard-etcd-")
                .tempdir_in(data_root())
                .map_err(|e| err(format!("temporary directory: {e}")))?;
            match Self::launch(binary.clone(), count, dir.path().to_path_buf(), Some(dir)) {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| err("etcd cluster did not start")))
    }

    /// Starts a cluster whose data lives in `root` and is left there when the value is dropped
    /// with [`detach`](Self::detach) (for `lockyard-etcd-cluster up`).
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start).
    pub fn start_in(root: &Path, count: usize) -> Result<EtcdCluster, TestkitError> {
        let binary = etcd_binary()?;
        std::fs::create_dir_all(root).map_err(|e| err(format!("{}: {e}", root.display())))?;
        Self::launch(binary, count, root.to_path_buf(), None)
    }

    fn launch(
        binary: PathBuf,
        count: usize,
        root: PathBuf,
        dir: Option<tempfile::TempDir>,
    ) -> Result<EtcdCluster, TestkitError> {
        if !(1..=7).contains(&count) {
            return Err(err(format!("{count} members: use 1 to 7")));
        }
        let mut members = Vec::new();
        for i in 0..count {
            let name = format!("m{i}");
            members.push(Member {
                data_dir: root.join(&name),
                name,
                client_url: format!("http://127.0.0.1:{}", free_port()?),
                peer_url: format!("http://127.0.0.1:{}", free_port()?),
                child: None,
                pid: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "lockyard-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let mut cluster = EtcdCluster {
            binary,
            members,
            initial_cluster,
            token,
            root,
            _dir: dir,
        };
        for i in 0..count {
            cluster.spawn_member(i, "new")?;
        }
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn spawn_member(&mut self, i: usize, state: &str) -> Result<(), TestkitError> {
        let member = self
            .members
            .get(i)
            .ok_or_else(|| err(format!("no member {i}")))?;
        std::fs::create_dir_all(&self.root).map_err(|e| err(format!("{e}")))?;
        let log_path = self.root.join(format!("{}.log", member.name));
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| err(format!("{}: {e}", log_path.display())))?;
        let log2 = log.try_clone().map_err(|e| err(format!("{e}")))?;
        let mut command = Command::new(&self.binary);
        command
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &member.client_url])
            .args(["--advertise-client-urls", &member.client_url])
            .args(["--listen-peer-urls", &member.peer_url])
            .args(["--initial-advertise-peer-urls", &member.peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        // Its own process group: a Ctrl-C meant for the test runner does not reach it, and
        // `lockyard-etcd-cluster up` can leave it running.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .map_err(|e| err(format!("spawn {}: {e}", self.binary.display())))?;
        let pid = child.id();
        if let Some(m) = self.members.get_mut(i) {
            m.pid = Some(pid);
            m.child = Some(child);
        }
        Ok(())
    }

    /// The client URLs of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The client URLs of the members that run (not killed), in member order.
    pub fn live_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.pid.is_some())
            .map(|m| m.client_url.clone())
            .collect()
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> Option<String> {
        self.members.get(i).map(|m| m.client_url.clone())
    }

    /// The pid of every member (`None` for a killed one), in member order.
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.members.iter().map(|m| m.pid).collect()
    }

    /// The directory holding every member's data and log.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no member (never, once started).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn signal(&self, i: usize, signal: Signal) -> Result<u32, TestkitError> {
        let pid = self
            .members
            .get(i)
            .and_then(|m| m.pid)
            .ok_or_else(|| err(format!("member {i} is not running")))?;
        let raw = i32::try_from(pid).map_err(|_| err("pid out of range"))?;
        let pid_t = Pid::from_raw(raw).ok_or_else(|| err("pid 0"))?;
        kill_process(pid_t, signal).map_err(|e| err(format!("kill {pid}: {e}")))?;
        Ok(pid)
    }

    /// SIGKILLs member `i` and reaps it.
    ///
    /// # Errors
    ///
    /// The member is not running or the signal failed.
    pub fn kill(&mut self, i: usize) -> Result<(), TestkitError> {
        self.signal(i, Signal::KILL)?;
        if let Some(m) = self.members.get_mut(i) {
            if let Some(mut child) = m.child.take() {
                let _ = child.wait();
            }
            m.pid = None;
        }
        Ok(())
    }

    /// SIGSTOPs member `i` (it stays a member but answers nothing).
    ///
    /// # Errors
    ///
    /// The member is not running or the signal failed.
    pub fn stop(&self, i: usize) -> Result<(), TestkitError> {
        self.signal(i, Signal::STOP).map(drop)
    }

    /// SIGCONTs member `i`.
    ///
    /// # Errors
    ///
    /// The member is not running or the signal failed.
    pub fn cont(&self, i: usize) -> Result<(), TestkitError> {
        self.signal(i, Signal::CONT).map(drop)
    }

    /// Starts killed member `i` again on its data directory and waits until it is healthy.
    ///
    /// # Errors
    ///
    /// The member is still running, or it did not become healthy within 30 s.
    pub fn restart(&mut self, i: usize) -> Result<(), TestkitError> {
        if self.members.get(i).and_then(|m| m.pid).is_some() {
            return Err(err(format!("member {i} is still running")));
        }
        self.spawn_member(i, "existing")?;
        let endpoint = self.endpoint(i).unwrap_or_default();
        wait_for(Duration::from_secs(30), || {
            member_status(&endpoint).is_some()
        })
        .map_err(|()| err(format!("member {i} did not come back: {}", self.logs())))
    }

    /// Waits until every running member answers and agrees on one leader.
    ///
    /// # Errors
    ///
    /// The cluster was not healthy within `timeout`; the message quotes the members' logs.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<(), TestkitError> {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.pid.is_some())
            .map(|m| m.client_url.clone())
            .collect();
        let healthy = wait_for(timeout, || {
            for m in &mut self.members {
                if let Some(child) = m.child.as_mut()
                    && let Ok(Some(_)) = child.try_wait()
                {
                    return false;
                }
            }
            let leaders: Vec<u64> = endpoints
                .iter()
                .filter_map(|e| member_status(e).map(|(_, leader)| leader))
                .collect();
            leaders.len() == endpoints.len()
                && leaders.first().is_some_and(|l| *l != 0)
                && leaders.windows(2).all(|w| w[0] == w[1])
        });
        healthy.map_err(|()| err(format!("etcd cluster not healthy: {}", self.logs())))
    }

    /// The index of the current leader, as the first answering member says.
    pub fn leader(&self) -> Option<usize> {
        for m in self.members.iter().filter(|m| m.pid.is_some()) {
            if let Some((_, leader)) = member_status(&m.client_url) {
                for (i, other) in self.members.iter().enumerate() {
                    if other.pid.is_some()
                        && member_status(&other.client_url).is_some_and(|(id, _)| id == leader)
                    {
                        return Some(i);
                    }
                }
            }
        }
        None
    }

    /// Hands the leadership to member `to` (etcd's `MoveLeader`, sent to the leader) and waits
    /// until every live member names it, within 10 s.
    ///
    /// # Errors
    ///
    /// No leader, `to` not running, or the move not done in time.
    pub fn move_leader(&mut self, to: usize) -> Result<(), TestkitError> {
        let leader = self.leader().ok_or_else(|| err("no leader"))?;
        let target = self
            .endpoint(to)
            .filter(|_| self.members.get(to).is_some_and(|m| m.pid.is_some()))
            .and_then(|e| member_status(&e))
            .map(|(id, _)| id)
            .ok_or_else(|| err(format!("member {to} does not answer")))?;
        if leader != to {
            let endpoint = self
                .endpoint(leader)
                .ok_or_else(|| err("no leader endpoint"))?;
            block_on(async move {
                let mut client = Client::connect([endpoint], None)
                    .await
                    .map_err(|e| err(format!("connect: {e}")))?;
                client
                    .move_leader(target)
                    .await
                    .map_err(|e| err(format!("move leader: {e}")))?;
                Ok(())
            })?;
        }
        let live: Vec<String> = self.live_endpoints();
        wait_for(Duration::from_secs(10), || {
            live.iter()
                .all(|e| member_status(e).is_some_and(|(_, l)| l == target))
        })
        .map_err(|()| err(format!("member {to} did not become the leader")))
    }

    /// The tail of every member's log, for error messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let path = self.root.join(format!("{}.log", m.name));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            out.push_str(&format!("\n--- {} ({}):\n", m.name, path.display()));
            for line in tail.iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Leaves the members running and their data in place (for `lockyard-etcd-cluster up`).
    pub fn detach(mut self) -> (Vec<String>, Vec<u32>, PathBuf) {
        let endpoints = self.endpoints();
        let pids = self.members.iter().filter_map(|m| m.pid).collect();
        for m in &mut self.members {
            m.child = None;
            m.pid = None;
        }
        let root = self.root.clone();
        if let Some(dir) = self._dir.take() {
            let _ = dir.keep();
        }
        (endpoints, pids, root)
    }

    /// Every key under `prefix` and every lease on the cluster: what a test checks for leaks.
    ///
    /// # Errors
    ///
    /// The cluster did not answer within 10 s.
    pub fn keys_and_leases(&self, prefix: &str) -> Result<(Vec<String>, Vec<i64>), TestkitError> {
        let endpoints = self.endpoints();
        let prefix = prefix.to_owned();
        block_on(async move {
            let mut client = Client::connect(
                endpoints,
                Some(ConnectOptions::new().with_connect_timeout(Duration::from_secs(5))),
            )
            .await
            .map_err(|e| err(format!("connect: {e}")))?;
            let keys = client
                .get(
                    prefix,
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_keys_only(),
                    ),
                )
                .await
                .map_err(|e| err(format!("get: {e}")))?
                .kvs()
                .iter()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                .collect();
            let leases = client
                .leases()
                .await
                .map_err(|e| err(format!("leases: {e}")))?
                .leases()
                .iter()
                .map(|l| l.id())
                .collect();
            Ok((keys, leases))
        })
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(pid) = m.pid.take()
                && let Ok(raw) = i32::try_from(pid)
                && let Some(pid) = Pid::from_raw(raw)
            {
                // A stopped member dies from SIGKILL too.
                let _ = kill_process(pid, Signal::KILL);
            }
            if let Some(mut child) = m.child.take() {
                let _ = child.wait();
            }
        }
    }
}

/// Runs `fut` on a fresh single-threaded runtime, bounded by 10 s.
fn block_on<T>(
    fut: impl std::future::Future<Output = Result<T, TestkitError>>,
) -> Result<T, TestkitError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| err(format!("runtime: {e}")))?;
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .unwrap_or_else(|_| Err(err("etcd did not answer within 10 s")))
    })
}

/// `(member id, leader id)` of the member at `endpoint`, if it answers within a second.
pub fn member_status(endpoint: &str) -> Option<(u64, u64)> {
    let endpoint = endpoint.to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async move {
        tokio::time::timeout(Duration::from_secs(1), async move {
            let mut client = Client::connect(
                [endpoint],
                Some(ConnectOptions::new().with_connect_timeout(Duration::from_millis(500))),
            )
            .await
            .ok()?;
            let status = client.status().await.ok()?;
            let member = status.header()?.member_id();
            Some((member, status.leader()))
        })
        .await
        .ok()
        .flatten()
    })
}

/// One Prometheus metric of the member at `endpoint` (`http://host:port`, its `/metrics`), or
/// `None` when it does not answer within a second or has no such line.
pub fn metric(endpoint: &str, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = endpoint.trim_start_matches("http://").parse().ok()?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

/// The raft proposals the cluster at `endpoints` has committed: the highest
/// `etcd_server_proposals_committed_total` of its members, read until two reads 50 ms apart
/// agree (a follower may lag a moment behind the leader). Every write (a Put, a Delete, a Txn
/// with a write, a lease grant or revoke) is one proposal; reads and lease renewals are none.
pub fn proposals_committed(endpoints: &[String]) -> Option<u64> {
    let read = || {
        endpoints
            .iter()
            .filter_map(|e| metric(e, "etcd_server_proposals_committed_total"))
            .map(|v| v as u64)
            .max()
    };
    let mut last = read()?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        let now = read()?;
        if now == last {
            return Some(now);
        }
        last = now;
    }
    Some(last)
}

fn wait_for(timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The peer the benchmarks measure lock-etcd against: a plain etcd client on `endpoints` and a
/// lease of `ttl_secs` granted once and kept alive by a task on the current tokio runtime (for
/// etcd's `Lock` RPC, which takes a lease). The task ends when a keepalive fails.
///
/// # Errors
///
/// A [`TestkitError`] naming the step (connect, grant, keepalive) that failed.
pub async fn lock_rpc_peer<E: AsRef<str>>(
    endpoints: &[E],
    ttl_secs: i64,
) -> Result<(Client, i64), TestkitError> {
    let mut client = Client::connect(endpoints, None)
        .await
        .map_err(|e| err(format!("connect the Lock RPC peer: {e}")))?;
    let lease = client
        .lease_grant(ttl_secs, None)
        .await
        .map_err(|e| err(format!("the Lock RPC peer's lease: {e}")))?
        .id();
    let (mut keeper, mut answers) = client
        .lease_keep_alive(lease)
        .await
        .map_err(|e| err(format!("the Lock RPC peer's keepalive: {e}")))?;
    let every = Duration::from_secs(u64::try_from(ttl_secs / 3).unwrap_or(1).max(1));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if keeper.keep_alive().await.is_err() || answers.message().await.is_err() {
                return;
            }
        }
    });
    Ok((client, lease))
}
