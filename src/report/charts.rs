//! Charts for the HTML pages, drawn with plotters as inline SVG (no script, no network).

use plotters::prelude::*;

const SIZE: (u32, u32) = (720, 260);

/// One named series of (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn bounds(series: &[Series]) -> (f64, f64, f64) {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x0 = xs.clone().fold(f64::INFINITY, f64::min);
    let x1 = xs.fold(f64::NEG_INFINITY, f64::max);
    let y1 = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let (x0, x1) = if x0.is_finite() && x1 > x0 {
        (x0, x1)
    } else {
        (0.0, 1.0)
    };
    (x0, x1, if y1 > 0.0 { y1 * 1.1 } else { 1.0 })
}

/// Lines over a shared x axis; `None` if plotters fails (the page says so instead).
pub fn lines(title: &str, x_desc: &str, y_desc: &str, series: &[Series]) -> Option<String> {
    let (x0, x1, y1) = bounds(series);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, 0.0..y1)
            .ok()?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .ok()?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .ok()?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .ok()?;
        }
        root.present().ok()?;
    }
    Some(svg)
}

/// A histogram of `values` in `bins` equal bins.
pub fn histogram(title: &str, x_desc: &str, values: &[f64], bins: usize) -> Option<String> {
    if values.is_empty() {
        return None;
    }
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let width = ((hi - lo) / bins as f64).max(1.0);
    let mut counts = vec![0u32; bins];
    for v in values {
        let i = (((v - lo) / width) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let top = f64::from(counts.iter().copied().max().unwrap_or(1)) * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(lo..(lo + width * bins as f64), 0.0..top)
            .ok()?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("requests")
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .ok()?;
        chart
            .draw_series(counts.iter().enumerate().map(|(i, c)| {
                let x = lo + width * i as f64;
                Rectangle::new(
                    [(x, 0.0), (x + width * 0.92, f64::from(*c))],
                    COLORS[0].filled(),
                )
            }))
            .ok()?;
        root.present().ok()?;
    }
    Some(svg)
}
