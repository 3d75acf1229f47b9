//! A TCP proxy on 127.0.0.1 that a test puts between a client and a server, and turns into a
//! bad network on demand: slow, silent, resetting, refusing.
//!
//! ```no_run
//! use gracepool_testkit::fault::{FaultProxy, Mode};
//! use std::time::Duration;
//!
//! # let server_port = 5432;
//! let proxy = FaultProxy::start(server_port).expect("a free port on 127.0.0.1");
//! // ... point the client at `proxy.port()` instead of `server_port`, then:
//! proxy.set_mode(Mode::Latency(Duration::from_millis(50)));
//! proxy.set_mode(Mode::Blackhole); // a partition: nothing passes, nobody is told
//! proxy.set_mode(Mode::ResetAll); // every connection reset, both sides, before it returns
//! proxy.set_mode(Mode::Pass);
//! assert_eq!(proxy.counts().open, 0);
//! ```
//!
//! Plain std threads and blocking sockets, no runtime: the proxy works under any runtime the
//! test uses, and after it is gone. A mode applies at once to the connections already open and
//! to those that come next. Each connection has two threads, one per direction, that wake at
//! least every [`TICK`] to read the mode; dropping the proxy stops and joins every thread and
//! closes every socket.
//!
//! What the proxy cannot fake: it is an endpoint, so the kernel acknowledges what the client
//! sends even when the proxy forwards nothing. A client's TCP timeouts (`TCP_USER_TIMEOUT`,
//! keepalives) therefore never fire behind a [`Mode::Blackhole`]; only its own timers do. For a
//! partition the kernel sees, drop packets instead ([`crate::netfilter`]).
//!
//! Resets use `SO_LINGER` with a zero timeout (close sends RST instead of FIN), set through
//! `socket2`, because std's `TcpStream::set_linger` is not stable.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often an idle proxy thread looks at the mode and the stop flag: the longest a mode
/// change waits to be seen by a connection, and the longest a drop waits for a thread.
pub const TICK: Duration = Duration::from_millis(10);

/// How long the proxy waits for the target to accept a connection.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long dropping the proxy waits for its threads before it reports one stuck.
const JOIN_PATIENCE: Duration = Duration::from_secs(5);

/// How long [`FaultProxy::set_mode`] waits for the connections [`Mode::ResetAll`] resets.
const RESET_PATIENCE: Duration = Duration::from_secs(2);

/// What the proxy does to the traffic through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Forward both ways, end of stream (FIN) and resets included.
    #[default]
    Pass,
    /// Forward both ways, each chunk read delivered no sooner than this long after it was
    /// read.
    Latency(Duration),
    /// Forward nothing, either way, and tell nobody: open connections are held open, new ones
    /// are accepted (the proxy's listener completes the handshake) and held without reaching
    /// the target, and neither a close nor a reset passes. What a partition that drops packets
    /// looks like to both ends. Back in [`Mode::Pass`], what was held flows again (as TCP
    /// retransmits after a partition heals), and connections accepted meanwhile reach the
    /// target then.
    Blackhole,
    /// Reset every connection, both sides (RST to the client and to the target), and every new
    /// one as it comes, while the mode holds. [`FaultProxy::set_mode`] returns once the
    /// connections open at that moment are reset.
    ResetAll,
    /// Reset every new connection as soon as it is accepted, before a byte passes (the client's
    /// connect succeeds, its first read or write fails with a reset); connections already open
    /// keep passing.
    RefuseNew,
}

impl Mode {
    /// How long a chunk is held before it is written on, `None` while nothing may pass.
    fn delay(self) -> Option<Duration> {
        match self {
            Mode::Pass => Some(Duration::ZERO),
            Mode::Latency(d) => Some(d),
            // A connection that predates RefuseNew keeps passing.
            Mode::RefuseNew => Some(Duration::ZERO),
            Mode::Blackhole | Mode::ResetAll => None,
        }
    }
}

/// What a [`FaultProxy`] has seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Connections its listener accepted, in any mode (those reset at once included).
    pub accepted: u64,
    /// Connections open now: accepted and not yet closed on the client's side.
    pub open: u64,
    /// Connections the proxy reset (both sides): by [`Mode::ResetAll`], by
    /// [`Mode::RefuseNew`], or because the target refused it.
    pub reset: u64,
    /// Bytes written to the target (client to server).
    pub bytes_to_target: u64,
    /// Bytes written to the client (server to client).
    pub bytes_to_client: u64,
}

/// A TCP proxy on `127.0.0.1` in front of `127.0.0.1:<target>`, its faults switched at run
/// time with [`set_mode`](FaultProxy::set_mode). Dropping it stops its threads (joined, with a
/// bound) and closes every socket it holds.
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    mode: Mutex<Mode>,
    stop: AtomicBool,
    accepted: AtomicU64,
    open: AtomicU64,
    reset: AtomicU64,
    bytes_to_target: AtomicU64,
    bytes_to_client: AtomicU64,
    /// The connections, for ResetAll to reach (dead entries are pruned as new ones come).
    conns: Mutex<Vec<Weak<Conn>>>,
    /// Every thread the proxy started but its acceptor, joined on drop.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn mode(&self) -> Mode {
        *self.mode.lock().expect("the mode lock is never poisoned")
    }

    fn stopping(&self) -> bool {
        self.stop.load(SeqCst)
    }

    fn spawn(&self, name: &str, f: impl FnOnce() + Send + 'static) {
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(f)
            .expect("the proxy can start a thread");
        let mut threads = self.threads.lock().expect("never poisoned");
        // Join the threads already done, so the list stays as long as the live ones.
        let (done, live): (Vec<_>, Vec<_>) = threads.drain(..).partition(|t| t.is_finished());
        *threads = live;
        threads.push(handle);
        drop(threads);
        for t in done {
            let _ = t.join();
        }
    }
}

/// One proxied connection: the client's socket and, once made, the target's.
struct Conn {
    client: TcpStream,
    /// Set once the target accepted; closed with the client's socket, when the last
    /// direction lets go of the connection.
    upstream: OnceLock<TcpStream>,
    /// Set when the connection is to be reset: both pumps stop, and the last one out closes
    /// both sockets with RST (linger 0 was set on them).
    reset: AtomicBool,
    shared: Arc<Shared>,
}

impl Conn {
    /// Resets the connection: both sockets close with RST once both directions let go.
    fn reset(&self) {
        if !self.reset.swap(true, SeqCst) {
            self.shared.reset.fetch_add(1, SeqCst);
        }
        let _ = rst_on_close(&self.client);
        if let Some(up) = self.upstream.get() {
            let _ = rst_on_close(up);
        }
    }

    fn is_reset(&self) -> bool {
        self.reset.load(SeqCst)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The sockets close here (the last reference to the upstream is dropped with us).
        self.shared.open.fetch_sub(1, SeqCst);
    }
}

/// Makes the next close of `stream` send RST instead of FIN.
fn rst_on_close(stream: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO))
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 in front of `127.0.0.1:target_port`, in
    /// [`Mode::Pass`]. Fails only if no port can be bound.
    pub fn start(target_port: u16) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        // Polled, so that the acceptor sees the stop flag without being woken.
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target: SocketAddr::from(([127, 0, 0, 1], target_port)),
            mode: Mutex::new(Mode::Pass),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
            reset: AtomicU64::new(0),
            bytes_to_target: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("fault-proxy-accept-{}", addr.port()))
                .spawn(move || accept_loop(listener, shared))?
        };
        Ok(FaultProxy {
            shared,
            addr,
            acceptor: Some(acceptor),
        })
    }

    /// The port clients connect to, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The target's port.
    pub fn target_port(&self) -> u16 {
        self.shared.target.port()
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// Switches the mode, for open connections and new ones alike. Every open connection sees
    /// it within [`TICK`]; [`Mode::ResetAll`] returns only once the connections open at the
    /// call are reset and closed (up to 2 s; panics if one is not, a bug of the proxy), so
    /// `set_mode(ResetAll)` then `set_mode(Pass)` resets each of them and spares what comes
    /// after.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().expect("never poisoned") = mode;
        if mode == Mode::ResetAll {
            let conns: Vec<Arc<Conn>> = self
                .shared
                .conns
                .lock()
                .expect("never poisoned")
                .iter()
                .filter_map(Weak::upgrade)
                .collect();
            for conn in &conns {
                conn.reset();
            }
            let targets: Vec<Weak<Conn>> = conns.iter().map(Arc::downgrade).collect();
            drop(conns);
            let until = Instant::now() + RESET_PATIENCE;
            while targets.iter().any(|c| c.strong_count() > 0) {
                assert!(
                    Instant::now() < until,
                    "fault proxy: a connection was not reset within {RESET_PATIENCE:?}"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// What the proxy has seen so far.
    pub fn counts(&self) -> Counts {
        let s = &self.shared;
        Counts {
            accepted: s.accepted.load(SeqCst),
            open: s.open.load(SeqCst),
            reset: s.reset.load(SeqCst),
            bytes_to_target: s.bytes_to_target.load(SeqCst),
            bytes_to_client: s.bytes_to_client.load(SeqCst),
        }
    }
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .field("mode", &self.mode())
            .field("counts", &self.counts())
            .finish()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        let until = Instant::now() + JOIN_PATIENCE;
        let mut stuck = 0;
        let mut join = |handle: JoinHandle<()>| {
            while !handle.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                // Left detached rather than hang the test: reported below.
                stuck += 1;
            }
        };
        // The acceptor first: once it is joined, no connection thread is started. A
        // connection thread may still start its second direction: take the list until empty.
        if let Some(acceptor) = self.acceptor.take() {
            join(acceptor);
        }
        loop {
            let batch = std::mem::take(
                &mut *self
                    .shared
                    .threads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            );
            if batch.is_empty() {
                break;
            }
            batch.into_iter().for_each(&mut join);
        }
        if stuck > 0 && !std::thread::panicking() {
            panic!(
                "fault proxy on {}: {stuck} thread(s) did not stop within {JOIN_PATIENCE:?}",
                self.addr
            );
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stopping() {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(_) => {
                // Out of descriptors, a connection reset in the backlog: try again shortly.
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        shared.accepted.fetch_add(1, SeqCst);
        shared.open.fetch_add(1, SeqCst);
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let conn = Arc::new(Conn {
            client,
            upstream: OnceLock::new(),
            reset: AtomicBool::new(false),
            shared: shared.clone(),
        });
        if matches!(shared.mode(), Mode::RefuseNew | Mode::ResetAll) {
            conn.reset();
            continue; // dropped here: RST
        }
        {
            let mut conns = shared.conns.lock().expect("never poisoned");
            conns.retain(|c| c.strong_count() > 0);
            conns.push(Arc::downgrade(&conn));
        }
        let port = conn.client.peer_addr().map_or(0, |a| a.port());
        shared.spawn(&format!("fault-proxy-up-{port}"), move || {
            serve(conn);
        });
    }
}

/// Connects a new connection to the target (when the mode lets anything pass), starts the
/// target-to-client direction on a thread of its own, and runs client-to-target here.
fn serve(conn: Arc<Conn>) {
    let shared = conn.shared.clone();
    // Held in a partition until it heals, as a client's SYN would be retried.
    loop {
        if shared.stopping() || conn.is_reset() {
            return;
        }
        if shared.mode().delay().is_some() {
            break;
        }
        std::thread::sleep(TICK);
    }
    let upstream = match TcpStream::connect_timeout(&shared.target, UPSTREAM_CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(_) => {
            // The target refused: so does the proxy.
            conn.reset();
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let upstream = conn.upstream.get_or_init(|| upstream);
    if conn.is_reset() {
        // Reset while connecting: the new socket must be reset too.
        conn.reset();
        return;
    }
    let down = {
        let conn = conn.clone();
        move || {
            let upstream = conn.upstream.get().expect("set before this thread started");
            pump(&conn, upstream, &conn.client, &conn.shared.bytes_to_client);
        }
    };
    let port = conn.client.peer_addr().map_or(0, |a| a.port());
    shared.spawn(&format!("fault-proxy-down-{port}"), down);
    pump(&conn, &conn.client, upstream, &shared.bytes_to_target);
}

/// Copies `from` to `to` under the mode in force, until the stream ends, fails, the connection
/// is reset or the proxy stops. An end of stream is passed on as a FIN (half close), an error
/// as a reset of the whole connection.
fn pump(conn: &Conn, from: &TcpStream, to: &TcpStream, counter: &AtomicU64) {
    let shared = &conn.shared;
    let _ = from.set_read_timeout(Some(TICK));
    let _ = to.set_write_timeout(Some(TICK));
    let mut buf = vec![0u8; 16 * 1024];
    let alive = || !shared.stopping() && !conn.is_reset();
    while alive() {
        // Nothing is read while nothing may pass: the data waits in the kernel's buffers.
        if shared.mode().delay().is_none() {
            std::thread::sleep(TICK);
            continue;
        }
        let n = match (&*from).read(&mut buf) {
            Ok(0) => {
                // End of stream: passed on when the mode lets it pass.
                if wait_for_passage(conn, Instant::now()) {
                    let _ = to.shutdown(Shutdown::Write);
                }
                return;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                // Reset (or failed) on one side: the other side is reset too.
                conn.reset();
                return;
            }
        };
        if !wait_for_passage(conn, Instant::now()) {
            return;
        }
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            if !alive() {
                return;
            }
            if shared.mode().delay().is_none() {
                // A partition came mid-chunk: hold the rest.
                std::thread::sleep(TICK);
                continue;
            }
            match (&*to).write(chunk) {
                Ok(0) => {
                    conn.reset();
                    return;
                }
                Ok(w) => {
                    counter.fetch_add(w as u64, SeqCst);
                    chunk = &chunk[w..];
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => {
                    conn.reset();
                    return;
                }
            }
        }
    }
}

/// Waits until a chunk read at `read_at` may be written on: its delay has passed, in a mode
/// that lets traffic pass. Returns false when the connection is reset or the proxy stops.
fn wait_for_passage(conn: &Conn, read_at: Instant) -> bool {
    loop {
        if conn.shared.stopping() || conn.is_reset() {
            return false;
        }
        match conn.shared.mode().delay() {
            Some(delay) => {
                let due = read_at + delay;
                let now = Instant::now();
                if now >= due {
                    return true;
                }
                std::thread::sleep((due - now).min(TICK));
            }
            None => std::thread::sleep(TICK),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on 127.0.0.1, one thread per connection, stopped on drop. It counts the
    /// connections it accepted and remembers how each ended.
    struct Echo {
        port: u16,
        stop: Arc<AtomicBool>,
        accepted: Arc<AtomicU64>,
        /// How each connection ended: "eof" (FIN), "reset", "stop".
        ends: Arc<Mutex<Vec<&'static str>>>,
        thread: Option<JoinHandle<()>>,
    }

    impl Echo {
        fn start() -> Echo {
            let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
            listener.set_nonblocking(true).unwrap();
            let port = listener.local_addr().unwrap().port();
            let stop = Arc::new(AtomicBool::new(false));
            let accepted = Arc::new(AtomicU64::new(0));
            let ends = Arc::new(Mutex::new(Vec::new()));
            let thread = {
                let (stop, accepted, ends) = (stop.clone(), accepted.clone(), ends.clone());
                std::thread::spawn(move || {
                    let mut conns = Vec::new();
                    while !stop.load(SeqCst) {
                        match listener.accept() {
                            Ok((s, _)) => {
                                accepted.fetch_add(1, SeqCst);
                                let (stop, ends) = (stop.clone(), ends.clone());
                                conns.push(std::thread::spawn(move || echo(s, &stop, &ends)));
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(1)),
                        }
                    }
                    for c in conns {
                        c.join().unwrap();
                    }
                })
            };
            Echo {
                port,
                stop,
                accepted,
                ends,
                thread: Some(thread),
            }
        }

        fn ends(&self) -> Vec<&'static str> {
            self.ends.lock().unwrap().clone()
        }

        fn wait_ends(&self, n: usize) -> Vec<&'static str> {
            let until = Instant::now() + Duration::from_secs(2);
            while self.ends().len() < n && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.ends()
        }
    }

    fn echo(s: TcpStream, stop: &AtomicBool, ends: &Mutex<Vec<&'static str>>) {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        let mut buf = [0u8; 4096];
        let end = loop {
            if stop.load(SeqCst) {
                break "stop";
            }
            match (&s).read(&mut buf) {
                Ok(0) => break "eof",
                Ok(n) => {
                    if (&s).write_all(&buf[..n]).is_err() {
                        break "reset";
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break "reset",
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break "reset",
            }
        };
        ends.lock().unwrap().push(end);
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.stop.store(true, SeqCst);
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
    }

    fn client(proxy: &FaultProxy) -> TcpStream {
        let s = TcpStream::connect(proxy.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    /// Writes `msg` and reads it back; the read's error kind if it fails.
    fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Result<Vec<u8>, io::ErrorKind> {
        s.write_all(msg).map_err(|e| e.kind())?;
        let mut back = vec![0; msg.len()];
        s.read_exact(&mut back).map_err(|e| e.kind())?;
        Ok(back)
    }

    /// Reads with a short timeout: what a silent peer gives (a timeout), or what a reset or
    /// closed one does.
    fn read_short(s: &mut TcpStream, patience: Duration) -> Result<usize, io::ErrorKind> {
        s.set_read_timeout(Some(patience)).unwrap();
        let mut buf = [0u8; 64];
        let r = s.read(&mut buf).map_err(|e| e.kind());
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        r
    }

    fn until(patience: Duration, ok: impl Fn() -> bool) -> bool {
        let end = Instant::now() + patience;
        while !ok() {
            if Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    fn is_timeout(kind: io::ErrorKind) -> bool {
        matches!(kind, io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
    }

    #[test]
    fn pass_forwards_both_ways_and_counts() {
        let echo = Echo::start();
        let proxy = FaultProxy::start(echo.port).unwrap();
        assert_eq!(proxy.target_port(), echo.port);
        let mut c = client(&proxy);
        assert_eq!(round_trip(&mut c, b"hello").unwrap(), b"hello");
        assert_eq!(round_trip(&mut c, &[7; 100_000]).unwrap(), vec![7; 100_000]);
        // The proxy counts a chunk after it has written it: the client may read it first.
        let all = |c: &Counts| c.bytes_to_target == 100_005 && c.bytes_to_client == 100_005;
        assert!(
            until(Duration::from_secs(2), || all(&proxy.counts())),
            "{:?}",
            proxy.counts()
        );
        let counts = proxy.counts();
        assert_eq!((counts.accepted, counts.open, counts.reset), (1, 1, 0));
        // A FIN passes: the echo server sees the end of stream, and the proxy lets go.
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_short(&mut c, Duration::from_secs(2)), Ok(0));
        assert_eq!(echo.wait_ends(1), ["eof"]);
        drop(c);
        assert!(until(Duration::from_secs(2), || proxy.counts().open == 0));
    }

    #[test]
    fn latency_delays_each_chunk() {
        let echo = Echo::start();
        let proxy = FaultProxy::start(echo.port).unwrap();
        let mut c = client(&proxy);
        round_trip(&mut c, b"warm").unwrap();
        // A second each way: long enough to tell a delayed round trip from a loaded machine's.
        let latency = Duration::from_secs(1);
        proxy.set_mode(Mode::Latency(latency));
        assert_eq!(proxy.mode(), Mode::Latency(latency));
        let started = Instant::now();
        assert_eq!(round_trip(&mut c, b"slow").unwrap(), b"slow");
        // Delayed on the way there and on the way back.
        let took = started.elapsed();
        assert!(took >= latency * 2, "{took:?}");
        assert!(took < latency * 20, "{took:?}");
        proxy.set_mode(Mode::Pass);
        let started = Instant::now();
        round_trip(&mut c, b"fast").unwrap();
        // Not delayed any more.
        assert!(started.elapsed() < latency, "{:?}", started.elapsed());
    }

    #[test]
    fn blackhole_holds_everything_silently_then_heals() {
        let echo = Echo::start();
        let proxy = FaultProxy::start(echo.port).unwrap();
        let mut old = client(&proxy);
        round_trip(&mut old, b"before").unwrap();
        let mut leaver = client(&proxy);
        round_trip(&mut leaver, b"leaving").unwrap();
        proxy.set_mode(Mode::Blackhole);
        std::thread::sleep(TICK * 3);
        let before = proxy.counts();
        // Nothing comes back, and nothing reaches the server.
        old.write_all(b"lost?").unwrap();
        assert!(is_timeout(
            read_short(&mut old, Duration::from_millis(300)).unwrap_err()
        ));
        // A new connection is accepted, and gets nothing either; the server never sees it.
        let mut new = client(&proxy);
        new.write_all(b"anyone?").unwrap();
        assert!(is_timeout(
            read_short(&mut new, Duration::from_millis(300)).unwrap_err()
        ));
        assert_eq!(echo.accepted.load(SeqCst), 2);
        // A client that gives up closes silently: the server is not told.
        leaver.shutdown(Shutdown::Both).unwrap();
        drop(leaver);
        std::thread::sleep(Duration::from_millis(100));
        assert!(echo.ends().is_empty(), "{:?}", echo.ends());
        let during = proxy.counts();
        assert_eq!(during.bytes_to_target, before.bytes_to_target);
        assert_eq!(during.bytes_to_client, before.bytes_to_client);
        assert_eq!((during.accepted, during.open, during.reset), (3, 3, 0));
        // Healed: what was held flows, the held connection reaches the server.
        proxy.set_mode(Mode::Pass);
        let mut back = [0u8; 5];
        old.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"lost?");
        let mut back = [0u8; 7];
        new.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"anyone?");
        assert_eq!(echo.accepted.load(SeqCst), 3);
        // The one that left during the partition is told to the server now, as a FIN.
        assert_eq!(echo.wait_ends(1), ["eof"]);
        assert!(until(Duration::from_secs(2), || proxy.counts().open == 2));
    }

    #[test]
    fn reset_all_resets_both_sides_then_pass_spares_new_ones() {
        let echo = Echo::start();
        let proxy = FaultProxy::start(echo.port).unwrap();
        let mut a = client(&proxy);
        let mut b = client(&proxy);
        round_trip(&mut a, b"a").unwrap();
        round_trip(&mut b, b"b").unwrap();
        proxy.set_mode(Mode::ResetAll);
        // Returned once both were reset: no connection is open, both ends saw RST.
        let counts = proxy.counts();
        assert_eq!((counts.open, counts.reset), (0, 2), "{counts:?}");
        assert_eq!(
            read_short(&mut a, Duration::from_secs(1)),
            Err(io::ErrorKind::ConnectionReset)
        );
        assert_eq!(
            read_short(&mut b, Duration::from_secs(1)),
            Err(io::ErrorKind::ConnectionReset)
        );
        assert_eq!(echo.wait_ends(2), ["reset", "reset"]);
        // While the mode holds, a new connection is reset at once.
        let mut c = client(&proxy);
        assert_eq!(
            read_short(&mut c, Duration::from_secs(1)),
            Err(io::ErrorKind::ConnectionReset)
        );
        proxy.set_mode(Mode::Pass);
        let mut d = client(&proxy);
        assert_eq!(round_trip(&mut d, b"d").unwrap(), b"d");
        let counts = proxy.counts();
        assert_eq!((counts.accepted, counts.open, counts.reset), (4, 1, 3));
    }

    #[test]
    fn refuse_new_resets_new_connections_only() {
        let echo = Echo::start();
        let proxy = FaultProxy::start(echo.port).unwrap();
        let mut old = client(&proxy);
        round_trip(&mut old, b"old").unwrap();
        proxy.set_mode(Mode::RefuseNew);
        let mut new = client(&proxy);
        let refused = round_trip(&mut new, b"new").unwrap_err();
        assert!(
            matches!(
                refused,
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{refused:?}"
        );
        // The old one keeps passing; the server never saw the new one.
        assert_eq!(round_trip(&mut old, b"still").unwrap(), b"still");
        assert_eq!(echo.accepted.load(SeqCst), 1);
        proxy.set_mode(Mode::Pass);
        let mut later = client(&proxy);
        assert_eq!(round_trip(&mut later, b"later").unwrap(), b"later");
        let counts = proxy.counts();
        assert_eq!((counts.accepted, counts.open, counts.reset), (3, 2, 1));
    }

    #[test]
    fn a_server_reset_reaches_the_client_as_a_reset() {
        // The target side resets: the proxy resets the client side too (not a FIN).
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let proxy = FaultProxy::start(listener.local_addr().unwrap().port()).unwrap();
        let mut c = client(&proxy);
        c.write_all(b"x").unwrap();
        let (server_side, _) = listener.accept().unwrap();
        rst_on_close(&server_side).unwrap();
        drop(server_side);
        assert_eq!(
            read_short(&mut c, Duration::from_secs(1)),
            Err(io::ErrorKind::ConnectionReset)
        );
        assert!(until(Duration::from_secs(2), || proxy.counts().open == 0));
    }

    #[test]
    fn a_refused_target_is_a_reset() {
        // A port nobody listens on.
        let port = crate::server::free_port();
        let proxy = FaultProxy::start(port).unwrap();
        let mut c = client(&proxy);
        assert_eq!(
            read_short(&mut c, Duration::from_secs(1)),
            Err(io::ErrorKind::ConnectionReset)
        );
        assert_eq!(proxy.counts().reset, 1);
    }

    /// Dropping the proxy stops every thread it started, with connections open in every
    /// state, and closes their sockets: both ends see the connection end.
    #[test]
    fn drop_stops_every_thread_and_closes_every_socket() {
        let echo = Echo::start();
        let proxy = FaultProxy::start(echo.port).unwrap();
        let mut passing = client(&proxy);
        round_trip(&mut passing, b"p").unwrap();
        proxy.set_mode(Mode::Latency(Duration::from_secs(60)));
        passing.write_all(b"in the pipe").unwrap();
        proxy.set_mode(Mode::Blackhole);
        let mut held = client(&proxy);
        assert!(until(Duration::from_secs(2), || proxy.counts().accepted == 2));
        let threads = Arc::downgrade(&proxy.shared);
        let started = Instant::now();
        drop(proxy);
        assert!(started.elapsed() < Duration::from_secs(1));
        // Every thread held the shared state: none is left.
        assert_eq!(
            threads.strong_count(),
            0,
            "a proxy thread outlived the drop"
        );
        for s in [&mut passing, &mut held] {
            let r = read_short(s, Duration::from_secs(1));
            assert!(
                matches!(r, Ok(0) | Err(io::ErrorKind::ConnectionReset)),
                "{r:?}"
            );
        }
        // The server saw its one connection end.
        assert_eq!(echo.wait_ends(1).len(), 1);
    }
}
