//! The run as a picture: throughput per second above, p99 latency per second below, and
//! the run's events (kills, database restarts) as vertical lines across both. Plain SVG
//! written by hand: any browser opens it, and it needs no font or drawing crate.

use std::fmt::Write as _;

use crate::report::{Event, SecondSample};

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 230.0;
const MARGIN_LEFT: f64 = 80.0;
const MARGIN_RIGHT: f64 = 20.0;
const MARGIN_TOP: f64 = 40.0;
const PANEL_GAP: f64 = 60.0;
/// Room below the panels for the seconds axis and the legend.
const LEGEND_HEIGHT: f64 = 60.0;
/// Horizontal grid lines per panel.
const GRID_LINES: usize = 4;

/// A round number at or above `value` (1, 2 or 5 times a power of ten), so axis labels
/// read well.
pub fn nice_ceiling(value: f64) -> f64 {
    if !(value.is_finite() && value > 0.0) {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if value <= step * power {
            return step * power;
        }
    }
    10.0 * power
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

struct Panel<'a> {
    top: f64,
    title: &'a str,
    unit: &'a str,
    color: &'a str,
    /// (seconds, value); `None` values break the line.
    points: Vec<(f64, Option<f64>)>,
}

fn draw_panel(svg: &mut String, panel: &Panel<'_>, duration_seconds: f64) {
    let plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let top = panel.top;
    let y_max = nice_ceiling(panel.points.iter().filter_map(|(_, value)| *value).fold(0.0, f64::max));
    let x = |seconds: f64| MARGIN_LEFT + seconds / duration_seconds * plot_width;
    let y = |value: f64| top + PANEL_HEIGHT - value / y_max * PANEL_HEIGHT;
    let _ = writeln!(
        svg,
        r##"<text x="{MARGIN_LEFT}" y="{:.1}" font-size="14" font-weight="bold">{}</text>"##,
        top - 10.0,
        escape(panel.title)
    );
    for line in 0..=GRID_LINES {
        let value = y_max * line as f64 / GRID_LINES as f64;
        let _ = writeln!(
            svg,
            r##"<line x1="{MARGIN_LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{2:.1}" y="{3:.1}" font-size="11" text-anchor="end">{4} {5}</text>"##,
            y(value),
            WIDTH - MARGIN_RIGHT,
            MARGIN_LEFT - 6.0,
            y(value) + 4.0,
            format_value(value),
            panel.unit
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{MARGIN_LEFT}" y="{top}" width="{plot_width}" height="{PANEL_HEIGHT}" fill="none" stroke="#888"/>"##
    );
    let mut path = String::new();
    let mut pen_down = false;
    for (seconds, value) in &panel.points {
        match value {
            Some(value) => {
                let _ = write!(
                    path,
                    "{}{:.1},{:.1} ",
                    if pen_down { "L" } else { "M" },
                    x(*seconds),
                    y(*value)
                );
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    if !path.is_empty() {
        let _ = writeln!(
            svg,
            r##"<path d="{}" fill="none" stroke="{}" stroke-width="2"/>"##,
            path.trim_end(),
            panel.color
        );
    }
    // Seconds along the bottom.
    let step = nice_ceiling(duration_seconds / 10.0);
    let mut tick = 0.0;
    while tick <= duration_seconds + 1e-9 {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}s</text>"##,
            x(tick),
            top + PANEL_HEIGHT + 15.0,
            format_value(tick)
        );
        tick += step;
    }
}

fn format_value(value: f64) -> String {
    if value >= 10.0 || value == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// The SVG document for a run's timeline.
pub fn render(title: &str, timeline: &[SecondSample], events: &[Event]) -> String {
    let duration_seconds = timeline.iter().map(|sample| sample.elapsed_seconds).fold(1.0, f64::max);
    let height = MARGIN_TOP + 2.0 * PANEL_HEIGHT + PANEL_GAP + LEGEND_HEIGHT;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"##
    );
    let _ = writeln!(svg, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="18" font-size="15" text-anchor="middle">{}</text>"##,
        WIDTH / 2.0,
        escape(title)
    );
    let panels = [
        Panel {
            top: MARGIN_TOP + 10.0,
            title: "Throughput (operations finished per second)",
            unit: "/s",
            color: "#1f77b4",
            points: timeline
                .iter()
                .map(|sample| (sample.elapsed_seconds, Some(sample.operations_per_second)))
                .collect(),
        },
        Panel {
            top: MARGIN_TOP + 10.0 + PANEL_HEIGHT + PANEL_GAP,
            title: "p99 latency per second",
            unit: "ms",
            color: "#d62728",
            points: timeline
                .iter()
                .map(|sample| (sample.elapsed_seconds, sample.p99_ms))
                .collect(),
        },
    ];
    for panel in &panels {
        draw_panel(&mut svg, panel, duration_seconds);
    }
    let plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    for event in events {
        let x = MARGIN_LEFT + event.elapsed_seconds / duration_seconds * plot_width;
        let color = if event.what.contains("PostgreSQL") {
            "#2ca02c"
        } else {
            "#ff7f0e"
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{0:.1}" x2="{x:.1}" y2="{1:.1}" stroke="{color}" stroke-dasharray="4 3"><title>{2}</title></line>"##,
            MARGIN_TOP + 10.0,
            MARGIN_TOP + 10.0 + 2.0 * PANEL_HEIGHT + PANEL_GAP,
            escape(&event.what)
        );
    }
    let mut legend = Vec::new();
    if events.iter().any(|event| !event.what.contains("PostgreSQL")) {
        legend.push(r##"<tspan fill="#ff7f0e">- - - Tally killed (SIGKILL) and restarted</tspan>"##);
    }
    if events.iter().any(|event| event.what.contains("PostgreSQL")) {
        legend.push(r##"<tspan fill="#2ca02c">- - - PostgreSQL restarted</tspan>"##);
    }
    if !legend.is_empty() {
        let _ = writeln!(
            svg,
            r##"<text x="{MARGIN_LEFT}" y="{:.1}" font-size="12" xml:space="preserve">{}</text>"##,
            height - 12.0,
            legend.join("     ")
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_ceilings_are_round_numbers_at_or_above_the_maximum() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(10.0), 10.0);
        assert_eq!(nice_ceiling(11.0), 20.0);
        assert_eq!(nice_ceiling(4_812.0), 5_000.0);
        assert_eq!(nice_ceiling(0.3), 0.5);
    }

    #[test]
    fn the_plot_is_an_svg_with_both_series_and_the_events() {
        let timeline: Vec<SecondSample> = (1..=5)
            .map(|second| SecondSample {
                elapsed_seconds: second as f64,
                operations_per_second: 1000.0 * second as f64,
                errors: 0,
                p99_ms: (second != 3).then_some(2.5),
                p50_ms: Some(1.0),
            })
            .collect();
        let events = [Event {
            elapsed_seconds: 2.5,
            what: "SIGKILL <tally>".into(),
        }];
        let svg = render("run & plot", &timeline, &events);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<path").count(), 2, "one line per panel");
        // The empty second breaks the latency line into two pieces.
        assert_eq!(svg.matches(" M").count() + svg.matches("\"M").count(), 3);
        assert!(svg.contains("SIGKILL &lt;tally&gt;"));
        assert!(svg.contains("run &amp; plot"));
        assert!(svg.contains(">5000 /s<"), "the throughput axis reaches a round 5000");
        assert!(
            svg.contains("Tally killed") && !svg.contains("PostgreSQL restarted"),
            "only events that happened"
        );
    }
}
