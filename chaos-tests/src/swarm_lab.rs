//! The blob swarm in the lab: every agent runs a `tt-blob/1` node (`swarm_listen`, a
//! certificate from the cluster CA) behind a fault proxy of its own, and advertises the proxy
//! (`swarm_advertise`), so the tracker hands the proxy to its peers and every agent ↔ agent
//! link goes through one (link class `swarm`). Bad peers ([`crate::badpeer`]) sit behind a
//! proxy the same way. The coordinators run the origin, each behind a proxy it advertises
//! (`--swarm-addr`, `--swarm-advertise`), shared by the agents like the agent port's: agent
//! link quality and agent cuts apply there too.
//!
//! After a run, [`SwarmReport`] says what the swarm did: per honest host the bytes it received
//! from peers and from the origin, what it sent, the bad responses it saw and the peers it
//! banned; per bad peer what it served and who banned it. A bad peer nobody asked did not
//! fire, and the report says so.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use p2p_transfer::tls::ClusterCa;
use serde::{Deserialize, Serialize};

use crate::badpeer::{BadPeerMode, BadPeerProcess, BadPeerStats};
use crate::history::ProgressSample;
use crate::proxy::{LinkFaults, Proxy, ProxyStats};

/// Where an agent's or bad peer's certificate lives, under its root.
pub const SWARM_TLS_DIR: &str = "swarm-tls";

/// Errors setting the swarm up.
#[derive(Debug, thiserror::Error)]
pub enum SwarmLabError {
    #[error("swarm certificates: {0}")]
    Tls(#[from] p2p_transfer::tls::TlsError),
    #[error("{what}: {message}")]
    Setup { what: String, message: String },
}

/// Issues a certificate for `name` from the cluster CA into `<root>/swarm-tls`.
pub fn issue_tls(ca: &ClusterCa, root: &Path, name: &str) -> Result<PathBuf, SwarmLabError> {
    let dir = root.join(SWARM_TLS_DIR);
    let cert = p2p_transfer::tls::issue_node_cert(ca, name, &["127.0.0.1".to_owned()])?;
    cert.write(&dir)?;
    ca.write_cert(&dir)?;
    Ok(dir)
}

/// A loopback address for a swarm node to bind, and the proxy in front of it (seeded).
pub async fn listen_behind_proxy(seed: u64) -> Result<(SocketAddr, Proxy), SwarmLabError> {
    let port = ops::devcluster::free_udp_port().map_err(|e| SwarmLabError::Setup {
        what: "picking a swarm port".into(),
        message: format!("{e:#}"),
    })?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let proxy =
        Proxy::start(SocketAddr::from(([127, 0, 0, 1], 0)), listen, seed).await.map_err(|e| {
            SwarmLabError::Setup { what: "starting a swarm proxy".into(), message: e.to_string() }
        })?;
    Ok((listen, proxy))
}

/// The agent config lines that run the swarm behind `proxy`.
pub fn agent_config(listen: SocketAddr, proxy: &Proxy, tls_dir: &Path) -> String {
    let tls = serde_json::to_string(&tls_dir.display().to_string()).expect("strings serialize");
    format!(
        "swarm_listen = \"{listen}\"\nswarm_advertise = \"{}\"\nswarm_tls_dir = {tls}\n",
        proxy.addr()
    )
}

/// An agent's swarm counters (`agent::swarm::STATS_FILE`), as far as the lab reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentSwarmStats {
    pub uploaded_bytes: u64,
    pub downloaded_bytes: u64,
    pub downloaded_from_origin_bytes: u64,
    pub bad_responses: u64,
    pub swarm_downloads: u64,
    pub fallbacks: u64,
    pub prefetches: u64,
    pub banned_peers: Vec<String>,
}

/// Reads an agent's stats file (all zero if it has none yet).
pub fn read_agent_stats(agent_root: &Path) -> AgentSwarmStats {
    let path = agent_root.join("agent").join(agent::swarm::STATS_FILE);
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// One honest host's part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSwarm {
    pub host: String,
    /// What the tracker hands out for it.
    pub advertise: String,
    pub stats: AgentSwarmStats,
}

impl HostSwarm {
    pub fn from_peers_bytes(&self) -> u64 {
        self.stats.downloaded_bytes.saturating_sub(self.stats.downloaded_from_origin_bytes)
    }
}

/// One bad peer's part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadPeerReport {
    pub mode: BadPeerMode,
    pub advertise: String,
    pub stats: BadPeerStats,
    /// Honest hosts that banned it.
    pub banned_by: Vec<String>,
}

impl BadPeerReport {
    /// Whether the fault did something: a corrupting peer was banned by an honest host, a
    /// crawling one was asked for data (its cap held an upload back).
    pub fn fired(&self) -> bool {
        if self.mode.corrupts() {
            !self.banned_by.is_empty()
        } else {
            self.stats.upload_throttle_waits > 0
        }
    }
}

/// The longest a host sat in DOWNLOADING on one deploy, as the progress samples saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowestDownload {
    pub host: String,
    pub deploy: String,
    pub ms: u64,
}

/// The longest DOWNLOADING step in `progress`: from the first sample showing a host in
/// DOWNLOADING on a deploy to the first later one showing it elsewhere (or the last sample).
pub fn slowest_download(progress: &[ProgressSample]) -> Option<SlowestDownload> {
    let mut since: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut spans: Vec<SlowestDownload> = Vec::new();
    let end_us = progress.last().map_or(0, |s| s.t_us);
    for sample in progress {
        for row in &sample.rows {
            let Some(deploy) = &row.deploy else { continue };
            let key = (row.host.clone(), deploy.clone());
            if row.step == "DOWNLOADING" {
                since.entry(key).or_insert(sample.t_us);
            } else if let Some(start) = since.remove(&key) {
                let ms = (sample.t_us - start) / 1000;
                spans.push(SlowestDownload { host: key.0, deploy: key.1, ms });
            }
        }
    }
    for ((host, deploy), start) in since {
        spans.push(SlowestDownload { host, deploy, ms: (end_us - start) / 1000 });
    }
    spans.into_iter().max_by_key(|s| s.ms)
}

/// What the swarm did in a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmReport {
    pub hosts: Vec<HostSwarm>,
    pub bad_peers: Vec<BadPeerReport>,
    /// The longest DOWNLOADING step of the run (a stalled swarm shows here).
    #[serde(default)]
    pub slowest_download: Option<SlowestDownload>,
    /// The proxies in front of the coordinators' blob origins (agents reach them only there).
    #[serde(default)]
    pub origin_links: ProxyStats,
}

impl SwarmReport {
    /// From the honest hosts (name, advertised address, root) and the bad peers.
    pub fn collect<'a>(
        hosts: impl Iterator<Item = (String, String, &'a Path)>,
        bad_peers: impl Iterator<Item = &'a BadPeerProcess>,
    ) -> SwarmReport {
        let hosts: Vec<HostSwarm> = hosts
            .map(|(host, advertise, root)| HostSwarm {
                host,
                advertise,
                stats: read_agent_stats(root),
            })
            .collect();
        let bad_peers = bad_peers
            .map(|p| {
                let advertise = p.advertise.to_string();
                let banned_by = hosts
                    .iter()
                    .filter(|h| h.stats.banned_peers.contains(&advertise))
                    .map(|h| h.host.clone())
                    .collect();
                BadPeerReport { mode: p.mode, advertise, stats: p.stats(), banned_by }
            })
            .collect();
        SwarmReport {
            hosts,
            bad_peers,
            slowest_download: None,
            origin_links: ProxyStats::default(),
        }
    }

    /// Bytes honest hosts received from peers (not the origin), in total.
    pub fn from_peers_bytes(&self) -> u64 {
        self.hosts.iter().map(HostSwarm::from_peers_bytes).sum()
    }

    /// Bytes honest hosts sent each other.
    pub fn honest_uploaded_bytes(&self) -> u64 {
        self.hosts.iter().map(|h| h.stats.uploaded_bytes).sum()
    }

    /// The summary's lines.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let origin: u64 = self.hosts.iter().map(|h| h.stats.downloaded_from_origin_bytes).sum();
        let bad: u64 = self.hosts.iter().map(|h| h.stats.bad_responses).sum();
        let fetched: u64 = self.hosts.iter().map(|h| h.stats.swarm_downloads).sum();
        let fallbacks: u64 = self.hosts.iter().map(|h| h.stats.fallbacks).sum();
        let _ = writeln!(
            s,
            "swarm: honest hosts received {} from peers and {} from the origin, sent each other {}; {fetched} builds fetched through the swarm, {fallbacks} read from the coordinators instead; {bad} bad responses; origin links: {} datagrams to the origins' proxies, {} back, {} dropped by cuts",
            human_bytes(self.from_peers_bytes()),
            human_bytes(origin),
            human_bytes(self.honest_uploaded_bytes()),
            self.origin_links.to_upstream,
            self.origin_links.to_client,
            self.origin_links.dropped_blocked_port,
        );
        if let Some(d) = &self.slowest_download {
            let _ = writeln!(
                s,
                "  longest DOWNLOADING step: {:.1} s ({} on {})",
                d.ms as f64 / 1e3,
                d.host,
                d.deploy
            );
        }
        for p in &self.bad_peers {
            let fired = if p.fired() {
                String::new()
            } else {
                " — never fired (no honest host was hurt by it: the fault was not exercised)"
                    .to_string()
            };
            let banned = if p.banned_by.is_empty() {
                "banned by nobody".to_string()
            } else {
                format!("banned by {}", p.banned_by.join(", "))
            };
            let _ = writeln!(
                s,
                "  bad peer {} at {}: {} pieces served, {} sent, {} uploads held back by its cap, {banned}{fired}",
                p.mode.label(),
                p.advertise,
                p.stats.pieces_served,
                human_bytes(p.stats.uploaded_bytes),
                p.stats.upload_throttle_waits,
            );
        }
        s
    }
}

/// `bytes` in KiB below a MiB, else in MiB.
fn human_bytes(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if bytes < MIB {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

/// Applies the `swarm` link quality to every proxy in front of a swarm node.
pub fn apply_quality<'a>(
    proxies: impl Iterator<Item = &'a Proxy>,
    quality: &LinkFaults,
) -> Result<(), crate::proxy::ProxyError> {
    for p in proxies {
        p.set_faults(quality.clone())?;
    }
    Ok(())
}

/// Sums the counters of the swarm proxies.
pub fn stats<'a>(proxies: impl Iterator<Item = &'a Proxy>) -> ProxyStats {
    let mut out = ProxyStats::default();
    for p in proxies {
        out.add(&p.stats());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, banned: &[&str], from_origin: u64) -> HostSwarm {
        HostSwarm {
            host: name.into(),
            advertise: format!("{name}:1"),
            stats: AgentSwarmStats {
                downloaded_bytes: 1000,
                downloaded_from_origin_bytes: from_origin,
                uploaded_bytes: 1000 - from_origin,
                banned_peers: banned.iter().map(|b| b.to_string()).collect(),
                ..AgentSwarmStats::default()
            },
        }
    }

    fn bad(mode: BadPeerMode, addr: &str, banned_by: &[&str], waits: u64) -> BadPeerReport {
        BadPeerReport {
            mode,
            advertise: addr.into(),
            stats: BadPeerStats { upload_throttle_waits: waits, ..BadPeerStats::default() },
            banned_by: banned_by.iter().map(|b| b.to_string()).collect(),
        }
    }

    #[test]
    fn a_bad_peer_fired_only_if_an_honest_host_banned_it_or_it_was_asked() {
        assert!(bad(BadPeerMode::FlipByte, "b:1", &["host-1"], 0).fired());
        assert!(!bad(BadPeerMode::FlipByte, "b:1", &[], 5).fired(), "asked but never banned");
        assert!(bad(BadPeerMode::Crawl, "c:1", &[], 3).fired());
        assert!(!bad(BadPeerMode::Crawl, "c:1", &[], 0).fired());
        let report = SwarmReport {
            hosts: vec![host("host-1", &["b:1"], 400), host("host-2", &[], 1000)],
            bad_peers: vec![
                bad(BadPeerMode::FlipByte, "b:1", &["host-1"], 0),
                bad(BadPeerMode::LieAboutPieces, "l:1", &[], 0),
            ],
            slowest_download: None,
            origin_links: ProxyStats { to_upstream: 7, ..Default::default() },
        };
        assert_eq!(report.from_peers_bytes(), 600);
        assert_eq!(report.honest_uploaded_bytes(), 600);
        let text = report.summary();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("origin links: 7 datagrams"), "{text}");
        assert!(lines[1].contains("flip-byte") && lines[1].contains("banned by host-1"), "{text}");
        assert!(!lines[1].contains("never fired"), "{text}");
        assert!(
            lines[2].contains("lie-about-pieces") && lines[2].contains("never fired"),
            "{text}"
        );
    }
}

#[cfg(test)]
mod download_tests {
    use super::*;
    use crate::history::HostRow;

    fn sample(t_ms: u64, rows: &[(&str, &str)]) -> ProgressSample {
        let rows = rows
            .iter()
            .map(|(host, step)| HostRow {
                host: host.to_string(),
                deploy: Some("d2".into()),
                step: step.to_string(),
                state: "NORMAL".into(),
                status: "UNKNOWN".into(),
            })
            .collect();
        ProgressSample { t_us: t_ms * 1000, rows }
    }

    #[test]
    fn the_slowest_download_spans_from_its_first_sample_to_the_next_step() {
        let progress = [
            sample(0, &[("h1", "PRE_DOWNLOAD"), ("h2", "DOWNLOADING")]),
            sample(100, &[("h1", "DOWNLOADING"), ("h2", "DOWNLOADING")]),
            sample(400, &[("h1", "POST_DOWNLOAD"), ("h2", "DOWNLOADING")]),
            sample(900, &[("h1", "RESTARTING"), ("h2", "POST_DOWNLOAD")]),
        ];
        let slowest = slowest_download(&progress).unwrap();
        assert_eq!(slowest, SlowestDownload { host: "h2".into(), deploy: "d2".into(), ms: 900 });
        // One still downloading at the end counts until the last sample.
        let stuck = slowest_download(&progress[..3]).unwrap();
        assert_eq!((stuck.host.as_str(), stuck.ms), ("h2", 400));
        assert_eq!(slowest_download(&progress[..1]).unwrap().ms, 0);
        assert!(slowest_download(&[]).is_none());
    }
}
