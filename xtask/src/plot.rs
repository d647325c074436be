//! An SVG bar chart of the bench lines: our figure as a fraction of the peer's or the target.

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
}
