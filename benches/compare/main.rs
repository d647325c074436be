//! Every lockyard backend side by side with its peers, one criterion group per operation
//! (DESIGN.md section 10).
//!
//! | group | backends | peers |
//! |---|---|---|
//! | `compare-uncontended`: lock+unlock, one thread | mem, shm, file, dirlock | parking_lot, glibc robust, flock pair, O_EXCL pid file |
//! | `compare-held`: try_lock of a lock another process holds | mem (another owner), shm, file, dirlock | parking_lot (another thread), glibc robust, flock, pid file |
//! | `compare-contention`: P = 1, 2, 4, 8 processes on one lock | shm, file, dirlock | glibc robust, flock |
//! | `compare-podman`: 8 processes, random locks of 2048, 1 µs critical section | shm, file | glibc robust array |
//! | `compare-alloc`: allocate+free, all but one id taken, 2^11 / 2^16 / 2^20 | mem, shm, file | first-fit bitmap scan |
//! | takeover (hand-timed): SIGKILLed holder → blocked waiter, random kill phase | shm, file, dirlock | glibc robust |
//! | idle (hand-timed): CPU burnt by 50 waiters blocked on a live holder | shm, file, dirlock | glibc robust |
//! | `compare-coldstart`: exec a process that opens the store, locks, runs `true` | mem, shm, file, dirlock | flock(1) |
//!
//! With the `etcd` feature, etcd joins every group but idle (alloc at 2^11 only), and etcd's own
//! Lock RPC on a session lease joins the uncontended and contention groups as its peer.
//!
//! Multi-process groups re-execute this binary in a role ([`child::ROLE_ENV`]). Each figure is
//! written to the figures file of `lockyard-bench-support` for `cargo xtask bench`, which runs
//! the bench several times and quotes the median and spread in `docs/benchmarks.md`.
//!
//! Environment: `LOCKYARD_BENCH_DIR` (where path stores go; default the temp dir),
//! `LOCKYARD_BENCH_BACKENDS` (comma-separated backends to run; peers always run).

mod alloc;
mod child;
mod coldstart;
mod contention;
#[cfg(feature = "etcd")]
mod etcd;
mod held;
mod host;
mod idle;
mod podman;
mod roles;
mod subject;
mod sys;
mod takeover;
mod uncontended;

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use lockyard_bench_support::{
    Figure, Unit, criterion_median_ns, quick, record_figure, record_meta,
};

use crate::subject::Subject;

/// How long a group's benchmarks run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pace {
    /// In-process operations of nanoseconds to microseconds.
    Fast,
    /// Operations that involve several processes or a process start.
    Procs,
    /// Processes contending for one lock: a longer window, because fairness (min ÷ max pairs
    /// per process) over 0.9 s spread by up to 0.2 across three runs on a quiet machine, and over
    /// 3 s by about half that (ARCHITECTURE.md, lock-shm's figures).
    Contended,
}

/// What every group needs: the mode, the store directory, the backend filter.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) quick: bool,
    /// Criterion's test mode (`cargo test --benches`): every group once, as briefly as it can.
    pub(crate) smoke: bool,
    dir: tempfile::TempDir,
    /// A prefix unique to this run, for shm names.
    pub(crate) tag: String,
    only: Option<Vec<String>>,
    filters: Vec<String>,
    /// The 3-member cluster the etcd rows run on, stopped on drop.
    #[cfg(feature = "etcd")]
    cluster: Option<lock_etcd::testkit::EtcdCluster>,
}

impl Ctx {
    fn new() -> Ctx {
        let base = std::env::var_os("LOCKYARD_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("lockyard-compare-")
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("bench directory in {}: {e}", base.display()));
        let only = std::env::var("LOCKYARD_BENCH_BACKENDS")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.split(',').map(|b| b.trim().to_string()).collect());
        let filters = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        #[cfg(feature = "etcd")]
        let cluster = only
            .as_ref()
            .is_none_or(|o: &Vec<String>| o.iter().any(|b| b == "etcd"))
            .then(|| {
                lock_etcd::testkit::EtcdCluster::start()
                    .unwrap_or_else(|e| panic!("etcd cluster for the bench: {e}"))
            });
        Ctx {
            quick: quick(),
            smoke: !lockyard_bench_support::measuring(),
            dir,
            tag: format!("lockyard-compare-{}", std::process::id()),
            only,
            filters,
            #[cfg(feature = "etcd")]
            cluster,
        }
    }

    /// The spec of this run's store `name` of backend `B`.
    pub(crate) fn spec<B: lockyard_benches::Backend>(&self, name: &str) -> String {
        #[cfg(feature = "etcd")]
        if B::NAME == "etcd" {
            // A short TTL: a SIGKILLed holder's lease expires within it (takeover group).
            return format!(
                "etcd://{}/lockyard-bench/{name}?ttl=2s",
                self.etcd_endpoints().join(",")
            );
        }
        B::spec(self.dir(), name)
    }

    /// The endpoints of the run's etcd cluster.
    #[cfg(feature = "etcd")]
    pub(crate) fn etcd_endpoints(&self) -> Vec<String> {
        self.cluster
            .as_ref()
            .map(|c| c.endpoints())
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.trim_start_matches("http://").to_string())
            .collect()
    }

    /// The directory path stores live in.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The subjects of `list` this run measures: the backends asked for, and the peers of
    /// their kind: etcd's peer where etcd is asked for (and its cluster runs), the local peers
    /// where a local backend is. `cargo xtask bench --etcd` measures the local backends and the
    /// etcd ones in two runs, so that the cluster is not running beside the local figures.
    fn subjects(&self, list: &[Subject]) -> Vec<Subject> {
        let asked = |s: &Subject| {
            self.only
                .as_ref()
                .is_none_or(|only| only.iter().any(|o| o == s.name()))
        };
        let kind_asked = |etcd: bool| {
            Subject::ALL
                .iter()
                .any(|b| b.is_backend() && b.needs_etcd() == etcd && asked(b))
        };
        list.iter()
            .copied()
            .filter(|s| {
                if s.is_backend() {
                    asked(s)
                } else if s.needs_etcd() {
                    self.has_etcd() && kind_asked(true)
                } else {
                    kind_asked(false)
                }
            })
            .collect()
    }

    /// Whether this run has an etcd cluster.
    fn has_etcd(&self) -> bool {
        #[cfg(feature = "etcd")]
        return self.cluster.is_some();
        #[cfg(not(feature = "etcd"))]
        false
    }

    /// The subjects of `list` this run measures in `group`: none when criterion's filter leaves
    /// nothing of the group (the hand-timed groups).
    pub(crate) fn subjects_in(&self, group: &str, list: &[Subject]) -> Vec<Subject> {
        if self.wanted(group) {
            self.subjects(list)
        } else {
            Vec::new()
        }
    }

    /// Criterion group `name`, paced for `pace`, and the subjects of `list` this run measures
    /// in it; `None` when criterion's filter leaves nothing of the group.
    pub(crate) fn group<'c>(
        &self,
        c: &'c mut Criterion,
        name: &str,
        list: &[Subject],
        pace: Pace,
    ) -> Option<(BenchmarkGroup<'c, WallTime>, Vec<Subject>)> {
        if !self.wanted(name) {
            return None;
        }
        let mut g = c.benchmark_group(name);
        self.pace(&mut g, pace);
        Some((g, self.subjects(list)))
    }

    /// Whether criterion's positional filter may leave anything of `group` to run (a filter
    /// that looks like a regular expression is left to criterion).
    fn wanted(&self, group: &str) -> bool {
        self.filters.is_empty()
            || self.filters.iter().any(|f| {
                group.contains(f.as_str())
                    || f.starts_with(group)
                    || f.contains(['(', '|', '*', '.', '[', '^', '$', '?', '+'])
            })
    }

    /// Sets a group's warm-up, measurement time and sample count for this mode.
    fn pace(&self, g: &mut BenchmarkGroup<'_, WallTime>, pace: Pace) {
        let (warm, measure, samples) = match (pace, self.quick) {
            (Pace::Fast, false) => (300, 1_000, 20),
            (Pace::Fast, true) => (100, 400, 10),
            (Pace::Procs, false) => (200, 900, 10),
            (Pace::Procs, true) | (Pace::Contended, true) => (100, 300, 10),
            (Pace::Contended, false) => (200, 3_000, 10),
        };
        // 10,000 bootstrap resamples instead of 100,000: the same estimates to three digits,
        // and criterion's plots (a KDE over every resample) cost a tenth.
        g.warm_up_time(Duration::from_millis(warm))
            .measurement_time(Duration::from_millis(measure))
            .sample_size(samples)
            .nresamples(10_000);
    }

    /// Records one figure.
    pub(crate) fn figure(&self, group: &str, row: &str, column: &str, value: f64, unit: Unit) {
        record_figure(&Figure {
            group: group.into(),
            row: row.into(),
            column: column.into(),
            value,
            unit,
        })
        .expect("record figure");
    }

    /// Records criterion's median of each subject's function of `criterion_group` (one without
    /// a parameter) as the subject's figure in `row` of `group`.
    pub(crate) fn criterion_figures(
        &self,
        criterion_group: &str,
        subjects: &[Subject],
        (group, row): (&str, &str),
        transform: impl Fn(f64) -> (f64, Unit),
    ) {
        for s in subjects {
            self.criterion_figure((criterion_group, s.name(), None), (group, row), &transform);
        }
    }

    /// Records criterion's median of `criterion_group/function[/parameter]` as a figure, when
    /// this run measured it.
    pub(crate) fn criterion_figure(
        &self,
        (criterion_group, function, parameter): (&str, &str, Option<&str>),
        (group, row): (&str, &str),
        transform: impl Fn(f64) -> (f64, Unit),
    ) {
        if let Some(ns) = criterion_median_ns(criterion_group, function, parameter) {
            let (value, unit) = transform(ns);
            self.figure(group, row, function, value, unit);
        }
    }
}

fn main() {
    if let Ok(role) = std::env::var(child::ROLE_ENV) {
        roles::run(&role);
        return;
    }
    let ctx = Ctx::new();
    record_meta(
        "store-dir",
        &format!("{} ({})", ctx.dir().display(), sys::fs_type(ctx.dir())),
    )
    .expect("record meta");
    record_meta("mode", if ctx.quick { "quick" } else { "full" }).expect("record meta");
    let syscall_return = host::syscall_return(ctx.dir());
    eprintln!("compare: the first return after a system call costs {syscall_return}");
    record_meta("syscall-return", &syscall_return).expect("record meta");
    let mut c = Criterion::default().configure_from_args();
    let timed = |name: &str, f: &mut dyn FnMut()| {
        let start = std::time::Instant::now();
        f();
        eprintln!(
            "compare: {name} took {:.1} s",
            start.elapsed().as_secs_f64()
        );
    };
    timed("uncontended", &mut || uncontended::run(&mut c, &ctx));
    timed("held", &mut || held::run(&mut c, &ctx));
    timed("contention", &mut || contention::run(&mut c, &ctx));
    timed("podman", &mut || podman::run(&mut c, &ctx));
    timed("alloc", &mut || alloc::run(&mut c, &ctx));
    timed("takeover", &mut || takeover::run(&ctx));
    timed("idle", &mut || idle::run(&ctx));
    timed("coldstart", &mut || coldstart::run(&mut c, &ctx));
    c.final_summary();
}
