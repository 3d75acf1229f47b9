//! The embedded backend: a tiny key-value server on 127.0.0.1, and the independent witness of
//! what a pool did with its connections.
//!
//! One std thread per connection; no async runtime. The protocol is one line per request and
//! one line per reply:
//!
//! | request | reply |
//! |---|---|
//! | `PING` | `PONG` |
//! | `SET key value` | `OK` |
//! | `GET key` | `VALUE value`, or `NONE` |
//! | `SLOW ms` | `DONE`, after `ms` milliseconds (a request that is in flight for a while) |
//! | `QUIT` | `BYE`, then the server closes: the goodbye |
//! | anything else | `ERR ...` |
//!
//! Every connection ends in exactly one of two ways, and the backend counts which: with a
//! goodbye (`QUIT`), or abruptly (end of stream, reset or error without `QUIT`). A connection
//! that has ended in neither way is still open on the server side.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What the backend has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections that ended with a goodbye (`QUIT`, answered `BYE`).
    pub goodbye: u64,
    /// Connections that ended without one: end of stream, reset or error.
    pub abrupt: u64,
    /// Requests answered, goodbyes not counted.
    pub requests: u64,
}

impl BackendStats {
    /// Connections accepted that have not ended yet: still open on the server side.
    pub fn open(&self) -> u64 {
        self.accepted.saturating_sub(self.goodbye + self.abrupt)
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &BackendStats) -> BackendStats {
        BackendStats {
            accepted: self.accepted - earlier.accepted,
            goodbye: self.goodbye - earlier.goodbye,
            abrupt: self.abrupt - earlier.abrupt,
            requests: self.requests - earlier.requests,
        }
    }
}

#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    goodbye: AtomicU64,
    abrupt: AtomicU64,
    requests: AtomicU64,
}

struct Inner {
    counts: Counts,
    store: Mutex<HashMap<String, String>>,
    stopping: AtomicBool,
}

/// A running backend. Dropping it stops accepting; connections already open are served until
/// their clients leave.
pub struct Backend {
    addr: SocketAddr,
    inner: Arc<Inner>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend on `127.0.0.1:port`; port 0 picks a free one.
    ///
    /// Fails when the port cannot be bound (most often: it is in use).
    pub fn start(port: u16) -> io::Result<Backend> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            counts: Counts::default(),
            store: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
        });
        let shared = inner.clone();
        let acceptor = thread::Builder::new()
            .name("backend-accept".into())
            .spawn(move || accept_loop(listener, shared))?;
        Ok(Backend {
            addr,
            inner,
            acceptor: Some(acceptor),
        })
    }

    /// Where the backend listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counts right now.
    pub fn stats(&self) -> BackendStats {
        let c = &self.inner.counts;
        // Endings are read before `accepted`, so that a connection that ends between the reads
        // is never seen as ended but not accepted.
        let goodbye = c.goodbye.load(SeqCst);
        let abrupt = c.abrupt.load(SeqCst);
        let requests = c.requests.load(SeqCst);
        BackendStats {
            accepted: c.accepted.load(SeqCst),
            goodbye,
            abrupt,
            requests,
        }
    }

    /// Waits until no connection is open on the server side, for at most `patience`. Returns
    /// the counts at the end of the wait: `open()` is 0 unless the patience ran out.
    ///
    /// A client's close reaches the backend's thread a moment after the client made it; this
    /// is the wait for that moment, not a wait for the client.
    pub fn settle(&self, patience: Duration) -> BackendStats {
        self.settle_to(0, patience)
    }

    /// Like [`settle`](Backend::settle), but stops waiting as soon as at most `open`
    /// connections are open: the number a client says it still holds. The answer is the
    /// backend's own count either way; the client's word only says when to stop waiting.
    pub fn settle_to(&self, open: u64, patience: Duration) -> BackendStats {
        let until = Instant::now() + patience;
        loop {
            let stats = self.stats();
            if stats.open() <= open || Instant::now() >= until {
                return stats;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.inner.stopping.store(true, SeqCst);
        // Wake the acceptor out of `accept` with a connection of our own.
        if TcpStream::connect(self.addr).is_ok() {
            if let Some(acceptor) = self.acceptor.take() {
                let _ = acceptor.join();
            }
        }
    }
}

fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    for stream in listener.incoming() {
        if inner.stopping.load(SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        inner.counts.accepted.fetch_add(1, SeqCst);
        let conn_inner = inner.clone();
        let spawned = thread::Builder::new()
            .name("backend-conn".into())
            .spawn(move || {
                let ending = serve(stream, &conn_inner);
                let counter = match ending {
                    Ending::Goodbye => &conn_inner.counts.goodbye,
                    Ending::Abrupt => &conn_inner.counts.abrupt,
                };
                counter.fetch_add(1, SeqCst);
            });
        if spawned.is_err() {
            // No thread for it: the stream was dropped with the closure, closing it.
            inner.counts.abrupt.fetch_add(1, SeqCst);
        }
    }
}

enum Ending {
    Goodbye,
    Abrupt,
}

fn serve(stream: TcpStream, inner: &Inner) -> Ending {
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return Ending::Abrupt;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return Ending::Abrupt,
            Ok(_) => {}
        }
        if !line.ends_with('\n') {
            // The stream ended in the middle of a line.
            return Ending::Abrupt;
        }
        let request = line.trim_end();
        let reply = match request.split_once(' ').unwrap_or((request, "")) {
            ("PING", "") => "PONG".to_string(),
            ("QUIT", "") => {
                let _ = writer.write_all(b"BYE\n");
                let _ = writer.shutdown(Shutdown::Both);
                return Ending::Goodbye;
            }
            ("SET", rest) => match rest.split_once(' ') {
                Some((key, value)) if !key.is_empty() => {
                    lock(&inner.store).insert(key.to_string(), value.to_string());
                    "OK".to_string()
                }
                _ => "ERR usage: SET key value".to_string(),
            },
            ("GET", key) if !key.is_empty() && !key.contains(' ') => {
                match lock(&inner.store).get(key) {
                    Some(value) => format!("VALUE {value}"),
                    None => "NONE".to_string(),
                }
            }
            ("SLOW", ms) => match ms.parse::<u64>() {
                Ok(ms) => {
                    if !wait_watching(&mut reader, Duration::from_millis(ms)) {
                        return Ending::Abrupt;
                    }
                    "DONE".to_string()
                }
                Err(_) => "ERR usage: SLOW milliseconds".to_string(),
            },
            _ => format!("ERR unknown request {request:?}"),
        };
        inner.counts.requests.fetch_add(1, SeqCst);
        if writer.write_all(format!("{reply}\n").as_bytes()).is_err() {
            return Ending::Abrupt;
        }
    }
}

/// Waits `total` while watching the connection, so that a client that goes away mid-request
/// is seen going away at once rather than after the wait. False when the client left. Bytes
/// the client sends meanwhile stay buffered for the next request.
fn wait_watching(reader: &mut BufReader<TcpStream>, total: Duration) -> bool {
    let until = Instant::now() + total;
    let mut alive = true;
    while alive {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if reader
            .get_ref()
            .set_read_timeout(Some(left.min(Duration::from_millis(20))))
            .is_err()
        {
            return false;
        }
        let mut probe = [0u8; 1];
        alive = match reader.get_ref().peek(&mut probe) {
            Ok(0) => false,
            // Pipelined bytes: the client is there. Let the time pass without spinning.
            Ok(_) => {
                thread::sleep(left.min(Duration::from_millis(20)));
                true
            }
            Err(e) => matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        };
    }
    alive && reader.get_ref().set_read_timeout(None).is_ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A blocking client for the backend, for tests and quick checks: sends one line, reads one.
#[derive(Debug)]
pub struct BlockingClient {
    reader: BufReader<TcpStream>,
}

impl BlockingClient {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> io::Result<BlockingClient> {
        Ok(BlockingClient {
            reader: BufReader::new(TcpStream::connect(addr)?),
        })
    }

    /// Sends `request` and returns the reply line, without its newline.
    pub fn request(&mut self, request: &str) -> io::Result<String> {
        self.reader
            .get_mut()
            .write_all(format!("{request}\n").as_bytes())?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        Ok(reply.trim_end().to_string())
    }

    /// Reads whatever the server sends until it closes (after `BYE`, nothing).
    pub fn read_rest(mut self) -> io::Result<Vec<u8>> {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest)?;
        Ok(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(5);

    #[test]
    fn protocol_and_goodbye() {
        let backend = Backend::start(0).expect("a free port");
        let mut c = BlockingClient::connect(backend.addr()).expect("connects");
        assert_eq!(c.request("PING").unwrap(), "PONG");
        assert_eq!(c.request("GET a").unwrap(), "NONE");
        assert_eq!(c.request("SET a 1 2").unwrap(), "OK");
        assert_eq!(c.request("GET a").unwrap(), "VALUE 1 2");
        assert_eq!(c.request("SLOW 1").unwrap(), "DONE");
        assert!(c.request("NOPE").unwrap().starts_with("ERR"));
        assert_eq!(c.request("QUIT").unwrap(), "BYE");
        assert!(c.read_rest().unwrap().is_empty());
        let s = backend.settle(PATIENCE);
        assert_eq!(
            s,
            BackendStats {
                accepted: 1,
                goodbye: 1,
                abrupt: 0,
                requests: 6
            }
        );
    }

    #[test]
    fn a_client_that_leaves_without_goodbye_is_abrupt() {
        let backend = Backend::start(0).expect("a free port");
        let mut c = BlockingClient::connect(backend.addr()).expect("connects");
        assert_eq!(c.request("PING").unwrap(), "PONG");
        let open = BlockingClient::connect(backend.addr()).expect("connects");
        drop(c);
        // Both accepted first (the accept thread may lag on a busy machine), then the first
        // one's end counted: the second one is still open, so settle runs out of patience and
        // says so.
        let until = Instant::now() + PATIENCE;
        while (backend.stats().accepted, backend.stats().abrupt) != (2, 1) && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        let s = backend.settle(Duration::from_millis(200));
        assert_eq!((s.accepted, s.goodbye, s.abrupt, s.open()), (2, 0, 1, 1));
        // Told that one is still open, settle_to stops waiting there.
        let s = backend.settle_to(1, PATIENCE);
        assert_eq!(s.open(), 1);
        drop(open);
        let s = backend.settle(PATIENCE);
        assert_eq!((s.accepted, s.goodbye, s.abrupt, s.open()), (2, 0, 2, 0));
    }

    #[test]
    fn leaving_in_the_middle_of_a_slow_request_is_seen_at_once() {
        let backend = Backend::start(0).expect("a free port");
        let mut s = TcpStream::connect(backend.addr()).expect("connects");
        s.write_all(b"SLOW 600000\n").unwrap();
        // Wait until the backend has the connection, then leave mid-request.
        let before = backend.stats();
        let until = Instant::now() + PATIENCE;
        while backend.stats().accepted == before.accepted && Instant::now() < until {
            thread::sleep(Duration::from_millis(1));
        }
        drop(s);
        let stats = backend.settle(PATIENCE);
        assert_eq!((stats.accepted, stats.abrupt, stats.open()), (1, 1, 0));
    }

    #[test]
    fn a_port_in_use_is_an_error() {
        let backend = Backend::start(0).expect("a free port");
        let err = Backend::start(backend.addr().port())
            .err()
            .expect("the port is taken");
        assert_eq!(err.kind(), ErrorKind::AddrInUse);
    }
}
