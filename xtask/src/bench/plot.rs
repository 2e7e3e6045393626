//! docs/benchmarks.svg: IOPS (top) and CPU per I/O (bottom) of each row, one bar per target.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::{Figures, Results, TARGETS};

const COLORS: [RGBColor; 3] = [
    RGBColor(0x9e, 0x9e, 0x9e), // vblade
    RGBColor(0x1f, 0x77, 0xb4), // aoe-ctl
    RGBColor(0xff, 0x7f, 0x0e), // ceiling
];

pub fn svg(results: &Results, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(380);
    panel(&top, results, "IOPS (thousands)", |f| f.iops / 1000.0)?;
    panel(
        &bottom,
        results,
        "machine CPU µs per I/O (lower is better)",
        |f| f.cpu_us_per_io,
    )?;
    root.present().map_err(err)?;
    Ok(())
}

fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    results: &Results,
    title: &str,
    value: impl Fn(&Figures) -> f64,
) -> Result<()> {
    let n = results.len();
    let top = results
        .iter()
        .flat_map(|(_, f)| f.iter().map(&value))
        .fold(0.0f64, f64::max)
        * 1.15;
    let labels: Vec<String> = results.iter().map(|(r, _)| r.label()).collect();
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
        .x_label_style(("sans-serif", 11))
        .draw()
        .map_err(err)?;
    let width = 0.27;
    for (t, name) in TARGETS.iter().enumerate() {
        let color = COLORS[t];
        chart
            .draw_series(results.iter().enumerate().map(|(i, (_, f))| {
                let x0 = i as f64 - 1.5 * width + t as f64 * width;
                Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.9, value(&f[t]))],
                    color.filled(),
                )
            }))
            .map_err(err)?
            .label(*name)
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
