//! A small HTTP load generator for the two services: `--clients` keep-alive connections at
//! once, `--requests` requests of `GET /add?n=i` in all (each answer checked: `i + 1`), on one
//! thread (a tokio current-thread runtime), so that it takes as little of the machine as it can
//! from the service it measures.
//!
//! ```sh
//! cargo run --release -p gracepool-postgres-web --bin load -- --addr 127.0.0.1:3000 \
//!     --clients 32 --requests 20000
//! ```
//!
//! It prints one line, `requests=.. errors=.. secs=.. rps=.. p50_us=.. p99_us=.. max_us=..`,
//! and exits 1 when a request failed. Loopback addresses only; it gives up after `--max-secs`
//! (default 120) and counts what had not been answered by then as errors.

use std::cell::Cell;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    addr: SocketAddr,
    clients: usize,
    requests: usize,
    max_secs: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut addr = None;
    let mut clients = 32;
    let mut requests = 20_000;
    let mut max_secs = 120;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: `{v}` is not a whole number"))
        };
        match flag.as_str() {
            "--addr" => {
                let v = value()?;
                addr = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|_| format!("--addr: `{v}` is not IP:PORT"))?,
                );
            }
            "--clients" => clients = number(value()?)?,
            "--requests" => requests = number(value()?)?,
            "--max-secs" => max_secs = number(value()?)? as u64,
            "--help" | "-h" => {
                return Err(
                    "usage: load --addr 127.0.0.1:PORT [--clients 32] [--requests 20000] [--max-secs 120]"
                        .to_string(),
                )
            }
            other => return Err(format!("unknown flag {other}; --help lists them")),
        }
    }
    let addr = addr.ok_or("--addr 127.0.0.1:PORT is required")?;
    if !addr.ip().is_loopback() {
        return Err(format!("--addr: {addr} is not a loopback address"));
    }
    if clients == 0 || requests == 0 || max_secs == 0 {
        return Err("--clients, --requests and --max-secs must be above 0".to_string());
    }
    Ok(Args {
        addr,
        clients,
        requests,
        max_secs,
    })
}

/// One keep-alive client: takes request numbers from `next` until `total` are taken or the
/// deadline passes; returns each answered request's latency, and how many failed.
async fn client(
    addr: SocketAddr,
    next: Rc<Cell<usize>>,
    total: usize,
    deadline: Instant,
) -> (Vec<Duration>, usize) {
    let mut latencies = Vec::with_capacity(total / 8 + 1);
    let mut errors = 0;
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(512);
    loop {
        let i = next.get();
        if i >= total {
            break;
        }
        next.set(i + 1);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            errors += 1;
            break;
        }
        let started = Instant::now();
        let one = tokio::time::timeout(left, request(addr, &mut conn, &mut buf, i)).await;
        match one {
            Ok(Ok(())) => latencies.push(started.elapsed()),
            Ok(Err(e)) => {
                if errors == 0 {
                    eprintln!("request {i}: {e}");
                }
                errors += 1;
                conn = None;
            }
            Err(_) => {
                errors += 1;
                break;
            }
        }
    }
    (latencies, errors)
}

/// `GET /add?n=i` on the kept-alive connection (opened when there is none); checks the answer.
async fn request(
    addr: SocketAddr,
    conn: &mut Option<TcpStream>,
    buf: &mut Vec<u8>,
    i: usize,
) -> Result<(), String> {
    if conn.is_none() {
        let s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        *conn = Some(s);
    }
    let s = conn.as_mut().expect("opened just above");
    let n = i % 1_000_000;
    let req = format!("GET /add?n={n} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    buf.clear();
    // The head, then as many body bytes as Content-Length says.
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        read_more(s, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "a head that is not UTF-8")?;
    let status = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or("an answer without Content-Length")?;
    while buf.len() < head_end + length {
        read_more(s, buf).await?;
    }
    let body = &buf[head_end..head_end + length];
    let expected = (n + 1).to_string();
    if status != "200" || body != expected.as_bytes() {
        return Err(format!(
            "expected 200 `{expected}`, got {status} `{}`",
            String::from_utf8_lossy(body)
        ));
    }
    Ok(())
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 1024];
    let got = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
    if got == 0 {
        return Err("the service closed the connection".to_string());
    }
    buf.extend_from_slice(&chunk[..got]);
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[at.clamp(1, sorted.len()) - 1]
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let local = tokio::task::LocalSet::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_secs);
    let next = Rc::new(Cell::new(0));
    let results = local.block_on(&rt, async {
        let tasks: Vec<_> = (0..args.clients)
            .map(|_| {
                tokio::task::spawn_local(client(args.addr, next.clone(), args.requests, deadline))
            })
            .collect();
        let mut all = Vec::with_capacity(tasks.len());
        for t in tasks {
            all.push(t.await.expect("a client task does not panic"));
        }
        all
    });
    let secs = started.elapsed().as_secs_f64();
    let mut latencies: Vec<Duration> = Vec::with_capacity(args.requests);
    let mut errors = 0;
    for (l, e) in results {
        latencies.extend(l);
        errors += e;
    }
    // Requests never started because the deadline came first are failures too.
    errors += args.requests.saturating_sub(latencies.len() + errors);
    latencies.sort_unstable();
    let answered = latencies.len();
    println!(
        "requests={answered} errors={errors} secs={secs:.3} rps={:.0} p50_us={} p99_us={} max_us={}",
        answered as f64 / secs,
        percentile(&latencies, 0.50).as_micros(),
        percentile(&latencies, 0.99).as_micros(),
        latencies.last().copied().unwrap_or_default().as_micros(),
    );
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
