//! SVG charts: a bar chart of the per-backend bench lines (our figure as a fraction of the peer's
//! or the target), and the line charts of the comparison report.

use std::fmt::Write as _;

/// One bar: a line's name and ours ÷ (peer or target), and which of the two it is against.
struct Bar {
    name: String,
    ratio: f64,
    against: &'static str,
}

/// Parses `12.3 ns`, `1.2 µs`, `4.14` into nanoseconds (or the bare number).
fn quantity(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let value: f64 = parts.next()?.parse().ok()?;
    let scale = match parts.next() {
        None => 1.0,
        Some("ns") => 1.0,
        Some("µs" | "us") => 1e3,
        Some("ms") => 1e6,
        Some("s") => 1e9,
        Some(_) => return None,
    };
    Some(value * scale)
}

fn bar(line: &str) -> Option<Bar> {
    let (name, rest) = line.split_once(": ")?;
    let mut ours = None;
    let mut other = None;
    for field in rest.split(", ") {
        if let Some(v) = field.strip_prefix("ours ") {
            ours = quantity(v);
        } else if let Some(v) = field.strip_prefix("peer ") {
            other = quantity(v).map(|q| (q, "peer"));
        } else if let Some(v) = field.strip_prefix("target ") {
            other = other.or(quantity(v).map(|q| (q, "target")));
        }
    }
    let (other, against) = other?;
    let ours = ours?;
    (other > 0.0).then(|| Bar {
        name: name.to_string(),
        ratio: ours / other,
        against,
    })
}

/// An SVG chart with one bar per line that has a peer or a target, on a log scale, with the
/// 1.0 line marked: a bar left of it means we are faster (or smaller) than the peer or target.
pub(crate) fn svg(lines: &[String]) -> String {
    let bars: Vec<Bar> = lines.iter().filter_map(|l| bar(l)).collect();
    let longest = bars
        .iter()
        .map(|b| b.name.chars().count())
        .max()
        .unwrap_or(10);
    // Monospace at 12 px is about 7.3 px a character.
    let label_w = 20.0 + 7.3 * longest as f64;
    let (plot_w, row_h, top) = (420.0, 22.0, 40.0);
    let height = top + row_h * bars.len() as f64 + 40.0;
    // Log10 scale from 1/1000 to 10.
    let (lo, hi) = (-3.0f64, 1.0f64);
    let x = |ratio: f64| label_w + plot_w * ((ratio.clamp(1e-3, 10.0).log10() - lo) / (hi - lo));
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="monospace" font-size="12">"#,
        w = label_w + plot_w + 80.0
    );
    let _ = writeln!(
        out,
        r#"<text x="10" y="20">ours ÷ peer (or ÷ target), log scale; left of the red line is better</text>"#
    );
    for (i, b) in bars.iter().enumerate() {
        let y = top + row_h * i as f64;
        let colour = if b.ratio <= 1.0 { "#4a8" } else { "#d84" };
        let _ = writeln!(out, r#"<text x="10" y="{}">{}</text>"#, y + 14.0, b.name);
        let _ = writeln!(
            out,
            r#"<rect x="{label_w}" y="{}" width="{:.1}" height="{}" fill="{colour}"/>"#,
            y + 3.0,
            (x(b.ratio) - label_w).max(1.0),
            row_h - 6.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}">{:.3} × {}</text>"#,
            x(b.ratio) + 4.0,
            y + 14.0,
            b.ratio,
            b.against
        );
    }
    let one = x(1.0);
    let _ = writeln!(
        out,
        r#"<line x1="{one:.1}" y1="{}" x2="{one:.1}" y2="{}" stroke="red"/>"#,
        top - 4.0,
        height - 30.0
    );
    for (tick, label) in [
        (1e-3, "0.001"),
        (1e-2, "0.01"),
        (1e-1, "0.1"),
        (1.0, "1"),
        (10.0, "10"),
    ] {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}">{label}</text>"#,
            x(tick) - 8.0,
            height - 12.0
        );
    }
    out.push_str("</svg>\n");
    out
}

/// One point of a line chart: a median and its spread over the runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Point {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

/// One line of a line chart: a backend or a peer, a point (or a gap) per x label.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) points: Vec<Option<Point>>,
}

const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
];

/// A line chart of nanosecond figures on a log scale: one line per series through its medians,
/// a min–max bar at each point, x labels evenly spaced.
pub(crate) fn line_chart(
    title: &str,
    x_title: &str,
    labels: &[String],
    series: &[Series],
) -> String {
    let values: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().flatten())
        .flat_map(|p| [p.min, p.max])
        .filter(|v| *v > 0.0)
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(0.0, f64::max);
    let (lo, hi) = if values.is_empty() {
        (0.0, 1.0)
    } else {
        (
            lo.log10().floor(),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        )
    };
    let (left, top, w, h) = (70.0, 40.0, 480.0, 300.0);
    let legend_x = left + w + 20.0;
    let n = labels.len().max(2) as f64;
    let x = |i: usize| left + w * (i as f64 + 0.5) / n;
    let y = |v: f64| top + h * (1.0 - (v.max(1e-12).log10() - lo) / (hi - lo));
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="12">"#,
        legend_x + 170.0,
        top + h + 50.0
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="10" y="20" font-size="14">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#888"/>"##
    );
    let mut decade = lo;
    while decade <= hi {
        let v = 10f64.powf(decade);
        let yy = y(v);
        let _ = writeln!(
            out,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#ddd"/>"##,
            left + w
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 6.0,
            yy + 4.0,
            escape(&lockyard_bench_support::human(v))
        );
        decade += 1.0;
    }
    for (i, label) in labels.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x(i),
            top + h + 18.0,
            escape(label)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
        left + w / 2.0,
        top + h + 38.0,
        escape(x_title)
    );
    for (k, s) in series.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        let dash = if k >= PALETTE.len() {
            r#" stroke-dasharray="4 3""#
        } else {
            ""
        };
        let mut path = String::new();
        for (i, p) in s.points.iter().enumerate() {
            let Some(p) = p else { continue };
            let _ = write!(
                path,
                "{}{:.1},{:.1} ",
                if path.is_empty() { "M" } else { "L" },
                x(i),
                y(p.median)
            );
            let _ = writeln!(
                out,
                r#"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="{colour}"/>"#,
                x(i),
                y(p.min),
                y(p.max)
            );
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                x(i),
                y(p.median)
            );
        }
        let _ = writeln!(
            out,
            r#"<path d="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
            path.trim_end()
        );
        let ly = top + 10.0 + 18.0 * k as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{legend_x}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/>"#,
            legend_x + 20.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}">{}</text>"#,
            legend_x + 26.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    out.push_str("</svg>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peer_and_target_lines() {
        let b = bar("shm-uncontended: ours 18.1 ns, peer 32.8 ns, ratio 0.55").expect("bar");
        assert!((b.ratio - 18.1 / 32.8).abs() < 1e-9);
        assert_eq!(b.against, "peer");
        let b = bar("shm-alloc-free-2e20: ours 83.7 ns, target 1.00 µs").expect("bar");
        assert!((b.ratio - 0.0837).abs() < 1e-9);
        assert_eq!(b.against, "target");
        assert!(bar("mem-lock-unlock: ours 5.0 ns").is_none());
        let chart = svg(&["a: ours 1 ms, peer 2 ms, ratio 0.5".to_string()]);
        assert!(chart.contains("0.500 × peer"));
    }

    #[test]
    fn draws_lines_with_gaps() {
        let p = |v: f64| {
            Some(Point {
                median: v,
                min: v * 0.9,
                max: v * 1.1,
            })
        };
        let chart = line_chart(
            "t <1>",
            "processes",
            &["1".into(), "2".into()],
            &[
                Series {
                    name: "shm".into(),
                    points: vec![p(30.0), p(40.0)],
                },
                Series {
                    name: "file".into(),
                    points: vec![None, p(900.0)],
                },
            ],
        );
        assert!(chart.contains("t &lt;1&gt;"));
        assert_eq!(chart.matches("<path").count(), 2);
        assert_eq!(chart.matches("<circle").count(), 3);
        assert!(chart.ends_with("</svg>\n"));
    }
}
