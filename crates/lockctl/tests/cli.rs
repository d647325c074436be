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
    for line in human.lines() {
        assert!(
            line.chars().count() <= 100,
            "line over 100 columns: {line:?}"
        );
    }
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
        let _ = output(&["remove", &self.0, "--yes"]);
    }
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
