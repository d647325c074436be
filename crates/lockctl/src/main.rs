//! lockctl: the lockyard operator's tool. See docs/lockctl.md for commands, output and exit codes.

mod exit;
mod run;
mod status;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lockyard::{LockId, Locker};

use crate::exit::{Failed, Failure};

/// The lockyard operator's tool: inspect and manage lock stores named by spec
/// (shm:NAME, file:PATH, mem:NAME, dir:PATH, etcd://HOST:PORT/PREFIX/TABLE).
#[derive(Debug, Parser)]
#[command(name = "lockctl", version, about)]
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
    /// Remove a store (every lock in it is gone).
    Remove {
        /// The store spec.
        spec: String,
        /// Confirm the removal.
        #[arg(long)]
        yes: bool,
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

fn print(text: &str) -> Result<(), Failed> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Failed::new(Failure::Usage, format!("writing output: {e}")))
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
    match command {
        Cmd::Create { spec, capacity } => {
            let manager = lockyard::create(&spec, capacity)?;
            print(&format!(
                "created {spec} with {} locks\n",
                manager.capacity().unwrap_or(capacity)
            ))?;
        }
        Cmd::Remove { spec, yes } => {
            confirm(yes, &format!("removing {spec}"))?;
            lockyard::remove(&spec)?;
            print(&format!("removed {spec}\n"))?;
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
            print(&format!("freed lock {id} of {spec}\n"))?;
        }
        Cmd::FreeAll { spec, yes } => {
            confirm(yes, &format!("freeing every allocation of {spec}"))?;
            let manager = lockyard::open(&spec)?;
            manager.free_all()?;
            print(&format!("freed every allocation of {spec}\n"))?;
        }
        Cmd::Run {
            spec,
            ids,
            timeout,
            deadlock_timeout,
            command,
        } => {
            let manager = lockyard::open(&spec)?;
            if let Some(d) = deadlock_timeout {
                manager.set_deadlock_timeout(d)?;
            }
            return run::run(&*manager, &ids, timeout, &command);
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
