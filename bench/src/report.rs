//! Output: the table for people, JSON lines for machines, and the SVG latency CDF.

use std::fmt::Write as _;

use crate::error::BenchError;
use crate::produce::ProduceResult;
use crate::stats::RunResult;

/// The implementation every ratio is taken against.
pub const BASELINE: &str = "tokio-mt";

/// One row of the matrix: a workload and the results of every implementation on it.
#[derive(Debug)]
pub struct Row {
    /// Human label of the workload.
    pub label: String,
    /// Results, one per implementation, in run order; `Err` holds why a run failed.
    pub results: Vec<(String, Result<RunResult, BenchError>)>,
}

/// "100 B", "16 KiB", "1 MiB".
pub fn size_label(n: usize) -> String {
    if n >= 1024 * 1024 && n % (1024 * 1024) == 0 {
        format!("{} MiB", n / (1024 * 1024))
    } else if n >= 1024 && n % 1024 == 0 {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}

/// The workload label of a row.
pub fn workload_label(
    size: usize,
    conns: usize,
    inflight: usize,
    idle: usize,
    pin: Option<usize>,
) -> String {
    let mut s = format!("{} C={conns} W={inflight}", size_label(size));
    if idle > 0 {
        let _ = write!(s, " +{idle} idle");
    }
    if let Some(cpu) = pin {
        let _ = write!(s, " cpu{cpu}");
    }
    s
}

/// "1,234,567".
pub fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn us(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Renders the table: one line per implementation per row, with req/s and p50 ratios against
/// [`BASELINE`] of the same row.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "workload",
        "impl",
        "req/s",
        "MB/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "errors",
        "req/s ÷ tokio-mt",
        "p50 ÷ tokio-mt",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for row in rows {
        let base = row.results.iter().find_map(|(name, r)| match r {
            Ok(r) if name == BASELINE => Some(r.clone()),
            _ => None,
        });
        for (i, (name, r)) in row.results.iter().enumerate() {
            let label = if i == 0 {
                row.label.clone()
            } else {
                String::new()
            };
            match r {
                Ok(r) => {
                    lines.push(vec![
                        label,
                        name.clone(),
                        thousands(r.rps),
                        format!("{:.1}", r.mbps),
                        us(r.p50_us),
                        us(r.p99_us),
                        us(r.p999_us),
                        us(r.max_us),
                        r.errors.to_string(),
                        ratio(r.rps, base.as_ref().map(|b| b.rps)),
                        ratio(r.p50_us, base.as_ref().map(|b| b.p50_us)),
                    ]);
                }
                Err(e) => {
                    let mut l = vec![label, name.clone(), format!("FAILED: {e:#}")];
                    l.resize(header.len(), String::new());
                    lines.push(l);
                }
            }
        }
    }
    render(&lines)
}

/// Lays out `lines` (the first is the header) in columns: the first two left-aligned, the rest
/// right-aligned; a cell starting with "FAILED" runs on, left-aligned, and does not count for the
/// widths.
fn render(lines: &[Vec<String>]) -> String {
    let ncols = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..ncols)
        .map(|c| {
            lines
                .iter()
                .filter(|l| c < 2 || !l[2].starts_with("FAILED"))
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in lines {
        let mut s = String::new();
        for (c, cell) in l.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            if c < 2 || cell.starts_with("FAILED") {
                s.push_str(cell);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            }
            s.push_str("  ");
        }
        out.push_str(s.trim_end());
        out.push('\n');
    }
    out
}

/// The implementation the produce ratios are taken against.
pub const PRODUCE_BASELINE: &str = "rdkafka";

/// One row of the produce table: a workload and the result of every producer on it.
#[derive(Debug)]
pub struct ProduceRow {
    /// Human label of the workload.
    pub label: String,
    /// Results, one per implementation, in run order; `Err` holds why a run failed.
    pub results: Vec<(String, Result<ProduceResult, BenchError>)>,
}

fn ratio(num: f64, den: Option<f64>) -> String {
    match den {
        Some(d) if d > 0.0 => format!("{:.2}×", num / d),
        _ => "-".to_string(),
    }
}

/// Renders the produce table: one line per implementation per row, with records/s and p50 ratios
/// against [`PRODUCE_BASELINE`] of the same row.
pub fn produce_table(rows: &[ProduceRow]) -> String {
    let header = [
        "workload",
        "impl",
        "records/s",
        "MB/s",
        "p50 µs",
        "p99 µs",
        "errors",
        "records/s ÷ rdkafka",
        "p50 ÷ rdkafka",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for row in rows {
        let base = row.results.iter().find_map(|(name, r)| match r {
            Ok(r) if name == PRODUCE_BASELINE => Some(r.clone()),
            _ => None,
        });
        for (i, (name, r)) in row.results.iter().enumerate() {
            let label = if i == 0 {
                row.label.clone()
            } else {
                String::new()
            };
            match r {
                Ok(r) => lines.push(vec![
                    label,
                    name.clone(),
                    thousands(r.records_per_s),
                    format!("{:.1}", r.mbps),
                    us(r.p50_us),
                    us(r.p99_us),
                    r.errors.to_string(),
                    ratio(r.records_per_s, base.as_ref().map(|b| b.records_per_s)),
                    ratio(r.p50_us, base.as_ref().map(|b| b.p50_us)),
                ]),
                Err(e) => {
                    let mut l = vec![label, name.clone(), format!("FAILED: {e:#}")];
                    l.resize(header.len(), String::new());
                    lines.push(l);
                }
            }
        }
    }
    render(&lines)
}

/// One JSON line per run, without the CDF.
pub fn json_line(r: &RunResult) -> String {
    let mut r = r.clone();
    r.cdf.clear();
    serde_json::to_string(&r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn color(name: &str) -> &'static str {
    match name {
        "tokio-mt" => "#1f77b4",
        "tokio-ct" => "#ff7f0e",
        "mqnet" => "#2ca02c",
        _ => "#7f7f7f",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SVG with one panel per row: the latency CDF (log-scaled latency on x, fraction of responses
/// at or below it on y) of every implementation that ran on that row.
pub fn svg(rows: &[Row], title: &str) -> String {
    const W: f64 = 820.0;
    const PANEL_H: f64 = 300.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 150.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 50.0;
    let height = 40.0 + PANEL_H * rows.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    for (p, row) in rows.iter().enumerate() {
        let y0 = 40.0 + PANEL_H * p as f64;
        let plot_w = W - LEFT - RIGHT;
        let plot_h = PANEL_H - TOP - BOTTOM;
        let (px, py) = (LEFT, y0 + TOP);
        let curves: Vec<(&str, &[(f64, f64)])> = row
            .results
            .iter()
            .filter_map(|(n, r)| match r {
                Ok(r) if !r.cdf.is_empty() => Some((n.as_str(), r.cdf.as_slice())),
                _ => None,
            })
            .collect();
        let lo = curves
            .iter()
            .flat_map(|(_, c)| c.iter().map(|p| p.0))
            .fold(f64::INFINITY, f64::min)
            .max(0.1);
        let hi = curves
            .iter()
            .flat_map(|(_, c)| c.iter().map(|p| p.0))
            .fold(0.0f64, f64::max)
            .max(lo * 10.0);
        let (dlo, dhi) = (lo.log10().floor(), hi.log10().ceil());
        let x = |v: f64| px + (v.max(1e-3).log10() - dlo) / (dhi - dlo) * plot_w;
        let y = |q: f64| py + (1.0 - q) * plot_h;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{}</text>"#,
            px + plot_w / 2.0,
            y0 + 24.0,
            esc(&row.label)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{px}" y="{py}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
        );
        // Grid: decades and 2, 5 within each, on x; tenths on y.
        let mut decade = dlo;
        while decade <= dhi {
            for m in [1.0, 2.0, 5.0] {
                let v = 10f64.powf(decade) * m;
                if v.log10() > dhi + 1e-9 {
                    break;
                }
                let gx = x(v);
                let stroke = if m == 1.0 { "#bbb" } else { "#e4e4e4" };
                let _ = writeln!(
                    s,
                    r#"<line x1="{gx:.1}" y1="{py}" x2="{gx:.1}" y2="{:.1}" stroke="{stroke}"/>"#,
                    py + plot_h
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{gx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                    py + plot_h + 16.0,
                    if v >= 1.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v}")
                    }
                );
            }
            decade += 1.0;
        }
        for t in 0..=10 {
            let q = f64::from(t) / 10.0;
            let gy = y(q);
            let _ = writeln!(
                s,
                r##"<line x1="{px}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#eee"/>"##,
                px + plot_w
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{q:.1}</text>"#,
                px - 6.0,
                gy + 4.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">latency (µs, log scale)</text>"#,
            px + plot_w / 2.0,
            py + plot_h + 34.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" transform="rotate(-90 {:.1} {:.1})">fraction ≤ latency</text>"#,
            px - 45.0,
            py + plot_h / 2.0,
            px - 45.0,
            py + plot_h / 2.0
        );
        for (i, (name, cdf)) in curves.iter().enumerate() {
            let mut pts = String::new();
            let mut prev_q = 0.0;
            for &(lat, q) in cdf.iter() {
                // Steps: up at each latency.
                let _ = write!(pts, "{:.1},{:.1} ", x(lat), y(prev_q));
                let _ = write!(pts, "{:.1},{:.1} ", x(lat), y(q));
                prev_q = q;
            }
            let c = color(name);
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
                pts.trim_end()
            );
            let ly = py + 16.0 + 18.0 * i as f64;
            let lx = px + plot_w + 14.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{c}" stroke-width="3"/>"#,
                lx + 22.0
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                lx + 28.0,
                ly + 4.0,
                esc(name)
            );
        }
        if curves.is_empty() {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no data</text>"#,
                px + plot_w / 2.0,
                py + plot_h / 2.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, rps: f64, p50: f64) -> RunResult {
        RunResult {
            implementation: name.into(),
            conns: 10,
            inflight: 5,
            size: 100,
            resp_size: 16,
            idle: 0,
            pinned_cpu: None,
            cores: 2,
            rps,
            mbps: 1.0,
            p50_us: p50,
            p99_us: p50 * 2.0,
            p999_us: p50 * 3.0,
            max_us: p50 * 10.0,
            errors: 0,
            requests: 100,
            seconds: 1.0,
            mqnet_client: None,
            cdf: vec![(p50 / 2.0, 0.0), (p50, 0.5), (p50 * 10.0, 1.0)],
        }
    }

    #[test]
    fn table_has_ratios_against_tokio_mt() {
        let rows = vec![Row {
            label: workload_label(100, 10, 5, 0, None),
            results: vec![
                ("tokio-mt".into(), Ok(result("tokio-mt", 100_000.0, 50.0))),
                ("mqnet".into(), Ok(result("mqnet", 250_000.0, 25.0))),
                (
                    "tokio-ct".into(),
                    Err(BenchError::wrap(
                        "tokio-ct client".into(),
                        std::io::Error::other("boom"),
                    )),
                ),
            ],
        }];
        let t = table(&rows);
        assert!(t.contains("100 B C=10 W=5"), "{t}");
        assert!(t.contains("250,000"), "{t}");
        assert!(t.contains("2.50×"), "{t}");
        assert!(t.contains("0.50×"), "{t}");
        // A failed run shows its error with the source chain.
        assert!(t.contains("FAILED: tokio-ct client: boom"), "{t}");
        let svg = svg(&rows, "t");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(!json_line(&result("mqnet", 1.0, 1.0)).contains("cdf"));
    }

    fn produced(name: &str, rps: f64, p50: f64) -> ProduceResult {
        ProduceResult {
            implementation: name.into(),
            records: 1000,
            size: 100,
            acks: "1".into(),
            linger_ms: 5,
            batch_size: 16384,
            records_per_s: rps,
            mbps: rps * 100.0 / 1e6,
            p50_us: p50,
            p99_us: p50 * 2.0,
            p999_us: p50 * 3.0,
            max_us: p50 * 4.0,
            errors: 0,
            delivered: 1000,
            seconds: 1.0,
            topic: "t".into(),
            partitions: 4,
            cluster: "mock".into(),
            cores: 2,
            broker_rtt_ms: 0,
            rate: None,
            first_error: None,
            metrics: None,
            compression: "none".into(),
            wire_bytes: 0,
        }
    }

    #[test]
    fn produce_table_has_ratios_against_rdkafka() {
        let rows = vec![ProduceRow {
            label: "1,000 × 100 B acks=1".into(),
            results: vec![
                ("rdkafka".into(), Ok(produced("rdkafka", 400_000.0, 1000.0))),
                ("mqnet".into(), Ok(produced("mqnet", 500_000.0, 500.0))),
            ],
        }];
        let t = produce_table(&rows);
        assert!(t.contains("records/s ÷ rdkafka"), "{t}");
        assert!(t.contains("500,000"), "{t}");
        assert!(t.contains("1.25×"), "{t}");
        assert!(t.contains("0.50×"), "{t}");
        assert_eq!(t.lines().count(), 3, "{t}");
    }

    #[test]
    fn labels() {
        assert_eq!(size_label(16 * 1024), "16 KiB");
        assert_eq!(size_label(100), "100 B");
        assert_eq!(
            workload_label(100, 1, 1, 10, Some(0)),
            "100 B C=1 W=1 +10 idle cpu0"
        );
    }
}
