//! Group 8: cold start. Each iteration executes a process that opens an existing store, takes
//! lock 0, runs `true` under it and releases it, as `flock FILE true` (flock(1)) does for a
//! file, the peer.

use std::path::Path;
use std::process::{Command, Stdio};

use criterion::Criterion;
use lockyard_bench_support::Unit;

use crate::subject::{Subject, prepare};
use crate::{Ctx, Pace};

const GROUP: &str = "compare-coldstart";
const ROW: &str = "cold start: exec, open the store, lock, run `true`, unlock";
const SUBJECTS: &[Subject] = &[
    Subject::Mem,
    Subject::Shm,
    Subject::File,
    Subject::Dirlock,
    #[cfg(feature = "etcd")]
    Subject::Etcd,
];

fn succeed(command: &mut Command) {
    let status = command
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(status.success(), "{command:?}: {status}");
}

pub(crate) fn run(c: &mut Criterion, ctx: &Ctx) {
    let Some((mut g, subjects)) = ctx.group(c, GROUP, SUBJECTS, Pace::Procs) else {
        return;
    };
    let tool = Path::new(env!("CARGO_BIN_EXE_lockyard-coldstart"));
    let flock_available = Command::new("flock")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    for &s in &subjects {
        let store = prepare(s, ctx, "coldstart", 16);
        g.bench_function(s.name(), |b| {
            b.iter(|| succeed(Command::new(tool).args([store.store.as_str(), "--", "true"])))
        });
    }
    if flock_available {
        let store = prepare(Subject::Flock, ctx, "coldstart", 1);
        g.bench_function(Subject::Flock.name(), |b| {
            b.iter(|| succeed(Command::new("flock").args([store.store.as_str(), "true"])))
        });
    } else {
        eprintln!("{GROUP}: flock(1) is not installed; no peer");
    }
    g.finish();
    let subjects: Vec<Subject> = subjects.into_iter().chain([Subject::Flock]).collect();
    ctx.criterion_figures(GROUP, &subjects, ("coldstart", ROW), |ns| (ns, Unit::Ns));
}
