//! Child processes for the integration tests: the test binary re-executes itself as a child.
//!
//! A test binary that uses this module defines `#[test] fn child_entry() { common::child_entry() }`;
//! in a normal run it does nothing, and in a child (the `CHILD_ENV` variable names a role) it runs
//! the role and exits. Children speak lines starting with `@ ` on stdout; the parent drives them
//! through lock-conformance's `ChildProcess`, which reads with a timeout and SIGKILLs and reaps
//! a child when dropped, so no test leaves a process behind.
#![allow(dead_code)] // each test binary uses a different part of this module.

use std::io::BufRead;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use lock_conformance::child::ChildProcess;
use lock_file::{Acquired, Error, FileManager, LockId, LockState, Locker, Manager};

/// The variable naming the role of a child.
const CHILD_ENV: &str = "LOCK_FILE_TEST_CHILD";
const STORE_ENV: &str = "LOCK_FILE_TEST_STORE";
const ARG_ENV: &str = "LOCK_FILE_TEST_ARG";

/// How long any child lives at most.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);

/// How long the parent waits for a child's next line or its exit.
pub(crate) const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`snapshot_until`] polls.
const SNAPSHOT_WITHIN: Duration = Duration::from_secs(20);

/// Polls `snapshot()` until `done` accepts it, within 20 s.
pub(crate) fn snapshot_until(
    manager: &FileManager,
    done: impl Fn(&[LockState]) -> bool,
) -> Vec<LockState> {
    let deadline = Instant::now() + SNAPSHOT_WITHIN;
    loop {
        let snapshot = manager.snapshot().expect("snapshot");
        if done(&snapshot) {
            return snapshot;
        }
        assert!(Instant::now() < deadline, "never came: {snapshot:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Ends the whole test process with a message if it is still running `limit` from now, unless
/// the returned guard was dropped first: for a test whose failure would be a wait that never
/// ends (a deadlock nobody detects), so that it fails instead of hanging the run. Exiting skips
/// destructors, so it removes the test's temporary directory `dir` first.
#[must_use = "the watchdog stands down when the guard is dropped"]
pub(crate) fn watchdog(what: &'static str, limit: Duration, dir: &Path) -> Watchdog {
    let (stand_down, stood_down) = mpsc::channel::<()>();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = stood_down.recv_timeout(limit) {
            eprintln!("{what}: still running after {limit:?}; ending the test process");
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    eprintln!("could not remove {}: {e}", dir.display());
                }
                _ => {}
            }
            std::process::exit(101);
        }
    });
    Watchdog(stand_down)
}

/// See [`watchdog`].
pub(crate) struct Watchdog(mpsc::Sender<()>);

/// The child's next line, which must come within `LINE_TIMEOUT`.
pub(crate) fn line(child: &mut ChildProcess) -> String {
    child.next_line(LINE_TIMEOUT).expect("child line")
}

/// Starts the test binary as a child in `role` on `store`, with an extra argument.
pub(crate) fn spawn(role: &str, store: &Path, arg: &str) -> ChildProcess {
    spawn_with(role, store, arg, |_| {})
}

/// As `spawn`, letting the caller adjust the command (for example its uid).
pub(crate) fn spawn_with(
    role: &str,
    store: &Path,
    arg: &str,
    adjust: impl FnOnce(&mut Command),
) -> ChildProcess {
    let exe = std::env::current_exe().expect("test binary path");
    let mut command = Command::new(exe);
    adjust(&mut command);
    start(command, role, store, arg)
}

/// As `spawn`, in a pid namespace of its own (`lock_conformance::child::in_new_pid_namespace`):
/// the child is pid 1 there. Killing the returned process (unshare's) kills the child too.
pub(crate) fn spawn_in_pid_namespace(role: &str, store: &Path, arg: &str) -> ChildProcess {
    let exe = std::env::current_exe().expect("test binary path");
    let command = lock_conformance::child::in_new_pid_namespace(exe);
    start(command, role, store, arg)
}

/// Starts `command` (the test binary, or a program that runs it) as a child in `role`.
fn start(mut command: Command, role: &str, store: &Path, arg: &str) -> ChildProcess {
    command
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, role)
        .env(STORE_ENV, store)
        .env(ARG_ENV, arg);
    // The harness may print "test child_entry ... " on the same line as the role's first words.
    ChildProcess::start(command, role, Some("@ ")).expect("spawn child")
}

/// What a child prints for an error: its variant and message.
fn describe(e: &Error) -> String {
    let kind = match e {
        Error::Io { source, .. } => format!("Io {:?}", source.kind()),
        Error::Incompatible { .. } => "Incompatible".into(),
        Error::Corrupt { .. } => "Corrupt".into(),
        Error::NotFound { .. } => "NotFound".into(),
        other => format!("{other:?}"),
    };
    format!("err {kind} | {e}")
}

fn say(line: impl std::fmt::Display) {
    println!("@ {line}");
}

/// Reads stdin lines on a thread; the receiver closes at EOF.
fn stdin_lines() -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Runs the child's role if this process is a child; returns at once otherwise.
pub(crate) fn child_entry() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = std::env::var_os(STORE_ENV).expect("store path");
    let arg = std::env::var(ARG_ENV).unwrap_or_default();
    // A child never outlives its budget, whatever its parent does.
    std::thread::spawn(|| {
        std::thread::sleep(CHILD_LIFETIME);
        std::process::exit(3);
    });
    let code = match role.as_str() {
        "open" => {
            match FileManager::open(&store) {
                Ok(_) => say("opened"),
                Err(e) => say(describe(&e)),
            }
            0
        }
        "remove" => {
            match FileManager::remove(&store) {
                Ok(()) => say("removed"),
                Err(e) => say(describe(&e)),
            }
            0
        }
        "hold" => hold(Path::new(&store), &arg),
        "hammer" => hammer(Path::new(&store), &arg),
        "churn" => churn(Path::new(&store)),
        "allocate-all" => allocate_all(Path::new(&store)),
        "own-sigurg" => own_sigurg(Path::new(&store), &arg),
        "watchdog" => watchdog_fires(),
        other => {
            say(format!("unknown role {other}"));
            2
        }
    };
    std::process::exit(code);
}

/// Makes a temporary directory, hands it to a watchdog of 200 ms, says `dir PATH`, and then
/// hangs (for the watchdog test: the process must end with 101 and the directory be gone).
fn watchdog_fires() -> i32 {
    let dir = tempfile::tempdir().expect("temp dir");
    let _watchdog = watchdog(
        "the watchdog test's hang",
        Duration::from_millis(200),
        dir.path(),
    );
    say(format!("dir {}", dir.path().display()));
    std::thread::sleep(CHILD_LIFETIME);
    0
}

/// Locks the id in `arg`, says `locked clean|owner-died`, unlocks on `unlock`, exits at EOF.
fn hold(store: &Path, arg: &str) -> i32 {
    let id: u32 = arg.parse().expect("id");
    let manager = FileManager::open(store).expect("open store");
    let lock = manager.retrieve(LockId(id)).expect("retrieve");
    match lock.lock() {
        Ok(Acquired::Clean) => say("locked clean"),
        Ok(Acquired::OwnerDied) => say("locked owner-died"),
        Err(e) => {
            say(describe(&e));
            return 1;
        }
    }
    for line in stdin_lines() {
        if line == "unlock" {
            match lock.unlock() {
                Ok(()) => say("unlocked"),
                Err(e) => say(describe(&e)),
            }
        }
    }
    0
}

/// Hammers the locks `0..n` (`arg` = n) until killed or stdin closes. Inside each critical
/// section it checks the lock's occupant file: a `Clean` acquisition must find it empty; it then
/// writes its pid there, and empties it before unlocking. A holder killed in between leaves its
/// pid for the next one, who must have been told `OwnerDied`.
fn hammer(store: &Path, arg: &str) -> i32 {
    let n: u32 = arg.parse().expect("lock count");
    let manager = FileManager::open(store).expect("open store");
    let locks: Vec<_> = (0..n)
        .map(|id| manager.retrieve(LockId(id)).expect("retrieve"))
        .collect();
    let occupants: Vec<_> = (0..n)
        .map(|id| store.parent().expect("root").join(format!("occupant-{id}")))
        .collect();
    let stop = stdin_lines();
    say("ready");
    let me = std::process::id().to_string();
    let mut round = 0u64;
    loop {
        if matches!(stop.try_recv(), Err(mpsc::TryRecvError::Disconnected)) {
            return 0;
        }
        round += 1;
        let i = (round % u64::from(n)) as usize;
        let how = match locks[i].lock() {
            Ok(how) => how,
            Err(e) => {
                say(describe(&e));
                return 1;
            }
        };
        let found = std::fs::read_to_string(&occupants[i]).unwrap_or_default();
        if how == Acquired::OwnerDied {
            say(format!("owner-died {i}"));
        } else if !found.is_empty() {
            say(format!(
                "violation lock {i}: clean acquisition found occupant {found}"
            ));
        }
        std::fs::write(&occupants[i], &me).expect("write occupant");
        std::thread::yield_now();
        let now = std::fs::read_to_string(&occupants[i]).unwrap_or_default();
        if now != me {
            say(format!(
                "violation lock {i}: occupant {now} inside my critical section"
            ));
        }
        std::fs::write(&occupants[i], "").expect("clear occupant");
        if let Err(e) = locks[i].unlock() {
            say(describe(&e));
            return 1;
        }
    }
}

/// Allocates and frees in a loop until killed or stdin closes (the allocator under SIGKILL).
fn churn(store: &Path) -> i32 {
    let manager = FileManager::open(store).expect("open store");
    let stop = stdin_lines();
    say("ready");
    loop {
        if matches!(stop.try_recv(), Err(mpsc::TryRecvError::Disconnected)) {
            return 0;
        }
        match manager.allocate() {
            Ok(lock) => {
                if let Err(e) = lock.free() {
                    say(describe(&e));
                    return 1;
                }
            }
            Err(Error::Exhausted { .. }) => {}
            Err(e) => {
                say(describe(&e));
                return 1;
            }
        }
    }
}

/// Says `available N`, waits for `go`, then allocates until allocation fails: says `id K` for
/// every id it got, then `end` and the error, then `available N` again; exits at EOF.
fn allocate_all(store: &Path) -> i32 {
    let manager = FileManager::open(store).expect("open store");
    match manager.available() {
        Ok(n) => say(format!("available {}", n.unwrap_or(u32::MAX))),
        Err(e) => say(describe(&e)),
    }
    let input = stdin_lines();
    if input.recv().as_deref() != Ok("go") {
        return 1;
    }
    let mut kept = Vec::new();
    loop {
        match manager.allocate() {
            Ok(lock) => {
                say(format!("id {}", lock.id()));
                kept.push(lock);
            }
            Err(e) => {
                say(format!("end {}", describe(&e)));
                break;
            }
        }
    }
    match manager.available() {
        Ok(n) => say(format!("available {}", n.unwrap_or(u32::MAX))),
        Err(e) => say(describe(&e)),
    }
    // Wait for EOF, so the parent decides when this child goes.
    while input.recv().is_ok() {}
    0
}

/// The handler of a program that uses `SIGURG` itself.
extern "C" fn programs_own_handler(_: libc::c_int) {}

/// Installs its own `SIGURG` handler, as a program that uses the signal would, then waits `arg`
/// ms for lock 0 with `try_lock_for` and says `timeout` or `locked`, then `handler kept` or
/// `handler replaced`.
#[allow(unsafe_code)] // installing and reading a signal handler goes through libc.
fn own_sigurg(store: &Path, arg: &str) -> i32 {
    let ms: u64 = arg.parse().expect("milliseconds");
    let handler = programs_own_handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: a zeroed `struct sigaction` is valid; the handler does nothing, so it is
    // async-signal-safe; both pointers are valid for the call.
    let installed = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGURG, &action, std::ptr::null_mut())
    };
    assert_eq!(installed, 0, "sigaction");
    let manager = FileManager::open(store).expect("open store");
    let lock = manager.retrieve(LockId(0)).expect("retrieve");
    match lock.try_lock_for(Duration::from_millis(ms)) {
        Err(Error::Timeout) => say("timeout"),
        Ok(_) => say("locked"),
        Err(e) => say(describe(&e)),
    }
    // SAFETY: a query into a zeroed, valid `struct sigaction`.
    let now = unsafe {
        let mut now: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGURG, std::ptr::null(), &mut now);
        now.sa_sigaction
    };
    say(if now == handler {
        "handler kept"
    } else {
        "handler replaced"
    });
    0
}
