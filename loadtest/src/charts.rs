//! PNG bar charts of `compare` results (plotters, bitmap backend, DejaVu Sans from Debian's
//! fonts-dejavu-core; charts are skipped with a message when the font is missing).

use std::path::Path;

use plotters::prelude::*;

use crate::compare::Scenario;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn short(sender: &str) -> String {
    sender
        .split_whitespace()
        .next()
        .unwrap_or(sender)
        .to_owned()
}

/// Writes one PNG per scenario (bytes per sample, CPU per sample, peak RSS); returns the paths.
pub fn bars(dir: &Path, scenarios: &[Scenario]) -> anyhow::Result<Vec<String>> {
    let font = std::fs::read(FONT).map_err(|e| anyhow::anyhow!("{FONT}: {e}"))?;
    // plotters keeps registered fonts for the life of the process.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("cannot load {FONT}"))?;
    let mut files = Vec::new();
    for s in scenarios {
        let path = dir.join(format!("compare-{}.png", s.name));
        {
            let root = BitMapBackend::new(&path, (1200, 420)).into_drawing_area();
            root.fill(&WHITE)?;
            let names: Vec<String> = s.paths.iter().map(|p| short(&p.sender)).collect();
            let metrics: [(&str, Vec<f64>); 3] = [
                (
                    "bytes on the wire per sample",
                    s.paths.iter().map(|p| p.bytes_per_sample).collect(),
                ),
                (
                    "relay CPU µs per sample",
                    s.paths.iter().map(|p| p.cpu_us_per_sample).collect(),
                ),
                (
                    "relay peak RSS (MiB)",
                    s.paths.iter().map(|p| p.peak_rss_mib).collect(),
                ),
            ];
            let colors = [
                RGBColor(0x1f, 0x77, 0xb4),
                RGBColor(0xd6, 0x27, 0x28),
                RGBColor(0x2c, 0xa0, 0x2c),
            ];
            let panels = root.split_evenly((1, 3));
            for (panel, (title, values)) in panels.iter().zip(metrics.iter()) {
                let max = values
                    .iter()
                    .copied()
                    .filter(|v| v.is_finite())
                    .fold(0.0, f64::max);
                let top = if max > 0.0 { max * 1.2 } else { 1.0 };
                let n = values.len();
                let mut chart = ChartBuilder::on(panel)
                    .caption(format!("{title} ({})", s.name), ("sans-serif", 17))
                    .margin(12)
                    .x_label_area_size(30)
                    .y_label_area_size(55)
                    .build_cartesian_2d((0..n).into_segmented(), 0f64..top)?;
                chart
                    .configure_mesh()
                    .disable_x_mesh()
                    .x_label_formatter(&|x| match x {
                        SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                        _ => String::new(),
                    })
                    .label_style(("sans-serif", 14))
                    .draw()?;
                chart.draw_series(values.iter().enumerate().map(|(i, v)| {
                    let v = if v.is_finite() { *v } else { 0.0 };
                    let mut bar = Rectangle::new(
                        [
                            (SegmentValue::Exact(i), 0.0),
                            (SegmentValue::Exact(i + 1), v),
                        ],
                        colors[i % colors.len()].filled(),
                    );
                    bar.set_margin(0, 0, 12, 12);
                    bar
                }))?;
                chart.draw_series(values.iter().enumerate().map(|(i, v)| {
                    Text::new(
                        format!("{v:.2}"),
                        (
                            SegmentValue::CenterOf(i),
                            if v.is_finite() { *v } else { 0.0 },
                        ),
                        ("sans-serif", 14),
                    )
                }))?;
            }
            root.present()?;
        }
        files.push(path.display().to_string());
    }
    Ok(files)
}
