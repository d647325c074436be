//! lockctl end to end: the built binary, run as a user would run it, on a file: store.
//!
//! Holders and waiters are `lockctl run` processes; `status --json` is parsed while they run.
//! When the tests run as root, every lockctl runs as `nobody` on a store `nobody` owns, so the
//! tool is shown to need no privilege.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long anything that should happen promptly may take before a test fails (a bound on a
/// hang, not a performance target).
const PROMPTLY: Duration = Duration::from_secs(30);
const NOBODY: u32 = 65534;

/// A scratch directory the lockctl processes can write, removed at the end.
struct Scratch {
    dir: tempfile::TempDir,
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("lockctl-cli-")
            .tempdir()
            .expect("tempdir");
        if is_root() {
            std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
        }
        Scratch { dir }
    }

    fn spec(&self) -> String {
        format!("file:{}", self.dir.path().join("store").display())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn lockctl(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lockctl"));
    command.args(args);
    if is_root() {
        command.uid(NOBODY).gid(NOBODY);
        command.env("HOME", "/");
    }
    command
}

fn output(args: &[&str]) -> Output {
    let mut child = lockctl(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lockctl");
    let status = wait(&mut child, PROMPTLY);
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    use std::io::Read;
    if let Some(mut s) = child.stdout.take() {
        s.read_to_end(&mut stdout).expect("stdout");
    }
    if let Some(mut s) = child.stderr.take() {
        s.read_to_end(&mut stderr).expect("stderr");
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

fn wait(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lockctl did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ok(args: &[&str]) -> String {
    let out = output(args);
    assert!(
        out.status.success(),
        "lockctl {args:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn fails(args: &[&str], code: i32) -> String {
    let out = output(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "lockctl {args:?}: stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8(out.stderr).expect("utf-8");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(stderr.starts_with("lockctl: "), "{stderr:?}");
    stderr
}

/// Every line of lockctl's human output `text` (of `what`) is at most 100 columns.
fn assert_fits_100_columns(text: &str, what: &str) {
    for line in text.lines() {
        let columns = line.chars().count();
        assert!(
            columns <= 100,
            "{what}: a line of {columns} columns: {line:?}"
        );
    }
}

fn status_json(spec: &str) -> Value {
    serde_json::from_str(&ok(&["status", spec, "--json"])).expect("status --json is JSON")
}

/// A lock in `status --json`, by id.
fn lock(status: &Value, id: u64) -> Option<Value> {
    status["locks"]
        .as_array()
        .expect("locks")
        .iter()
        .find(|l| l["id"] == id)
        .cloned()
}

/// Polls `status --json` until `ready` holds or the bound passes.
fn until(spec: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let status = status_json(spec);
        if ready(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "never saw {what}: {status:#}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `lockctl run` whose command prints `in` and then waits for a line on its stdin.
struct Run {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Run {
    fn start(spec: &str, ids: &[&str], extra: &[&str]) -> Run {
        Run::start_as(None, spec, ids, extra)
    }

    /// As [`start`](Self::start), with `arg0` as lockctl's `argv[0]` when given.
    fn start_as(arg0: Option<&str>, spec: &str, ids: &[&str], extra: &[&str]) -> Run {
        let mut args = vec!["run", spec];
        args.extend_from_slice(ids);
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", "echo in; read line; echo out"]);
        let mut command = lockctl(&args);
        if let Some(arg0) = arg0 {
            command.arg0(arg0);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lockctl run");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Run { child, out }
    }

    fn pid(&self) -> u64 {
        u64::from(self.child.id())
    }

    /// Waits (in a thread, so the bound holds) for the command to say `in`. On a timeout the
    /// run is killed, which ends the blocked read, and the test fails.
    fn expect_in(&mut self) {
        let mut line = String::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let pid = self.child.id();
        let got = std::thread::scope(|s| {
            s.spawn(|| {
                let _ = tx.send(self.out.read_line(&mut line).map(|_| ()));
            });
            let got = rx.recv_timeout(PROMPTLY);
            if got.is_err() {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            got
        });
        assert!(
            matches!(got, Ok(Ok(()))),
            "the command never started: {got:?}"
        );
        assert_eq!(line.trim(), "in");
    }

    fn release(&mut self) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = stdin.write_all(b"go\n");
        }
    }

    fn finish(mut self) -> (ExitStatus, String) {
        self.release();
        drop(self.child.stdin.take());
        let status = wait(&mut self.child, PROMPTLY);
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        (status, err)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn create_status_free_and_remove() {
    let scratch = Scratch::new();
    let spec = scratch.spec();
    assert!(ok(&["create", &spec, "--capacity", "16"]).contains("16 locks"));
    let status = status_json(&spec);
    assert_eq!(status["capacity"], 16);
    assert_eq!(status["allocated"], 0);
    assert_eq!(status["available"], 16);
    assert_eq!(status["locks"], Value::Array(vec![]));
    assert_eq!(status["deadlocks"], Value::Array(vec![]));
    let human = ok(&["status", &spec]);
    assert!(
        human.contains("capacity 16, allocated 0, available 16"),
        "{human}"
    );
    fails(&["free", &spec, "3"], 2);
    fails(&["free", &spec, "99"], 2);
    fails(&["free-all", &spec], 2);
    ok(&["free-all", &spec, "--yes"]);
    fails(&["create", &spec, "--capacity", "16"], 2);
    fails(&["remove", &spec], 2);
    ok(&["remove", &spec, "--yes"]);
    fails(&["status", &spec], 4);
}

#[test]
fn bad_specs_missing_and_unreadable_stores_have_their_own_codes() {
    let scratch = Scratch::new();
    // The last two parse, but set a TTL that lock-etcd refuses: still a bad spec, refused before
    // any connection (they were exit code 2).
    for bad in [
        "shm:",
        "nfs:/x",
        "file:/a/../b",
        "etcd://h:0/a/b",
        "etcd://127.0.0.1:+1/a/b",
        "podman",
        "etcd://127.0.0.1:1/a/b?ttl=1ms",
        "etcd://127.0.0.1:1/a/b?ttl=10000000000s",
    ] {
        fails(&["status", bad], 3);
        fails(&["run", bad, "1", "--", "true"], 3);
    }
    let missing = format!("file:{}", scratch.path("none").display());
    fails(&["status", &missing], 4);
    fails(&["run", &missing, "1", "--", "true"], 4);
    // A directory that is not a store cannot be read as one.
    let foreign = scratch.path("foreign");
    std::fs::create_dir(&foreign).expect("mkdir");
    std::fs::write(foreign.join("lockyard-store"), "something else\n").expect("write");
    if is_root() {
        for p in [&foreign, &foreign.join("lockyard-store")] {
            std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).expect("chown");
        }
    }
    fails(&["status", &format!("file:{}", foreign.display())], 5);
    fails(&["status"], 2);
    fails(&["frobnicate"], 2);
}

#[test]
fn run_passes_on_the_command_status_and_times_out() {
    let scratch = Scratch::new();
    let spec = scratch.spec();
    ok(&["create", &spec, "--capacity", "8"]);
    assert_eq!(
        output(&["run", &spec, "1", "--", "true"]).status.code(),
        Some(0)
    );
    assert_eq!(
        output(&["run", &spec, "1", "2", "--", "sh", "-c", "exit 42"])
            .status
            .code(),
        Some(42)
    );
    assert_eq!(
        output(&["run", &spec, "1", "--", "/nonexistent/command"])
            .status
            .code(),
        Some(127)
    );
    let mut holder = Run::start(&spec, &["1"], &[]);
    holder.expect_in();
    let err = fails(&["run", &spec, "1", "--timeout", "300ms", "--", "true"], 6);
    assert!(err.contains("timed out"), "{err}");
    fails(&["run", &spec, "1", "--timeout", "soon", "--", "true"], 2);
    let (status, _) = holder.finish();
    assert!(status.success());
    // Every lock was released: status shows nothing held.
    assert_eq!(status_json(&spec)["locks"], Value::Array(vec![]));
}

#[test]
fn holders_and_waiters_made_with_run_show_in_status() {
    let scratch = Scratch::new();
    let spec = scratch.spec();
    ok(&["create", &spec, "--capacity", "8"]);
    let mut holder = Run::start(&spec, &["3"], &[]);
    holder.expect_in();
    let mut waiter = Run::start(&spec, &["3"], &[]);
    let status = until(&spec, "a holder and a waiter of lock 3", |s| {
        lock(s, 3).is_some_and(|l| l["waiters"].as_array().is_some_and(|w| w.len() == 1))
    });
    let l3 = lock(&status, 3).expect("lock 3");
    assert_eq!(l3["holder"]["pid"], holder.pid());
    assert_eq!(l3["holder"]["dead"], false);
    let cmdline = l3["holder"]["cmdline"].as_str().expect("holder cmdline");
    assert!(
        cmdline.contains("lockctl run") && cmdline.contains(&spec),
        "{cmdline}"
    );
    assert!(
        l3["holder"]["since"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z'))
    );
    assert!(l3["holder"]["for_ms"].as_u64().is_some());
    assert_eq!(l3["waiters"][0]["pid"], waiter.pid());
    assert!(l3["waiters"][0]["since"].is_string());
    let human = ok(&["status", &spec]);
    assert_fits_100_columns(&human, "status");
    assert!(
        human.contains(&format!("held   pid {}", holder.pid())),
        "{human}"
    );
    assert!(
        human.contains(&format!("waits  pid {}", waiter.pid())),
        "{human}"
    );
    let (status, _) = holder.finish();
    assert!(status.success());
    waiter.expect_in();
    let after = until(&spec, "the waiter holding lock 3", |s| {
        lock(s, 3).is_some_and(|l| l["holder"]["pid"] == waiter.pid())
    });
    assert_eq!(
        lock(&after, 3).expect("lock 3")["waiters"],
        Value::Array(vec![])
    );
    let (status, _) = waiter.finish();
    assert!(status.success());
}

/// A holder whose command line carries control characters (here an `argv[0]` with a colour
/// escape and a newline) is shown with them escaped: status writes no control character but
/// its own line ends. They reached the terminal raw before.
#[test]
fn control_characters_in_a_holders_command_line_are_escaped() {
    let scratch = Scratch::new();
    let spec = scratch.spec();
    ok(&["create", &spec, "--capacity", "4"]);
    let mut holder = Run::start_as(Some("\u{1b}[31mred\nline\u{202e}rev"), &spec, &["1"], &[]);
    holder.expect_in();
    let shown = ok(&["status", &spec]);
    assert!(
        !shown
            .chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
        "a control or bidi character in {shown:?}"
    );
    assert!(
        shown.contains("(\\u{1b}[31mred\\nline\\u{202e}rev run "),
        "the command line, escaped, in {shown:?}"
    );
    assert_eq!(shown.lines().count(), 3, "{shown:?}");
    let (status, err) = holder.finish();
    assert!(status.success(), "the holder: {status}: {err}");
}

/// A shm segment named for one test, removed when dropped.
struct Segment(String);

impl Segment {
    fn new(what: &str) -> Segment {
        let spec = format!("shm:lockctl-cli-{what}-{}", std::process::id());
        let _ = output(&["remove", &spec, "--yes"]);
        Segment(spec)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // Forced: a test that failed may leave a process with the segment open.
        let _ = output(&["remove", &self.0, "--yes", "--force"]);
    }
}

/// `remove --yes` refuses a shm or file store that another process has open, though that
/// process holds and waits for nothing (exit 9, naming it), and `status` shows it as `also open
/// in`. Before, remove took a segment from under it: it went on locking in the removed segment
/// while the next process to open the name made a new one, and the two no longer excluded each
/// other; a file store was refused without naming the process.
#[test]
fn remove_refuses_a_shm_store_another_process_has_open() {
    let segment = Segment::new("open");
    refuses_a_store_another_process_has_open(segment.0.as_str());
}

#[test]
fn remove_refuses_a_file_store_another_process_has_open() {
    let scratch = Scratch::new();
    refuses_a_store_another_process_has_open(&scratch.spec());
}

fn refuses_a_store_another_process_has_open(spec: &str) {
    let me = std::process::id();
    ok(&["create", spec, "--capacity", "4"]);
    let manager = lockyard::open(spec).expect("open");
    let shown = ok(&["status", spec]);
    assert!(
        shown.contains(&format!("also open in pid {me} (")),
        "{shown}"
    );
    let clients = status_json(spec)["clients"].clone();
    assert_eq!(clients.as_array().map(Vec::len), Some(1), "{clients}");
    assert_eq!(clients[0]["pid"], me, "{clients}");
    assert_eq!(clients[0]["dead"], false, "{clients}");
    let err = fails(&["remove", spec, "--yes"], 9);
    assert!(
        err.contains(&format!("1 other process has it open: pid {me} (")),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert!(!err.contains("lock is held"), "{err}");
    // Refused, so still there: the manager's next lock is in the store everyone opens.
    ok(&["status", spec]);
    drop(manager);
    let shown = ok(&["status", spec]);
    assert!(!shown.contains("also open"), "{shown}");
    assert_eq!(status_json(spec)["clients"], serde_json::json!([]));
    ok(&["remove", spec, "--yes"]);

    ok(&["create", spec, "--capacity", "4"]);
    let manager = lockyard::open(spec).expect("open");
    ok(&["remove", spec, "--yes", "--force"]);
    fails(&["status", spec], 4);
    drop(manager);
}

/// The same on an etcd:// table (feature `etcd`), on a cluster of the test's own: the table's
/// client keys name who has it open.
#[cfg(feature = "etcd")]
#[test]
fn remove_refuses_an_etcd_table_another_process_has_open() {
    let cluster = lock_etcd::testkit::EtcdCluster::start_members(1).expect("etcd cluster");
    let endpoint = cluster.endpoints()[0]
        .trim_start_matches("http://")
        .to_owned();
    let spec = format!("etcd://{endpoint}/lockctl-test/{}", std::process::id());
    refuses_a_store_another_process_has_open(&spec);
    drop(cluster);
}

/// `status --json` says `clients: null` where the backend cannot tell who has a store open
/// (dirlock registers its handles nowhere).
#[test]
fn clients_are_null_where_the_backend_cannot_tell() {
    let scratch = Scratch::new();
    let spec = format!("dir:{}", scratch.path("store").display());
    ok(&["create", &spec, "--capacity", "1"]);
    let manager = lockyard::open(&spec).expect("open");
    assert_eq!(status_json(&spec)["clients"], Value::Null);
    drop(manager);
    ok(&["remove", &spec, "--yes"]);
}

/// On shm, a holder killed while the segment has free slots keeps its pid in `status`, however
/// many times status (which opens the segment, taking a slot) has looked since.
#[test]
fn a_killed_shm_holder_is_shown_with_its_pid() {
    let segment = Segment::new("deadpid");
    let spec = segment.0.as_str();
    ok(&["create", spec, "--capacity", "8"]);
    let mut holder = Run::start(spec, &["3"], &[]);
    holder.expect_in();
    let pid = holder.pid();
    holder.child.kill().expect("kill");
    holder.child.wait().expect("reap");
    let status = until(spec, "lock 3 flagged dead", |s| {
        lock(s, 3).is_some_and(|l| l["holder"]["dead"] == true)
    });
    assert_eq!(lock(&status, 3).expect("lock 3")["holder"]["pid"], pid);
    for _ in 0..3 {
        let shown = ok(&["status", spec]);
        assert!(shown.contains(&format!("dead   pid {pid}")), "{shown}");
    }
}

#[test]
fn a_killed_holder_shows_dead_and_the_next_run_is_told() {
    let scratch = Scratch::new();
    let spec = scratch.spec();
    ok(&["create", &spec, "--capacity", "8"]);
    let mut holder = Run::start(&spec, &["5"], &[]);
    holder.expect_in();
    let pid = holder.pid();
    // SIGKILL the lockctl process that holds the lock (its sh child is reaped with the test).
    holder.child.kill().expect("kill");
    holder.child.wait().expect("reap");
    let status = until(&spec, "lock 5 flagged dead", |s| {
        lock(s, 5).is_some_and(|l| l["holder"]["dead"] == true)
    });
    assert_eq!(lock(&status, 5).expect("lock 5")["holder"]["pid"], pid);
    assert!(ok(&["status", &spec]).contains(&format!("dead   pid {pid}")));
    let out = output(&["run", &spec, "5", "--", "true"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("died holding it"));
}

#[test]
fn a_deadlock_between_two_runs_has_one_victim_and_status_names_it() {
    let scratch = Scratch::new();
    let spec = scratch.spec();
    ok(&["create", &spec, "--capacity", "8"]);
    // A gate on lock 3 makes the interleaving certain: A takes 1 and waits at the gate while B
    // takes 2 and waits for 1; when the gate opens, A waits for 2 and the cycle closes.
    let mut gate = Run::start(&spec, &["3"], &[]);
    gate.expect_in();
    let slow = ["--deadlock-timeout", "3s"];
    let mut a = Run::start(&spec, &["1", "3", "2"], &slow);
    until(&spec, "A at the gate", |s| {
        lock(s, 3).is_some_and(|l| l["waiters"][0]["pid"] == a.pid())
    });
    let mut b = Run::start(&spec, &["2", "1"], &slow);
    until(&spec, "B waiting for lock 1", |s| {
        lock(s, 1).is_some_and(|l| l["waiters"][0]["pid"] == b.pid())
    });
    let _ = gate.finish();
    // Before the deadlock timeout passes, status shows the cycle.
    let status = until(&spec, "the deadlock", |s| {
        s["deadlocks"].as_array().is_some_and(|d| d.len() == 1)
    });
    let cycle = status["deadlocks"][0].as_array().expect("cycle");
    assert_eq!(cycle.len(), 2, "{cycle:?}");
    let human = ok(&["status", &spec]);
    let mut lines = human.lines().skip_while(|l| !l.starts_with("DEADLOCKS"));
    assert!(lines.next().is_some(), "no DEADLOCKS section: {human}");
    let line = lines.next().expect("a deadlock line");
    assert!(
        line.contains(&format!("pid {}", a.pid())) && line.contains(&format!("pid {}", b.pid())),
        "{line}"
    );
    // Exactly one of them gives up with the deadlock code; the other runs its command.
    let deadline = Instant::now() + PROMPTLY;
    let (victim, survivor) = loop {
        if let Some(s) = a.child.try_wait().expect("try_wait") {
            break ((s, "a"), &mut b);
        }
        if let Some(s) = b.child.try_wait().expect("try_wait") {
            break ((s, "b"), &mut a);
        }
        assert!(Instant::now() < deadline, "neither run gave up");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        victim.0.code(),
        Some(7),
        "run {} ended with {}",
        victim.1,
        victim.0
    );
    survivor.expect_in();
    survivor.release();
    let status = wait(&mut survivor.child, PROMPTLY);
    assert!(status.success(), "the survivor ended with {status}");
    assert_eq!(status_json(&spec)["locks"], Value::Array(vec![]));
}

#[test]
fn status_of_a_store_path_that_is_a_file_is_unreadable() {
    let scratch = Scratch::new();
    let file = scratch.path("plain");
    std::fs::write(&file, "x").expect("write");
    let spec = format!("file:{}", Path::new(&file).display());
    let code = output(&["status", &spec]).status.code();
    assert!(matches!(code, Some(4) | Some(5)), "{code:?}");
}

// ---------------------------------------------------------------------------------------------
// Signals, lock release on every path, and output that must not fail.

/// Processes a test started that may outlive lockctl (a command orphaned by a lockctl that died),
/// killed by pid when the test ends, whatever it found.
struct Orphans(Vec<i32>);

impl Drop for Orphans {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// The pid a command wrote to `file`, waiting for it to appear.
fn pid_in(file: &Path) -> i32 {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        if let Ok(text) = std::fs::read_to_string(file)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{} never named a pid",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is a process that has not ended (a zombie has ended).
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or_default().trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
    }
}

fn signal(pid: u64, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).expect("pid")).expect("pid");
    rustix::process::kill_process(pid, sig).expect("kill");
}

/// A `lockctl run` of a shell script, its stdout read line by line within the bound.
fn run_script(spec: &str, ids: &[&str], script: &str) -> Run {
    let mut args = vec!["run", spec];
    args.extend_from_slice(ids);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let mut child = lockctl(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lockctl run");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    Run { child, out }
}

/// A signal sent to `lockctl run` while its command runs reaches the command; lockctl waits for
/// it, keeps the lock until it has ended, and exits with its status. lockctl died at once before,
/// and a second run took the lock while the first command still ran.
fn a_signal_reaches_the_command_and_the_lock_outlives_it(sig: rustix::process::Signal) {
    let scratch = Scratch::new();
    let spec = scratch.spec();
    ok(&["create", &spec, "--capacity", "4"]);
    let pidfile = scratch.path("cmd.pid");
    let done = scratch.path("done");
    // The command traps the signal, takes a while to finish, marks that it finished and exits 3.
    let script = format!(
        "echo $$ > {pids}; trap 'echo caught; sleep 1; echo yes > {done}; exit 3' {name}; \
         echo in; i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done",
        pids = pidfile.display(),
        done = done.display(),
        name = match sig {
            rustix::process::Signal::INT => "INT",
            rustix::process::Signal::HUP => "HUP",
            rustix::process::Signal::QUIT => "QUIT",
            _ => "TERM",
        },
    );
    let mut first = run_script(&spec, &["1"], &script);
    first.expect_in();
    let _orphans = Orphans(vec![pid_in(&pidfile)]);
    signal(first.pid(), sig);
    // The next taker gets the lock only once the first command has finished.
    let check = format!("test -f {}", done.display());
    let second = output(&[
        "run",
        &spec,
        "1",
        "--timeout",
        "20s",
        "--",
        "sh",
        "-c",
        &check,
    ]);
    assert_eq!(
        second.status.code(),
        Some(0),
        "the second run took the lock before the first command finished: {}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&second.stderr).contains("died"),
        "the lock was released as a dead holder's"
    );
    let status = wait(&mut first.child, PROMPTLY);
    assert_eq!(status.code(), Some(3), "lockctl run ended with {status}");
    let mut line = String::new();
    let _ = first.out.read_line(&mut line);
    assert_eq!(line.trim(), "caught", "the command never got the signal");
}

/// SIGTERM to `lockctl run` reaches the command; the lock is held until it ends.
#[test]
fn sigterm_reaches_the_command_and_the_lock_outlives_it() {
    a_signal_reaches_the_command_and_the_lock_outlives_it(rustix::process::Signal::TERM);
}

/// SIGINT sent to `lockctl run`'s pid reaches the command; the lock is held until it ends.
#[test]
fn sigint_reaches_the_command_and_the_lock_outlives_it() {
    a_signal_reaches_the_command_and_the_lock_outlives_it(rustix::process::Signal::INT);
}

/// SIGHUP to `lockctl run` reaches the command; the lock is held until it ends.
#[test]
fn sighup_reaches_the_command_and_the_lock_outlives_it() {
    a_signal_reaches_the_command_and_the_lock_outlives_it(rustix::process::Signal::HUP);
}

/// SIGQUIT sent to `lockctl run`'s pid reaches the command; the lock is held until it ends.
#[test]
fn sigquit_reaches_the_command_and_the_lock_outlives_it() {
    a_signal_reaches_the_command_and_the_lock_outlives_it(rustix::process::Signal::QUIT);
}

/// A command killed by the signal lockctl forwarded makes lockctl exit 128+N, the lock released
/// cleanly. lockctl died of the signal itself before, leaving the command running.
#[test]
fn a_command_killed_by_a_forwarded_sigterm_gives_143() {
    let scratch = Scratch::new();
    let spec = scratch.spec();
    ok(&["create", &spec, "--capacity", "4"]);
    let pidfile = scratch.path("cmd.pid");
    let script = format!("echo $$ > {}; echo in; exec sleep 60", pidfile.display());
    let mut run = run_script(&spec, &["2"], &script);
    run.expect_in();
    let cmd = pid_in(&pidfile);
    let _orphans = Orphans(vec![cmd]);
    signal(run.pid(), rustix::process::Signal::TERM);
    let status = wait(&mut run.child, PROMPTLY);
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "lockctl run ended with {status}"
    );
    assert!(!running(cmd), "the command still runs");
    assert_eq!(status_json(&spec)["locks"], Value::Array(vec![]));
}

/// A signal that arrives while `run` waits for its locks makes it give up: the locks it took
/// are released cleanly (no dead holder left) and it exits 128+N. It died holding them before.
#[test]
fn a_signal_while_waiting_for_the_locks_releases_them_and_exits_128_plus_n() {
    let scratch = Scratch::new();
    let spec = scratch.spec();
    ok(&["create", &spec, "--capacity", "4"]);
    let mut holder = Run::start(&spec, &["1"], &[]);
    holder.expect_in();
    let waiter = run_script(&spec, &["2", "1"], "echo in");
    until(&spec, "the waiter waiting for lock 1 and holding 2", |s| {
        lock(s, 1).is_some_and(|l| l["waiters"][0]["pid"] == waiter.pid())
            && lock(s, 2).is_some_and(|l| l["holder"]["pid"] == waiter.pid())
    });
    let mut waiter = waiter;
    signal(waiter.pid(), rustix::process::Signal::TERM);
    let status = wait(&mut waiter.child, PROMPTLY);
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "the waiter ended with {status}"
    );
    let after = status_json(&spec);
    assert!(lock(&after, 2).is_none(), "lock 2 is still held: {after:#}");
    let out = output(&["run", &spec, "2", "--", "true"]);
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("died"),
        "lock 2 was released as a dead holder's"
    );
    let (status, _) = holder.finish();
    assert!(status.success());
}

/// A SIGKILLed `lockctl run` (whose locks are then released as a dead holder's) takes its
/// command with it. The command ran on unprotected before.
#[test]
fn a_sigkilled_run_takes_its_command_with_it() {
    let scratch = Scratch::new();
    let spec = scratch.spec();
    ok(&["create", &spec, "--capacity", "4"]);
    let pidfile = scratch.path("cmd.pid");
    let script = format!("echo $$ > {}; echo in; exec sleep 60", pidfile.display());
    let mut run = run_script(&spec, &["1"], &script);
    run.expect_in();
    let cmd = pid_in(&pidfile);
    let _orphans = Orphans(vec![cmd]);
    run.child.kill().expect("kill");
    run.child.wait().expect("reap");
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(cmd) {
        assert!(
            Instant::now() < deadline,
            "the command {cmd} still runs after its lockctl was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `output`, failing the test when lockctl takes longer than `bound` (it is killed then).
fn output_within(args: &[&str], bound: Duration) -> Output {
    let mut child = lockctl(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lockctl");
    let status = wait(&mut child, bound);
    let mut stderr = String::new();
    use std::io::Read;
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut stderr);
    }
    Output {
        status,
        stdout: Vec::new(),
        stderr: stderr.into_bytes(),
    }
}

/// `run` with an id given twice is refused at once, naming the id. It waited for itself forever
/// before, even with a deadlock timeout.
#[test]
fn run_refuses_an_id_given_twice() {
    let scratch = Scratch::new();
    let spec = scratch.spec();
    ok(&["create", &spec, "--capacity", "4"]);
    for ids in [&["1", "1"][..], &["0", "2", "0"][..]] {
        let mut args = vec!["run", &spec];
        args.extend_from_slice(ids);
        args.extend_from_slice(&["--deadlock-timeout", "100ms", "--", "true"]);
        let out = output_within(&args, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(2), "{ids:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("lock id {} is given twice", ids[0])),
            "{err}"
        );
    }
    assert_eq!(status_json(&spec)["locks"], Value::Array(vec![]));
}

/// An out-of-range id refuses the run without leaving a lock taken before it held by a dead
/// owner. Lock 0 was left held (the next taker got OwnerDied) before.
#[test]
fn an_out_of_range_id_leaves_no_lock_held() {
    let scratch = Scratch::new();
    let spec = scratch.spec();
    ok(&["create", &spec, "--capacity", "4"]);
    let err = fails(&["run", &spec, "0", "99", "--", "echo", "no"], 2);
    assert!(err.contains("99"), "{err}");
    assert_eq!(status_json(&spec)["locks"], Value::Array(vec![]));
    let out = output(&["run", &spec, "0", "--", "true"]);
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("died"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A lock lost while the command ran (its dir: store removed under it) makes `run` exit 8, or
/// with the command's own status when the command failed. It exited 0 before.
#[test]
fn a_lock_lost_under_run_exits_8() {
    let scratch = Scratch::new();
    let dir = scratch.path("d");
    std::fs::create_dir(&dir).expect("mkdir");
    if is_root() {
        std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
    let spec = format!("dir:{}", dir.display());
    let script = format!("rm -rf {0} && mkdir {0}", dir.display());
    let err = fails(&["run", &spec, "0", "--", "sh", "-c", &script], 8);
    assert!(err.contains("lost"), "{err}");
    let script = format!("rm -rf {0} && mkdir {0}; exit 3", dir.display());
    let out = output(&["run", &spec, "0", "--", "sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lost"));
}

/// `remove --yes` refuses a store with a live holder (exit 9, naming how many locks are held),
/// and removes it with `--force`. It removed it silently before.
#[test]
fn remove_refuses_a_store_in_use_unless_forced() {
    let scratch = Scratch::new();
    let spec = scratch.spec();
    ok(&["create", &spec, "--capacity", "4"]);
    let mut holder = Run::start(&spec, &["1"], &[]);
    holder.expect_in();
    let err = fails(&["remove", &spec, "--yes"], 9);
    assert!(err.contains("1 lock is held"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        lock(&status_json(&spec), 1).expect("lock 1")["holder"]["pid"],
        holder.pid()
    );
    let (status, _) = holder.finish();
    assert!(status.success());
    ok(&["remove", &spec, "--yes"]);
    ok(&["create", &spec, "--capacity", "4"]);
    let mut holder = Run::start(&spec, &["2"], &[]);
    holder.expect_in();
    ok(&["remove", &spec, "--yes", "--force"]);
    fails(&["status", &spec], 4);
    let _ = holder.finish();
}

/// A damaged store stays removable: the holders cannot be read, so `remove --yes` removes it.
#[test]
fn a_damaged_store_stays_removable() {
    let scratch = Scratch::new();
    let spec = scratch.spec();
    ok(&["create", &spec, "--capacity", "4"]);
    std::fs::write(scratch.path("store").join("table"), "garbage\n").expect("damage");
    fails(&["status", &spec], 5);
    ok(&["remove", &spec, "--yes"]);
    fails(&["status", &spec], 4);
}

const EXEC_HOLDER: &str = "LOCKCTL_CLI_HOLD_THEN_EXEC";

/// A dead holder's command line is not read from /proc: its pid may be another process's by
/// now. Here the pid lives on as `sleep` after the holder exec'd (and so lost its lock), and
/// status showed `sleep 60` as the dead holder's command before.
#[test]
fn a_dead_holders_command_line_is_not_read() {
    if let Ok(spec) = std::env::var(EXEC_HOLDER) {
        // The holder: take lock 1 and become `sleep`, which drops the lock's descriptor.
        use lockyard::Locker;
        let manager = lockyard::open(&spec).expect("open");
        let lock = manager.retrieve(lockyard::LockId(1)).expect("retrieve");
        let _ = lock.lock().expect("lock");
        let error = Command::new("sleep").arg("60").exec();
        panic!("exec sleep: {error}");
    }
    let scratch = Scratch::new();
    let spec = scratch.spec();
    ok(&["create", &spec, "--capacity", "4"]);
    let mut holder = Command::new(std::env::current_exe().expect("test binary"));
    holder
        .args([
            "--exact",
            "a_dead_holders_command_line_is_not_read",
            "--nocapture",
        ])
        .env(EXEC_HOLDER, &spec)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if is_root() {
        holder.uid(NOBODY).gid(NOBODY).env("HOME", "/");
    }
    let mut holder = holder.spawn().expect("spawn the holder");
    let _orphans = Orphans(vec![i32::try_from(holder.id()).expect("pid")]);
    let status = until(&spec, "lock 1 held by a dead holder", |s| {
        lock(s, 1).is_some_and(|l| l["holder"]["dead"] == true)
    });
    assert!(running(i32::try_from(holder.id()).expect("pid")));
    let l1 = lock(&status, 1).expect("lock 1");
    assert_eq!(l1["holder"]["pid"], u64::from(holder.id()));
    assert_eq!(l1["holder"]["cmdline"], Value::Null, "{l1:#}");
    let shown = ok(&["status", &spec]);
    assert!(
        shown.contains(&format!("dead   pid {} (?)", holder.id())),
        "{shown}"
    );
    assert!(!shown.contains("sleep"), "{shown}");
    let _ = holder.kill();
    let _ = holder.wait();
}

/// `--deadlock-timeout 0s` (detection off) is accepted on dir:, which has no detection to turn
/// off. It was refused as unsupported before.
#[test]
fn deadlock_timeout_zero_is_accepted_on_dir() {
    let scratch = Scratch::new();
    let dir = scratch.path("d");
    std::fs::create_dir(&dir).expect("mkdir");
    if is_root() {
        std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
    let spec = format!("dir:{}", dir.display());
    ok(&["run", &spec, "0", "--deadlock-timeout", "0s", "--", "true"]);
}

/// A reader that goes away (`lockctl status SPEC | true`) ends lockctl quietly with 0. It printed
/// "writing output: Broken pipe" and exited 2 before.
#[test]
fn a_broken_pipe_ends_lockctl_quietly() {
    let scratch = Scratch::new();
    let spec = scratch.spec();
    ok(&["create", &spec, "--capacity", "4"]);
    let (reader, writer) = rustix::pipe::pipe().expect("pipe");
    drop(reader);
    let mut child = lockctl(&["status", &spec])
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = wait(&mut child, PROMPTLY);
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(err, "");
}

/// An error line that cannot be written (stderr is /dev/full) does not panic: lockctl still
/// exits with the error's code. It panicked (exit 101) before.
#[test]
fn an_unwritable_stderr_does_not_panic() {
    let scratch = Scratch::new();
    let missing = format!("file:{}", scratch.path("none").display());
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let mut child = lockctl(&["status", &missing])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(full))
        .spawn()
        .expect("spawn");
    assert_eq!(wait(&mut child, PROMPTLY).code(), Some(4));
}

/// `lockctl` without a command says that a command is missing (exit 2). It printed the tool's
/// description as if it were the error before.
#[test]
fn no_command_says_a_command_is_missing() {
    let err = fails(&[], 2);
    assert!(err.contains("command"), "{err}");
    assert!(!err.contains("operator's tool"), "{err}");
}

/// U+2028 and U+2029 (line and paragraph separators) in a command line are escaped like the
/// other line ends. They reached the terminal raw before.
#[test]
fn unicode_line_separators_in_a_command_line_are_escaped() {
    let scratch = Scratch::new();
    let spec = scratch.spec();
    ok(&["create", &spec, "--capacity", "4"]);
    let mut holder = Run::start_as(Some("a\u{2028}b\u{2029}c"), &spec, &["1"], &[]);
    holder.expect_in();
    let shown = ok(&["status", &spec]);
    assert!(
        !shown.contains('\u{2028}') && !shown.contains('\u{2029}'),
        "{shown:?}"
    );
    assert!(shown.contains("(a\\u{2028}b\\u{2029}c run "), "{shown:?}");
    let (status, _) = holder.finish();
    assert!(status.success());
}

/// The spec the operator typed is escaped where lockctl prints it (the spec parser refuses
/// control characters, but not the characters that reorder a line or end it): in messages, in
/// error lines and in the status summary. It was printed raw before.
#[test]
fn reordering_characters_in_a_spec_are_escaped() {
    let scratch = Scratch::new();
    let spec = format!("file:{}", scratch.path("st\u{202e}o\u{2028}re").display());
    let mut out = ok(&["create", &spec, "--capacity", "1"]);
    out += &ok(&["status", &spec]);
    out += &fails(&["create", &spec, "--capacity", "1"], 2);
    out += &fails(&["remove", &spec], 2);
    let missing = format!("file:{}", scratch.path("gone\u{2066}").display());
    out += &fails(&["status", &missing], 4);
    assert!(
        !out.chars()
            .any(|c| (c.is_control() && c != '\n')
                || matches!(c, '\u{202e}' | '\u{2028}' | '\u{2066}')),
        "a control, line-ending or bidi character in {out:?}"
    );
    assert!(
        out.contains("st\\u{202e}o\\u{2028}re: capacity 1"),
        "{out:?}"
    );
    assert!(out.contains("gone\\u{2066}"), "{out:?}");
}

/// A store of one lock is created "with 1 lock". It said "with 1 locks" before.
#[test]
fn one_lock_is_singular() {
    let scratch = Scratch::new();
    let spec = scratch.spec();
    assert!(ok(&["create", &spec, "--capacity", "1"]).ends_with("with 1 lock\n"));
}

/// mem: stores live inside one process, so lockctl refuses them for every command (exit 3). It
/// reported creating one before, and the store vanished when lockctl exited.
#[test]
fn mem_specs_are_refused() {
    for args in [
        &["create", "mem:x", "--capacity", "2"][..],
        &["status", "mem:x"][..],
        &["remove", "mem:x", "--yes"][..],
        &["free", "mem:x", "0"][..],
        &["free-all", "mem:x", "--yes"][..],
        &["run", "mem:x", "0", "--", "true"][..],
    ] {
        let err = fails(args, 3);
        assert!(err.contains("one process"), "{err}");
    }
}

/// On dir:, which records no waiters, `status --json` gives a held lock's waiters as null
/// (unknown), not as an empty list (nobody waits).
#[test]
fn dir_waiters_are_null() {
    let scratch = Scratch::new();
    let dir = scratch.path("d");
    std::fs::create_dir(&dir).expect("mkdir");
    if is_root() {
        std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
    let spec = format!("dir:{}", dir.display());
    let mut holder = Run::start(&spec, &["0"], &[]);
    holder.expect_in();
    let status = status_json(&spec);
    let l0 = lock(&status, 0).expect("lock 0");
    assert_eq!(l0["holder"]["pid"], holder.pid());
    assert_eq!(l0["waiters"], Value::Null, "{l0:#}");
    assert_eq!(l0["holder"]["damaged"], false, "{l0:#}");
    let (status, _) = holder.finish();
    assert!(status.success());
}

/// A dir: lock whose record is damaged is held by nobody known: `status` says the record is
/// damaged (it showed a live hold by `pid ?`), in JSON as `damaged`.
#[test]
fn a_damaged_dir_record_is_reported_as_damaged() {
    let scratch = Scratch::new();
    let spec = format!("dir:{}", scratch.path("store").display());
    ok(&["create", &spec, "--capacity", "2"]);
    std::fs::write(
        scratch.path("store").join("1").join("lock0"),
        b"not a record\n",
    )
    .expect("write a damaged record");
    let status = status_json(&spec);
    let l1 = lock(&status, 1).expect("lock 1 is listed");
    assert_eq!(l1["holder"]["damaged"], true, "{l1:#}");
    assert_eq!(l1["holder"]["pid"], Value::Null, "{l1:#}");
    assert_eq!(l1["holder"]["dead"], false, "{l1:#}");
    assert!(lock(&status, 0).is_none(), "{status:#}");
    let text = ok(&["status", &spec]);
    let row = text
        .lines()
        .find(|l| l.starts_with("1 "))
        .unwrap_or_else(|| panic!("no row for lock 1: {text}"));
    assert!(row.contains("held"), "{row:?}");
    assert!(row.contains("record is damaged"), "{row:?}");
}

/// Ctrl-C at a terminal (SIGINT from the kernel to the whole foreground process group) reaches
/// the command once, not a second time through lockctl, and lockctl waits for the command and
/// exits with its status. lockctl died of it before, the command running on unprotected. The
/// terminal is a pty that script(1) runs lockctl on.
#[test]
fn ctrl_c_reaches_the_command_once_and_lockctl_waits_for_it() {
    let scratch = Scratch::new();
    let spec = scratch.spec();
    ok(&["create", &spec, "--capacity", "4"]);
    let pidfile = scratch.path("cmd.pid");
    // The command counts the SIGINTs it gets, for two seconds, and exits with the count. (It is
    // single-quoted for the shell script(1) runs it with, so it has no single quote itself.)
    let inner = format!(
        "echo $$ > {}; n=0; count() {{ n=$((n+1)); }}; trap count INT; echo in; i=0; \
         while [ $i -lt 40 ]; do sleep 0.05; i=$((i+1)); done; exit $n",
        pidfile.display()
    );
    let line = format!(
        "exec '{}' run '{spec}' 1 -- sh -c '{inner}'",
        env!("CARGO_BIN_EXE_lockctl")
    );
    let mut script = Command::new("script");
    script.args(["-qefc", &line, "/dev/null"]);
    if is_root() {
        script.uid(NOBODY).gid(NOBODY).env("HOME", "/");
    }
    let mut child = script
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn script(1)");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut run = Run { child, out };
    run.expect_in();
    let _orphans = Orphans(vec![pid_in(&pidfile)]);
    run.child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"\x03")
        .expect("Ctrl-C");
    let status = wait(&mut run.child, PROMPTLY);
    assert_eq!(
        status.code(),
        Some(1),
        "script(1) ended with {status}: lockctl did not exit with the command's status, or \
         the command got SIGINT more than once"
    );
    assert_eq!(status_json(&spec)["locks"], Value::Array(vec![]));
}

/// Every help text keeps to the 100 columns of the rest of the human output, on a pipe and when
/// the terminal says it is wider (`COLUMNS`, which clap reads first).
#[test]
fn help_fits_in_100_columns() {
    let commands: [&[&str]; 7] = [
        &["--help"],
        &["create", "--help"],
        &["remove", "--help"],
        &["status", "--help"],
        &["free", "--help"],
        &["free-all", "--help"],
        &["run", "--help"],
    ];
    for columns in [None, Some("300")] {
        for args in commands {
            let mut command = lockctl(args);
            if let Some(columns) = columns {
                command.env("COLUMNS", columns);
            }
            let out = command
                .stdin(Stdio::null())
                .output()
                .expect("run lockctl --help");
            assert!(out.status.success(), "lockctl {args:?}: {}", out.status);
            let text = String::from_utf8(out.stdout).expect("utf-8 help");
            assert_fits_100_columns(&text, &format!("{args:?} with COLUMNS {columns:?}"));
        }
    }
}
