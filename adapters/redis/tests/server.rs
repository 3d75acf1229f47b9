//! The test server harness itself: it starts, answers, counts and kills clients, restarts on
//! the same port, and is gone once dropped.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use gracepool_testkit::redis::{RedisServer, Reply};

#[test]
fn harness_counts_kills_and_restarts() {
    let Some(mut server) = RedisServer::start("harness_counts_kills_and_restarts") else {
        return;
    };
    assert_eq!(server.clients(), 0, "only the probe is connected");
    let mut a = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    let _b = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    a.write_all(b"PING\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(server.clients(), 2);
    assert_eq!(
        server.command_calls("ping"),
        2,
        "one from the start-up probe, one from `a`"
    );
    assert_eq!(server.kill_clients(), 2);
    assert_eq!(server.clients(), 0);

    let pid = server.pid().unwrap();
    let down = server.restart();
    assert_ne!(server.pid(), Some(pid), "a new process");
    assert!(down < Duration::from_secs(10), "restart took {down:?}");
    assert_eq!(server.call(&["PING"]), Reply::Status("PONG".into()));
    assert_eq!(
        server.command_calls("ping"),
        2,
        "counts start again after a restart"
    );

    let pid = server.pid().unwrap();
    let dir = server.dir().to_owned();
    drop(server);
    assert!(!dir.exists(), "its directory is removed");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the server process is gone"
    );
}

#[test]
fn harness_with_password() {
    let Some(server) = RedisServer::start_with_password("harness_with_password", "s3cret") else {
        return;
    };
    assert!(server.url().contains(":s3cret@"));
    assert_eq!(server.call(&["PING"]), Reply::Status("PONG".into()));
    let mut plain = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    plain.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut plain, &mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("-NOAUTH"),
        "without the password the server refuses"
    );
}
