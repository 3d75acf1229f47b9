//! gracepool's demo: a service that restarts cleanly, on a real TCP backend.
//!
//! `cargo run --release -p gracepool-demo -- --help`
//!
//! The demo process runs the backend and watches; each restart of the service runs in a child
//! process of the demo (see `worker.rs`), so that the child's stderr can be captured and
//! counted byte by byte, and so that a panic in a peer pool cannot take the witness down.

#![forbid(unsafe_code)]

mod args;
mod peers;
mod report;
mod worker;

use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::process::{Child, ChildStdin, Command as Process, ExitCode, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use gracepool_demo::backend::{Backend, BackendStats};

use args::{Command, Ending, Options, PoolKind, WORKER_FLAG};
use report::{Restart, Table};

/// How long the demo waits for the backend to see a close the worker says it made. The
/// backend's count is the answer; this only bounds the wait when the worker's word is wrong.
const SETTLE: Duration = Duration::from_secs(5);
/// A worker silent for this long is stuck: the demo stops it and says so.
const WATCHDOG: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    match args::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            print!("{}", args::USAGE);
            ExitCode::SUCCESS
        }
        Ok(Command::Worker {
            options,
            addr,
            ending,
        }) => worker::run(options, addr, ending),
        Ok(Command::Run(options)) => run(options),
        Err(bad) => {
            eprintln!("gracepool-demo: {bad}");
            ExitCode::from(2)
        }
    }
}

fn run(options: Options) -> ExitCode {
    let backend = match Backend::start(options.port) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            eprintln!(
                "gracepool-demo: port {} on 127.0.0.1 is in use; pick another with --port, or --port 0 for a free one",
                options.port
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!(
                "gracepool-demo: could not start the backend on 127.0.0.1:{}: {e}",
                options.port
            );
            return ExitCode::from(2);
        }
    };
    println!(
        "gracepool demo: pool {}, runtime {}, {} workers, {} requests per restart, {} restarts, pool size {}",
        options.pool.name(),
        options.runtime.name(),
        options.workers,
        options.requests,
        options.restarts,
        options.size
    );
    println!(
        "backend: key-value server on {}, one thread per connection, counting how each connection ends\n",
        backend.addr()
    );

    let mut table = Table::default();
    for i in 1..=options.restarts {
        let ending = if options.restarts >= 2 && i == options.restarts {
            Ending::Close
        } else {
            Ending::Teardown
        };
        match restart(&options, &backend, i, ending) {
            Ok(r) => table.push(r),
            Err(e) => {
                eprintln!("gracepool-demo: restart {i} could not run: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!();
    table.print(options.pool);
    if options.pool == PoolKind::Gracepool && !table.promise_kept() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// One restart: a child process runs the service through it; the backend watches.
fn restart(
    options: &Options,
    backend: &Backend,
    index: u32,
    ending: Ending,
) -> io::Result<Restart> {
    let before = backend.settle(SETTLE);
    let mut child = Process::new(std::env::current_exe()?)
        .args(args::to_flags(options))
        .args([WORKER_FLAG, "--addr", &backend.addr().to_string()])
        .args(["--ending", ending.name()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped above");
    let stderr = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = BufReader::new(stderr).read_to_end(&mut bytes);
        bytes
    });
    let mut stdin = child.stdin.take().expect("piped above");
    let stdout = BufReader::new(child.stdout.take().expect("piped above"));
    // Lines arrive through a channel, so that a worker that hangs can be noticed.
    let (lines_tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let label = format!("restart {index}/{}", options.restarts);
    let mut bar = Bar::new(label, options.requests);
    let mut r = Restart {
        index,
        ending,
        ..Restart::default()
    };
    let mut after_teardown = BackendStats::default();
    let mut after_release = None;
    loop {
        let line = match lines.recv_timeout(WATCHDOG) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                r.errors.push(format!(
                    "the worker said nothing for {} s: it hangs, and was killed",
                    WATCHDOG.as_secs()
                ));
                let _ = child.kill();
                break;
            }
        };
        let (what, rest) = line.split_once(' ').unwrap_or((&line, ""));
        match what {
            "progress" => bar.update(rest.split(' ').next().and_then(|d| d.parse().ok())),
            "error" => r.errors.push(rest.to_string()),
            "in-flight" => {
                r.in_flight = rest.parse().unwrap_or(0);
                bar.finish(match ending {
                    Ending::Teardown => {
                        format!("runtime dropped with {} requests in flight", r.in_flight)
                    }
                    Ending::Close => {
                        format!("graceful close with {} requests in flight", r.in_flight)
                    }
                });
            }
            "torn-down" => {
                after_teardown = backend.settle_to(rest.parse().unwrap_or(0), SETTLE);
                tell(&mut stdin);
            }
            "pool" => {
                let n: Vec<u64> = rest.split(' ').filter_map(|v| v.parse().ok()).collect();
                if let [created, graceful, sync, failed, micros] = n[..] {
                    r.pool_created = created;
                    r.pool_graceful = graceful;
                    r.pool_sync = sync + failed;
                    r.close_time = Some(Duration::from_micros(micros));
                }
            }
            "done" => {
                after_release = Some(backend.settle_to(rest.parse().unwrap_or(0), SETTLE));
                break;
            }
            _ => r
                .errors
                .push(format!("unexpected line from the worker: {line:?}")),
        }
    }
    // Let the child go, and collect what it left behind.
    drop(stdin);
    r.exit = wait_child(&mut child)?;
    let stderr = stderr.join().unwrap_or_default();
    r.stderr_bytes = stderr.len();
    let text = String::from_utf8_lossy(&stderr);
    r.panics = text.matches("panicked at").count();
    r.first_stderr_line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .map(String::from);

    // Connections the process exit closed end here; the next restart starts from a quiet
    // backend.
    let after_exit = backend.settle(SETTLE);
    r.held_after_teardown = after_teardown.open();
    match after_release {
        Some(end) => {
            r.backend = end.since(&before);
            r.leaked = end.open();
        }
        None => {
            r.backend = after_exit.since(&before);
            r.errors
                .push("the worker ended before it had let go of its pool".to_string());
        }
    }
    Ok(r)
}

fn tell(stdin: &mut ChildStdin) {
    let _ = stdin.write_all(b"go\n");
    let _ = stdin.flush();
}

fn wait_child(child: &mut Child) -> io::Result<String> {
    let status = child.wait()?;
    Ok(match status.code() {
        Some(code) => code.to_string(),
        None => "signal".to_string(),
    })
}

/// A lean progress bar: redrawn in place on a terminal, drawn once when done otherwise.
struct Bar {
    label: String,
    total: u64,
    done: u64,
    live: bool,
}

impl Bar {
    const WIDTH: u64 = 30;

    fn new(label: String, total: u64) -> Bar {
        Bar {
            label,
            total,
            done: 0,
            live: io::stdout().is_terminal(),
        }
    }

    fn line(&self) -> String {
        let filled = (self.done * Bar::WIDTH)
            .checked_div(self.total)
            .unwrap_or(0);
        format!(
            "{}  [{}{}] {:>6}/{} requests",
            self.label,
            "#".repeat(filled as usize),
            ".".repeat((Bar::WIDTH - filled.min(Bar::WIDTH)) as usize),
            self.done,
            self.total
        )
    }

    fn update(&mut self, done: Option<u64>) {
        if let Some(done) = done {
            self.done = done.min(self.total);
        }
        if self.live {
            let mut out = io::stdout().lock();
            let _ = write!(out, "\r{}", self.line());
            let _ = out.flush();
        }
    }

    fn finish(&mut self, then: String) {
        let mut out = io::stdout().lock();
        let start = if self.live { "\r" } else { "" };
        let _ = writeln!(out, "{start}{}  then: {then}", self.line());
        let _ = out.flush();
    }
}
