//! Figures of the side-by-side comparison (the root `benches/` package) and how they travel to
//! `cargo xtask bench`.
//!
//! The comparison bench writes one [`Figure`] per line into [`figures_file`], a tab-separated
//! file: `group \t row \t column \t value \t unit`. A line whose first field is `meta` carries a
//! fact about the run instead (`meta \t key \t value`). xtask moves the file aside after each run
//! and reads every run's file back to quote the median and the spread.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::{human, line_dir, measuring};

/// The unit of a figure; it decides how the figure is printed and which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds (printed as ns, µs or ms).
    Ns,
    /// Operations per second, all processes together.
    OpsPerSec,
    /// A dimensionless ratio such as fairness (min ÷ max).
    Ratio,
    /// CPU-seconds.
    CpuSeconds,
    /// A count of events.
    Count,
}

impl Unit {
    /// The name used in the figures file.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Ns => "ns",
            Unit::OpsPerSec => "ops/s",
            Unit::Ratio => "ratio",
            Unit::CpuSeconds => "cpu-s",
            Unit::Count => "count",
        }
    }

    /// Whether a smaller value is the better one.
    pub fn lower_is_better(self) -> bool {
        matches!(self, Unit::Ns | Unit::CpuSeconds)
    }

    /// `value` printed in this unit: `12.3 ns`, `41,200 ops/s`, `0.83`, `0.012 CPU-s`, `17`.
    pub fn show(self, value: f64) -> String {
        match self {
            Unit::Ns => human(value),
            Unit::OpsPerSec => format!("{} ops/s", thousands(value)),
            Unit::Ratio => format!("{value:.2}"),
            Unit::CpuSeconds => format!("{value:.3} CPU-s"),
            Unit::Count => thousands(value),
        }
    }
}

impl FromStr for Unit {
    type Err = String;

    fn from_str(s: &str) -> Result<Unit, String> {
        [
            Unit::Ns,
            Unit::OpsPerSec,
            Unit::Ratio,
            Unit::CpuSeconds,
            Unit::Count,
        ]
        .into_iter()
        .find(|u| u.name() == s)
        .ok_or_else(|| format!("unknown unit {s:?}"))
    }
}

/// `1234567.8` as `1,234,568`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 { format!("-{out}") } else { out }
}

/// One measured figure: a cell of the comparison table.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// The bench group (`uncontended`, `contention`, ...).
    pub group: String,
    /// The table row inside the group (`P = 2: ns per pair`).
    pub row: String,
    /// The backend or peer (`shm`, `glibc-robust`, ...).
    pub column: String,
    /// The value, in `unit`.
    pub value: f64,
    /// Its unit.
    pub unit: Unit,
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\t{}\t{}\t{}\t{}",
            self.group,
            self.row,
            self.column,
            self.value,
            self.unit.name()
        )
    }
}

/// What one run of the comparison bench wrote: its figures and its `meta` facts, in order.
#[derive(Debug, Clone, Default)]
pub struct RunFigures {
    /// The figures in the order they were measured.
    pub figures: Vec<Figure>,
    /// `(key, value)` facts about the run (the store directory and its filesystem, ...).
    pub meta: Vec<(String, String)>,
}

impl RunFigures {
    /// Parses a figures file; lines that do not parse are skipped.
    pub fn parse(text: &str) -> RunFigures {
        let mut run = RunFigures::default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                ["meta", key, value] => run.meta.push((key.to_string(), value.to_string())),
                [group, row, column, value, unit] => {
                    let (Ok(value), Ok(unit)) = (value.parse::<f64>(), unit.parse::<Unit>()) else {
                        continue;
                    };
                    if value.is_finite() {
                        run.figures.push(Figure {
                            group: group.to_string(),
                            row: row.to_string(),
                            column: column.to_string(),
                            value,
                            unit,
                        });
                    }
                }
                _ => {}
            }
        }
        run
    }

    /// Reads and parses a figures file; a missing file is an empty run.
    pub fn read(path: &Path) -> RunFigures {
        fs::read_to_string(path)
            .map(|t| RunFigures::parse(&t))
            .unwrap_or_default()
    }
}

/// Where the comparison bench writes the figures of the run in progress.
pub fn figures_file() -> PathBuf {
    line_dir().join("compare").join("figures.tsv")
}

fn append(line: &str) -> io::Result<()> {
    let path = figures_file();
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    writeln!(file, "{line}")
}

/// Prints a figure and, in a real benchmark run (not criterion's test mode), appends it to
/// [`figures_file`].
///
/// # Errors
///
/// When the figures file cannot be written.
pub fn record_figure(figure: &Figure) -> io::Result<()> {
    println!(
        "compare {} | {} | {}: {}",
        figure.group,
        figure.row,
        figure.column,
        figure.unit.show(figure.value)
    );
    if measuring() {
        append(&figure.to_string())?;
    }
    Ok(())
}

/// Records a fact about the run (`meta \t key \t value`) in a real benchmark run.
///
/// # Errors
///
/// When the figures file cannot be written.
pub fn record_meta(key: &str, value: &str) -> io::Result<()> {
    if measuring() {
        append(&format!("meta\t{key}\t{value}"))?;
    }
    Ok(())
}

/// The median of one criterion benchmark in nanoseconds per iteration, read from
/// `target/criterion/<group>/<function>[/<parameter>]/new/estimates.json`.
pub fn criterion_median_ns(group: &str, function: &str, parameter: Option<&str>) -> Option<f64> {
    let mut dir = crate::target_dir()
        .join("criterion")
        .join(group)
        .join(function);
    if let Some(p) = parameter {
        dir = dir.join(p);
    }
    crate::estimate_ns_at(&dir, "median")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_round_trip() {
        let f = Figure {
            group: "contention".into(),
            row: "P = 2: ns per pair".into(),
            column: "shm".into(),
            value: 27.5,
            unit: Unit::Ns,
        };
        let text = format!("{f}\nmeta\tstore-dir\t/tmp (ext4)\ngarbage\n");
        let run = RunFigures::parse(&text);
        assert_eq!(run.figures, vec![f]);
        assert_eq!(
            run.meta,
            vec![("store-dir".to_string(), "/tmp (ext4)".to_string())]
        );
    }

    #[test]
    fn units_print() {
        assert_eq!(Unit::OpsPerSec.show(1_234_567.8), "1,234,568 ops/s");
        assert_eq!(Unit::Count.show(999.0), "999");
        assert_eq!(Unit::Ratio.show(0.8333), "0.83");
        assert_eq!(Unit::CpuSeconds.show(0.0123), "0.012 CPU-s");
        assert_eq!(Unit::Ns.show(1_500.0), "1.50 µs");
    }
}
