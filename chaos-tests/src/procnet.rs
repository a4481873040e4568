//! The UDP ports a process has open, and which process holds a TCP connection, from `/proc`
//! (Linux only).
//!
//! A coordinator dials its peers from an ephemeral client port, and a `deploy-agent` dials the
//! coordinators from one too; the proxies in front of the other side see those ports as the
//! datagrams' source. Cutting a process's outgoing links therefore means dropping datagrams from
//! its ports, which this module finds: `/proc/<pid>/fd/*` links name `socket:[inode]`, and
//! `/proc/net/udp{,6}` map each inode to its local port.
//!
//! TCP connections get a new ephemeral port each, so the TCP proxy asks the other way round,
//! once per accepted connection: which of the processes it watches holds the socket with that
//! client port ([`tcp_owner`], from `/proc/net/tcp{,6}` and the same descriptor links).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Errors reading `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum ProcNetError {
    /// The process is gone, or `/proc` is not readable.
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
}

/// Local UDP ports (IPv4 and IPv6) of the sockets process `pid` holds.
pub fn udp_ports(pid: u32) -> Result<BTreeSet<u16>, ProcNetError> {
    let inodes = socket_inodes(pid)?;
    let table: BTreeMap<u64, u16> = read_tables(&["/proc/net/udp", "/proc/net/udp6"])?
        .into_iter()
        .map(|s| (s.inode, s.local_port))
        .collect();
    Ok(inodes.iter().filter_map(|i| table.get(i).copied()).collect())
}

/// Which of `pids` holds the TCP socket (IPv4 or IPv6) with local port `local_port` connected
/// to remote port `remote_port`: for a connection a proxy accepted on its port `remote_port`
/// from loopback port `local_port`, the process that dialled. `None` if none of them does (the
/// connection may be gone already). A process that exited meanwhile is skipped.
pub fn tcp_owner(
    pids: &BTreeSet<u32>,
    local_port: u16,
    remote_port: u16,
) -> Result<Option<u32>, ProcNetError> {
    let inodes: BTreeSet<u64> = read_tables(&["/proc/net/tcp", "/proc/net/tcp6"])?
        .into_iter()
        // Inode 0: a socket no descriptor holds any more (TIME_WAIT).
        .filter(|r| r.local_port == local_port && r.remote_port == remote_port && r.inode != 0)
        .map(|r| r.inode)
        .collect();
    if inodes.is_empty() {
        return Ok(None);
    }
    for &pid in pids {
        if socket_inodes(pid).is_ok_and(|held| !held.is_disjoint(&inodes)) {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}

/// One row of a kernel socket table (`/proc/net/{udp,tcp}{,6}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketRow {
    pub local_port: u16,
    pub remote_port: u16,
    pub inode: u64,
}

/// The rows of every table in `files` (one missing, such as IPv6 on a kernel without it, adds
/// nothing).
fn read_tables(files: &[&str]) -> Result<Vec<SocketRow>, ProcNetError> {
    let mut rows = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ProcNetError::Read { path: file.to_string(), source }),
        };
        rows.extend(parse_socket_table(&text));
    }
    Ok(rows)
}

/// Inodes of the sockets among process `pid`'s file descriptors.
fn socket_inodes(pid: u32) -> Result<BTreeSet<u64>, ProcNetError> {
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir)
        .map_err(|source| ProcNetError::Read { path: dir.clone(), source })?;
    let mut inodes = BTreeSet::new();
    for entry in entries.flatten() {
        // A descriptor closed since the listing: skip it.
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        if let Some(inode) = socket_inode(&target) {
            inodes.insert(inode);
        }
    }
    Ok(inodes)
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Parses a kernel socket table (`/proc/net/udp`, `tcp`, or their `6` forms: the same columns)
/// into its rows.
pub fn parse_socket_table(text: &str) -> Vec<SocketRow> {
    let port = |addr: &str| u16::from_str_radix(addr.rsplit_once(':')?.1, 16).ok();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(SocketRow {
                local_port: port(f.get(1)?)?,
                remote_port: port(f.get(2)?)?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_table() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
             1022: 00000000:88C5 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 475443 2 00000000bbc8bb58 0\n\
             2107: 0100007F:CD02 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 475060 2 0000000029e826c8 0\n";
        let t = parse_socket_table(text);
        assert_eq!(
            t,
            [
                SocketRow { local_port: 0x88C5, remote_port: 0, inode: 475443 },
                SocketRow { local_port: 0xCD02, remote_port: 0, inode: 475060 },
            ]
        );
        assert_eq!(socket_inode(Path::new("socket:[42]")), Some(42));
        assert_eq!(socket_inode(Path::new("pipe:[42]")), None);
    }

    #[test]
    fn finds_this_process_sockets_and_only_those() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("[::1]:0").ok();
        let ports = udp_ports(std::process::id()).unwrap();
        assert!(ports.contains(&a.local_addr().unwrap().port()), "{ports:?}");
        if let Some(b) = &b {
            assert!(ports.contains(&b.local_addr().unwrap().port()), "{ports:?}");
        }
        let port = a.local_addr().unwrap().port();
        drop(a);
        assert!(!udp_ports(std::process::id()).unwrap().contains(&port));
        assert!(udp_ports(u32::MAX).is_err(), "no such process");
    }

    #[test]
    fn finds_which_process_holds_a_tcp_connection() {
        let me = std::process::id();
        let gone = u32::MAX;
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            // No IPv6 on this machine: nothing to check there.
            let Ok(listener) = std::net::TcpListener::bind(bind) else { continue };
            let server_port = listener.local_addr().unwrap().port();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (accepted, _) = listener.accept().unwrap();
            let client_port = client.local_addr().unwrap().port();
            let watched: BTreeSet<u32> = [gone, me].into();
            assert_eq!(tcp_owner(&watched, client_port, server_port).unwrap(), Some(me), "{bind}");
            // The accepted end is the one with the ports the other way round.
            assert_eq!(tcp_owner(&watched, server_port, client_port).unwrap(), Some(me));
            assert_eq!(tcp_owner(&[gone].into(), client_port, server_port).unwrap(), None);
            assert_eq!(tcp_owner(&watched, client_port, server_port ^ 1).unwrap(), None);
            drop((client, accepted));
            assert_eq!(tcp_owner(&watched, client_port, server_port).unwrap(), None, "closed");
        }
    }
}
