//! Child processes: the bench binary re-executed in a role, talking line by line over pipes.
//!
//! The parent sets [`ROLE_ENV`] and the role's parameters; `main` sees the variable and runs the
//! role instead of criterion. Every read is bounded, and a child is SIGKILLed and reaped when its
//! handle is dropped; a child whose parent died sees its stdin close and exits.
//!
//! A [`Crew`] is several children in one role that share a control mapping and start each round
//! together, at its start line.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use crate::Ctx;
use crate::subject::{Prepared, Subject};
use crate::sys::{Shared, cpu_and_switches, open_start};

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

/// The control mapping of a [`Crew`]: the start line (a `u32` that counts the rounds started).
pub(crate) const CTL_START: usize = 0;
/// The control mapping of a [`Crew`]: the contention group's ticket pool (`u64`).
pub(crate) const CTL_REMAINING: usize = 8;
/// The control mapping of a [`Crew`]: when the contention group's last ticket was taken (`u64`,
/// CLOCK_MONOTONIC ns).
pub(crate) const CTL_FINISHED: usize = 16;

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

    /// Starts this binary in `role` on locks `0..locks` of `subject`'s store `store` (a spec, or a
    /// path for peers), with `extra` environment.
    pub(crate) fn worker(
        role: &str,
        subject: Subject,
        store: &str,
        locks: u32,
        extra: &[(&str, String)],
    ) -> Child {
        let mut env = vec![
            (SUBJECT_ENV, subject.name().to_string()),
            (STORE_ENV, store.to_string()),
            (LOCKS_ENV, locks.to_string()),
        ];
        env.extend(extra.iter().cloned());
        Child::spawn(role, &env)
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

/// What a worker of a [`Crew`] reports after a round: `done <ops> <start ns> <end ns>`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Done {
    /// Operations it did in the round.
    pub(crate) ops: u64,
    /// When it left the start line (CLOCK_MONOTONIC ns, one clock for every process).
    pub(crate) start: u64,
    /// When it stopped.
    pub(crate) end: u64,
}

/// Workers in one role on one store, which start every round together: each is told its order,
/// says `set` when it waits at the start line, and one `FUTEX_WAKE` lets all of them go.
#[derive(Debug)]
pub(crate) struct Crew {
    workers: Vec<Child>,
    ctl: Shared,
}

impl Crew {
    /// Starts `count` workers in `role` on locks `0..locks` of `store` and waits until each is
    /// ready (has opened the store).
    pub(crate) fn spawn(ctx: &Ctx, role: &str, store: &Prepared, locks: u32, count: usize) -> Crew {
        static CREWS: AtomicUsize = AtomicUsize::new(0);
        let ctl_path = PathBuf::from("/dev/shm").join(format!(
            "{}-ctl-{role}-{}-{}",
            ctx.tag,
            store.subject.name(),
            CREWS.fetch_add(1, Ordering::Relaxed)
        ));
        let ctl = Shared::create(&ctl_path, 4096);
        let workers: Vec<Child> = (0..count)
            .map(|i| {
                Child::worker(
                    role,
                    store.subject,
                    &store.store,
                    locks,
                    &[
                        (CTL_ENV, ctl_path.display().to_string()),
                        (INDEX_ENV, i.to_string()),
                    ],
                )
            })
            .collect();
        for w in &workers {
            w.expect("ready", Duration::from_secs(60));
        }
        Crew { workers, ctl }
    }

    /// Each worker's CPU time so far, in ns, summed over its threads (`None` when /proc does not
    /// tell).
    pub(crate) fn cpu_ns(&self) -> Option<Vec<u64>> {
        self.workers
            .iter()
            .map(|w| cpu_and_switches(w.pid()).map(|(cpu, _)| cpu))
            .collect()
    }

    /// The control mapping the workers share.
    pub(crate) fn ctl(&self) -> &Shared {
        &self.ctl
    }

    /// One round: gives worker `i` the line `order(i)`, waits until every worker is at the start
    /// line, opens it, and returns each worker's report, in worker order.
    pub(crate) fn round(&mut self, order: impl Fn(usize) -> String) -> Vec<Done> {
        for (i, w) in self.workers.iter_mut().enumerate() {
            w.send(&order(i));
        }
        for w in &self.workers {
            w.expect("set", Duration::from_secs(60));
        }
        open_start(self.ctl.u32(CTL_START));
        self.workers
            .iter()
            .map(|w| {
                let line = w.expect("done", Duration::from_secs(600));
                let fields: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .map(|f| f.parse().expect("done field"))
                    .collect();
                let [ops, start, end] = fields[..] else {
                    panic!("bad done line {line:?}");
                };
                Done { ops, start, end }
            })
            .collect()
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
