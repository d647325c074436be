//! Child processes: the bench binary re-executed in a role, talking line by line over pipes.
//!
//! The parent sets [`ROLE_ENV`] and the role's parameters; `main` sees the variable and runs the
//! role instead of criterion. Every read is bounded, and a child is SIGKILLed and reaped when its
//! handle is dropped; a child whose parent died sees its stdin close and exits.

use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

/// The role a re-executed bench binary plays.
pub(crate) const ROLE_ENV: &str = "LOCKYARD_BENCH_ROLE";
/// The subject (backend or peer) it works on.
pub(crate) const SUBJECT_ENV: &str = "LOCKYARD_BENCH_SUBJECT";
/// Where that subject's store is (a spec, or a path for peers).
pub(crate) const STORE_ENV: &str = "LOCKYARD_BENCH_STORE";
/// The shared control file of the contention group.
pub(crate) const CTL_ENV: &str = "LOCKYARD_BENCH_CTL";
/// How many locks the store has.
pub(crate) const LOCKS_ENV: &str = "LOCKYARD_BENCH_LOCKS";
/// The worker's index (seeds its random ids).
pub(crate) const INDEX_ENV: &str = "LOCKYARD_BENCH_INDEX";

/// A running child.
#[derive(Debug)]
pub(crate) struct Child {
    child: std::process::Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    label: String,
}

impl Child {
    /// Starts this binary in `role` with the given environment.
    pub(crate) fn spawn(role: &str, env: &[(&str, String)]) -> Child {
        let exe = std::env::current_exe().expect("current exe");
        let mut command = Command::new(exe);
        command
            .env(ROLE_ENV, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {role}: {e}"));
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let label = format!("{role} child {}", child.id());
        Child {
            stdin: child.stdin.take(),
            child,
            lines,
            label,
        }
    }

    /// The child's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one line.
    pub(crate) fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("child stdin open");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: write {line:?}: {e}", self.label));
    }

    /// The next line, which must start with `prefix`; panics after `timeout`.
    pub(crate) fn expect(&self, prefix: &str, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(line) if line.starts_with(prefix) => line,
            Ok(line) => panic!("{}: expected {prefix:?}, got {line:?}", self.label),
            Err(e) => panic!("{}: no {prefix:?} within {timeout:?}: {e}", self.label),
        }
    }

    /// SIGKILLs the child now (it is reaped on drop).
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a role parameter.
pub(crate) fn param(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("role parameter {name} missing"))
}

/// Exits this child when its stdin closes (the parent is gone or done with it).
pub(crate) fn exit_on_stdin_eof() {
    std::thread::spawn(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
        std::process::exit(0);
    });
}
