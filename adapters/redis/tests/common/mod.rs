//! What the scenario tests share: a load of workers on a pool, and what they saw.
#![allow(dead_code)] // each test file uses its own part

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracepool_redis::redis::AsyncCommands;
use gracepool_redis::Pool;
use gracepool_testkit::redis::RedisServer;

/// What a load of workers saw.
pub struct Load {
    start: Instant,
    /// Commands answered.
    pub ok: AtomicU64,
    /// Commands that failed on a connection the pool handed out (allowed in flight when the
    /// server goes away).
    pub cmd_errors: AtomicU64,
    /// `get()` calls that failed with anything but "the pool is closed".
    pub get_errors: AtomicU64,
    /// Nanoseconds from `start` to the latest answered command.
    last_ok_ns: AtomicU64,
    /// While set, workers hold no connection and wait.
    paused: AtomicBool,
    /// Workers waiting while paused.
    parked: AtomicUsize,
    /// The first few errors, for messages.
    pub errors: Mutex<Vec<String>>,
}

impl Load {
    pub fn new() -> Arc<Load> {
        Arc::new(Load {
            start: Instant::now(),
            ok: AtomicU64::new(0),
            cmd_errors: AtomicU64::new(0),
            get_errors: AtomicU64::new(0),
            last_ok_ns: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            parked: AtomicUsize::new(0),
            errors: Mutex::new(Vec::new()),
        })
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(SeqCst)
    }

    pub fn get_errors(&self) -> u64 {
        self.get_errors.load(SeqCst)
    }

    pub fn cmd_errors(&self) -> u64 {
        self.cmd_errors.load(SeqCst)
    }

    /// When the latest command was answered.
    pub fn last_ok(&self) -> Instant {
        self.start + Duration::from_nanos(self.last_ok_ns.load(SeqCst))
    }

    /// Pauses `workers` workers between requests and waits (blocking) until all of them hold
    /// no connection.
    pub fn pause(&self, workers: usize) {
        self.paused.store(true, SeqCst);
        let until = Instant::now() + Duration::from_secs(10);
        while self.parked.load(SeqCst) < workers {
            assert!(Instant::now() < until, "the workers did not pause");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Lets paused workers go on.
    pub fn resume(&self) {
        self.paused.store(false, SeqCst);
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn note(&self, what: String) {
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 10 {
            errors.push(what);
        }
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Blocks until `n` more commands than now have been answered, up to `patience`.
    pub fn await_more(&self, n: u64, patience: Duration) -> bool {
        let target = self.ok() + n;
        let until = Instant::now() + patience;
        while self.ok() < target {
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

/// One worker: get, INCR `hits`, give back; until the pool says it is closed.
pub async fn worker(pool: Pool, load: Arc<Load>) {
    loop {
        if load.paused.load(SeqCst) {
            load.parked.fetch_add(1, SeqCst);
            while load.paused.load(SeqCst) {
                async_io::Timer::after(Duration::from_millis(1)).await;
            }
            load.parked.fetch_sub(1, SeqCst);
        }
        match pool.get().await {
            Ok(mut conn) => match conn.incr::<_, _, i64>("hits", 1).await {
                Ok(_) => {
                    load.last_ok_ns.fetch_max(load.now_ns(), SeqCst);
                    load.ok.fetch_add(1, SeqCst);
                }
                Err(e) => {
                    load.cmd_errors.fetch_add(1, SeqCst);
                    load.note(format!("command: {e}"));
                }
            },
            Err(gracepool::Error::Closed) | Err(gracepool::Error::RuntimeGone) => return,
            Err(e) => {
                load.get_errors.fetch_add(1, SeqCst);
                load.note(format!("get: {e}"));
                // Not a busy loop when get() fails fast (async-io's timer works anywhere).
                async_io::Timer::after(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Waits (blocking) until the server counts `n` clients besides the asker, up to 2 s; returns
/// the last count.
pub fn await_clients(server: &RedisServer, n: usize) -> usize {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let now = server.clients();
        if now == n || Instant::now() > until {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Two threads running an executor of the test's own, until [`stop`](Runners::stop).
pub struct Runners {
    stop: async_channel::Sender<()>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Runners {
    /// Starts two threads running `ex`.
    pub fn start(ex: &Arc<async_executor::Executor<'static>>) -> Runners {
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let threads = (0..2)
            .map(|_| {
                let (ex, stopped) = (ex.clone(), stopped.clone());
                std::thread::spawn(move || {
                    let _ = futures_lite::future::block_on(ex.run(stopped.recv()));
                })
            })
            .collect();
        Runners { stop, threads }
    }

    /// Stops the threads (the executor and its tasks stay) and waits for them.
    pub fn stop(self) {
        drop(self.stop);
        for t in self.threads {
            t.join().expect("a runner thread does not panic");
        }
    }
}
