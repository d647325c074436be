//! Child processes: the test binary re-executes itself in a role and reports over a pipe.
//!
//! The parent sets [`ROLE_ENV`] and the parameters below; [`crate::run`] sees the variable and
//! runs the role instead of the test harness. Children talk line by line: the parent reads their
//! stdout through [`ChildProcess::expect`] with a timeout and writes commands to their stdin.
//! Every wait is bounded, and a child is SIGKILLed and reaped when its handle is dropped.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use lock_api::{Acquired, Error, LockId, Locker, Manager, Store};

use crate::{Backend, Failed};

/// The environment variable that turns the test binary into a child in the named role.
pub const ROLE_ENV: &str = "LOCKYARD_CONFORMANCE_ROLE";
const STORE_ENV: &str = "LOCKYARD_CONFORMANCE_STORE";
const CAPACITY_ENV: &str = "LOCKYARD_CONFORMANCE_CAPACITY";
const ID_ENV: &str = "LOCKYARD_CONFORMANCE_ID";
const COUNT_ENV: &str = "LOCKYARD_CONFORMANCE_COUNT";
const COUNTER_ENV: &str = "LOCKYARD_CONFORMANCE_COUNTER";
const DEADLOCK_ENV: &str = "LOCKYARD_CONFORMANCE_DEADLOCK_MS";
const WAIT_ENV: &str = "LOCKYARD_CONFORMANCE_WAIT_MS";

/// How long a child in a waiting role lives at most if nobody tells it to stop.
const CHILD_LIFETIME: Duration = Duration::from_secs(120);

/// What a child process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Echoes every stdin line back as `echo <line>` until EOF (machinery self-test).
    Echo,
    /// Prints `ready`, then says nothing until killed or its lifetime ends (machinery self-test).
    Silent,
    /// Opens the store, locks `id`, prints `locked clean|owner-died`, unlocks on an `unlock`
    /// line (printing `unlocked`), and exits at stdin EOF.
    Hold,
    /// Like `Hold`, but never unlocks: it waits to be SIGKILLed.
    HoldThenDie,
    /// Locks `id` `count` times, each time incrementing the decimal counter in the file
    /// `counter` non-atomically (read, yield, write), then prints `done`.
    Hammer,
    /// Prints `ready`, waits for `go`, allocates until `Exhausted` or `count` ids, printing
    /// `id N` for each, then `done`; keeps its allocations and exits at stdin EOF.
    Allocate,
    /// Prints `ready`, waits for `go`, calls `open_or_create`, prints `created` or `opened`,
    /// allocates one id and prints `id N` (or, where the backend does not allocate, try-locks
    /// lock 0 and prints `lock got` or `lock busy`), then exits at stdin EOF.
    OpenOrCreate,
    /// One member of a would-be deadlock: sets the deadlock timeout, locks `id`, prints
    /// `holding`, waits for `go`, then locks `count` (with `lock`, or `try_lock_for` the wait
    /// time when one is given) and prints `acquired`, `deadlock N <cycle>` or `timeout`;
    /// then releases what it holds, prints `released` and exits.
    Cycle,
}

impl Role {
    const ALL: [(Role, &'static str); 8] = [
        (Role::Echo, "echo"),
        (Role::Silent, "silent"),
        (Role::Hold, "hold"),
        (Role::HoldThenDie, "hold-then-die"),
        (Role::Hammer, "hammer"),
        (Role::Allocate, "allocate"),
        (Role::OpenOrCreate, "open-or-create"),
        (Role::Cycle, "cycle"),
    ];

    fn name(self) -> &'static str {
        Role::ALL
            .iter()
            .find(|(r, _)| *r == self)
            .map(|(_, n)| *n)
            .unwrap_or("unknown")
    }

    fn from_name(name: &str) -> Option<Role> {
        Role::ALL.iter().find(|(_, n)| *n == name).map(|(r, _)| *r)
    }
}

/// The parameters of a child's role.
#[derive(Debug, Clone, Default)]
pub struct Params {
    /// The store to open.
    pub store: String,
    /// The capacity to open it with.
    pub capacity: u32,
    /// The lock to work on.
    pub id: u32,
    /// How many iterations or allocations.
    pub count: u32,
    /// The shared counter file of the `Hammer` role.
    pub counter: Option<PathBuf>,
    /// The deadlock timeout the `Cycle` role sets, in milliseconds.
    pub deadlock_ms: u32,
    /// The `Cycle` role's wait: `try_lock_for` this many milliseconds; 0 means `lock`.
    pub wait_ms: u32,
}

/// A command that runs `program` in a pid namespace of its own (and a user namespace, so no
/// privilege is needed), through `unshare(1)` from util-linux: `program` is pid 1 there, and
/// killing the command's process (unshare's) kills it too. Add `program`'s arguments and
/// environment to the command returned. For tests of how a backend names a process it cannot
/// see by its pid.
#[must_use]
pub fn in_new_pid_namespace(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("unshare");
    command
        .args([
            "--user",
            "--map-root-user",
            "--pid",
            "--fork",
            "--kill-child",
        ])
        .arg(program);
    command
}

/// A running child process, usually the test binary re-executed in some role.
///
/// Backends' own tests reuse it for their own roles through [`ChildProcess::start`].
#[derive(Debug)]
pub struct ChildProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    label: String,
}

impl ChildProcess {
    /// Starts the test binary again in one of the suite's roles.
    ///
    /// # Errors
    ///
    /// The binary cannot be found or started.
    pub fn spawn(role: Role, params: &Params) -> Result<ChildProcess, Failed> {
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command
            .env(ROLE_ENV, role.name())
            .env(STORE_ENV, &params.store)
            .env(CAPACITY_ENV, params.capacity.to_string())
            .env(ID_ENV, params.id.to_string())
            .env(COUNT_ENV, params.count.to_string());
        if let Some(counter) = &params.counter {
            command.env(COUNTER_ENV, counter);
        }
        command
            .env(DEADLOCK_ENV, params.deadlock_ms.to_string())
            .env(WAIT_ENV, params.wait_ms.to_string());
        ChildProcess::start(command, role.name(), None)
    }

    /// Starts `command` with piped stdin and stdout (stderr is inherited).
    ///
    /// `label` names the child in failure messages. With a `marker`, only stdout lines
    /// containing it are delivered, from just after the marker: a child running under the
    /// libtest harness prints its own lines around the role's (`test child ... @ ready`).
    ///
    /// # Errors
    ///
    /// The command cannot be started.
    pub fn start(
        mut command: Command,
        label: &str,
        marker: Option<&'static str>,
    ) -> Result<ChildProcess, Failed> {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command
            .spawn()
            .map_err(|e| Failed(format!("cannot start {label} child: {e}")))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Failed("child has no stdout pipe".into()))?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let delivered = match marker {
                    None => Some(line.as_str()),
                    Some(marker) => line.split_once(marker).map(|(_, rest)| rest),
                };
                if let Some(text) = delivered
                    && tx.send(text.to_string()).is_err()
                {
                    break;
                }
            }
        });
        Ok(ChildProcess {
            child,
            stdin,
            lines,
            label: label.to_string(),
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the child prints, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// The time elapsed, or the child closed its stdout (exited).
    pub fn next_line(&mut self, timeout: Duration) -> Result<String, Failed> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => Err(Failed(format!(
                "child {} ({}) printed nothing within {timeout:?}",
                self.pid(),
                self.label
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(Failed(format!(
                "child {} ({}) exited early: {:?}",
                self.pid(),
                self.label,
                self.child.try_wait()
            ))),
        }
    }

    /// Waits at most `timeout` for a line starting with `prefix`; returns the rest of it.
    /// A line starting with `error` fails at once with the child's message.
    ///
    /// # Errors
    ///
    /// The child reported an error, printed something else, exited, or the time elapsed.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> Result<String, Failed> {
        let line = self.next_line(timeout)?;
        match line.strip_prefix(prefix) {
            Some(rest) => Ok(rest.trim().to_string()),
            None => Err(Failed(format!(
                "child {} ({}) said {line:?}, expected {prefix:?}",
                self.pid(),
                self.label
            ))),
        }
    }

    /// Sends one line to the child's stdin.
    ///
    /// # Errors
    ///
    /// The child's stdin is closed.
    pub fn send(&mut self, line: &str) -> Result<(), Failed> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| Failed("child stdin already closed".into()))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Closes the child's stdin: roles that wait for EOF then exit.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends SIGKILL and reaps the child.
    ///
    /// # Errors
    ///
    /// The signal could not be sent or the child was not reaped within 10 s.
    pub fn sigkill(&mut self) -> Result<ExitStatus, Failed> {
        kill(self.pid(), rustix::process::Signal::KILL)?;
        self.wait(Duration::from_secs(10))
    }

    /// Sends `signal` to the child without waiting.
    ///
    /// # Errors
    ///
    /// The signal could not be sent.
    pub fn signal(&self, signal: rustix::process::Signal) -> Result<(), Failed> {
        kill(self.pid(), signal)
    }

    /// Waits at most `timeout` for the child to exit.
    ///
    /// # Errors
    ///
    /// It is still running after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, Failed> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Failed(format!(
                    "child {} ({}) still running after {timeout:?}",
                    self.pid(),
                    self.label
                )));
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Closes stdin and waits at most `timeout` for a successful exit.
    ///
    /// # Errors
    ///
    /// The child is still running, or exited with a failure.
    pub fn finish(&mut self, timeout: Duration) -> Result<(), Failed> {
        self.close_stdin();
        let status = self.wait(timeout)?;
        if status.success() {
            Ok(())
        } else {
            Err(Failed(format!(
                "child {} ({}) exited with {status}",
                self.pid(),
                self.label
            )))
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn kill(pid: u32, signal: rustix::process::Signal) -> Result<(), Failed> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| Failed(format!("bad pid {pid}")))?;
    rustix::process::kill_process(pid, signal)
        .map_err(|e| Failed(format!("kill({pid:?}, {signal:?}): {e}")))
}

/// Runs the role named `role` in this (child) process; see [`Role`].
pub(crate) fn main<B: Backend>(backend: &B, role: &str) -> ExitCode {
    let Some(role) = Role::from_name(role) else {
        eprintln!("lock-conformance: unknown child role {role:?}");
        return ExitCode::from(2);
    };
    match run_role(backend, role) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failed) => {
            say(&format!("error {failed}"));
            ExitCode::from(1)
        }
    }
}

fn param(name: &str) -> Result<String, Failed> {
    std::env::var(name).map_err(|_| Failed(format!("child started without {name}")))
}

fn number(name: &str) -> Result<u32, Failed> {
    param(name)?
        .parse()
        .map_err(|e| Failed(format!("{name}: {e}")))
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn acquired_word(acquired: Acquired) -> &'static str {
    match acquired {
        Acquired::Clean => "clean",
        Acquired::OwnerDied => "owner-died",
    }
}

/// Reads stdin lines until one equals `want` (returns true) or EOF (returns false).
fn wait_for_line(want: &str) -> bool {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        match line {
            Ok(line) if line.trim() == want => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// Opens the store the parent named, through its spec.
fn open<B: Backend>(backend: &B) -> Result<B::Manager, Failed> {
    Ok(B::Manager::open_spec(
        &backend.parsed_spec(&param(STORE_ENV)?)?,
    )?)
}

fn run_role<B: Backend>(backend: &B, role: Role) -> Result<(), Failed> {
    match role {
        Role::Echo => {
            for line in std::io::stdin().lock().lines() {
                say(&format!("echo {}", line?));
            }
            Ok(())
        }
        Role::Silent => {
            say("ready");
            thread::sleep(CHILD_LIFETIME);
            Ok(())
        }
        Role::Hold | Role::HoldThenDie => {
            let manager = open(backend)?;
            let lock = manager.retrieve(LockId(number(ID_ENV)?))?;
            let acquired = lock.try_lock_for(Duration::from_secs(60))?;
            say(&format!("locked {}", acquired_word(acquired)));
            if role == Role::HoldThenDie {
                thread::sleep(CHILD_LIFETIME);
                return Err(Failed("hold-then-die was never killed".into()));
            }
            if wait_for_line("unlock") {
                lock.unlock()?;
                say("unlocked");
                wait_for_line("exit");
            } else {
                lock.unlock()?;
            }
            Ok(())
        }
        Role::Hammer => {
            let manager = open(backend)?;
            let lock = manager.retrieve(LockId(number(ID_ENV)?))?;
            let counter = PathBuf::from(param(COUNTER_ENV)?);
            for _ in 0..number(COUNT_ENV)? {
                let _ = lock.try_lock_for(Duration::from_secs(60))?;
                let value = read_counter(&counter)?;
                thread::yield_now();
                write_counter(&counter, value + 1)?;
                lock.unlock()?;
            }
            say("done");
            Ok(())
        }
        Role::Allocate => {
            let manager = open(backend)?;
            say("ready");
            if !wait_for_line("go") {
                return Ok(());
            }
            let count = number(COUNT_ENV)?;
            let mut kept = Vec::new();
            for _ in 0..count {
                match manager.allocate() {
                    Ok(lock) => {
                        say(&format!("id {}", lock.id()));
                        kept.push(lock);
                    }
                    Err(Error::Exhausted { .. }) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            say("done");
            wait_for_line("exit");
            Ok(())
        }
        Role::OpenOrCreate => {
            let store = param(STORE_ENV)?;
            let capacity = number(CAPACITY_ENV)?;
            say("ready");
            if !wait_for_line("go") {
                return Ok(());
            }
            let (manager, created) =
                B::Manager::open_or_create_spec(&backend.parsed_spec(&store)?, capacity)?;
            say(if created { "created" } else { "opened" });
            // Prove the processes share one table: distinct allocations where the backend
            // allocates, otherwise exactly one of them can hold lock 0.
            let lock = match manager.allocate() {
                Ok(lock) => {
                    say(&format!("id {}", lock.id()));
                    lock
                }
                Err(Error::Unsupported(_)) => {
                    let lock = manager.retrieve(LockId(0))?;
                    let got = lock.try_lock()?.is_some();
                    say(if got { "lock got" } else { "lock busy" });
                    lock
                }
                Err(e) => return Err(e.into()),
            };
            wait_for_line("exit");
            drop(lock);
            Ok(())
        }
        Role::Cycle => {
            let manager = open(backend)?;
            let wait = match number(WAIT_ENV)? {
                0 => None,
                ms => Some(Duration::from_millis(ms.into())),
            };
            cycle_member(
                &manager,
                LockId(number(ID_ENV)?),
                LockId(number(COUNT_ENV)?),
                Duration::from_millis(number(DEADLOCK_ENV)?.into()),
                wait,
                &mut say,
                &mut || wait_for_line("go"),
            )
        }
    }
}

/// What the `Cycle` role does, in a child process or (for in-process backends) on a thread of
/// a second owner: see [`Role::Cycle`].
///
/// # Errors
///
/// Any error but the ones the role reports (`Deadlock`, `Timeout`).
pub fn cycle_member<M: Manager>(
    manager: &M,
    first: LockId,
    second: LockId,
    deadlock_timeout: Duration,
    wait: Option<Duration>,
    report: &mut dyn FnMut(&str),
    go: &mut dyn FnMut() -> bool,
) -> Result<(), Failed> {
    manager.set_deadlock_timeout(deadlock_timeout)?;
    let first = manager.retrieve(first)?;
    let second = manager.retrieve(second)?;
    let _ = first.try_lock_for(Duration::from_secs(60))?;
    report("holding");
    if !go() {
        first.unlock()?;
        return Ok(());
    }
    let outcome = match wait {
        None => second.lock(),
        Some(wait) => second.try_lock_for(wait),
    };
    match outcome {
        Ok(acquired) => {
            report(match acquired {
                Acquired::Clean => "acquired",
                Acquired::OwnerDied => "acquired owner-died",
            });
            second.unlock()?;
        }
        Err(Error::Deadlock { cycle }) => report(&format!("deadlock {} {cycle}", cycle.0.len())),
        Err(Error::Timeout) => report("timeout"),
        Err(e) => return Err(e.into()),
    }
    first.unlock()?;
    report("released");
    Ok(())
}

/// Reads the decimal counter in `path` (a missing file counts as 0).
///
/// # Errors
///
/// The file cannot be read or does not hold a number.
pub fn read_counter(path: &Path) -> Result<u64, Failed> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(0),
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|e| Failed(format!("counter {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Overwrites the decimal counter in `path` in place (not atomically: that is the point).
///
/// # Errors
///
/// The file cannot be written.
pub fn write_counter(path: &Path, value: u64) -> Result<(), Failed> {
    std::fs::write(path, format!("{value:020}"))?;
    Ok(())
}

/// Requires that the planted-bug test `name` of the current test binary (a full path,
/// `module::test`) is caught by loom as a deadlock: runs it in a child process with `env` set
/// ([`run_test_in_child`], at most five minutes) and panics, naming `what`, unless the child
/// failed reporting a deadlock. Does nothing when `env` is set, so that the check calling it
/// passes in the child, where only the planted test runs.
///
/// # Panics
///
/// When the planted bug was not caught, or the child could not be run.
pub fn assert_caught_as_deadlock(name: &str, env: &str, what: &str) {
    if std::env::var_os(env).is_some() {
        return;
    }
    let (status, text) = run_test_in_child(name, env, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("the planted-bug child {name}: {e}"));
    assert!(
        !status.success() && text.contains("deadlock"),
        "{what} was not caught as a lost wake-up ({status}): {text}"
    );
}

/// Runs the libtest test `name` (a full path, `module::test`) of the current test binary in a
/// child process with the environment variable `env` set to `1`, and returns how it exited and
/// everything it printed. For a check that must end the process rather than fail in it, such
/// as a planted bug that loom reports as a deadlock (loom aborts on one): the test named looks at
/// `env` and runs the planted check only in the child.
///
/// # Errors
///
/// `Failed` when the child cannot be started or read, or has not ended after `limit` (it is
/// then killed and reaped).
pub fn run_test_in_child(
    name: &str,
    env: &str,
    limit: Duration,
) -> Result<(ExitStatus, String), Failed> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(env, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Drained as they come, so a child that prints more than a pipe holds is not stalled.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Failed(format!("test {name} ran for more than {limit:?}")));
        }
        thread::sleep(Duration::from_millis(50));
    };
    let mut text = String::new();
    for out in [stdout, stderr] {
        let bytes = out
            .join()
            .map_err(|_| Failed(format!("reading the output of test {name}")))?;
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    Ok((status, text))
}
