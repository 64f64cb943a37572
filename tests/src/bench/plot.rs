//! PNG line charts of benchmark results, drawn in-process with plotters'
//! bitmap backend. Text uses the DejaVu Sans font embedded in the binary
//! (the `dejavu` crate through plotters' ab_glyph support), so the charts
//! need no system font, fontconfig or freetype.

use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// One line of a chart: a name for the legend and its points, in x order.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart's words: title and axis labels.
pub struct Labels<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
}

/// Line colours that stay apart on white (matplotlib's "tab10").
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Points above which a series is drawn with a thin line.
const DENSE: usize = 50;

fn fonts() {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        // The font is a valid TTF compiled in; failing here would be a bug
        // in the dejavu crate, and the chart would then draw without text.
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draws `series` as lines with points into the PNG `path`; the y axis
/// starts at 0. Series without points are left out; with none at all,
/// nothing is drawn.
pub fn lines(path: &Path, labels: &Labels, series: &[Series]) -> Result<()> {
    draw(path, labels, series, true)
}

/// Draws `series` as points only, for samples whose gaps must show as gaps
/// (a line would bridge them); otherwise as [`lines`].
pub fn points(path: &Path, labels: &Labels, series: &[Series]) -> Result<()> {
    draw(path, labels, series, false)
}

fn draw(path: &Path, labels: &Labels, series: &[Series], joined: bool) -> Result<()> {
    let drawn: Vec<&Series> = series.iter().filter(|s| !s.points.is_empty()).collect();
    let all = || drawn.iter().flat_map(|s| s.points.iter());
    let Some(x_min) = all().map(|p| p.0).min_by(f64::total_cmp) else {
        return Ok(());
    };
    let x_max = all().map(|p| p.0).max_by(f64::total_cmp).unwrap_or(x_min);
    let y_max = all().map(|p| p.1).max_by(f64::total_cmp).unwrap_or(0.0);
    let (x_lo, x_hi) = if x_max > x_min {
        (x_min, x_max)
    } else {
        (x_min - 1.0, x_max + 1.0)
    };
    let y_hi = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    fonts();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, (960, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(labels.title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x_lo..x_hi, 0f64..y_hi)?;
        chart
            .configure_mesh()
            .x_desc(labels.x)
            .y_desc(labels.y)
            .label_style(("sans-serif", 14))
            .draw()?;
        for (i, s) in drawn.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let dots = chart.draw_series(
                s.points
                    .iter()
                    .map(|&p| Circle::new(p, if joined { 3 } else { 2 }, color.filled())),
            )?;
            let legend = if joined {
                // Thick lines of plotters' bitmap backend shoot spikes out
                // of sharp turns (a bandwidth series sampled every 50 ms has
                // many): dense series get thin lines.
                let width = if s.points.len() > DENSE { 1 } else { 2 };
                chart.draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(width),
                ))?
            } else {
                dots
            };
            legend.label(s.name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    eprintln!("==> drew {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_with_text() {
        let dir = std::env::temp_dir().join(format!("bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.png");
        let series = [
            Series {
                name: "a".into(),
                points: vec![(64.0, 10.0), (256.0, 30.0)],
            },
            Series {
                name: "empty".into(),
                points: vec![],
            },
        ];
        lines(
            &path,
            &Labels {
                title: "t",
                x: "MiB",
                y: "ms",
            },
            &series,
        )
        .unwrap();
        let png = std::fs::read(&path).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        points(
            &path,
            &Labels {
                title: "t",
                x: "s",
                y: "ms",
            },
            &series,
        )
        .unwrap();
        let png = std::fs::read(&path).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
