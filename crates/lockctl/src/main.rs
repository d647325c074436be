//! lockctl: the lockyard operator's tool. See docs/lockctl.md for commands, output and exit codes.

mod escape;
mod exit;
mod run;
mod signals;
mod status;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lockyard::{DynManager, Error, LockId, Locker, StoreSpec};

use crate::escape::{count, printable};
use crate::exit::{Failed, Failure};

/// The lockyard operator's tool: inspect and manage lock stores named by spec
/// (shm:NAME, file:PATH, dir:PATH, etcd://HOST:PORT/PREFIX/TABLE; not mem:NAME, which lives
/// inside one process).
#[derive(Debug, Parser)]
#[command(name = "lockctl", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a store with N locks.
    Create {
        /// The store spec.
        spec: String,
        /// The number of locks.
        #[arg(long)]
        capacity: u32,
    },
    /// Remove a store (every lock in it is gone). A store with live holders or waiters is
    /// refused (exit 9) unless --force is given.
    Remove {
        /// The store spec.
        spec: String,
        /// Confirm the removal.
        #[arg(long)]
        yes: bool,
        /// Remove it even while processes hold or wait for its locks (they lose their exclusion).
        #[arg(long)]
        force: bool,
    },
    /// Show capacity, holders, waiters and deadlocks.
    Status {
        /// The store spec.
        spec: String,
        /// Print JSON (schema in docs/lockctl.md).
        #[arg(long)]
        json: bool,
    },
    /// Free one lock's allocation (a held lock stays held).
    Free {
        /// The store spec.
        spec: String,
        /// The lock id.
        id: u32,
    },
    /// Free every allocation in the store (held locks stay held).
    FreeAll {
        /// The store spec.
        spec: String,
        /// Confirm: every process's allocations are forgotten.
        #[arg(long)]
        yes: bool,
    },
    /// Take locks in the order given, run a command holding them, release them, and exit with
    /// the command's status.
    Run {
        /// The store spec.
        spec: String,
        /// The locks to take, in this order.
        #[arg(required = true)]
        ids: Vec<u32>,
        /// Give up (exit 6) if the locks are not all held within this time: 500ms, 30s, 2m.
        #[arg(long, value_parser = duration)]
        timeout: Option<Duration>,
        /// Check for a deadlock after waiting this long (default 1s; 0s turns it off).
        #[arg(long, value_parser = duration)]
        deadlock_timeout: Option<Duration>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
}

fn duration(text: &str) -> Result<Duration, String> {
    lockyard::parse_duration(text).map_err(|e| e.to_string())
}

/// Writes `text` to stdout. A reader that went away (a broken pipe: `lockctl status | head -1`)
/// ends lockctl quietly with 0, as it ends most command-line tools.
fn print(text: &str) -> Result<(), Failed> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => Failed::new(Failure::ReaderGone, ""),
            _ => Failed::new(Failure::Usage, format!("writing output: {e}")),
        })
}

/// Refuses a `mem:` spec: a mem store lives inside one process, so the one lockctl would open
/// (or create) is its own, gone when it exits, and never the one a program uses.
fn reachable(spec: &str) -> Result<(), Failed> {
    match StoreSpec::parse(spec) {
        Ok(StoreSpec::Mem(_)) => Err(Failed::new(
            Failure::BadSpec,
            format!(
                "{spec}: a mem: store lives inside one process, so lockctl (a process of its own) \
                 cannot reach it; use shm: to share locks between processes"
            ),
        )),
        _ => Ok(()),
    }
}

/// Refuses to remove a store that live processes hold or wait for, naming how many locks they
/// hold or wait for. A store that cannot be opened or read (damaged, of another format) is left
/// to `lockyard::remove`, which decides what it may remove.
fn check_unused(spec: &str) -> Result<(), Failed> {
    let Ok(manager) = lockyard::open(spec) else {
        return Ok(());
    };
    let Ok(locks) = manager.snapshot() else {
        return Ok(());
    };
    // Backends that cannot tell who has a store open (all but shm) are checked by their locks.
    let clients = manager.clients().unwrap_or_default();
    drop(manager);
    let held = locks
        .iter()
        .filter(|l| l.holder.as_ref().is_some_and(|h| !h.dead))
        .count();
    let waited = locks
        .iter()
        .filter(|l| l.waiters.iter().any(|w| !w.dead))
        .count();
    let mut what = Vec::new();
    if held > 0 {
        let verb = if held == 1 { "is" } else { "are" };
        what.push(format!("{} {verb} held", count(held, "lock")));
    }
    if waited > 0 {
        let verb = if waited == 1 { "is" } else { "are" };
        what.push(format!("{} {verb} waited for", count(waited, "lock")));
    }
    // A process that has the store open keeps using it once it is removed, apart from every
    // process that opens the store's name afterwards: the same end of exclusion, only later.
    if !clients.is_empty() {
        let (now, here) = (std::time::SystemTime::now(), status::this_host());
        let parties: Vec<status::Party> = clients
            .iter()
            .map(|c| status::party(c, now, &here))
            .collect();
        let parties: Vec<&status::Party> = parties.iter().collect();
        let (n, named) = status::processes(&parties, 4);
        let (noun, verb) = if n == 1 {
            ("process", "has")
        } else {
            ("processes", "have")
        };
        what.push(format!("{n} other {noun} {verb} it open: {named}"));
    }
    if what.is_empty() {
        return Ok(());
    }
    Err(Failed::new(
        Failure::InUse,
        format!(
            "{spec} is in use: {}; removing it would end their exclusion \
             (add --force to remove it anyway)",
            what.join(" and ")
        ),
    ))
}

/// Removes a store that [`check_unused`] found unused. Where the backend can tell whether a
/// store is open (shm, file), it decides again and removes in one step, so a process that has
/// the store open, or opened it since the check, is not cut off; elsewhere, and for a store it
/// cannot read (which the check did not look at either), it removes.
fn remove_unused(spec: &str) -> Result<(), Failed> {
    match lockyard::remove_unused(spec) {
        Ok(()) => Ok(()),
        Err(Error::Unsupported(_) | Error::Incompatible { .. } | Error::Corrupt { .. }) => {
            Ok(lockyard::remove(spec)?)
        }
        Err(e @ Error::InUse { .. }) => Err(Failed::new(
            Failure::InUse,
            format!("{e}; removing it would end their exclusion (add --force to remove it anyway)"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Sets the deadlock timeout; zero (detection off) is accepted where there is no detection.
fn deadlock_timeout(manager: &DynManager, timeout: Duration) -> Result<(), Failed> {
    match manager.set_deadlock_timeout(timeout) {
        Err(Error::Unsupported(_)) if timeout.is_zero() => Ok(()),
        other => Ok(other?),
    }
}

fn confirm(yes: bool, what: &str) -> Result<(), Failed> {
    if yes {
        Ok(())
    } else {
        Err(Failed::new(
            Failure::Usage,
            format!("{what} cannot be undone: add --yes to confirm"),
        ))
    }
}

fn execute(command: Cmd) -> Result<ExitCode, Failed> {
    let (Cmd::Create { spec, .. }
    | Cmd::Remove { spec, .. }
    | Cmd::Status { spec, .. }
    | Cmd::Free { spec, .. }
    | Cmd::FreeAll { spec, .. }
    | Cmd::Run { spec, .. }) = &command;
    reachable(spec)?;
    // The spec as lockctl's own messages show it (`--json` gives it as it is).
    let shown = printable(spec);
    match command {
        Cmd::Create { spec, capacity } => {
            let manager = lockyard::create(&spec, capacity)?;
            let capacity = manager.capacity().unwrap_or(capacity);
            print(&format!(
                "created {shown} with {}\n",
                count(capacity as usize, "lock")
            ))?;
        }
        Cmd::Remove { spec, yes, force } => {
            confirm(yes, &format!("removing {shown}"))?;
            if force {
                lockyard::remove(&spec)?;
            } else {
                check_unused(&spec)?;
                remove_unused(&spec)?;
            }
            print(&format!("removed {shown}\n"))?;
        }
        Cmd::Status { spec, json } => {
            let manager = lockyard::open(&spec)?;
            let status = status::collect(&spec, &*manager)?;
            if json {
                let text = serde_json::to_string_pretty(&status)
                    .map_err(|e| Failed::new(Failure::Usage, format!("json: {e}")))?;
                print(&format!("{text}\n"))?;
            } else {
                print(&status::render(&status))?;
            }
        }
        Cmd::Free { spec, id } => {
            let manager = lockyard::open(&spec)?;
            manager.retrieve(LockId(id))?.free()?;
            print(&format!("freed lock {id} of {shown}\n"))?;
        }
        Cmd::FreeAll { spec, yes } => {
            confirm(yes, &format!("freeing every allocation of {shown}"))?;
            let manager = lockyard::open(&spec)?;
            manager.free_all()?;
            print(&format!("freed every allocation of {shown}\n"))?;
        }
        Cmd::Run {
            spec,
            ids,
            timeout,
            deadlock_timeout,
            command,
        } => {
            run::check_ids(&ids)?;
            // Before the store is opened: a backend's threads inherit the blocked signals.
            let shared = run::watch_signals()?;
            let manager = lockyard::open(&spec)?;
            if let Some(d) = deadlock_timeout {
                self::deadlock_timeout(&*manager, d)?;
            }
            return run::run(&shared, &*manager, &ids, timeout, &command);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version are not errors; everything else is a usage error: one line on
            // stderr, exit 2.
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // Without a command, clap shows the help, whose first paragraph is the tool's
            // description: say what is wrong instead.
            if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                || e.kind() == clap::error::ErrorKind::MissingSubcommand
            {
                return Failed::new(
                    Failure::Usage,
                    "a command is missing: create, remove, status, free, free-all or run \
                     (see lockctl --help)",
                )
                .report();
            }
            let text = e.render().to_string();
            let first = text.split("\n\n").next().unwrap_or_default();
            let line = first.lines().map(str::trim).collect::<Vec<_>>().join(" ");
            let line = line.strip_prefix("error: ").unwrap_or(&line);
            return Failed::new(Failure::Usage, format!("{line} (see lockctl --help)")).report();
        }
    };
    match execute(cli.command) {
        Ok(code) => code,
        Err(failed) => failed.report(),
    }
}
