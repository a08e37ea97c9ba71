//! Entry, `sluice plan --plot`: queue depth and admitted connects per second per tenant over time, drawn as SVG with `plotters`.
//!
//! Two charts, one above the other, sharing the time axis (minutes from the start of
//! the profile): the most clients in each tenant's queue per step, and its admissions
//! per second (averaged over the step). With many tenants, the [`MAX_LINES`] with the
//! deepest queues (then the most connects) are drawn and the rest named as left out.

use std::path::Path;

use plotters::prelude::*;

use super::report::Report;
use super::PlanError;

/// The most tenants drawn.
pub const MAX_LINES: usize = 10;

/// Line colours (Tableau 10), readable on white.
const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// Draws `report` to `path`.
///
/// # Errors
/// The file cannot be written.
pub fn draw(report: &Report, path: &Path) -> Result<(), PlanError> {
    draw_inner(report, path).map_err(|e| PlanError::Io {
        file: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })
}

fn draw_inner(report: &Report, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut tenants: Vec<_> = report.tenants.iter().collect();
    tenants.sort_by_key(|(name, t)| (std::cmp::Reverse((t.peak_queue, t.connects)), *name));
    let left_out = tenants.len().saturating_sub(MAX_LINES);
    tenants.truncate(MAX_LINES);
    tenants.sort_by_key(|(name, _)| *name);

    let step = report.step.max(1e-3);
    let minutes = |i: usize| i as f64 * step / 60.0;
    let points = tenants
        .iter()
        .map(|(_, t)| t.queue.values().len().max(t.admitted.values().len()))
        .max()
        .unwrap_or(0)
        .max(2);
    let x_end = minutes(points);
    let queue_top = tenants
        .iter()
        .map(|(_, t)| t.peak_queue)
        .max()
        .unwrap_or(0)
        .max(1);
    let rate_top = tenants
        .iter()
        .flat_map(|(_, t)| t.admitted.values().iter())
        .map(|n| f64::from(*n) / step)
        .fold(1.0, f64::max);

    let root = SVGBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = if left_out > 0 {
        format!("sluice plan ({left_out} more tenants not drawn)")
    } else {
        "sluice plan".to_owned()
    };
    let root = root.titled(&title, ("sans-serif", 20))?;
    let (top, bottom) = root.split_vertically(340);
    let colour = |i: usize| {
        let (r, g, b) = PALETTE[i % PALETTE.len()];
        RGBColor(r, g, b).to_rgba()
    };
    // A count series ends at its last admission (0 after it); a level series at its last
    // change (its level after it).
    let padded = |values: &[u32], after: u32| -> Vec<(f64, f64)> {
        (0..points)
            .map(|k| {
                (
                    minutes(k),
                    f64::from(values.get(k).copied().unwrap_or(after)),
                )
            })
            .collect()
    };
    let minute_label = |m: &f64| {
        if x_end >= 5.0 {
            format!("{m:.0}")
        } else {
            format!("{m:.1}")
        }
    };

    let mut chart = ChartBuilder::on(&top)
        .caption("queue depth (clients)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_end, 0.0..f64::from(queue_top) * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc("queued")
        .x_label_formatter(&minute_label)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (i, (name, t)) in tenants.iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(
                padded(t.queue.values(), t.queue.level_now()),
                c.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;

    let mut chart = ChartBuilder::on(&bottom)
        .caption("admitted connects per second", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_end, 0.0..rate_top * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc("per second")
        .x_label_formatter(&minute_label)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (i, (_, t)) in tenants.iter().enumerate() {
        let per_second = padded(t.admitted.values(), 0)
            .into_iter()
            .map(|(x, n)| (x, n / step));
        chart.draw_series(LineSeries::new(per_second, colour(i).stroke_width(2)))?;
    }
    root.present()?;
    Ok(())
}
