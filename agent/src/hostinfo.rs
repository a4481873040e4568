//! Host identity: flags and config win over the `host_info` file (`k=v` lines, Teletraan's
//! keys), which wins over the system (hostname, its address). Groups are a list (Teletraan split
//! a `-g` string into characters: quirk 2); the availability zone is optional (Teletraan refused
//! to ping without one: quirk 1).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use proto::ids::HostId;
use proto::ping::PingRequestBean;

/// The identity file's name inside the agent directory.
pub const HOST_INFO_FILE: &str = "host_info";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostInfo {
    pub host_id: String,
    pub hostname: String,
    pub ip: Option<String>,
    pub groups: BTreeSet<String>,
    pub availability_zone: Option<String>,
    pub autoscaling_group: Option<String>,
    /// The host's tags (Teletraan's agents report their EC2 tags), sent as `ec2Tags`: deploy
    /// constraints group hosts by one of them.
    pub tags: BTreeMap<String, String>,
}

/// What the operator set explicitly (flags or config); unset fields fall back.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub host_id: Option<String>,
    pub hostname: Option<String>,
    pub ip: Option<String>,
    pub groups: Vec<String>,
    pub availability_zone: Option<String>,
    pub tags: BTreeMap<String, String>,
}

fn strip(s: &str) -> &str {
    s.trim_matches(|c| matches!(c, '"' | '\'' | ' ' | '\n' | '\r' | '\t'))
}

/// Parses `k=v` lines (first `=` splits; quotes and blanks around are stripped).
pub fn parse_kv(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let (k, v) = line.split_once('=')?;
            Some((strip(k).to_string(), strip(v).to_string()))
        })
        .collect()
}

impl HostInfo {
    /// Resolves the identity from overrides, then `<agent_dir>/host_info`, then the system.
    pub fn resolve(agent_dir: &Path, o: &Overrides) -> Self {
        let file = std::fs::read_to_string(agent_dir.join(HOST_INFO_FILE)).unwrap_or_default();
        let kv = parse_kv(&file);
        let get = |key: &str| {
            kv.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        let hostname = o
            .hostname
            .clone()
            .or_else(|| get("hostname"))
            .or_else(system_hostname)
            .unwrap_or_else(|| "localhost".into());
        let host_id = o.host_id.clone().or_else(|| get("id")).unwrap_or_else(|| hostname.clone());
        let ip = o.ip.clone().or_else(|| get("ip")).or_else(|| resolve_ip(&hostname));
        let groups: BTreeSet<String> = if o.groups.is_empty() {
            get("groups")
                .map(|g| {
                    g.split(',').map(strip).filter(|s| !s.is_empty()).map(String::from).collect()
                })
                .unwrap_or_default()
        } else {
            o.groups
                .iter()
                .flat_map(|g| g.split(','))
                .map(strip)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        Self {
            host_id,
            hostname,
            ip,
            groups,
            availability_zone: o.availability_zone.clone().or_else(|| get("availability-zone")),
            autoscaling_group: get("autoscaling-group"),
            tags: o.tags.clone(),
        }
    }

    /// An empty ping request carrying this identity.
    pub fn ping_request(&self) -> PingRequestBean {
        let mut req = PingRequestBean::new(HostId::new(self.host_id.clone()));
        req.host_name = Some(self.hostname.clone());
        req.host_ip = self.ip.clone();
        req.groups = self.groups.clone();
        req.availability_zone = self.availability_zone.clone();
        req.autoscaling_group = self.autoscaling_group.clone();
        if !self.tags.is_empty() {
            req.ec2_tags =
                Some(serde_json::to_string(&self.tags).expect("a string map serializes"));
        }
        req.agent_version = Some(env!("CARGO_PKG_VERSION").to_string());
        req
    }
}

/// The kernel's host name (what `hostname` prints).
fn system_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

fn resolve_ip(hostname: &str) -> Option<String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = (hostname, 0).to_socket_addrs().ok()?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4() && !a.ip().is_loopback())
        .or_else(|| addrs.first())
        .map(|a| a.ip().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_which_beats_the_system() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(HOST_INFO_FILE),
            "hostname=web-1\nid = \"i-0abc\"\nip=10.1.2.3\ngroups=web, web-prod\n",
        )
        .unwrap();
        let h = HostInfo::resolve(dir.path(), &Overrides::default());
        assert_eq!(h.hostname, "web-1");
        assert_eq!(h.host_id, "i-0abc");
        assert_eq!(h.ip.as_deref(), Some("10.1.2.3"));
        assert_eq!(h.groups, ["web", "web-prod"].iter().map(|s| s.to_string()).collect());
        assert_eq!(h.availability_zone, None, "optional");

        let o = Overrides {
            hostname: Some("web-2".into()),
            groups: vec!["canary".into(), "a,b".into()],
            ..Default::default()
        };
        let h = HostInfo::resolve(dir.path(), &o);
        assert_eq!(h.ping_request().ec2_tags, None, "no tags, no ec2Tags");
        assert_eq!(h.hostname, "web-2");
        assert_eq!(h.host_id, "i-0abc", "id still from the file");
        assert_eq!(h.groups.len(), 3, "groups are names, not characters: {:?}", h.groups);

        let empty = tempfile::tempdir().unwrap();
        let h = HostInfo::resolve(empty.path(), &Overrides::default());
        assert!(!h.hostname.is_empty());
        assert_eq!(h.host_id, h.hostname, "id defaults to the hostname");
        let req = h.ping_request();
        assert_eq!(req.host_id.as_str(), h.host_id);
    }

    #[test]
    fn tags_are_reported_as_ec2_tags_json() {
        let dir = tempfile::tempdir().unwrap();
        let o = Overrides {
            hostname: Some("web-3".into()),
            tags: [("az".to_string(), "us-east-1a".to_string())].into(),
            ..Default::default()
        };
        let req = HostInfo::resolve(dir.path(), &o).ping_request();
        let tags: BTreeMap<String, String> =
            serde_json::from_str(req.ec2_tags.as_deref().unwrap()).unwrap();
        assert_eq!(tags["az"], "us-east-1a");
    }
}
