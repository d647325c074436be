//! `cargo xtask bench`: runs criterion and prints `NAME: ours X, peer Y, ratio Z` per target.
//!
//! Convention (see ARCHITECTURE.md): a compared figure is a criterion group named
//! `<backend>-<what>` with the functions `ours` and `peer`. A figure that is not a timing of two
//! functions is written by the benchmark itself as one finished line into
//! `<target>/lockyard-bench/<backend>-<what>.line`.

use std::fs;
use std::path::Path;

use lockyard_bench_support::{human, mean_ns_at};

use crate::{BACKENDS, BackendCrate, backend, cargo, prereq, run, target_dir};

pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let mut quick = false;
    let mut save = false;
    let mut selected = Vec::new();
    for arg in args {
        match arg.as_str() {
            "--quick" => quick = true,
            "--save-plot" => save = true,
            name => selected.push(backend(name)?),
        }
    }
    if selected.is_empty() {
        selected = BACKENDS.to_vec();
        if prereq::etcd_missing().is_some() {
            let _ = prereq::ensure(false);
        }
    }
    let mut lines = Vec::new();
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
        lines.extend(bench_one(b, quick)?);
    }
    println!();
    for line in &lines {
        println!("{line}");
    }
    let chart = crate::plot::svg(&lines);
    let plot = target_dir().join("lockyard-bench").join("plot.svg");
    let docs = crate::root().join("docs").join("benchmarks.svg");
    let path = if save { docs } else { plot };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    fs::write(&path, chart).map_err(|e| format!("write {}: {e}", path.display()))?;
    eprintln!("xtask: plot written to {}", path.display());
    Ok(())
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
