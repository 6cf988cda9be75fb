//! Turns the runs of a comparison into medians, a ratio table, `compare.json` and a chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use serde::Serialize;

use crate::Line;
use crate::backend::Kind;
use crate::physical::Latency;
use crate::workload::{Record, Workload};

/// One row of `compare.json`: medians over the repeats of one workload and client count.
#[derive(Debug, Serialize)]
pub struct Row {
    pub workload: &'static str,
    pub clients: usize,
    pub ordkv_ops: f64,
    pub etcd_ops: f64,
    pub ordkv_p50_ms: f64,
    pub etcd_p50_ms: f64,
    pub ordkv_p99_ms: f64,
    pub etcd_p99_ms: f64,
    pub ordkv_p999_ms: f64,
    pub etcd_p999_ms: f64,
    pub ordkv_cpu_us_per_op: Option<f64>,
    pub etcd_cpu_us_per_op: Option<f64>,
    pub ordkv_rss_mb: Option<f64>,
    pub etcd_rss_mb: Option<f64>,
    pub ordkv_expiry_delay_ms: Option<f64>,
    pub etcd_expiry_delay_ms: Option<f64>,
    pub ordkv_errors: u64,
    pub etcd_errors: u64,
    pub repeats: usize,
}

fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn median_of(runs: &[&Record], f: impl Fn(&Record) -> Option<f64>) -> Option<f64> {
    let xs: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
    (!xs.is_empty()).then(|| median(xs))
}

pub fn rows(lines: &[Line]) -> Vec<Row> {
    let mut groups: BTreeMap<(Workload, usize), Vec<&Record>> = BTreeMap::new();
    for line in lines {
        if let Line::Run(r) = line {
            groups.entry((r.workload, r.clients)).or_default().push(r);
        }
    }
    groups
        .into_iter()
        .map(|((workload, clients), runs)| {
            let of = |kind: Kind| {
                runs.iter()
                    .copied()
                    .filter(|r| r.backend == kind)
                    .collect::<Vec<_>>()
            };
            let (o, e) = (of(Kind::Ordkv), of(Kind::Etcd));
            let m = |runs: &[&Record], f: fn(&Record) -> f64| {
                median_of(runs, |r| Some(f(r))).unwrap_or(f64::NAN)
            };
            Row {
                workload: workload.name(),
                clients,
                ordkv_ops: m(&o, |r| r.ops),
                etcd_ops: m(&e, |r| r.ops),
                ordkv_p50_ms: m(&o, |r| r.p50_ms),
                etcd_p50_ms: m(&e, |r| r.p50_ms),
                ordkv_p99_ms: m(&o, |r| r.p99_ms),
                etcd_p99_ms: m(&e, |r| r.p99_ms),
                ordkv_p999_ms: m(&o, |r| r.p999_ms),
                etcd_p999_ms: m(&e, |r| r.p999_ms),
                ordkv_cpu_us_per_op: median_of(&o, |r| r.cpu_us_per_op),
                etcd_cpu_us_per_op: median_of(&e, |r| r.cpu_us_per_op),
                ordkv_rss_mb: median_of(&o, |r| r.rss_mb),
                etcd_rss_mb: median_of(&e, |r| r.rss_mb),
                ordkv_expiry_delay_ms: median_of(&o, |r| r.expiry_delay_ms),
                etcd_expiry_delay_ms: median_of(&e, |r| r.expiry_delay_ms),
                ordkv_errors: o.iter().map(|r| r.errors).sum(),
                etcd_errors: e.iter().map(|r| r.errors).sum(),
                repeats: o.len().min(e.len()),
            }
        })
        .collect()
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// The ratio table (Markdown) and the physical-limit lines.
pub fn table(rows: &[Row], lines: &[Line]) -> String {
    let mut out = String::new();
    out.push_str("| workload | clients | ordkv ops/s | etcd ops/s | ops ratio | ordkv p50 ms | etcd p50 ms | p50 ratio | ordkv p99 ms | etcd p99 ms | p99 ratio | CPU µs/op ordkv / etcd | ratio |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows.iter().filter(|r| r.workload != "memory") {
        let (oc, ec) = (r.ordkv_cpu_us_per_op, r.etcd_cpu_us_per_op);
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {} | {:.3} | {:.3} | {} | {:.3} | {:.3} | {} | {} / {} | {} |",
            r.workload,
            r.clients,
            r.ordkv_ops,
            r.etcd_ops,
            ratio(r.ordkv_ops, r.etcd_ops),
            r.ordkv_p50_ms,
            r.etcd_p50_ms,
            ratio(r.ordkv_p50_ms, r.etcd_p50_ms),
            r.ordkv_p99_ms,
            r.etcd_p99_ms,
            ratio(r.ordkv_p99_ms, r.etcd_p99_ms),
            opt(oc, 0),
            opt(ec, 0),
            ratio(oc.unwrap_or(f64::NAN), ec.unwrap_or(f64::NAN)),
        );
    }
    for r in rows.iter().filter(|r| r.workload == "lease-expiry") {
        let _ = writeln!(
            out,
            "\nLeases expiring together: the last was gone {} ms (ordkv) and {} ms (etcd) after its deadline; resident memory per node with them live: ordkv {} MiB, etcd {} MiB.",
            opt(r.ordkv_expiry_delay_ms, 0),
            opt(r.etcd_expiry_delay_ms, 0),
            opt(r.ordkv_rss_mb, 0),
            opt(r.etcd_rss_mb, 0),
        );
    }
    for r in rows.iter().filter(|r| r.workload == "memory") {
        let (o, e) = (
            r.ordkv_rss_mb.unwrap_or(f64::NAN),
            r.etcd_rss_mb.unwrap_or(f64::NAN),
        );
        let _ = writeln!(
            out,
            "\nResident memory per node after loading the keys: ordkv {o:.0} MiB, etcd {e:.0} MiB ({} of etcd's).",
            ratio(o, e)
        );
    }
    let errors: Vec<String> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Run(r) if r.errors > 0 => Some(format!(
                "{:?} {} x{}: {} errors, first: {}",
                r.backend,
                r.workload.name(),
                r.clients,
                r.errors,
                r.first_error.as_deref().unwrap_or("?")
            )),
            _ => None,
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\nRuns with errors:\n- {}", errors.join("\n- "));
    }
    out.push_str(&physical(rows, lines));
    out
}

fn physical(rows: &[Row], lines: &[Line]) -> String {
    let mut fsync: BTreeMap<bool, Vec<&Latency>> = BTreeMap::new();
    let mut rtt = Vec::new();
    for line in lines {
        match line {
            Line::Fsync { append, latency } => fsync.entry(*append).or_default().push(latency),
            Line::Rtt(l) => rtt.push(l),
            Line::Run(_) => {}
        }
    }
    let p50 = |ls: &[&Latency]| median(ls.iter().map(|l| l.p50_ms).collect());
    let (Some(overwrite), Some(append)) = (fsync.get(&false), fsync.get(&true)) else {
        return String::new();
    };
    let (overwrite, append, rtt) = (p50(overwrite), p50(append), p50(&rtt));
    let floor = overwrite + rtt;
    let mut out = format!(
        "\nPhysical limits (medians): 4 KiB write + fdatasync {overwrite:.3} ms over written blocks, {append:.3} ms appending; loopback round trip {rtt:.3} ms; one fsync + one round trip = {floor:.3} ms.\n"
    );
    if let Some(put1) = rows.iter().find(|r| r.workload == "put" && r.clients == 1) {
        let _ = writeln!(
            out,
            "Single-client put p50: ordkv {:.3} ms = {:.2}x that floor; etcd {:.3} ms = {:.2}x.",
            put1.ordkv_p50_ms,
            put1.ordkv_p50_ms / floor,
            put1.etcd_p50_ms,
            put1.etcd_p50_ms / floor
        );
    }
    out
}

/// Two panels of horizontal bars, both "higher is better for ordkv": throughput ratio and
/// p99 latency ratio (etcd's / ordkv's), with the parity line at 1.
pub fn chart(rows: &[Row], path: &Path) -> anyhow::Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow::anyhow!("the embedded DejaVu font did not load"))?;
    let rows: Vec<&Row> = rows.iter().filter(|r| r.workload != "memory").collect();
    let labels: Vec<String> = rows
        .iter()
        .map(|r| format!("{} x{}", r.workload, r.clients))
        .collect();
    let throughput: Vec<f64> = rows.iter().map(|r| r.ordkv_ops / r.etcd_ops).collect();
    let latency: Vec<f64> = rows
        .iter()
        .map(|r| r.etcd_p99_ms / r.ordkv_p99_ms)
        .collect();
    let height = 120 + 34 * rows.len() as u32;
    let root = BitMapBackend::new(path, (1400, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "ordkv vs etcd, 3 nodes each on one machine (medians; right of the line = ordkv better)",
        ("sans-serif", 22),
    )?;
    let (left, right) = root.split_horizontally(700);
    panel(&left, "throughput: ordkv / etcd", &labels, &throughput)?;
    panel(&right, "p99 latency: etcd / ordkv", &labels, &latency)?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    labels: &[String],
    values: &[f64],
) -> anyhow::Result<()> {
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let max = finite.fold(1.0f64, f64::max) * 1.2;
    let n = labels.len();
    // An integer range includes its end, so `0..n - 1` gives exactly n rows.
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(170)
        .build_cartesian_2d(0.0..max, (0..n.max(1) - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                labels.get(*i).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .x_label_formatter(&|x| format!("{x:.1}x"))
        .label_style(("sans-serif", 15))
        .draw()?;
    for (i, v) in values.iter().enumerate() {
        let v = if v.is_finite() { *v } else { 0.0 };
        let color = if v >= 1.0 {
            RGBColor(46, 139, 87)
        } else {
            RGBColor(205, 92, 92)
        };
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (v, SegmentValue::Exact(i + 1)),
            ],
            color.filled(),
        );
        bar.set_margin(5, 5, 0, 0);
        chart.draw_series(std::iter::once(bar))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{v:.2}x"),
            (v, SegmentValue::CenterOf(i)),
            ("sans-serif", 14).into_font(),
        )))?;
    }
    chart.draw_series(LineSeries::new(
        [(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Last)],
        BLACK.stroke_width(2),
    ))?;
    Ok(())
}
