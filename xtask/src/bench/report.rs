//! The comparison report: one table across backends and peers with the median and spread of
//! every figure over the runs, the targets of DESIGN.md section 5, and two line charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockyard_bench_support::{RunFigures, Unit};

use crate::plot::{Point, Series, line_chart};

/// The columns, backends first, then peers, with their headings.
const COLUMNS: [(&str, &str); 11] = [
    ("mem", "mem"),
    ("shm", "shm"),
    ("file", "file"),
    ("dirlock", "dirlock"),
    ("etcd", "etcd"),
    ("parking_lot", "parking_lot ‡"),
    ("glibc-robust", "glibc robust ‡"),
    ("flock", "flock ‡"),
    ("pidfile", "O_EXCL pid file ‡"),
    ("etcd-lock-rpc", "etcd Lock RPC ‡"),
    ("first-fit", "first-fit scan ‡"),
];

/// The chart files the report links.
const CONTENTION_SVG: &str = "benchmarks-contention.svg";
const ALLOC_SVG: &str = "benchmarks-alloc.svg";

/// The 1-minute load average now, from /proc/loadavg (NaN when unreadable).
pub(crate) fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// One cell: a figure's value in every run that measured it.
#[derive(Debug, Clone)]
struct Cell {
    values: Vec<f64>,
    unit: Unit,
}

impl Cell {
    fn stats(&self) -> Option<(f64, f64, f64)> {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return None;
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some((median, v[0], v[n - 1]))
    }

    /// `median [min–max]`, the unit written once.
    fn show(&self) -> String {
        let Some((median, min, max)) = self.stats() else {
            return "—".into();
        };
        let m = self.unit.show(median);
        if self.values.len() == 1 {
            return m;
        }
        let (lo, hi) = (self.unit.show(min), self.unit.show(max));
        let unit_of = |s: &str| s.split_once(' ').map(|(_, u)| u.to_string());
        let number = |s: &str| {
            s.split_once(' ')
                .map_or(s.to_string(), |(n, _)| n.to_string())
        };
        if unit_of(&lo) == unit_of(&m) && unit_of(&hi) == unit_of(&m) {
            format!("{m} [{}–{}]", number(&lo), number(&hi))
        } else {
            format!("{m} [{lo}–{hi}]")
        }
    }
}

/// The machine the run was on.
#[derive(Debug)]
struct Machine {
    cpu: String,
    cores: usize,
    kernel: String,
    memory: String,
}

impl Machine {
    fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown CPU".into(), |(_, v)| v.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or_else(|| "?".into(), |kb| format!("{:.0} GiB", kb / 1_048_576.0));
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "?".into(), |s| s.trim().to_string()),
            memory,
        }
    }
}

/// A target of DESIGN.md section 5, computed from the figures of each run.
struct Target {
    /// The bench line's name: `compare-<slug>: ours X, peer Y, ratio Z`.
    slug: &'static str,
    what: &'static str,
    group: &'static str,
    /// The row, by its beginning.
    row: &'static str,
    ours: &'static str,
    /// Divide by this column's figure (same row); `None`: the figure itself.
    peer: Option<&'static str>,
    /// The bound and whether the value must stay at or below it (`true`) or at or above it.
    bound: f64,
    at_most: bool,
    unit: Unit,
    /// The row's figures are times per operation and the target compares throughputs: ours in
    /// operations per second ÷ the peer's, which is the peer's time ÷ ours.
    throughput: bool,
}

const TARGETS: [Target; 20] = {
    const fn ratio(
        slug: &'static str,
        what: &'static str,
        group: &'static str,
        row: &'static str,
        ours: &'static str,
        peer: &'static str,
        bound: f64,
    ) -> Target {
        Target {
            slug,
            what,
            group,
            row,
            ours,
            peer: Some(peer),
            bound,
            at_most: true,
            unit: Unit::Ratio,
            throughput: false,
        }
    }
    const fn absolute(
        slug: &'static str,
        what: &'static str,
        group: &'static str,
        row: &'static str,
        bound: f64,
        unit: Unit,
    ) -> Target {
        Target {
            slug,
            what,
            group,
            row,
            ours: "shm",
            peer: None,
            bound,
            at_most: true,
            unit,
            throughput: false,
        }
    }
    const UNC: &str = "lock+unlock, uncontended";
    const INTERLEAVED: &str = "interleaved batches: lock+unlock, uncontended";
    [
        ratio(
            "shm-uncontended",
            "shm uncontended lock+unlock ÷ glibc robust",
            "uncontended",
            UNC,
            "shm",
            "glibc-robust",
            0.9,
        ),
        ratio(
            "mem-uncontended",
            "mem lock+unlock ÷ parking_lot",
            "uncontended",
            UNC,
            "mem",
            "parking_lot",
            1.1,
        ),
        ratio(
            "file-uncontended",
            "file lock+unlock ÷ flock pair",
            "uncontended",
            UNC,
            "file",
            "flock",
            1.1,
        ),
        ratio(
            "dirlock-uncontended",
            "dirlock lock+unlock ÷ O_EXCL pid file ¹ ²",
            "uncontended",
            INTERLEAVED,
            "dirlock",
            "pidfile",
            1.2,
        ),
        ratio(
            "file-2proc",
            "file, 2 processes ÷ flock",
            "contention",
            "P = 2: ns",
            "file",
            "flock",
            1.05,
        ),
        ratio(
            "shm-2proc",
            "shm, 2 processes ÷ glibc robust",
            "contention",
            "P = 2: ns",
            "shm",
            "glibc-robust",
            0.75,
        ),
        ratio(
            "shm-4proc",
            "shm, 4 processes ÷ glibc robust",
            "contention",
            "P = 4: ns",
            "shm",
            "glibc-robust",
            0.75,
        ),
        ratio(
            "shm-8proc",
            "shm, 8 processes ÷ glibc robust",
            "contention",
            "P = 8: ns",
            "shm",
            "glibc-robust",
            0.75,
        ),
        Target {
            slug: "shm-2proc-fairness",
            what: "shm fairness ÷ glibc's, 2 processes",
            group: "contention",
            row: "P = 2: fairness",
            ours: "shm",
            peer: Some("glibc-robust"),
            bound: 1.0,
            at_most: false,
            unit: Unit::Ratio,
            throughput: false,
        },
        Target {
            slug: "shm-4proc-fairness",
            what: "shm fairness ÷ glibc's, 4 processes",
            group: "contention",
            row: "P = 4: fairness",
            ours: "shm",
            peer: Some("glibc-robust"),
            bound: 1.0,
            at_most: false,
            unit: Unit::Ratio,
            throughput: false,
        },
        Target {
            slug: "shm-8proc-fairness",
            what: "shm fairness ÷ glibc's, 8 processes",
            group: "contention",
            row: "P = 8: fairness",
            ours: "shm",
            peer: Some("glibc-robust"),
            bound: 1.0,
            at_most: false,
            unit: Unit::Ratio,
            throughput: false,
        },
        absolute(
            "shm-alloc-free-2e11",
            "shm allocate+free at 2^11",
            "alloc",
            "allocate+free, all but one id taken: 2^11",
            100.0,
            Unit::Ns,
        ),
        absolute(
            "shm-alloc-free-2e16",
            "shm allocate+free at 2^16",
            "alloc",
            "allocate+free, all but one id taken: 2^16",
            100.0,
            Unit::Ns,
        ),
        absolute(
            "shm-alloc-free-2e20",
            "shm allocate+free at 2^20",
            "alloc",
            "allocate+free, all but one id taken: 2^20",
            100.0,
            Unit::Ns,
        ),
        absolute(
            "shm-takeover-median",
            "shm takeover after SIGKILL, median",
            "takeover",
            "SIGKILLed holder → blocked waiter holds the lock: median",
            200_000.0,
            Unit::Ns,
        ),
        absolute(
            "shm-takeover-max",
            "shm takeover after SIGKILL, max",
            "takeover",
            "SIGKILLed holder → blocked waiter holds the lock: max",
            1_000_000.0,
            Unit::Ns,
        ),
        absolute(
            "shm-idle-waiters-cpu",
            "shm: CPU of 50 waiters blocked 10 s",
            "idle",
            "50 waiters blocked 10 s on a live holder: CPU",
            0.02,
            Unit::CpuSeconds,
        ),
        ratio(
            "etcd-uncontended",
            "etcd lock+unlock, uncontended ÷ etcd's Lock+Unlock RPC on a shared session lease",
            "uncontended",
            UNC,
            "etcd",
            "etcd-lock-rpc",
            1.0,
        ),
        Target {
            slug: "etcd-4proc",
            what: "etcd, 4 processes on one lock ÷ the Lock RPC's throughput (4 processes)",
            group: "contention",
            row: "P = 4: ns",
            ours: "etcd",
            peer: Some("etcd-lock-rpc"),
            bound: 1.2,
            at_most: false,
            unit: Unit::Ratio,
            throughput: true,
        },
        ratio(
            "shm-vs-mem",
            "shm uncontended ÷ mem (no target; for scale)",
            "uncontended",
            UNC,
            "shm",
            "mem",
            f64::INFINITY,
        ),
    ]
};

/// Everything the report is made of.
#[derive(Debug)]
pub(crate) struct Report {
    runs: usize,
    /// (group, row) in the order first measured.
    rows: Vec<(String, String)>,
    cells: BTreeMap<(String, String, String), Cell>,
    /// Per run: (group, row, column) → value, for the targets.
    per_run: Vec<BTreeMap<(String, String, String), f64>>,
    meta: Vec<(String, String)>,
    /// The 1-minute load average at the start and after each run.
    loads: Vec<f64>,
    quick: bool,
    elapsed: Duration,
    command: String,
    machine: Machine,
    date: String,
    commit: String,
}

impl Report {
    pub(crate) fn new(
        runs: &[RunFigures],
        loads: Vec<f64>,
        quick: bool,
        elapsed: Duration,
        command: &str,
    ) -> Report {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut cells: BTreeMap<(String, String, String), Cell> = BTreeMap::new();
        let mut per_run = Vec::new();
        for run in runs {
            let mut this = BTreeMap::new();
            for f in &run.figures {
                let row = (f.group.clone(), f.row.clone());
                if !rows.contains(&row) {
                    rows.push(row);
                }
                let key = (f.group.clone(), f.row.clone(), f.column.clone());
                cells
                    .entry(key.clone())
                    .or_insert_with(|| Cell {
                        values: Vec::new(),
                        unit: f.unit,
                    })
                    .values
                    .push(f.value);
                this.insert(key, f.value);
            }
            per_run.push(this);
        }
        let mut meta = Vec::new();
        for run in runs {
            for kv in &run.meta {
                if !meta.iter().any(|(k, _): &(String, String)| *k == kv.0) {
                    meta.push(kv.clone());
                }
            }
        }
        Report {
            runs: runs.len(),
            rows,
            cells,
            per_run,
            meta,
            loads,
            quick,
            elapsed,
            command: command.to_string(),
            machine: Machine::detect(),
            date: utc_now(),
            commit: commit(),
        }
    }

    fn columns(&self) -> Vec<(&'static str, &'static str)> {
        COLUMNS
            .iter()
            .copied()
            .filter(|(c, _)| self.cells.keys().any(|(_, _, col)| col == c))
            .collect()
    }

    fn cell(&self, group: &str, row: &str, column: &str) -> Option<&Cell> {
        self.cells
            .get(&(group.to_string(), row.to_string(), column.to_string()))
    }

    /// The comparison as plain text for the terminal: one block per row.
    pub(crate) fn text(&self) -> String {
        let mut out = format!(
            "comparison, {} run(s); each figure: median [min–max]\n",
            self.runs
        );
        for (group, row) in &self.rows {
            let _ = writeln!(out, "{group}: {row}");
            for (col, _) in self.columns() {
                if let Some(c) = self.cell(group, row, col) {
                    let _ = writeln!(out, "    {col:<14} {}", c.show());
                }
            }
        }
        for t in self.targets() {
            let _ = writeln!(out, "target: {t}");
        }
        out
    }

    /// `(value per run)` of a target.
    fn target_values(&self, t: &Target) -> Vec<f64> {
        let find = |run: &BTreeMap<(String, String, String), f64>, col: &str| {
            run.iter()
                .find(|((g, r, c), _)| g == t.group && r.starts_with(t.row) && c == col)
                .map(|(_, v)| *v)
        };
        self.per_run
            .iter()
            .filter_map(|run| {
                let ours = find(run, t.ours)?;
                match t.peer {
                    Some(p) if t.throughput => {
                        find(run, p).filter(|_| ours > 0.0).map(|p| p / ours)
                    }
                    Some(p) => find(run, p).filter(|v| *v > 0.0).map(|p| ours / p),
                    None => Some(ours),
                }
            })
            .collect()
    }

    /// One line per target that this run measured.
    fn targets(&self) -> Vec<String> {
        TARGETS
            .iter()
            .filter_map(|t| {
                let values = self.target_values(t);
                if values.is_empty() {
                    return None;
                }
                let cell = Cell {
                    values: values.clone(),
                    unit: t.unit,
                };
                if t.bound.is_infinite() {
                    return Some(format!("{}: {}", t.what, cell.show()));
                }
                let met = values
                    .iter()
                    .filter(|v| {
                        if t.at_most {
                            **v <= t.bound
                        } else {
                            **v >= t.bound
                        }
                    })
                    .count();
                Some(format!(
                    "{}: {} (target {} {}; met in {met} of {} runs)",
                    t.what,
                    cell.show(),
                    if t.at_most { "≤" } else { "≥" },
                    t.unit.show(t.bound),
                    values.len()
                ))
            })
            .collect()
    }

    /// One bench line per target measured, in the per-backend format
    /// (`compare-<slug>: ours X, peer Y, ratio Z`, or `ours X, target Y` without a peer), from
    /// the medians of the runs.
    pub(crate) fn lines(&self) -> Vec<String> {
        TARGETS
            .iter()
            .filter_map(|t| {
                let median = |col: &str| {
                    self.cells
                        .iter()
                        .find(|((g, r, c), _)| g == t.group && r.starts_with(t.row) && c == col)
                        .and_then(|(_, cell)| Some((cell.stats()?.0, cell.unit)))
                };
                let (ours, unit) = median(t.ours)?;
                Some(match t.peer {
                    Some(p) if t.throughput => {
                        let (peer, _) = median(p)?;
                        // Time per operation → operations per second, as the crate benches print.
                        let per_second = |ns: f64| if ns > 0.0 { 1e9 / ns } else { f64::NAN };
                        let (ours, peer) = (per_second(ours), per_second(peer));
                        format!(
                            "compare-{}: ours {}, peer {}, ratio {:.2}",
                            t.slug,
                            Unit::OpsPerSec.show(ours),
                            Unit::OpsPerSec.show(peer),
                            ours / peer
                        )
                    }
                    Some(p) => {
                        let (peer, _) = median(p)?;
                        let ratio = if peer > 0.0 { ours / peer } else { f64::NAN };
                        format!(
                            "compare-{}: ours {}, peer {}, ratio {ratio:.2}",
                            t.slug,
                            unit.show(ours),
                            unit.show(peer)
                        )
                    }
                    None => format!(
                        "compare-{}: ours {}, target {}",
                        t.slug,
                        unit.show(ours),
                        t.unit.show(t.bound)
                    ),
                })
            })
            .collect()
    }

    /// The report's files: `benchmarks.md` and its charts.
    pub(crate) fn files(&self) -> Vec<(&'static str, String)> {
        vec![
            ("benchmarks.md", self.markdown()),
            (CONTENTION_SVG, self.contention_chart()),
            (ALLOC_SVG, self.alloc_chart()),
        ]
    }

    fn series(&self, group: &str, rows: &[String]) -> Vec<Series> {
        self.columns()
            .into_iter()
            .filter_map(|(col, heading)| {
                let points: Vec<Option<Point>> = rows
                    .iter()
                    .map(|row| {
                        let (median, min, max) = self.cell(group, row, col)?.stats()?;
                        Some(Point { median, min, max })
                    })
                    .collect();
                points.iter().any(Option::is_some).then(|| Series {
                    name: heading.trim_end_matches(" ‡").to_string(),
                    points,
                })
            })
            .collect()
    }

    fn contention_chart(&self) -> String {
        let ps = [1, 2, 4, 8];
        let rows: Vec<String> = ps
            .iter()
            .map(|p| format!("P = {p}: ns per lock+unlock pair"))
            .collect();
        let labels: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
        line_chart(
            "P processes on one lock: ns per lock+unlock pair (median, bars min–max)",
            "processes",
            &labels,
            &self.series("contention", &rows),
        )
    }

    fn alloc_chart(&self) -> String {
        let shifts = [11, 16, 20];
        let rows: Vec<String> = shifts
            .iter()
            .map(|s| format!("allocate+free, all but one id taken: 2^{s}"))
            .collect();
        let labels: Vec<String> = shifts.iter().map(|s| format!("2^{s}")).collect();
        line_chart(
            "allocate+free with all but one id taken (median, bars min–max)",
            "capacity",
            &labels,
            &self.series("alloc", &rows),
        )
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let loads: Vec<String> = self
            .loads
            .iter()
            .map(|l| {
                if l.is_nan() {
                    "?".into()
                } else {
                    format!("{l:.2}")
                }
            })
            .collect();
        let meta = |key: &str| {
            self.meta
                .iter()
                .find(|(k, _)| k == key)
                .map_or("?", |(_, v)| v.as_str())
        };
        let _ = writeln!(md, "# Benchmarks\n");
        let _ = writeln!(
            md,
            "Generated by `{}` on {} (commit {}); do not edit by hand: rerun the command.",
            self.command, self.date, self.commit
        );
        let _ = writeln!(
            md,
            "Every backend runs the same operation in one criterion group with its peers, in the same run (`benches/compare/`)."
        );
        let _ = writeln!(
            md,
            "Each cell is the median of {} run(s) with the lowest and highest in brackets: `median [min–max]`.",
            self.runs
        );
        if self.quick {
            let _ = writeln!(
                md,
                "This was a `--quick` run: short measurements, a 2 s idle window, 20 takeover trials."
            );
        }
        let _ = writeln!(md, "\n## The run\n");
        let _ = writeln!(
            md,
            "- machine: {}, {} cores, {} RAM, Linux {}",
            self.machine.cpu, self.machine.cores, self.machine.memory, self.machine.kernel
        );
        let _ = writeln!(
            md,
            "- 1-minute load average: {} at the start, {} after each run (the machine is shared with other builds; a load near or above the core count inflates every figure, the multi-process ones most)",
            loads.first().map_or("?", String::as_str),
            if loads.len() > 1 {
                loads[1..].join(", ")
            } else {
                "?".into()
            }
        );
        let _ = writeln!(
            md,
            "- path stores (file, dirlock, flock and pid-file peers): {}; shm segments and the glibc mutexes in /dev/shm (tmpfs)",
            meta("store-dir")
        );
        let _ = writeln!(
            md,
            "- the first return after a system call (`benches/compare/host.rs`; every subject, the flock peer included, makes its system calls behind a call that returns): {}",
            meta("syscall-return")
        );
        let _ = writeln!(
            md,
            "- {} comparison run(s) in {:.1} min, together with each backend crate's own benches",
            self.runs,
            self.elapsed.as_secs_f64() / 60.0
        );
        let _ = writeln!(
            md,
            "- criterion's HTML report of the last run: `target/criterion/report/index.html` (groups `compare-*`)"
        );
        let _ = writeln!(md, "\n## Backends side by side\n");
        let cols = self.columns();
        let _ = write!(md, "| group | figure |");
        for (_, heading) in &cols {
            let _ = write!(md, " {heading} |");
        }
        let _ = write!(md, "\n|---|---|");
        for _ in &cols {
            let _ = write!(md, "---|");
        }
        md.push('\n');
        for (group, row) in &self.rows {
            let _ = write!(md, "| {group} | {} |", row.replace('|', "\\|"));
            for (col, _) in &cols {
                let text = self.cell(group, row, col).map_or("—".into(), Cell::show);
                let _ = write!(md, " {text} |");
            }
            md.push('\n');
        }
        let _ = writeln!(
            md,
            "\n‡ a peer. — not measured: the backend or peer cannot do it, or the run left it out."
        );
        let _ = writeln!(
            md,
            "The flock column is a bare `flock(2)` pair on one file, and `flock FILE true` (flock(1)) in the cold-start row."
        );
        let _ = writeln!(md, "\n## Targets (DESIGN.md section 5)\n");
        let _ = writeln!(
            md,
            "Each ratio is taken within one run (ours and the peer measured minutes apart at most), then summarised over the runs."
        );
        md.push('\n');
        for t in self.targets() {
            let _ = writeln!(md, "- {t}");
        }
        let _ = writeln!(
            md,
            "\n¹ The design's dirlock target is for `try_lock`+`unlock`; the group times `lock`+`unlock`, whose uncontended path is the same attempt."
        );
        let _ = writeln!(
            md,
            "² From the row \"interleaved batches\": dirlock and the pid file in alternating batches of about 0.5 ms for 2 s, each side's median batch; their criterion cells, measured one after the other, also compare two moments of the file system (the pid file's own cell moves by several times between runs on ext4)."
        );
        let _ = writeln!(md, "\n## Charts\n");
        let _ = writeln!(md, "![ns per pair against processes]({CONTENTION_SVG})\n");
        let _ = writeln!(md, "![allocation cost against capacity]({ALLOC_SVG})");
        md.push_str(NOTES);
        md
    }
}

const NOTES: &str = "
## What each group measures

- **uncontended**: one thread locks and unlocks one lock, through a manager (or handle) of its own.
  Peers: `parking_lot::Mutex`; a glibc `pthread_mutex_t` with `PTHREAD_PROCESS_SHARED` and `PTHREAD_MUTEX_ROBUST` in a shared mapping (what Podman's lock table is made of); `flock(LOCK_EX)` + `flock(LOCK_UN)` on one file; a pid file (`open(O_CREAT|O_EXCL)`, write the pid, `unlink`), with no staleness check.
  The row \"interleaved batches\" measures dirlock beside the pid file once more, in batches of about 0.5 ms that alternate between the two (each going first in every other round) for 2 s, and gives each side's median batch.
- **held**: `try_lock` of a lock another process holds (the holder is the bench binary re-executed).
  mem and parking_lot cannot be held by another process: another owner, or another thread, holds them.
- **contention**: P processes on one lock.
  Each sample puts N tickets in a pool in shared memory; every process takes one ticket per lock+unlock pair, under the lock, until the pool is empty, so a sample is exactly N pairs and a lost update would show (checked).
  The processes start together: all wait on one futex word in shared memory, which the bench releases with a single `FUTEX_WAKE`; the pool empties for all of them at once, so every process is measured over the same window.
  The time is from the first process's start to the taking of the last ticket on CLOCK_MONOTONIC, divided by N; fairness is the fewest pairs one process did divided by the most, over all samples. It is made of two parts, each its own row: the CPU share (the least CPU time one process used divided by the most; every thread, warm-up included, from /proc), which the scheduler decides and the lock too (a process it keeps asleep uses no CPU), and the pairs per CPU-second (least ÷ most), which is the lock's alone.
  With more processes than the 2 cores, the scheduler decides much of both.
  The process counts are the outer loop and the subjects the inner one, so ours and its peer at one count are measured seconds apart; each measures for 3 s (other process groups 0.9 s), since fairness over 0.9 s spread by up to 0.2 across three runs on a quiet machine, and over 3 s by about half that.
- **podman**: 8 processes each lock a random lock of 2048, spin 1 µs inside, unlock; the figure is operations per second, all processes together.
  A sample splits its operations evenly over the processes, which start together as in the contention group; it lasts from the first process's start to the last one's end.
- **alloc**: allocate+free with every id but the last one allocated.
  The peer is Podman's algorithm written here: scan 32-bit bitmap words from the first for one not full (the scan alone, without Podman's segment mutex).
  A file store of 2^20 locks is 2^20 lock files; it is created once, kept in `target/lockyard-bench/kept/` and reused by later runs (a `--quick` run without it skips that cell).
- **takeover**: a holder process is SIGKILLed while a thread of the bench waits in `lock` (a 30 s bound); the figure is from the kill to the waiter holding the lock.
  The kill comes a uniformly random 10-30 ms after the waiter started waiting, so it falls at a random phase of any probe or backoff cycle of the wait; the share of takeovers reported as owner death is listed too (1.00: all).
- **idle**: 50 processes wait in `lock` on a lock this process holds and never releases; the CPU they burn in the window (from `/proc/PID/schedstat`) and their context switches (from `/proc/PID/status`).
- **etcd** (with `--etcd`, or `cargo xtask bench etcd`): a 3-member cluster on 127.0.0.1 started by the bench in a second invocation of each run, after the local backends and their peers (so that its heartbeats do not run beside their figures), tables with a 2 s lease TTL (so a killed holder's lock is taken over within the TTL); the peer is etcd's Lock and Unlock RPCs on one session lease granted once per process (in the contention group, each process has its own lease).
- **coldstart**: execute a process that opens an existing store, takes lock 0, runs `true`, releases the lock and exits (`lockyard-coldstart SPEC -- true`), against `flock FILE true`.
  An in-process mem table cannot outlive its process, so the mem process creates its table.

`cargo xtask bench` also prints each backend crate's own `NAME: ours X, peer Y, ratio Z` lines (one run each; the checks read them): they are not quoted here.
";

/// `YYYY-MM-DD HH:MM UTC` now.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3_600, (secs % 3_600) / 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{d:02} {h:02}:{m:02} UTC")
}

/// The commit the run was built from, and whether the tree had changes.
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(crate::root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(sha) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{sha}, with uncommitted changes in the tree")
            } else {
                sha
            }
        }
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_show_median_and_spread() {
        let c = Cell {
            values: vec![30.0, 10.0, 20.0],
            unit: Unit::Ns,
        };
        assert_eq!(c.show(), "20.0 ns [10.0–30.0]");
        let c = Cell {
            values: vec![900.0, 1_500.0],
            unit: Unit::Ns,
        };
        assert_eq!(c.show(), "1.20 µs [900.0 ns–1.50 µs]");
        let one = Cell {
            values: vec![0.5],
            unit: Unit::Ratio,
        };
        assert_eq!(one.show(), "0.50");
    }

    #[test]
    fn dates_are_civil() {
        let now = utc_now();
        assert_eq!(now.len(), "2026-11-30 12:00 UTC".len());
    }

    #[test]
    fn etcd_targets_from_the_etcd_rows() {
        let run = RunFigures::parse(
            "uncontended\tlock+unlock, uncontended\tetcd\t2000000\tns\n\
             uncontended\tlock+unlock, uncontended\tetcd-lock-rpc\t1000000\tns\n\
             contention\tP = 4: ns per lock+unlock pair\tetcd\t10000000\tns\n\
             contention\tP = 4: ns per lock+unlock pair\tetcd-lock-rpc\t20000000\tns\n",
        );
        let r = Report::new(
            &[run],
            vec![0.5, 1.0],
            true,
            Duration::from_secs(60),
            "cargo xtask bench --etcd",
        );
        let targets = r.targets();
        assert!(
            targets
                .iter()
                .any(|t| t.starts_with("etcd lock+unlock, uncontended")
                    && t.contains("2.00 (target ≤ 1.00; met in 0 of 1 runs)")),
            "{targets:?}"
        );
        // 100 ops/s against 50 ops/s: twice the throughput.
        assert!(
            targets
                .iter()
                .any(|t| t.starts_with("etcd, 4 processes on one lock")
                    && t.contains("2.00 (target ≥ 1.20; met in 1 of 1 runs)")),
            "{targets:?}"
        );
        let lines = r.lines();
        assert!(
            lines.contains(&"compare-etcd-4proc: ours 100 ops/s, peer 50 ops/s, ratio 2.00".into()),
            "{lines:?}"
        );
        assert!(
            lines.contains(
                &"compare-etcd-uncontended: ours 2.00 ms, peer 1.00 ms, ratio 2.00".into()
            ),
            "{lines:?}"
        );
    }

    #[test]
    fn report_from_two_runs() {
        let run = |v: f64| {
            RunFigures::parse(&format!(
                "uncontended\tlock+unlock, uncontended\tshm\t{v}\tns\n\
                 uncontended\tlock+unlock, uncontended\tglibc-robust\t20\tns\n\
                 meta\tstore-dir\t/tmp (ext4)\n\
                 meta\tsyscall-return\t128 ns after a flock call\n"
            ))
        };
        let r = Report::new(
            &[run(10.0), run(30.0)],
            vec![0.5, 1.0, 1.5],
            false,
            Duration::from_secs(60),
            "cargo xtask bench",
        );
        let md = r.markdown();
        assert!(md.contains("20.0 ns [10.0–30.0]"), "{md}");
        assert!(md.contains("met in 1 of 2 runs"), "{md}");
        assert!(md.contains("/tmp (ext4)"));
        assert!(
            md.contains("system call (`benches/compare/host.rs`"),
            "{md}"
        );
        assert!(md.contains("128 ns after a flock call"), "{md}");
        assert!(r.text().contains("shm"));
        assert_eq!(
            r.lines(),
            vec!["compare-shm-uncontended: ours 20.0 ns, peer 20.0 ns, ratio 1.00".to_string()]
        );
    }
}
