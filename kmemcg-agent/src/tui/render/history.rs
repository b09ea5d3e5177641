//! The drill-in's chart: the cgroup's slab, percpu and the kernel's charge over the history
//! the agent keeps, beside its largest caches' growth over it.
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Style},
    symbols::Marker,
    text::{Line, Span},
    widgets::{Axis, Block, Chart, Dataset, GraphType, Paragraph},
};

use super::label;
use crate::{
    api::CgroupHistory,
    tui::{app::App, fmt},
};

/// Rows the chart takes when there is room for it.
pub(super) const HEIGHT: u16 = 9;

const SLAB: Color = Color::Cyan;
const PERCPU: Color = Color::Magenta;
const KERNEL: Color = Color::Yellow;

pub(super) fn render(frame: &mut Frame, area: Rect, app: &App) {
    let exact = app.view().exact;
    let history = match app.history() {
        None => {
            frame.render_widget(Paragraph::new("history: reading…"), area);
            return;
        }
        Some(Err(e)) => {
            let text = format!("history: {e}");
            frame.render_widget(
                Paragraph::new(text).style(Style::new().fg(Color::Yellow)),
                area,
            );
            return;
        }
        Some(Ok(h)) => h,
    };
    let [chart_area, caches_area] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(30)]).areas(area);
    let data = series(history);
    frame.render_widget(chart(history, &data, exact), chart_area);
    frame.render_widget(Paragraph::new(growth_lines(history, exact)), caches_area);
}

/// Seconds before the last point (negative) against bytes, one line per figure.
fn series(h: &CgroupHistory) -> [Vec<(f64, f64)>; 3] {
    let last = h.points.last().map_or(0, |p| p.at_ms);
    let x = |at: u64| (at as f64 - last as f64) / 1000.0;
    [
        (h.points.iter())
            .map(|p| (x(p.at_ms), p.slab_bytes as f64))
            .collect(),
        (h.points.iter())
            .map(|p| (x(p.at_ms), p.percpu_bytes as f64))
            .collect(),
        (h.points.iter())
            .filter_map(|p| p.kernel_bytes.map(|k| (x(p.at_ms), k as f64)))
            .collect(),
    ]
}

fn chart<'a>(h: &CgroupHistory, data: &'a [Vec<(f64, f64)>; 3], exact: bool) -> Chart<'a> {
    let [slab, percpu, kernel] = data;
    let span = (h.points.first().zip(h.points.last()))
        .map_or(0, |(a, b)| b.at_ms.saturating_sub(a.at_ms) / 1000);
    let top = (slab.iter().chain(percpu).chain(kernel))
        .map(|(_, y)| *y)
        .fold(1.0, f64::max);
    let mut datasets = Vec::new();
    for (name, color, data) in [
        ("slab", SLAB, slab),
        ("percpu", PERCPU, percpu),
        ("kernel", KERNEL, kernel),
    ] {
        if !data.is_empty() {
            datasets.push(
                Dataset::default()
                    .name(name)
                    .marker(Marker::Braille)
                    .graph_type(GraphType::Line)
                    .style(Style::new().fg(color))
                    .data(data),
            );
        }
    }
    let title = Line::from(vec![
        label(format!("history, last {} ", fmt::duration(span))),
        Span::styled("slab ", Style::new().fg(SLAB)),
        Span::styled("percpu ", Style::new().fg(PERCPU)),
        Span::styled("kernel", Style::new().fg(KERNEL)),
    ]);
    // The title (which names the lines in their colours) on a row of its own, above the plot.
    Chart::new(datasets)
        .block(Block::new().title(title))
        .legend_position(None)
        .x_axis(
            Axis::default()
                .bounds([-(span.max(1) as f64), 0.0])
                .labels([format!("-{}", fmt::duration(span)), "now".to_string()]),
        )
        .y_axis(
            Axis::default()
                .bounds([0.0, top * 1.05])
                .labels(["0".to_string(), fmt::size(top as u64, exact)]),
        )
}

/// The largest caches at the last point, with their growth over the history.
fn growth_lines(h: &CgroupHistory, exact: bool) -> Vec<Line<'static>> {
    let mut lines = vec![Line::from(label("growth of the top caches".into()))];
    if h.caches.is_empty() {
        lines.push(Line::from("-"));
    }
    for c in &h.caches {
        let sign = if c.growth_bytes < 0 { "-" } else { "+" };
        let growth = format!("{sign}{}", fmt::size(c.growth_bytes.unsigned_abs(), exact));
        let room = 29usize.saturating_sub(growth.chars().count() + 1);
        let name = fmt::keep_end(&c.name, room);
        lines.push(Line::from(format!("{name:<room$} {growth}")));
    }
    lines
}
