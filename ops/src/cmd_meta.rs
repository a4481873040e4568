//! `tt` about itself: `tt completion SHELL`, `tt man --out-dir DIR`, `tt version` (client and
//! server), `tt config print` (the effective client settings and where each came from) and
//! `tt config validate FILE` (a coordinator's or an agent's TOML config, by the real parsers).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{Subcommand, ValueEnum};
use ops::client::{Client, table};
use serde_json::{Value, json};

use crate::{Output, print_json, s};

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// The effective client settings: server, token (never its value), output and colour,
    /// each with its source (flag, environment or default). `tt` reads no config file.
    Print,
    /// Check a coordinator's or an agent's TOML config with the parser that will read it:
    /// exit 0 if valid, 1 with what is wrong (and where) if not.
    Validate {
        file: PathBuf,
        /// Which program's config; by default guessed from the file's keys.
        #[arg(long, value_enum)]
        kind: Option<ConfigKind>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConfigKind {
    /// `coordinator run --config FILE` (checked by `coordinator config validate`).
    Coordinator,
    /// `deploy-agent --config FILE`.
    Agent,
}

/// Keys only a coordinator config has, and keys only an agent config has.
const COORDINATOR_KEYS: &[&str] =
    &["node_id", "data_dir", "tls_dir", "initial_members", "raft", "raft_addr", "http_addr"];
const AGENT_KEYS: &[&str] =
    &["coordinators", "deploy_agent_dir", "builds_dir", "protocol", "service_urls", "ca_file"];

/// Which config `table` is, by its top-level keys; `None` when they do not tell.
pub fn guess_kind(table: &toml::Table) -> Option<ConfigKind> {
    let has = |keys: &[&str]| keys.iter().any(|k| table.contains_key(*k));
    match (has(COORDINATOR_KEYS), has(AGENT_KEYS)) {
        (true, false) => Some(ConfigKind::Coordinator),
        (false, true) => Some(ConfigKind::Agent),
        _ => None,
    }
}

/// `tt config validate`: returns the exit code.
pub fn validate(file: &Path, kind: Option<ConfigKind>) -> anyhow::Result<i32> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: not valid TOML: {e}", file.display());
            return Ok(1);
        }
    };
    let kind = match kind.or_else(|| guess_kind(&table)) {
        Some(k) => k,
        None => {
            eprintln!(
                "{}: cannot tell a coordinator config from an agent config by its keys; pass --kind coordinator or --kind agent",
                file.display()
            );
            return Ok(ops::client::EXIT_USAGE);
        }
    };
    match kind {
        ConfigKind::Agent => match agent::config::AgentConfig::load(file) {
            Ok(cfg) => {
                println!(
                    "{}: a valid agent config ({} coordinators, protocol {:?})",
                    file.display(),
                    cfg.coordinators.len() + cfg.service_urls.len(),
                    cfg.protocol
                );
                Ok(0)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(1)
            }
        },
        ConfigKind::Coordinator => {
            // The coordinator's config types live in its crate, which links RocksDB; its own
            // binary checks the file with the code `coordinator run` uses.
            let bin = ops::devcluster::find_coordinator_bin()?;
            let status = std::process::Command::new(&bin)
                .args(["config", "validate"])
                .arg(file)
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            Ok(if status.success() { 0 } else { 1 })
        }
    }
}

/// Where a global setting came from, in words.
fn source(matches: &clap::ArgMatches, id: &str, env: Option<&str>) -> String {
    match matches.value_source(id) {
        Some(ValueSource::CommandLine) => format!("flag --{}", id.replace('_', "-")),
        Some(ValueSource::EnvVariable) => format!("environment {}", env.unwrap_or("?")),
        Some(ValueSource::DefaultValue) => "default".into(),
        _ => "unset".into(),
    }
}

/// The settings `tt config print` shows.
pub struct Effective<'a> {
    pub matches: &'a clap::ArgMatches,
    pub addr: &'a str,
    pub token_set: bool,
    pub output: &'a str,
    pub color: &'a str,
    pub color_on: bool,
}

pub fn print_config(out: Output, e: &Effective<'_>) {
    let rows = [
        ("server", e.addr.to_string(), source(e.matches, "addr", Some("TT_ADDR"))),
        (
            "token",
            if e.token_set { "set (not shown)" } else { "none" }.to_string(),
            source(e.matches, "token", Some("TT_TOKEN")),
        ),
        ("output", e.output.to_string(), source(e.matches, "output", None)),
        (
            "color",
            format!("{} ({})", e.color, if e.color_on { "on" } else { "off" }),
            source(e.matches, "color", Some("NO_COLOR")),
        ),
        ("dashboard", format!("{}/ui", e.addr), "from server".into()),
        ("config file", "none".into(), "tt reads only flags and TT_* variables".into()),
    ];
    if out.json() {
        let map: serde_json::Map<String, Value> = rows
            .iter()
            .map(|(k, v, src)| (k.replace(' ', "_"), json!({"value": v, "source": src})))
            .collect();
        print_json(&map);
    } else {
        let rows: Vec<Vec<String>> =
            rows.into_iter().map(|(k, v, src)| vec![k.to_string(), v, src]).collect();
        print!("{}", table(&["SETTING", "VALUE", "SOURCE"], &rows));
    }
}

/// `tt version`: this client's version, then the server's (exit 5 if it cannot be reached).
pub async fn version(client: &Client, out: Output) -> anyhow::Result<()> {
    let mine = env!("CARGO_PKG_VERSION");
    let server: Result<Value, _> = client.get("/v1/cluster").await;
    if out.json() {
        let server = server.as_ref().ok().map(|v| {
            json!({"version": v.get("version"), "nodeId": v.get("nodeId"), "addr": client.addr()})
        });
        print_json(&json!({"client": {"version": mine}, "server": server}));
    } else {
        println!("client: tt {mine}");
        if let Ok(v) = &server {
            let version = match s(v, "version").as_str() {
                "-" | "" => "unknown (the node does not report one)".to_string(),
                other => other.to_string(),
            };
            println!(
                "server: coordinator {version} (node {} at {})",
                s(v, "nodeId"),
                client.addr()
            );
        }
    }
    server.map(|_| ()).context("asking the server for its version")
}

/// `tt man --out-dir DIR`: one page per command and subcommand (`tt.1`, `tt-env-create.1`, ...).
pub fn man(cmd: clap::Command, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("writing man pages to {}", dir.display()))?;
    let pages = std::fs::read_dir(dir)?.filter(|e| e.is_ok()).count();
    eprintln!("{pages} man pages in {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_of_a_config_is_guessed_from_its_keys() {
        let t = |s: &str| toml::from_str::<toml::Table>(s).unwrap();
        assert_eq!(guess_kind(&t("node_id = 1\n[raft]\n")), Some(ConfigKind::Coordinator));
        assert_eq!(guess_kind(&t("coordinators = []")), Some(ConfigKind::Agent));
        assert_eq!(guess_kind(&t("max_retry = 3")), None);
        assert_eq!(guess_kind(&t("node_id = 1\ncoordinators = []")), None);
    }
}
