//! The bench's plots, one bar per target and row: docs/benchmarks.svg (IOPS and CPU per I/O
//! of the side-by-side matrix) and docs/storage.svg (the storage section's throughput as a
//! share of the disk's limit, and disk bytes read per byte served).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::{peers, storage};
use super::{Results, TARGETS};

const GREY: RGBColor = RGBColor(0x9e, 0x9e, 0x9e);
const BLUE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const ORANGE: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const GREEN: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
/// In TARGETS order: ceiling, floor, aoe-ctl, vblade.
const COLORS: [RGBColor; 4] = [ORANGE, GREEN, BLUE, GREY];

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// One target's bars: a value per row.
struct Series<'a> {
    name: &'a str,
    color: RGBColor,
    values: Vec<f64>,
}

pub fn svg(results: &Results, path: &Path) -> Result<()> {
    let labels: Vec<String> = results.rows.iter().map(|(r, _)| r.label()).collect();
    let series = |value: fn(&super::Figures) -> f64| -> Vec<Series> {
        TARGETS
            .iter()
            .enumerate()
            .map(|(t, name)| Series {
                name,
                color: COLORS[t],
                values: results.rows.iter().map(|(_, f)| value(&f[t])).collect(),
            })
            .collect()
    };
    let root = SVGBackend::new(path, (1100, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(380);
    bars(
        &top,
        "IOPS (thousands)",
        &labels,
        &series(|f| f.iops / 1000.0),
        Scale::Linear,
    )?;
    bars(
        &bottom,
        "machine CPU µs per I/O (the ceiling's is the client's share; lower is better)",
        &labels,
        &series(|f| f.cpu_us_per_io),
        Scale::Linear,
    )?;
    root.present().map_err(err)?;
    Ok(())
}

/// docs/storage.svg: each row's throughput ÷ fio's on the same file (top), and disk bytes
/// read per byte served on a log scale (bottom; it spans 1 to thousands).
pub fn storage_svg(r: &storage::Results, path: &Path) -> Result<()> {
    let labels: Vec<String> = r.rows.iter().map(|m| m.case.label.to_string()).collect();
    let share = |pick: fn(&storage::Measured) -> &storage::Sample| -> Vec<f64> {
        r.rows
            .iter()
            .map(|m| {
                let (s, limit) = (pick(m), m.limit);
                if m.case.limit.in_mbps() {
                    s.figures.mbps / limit.mbps
                } else {
                    s.figures.iops / limit.iops
                }
            })
            .collect()
    };
    let amp = |pick: fn(&storage::Measured) -> &storage::Sample| -> Vec<f64> {
        r.rows
            .iter()
            .map(|m| pick(m).read_amplification())
            .collect()
    };
    let two = |a: Vec<f64>, b: Vec<f64>| {
        vec![
            Series {
                name: "aoe-ctl",
                color: BLUE,
                values: a,
            },
            Series {
                name: "vblade",
                color: GREY,
                values: b,
            },
        ]
    };
    let root = SVGBackend::new(path, (1400, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(380);
    bars(
        &top,
        "throughput ÷ the disk's limit (fio on the same file: IOPS, or MB/s for seqread)",
        &labels,
        &two(share(|m| &m.ours), share(|m| &m.vblade)),
        Scale::Linear,
    )?;
    bars(
        &bottom,
        "disk bytes read per byte served (log scale; lower is better)",
        &labels,
        &two(amp(|m| &m.ours), amp(|m| &m.vblade)),
        Scale::Log10,
    )?;
    root.present().map_err(err)?;
    Ok(())
}

/// docs/peers.svg: each server's cold 4 KiB randread and durable randwrite IOPS (top) and
/// CPU per I/O (bottom).
pub fn peers_svg(r: &peers::Results, path: &Path) -> Result<()> {
    let labels: Vec<String> = r.rows.iter().map(|m| m.peer.label.to_string()).collect();
    let two = |value: fn(&peers::Sample) -> f64| {
        vec![
            Series {
                name: "cold randread",
                color: BLUE,
                values: r.rows.iter().map(|m| value(&m.read)).collect(),
            },
            Series {
                name: "durable randwrite",
                color: ORANGE,
                values: r.rows.iter().map(|m| value(&m.write)).collect(),
            },
        ]
    };
    let root = SVGBackend::new(path, (1100, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(380);
    bars(
        &top,
        "IOPS (thousands), 4 KiB random, depth 16, MTU 9000, cold",
        &labels,
        &two(|s| s.iops / 1000.0),
        Scale::Linear,
    )?;
    bars(
        &bottom,
        "machine CPU µs per I/O, client included (lower is better)",
        &labels,
        &two(|s| s.cpu_us_per_io),
        Scale::Linear,
    )?;
    root.present().map_err(err)?;
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Scale {
    Linear,
    /// Bars of log10(value) from 0.01, the axis labelled in values.
    Log10,
}

fn bars(
    area: &Area,
    title: &str,
    labels: &[String],
    series: &[Series],
    scale: Scale,
) -> Result<()> {
    let floor = 0.01f64;
    let y = |v: f64| match scale {
        Scale::Linear => v.max(0.0),
        Scale::Log10 => (v.max(floor) / floor).log10(),
    };
    let n = labels.len();
    let top = series
        .iter()
        .flat_map(|s| s.values.iter().copied().filter(|v| v.is_finite()).map(y))
        .fold(0.0f64, f64::max)
        * 1.15;
    if scale == Scale::Log10 && top <= 0.0 {
        return Err(anyhow!("drawing the plot: nothing above the log floor"));
    }
    area.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0.0..top.max(1.0))
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| match scale {
            // Tick values come as sums of steps (0.30000000000000004): three decimals at most.
            Scale::Linear => format!("{v:.3}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string(),
            Scale::Log10 => {
                let v = floor * 10f64.powf(*v);
                if v >= 10.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.2}")
                }
            }
        })
        .x_label_style(("sans-serif", 11))
        .draw()
        .map_err(err)?;
    let width = 0.8 / series.len().max(1) as f64;
    for (t, s) in series.iter().enumerate() {
        let color = s.color;
        chart
            .draw_series(s.values.iter().enumerate().map(|(i, &v)| {
                let x0 = i as f64 - 0.4 + t as f64 * width;
                let v = if v.is_finite() { y(v) } else { 0.0 };
                Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], color.filled())
            }))
            .map_err(err)?
            .label(s.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(err)?;
    Ok(())
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}
