//! A real packet drop on 127.0.0.1, for tests of what a partition does to TCP itself: an
//! nftables table, made for one port and removed when its guard drops.
//!
//! ```no_run
//! use gracepool_testkit::netfilter::PacketDrop;
//!
//! # let server_port = 5432;
//! let Some(partition) = PacketDrop::start("my_test", server_port) else { return }; // SKIPPED
//! // ... nothing to or from 127.0.0.1:server_port gets through: connects time out, sent data is
//! // never acknowledged, keepalives go unanswered ...
//! drop(partition); // healed: TCP retransmits what was lost
//! ```
//!
//! Unlike [`crate::fault::FaultProxy`], which is an endpoint and so acknowledges what it is
//! sent, a dropped packet is what the kernel sees in a real partition: a client's
//! `TCP_USER_TIMEOUT`, keepalives and connect timeout all come into play.
//!
//! Each guard is a table of its own, `inet gracepool_<pid>_<n>`, with one chain on the `output`
//! hook (loopback traffic passes `output` on its way out, whichever end sends it) and two rules
//! for packets between 127.0.0.1 and 127.0.0.1: `tcp dport P drop` (towards the port) and
//! `tcp sport P drop` (from it). Nothing else on the machine is touched. A test process killed
//! before its guard dropped leaves its table behind; every [`PacketDrop::start`] first removes
//! the tables of processes that are gone ([`reap_stale`]).
//!
//! Needs root (nftables needs `CAP_NET_ADMIN`) and the `nft` binary (Debian package
//! `nftables`). Without either, [`PacketDrop::start`] prints one `SKIPPED <test>: ...` line and
//! returns `None`; under `CI=true` it panics instead.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::server::{require_binary, under_ci};

/// The start of every table's name: `gracepool_<pid>_<n>`.
const TABLE_PREFIX: &str = "gracepool_";

/// Where Debian puts `nft` (often not on a user's `PATH`).
const NFT_DIRS: &[&str] = &["/usr/sbin", "/sbin"];

/// Packets to and from a port on 127.0.0.1 dropped while this guard lives. Dropping it removes
/// the rules (the whole table).
#[derive(Debug)]
pub struct PacketDrop {
    nft: std::path::PathBuf,
    table: String,
    port: u16,
}

impl PacketDrop {
    /// Drops every TCP packet to or from `127.0.0.1:port` until the guard drops. Returns `None`
    /// after printing one `SKIPPED <test>: ...` line when `nft` is missing or the test is not
    /// root (or nftables is not permitted here); panics instead under `CI=true`, and when `nft`
    /// fails otherwise.
    pub fn start(test: &str, port: u16) -> Option<PacketDrop> {
        let nft = nft(test)?;
        reap_stale_with(&nft);
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let table = format!(
            "{TABLE_PREFIX}{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        );
        // One script, applied atomically: the table exists whole or not at all.
        let script = format!(
            "table inet {table} {{\n\
             \tchain out {{\n\
             \t\ttype filter hook output priority 0; policy accept;\n\
             \t\tip saddr 127.0.0.1 ip daddr 127.0.0.1 tcp dport {port} drop\n\
             \t\tip saddr 127.0.0.1 ip daddr 127.0.0.1 tcp sport {port} drop\n\
             \t}}\n\
             }}\n"
        );
        match run_nft(&nft, &["-f", "-"], Some(&script)) {
            Ok(_) => Some(PacketDrop { nft, table, port }),
            Err(e) if e.contains("Operation not permitted") => {
                skip(
                    test,
                    &format!("nftables is not permitted here ({})", e.trim()),
                );
                None
            }
            Err(e) => panic!("{test}: nft refused the packet drop rules: {e}\n{script}"),
        }
    }

    /// The port whose packets are dropped.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The nftables table holding the rules (`inet gracepool_<pid>_<n>`).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Removes the rules now: the partition heals. The same as dropping the guard.
    pub fn heal(self) {}
}

impl Drop for PacketDrop {
    fn drop(&mut self) {
        if let Err(e) = run_nft(&self.nft, &["delete", "table", "inet", &self.table], None) {
            // Not a panic in a drop; the next start reaps it once this process is gone.
            let _ = writeln!(
                std::io::stderr(),
                "netfilter: could not remove table inet {}: {e}",
                self.table
            );
        }
    }
}

/// Whether packet drops can be made here: `nft` installed and the test root. Prints the
/// `SKIPPED <test>: ...` line when not (panics under `CI=true`), so a test can ask before it
/// starts its servers.
pub fn available(test: &str) -> bool {
    nft(test).is_some()
}

/// Removes the tables (`inet gracepool_<pid>_<n>`) of test processes that are gone, and
/// returns how many. Every [`PacketDrop::start`] runs it first. Does nothing without `nft`
/// or root.
pub fn reap_stale() -> usize {
    match find_nft() {
        Some(nft) if is_root() => reap_stale_with(&nft),
        _ => 0,
    }
}

fn reap_stale_with(nft: &std::path::Path) -> usize {
    let Ok(listing) = run_nft(nft, &["list", "tables"], None) else {
        return 0;
    };
    stale_tables(&listing, alive)
        .into_iter()
        .filter(|table| run_nft(nft, &["delete", "table", "inet", table], None).is_ok())
        .count()
}

/// The tables in `nft list tables` output whose owner pid `is_alive` says is gone.
fn stale_tables(listing: &str, is_alive: impl Fn(u32) -> bool) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| line.trim().strip_prefix("table inet "))
        .filter(|name| {
            name.strip_prefix(TABLE_PREFIX)
                .and_then(|rest| rest.split('_').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !is_alive(pid))
        })
        .map(str::to_owned)
        .collect()
}

fn find_nft() -> Option<std::path::PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    NFT_DIRS
        .iter()
        .map(std::path::PathBuf::from)
        .chain(on_path)
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
}

/// `nft`, if it is installed and this process is root; else the SKIPPED line (or the panic
/// under CI) and `None`.
fn nft(test: &str) -> Option<std::path::PathBuf> {
    let nft = require_binary("nft", NFT_DIRS, "nftables", test)?;
    if !is_root() {
        skip(
            test,
            "not running as root (nftables rules need CAP_NET_ADMIN)",
        );
        return None;
    }
    Some(nft)
}

fn skip(test: &str, why: &str) {
    assert!(
        !under_ci(),
        "{test}: cannot drop packets: {why}; CI=true, so this is a failure, not a skip"
    );
    // Straight to stdout, past the test harness's capture: a skip must be seen.
    let _ = writeln!(std::io::stdout(), "SKIPPED {test}: {why}");
}

/// Runs `nft` with `args` (and `stdin`), returning its stdout, or its stderr on failure.
fn run_nft(nft: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(nft)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", nft.display()))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("cannot write to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("nft did not finish: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "nft {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Whether the effective uid is 0, from `/proc/self/status` (`Uid: real effective ...`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name, which is in parentheses.
            let after = &stat[stat.rfind(')')? + 1..];
            after.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    /// Bounded: a connect into dropped packets must not take longer than this to be seen
    /// failing.
    const PATIENCE: Duration = Duration::from_millis(300);

    #[test]
    fn stale_tables_are_those_of_dead_pids() {
        let listing = "table inet gracepool_100_0\n\
                       table inet gracepool_200_3\n\
                       table inet filter\n\
                       table ip gracepool_100_1\n\
                       table inet gracepool_x_1\n";
        assert_eq!(stale_tables(listing, |pid| pid == 200), ["gracepool_100_0"]);
        assert!(stale_tables(listing, |_| true).is_empty());
    }

    #[test]
    fn a_dropped_port_times_out_while_the_guard_lives() {
        let test = "testkit::netfilter::a_dropped_port_times_out_while_the_guard_lives";
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        // An established connection, to see data stop and start again.
        let mut before = TcpStream::connect(addr).unwrap();
        let (mut served, _) = listener.accept().unwrap();
        let Some(partition) = PacketDrop::start(test, addr.port()) else {
            return;
        };
        assert_eq!(partition.port(), addr.port());
        let listed = run_nft(
            &partition.nft,
            &["list", "table", "inet", partition.table()],
            None,
        )
        .unwrap();
        assert!(
            listed.contains(&format!("tcp dport {}", addr.port())),
            "{listed}"
        );
        assert!(
            listed.contains(&format!("tcp sport {}", addr.port())),
            "{listed}"
        );

        let started = Instant::now();
        let refused = TcpStream::connect_timeout(&addr, PATIENCE).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::TimedOut, "{refused}");
        assert!(started.elapsed() < PATIENCE * 3);
        // Sent, but not delivered.
        before.write_all(b"held").unwrap();
        served.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut buf = [0u8; 4];
        let silent = served.read(&mut buf).unwrap_err();
        assert!(
            matches!(
                silent.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{silent}"
        );

        // Nor the other way.
        served.write_all(b"back").unwrap();
        before.set_read_timeout(Some(PATIENCE)).unwrap();
        let silent = before.read(&mut buf).unwrap_err();
        assert!(
            matches!(
                silent.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{silent}"
        );

        partition.heal();
        let after = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
        assert!(after.is_ok(), "{after:?}");
        // TCP retransmits what was dropped (the first retransmission comes within ~1 s).
        served
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        served.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"held");
        before
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        before.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"back");
    }

    #[test]
    fn other_ports_are_untouched() {
        let test = "testkit::netfilter::other_ports_are_untouched";
        let dropped = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let open = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let Some(_partition) = PacketDrop::start(test, dropped.local_addr().unwrap().port()) else {
            return;
        };
        let ok = TcpStream::connect_timeout(&open.local_addr().unwrap(), Duration::from_secs(2));
        assert!(ok.is_ok(), "{ok:?}");
    }

    const ORPHAN_CHILD: &str = "GRACEPOOL_TESTKIT_NFT_ORPHAN_CHILD";

    /// A test process that dies without dropping its guard leaves its table; the next start
    /// (or `reap_stale`) removes it.
    #[test]
    fn tables_of_dead_test_processes_are_reaped() {
        let test = "testkit::netfilter::tables_of_dead_test_processes_are_reaped";
        if std::env::var_os(ORPHAN_CHILD).is_some() {
            let guard = PacketDrop::start(test, 9).expect("the parent checked nft");
            println!("orphan {}", guard.table());
            std::process::exit(0); // no Drop: the table is left behind
        }
        if !available(test) {
            return;
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "netfilter::tests::tables_of_dead_test_processes_are_reaped",
                "--nocapture",
            ])
            .env(ORPHAN_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let table = stdout
            .lines()
            .find_map(|l| l.split_once("orphan ").map(|(_, t)| t.trim().to_owned()))
            .unwrap_or_else(|| {
                panic!(
                    "the child made no table:\n{stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let nft = find_nft().unwrap();
        let tables = || run_nft(&nft, &["list", "tables"], None).unwrap();
        assert!(tables().contains(&table), "the orphan's table outlived it");
        assert!(reap_stale() >= 1);
        assert!(!tables().contains(&table), "the orphan's table was removed");
    }
}
