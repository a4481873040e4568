//! The UDP ports a process has open, from `/proc` (Linux only).
//!
//! A coordinator dials its peers from an ephemeral client port, and a `deploy-agent` dials the
//! coordinators from one too; the proxies in front of the other side see those ports as the
//! datagrams' source. Cutting a process's outgoing links therefore means dropping datagrams from
//! its ports, which this module finds: `/proc/<pid>/fd/*` links name `socket:[inode]`, and
//! `/proc/net/udp{,6}` map each inode to its local port.

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
    let mut table = BTreeMap::new();
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            // No IPv6 on this kernel: nothing to add.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ProcNetError::Read { path: file.into(), source }),
        };
        table.extend(parse_udp_table(&text));
    }
    Ok(inodes.iter().filter_map(|i| table.get(i).copied()).collect())
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

/// Parses `/proc/net/udp` (or `udp6`) into inode → local port.
pub fn parse_udp_table(text: &str) -> BTreeMap<u64, u16> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = f.get(1)?.rsplit_once(':')?.1;
            let port = u16::from_str_radix(port, 16).ok()?;
            let inode = f.get(9)?.parse().ok()?;
            Some((inode, port))
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
        let t = parse_udp_table(text);
        assert_eq!(t.get(&475443), Some(&0x88C5));
        assert_eq!(t.get(&475060), Some(&0xCD02));
        assert_eq!(t.len(), 2);
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
}
