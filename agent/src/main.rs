//! `deploy-agent`: the per-host daemon and its local operator commands.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use agent::config::AgentConfig;
use agent::daemon::Daemon;
use agent::hostinfo::Overrides;
use agent::status::{self, InstanceLock};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

/// Exit code: the agent is already running, or a local command needs it stopped.
const EXIT_LOCKED: i32 = 3;

#[derive(Parser)]
#[command(
    name = "deploy-agent",
    version,
    about = "Deploys builds to this host as the coordinators direct"
)]
struct Cli {
    /// Agent config (TOML; Teletraan's agent.conf key names).
    #[arg(short = 'f', long = "config", global = true, env = "DEPLOY_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Put every agent directory under this root (overrides the config's directories).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (the default): ping, run the steps the coordinators ask for, report.
    Run(RunArgs),
    /// Show what each env on this host is doing (from env_status).
    Status {
        #[arg(short = 'o', long, value_parser = ["table", "json"], default_value = "table")]
        output: String,
    },
    /// Forget an env's local status: the coordinator restarts its deploy from PRE_DOWNLOAD on
    /// the next ping. Needs the agent stopped (use `tt host reset` on a running fleet).
    Reset { env: String },
    /// Print the tail of an env's log (hook output, download and staging notes).
    Logs {
        env: String,
        /// Lines from the end.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Keep printing new lines.
        #[arg(short = 'F', long)]
        follow: bool,
    },
}

#[derive(clap::Args, Default)]
struct RunArgs {
    /// Serve goals until the coordinator answers NOOP once, then exit (cron mode).
    #[arg(long)]
    once: bool,
    /// Coordinator agent endpoint `host:port` (repeatable; overrides the config).
    #[arg(long = "coordinator")]
    coordinators: Vec<String>,
    /// Cluster CA certificate (ca.pem).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Agent token.
    #[arg(long, env = "TT_AGENT_TOKEN")]
    token: Option<String>,
    /// Host name (else `host_info`, else the system's).
    #[arg(short = 'n', long = "host")]
    hostname: Option<String>,
    /// Host id (else `host_info`'s `id`, else the host name).
    #[arg(long)]
    host_id: Option<String>,
    /// Address reported to the coordinators (else `host_info`, else the host name's address).
    #[arg(long)]
    ip: Option<String>,
    /// Capacity group (repeatable, or comma-separated).
    #[arg(short = 'g', long = "group")]
    groups: Vec<String>,
    /// Availability zone (optional).
    #[arg(long)]
    availability_zone: Option<String>,
    /// Extra variable for every hook, KEY=VALUE (repeatable).
    #[arg(long = "hook-env", value_parser = parse_kv)]
    hook_env: Vec<(String, String)>,
    /// Log format: `text` or `json` (JSON lines). Default: text when stderr is a terminal,
    /// JSON otherwise.
    #[arg(long, env = telemetry::log::LOG_FORMAT_ENV)]
    log_format: Option<telemetry::log::LogFormat>,
    /// Same as `--log-format json` (kept for existing units and scripts).
    #[arg(long, hide = true)]
    log_json: bool,
    /// Serve `/metrics`, `/livez` and `/readyz` on this address (overrides `metrics_listen`).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn load_config(cli: &Cli) -> anyhow::Result<AgentConfig> {
    let mut cfg = match &cli.config {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::default(),
    };
    if let Some(root) = &cli.root {
        let rooted = AgentConfig::rooted_at(root);
        cfg.deploy_agent_dir = rooted.deploy_agent_dir;
        cfg.builds_dir = rooted.builds_dir;
        cfg.log_directory = rooted.log_directory;
        cfg.target_default_dir = rooted.target_default_dir;
    }
    Ok(cfg)
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<status::StatusError>()
                .is_some_and(|s| matches!(s, status::StatusError::Locked { .. }))
            {
                EXIT_LOCKED
            } else {
                1
            }
        }
    };
    std::process::exit(code);
}

fn run(mut cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.take().unwrap_or(Cmd::Run(RunArgs::default()));
    let cfg = load_config(&cli)?;
    match command {
        Cmd::Run(args) => run_daemon(cfg, args),
        Cmd::Status { output } => show_status(&cfg, &output),
        Cmd::Reset { env } => reset(&cfg, &env),
        Cmd::Logs { env, lines, follow } => logs(&cfg, &env, lines, follow),
    }
}

fn run_daemon(mut cfg: AgentConfig, args: RunArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let asked = if args.log_json { Some(telemetry::log::LogFormat::Json) } else { args.log_format };
    telemetry::log::init(asked, filter);
    if args.metrics_listen.is_some() {
        cfg.metrics_listen = args.metrics_listen;
    }
    if !args.coordinators.is_empty() {
        cfg.coordinators = args.coordinators;
    }
    if args.ca.is_some() {
        cfg.ca_file = args.ca;
    }
    if args.token.is_some() {
        cfg.token = args.token;
    }
    cfg.hook_env.extend(args.hook_env);
    let overrides = Overrides {
        host_id: args.host_id.or(cfg.host_id.clone()),
        hostname: args.hostname.or(cfg.hostname.clone()),
        ip: args.ip.or(cfg.ip.clone()),
        groups: if args.groups.is_empty() { cfg.groups.clone() } else { args.groups },
        availability_zone: args.availability_zone.or(cfg.availability_zone.clone()),
        tags: cfg.tags.clone(),
    };
    let once = args.once;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let metrics_listen = cfg.metrics_listen;
    rt.block_on(async move {
        let daemon = Daemon::new(cfg, overrides)?;
        if let Some(addr) = metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics_listen {addr}"))?;
            tracing::info!(%addr, "serving /metrics, /livez and /readyz");
            tokio::spawn(agent::metrics::serve(listener, daemon.metrics()));
        }
        if once {
            daemon.run_once().await?;
        } else {
            daemon.run(shutdown_signal()).await?;
        }
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn show_status(cfg: &AgentConfig, output: &str) -> anyhow::Result<()> {
    let envs = status::load(&cfg.deploy_agent_dir)?;
    if output == "json" {
        println!("{}", serde_json::to_string_pretty(&envs)?);
        return Ok(());
    }
    if envs.is_empty() {
        println!(
            "no envs on this host yet (status file: {})",
            cfg.deploy_agent_dir.join(status::ENV_STATUS_FILE).display()
        );
        return Ok(());
    }
    println!(
        "{:<20} {:<10} {:<24} {:<14} {:<12} {:<5} BUILD",
        "ENV", "STAGE", "DEPLOY", "STEP", "STATUS", "FAILS"
    );
    for (name, st) in &envs {
        let r = &st.report;
        println!(
            "{:<20} {:<10} {:<24} {:<14} {:<12} {:<5} {}",
            name,
            r.stage_name.as_deref().unwrap_or("-"),
            r.deploy_id.as_ref().map_or("-", |d| d.as_str()),
            r.deploy_stage.map_or("-", |s| s.as_str()),
            r.status.map_or("-", |s| s.as_str()),
            r.fail_count.unwrap_or(0),
            st.build_info.as_ref().and_then(|b| b.build_id.as_deref()).unwrap_or("-"),
        );
        if let Some(msg) = &r.error_message {
            let last = msg.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
            println!("{:<20} last error: {last}", "");
        }
    }
    Ok(())
}

fn reset(cfg: &AgentConfig, env: &str) -> anyhow::Result<()> {
    let _lock = InstanceLock::acquire(&cfg.deploy_agent_dir)?;
    let mut envs = status::load(&cfg.deploy_agent_dir)?;
    if envs.remove(env).is_none() {
        bail!(
            "this host has no status for env {env:?} (known: {:?})",
            envs.keys().collect::<Vec<_>>()
        );
    }
    status::save(&cfg.deploy_agent_dir, &envs)?;
    println!("forgot {env}: its deploy restarts from PRE_DOWNLOAD when the agent next pings");
    Ok(())
}

fn logs(cfg: &AgentConfig, env: &str, lines: usize, follow: bool) -> anyhow::Result<()> {
    let path = cfg.log_directory.join(format!("{env}.log"));
    let mut f = std::fs::File::open(&path)
        .with_context(|| format!("no log for env {env:?} at {}", path.display()))?;
    print!("{}", tail_lines(&mut f, lines)?);
    if follow {
        let mut pos = f.seek(SeekFrom::End(0))?;
        loop {
            std::thread::sleep(std::time::Duration::from_millis(500));
            let len = f.metadata()?.len();
            if len < pos {
                pos = 0;
            }
            if len > pos {
                f.seek(SeekFrom::Start(pos))?;
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                pos += buf.len() as u64;
                print!("{}", String::from_utf8_lossy(&buf));
            }
        }
    }
    Ok(())
}

/// The last `n` lines of a file (reads at most the last 1 MiB).
fn tail_lines(f: &mut std::fs::File, n: usize) -> anyhow::Result<String> {
    const MAX_TAIL_READ_BYTES: u64 = 1 << 20;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(MAX_TAIL_READ_BYTES)))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(n);
    Ok(all[start..].iter().map(|l| format!("{l}\n")).collect())
}
