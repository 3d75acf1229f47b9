//! The smallest complete use of gracepool on tokio: build, get, close.
//!
//! `cargo run --example quickstart`

use std::sync::atomic::{AtomicU32, Ordering};

use gracepool::{Manager, Pool};
use gracepool_tokio::TokioRuntime;

/// A stand-in backend: each connection is a number.
struct Numbers(AtomicU32);

impl Manager for Numbers {
    type Connection = u32;
    type Error = std::io::Error;

    async fn create(&self) -> Result<u32, std::io::Error> {
        Ok(self.0.fetch_add(1, Ordering::Relaxed))
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let pool = Pool::builder(Numbers(AtomicU32::new(1)))
        .max_size(4)
        .runtime(TokioRuntime::current())
        .build()
        .expect("a valid configuration");

    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let conn = pool.get().await.expect("a connection");
                tokio::task::yield_now().await;
                (i, *conn)
            })
        })
        .collect();
    for t in tasks {
        let (task, conn) = t.await.expect("the task ran");
        println!("task {task:2} used connection {conn}");
    }

    let report = pool.close().await;
    println!(
        "closed: created {}, closed gracefully {}, by the sync fallback {}, still open {}",
        report.counters.created,
        report.counters.closed_graceful,
        report.counters.closed_sync,
        report.still_open()
    );
}
