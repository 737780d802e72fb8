//! The dashboard's chart: joins and logins per day as an inline SVG, drawn on the server (no
//! script, nothing fetched: it works offline and with JavaScript off).

use std::fmt::Write as _;

use super::store::DayFigures;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 40.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 12.0;

/// Escapes text for an SVG element or attribute.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round axis maximum at or above `max` (1, 2, 5 × 10^n).
fn axis_max(max: i64) -> i64 {
    let mut step = 1i64;
    loop {
        for factor in [1, 2, 5] {
            if step.saturating_mul(factor) >= max.max(1) {
                return step * factor;
            }
        }
        step = step.saturating_mul(10);
    }
}

/// One bar per day: app opens (carried in `joins`).
pub fn daily_opens(days: &[DayFigures]) -> String {
    bars(days, &[("opens", "opens")], "App opens per day")
}

/// Two bars per day (joins, logins), a labelled y axis, every fifth day labelled on the x axis,
/// and a `<title>` on each bar for the exact figure.
pub fn daily_bars(days: &[DayFigures]) -> String {
    bars(
        days,
        &[("joins", "joins"), ("logins", "logins")],
        "Joins and logins per day",
    )
}

/// Bars per day for each series (the first reads `joins`, the second `logins`).
fn bars(days: &[DayFigures], series: &[(&str, &str)], title: &str) -> String {
    let max = days
        .iter()
        .map(|d| d.joins.max(d.logins))
        .max()
        .unwrap_or(0);
    let top = axis_max(max) as f64;
    let plot_w = WIDTH - LEFT - 8.0;
    let plot_h = HEIGHT - BOTTOM - TOP;
    let slot = plot_w / days.len().max(1) as f64;
    let bar = (slot * 0.8 / series.len() as f64).max(1.0);
    let y = |value: i64| TOP + plot_h - (value as f64 / top) * plot_h;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title" xmlns="http://www.w3.org/2000/svg"><title id="chart-title">{title}, last {} days</title>"#,
        days.len()
    );
    for step in 0..=4 {
        let value = (top as i64) * step / 4;
        let at = y(value);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{WIDTH}" y1="{at:.1}" y2="{at:.1}" stroke="#d8dde6" stroke-width="1"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11" fill="#4a5565">{value}</text>"##,
            LEFT - 6.0,
            at + 4.0
        );
    }
    for (i, day) in days.iter().enumerate() {
        let x = LEFT + slot * i as f64 + (slot - series.len() as f64 * bar) / 2.0;
        let label = escape(&day.day);
        for (n, (class, what)) in series.iter().enumerate() {
            let (offset, value) = (bar * n as f64, if n == 0 { day.joins } else { day.logins });
            let top_y = y(value);
            let _ = write!(
                svg,
                r#"<rect class="{class}" data-day="{label}" data-value="{value}" x="{:.1}" y="{top_y:.1}" width="{bar:.1}" height="{:.1}"><title>{label}: {value} {what}</title></rect>"#,
                x + offset,
                (TOP + plot_h - top_y).max(0.0)
            );
        }
        if i % 5 == days.len().saturating_sub(1) % 5 {
            let short = label.get(5..).unwrap_or(&label);
            let _ = write!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="#4a5565">{short}</text>"##,
                x + bar * series.len() as f64 / 2.0,
                HEIGHT - 6.0
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_axis_rounds_up_to_a_readable_maximum() {
        assert_eq!(axis_max(0), 1);
        assert_eq!(axis_max(3), 5);
        assert_eq!(axis_max(7), 10);
        assert_eq!(axis_max(120), 200);
    }

    #[test]
    fn every_day_has_a_bar_for_joins_and_for_logins() {
        let days: Vec<DayFigures> = (1..=30)
            .map(|d| DayFigures {
                day: format!("2026-11-{d:02}"),
                joins: d,
                logins: 2 * d,
                opens: 0,
            })
            .collect();
        let svg = daily_bars(&days);
        assert_eq!(svg.matches(r#"class="joins""#).count(), 30);
        assert_eq!(svg.matches(r#"class="logins""#).count(), 30);
        assert!(svg.contains(r#"data-day="2026-11-30" data-value="60""#));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }
}
