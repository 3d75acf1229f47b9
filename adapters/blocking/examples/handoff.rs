//! What a call costs through the bridge, beside the other common design: the connection
//! behind a mutex, each call sent to tokio's blocking pool with `spawn_blocking`.
//!
//! Both run on the same gracepool pool, on one tokio runtime, with the same closures, so the
//! difference is the hand-off alone: `cargo run --release -p gracepool-blocking --example
//! handoff [calls]`. Each line: the design, the load, calls per second (best of three rounds).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracepool::Pool;
use gracepool_blocking::{Connector, Manager};
use gracepool_tokio::TokioRuntime;

/// A stand-in connection: a counter, and a call that does a little work (or a little wait).
struct Conn(u64);

struct Bridge;

impl Connector for Bridge {
    type Connection = Conn;
    type Error = std::io::Error;
    fn open(&self) -> Result<Conn, std::io::Error> {
        Ok(Conn(0))
    }
}

/// The spawn_blocking design: the connection behind a mutex, each call a blocking task.
struct Spawned;

impl gracepool::Manager for Spawned {
    type Connection = Arc<Mutex<Conn>>;
    type Error = std::io::Error;
    async fn create(&self) -> Result<Arc<Mutex<Conn>>, std::io::Error> {
        Ok(Arc::new(Mutex::new(Conn(0))))
    }
}

async fn spawned_call<R: Send + 'static>(
    conn: &Arc<Mutex<Conn>>,
    f: impl FnOnce(&mut Conn) -> R + Send + 'static,
) -> R {
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || f(&mut conn.lock().unwrap()))
        .await
        .unwrap()
}

fn work(c: &mut Conn, pause: Duration) -> u64 {
    if !pause.is_zero() {
        std::thread::sleep(pause);
    }
    c.0 += 1;
    c.0
}

async fn bridge_round(pool: &Pool<Manager<Bridge>>, tasks: usize, calls: usize, pause: Duration) {
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let pool = pool.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..calls / tasks {
                let mut conn = pool.get().await.unwrap();
                conn.interact(move |c: &mut Conn| work(c, pause))
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

async fn spawned_round(pool: &Pool<Spawned>, tasks: usize, calls: usize, pause: Duration) {
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let pool = pool.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..calls / tasks {
                let conn = pool.get().await.unwrap();
                spawned_call(&conn, move |c| work(c, pause)).await;
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

fn best<F: std::future::Future<Output = ()>>(
    rt: &tokio::runtime::Runtime,
    calls: usize,
    mut round: impl FnMut() -> F,
) -> f64 {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            rt.block_on(round());
            calls as f64 / start.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn main() {
    let calls: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(40_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let size = 4;
    let bridge = rt.block_on(async {
        Pool::builder(Manager::new(Bridge))
            .max_size(size)
            .runtime(TokioRuntime::current())
            .build()
            .unwrap()
    });
    let spawned = rt.block_on(async {
        Pool::builder(Spawned)
            .max_size(size)
            .runtime(TokioRuntime::current())
            .build()
            .unwrap()
    });
    println!("pool of {size}, {calls} calls a round, tokio with 2 workers");
    for (tasks, pause, calls) in [
        (1, Duration::ZERO, calls),
        (8, Duration::ZERO, calls),
        (8, Duration::from_micros(100), calls / 10),
    ] {
        let b = best(&rt, calls, || bridge_round(&bridge, tasks, calls, pause));
        let s = best(&rt, calls, || spawned_round(&spawned, tasks, calls, pause));
        println!(
            "{tasks} tasks, {:>4} us a call: thread per connection {b:>9.0}/s, spawn_blocking {s:>9.0}/s, ratio {:.2}",
            pause.as_micros(),
            b / s
        );
    }
    rt.block_on(async {
        bridge.close().await;
        spawned.close().await;
    });
}
