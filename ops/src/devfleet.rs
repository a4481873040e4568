//! Real `deploy-agent` processes on one machine, each with its own host name, directories and
//! hook environment: what the demo, the end-to-end tests and the chaos suite run.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long `stop` waits after SIGTERM before SIGKILL.
pub const AGENT_STOP_GRACE: Duration = Duration::from_secs(5);

/// Finds the `deploy-agent` binary: `TT_AGENT_BIN`, else next to the running executable (or its
/// parent, for test binaries in `target/*/deps`).
pub fn find_agent_bin() -> anyhow::Result<PathBuf> {
    crate::devcluster::find_sibling_bin("deploy-agent", "TT_AGENT_BIN")
}

/// One agent to start.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub hostname: String,
    pub groups: Vec<String>,
    /// Root of the agent's directories (status, builds, logs, targets).
    pub root: PathBuf,
    /// Coordinator agent endpoints.
    pub coordinators: Vec<SocketAddr>,
    /// The cluster CA certificate.
    pub ca_file: PathBuf,
    pub token: Option<String>,
    /// Extra variables for every hook (e.g. the port this host's service listens on).
    pub hook_env: Vec<(String, String)>,
    /// Extra config lines (TOML) appended to the generated config.
    pub extra_config: String,
}

/// A running (or stopped) agent process.
pub struct DevAgent {
    pub spec: AgentSpec,
    pub config: PathBuf,
    pub log: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

impl DevAgent {
    /// Writes the agent's config and starts it.
    pub fn start(bin: &Path, spec: AgentSpec) -> anyhow::Result<Self> {
        fs::create_dir_all(&spec.root)
            .with_context(|| format!("creating {}", spec.root.display()))?;
        let root = std::path::absolute(&spec.root)?;
        let mut cfg = String::new();
        let dir = |name: &str| toml_str(&root.join(name).display().to_string());
        cfg.push_str(&format!("deploy_agent_dir = {}\n", dir("agent")));
        cfg.push_str(&format!("builds_dir = {}\n", dir("builds")));
        cfg.push_str(&format!("log_directory = {}\n", dir("logs")));
        cfg.push_str(&format!("target_default_dir = {}\n", dir("targets")));
        let coords: Vec<String> =
            spec.coordinators.iter().map(|a| toml_str(&a.to_string())).collect();
        cfg.push_str(&format!("coordinators = [{}]\n", coords.join(", ")));
        cfg.push_str(&format!("ca_file = {}\n", toml_str(&spec.ca_file.display().to_string())));
        if let Some(t) = &spec.token {
            cfg.push_str(&format!("token = {}\n", toml_str(t)));
        }
        cfg.push_str(&format!("hostname = {}\n", toml_str(&spec.hostname)));
        let groups: Vec<String> = spec.groups.iter().map(|g| toml_str(g)).collect();
        cfg.push_str(&format!("groups = [{}]\n", groups.join(", ")));
        cfg.push_str(&spec.extra_config);
        cfg.push_str("\n[hook_env]\n");
        for (k, v) in &spec.hook_env {
            cfg.push_str(&format!("{} = {}\n", toml_str(k), toml_str(v)));
        }
        let config = root.join("agent.toml");
        fs::write(&config, cfg).with_context(|| format!("writing {}", config.display()))?;
        let log = root.join("deploy-agent.log");
        let mut agent = DevAgent {
            spec: AgentSpec { root, ..spec },
            config,
            log,
            bin: bin.to_path_buf(),
            child: None,
        };
        agent.spawn()?;
        Ok(agent)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .env(telemetry::log::LOG_FORMAT_ENV, crate::devcluster::dev_log_format())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting deploy-agent {}", self.spec.hostname))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: the agent dies mid-whatever; its hooks (own process groups) live on.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.spawn()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, then SIGKILL after [`AGENT_STOP_GRACE`].
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + AGENT_STOP_GRACE;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// The agent's own log (last `bytes`).
    pub fn log_tail(&self, bytes: usize) -> String {
        tail(&self.log, bytes)
    }

    /// The hook log of `env` on this host (last `bytes`).
    pub fn env_log_tail(&self, env: &str, bytes: usize) -> String {
        tail(&self.spec.root.join("logs").join(format!("{env}.log")), bytes)
    }

    /// The service symlink of `env` on this host.
    pub fn target(&self, env: &str) -> PathBuf {
        self.spec.root.join("targets").join(env)
    }
}

impl Drop for DevAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(path: &Path, bytes: usize) -> String {
    let data = fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&data[data.len().saturating_sub(bytes)..]).into_owned()
}
