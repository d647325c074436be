//! `cargo xtask bench`: runs each backend crate's criterion benches and prints
//! `NAME: ours X, peer Y, ratio Z` per target, then runs the side-by-side comparison (the root
//! `benches/` package) several times and writes the report.
//!
//! ```text
//! cargo xtask bench [BACKEND..] [--quick] [--runs N] [--compare | --no-compare] [--etcd]
//!                   [--save-plot]
//! ```
//!
//! - no BACKEND: every backend; the report goes to `docs/benchmarks.md` and its charts to
//!   `docs/*.svg` (unless `--quick` or fewer than 3 runs); with BACKENDs, the comparison runs
//!   those backends (and every peer); other reports stay in `target/lockyard-bench/report/`;
//! - `--runs N`: comparison runs (default 3, or 1 with `--quick`); each figure of the report is
//!   the median of the runs with their min–max;
//! - `--compare`: only the comparison; `--no-compare`: only the per-backend lines;
//! - `--etcd`: the comparison gets its etcd rows (cargo feature `etcd` of `lockyard-benches`:
//!   needs protoc and etcd; the bench starts a 3-member cluster); selecting the `etcd` backend
//!   does the same for etcd alone;
//! - `--save-plot`: the per-backend lines' ratio chart goes to `docs/benchmarks.svg`.
//!
//! Per-backend convention (see ARCHITECTURE.md): a compared figure is a criterion group named
//! `<backend>-<what>` with the functions `ours` and `peer`. A figure that is not a timing of two
//! functions is written by the benchmark itself as one finished line into
//! `<target>/lockyard-bench/<backend>-<what>.line`.
//!
//! The comparison writes its figures to `lockyard_bench_support::figures_file()`; xtask reads
//! that file after each run. Criterion's HTML report (`target/criterion/report/index.html`) is
//! drawn on the last run only: its plots cost more than the runs before it.

mod report;

use std::fs;
use std::path::Path;
use std::time::Instant;

use lockyard_bench_support::{RunFigures, figures_file, human, mean_ns_at};

use crate::{BACKENDS, BackendCrate, backend, cargo, prereq, run, target_dir};

/// What the command line asked for.
#[derive(Debug, Default)]
struct Options {
    quick: bool,
    save_plot: bool,
    runs: Option<usize>,
    compare_only: bool,
    no_compare: bool,
    etcd: bool,
    selected: Vec<BackendCrate>,
}

fn options(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => o.quick = true,
            "--save-plot" => o.save_plot = true,
            "--compare" => o.compare_only = true,
            "--no-compare" => o.no_compare = true,
            "--etcd" => o.etcd = true,
            "--runs" => {
                let n = args.next().ok_or("--runs needs a number")?;
                o.runs = Some(
                    n.parse()
                        .map_err(|_| format!("--runs {n:?}: not a number"))?,
                );
            }
            other if other.starts_with("--runs=") => {
                let n = &other["--runs=".len()..];
                o.runs = Some(n.parse().map_err(|_| format!("{other:?}: not a number"))?);
            }
            name => o.selected.push(backend(name)?),
        }
    }
    if o.runs == Some(0) {
        return Err("--runs must be at least 1".into());
    }
    if o.compare_only && o.no_compare {
        return Err("--compare and --no-compare exclude each other".into());
    }
    Ok(o)
}

pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let o = options(args)?;
    let started = Instant::now();
    let load_start = report::load_average();
    let all = o.selected.is_empty();
    let selected = if all {
        BACKENDS.to_vec()
    } else {
        o.selected.clone()
    };
    if all && prereq::etcd_missing().is_some() && !o.compare_only {
        let _ = prereq::ensure(false);
    }
    let mut lines = Vec::new();
    if !o.compare_only {
        for b in &selected {
            if b.needs_etcd
                && let Some(missing) = prereq::etcd_missing()
            {
                lines.push(format!(
                    "{}: unavailable ({missing}; install with: {})",
                    b.name,
                    prereq::install_hint()
                ));
                continue;
            }
            lines.extend(bench_one(b, o.quick)?);
        }
    }
    let comparison = if o.no_compare {
        None
    } else {
        let runs = o.runs.unwrap_or(if o.quick { 1 } else { 3 });
        Some(compare(&o, all, runs)?)
    };
    println!();
    for line in &lines {
        println!("{line}");
    }
    if !lines.is_empty() {
        let chart = crate::plot::svg(&lines);
        let plot = target_dir().join("lockyard-bench").join("plot.svg");
        let docs = crate::root().join("docs").join("benchmarks.svg");
        let path = if o.save_plot { docs } else { plot };
        write(&path, &chart)?;
        eprintln!("xtask: plot written to {}", path.display());
    }
    if let Some((runs, loads)) = comparison {
        let run_count = runs.len();
        let mut loads = loads;
        loads.insert(0, load_start);
        let report = report::Report::new(
            &runs,
            loads,
            o.quick,
            started.elapsed(),
            &command_line(args),
        );
        println!();
        println!("{}", report.text());
        for line in report.lines() {
            println!("{line}");
        }
        // docs/ quotes the spread of at least three runs of every default backend.
        let to_docs = all && !o.quick && run_count >= 3;
        let dir = if to_docs {
            crate::root().join("docs")
        } else {
            target_dir().join("lockyard-bench").join("report")
        };
        for (name, content) in report.files() {
            write(&dir.join(name), &content)?;
        }
        eprintln!(
            "xtask: report written to {}; criterion's HTML report is {}",
            dir.join("benchmarks.md").display(),
            target_dir()
                .join("criterion")
                .join("report")
                .join("index.html")
                .display()
        );
    }
    eprintln!(
        "xtask: bench took {:.1} min",
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

fn command_line(args: &[String]) -> String {
    let mut text = "cargo xtask bench".to_string();
    for a in args {
        text.push(' ');
        text.push_str(a);
    }
    text
}

fn write(path: &Path, content: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    fs::write(path, content).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Runs the comparison bench `runs` times; returns each run's figures and the 1-minute load
/// average after each run.
///
/// With etcd, each run is two invocations: the local backends with their peers, then etcd with
/// its peer. The test cluster (three members sending heartbeats every 50 ms) starts only for
/// the second, so it does not run beside the local figures: beside it, lock-shm's takeover
/// maximum rose from 0.17-0.35 ms to 0.62-0.69 ms in one sitting (three runs each).
fn compare(o: &Options, all: bool, runs: usize) -> Result<(Vec<RunFigures>, Vec<f64>), String> {
    let figures = figures_file();
    let mut results = Vec::new();
    let mut loads = Vec::new();
    let etcd = o.etcd || o.selected.iter().any(|b| b.needs_etcd);
    let asked: Vec<&BackendCrate> = if all {
        BACKENDS.iter().collect()
    } else {
        o.selected.iter().collect()
    };
    // `None`: every backend the build has (no etcd ones without the feature).
    let passes: Vec<Option<Vec<&str>>> = if !etcd && all {
        vec![None]
    } else {
        [false, true]
            .into_iter()
            .map(|on_etcd| {
                asked
                    .iter()
                    .filter(|b| b.needs_etcd == on_etcd)
                    .map(|b| b.name)
                    .collect::<Vec<_>>()
            })
            .filter(|names| !names.is_empty())
            .map(Some)
            .collect()
    };
    for i in 1..=runs {
        eprintln!("xtask: comparison run {i} of {runs}");
        let mut run_figures = RunFigures::default();
        for names in &passes {
            let _ = fs::remove_file(&figures);
            let mut command = cargo();
            command.args([
                "bench",
                "--package",
                "lockyard-benches",
                "--bench",
                "compare",
            ]);
            if etcd {
                command.args(["--features", "etcd"]);
            }
            command.arg("--");
            if o.quick {
                command.arg("--quick");
            }
            if i < runs || o.quick {
                // Criterion's plots cost about half a second a benchmark: only the last full run
                // draws them (its HTML report is the one kept).
                command.arg("--noplot");
            }
            if let Some(names) = names {
                command.env("LOCKYARD_BENCH_BACKENDS", names.join(","));
            }
            run(&mut command)?;
            let pass = RunFigures::read(&figures);
            if pass.figures.is_empty() {
                return Err(format!(
                    "comparison run {i} recorded no figures in {}",
                    figures.display()
                ));
            }
            let kept = figures.with_file_name(format!(
                "figures-run{i}-{}.tsv",
                names.as_ref().map_or("all".to_string(), |n| n.join("+"))
            ));
            let _ = fs::rename(&figures, &kept);
            run_figures.figures.extend(pass.figures);
            // The facts of the run (store directory, mode) are the same in every pass.
            if run_figures.meta.is_empty() {
                run_figures.meta = pass.meta;
            }
        }
        results.push(run_figures);
        loads.push(report::load_average());
    }
    Ok((results, loads))
}

fn bench_one(b: &BackendCrate, quick: bool) -> Result<Vec<String>, String> {
    let criterion = target_dir().join("criterion");
    let extra = target_dir().join("lockyard-bench");
    let prefix = format!("{}-", b.name);
    remove_matching(&criterion, &prefix);
    remove_matching(&extra, &prefix);
    let mut command = cargo();
    command
        .args(["bench", "--package", b.package, "--bench", "*"])
        .args(b.bench_args)
        .arg("--");
    if quick {
        command.arg("--quick");
    }
    run(&mut command)?;
    let mut lines = Vec::new();
    for group in names_matching(&criterion, &prefix) {
        let dir = criterion.join(&group);
        let Some(ours) = mean_ns_at(&dir.join("ours")) else {
            continue;
        };
        lines.push(match mean_ns_at(&dir.join("peer")) {
            Some(peer) => format!(
                "{group}: ours {}, peer {}, ratio {:.2}",
                human(ours),
                human(peer),
                ours / peer
            ),
            None => format!("{group}: ours {}", human(ours)),
        });
    }
    for name in names_matching(&extra, &prefix) {
        if let Ok(text) = fs::read_to_string(extra.join(&name)) {
            lines.extend(text.lines().map(str::to_string));
        }
    }
    if lines.is_empty() {
        return Err(format!(
            "{} benchmarks produced no `{prefix}*` results in {}",
            b.name,
            criterion.display()
        ));
    }
    Ok(lines)
}

fn names_matching(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn remove_matching(dir: &Path, prefix: &str) {
    for name in names_matching(dir, prefix) {
        let path = dir.join(name);
        let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options() {
        let args: Vec<String> = ["shm", "--runs", "5", "--quick"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = options(&args).expect("options");
        assert_eq!(o.runs, Some(5));
        assert!(o.quick);
        assert_eq!(o.selected.len(), 1);
        assert!(options(&["--runs=0".to_string()]).is_err());
        assert!(options(&["--compare".into(), "--no-compare".into()]).is_err());
    }
}
