//! The cross-runtime shutdown matrix.
//!
//! Every applicable (scenario, runtime) cell runs the `scenario` binary in a child process, a
//! few at a time. A cell passes when the child exits with status 0, prints nothing to stderr,
//! its test manager counted every created connection closed exactly once (`summary:` line:
//! created == closed, no leak, no double close), and it finished within its time limit (past
//! it the child is killed and the cell fails). Cells that do not apply are shown as n/a with
//! the reason.
//!
//! A plain `main` (`harness = false`) so the table is printed, not captured.
//! `MATRIX_FILTER=S4` (or `tokio-ct`, or `S4/tokio-ct`) runs only matching cells.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracepool_matrix::{applies, parse_summary, Kind, Scenario, CONTROLS, KINDS, SCENARIOS};

/// Children at once: the machine has 2 cores, and a child is mostly waiting.
const PARALLEL: usize = 3;
/// How long after `ready` the SIGTERM goes, so it lands under load.
const LOAD_BEFORE_SIGTERM: Duration = Duration::from_millis(150);

enum Outcome {
    NotApplicable(&'static str),
    Skipped,
    Pass {
        took: Duration,
        note: String,
    },
    Fail {
        took: Duration,
        why: String,
        stdout: String,
        stderr: String,
    },
}

fn main() {
    let filter = std::env::var("MATRIX_FILTER").unwrap_or_default();
    let cells: Vec<(usize, usize)> = (0..SCENARIOS.len())
        .flat_map(|s| (0..KINDS.len()).map(move |k| (s, k)))
        .collect();
    let outcomes: Arc<Mutex<Vec<Option<Outcome>>>> =
        Arc::new(Mutex::new((0..cells.len()).map(|_| None).collect()));
    let mut todo = Vec::new();
    for (i, &(s, k)) in cells.iter().enumerate() {
        let (scenario, kind) = (&SCENARIOS[s], KINDS[k]);
        let name = format!("{}/{}", scenario.id, kind.name());
        let outcome = if let Err(why) = applies(scenario.id, kind) {
            Some(Outcome::NotApplicable(why))
        } else if !filter.is_empty() && !name.contains(&filter) {
            Some(Outcome::Skipped)
        } else {
            todo.push(i);
            None
        };
        outcomes.lock().unwrap()[i] = outcome;
    }

    let started = Instant::now();
    let queue = Arc::new(Mutex::new(todo.clone()));
    let workers: Vec<_> = (0..PARALLEL)
        .map(|_| {
            let (queue, outcomes, cells) = (queue.clone(), outcomes.clone(), cells.clone());
            std::thread::spawn(move || loop {
                let Some(i) = queue.lock().unwrap().pop() else {
                    return;
                };
                let (s, k) = cells[i];
                let outcome = run_cell(&SCENARIOS[s], KINDS[k]);
                outcomes.lock().unwrap()[i] = Some(outcome);
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a matrix worker thread");
    }
    // The judge itself: every control cell must fail, for its own reason.
    let controls: Vec<_> = CONTROLS
        .iter()
        .map(|(scenario, reason)| {
            let judged = run_cell(scenario, Kind::TokioCt);
            let ok = matches!(&judged, Outcome::Fail { why, .. } if why.contains(reason));
            (scenario.id, *reason, ok)
        })
        .collect();
    let wall = started.elapsed();
    let outcomes: Vec<Outcome> = std::mem::take(&mut *outcomes.lock().unwrap())
        .into_iter()
        .map(|o| o.expect("every cell has an outcome"))
        .collect();

    print_table(&outcomes, todo.len(), wall);

    let failed: Vec<_> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Outcome::Fail { .. }))
        .collect();
    let passed = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Pass { .. }))
        .count();
    for (i, o) in &failed {
        let (s, k) = cells[*i];
        if let Outcome::Fail {
            took,
            why,
            stdout,
            stderr,
        } = o
        {
            println!(
                "\nFAILED {}/{} after {:.2}s: {why}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}",
                SCENARIOS[s].id,
                KINDS[k].name(),
                took.as_secs_f64()
            );
        }
    }
    let misjudged: Vec<_> = controls.iter().filter(|c| !c.2).collect();
    println!(
        "\ncontrols: {} of {} broken-on-purpose cells judged failing for the right reason",
        controls.len() - misjudged.len(),
        controls.len()
    );
    for (id, reason, _) in &misjudged {
        println!("  MISJUDGED {id}: expected a failure containing `{reason}`");
    }
    println!("\nmatrix: {passed} passed, {} failed", failed.len());
    if !failed.is_empty() || passed == 0 || !misjudged.is_empty() {
        std::process::exit(1);
    }
}

/// Runs one cell in a child process and judges it from outside.
fn run_cell(scenario: &Scenario, kind: Kind) -> Outcome {
    let started = Instant::now();
    let deadline = started + scenario.limit;
    let mut child = match Command::new(env!("CARGO_BIN_EXE_scenario"))
        .args([scenario.id, kind.name()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Fail {
                took: started.elapsed(),
                why: format!("could not start the scenario binary: {e}"),
                stdout: String::new(),
                stderr: String::new(),
            }
        }
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let out = child.stdout.take().expect("piped stdout");
    let stdout_reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line == "ready" {
                let _ = ready_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let mut err = child.stderr.take().expect("piped stderr");
    let stderr_reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = err.read_to_string(&mut all);
        all
    });

    let mut why = None;
    if scenario.sigterm {
        let left = deadline.saturating_duration_since(Instant::now());
        match ready_rx.recv_timeout(left) {
            Ok(()) => {
                std::thread::sleep(LOAD_BEFORE_SIGTERM);
                // The shell's own `kill`: there on every Unix, no extra binary or crate.
                let sent = Command::new("sh")
                    .args(["-c", &format!("kill -TERM {}", child.id())])
                    .status();
                if !matches!(sent, Ok(s) if s.success()) {
                    why = Some(format!("could not send SIGTERM: {sent:?}"));
                }
            }
            Err(_) => why = Some("never printed `ready`".to_string()),
        }
    }
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline && why.is_none() => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                why.get_or_insert_with(|| {
                    format!("killed: still running after {:?}", scenario.limit)
                });
                break None;
            }
            Err(e) => {
                let _ = child.kill();
                why = Some(format!("could not wait for the child: {e}"));
                break None;
            }
        }
    };
    let took = started.elapsed();
    let stdout = stdout_reader.join().unwrap_or_default();
    let stderr = stderr_reader.join().unwrap_or_default();

    let why = why.or_else(|| {
        let status = status.expect("a status unless killed");
        if !status.success() {
            return Some(format!("exit status {status}"));
        }
        if !stderr.is_empty() {
            return Some("stderr is not empty".to_string());
        }
        let Some(summary) = parse_summary(&stdout) else {
            return Some("no `summary:` line".to_string());
        };
        if !summary.balanced() {
            return Some(format!("created != closed exactly once: {summary:?}"));
        }
        if kind != Kind::None && summary.created == 0 {
            return Some("the scenario created no connection".to_string());
        }
        None
    });
    match why {
        Some(why) => Outcome::Fail {
            took,
            why,
            stdout,
            stderr,
        },
        None => Outcome::Pass {
            took,
            note: stdout
                .lines()
                .find_map(|l| l.strip_prefix("note: "))
                .unwrap_or_default()
                .to_string(),
        },
    }
}

fn print_table(outcomes: &[Outcome], ran: usize, wall: Duration) {
    let mut reasons: Vec<&'static str> = Vec::new();
    let mut header = format!("| {:<5} |", "");
    for k in KINDS {
        header += &format!(" {:<11} |", k.name());
    }
    println!(
        "\nshutdown matrix: {ran} cells in child processes, {PARALLEL} at a time, {:.1}s wall\n",
        wall.as_secs_f64()
    );
    println!("{header}");
    println!("|-------|{}", "-------------|".repeat(KINDS.len()));
    for (s, scenario) in SCENARIOS.iter().enumerate() {
        let mut line = format!("| {:<5} |", scenario.id);
        for k in 0..KINDS.len() {
            let cell = match &outcomes[s * KINDS.len() + k] {
                Outcome::Pass { took, .. } => format!("ok {:.2}s", took.as_secs_f64()),
                Outcome::Fail { .. } => "FAILED".to_string(),
                Outcome::Skipped => "(filtered)".to_string(),
                Outcome::NotApplicable(why) => {
                    let n = match reasons.iter().position(|r| r == why) {
                        Some(n) => n,
                        None => {
                            reasons.push(why);
                            reasons.len() - 1
                        }
                    };
                    format!("n/a [{}]", n + 1)
                }
            };
            line += &format!(" {cell:<11} |");
        }
        println!("{line}");
    }
    println!("\nScenarios:");
    for s in SCENARIOS {
        let how = if s.sigterm {
            " (the test sends SIGTERM)"
        } else {
            ""
        };
        println!("  {:<5} {}{how}", s.id, s.what);
    }
    println!("n/a:");
    for (n, why) in reasons.iter().enumerate() {
        println!("  [{}] {why}", n + 1);
    }
    println!("What each cell saw:");
    for (s, scenario) in SCENARIOS.iter().enumerate() {
        for (k, kind) in KINDS.iter().enumerate() {
            if let Outcome::Pass { note, .. } = &outcomes[s * KINDS.len() + k] {
                println!("  {:<5} {:<11} {note}", scenario.id, kind.name());
            }
        }
    }
}
