//! What the tests read about a service process from outside, in `/proc`.
#![allow(dead_code)] // each test file uses its part

use std::collections::{BTreeMap, BTreeSet};

/// How many tokio runtimes (for actix, arbiters: one thread each) hold the process's
/// connections to PostgreSQL's `port`, read from outside: every established socket to that
/// port is registered with the epoll instance of the runtime whose task owns it (a
/// tokio-postgres driver), and `/proc/<pid>/fdinfo` of an epoll descriptor lists the
/// descriptors registered with it. One instance may have several descriptors (mio duplicates
/// its own), all listing the same: an instance is told by that list. Also returns how many
/// such sockets there are.
pub fn runtimes_holding_pg_sockets(pid: u32, port: u16) -> (usize, usize) {
    // The inodes of the sockets connected to `port` (state 01: established).
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    let inodes: BTreeSet<u64> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = u16::from_str_radix(f.get(2)?.rsplit(':').next()?, 16).ok()?;
            (remote_port == port && f.get(3)? == &"01").then(|| f.get(9)?.parse().ok())?
        })
        .collect();
    // The process's descriptors: which are those sockets, which are epoll instances.
    let mut socket_fds = BTreeSet::new();
    let mut epoll_fds = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok())
        {
            if inodes.contains(&inode) {
                socket_fds.insert(fd);
            }
        } else if target == "anon_inode:[eventpoll]" {
            epoll_fds.push(fd);
        }
    }
    let mut instances = BTreeSet::new();
    for epoll in epoll_fds {
        let info =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{epoll}")).unwrap_or_default();
        let registered: BTreeSet<u32> = info
            .lines()
            .filter_map(|line| {
                line.strip_prefix("tfd:")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        if !registered.is_disjoint(&socket_fds) {
            instances.insert(registered);
        }
    }
    (instances.len(), socket_fds.len())
}

/// One thread's name and CPU time, user and system, in clock ticks (1/100 s on Linux).
#[derive(Debug, Clone, Default)]
pub struct ThreadCpu {
    pub name: String,
    pub ticks: u64,
}

/// Every thread of `pid`, by thread id.
pub fn threads(pid: u32) -> BTreeMap<u32, ThreadCpu> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The name is in parentheses and may hold spaces: the other fields follow the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime and stime are the 14th and 15th fields; the 3rd is the first after the name.
        let field =
            |n: usize| -> u64 { fields.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
        out.insert(
            tid,
            ThreadCpu {
                name: stat[open + 1..close].to_string(),
                ticks: field(14) + field(15),
            },
        );
    }
    out
}
