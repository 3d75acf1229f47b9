//! Prints the benchmark results as Markdown: criterion's estimates for P1, P4 and P5, and the
//! figures the bench binaries wrote for P2, P3 and P6, each with its ratio to the best peer
//! (deadpool, bb8, mobc; r2d2 is a synchronous reference, not a peer) and to the floor.
//!
//! `cargo run -p gracepool-bench --bin report` after `cargo bench -p gracepool-bench`; or
//! `bash benches/run.sh`, which does both.

use std::path::Path;

use gracepool_bench::{criterion_home, extra_path};
use serde_json::Value;

const PEERS: &[&str] = &["deadpool", "bb8", "mobc"];

/// Which way is better for a figure.
#[derive(Clone, Copy, PartialEq)]
enum Better {
    Lower,
    Higher,
}

/// One scenario's figures: (pool, value), in the order they were run.
struct Table {
    title: String,
    unit: &'static str,
    better: Better,
    rows: Vec<(String, Option<f64>)>,
    floors: &'static [&'static str],
    /// Extra columns: (header, one value per row).
    extra: Vec<(&'static str, Vec<String>)>,
}

impl Table {
    fn value(&self, name: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| *v)
    }

    fn best_of(&self, names: &[&str]) -> Option<(String, f64)> {
        names
            .iter()
            .filter_map(|n| self.value(n).map(|v| (n.to_string(), v)))
            .reduce(|a, b| {
                let b_better = match self.better {
                    Better::Lower => b.1 < a.1,
                    Better::Higher => b.1 > a.1,
                };
                if b_better {
                    b
                } else {
                    a
                }
            })
    }

    fn best_peer(&self) -> Option<(String, f64)> {
        self.best_of(PEERS)
    }

    fn floor(&self) -> Option<(String, f64)> {
        self.best_of(self.floors)
    }

    fn print(&self) {
        let better = match self.better {
            Better::Lower => "lower is better",
            Better::Higher => "higher is better",
        };
        println!("### {} ({}, {better})\n", self.title, self.unit);
        let peer = self.best_peer();
        let floor = self.floor();
        let mut head = format!("| pool | {} |", self.unit);
        let mut rule = String::from("|---|---:|");
        for (h, _) in &self.extra {
            head.push_str(&format!(" {h} |"));
            rule.push_str("---:|");
        }
        // A floor of 0 bytes has no ratio: P6 shows the difference instead.
        let by_difference = self.unit == "bytes";
        head.push_str(if by_difference {
            " ÷ best peer | − floor |"
        } else {
            " ÷ best peer | ÷ floor |"
        });
        rule.push_str("---:|---:|");
        println!("{head}\n{rule}");
        for (i, (name, v)) in self.rows.iter().enumerate() {
            let mut line = format!("| {name} | {} |", fmt_value(*v));
            for (_, col) in &self.extra {
                line.push_str(&format!(" {} |", col[i]));
            }
            let to_floor = if by_difference {
                match (v, floor.as_ref()) {
                    (Some(v), Some((_, f))) => format!("{:+.1}", v - f),
                    _ => "—".into(),
                }
            } else {
                ratio(*v, floor.as_ref().map(|f| f.1))
            };
            line.push_str(&format!(
                " {} | {to_floor} |",
                ratio(*v, peer.as_ref().map(|p| p.1)),
            ));
            println!("{line}");
        }
        println!();
        let named = |x: &Option<(String, f64)>| {
            x.as_ref().map_or("—".to_string(), |(n, v)| {
                format!("{n} ({})", fmt_value(Some(*v)))
            })
        };
        println!("Best peer: {}; floor: {}.\n", named(&peer), named(&floor));
    }
}

fn fmt_value(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(v) if v.abs() >= 1e6 => format!("{:.2e}", v),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

fn ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b != 0.0 => format!("{:.2}×", v / b),
        _ => "—".into(),
    }
}

/// Criterion's estimate for one bench, in nanoseconds: the slope where criterion fitted one
/// (linear sampling), else the mean.
fn estimate(home: &Path, group: &str, id: &str) -> Option<f64> {
    let path = home.join(group).join(id).join("new").join("estimates.json");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let pick = |k: &str| json.get(k)?.get("point_estimate")?.as_f64();
    pick("slope").or_else(|| pick("mean"))
}

fn criterion_table(
    home: &Path,
    group: &str,
    title: &str,
    unit: &'static str,
    scale: f64,
    ids: &[&str],
    floors: &'static [&'static str],
) -> Table {
    Table {
        title: title.into(),
        unit,
        better: Better::Lower,
        rows: ids
            .iter()
            .map(|id| {
                (
                    id.to_string(),
                    estimate(home, group, id).map(|ns| ns / scale),
                )
            })
            .collect(),
        floors,
        extra: Vec::new(),
    }
}

fn read_extra(name: &str) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(extra_path(name)).ok()?).ok()
}

fn contended_table(all: Option<&Value>, scenario: &str, title: &str) -> Table {
    let rows: Vec<Value> = all
        .and_then(|a| a.get(scenario))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let field = |r: &Value, k: &str| r.get("best_round").and_then(|m| m.get(k)).cloned();
    let us = |v: Option<Value>| {
        v.and_then(|v| v.as_f64())
            .map_or("—".to_string(), |ns| format!("{:.1}", ns / 1000.0))
    };
    Table {
        title: title.into(),
        unit: "pairs/s",
        better: Better::Higher,
        rows: rows
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or("?").to_string(),
                    field(r, "pairs_per_sec").and_then(|v| v.as_f64()),
                )
            })
            .collect(),
        floors: &["floor-channel", "floor-mutex"],
        extra: vec![
            (
                "p50 wait µs",
                rows.iter().map(|r| us(field(r, "p50_wait_ns"))).collect(),
            ),
            (
                "p99 wait µs",
                rows.iter().map(|r| us(field(r, "p99_wait_ns"))).collect(),
            ),
            (
                "fairness",
                rows.iter()
                    .map(|r| match field(r, "fairness") {
                        Some(Value::Null) => "∞ (a task starved)".to_string(),
                        Some(v) => v.as_f64().map_or("—".into(), |f| format!("{f:.2}")),
                        None => "—".into(),
                    })
                    .collect(),
            ),
        ],
    }
}

fn memory_table(mem: Option<&Value>) -> Table {
    let rows: Vec<Value> = mem
        .and_then(|m| m.get("P6"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Table {
        title: "P6 heap held per idle connection, beyond the connection itself".into(),
        unit: "bytes",
        better: Better::Lower,
        rows: rows
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or("?").to_string(),
                    r["per_conn_bytes"].as_f64(),
                )
            })
            .collect(),
        floors: &["floor-channel", "floor-mutex"],
        extra: vec![(
            "fixed bytes",
            rows.iter()
                .map(|r| fmt_value(r["fixed_bytes"].as_f64()))
                .collect(),
        )],
    }
}

/// One line of the targets summary.
fn target(what: &str, goal: &str, measured: String, met: Option<bool>) {
    let met = match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "—",
    };
    println!("| {what} | {goal} | {measured} | {met} |");
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into());
    format!("{cpu}, {cores} cores; load average when the report was printed: {load}")
}

fn main() {
    let home = criterion_home();
    const IDS: &[&str] = &[
        "gracepool",
        "deadpool",
        "bb8",
        "mobc",
        "r2d2",
        "floor-channel",
        "floor-mutex",
    ];
    const FLOORS: &[&str] = &["floor-channel", "floor-mutex"];
    let p1 = criterion_table(
        &home,
        "P1",
        "P1 uncontended get + return, one task, current_thread",
        "ns per pair",
        1.0,
        IDS,
        FLOORS,
    );
    let p4 = criterion_table(
        &home,
        "P4",
        "P4 cold start: build + take the first 100 connections",
        "µs",
        1e3,
        IDS,
        FLOORS,
    );
    let p5 = criterion_table(
        &home,
        "P5",
        "P5 close 10,000 idle connections, until every one is closed",
        "µs",
        1e3,
        &[
            "gracepool",
            "gracepool-close_blocking",
            "deadpool",
            "bb8",
            "mobc",
            "r2d2",
            "floor-drop",
        ],
        &["floor-drop"],
    );
    let contended = read_extra("contended");
    let p2 = contended_table(
        contended.as_ref(),
        "P2",
        "P2 64 tasks, max 8, 2 workers, yield_now while holding",
    );
    let p3 = contended_table(
        contended.as_ref(),
        "P3",
        "P3 32 tasks, max 1, 2 workers, yield_now while holding",
    );
    let memory = read_extra("memory");
    let p6 = memory_table(memory.as_ref());

    println!("## gracepool benchmarks\n");
    println!("Machine: {}.\n", machine());
    println!(
        "Peers: deadpool, bb8 and mobc, each with its defaults and the same trivial manager \
         (create, check and close immediate; a connection is an id whose drop is counted). \
         r2d2 is a synchronous reference (threads instead of tasks in P2/P3), not a peer.\n"
    );

    println!("### Targets (goals, never asserted)\n");
    println!("| target | goal | measured | met |\n|---|---|---|---|");
    let g = |t: &Table| t.value("gracepool");
    let vs = |t: &Table, base: Option<(String, f64)>| match (g(t), base) {
        (Some(v), Some((_, b))) if b != 0.0 => Some(v / b),
        _ => None,
    };
    let show = |r: Option<f64>| r.map_or("—".to_string(), |r| format!("{r:.2}×"));
    let p1_peer = vs(&p1, p1.best_peer());
    target(
        "P1 vs fastest peer",
        "≤ 0.6×",
        show(p1_peer),
        p1_peer.map(|r| r <= 0.6),
    );
    let p1_floor = vs(&p1, p1.floor());
    target(
        "P1 vs floor",
        "≤ 2.5×",
        show(p1_floor),
        p1_floor.map(|r| r <= 2.5),
    );
    for (t, name) in [(&p2, "P2"), (&p3, "P3")] {
        let r = vs(t, t.best_peer());
        target(
            &format!("{name} throughput vs best peer"),
            "≥ 1.2×",
            show(r),
            r.map(|r| r >= 1.2),
        );
        // The same comparison with deadpool given gracepool's default wait timeout.
        let r = vs(t, t.value("deadpool-timeout").map(|v| (String::new(), v)));
        target(
            &format!("{name} throughput vs deadpool with the same wait timeout"),
            "≥ 1.2×",
            show(r),
            r.map(|r| r >= 1.2),
        );
    }
    let fairness = contended
        .as_ref()
        .and_then(|c| c.get("P3"))
        .and_then(Value::as_array)
        .and_then(|rows| rows.iter().find(|r| r["name"] == "gracepool"))
        .and_then(|r| r.get("best_round"))
        .map(|m| m["fairness"].as_f64());
    target(
        "P3 fairness (most / fewest pairs per task)",
        "≤ 1.05",
        match fairness {
            Some(Some(f)) => format!("{f:.2}"),
            Some(None) => "∞".into(),
            None => "—".into(),
        },
        fairness.map(|f| f.is_some_and(|f| f <= 1.05)),
    );
    let p4_dead = vs(&p4, p4.value("deadpool").map(|v| (String::new(), v)));
    target(
        "P4 cold start vs deadpool",
        "≤ 1×",
        show(p4_dead),
        p4_dead.map(|r| r <= 1.0),
    );
    let p5_floor = vs(&p5, p5.floor());
    target(
        "P5 close().await vs drop-loop floor",
        "≤ 2×",
        show(p5_floor),
        p5_floor.map(|r| r <= 2.0),
    );
    let p5_sync = match (p5.value("gracepool-close_blocking"), p5.floor()) {
        (Some(v), Some((_, f))) if f != 0.0 => Some(v / f),
        _ => None,
    };
    target(
        "P5 close_blocking vs drop-loop floor",
        "≤ 1.5×",
        show(p5_sync),
        p5_sync.map(|r| r <= 1.5),
    );
    let p6_peer = match (g(&p6), p6.best_peer()) {
        (Some(v), Some((_, b))) => Some((v, b)),
        _ => None,
    };
    target(
        "P6 bytes vs leanest peer",
        "≤ leanest peer",
        p6_peer.map_or("—".into(), |(v, b)| format!("{v:.1} B vs {b:.1} B")),
        p6_peer.map(|(v, b)| v <= b),
    );
    println!();

    for t in [&p1, &p2, &p3, &p4, &p5, &p6] {
        t.print();
    }
}
