//! What lockyard's benchmarks and `cargo xtask bench` share.
#![doc = include_str!("../README.md")]

mod figures;

use std::fs;
use std::path::{Path, PathBuf};

pub use figures::{
    Figure, RunFigures, Unit, criterion_median_ns, figures_file, record_figure, record_meta,
};

/// The cargo target directory: `$CARGO_TARGET_DIR`; else the directory holding the running
/// binary that cargo marked with `CACHEDIR.TAG` (a bench binary lives in
/// `<target>/release/deps/`); else the workspace's `target/`.
///
/// The running binary comes before this crate's source path because cargo may reuse a build of
/// this crate made from another checkout sharing the target directory (a git worktree): the
/// source path compiled into it would then name the other checkout.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let marked = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .skip(1)
            .find(|dir| dir.join("CACHEDIR.TAG").is_file())
            .map(Path::to_path_buf)
    });
    marked.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// Where benchmarks leave finished lines for `cargo xtask bench`.
pub fn line_dir() -> PathBuf {
    target_dir().join("lockyard-bench")
}

/// Whether criterion was asked for a quick run (`-- --quick`).
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

/// Whether this is a real benchmark run rather than criterion's test mode.
///
/// `cargo test --benches` runs each benchmark once as a smoke test; its figures mean nothing.
/// Criterion's rule: test mode unless `--bench` is given (cargo bench passes it), or `--test`.
pub fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

/// Prints `line` and, in a real benchmark run, records it as `<group>.line` for
/// `cargo xtask bench`. Test-mode figures are printed but never recorded.
///
/// # Panics
///
/// When the line cannot be written: a benchmark that cannot record its result has failed.
pub fn record_line(group: &str, line: &str) {
    if !measuring() {
        println!("{line} (test mode, not recorded)");
        return;
    }
    let dir = line_dir();
    let written = fs::create_dir_all(&dir)
        .and_then(|()| fs::write(dir.join(format!("{group}.line")), format!("{line}\n")));
    if let Err(e) = written {
        panic!("cannot record {group} in {}: {e}", dir.display());
    }
    println!("{line}");
}

/// The mean of one criterion benchmark, in nanoseconds per iteration, read from
/// `<dir>/new/estimates.json` where `dir` is `target/criterion/<group>/<function>`.
pub fn mean_ns_at(dir: &Path) -> Option<f64> {
    estimate_ns_at(dir, "mean")
}

/// One statistic (`mean`, `median`, ...) of a criterion benchmark, in nanoseconds per
/// iteration, read from `<dir>/new/estimates.json`.
pub fn estimate_ns_at(dir: &Path, statistic: &str) -> Option<f64> {
    let text = fs::read_to_string(dir.join("new").join("estimates.json")).ok()?;
    let mean = &text[text.find(&format!("\"{statistic}\""))?..];
    let key = "\"point_estimate\"";
    let point = &mean[mean.find(key)? + key.len()..];
    let number: String = point
        .trim_start_matches([':', ' '])
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        .collect();
    number.parse().ok()
}

/// The mean of criterion benchmark `group/function` in this target directory, in nanoseconds.
pub fn criterion_mean_ns(group: &str, function: &str) -> Option<f64> {
    mean_ns_at(&target_dir().join("criterion").join(group).join(function))
}

/// Nanoseconds as every bench line prints them: `12.3 ns`, `1.50 µs`, `2.00 ms`.
pub fn human(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.1} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else {
        format!("{:.2} ms", ns / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_dir_is_the_one_this_binary_was_built_in() {
        // Without CARGO_TARGET_DIR, this test binary sits in `<target>/debug/deps/`: lines a
        // bench records must land where xtask (built into the same target) looks for them,
        // even when this crate's build came from another checkout.
        let exe = std::env::current_exe().expect("current_exe");
        let target = target_dir();
        if std::env::var_os("CARGO_TARGET_DIR").is_none() {
            assert!(exe.starts_with(&target), "{exe:?} is not under {target:?}");
        }
        assert!(target.join("CACHEDIR.TAG").is_file(), "{target:?}");
    }

    #[test]
    fn reads_criterion_estimates() {
        let dir =
            std::env::temp_dir().join(format!("lockyard-bench-support-{}", std::process::id()));
        let new = dir.join("new");
        fs::create_dir_all(&new).expect("temp dir");
        fs::write(
            new.join("estimates.json"),
            r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":3.0},"point_estimate":2.5e1,"standard_error":0.1},"median":{"point_estimate":9.0}}"#,
        )
        .expect("write estimates");
        assert_eq!(mean_ns_at(&dir), Some(25.0));
        assert_eq!(estimate_ns_at(&dir, "median"), Some(9.0));
        fs::remove_dir_all(&dir).expect("clean up");
        assert_eq!(mean_ns_at(&dir), None);
    }

    #[test]
    fn prints_human_units() {
        assert_eq!(human(12.34), "12.3 ns");
        assert_eq!(human(1_500.0), "1.50 µs");
        assert_eq!(human(2_000_000.0), "2.00 ms");
    }
}
