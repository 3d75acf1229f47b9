//! The fleet's chart as SVG text: two columns (the rolling restart; the scale-up and back),
//! four rows (server connections, connection attempts per second, caller errors per second,
//! calls per second), one line per library. Plain `<polyline>`s, no dependency.

use std::fmt::Write as _;

use super::Run;

const COL_W: f64 = 540.0;
const PANEL_H: f64 = 130.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 100.0;
const ROW_GAP: f64 = 44.0;

/// A horizontal reference line in a panel: its value, its label.
type Reference = (f64, String);

/// A run's points between two moments: `(seconds from the run's start, value)`.
type Series = dyn Fn(&Run, f64, f64) -> Vec<(f64, f64)>;

struct Panel<'a> {
    title: &'a str,
    /// Per run: its points, `(seconds from the phase's start, value)`.
    series: Vec<Vec<(f64, f64)>>,
    /// Per run, drawn dashed in the run's colour.
    dashed: Vec<Vec<(f64, f64)>>,
    references: Vec<Reference>,
}

fn nice_max(v: f64) -> f64 {
    if v <= 1.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= step * mag {
            return step * mag;
        }
    }
    10.0 * mag
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Draws one panel at `(x0, y0)`; x spans `x_from..x_to` seconds, with vertical markers at
/// `marks`.
#[allow(clippy::too_many_arguments)]
fn panel(
    out: &mut String,
    p: &Panel,
    runs: &[Run],
    x0: f64,
    y0: f64,
    (x_from, x_to): (f64, f64),
    marks: &[(f64, &str)],
    show_x_label: bool,
) {
    let w = COL_W - LEFT - RIGHT;
    let h = PANEL_H;
    let top = p
        .series
        .iter()
        .flatten()
        .map(|&(_, v)| v)
        .chain(p.dashed.iter().flatten().map(|&(_, v)| v))
        .chain(p.references.iter().map(|r| r.0))
        .fold(0.0, f64::max);
    let y_max = nice_max(top * 1.05);
    let sx = |t: f64| x0 + LEFT + (t - x_from) / (x_to - x_from) * w;
    let sy = |v: f64| y0 + h - (v / y_max) * h;
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" class="t">{}</text>"##,
        x0 + LEFT,
        y0 - 8.0,
        esc(p.title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{:.1}" y="{y0:.1}" width="{w:.1}" height="{h:.1}" class="frame"/>"##,
        x0 + LEFT
    );
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let y = sy(v);
        let _ = writeln!(
            out,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="yl">{}</text>"##,
            x0 + LEFT,
            x0 + LEFT + w,
            x0 + LEFT - 4.0,
            y + 3.5,
            if v >= 10.0 || v == 0.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        );
    }
    let step = if x_to - x_from > 30.0 { 5.0 } else { 2.0 };
    let mut t = (x_from / step).ceil() * step;
    while t <= x_to {
        let x = sx(t);
        // Not "-0".
        let t_label = if t.abs() < 1e-9 { 0.0 } else { t };
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" class="tick"/><text x="{x:.1}" y="{:.1}" class="xl">{t_label:.0}</text>"##,
            y0 + h,
            y0 + h + 4.0,
            y0 + h + 15.0
        );
        t += step;
    }
    if show_x_label {
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" class="xl">seconds</text>"##,
            x0 + LEFT + w / 2.0,
            y0 + h + 29.0
        );
    }
    for &(t, label) in marks {
        if t < x_from || t > x_to {
            continue;
        }
        let x = sx(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{:.1}" class="mark"/>"##,
            y0 + h
        );
        if !label.is_empty() {
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" class="ml">{}</text>"##,
                x + 3.0,
                y0 + 11.0,
                esc(label)
            );
        }
    }
    for (value, label) in &p.references {
        let y = sy(*value);
        let _ = writeln!(
            out,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" class="ref"/><text x="{:.1}" y="{:.1}" class="rl">{}</text>"##,
            x0 + LEFT,
            x0 + LEFT + w,
            x0 + LEFT + w - 4.0,
            y - 3.0,
            esc(label)
        );
    }
    let lines = p
        .series
        .iter()
        .zip(runs)
        .map(|(points, run)| (points, run, ""))
        .chain(
            p.dashed
                .iter()
                .zip(runs)
                .map(|(points, run)| (points, run, r##" stroke-dasharray="4 2""##)),
        );
    // The first library last, on top of the others.
    let lines: Vec<_> = lines.collect();
    for (points, run, dash) in lines.into_iter().rev() {
        let mut pts = String::new();
        for &(t, v) in points {
            if t < x_from || t > x_to {
                continue;
            }
            let _ = write!(pts, "{:.1},{:.1} ", sx(t), sy(v.min(y_max)));
        }
        let _ = writeln!(
            out,
            r##"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.6" stroke-linejoin="round"{dash}/>"##,
            pts.trim_end(),
            run.lib.colour()
        );
    }
}

/// The whole chart for `runs` (one line each), with `caption` (what it was measured on)
/// under the title.
pub fn svg(runs: &[Run], caption: &str) -> String {
    let Some(first) = runs.first() else {
        return String::new();
    };
    let s = &first.settings;
    let limit = s.max_connections() as f64;
    // The roll: from 2 s before its first SIGTERM to 1 s after its end.
    let roll_span = runs
        .iter()
        .map(|r| r.roll().1 - r.roll().0)
        .fold(0.0, f64::max)
        + 1.0;
    let roll_x = (-2.0, roll_span);
    let scale_span = runs
        .iter()
        .map(|r| r.scale().1 - r.scale().0)
        .fold(0.0, f64::max);
    let scale_x = (-2.0, scale_span.max(1.0));
    let has_scale = first.phases.up.is_some();

    let series = |f: &Series, scale: bool| {
        runs.iter()
            .map(|r| {
                let start = if scale { r.scale().0 } else { r.roll().0 };
                let (from, to) = if scale { scale_x } else { roll_x };
                f(r, start + from, start + to)
                    .into_iter()
                    .map(|(t, v)| (t - start, v))
                    .collect()
            })
            .collect::<Vec<_>>()
    };
    let conns = |r: &Run, from: f64, to: f64| {
        r.samples
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|&(t, n)| (t, n as f64))
            .collect()
    };
    let attempts = |r: &Run, from: f64, to: f64| r.attempt_series(from, to);
    let rejected = |r: &Run, from: f64, to: f64| r.rejected_series(from, to);
    let errors = |r: &Run, from: f64, to: f64| r.error_series(from, to);
    let calls = |r: &Run, from: f64, to: f64| r.rate_series(from, to);

    let rows = |scale: bool| -> Vec<Panel<'static>> {
        let mut call_refs = vec![(
            s.target_rate(s.processes),
            format!("target at N = {}", s.processes),
        )];
        if scale {
            call_refs.push((
                s.target_rate(2 * s.processes),
                format!("target at 2N = {}", 2 * s.processes),
            ));
        }
        vec![
            Panel {
                title: "server connections (pg_stat_activity, the fleet's)",
                series: series(&conns, scale),
                dashed: Vec::new(),
                references: vec![(limit, format!("max_connections {limit:.0}"))],
            },
            Panel {
                title: "connection attempts per second (server log; dashed: refused, 53300)",
                series: series(&attempts, scale),
                dashed: series(&rejected, scale),
                references: Vec::new(),
            },
            Panel {
                title: "caller errors per second (get and query)",
                series: series(&errors, scale),
                dashed: Vec::new(),
                references: Vec::new(),
            },
            Panel {
                title: "calls done per second",
                series: series(&calls, scale),
                dashed: Vec::new(),
                references: call_refs,
            },
        ]
    };

    let columns = if has_scale { 2 } else { 1 };
    let width = COL_W * columns as f64 + 10.0;
    let height = TOP + 4.0 * (PANEL_H + ROW_GAP) + 10.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="Helvetica, Arial, sans-serif">"##
    );
    let _ = writeln!(
        out,
        r##"<style>
.t {{ font-size: 12px; font-weight: bold; fill: #222; }}
.h {{ font-size: 15px; font-weight: bold; fill: #111; }}
.c {{ font-size: 11px; fill: #444; }}
.yl {{ font-size: 10px; fill: #555; text-anchor: end; }}
.xl {{ font-size: 10px; fill: #555; text-anchor: middle; }}
.ml {{ font-size: 9px; fill: #777; }}
.rl {{ font-size: 9px; fill: #b22; text-anchor: end; }}
.frame {{ fill: #fcfcfc; stroke: #bbb; stroke-width: 1; }}
.grid {{ stroke: #e4e4e4; stroke-width: 1; }}
.tick {{ stroke: #999; stroke-width: 1; }}
.mark {{ stroke: #bbb; stroke-width: 1; stroke-dasharray: 2 3; }}
.ref {{ stroke: #b22; stroke-width: 1; stroke-dasharray: 5 3; }}
</style>
<rect width="100%" height="100%" fill="white"/>"##
    );
    let _ = writeln!(
        out,
        r##"<text x="12" y="20" class="h">{} processes, each its own pool (max {}, min_idle {} where the library has it), on one PostgreSQL</text>"##,
        s.processes, s.max_size, s.max_size
    );
    let _ = writeln!(
        out,
        r##"<text x="12" y="37" class="c">{}</text>"##,
        esc(caption)
    );
    let mut x = 12.0;
    for r in runs {
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="58" x2="{:.1}" y2="58" stroke="{}" stroke-width="3"/><text x="{:.1}" y="62" class="c">{}</text>"##,
            x + 22.0,
            r.lib.colour(),
            x + 27.0,
            r.lib.name()
        );
        x += 170.0;
    }

    let roll_marks: Vec<(f64, &str)> = first
        .phases
        .steps
        .iter()
        .enumerate()
        .map(|(i, st)| (st.0 - first.roll().0, if i == 0 { "SIGTERM" } else { "" }))
        .collect();
    let scale_marks: Vec<(f64, &str)> = match (first.phases.up, first.phases.down) {
        (Some(up), Some(down)) => vec![(0.0, "N → 2N"), (down - up, "2N → N")],
        _ => Vec::new(),
    };
    for (c, scale) in [false, true].into_iter().take(columns).enumerate() {
        let x0 = c as f64 * COL_W;
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" class="h">{}</text>"##,
            x0 + LEFT,
            TOP - 4.0,
            if scale {
                "scale-up N → 2N, then back to N"
            } else {
                "rolling restart, one process at a time"
            }
        );
        for (i, p) in rows(scale).iter().enumerate() {
            let y0 = TOP + 22.0 + i as f64 * (PANEL_H + ROW_GAP);
            panel(
                &mut out,
                p,
                runs,
                x0,
                y0,
                if scale { scale_x } else { roll_x },
                if scale { &scale_marks } else { &roll_marks },
                i == 3,
            );
        }
    }
    out.push_str("</svg>\n");
    out
}
