//! `coordinator`: run a node, or make the cluster's TLS material.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use coordinator::config::{Config, Overrides};
use coordinator::tls::{self, ClusterCa};

#[derive(Parser)]
#[command(
    version,
    about = "A coordinator node of the tt deploy service (Raft + Teletraan /v1 API)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node. Settings come from --config, TT_* variables and flags (flags win).
    Run {
        #[command(flatten)]
        overrides: Overrides,
        /// Log format: `text` or `json` (JSON lines). Default: text when stderr is a
        /// terminal, JSON otherwise.
        #[arg(long, env = telemetry::log::LOG_FORMAT_ENV)]
        log_format: Option<telemetry::log::LogFormat>,
        /// Same as `--log-format json` (kept for existing units and scripts).
        #[arg(long, env = "TT_LOG_JSON", hide = true)]
        log_json: bool,
    },
    /// Create and inspect the cluster's TLS material.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Bootstrap tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Check configuration files.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Storage failpoints (chaos testing).
    #[command(subcommand)]
    Failpoints(FailpointsCmd),
}

#[derive(Subcommand)]
enum FailpointsCmd {
    /// Exit 0 if this build can arm SPEC (a TT_FAILPOINTS value), 1 with the reason if not
    /// (a syntax error, or a build without the `failpoints` feature).
    Check { spec: String },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Parse and validate a node's TOML config file as `run --config FILE` would, without the
    /// TT_* variables and flags: exit 0 if it is valid, 1 with the reason (and the line) if not.
    Validate { file: PathBuf },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Print a fresh random token for `admin_token` (TT_ADMIN_TOKEN) or `agent_token`.
    New,
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Create a new cluster CA in DIR (ca.pem, ca.key mode 0600).
    InitCa {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "tt cluster CA")]
        name: String,
    },
    /// Issue a node certificate signed by the CA in --ca-dir into --out (node.pem, node.key, ca.pem).
    Issue {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Certificate subject name, e.g. node-1.
        #[arg(long)]
        name: String,
        /// IP addresses and DNS names the node is reached at (repeatable).
        #[arg(long = "san", default_values_t = vec!["127.0.0.1".to_string(), "localhost".to_string()])]
        sans: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { overrides, log_format, log_json } => {
            let asked = if log_json { Some(telemetry::log::LogFormat::Json) } else { log_format };
            let filter = tracing_subscriber::EnvFilter::try_from_env("TT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
            telemetry::log::init(asked, filter);
            coordinator::failpoints::init_from_env()?;
            let cfg = Config::from_sources(&overrides).context("invalid configuration")?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(async move {
                let shutdown = async {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .expect("installing a SIGTERM handler");
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                    tracing::info!("shutting down");
                };
                coordinator::node::run(cfg, shutdown).await
            })
            .context("node stopped with an error")?;
        }
        Cmd::Certs(CertsCmd::InitCa { dir, name }) => {
            tls::install_crypto_provider();
            let ca = ClusterCa::generate(&name).context("generating the CA")?;
            ca.write(&dir).with_context(|| format!("writing the CA to {}", dir.display()))?;
            println!("cluster CA written to {}", dir.display());
        }
        Cmd::Token(TokenCmd::New) => println!("{}", coordinator::auth::new_token().0),
        Cmd::Failpoints(FailpointsCmd::Check { spec }) => {
            if let Err(e) = coordinator::failpoints::check_spec(&spec) {
                eprintln!("{e}");
                std::process::exit(1);
            }
            println!("{spec}: can be armed");
        }
        Cmd::Config(ConfigCmd::Validate { file }) => {
            let overrides = Overrides { config: Some(file.clone()), ..Overrides::default() };
            let cfg = match Config::from_sources(&overrides) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            };
            println!(
                "{}: a valid coordinator config (node {}, HTTP {}, Raft {}, {} founding members)",
                file.display(),
                cfg.node_id,
                cfg.http_addr,
                cfg.raft_addr,
                cfg.initial_members.len()
            );
        }
        Cmd::Certs(CertsCmd::Issue { ca_dir, out, name, sans }) => {
            tls::install_crypto_provider();
            for san in &sans {
                if san.parse::<IpAddr>().is_err() && san.contains(char::is_whitespace) {
                    anyhow::bail!("--san {san:?} is neither an IP address nor a DNS name");
                }
            }
            let ca = ClusterCa::load(&ca_dir)
                .with_context(|| format!("loading the CA from {}", ca_dir.display()))?;
            let cert =
                tls::issue_node_cert(&ca, &name, &sans).context("issuing the certificate")?;
            cert.write(&out).with_context(|| format!("writing to {}", out.display()))?;
            ca.write_cert(&out).with_context(|| format!("writing ca.pem to {}", out.display()))?;
            println!("certificate for {name} written to {}", out.display());
        }
    }
    Ok(())
}
