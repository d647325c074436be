//! `cargo xtask conformance`: runs each backend's suite and prints the behaviour matrix.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use crate::{BACKENDS, BackendCrate, backend, cargo, prereq, show, target_dir};

/// What one backend's run produced.
enum Row {
    /// Behaviour name → (status, detail).
    Ran(BTreeMap<String, (String, String)>),
    /// The suite could not run here (missing prerequisites), with the reason and the fix.
    Unavailable(String),
    /// The test binary failed without a report (did not build, crashed).
    Broken(String),
}

pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let mut selected: Vec<BackendCrate> = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--backend" => {
                let name = args.next().ok_or("--backend needs a name")?;
                selected.push(backend(name)?);
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let explicit = !selected.is_empty();
    if !explicit {
        selected = BACKENDS.to_vec();
    }
    if selected.iter().any(|b| b.needs_etcd) {
        // Install etcd and protoc when we can; without them only the etcd row is unavailable.
        if let Err(e) = prereq::ensure(false) {
            eprintln!("xtask: {e}");
        }
    }
    let dir = target_dir().join("conformance");
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let mut rows = Vec::new();
    for b in &selected {
        rows.push((b.name, run_one(b, &dir)?));
    }
    print_matrix(&rows);
    let mut problems = Vec::new();
    for (name, row) in &rows {
        match row {
            Row::Ran(results) => {
                let failed = results.values().filter(|(s, _)| s == "FAIL").count();
                if failed > 0 {
                    problems.push(format!("{name}: {failed} behaviour(s) failed"));
                }
            }
            Row::Broken(_) => problems.push(format!("{name}: the suite did not run")),
            Row::Unavailable(_) if explicit => {
                problems.push(format!("{name}: unavailable on this machine"))
            }
            Row::Unavailable(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn run_one(b: &BackendCrate, dir: &std::path::Path) -> Result<Row, String> {
    if b.needs_etcd
        && let Some(missing) = prereq::etcd_missing()
    {
        return Ok(Row::Unavailable(format!(
            "{missing}; install with: {}",
            prereq::install_hint()
        )));
    }
    let report = dir.join(format!("{}.tsv", b.name));
    let log = dir.join(format!("{}.log", b.name));
    let _ = fs::remove_file(&report);
    let mut command = cargo();
    command
        .args(["test", "--package", b.package, "--test", "conformance"])
        .args([
            "--config",
            &crate::bounded_runner(crate::test_binary_bound()?),
        ])
        .env("LOCKYARD_CONFORMANCE_REPORT", &report);
    eprintln!("$ {}", show(&command));
    let output = command
        .output()
        .map_err(|e| format!("cannot run {}: {e}", show(&command)))?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    fs::write(&log, &text).map_err(|e| format!("write {}: {e}", log.display()))?;
    let Ok(report_text) = fs::read_to_string(&report) else {
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Ok(Row::Broken(format!(
            "no report ({}); full log in {}\n{}",
            output.status,
            log.display(),
            tail.join("\n")
        )));
    };
    let mut results = BTreeMap::new();
    for line in report_text.lines().filter(|l| !l.starts_with('#')) {
        let mut fields = line.splitn(3, '\t');
        if let (Some(name), Some(status)) = (fields.next(), fields.next()) {
            let detail = fields.next().unwrap_or("").to_string();
            results.insert(name.to_string(), (status.to_string(), detail));
        }
    }
    if !output.status.success() && !results.values().any(|(s, _)| s == "FAIL") {
        return Ok(Row::Broken(format!(
            "the suite exited with {} but reported no failed behaviour; log in {}",
            output.status,
            log.display()
        )));
    }
    Ok(Row::Ran(results))
}

fn print_matrix(rows: &[(&str, Row)]) {
    let behaviours: BTreeSet<&str> = rows
        .iter()
        .filter_map(|(_, row)| match row {
            Row::Ran(results) => Some(results.keys().map(String::as_str)),
            _ => None,
        })
        .flatten()
        .collect();
    let width = behaviours.iter().map(|b| b.len()).max().unwrap_or(9).max(9);
    let mut header = format!("{:width$}", "behaviour");
    for (name, _) in rows {
        header.push_str(&format!(" {name:>8}"));
    }
    println!("\n{header}");
    println!("{}", "-".repeat(header.len()));
    for behaviour in &behaviours {
        let mut line = format!("{behaviour:width$}");
        for (_, row) in rows {
            let cell = match row {
                Row::Ran(results) => results
                    .get(*behaviour)
                    .map(|(s, _)| s.as_str())
                    .unwrap_or("not run"),
                Row::Unavailable(_) => "unavail",
                Row::Broken(_) => "BROKEN",
            };
            line.push_str(&format!(" {cell:>8}"));
        }
        println!("{line}");
    }
    println!();
    for (name, row) in rows {
        match row {
            Row::Ran(results) => {
                let count = |s: &str| results.values().filter(|(st, _)| st == s).count();
                println!(
                    "{name}: {} pass, {} FAIL, {} n/a",
                    count("pass"),
                    count("FAIL"),
                    count("n/a")
                );
                for (behaviour, (status, detail)) in results {
                    if status == "FAIL" {
                        println!("  FAIL {behaviour}: {detail}");
                    }
                }
            }
            Row::Unavailable(why) => println!("{name}: unavailable: {why}"),
            Row::Broken(why) => println!("{name}: BROKEN: {why}"),
        }
    }
}
