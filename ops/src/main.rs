//! `tt`: the operator CLI for the tt deploy service.
//!
//! Exit codes (`ops::client::EXIT_CODES_HELP`, shown by `tt --help`): 0 success, 1 error,
//! 2 usage, 3 `status -w` timeout, 4 not found, 5 service unavailable (no leader or
//! unreachable), 6 not authenticated (401), 7 forbidden (403).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use ops::client::{Client, ClientError, table};
use ops::confirm::ConfirmError;
use ops::devcluster::{DevCluster, Spec, find_coordinator_bin};
use ops::format::{ColorChoice, View};
use ops::ids::{PrefixError, resolve_build, resolve_deploy};
use serde_json::{Value, json};

mod cmd_bench;
mod cmd_browse;
mod cmd_deploy;
mod cmd_env_config;
mod cmd_meta;
mod cmd_promote;
mod cmd_schedule;
mod cmd_token;
mod cmd_webhooks;

#[derive(Parser)]
#[command(
    name = "tt",
    version,
    about = "Operate a tt deploy service (Teletraan-compatible, Raft-replicated)",
    after_help = ops::client::EXIT_CODES_HELP
)]
struct Cli {
    /// Coordinator HTTP address (any node).
    #[arg(long, global = true, env = "TT_ADDR", default_value = "http://127.0.0.1:8080")]
    addr: String,
    /// API token.
    #[arg(long, global = true, env = "TT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format: a table with relative times, a wide table with absolute times and more
    /// columns, or the API's JSON (times in epoch milliseconds).
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Colour state words: auto (a terminal, and NO_COLOR unset), always or never.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
    /// Answer yes to the confirmation of destructive verbs (needed without a terminal).
    #[arg(short = 'y', long, global = true)]
    yes: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Table,
    Wide,
    Json,
}

/// How a verb prints: the format and, for tables, the view (now, wide, colour).
#[derive(Clone, Copy)]
pub(crate) struct Output {
    pub format: Format,
    pub view: View,
}

impl Output {
    pub fn json(&self) -> bool {
        self.format == Format::Json
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Local development: run a cluster on this machine.
    #[command(subcommand)]
    Dev(DevCmd),
    /// The coordinator cluster: status and membership.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Environments and their stages.
    #[command(subcommand)]
    Env(EnvCmd),
    /// Builds.
    #[command(subcommand)]
    Build(BuildCmd),
    /// Benchmarks that print figures and write JSON.
    #[command(subcommand)]
    Bench(cmd_bench::BenchCmd),
    /// Start a deploy of a build on a stage.
    Deploy {
        stage: String,
        #[arg(long)]
        build: String,
        #[arg(long)]
        description: Option<String>,
        /// Deploy even a build tagged BAD_BUILD.
        #[arg(long)]
        force: bool,
    },
    /// Show or change a stage's auto-promotion: from which stage (or BUILD), delay, queue,
    /// schedule, fail and disable policies.
    PromoteConfig(cmd_promote::PromoteConfigArgs),
    /// Show or set a stage's waves: `tt schedule ENV/STAGE`, `tt schedule set ENV/STAGE --hosts
    /// 10%,50% --cooldown 5,-1`, `tt schedule override ENV/STAGE SESSION`.
    Schedule(cmd_schedule::ScheduleArgs),
    /// Show or set a stage's deploy constraint: `tt constraint ENV/STAGE [set --key az
    /// --max-parallel 1 --type GROUP_BY_GROUP | delete]`.
    Constraint(cmd_schedule::ConstraintArgs),
    /// Show or replace a stage's webhooks (`--set FILE`, `--clear`), or what a deploy's
    /// webhooks did (`--deploy ID|current`: attempts, answer, outcome).
    Webhooks(cmd_webhooks::WebhooksArgs),
    /// The stage's current deploy; with -w, follow it: exit 0 on success, 1 on FAILING or
    /// ABORTED, 3 on timeout.
    Status {
        stage: String,
        #[arg(short = 'w', long)]
        watch: bool,
        /// Give up watching after this many seconds.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
    },
    /// Deploys of a stage, newest first.
    History {
        stage: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Roll back to an earlier deploy (default: the newest that SUCCEEDED).
    Rollback {
        stage: String,
        #[arg(long)]
        to: Option<String>,
    },
    /// Deploy another stage's deploy (its build) here.
    Promote {
        stage: String,
        #[arg(long)]
        from: String,
    },
    /// Freeze the stage: no host gets a new goal except first deploys.
    Pause(cmd_deploy::StageArg),
    /// Unfreeze the stage.
    Resume(cmd_deploy::StageArg),
    /// Redeploy the current build (runs the restart hooks).
    Restart(cmd_deploy::StageArg),
    /// The stage's hosts and where each one is.
    Hosts(cmd_deploy::StageArg),
    /// Act on single hosts of a stage.
    #[command(subcommand)]
    Host(cmd_deploy::HostCmd),
    /// Show, or replace with --group/--host, which hosts belong to a stage.
    Capacity {
        stage: String,
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// API tokens: create (shown once), list, delete.
    #[command(subcommand)]
    Token(cmd_token::TokenCmd),
    /// Two builds side by side (name, branch, commits, artifact URL, size, BLAKE3) and the
    /// commit range between them; ids or unique prefixes.
    Diff { build_a: String, build_b: String },
    /// Print the URL of the stage's dashboard page; open it in a browser with --browser, or
    /// when stdout is a terminal and a display is available.
    Open {
        stage: String,
        /// Run xdg-open on the URL even off a terminal.
        #[arg(long)]
        browser: bool,
    },
    /// This client's version and the server's.
    Version,
    /// The client's effective settings, or check a coordinator or agent config file.
    #[command(subcommand)]
    Config(cmd_meta::ConfigCmd),
    /// Print a shell completion script: `tt completion bash > /etc/bash_completion.d/tt`.
    Completion { shell: clap_complete::Shell },
    /// Write man pages, one per command and subcommand (tt.1, tt-env-create.1, ...).
    Man {
        #[arg(long, value_hint = clap::ValueHint::DirPath)]
        out_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum DevCmd {
    /// The whole system at work: three coordinators and five agents on this machine deploy a
    /// real service to canary, promote it to prod, then roll a second version back.
    Demo {
        /// Directory for the cluster, the agents and the builds (wiped first).
        #[arg(long, default_value = ".tt-demo")]
        dir: PathBuf,
        #[arg(long, default_value_t = 5)]
        agents: usize,
        /// How many prod hosts may deploy at once.
        #[arg(long, default_value_t = 2)]
        parallel: i32,
        /// HTTP port of coordinator node 1 (node i gets PORT + i - 1).
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        /// Raft QUIC port of node 1.
        #[arg(long, default_value_t = 7400)]
        raft_port: u16,
        /// Exit when the story is done instead of keeping everything up until Ctrl-C.
        #[arg(long)]
        exit: bool,
    },
    /// Start a local coordinator cluster in the foreground; Ctrl-C stops it.
    Cluster {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Directory for TLS material, data and logs; DIR/cluster.json describes the nodes.
        #[arg(long, default_value = ".tt-dev")]
        dir: PathBuf,
        /// HTTP port of node 1 (node i gets PORT + i - 1).
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        /// Raft QUIC port of node 1.
        #[arg(long, default_value_t = 7400)]
        raft_port: u16,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Members, roles and indexes (like `nomad operator raft list-peers`).
    Status,
    /// Add a node: it joins as a learner, catches up, then becomes a voter.
    AddNode {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        http_addr: String,
        #[arg(long)]
        raft_addr: String,
        /// Keep it a non-voting learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster.
    RemoveNode { id: u64 },
}

#[derive(Subcommand)]
enum EnvCmd {
    /// Create a stage: ENV/STAGE.
    Create {
        stage: String,
        #[arg(long)]
        build_name: Option<String>,
        #[arg(long)]
        max_parallel: Option<i32>,
        #[arg(long)]
        max_parallel_pct: Option<i32>,
        /// DEV, LATEST, CANARY, CONTROL, PRODUCTION, STAGING, ...
        #[arg(long)]
        stage_type: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List stages, optionally of one environment.
    List { env: Option<String> },
    /// Show one stage: ENV/STAGE.
    Get { stage: String },
    /// Change a stage's settings (unset options stay unchanged).
    Update {
        stage: String,
        #[arg(long)]
        build_name: Option<String>,
        #[arg(long)]
        max_parallel: Option<i32>,
        #[arg(long)]
        max_parallel_pct: Option<i32>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete a stage.
    Delete { stage: String },
    /// A stage's whole config (settings, capacity, script and agent configs, promote config);
    /// `--set FIELD=VALUE` changes settings, `--history` shows the config history.
    Config(cmd_env_config::EnvConfigArgs),
}

#[derive(Subcommand)]
enum BuildCmd {
    /// Publish a build. With `--file`, the artifact is uploaded to the cluster (stored on two
    /// nodes, BLAKE3-hashed) and agents fetch it from there; with `--pull URL`, a coordinator
    /// fetches it from the URL once into the cluster the same way; with `--artifact-url` and
    /// `--file`, it is only hashed and agents fetch it from that URL. Agents refuse builds
    /// without a hash.
    Publish {
        #[arg(long)]
        name: String,
        /// Where agents fetch the artifact (`https://`, `file://`) instead of the cluster.
        #[arg(long, required_unless_present_any = ["file", "pull"], conflicts_with = "pull")]
        artifact_url: Option<String>,
        /// The artifact itself.
        #[arg(long, conflicts_with = "pull")]
        file: Option<std::path::PathBuf>,
        /// An `https://` or `file://` URL (a `file://` path on the coordinator, inside its
        /// `pull_file_roots`) the cluster pulls the artifact from once.
        #[arg(long, value_name = "URL")]
        pull: Option<String>,
        #[arg(long)]
        commit: String,
        #[arg(long, default_value = "main")]
        branch: String,
        #[arg(long, default_value = "local")]
        repo: String,
    },
    /// List builds, newest first.
    List {
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Show one build.
    Get { id: String },
    /// Delete a build no deploy references.
    Delete { id: String },
    /// Tag a build: BAD_BUILD (never auto-promoted; later builds of its branch too, until a
    /// newer tag), GOOD_BUILD or CERTIFIED_BUILD.
    Tag {
        id: String,
        #[arg(long)]
        value: String,
        /// Why (stored as the tag's comments).
        #[arg(long)]
        reason: Option<String>,
    },
    /// The tag in effect for a build, and the tags placed on it.
    Tags { id: String },
    /// Delete a tag.
    Untag { tag: String },
}

pub(crate) fn split_stage(s: &str) -> anyhow::Result<(&str, &str)> {
    s.split_once('/')
        .filter(|(e, st)| !e.is_empty() && !st.is_empty())
        .with_context(|| format!("{s:?} is not ENV/STAGE (for example: myservice/prod)"))
}

pub(crate) use ops::format::field as s;

/// The clock, read once per command: human tables count relative times from it.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Writes `bytes` to stdout; a reader that went away (`tt completion bash | head`) is not an
/// error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

pub(crate) fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("JSON values serialize"));
}

fn main() {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    ops::ensure_crypto_provider();
    // The CLI logs nothing unless asked: `TT_LOG=p2p_transfer=debug tt bench swarm …` shows
    // what the in-process swarm does (the coordinator reads the same variable).
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("TT_LOG") {
        telemetry::log::init(None, filter);
    }
    let rt = tokio::runtime::Runtime::new().expect("starting the async runtime");
    let code = match rt.block_on(run(cli, &matches)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            let client_error = e.downcast_ref::<ClientError>();
            if let Some(hint) = client_error.and_then(ClientError::hint) {
                eprintln!("hint: {hint}");
            }
            if let Some(e) = e.downcast_ref::<PrefixError>() {
                e.exit_code()
            } else if let Some(e) = e.downcast_ref::<ConfirmError>() {
                e.exit_code()
            } else {
                client_error.map_or(1, ClientError::exit_code)
            }
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli, matches: &clap::ArgMatches) -> anyhow::Result<i32> {
    let client = Client::new(&cli.addr, cli.token.clone());
    let color = ops::format::color_enabled(
        cli.color,
        std::io::stdout().is_terminal(),
        std::env::var("NO_COLOR").ok().as_deref(),
    );
    let out = Output {
        format: cli.output,
        view: View { now_ms: now_ms(), wide: cli.output == Format::Wide, color },
    };
    if let Some(question) = destructive(&cli.cmd) {
        let stdin = std::io::stdin();
        ops::confirm::confirm(
            &question,
            cli.yes,
            stdin.is_terminal(),
            &mut stdin.lock(),
            &mut std::io::stderr(),
        )?;
    }
    match cli.cmd {
        Cmd::Dev(DevCmd::Demo { dir, agents, parallel, http_port, raft_port, exit }) => {
            if dir.join("cluster").exists() || dir.join("agents").exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("wiping the previous demo in {}", dir.display()))?;
            }
            let opts = ops::demo::DemoOptions {
                dir,
                agents,
                http_port: Some(http_port),
                raft_port: Some(raft_port),
                prod_parallel: parallel,
                verbose: true,
            };
            ops::demo::run(opts, exit).await?;
        }
        Cmd::Dev(DevCmd::Cluster { nodes, dir, http_port, raft_port }) => {
            dev_cluster(nodes, dir, http_port, raft_port).await?
        }
        Cmd::Cluster(c) => cluster(&client, out, c).await?,
        Cmd::Env(c) => env(&client, out, c).await?,
        Cmd::Build(c) => build(&client, out, c).await?,
        Cmd::Bench(c) => cmd_bench::run(c).await?,
        Cmd::Deploy { stage, build, description, force } => {
            let build = resolve_build(&client, &build).await?;
            cmd_deploy::deploy(&client, out, &stage, &build, description, force).await?
        }
        Cmd::PromoteConfig(a) => cmd_promote::promote_config(&client, out, a).await?,
        Cmd::Schedule(a) => cmd_schedule::schedule(&client, out, a).await?,
        Cmd::Constraint(a) => cmd_schedule::constraint(&client, out, a).await?,
        Cmd::Webhooks(a) => cmd_webhooks::webhooks(&client, out, a).await?,
        Cmd::Status { stage, watch, timeout } => {
            return cmd_deploy::status(&client, out, &stage, watch, Duration::from_secs(timeout))
                .await;
        }
        Cmd::History { stage, limit } => cmd_deploy::history(&client, out, &stage, limit).await?,
        Cmd::Rollback { stage, to } => {
            let extra = match to {
                Some(t) => format!("&toDeployId={}", resolve_deploy(&client, &t).await?),
                None => String::new(),
            };
            cmd_deploy::action(&client, out, &stage, "ROLLBACK", &extra).await?
        }
        Cmd::Promote { stage, from } => {
            let from = resolve_deploy(&client, &from).await?;
            cmd_deploy::action(&client, out, &stage, "PROMOTE", &format!("&fromDeployId={from}"))
                .await?
        }
        Cmd::Pause(a) => cmd_deploy::action(&client, out, &a.stage, "PAUSE", "").await?,
        Cmd::Resume(a) => cmd_deploy::action(&client, out, &a.stage, "RESUME", "").await?,
        Cmd::Restart(a) => cmd_deploy::action(&client, out, &a.stage, "RESTART", "").await?,
        Cmd::Hosts(a) => cmd_deploy::hosts(&client, out, &a.stage).await?,
        Cmd::Host(c) => cmd_deploy::host(&client, c).await?,
        Cmd::Capacity { stage, groups, hosts } => {
            cmd_deploy::capacity(&client, out, &stage, groups, hosts).await?
        }
        Cmd::Token(c) => cmd_token::run(&client, out, c).await?,
        Cmd::Diff { build_a, build_b } => {
            cmd_browse::diff(&client, out, &build_a, &build_b).await?
        }
        Cmd::Open { stage, browser } => cmd_browse::open(&client, &stage, browser).await?,
        Cmd::Version => cmd_meta::version(&client, out).await?,
        Cmd::Config(cmd_meta::ConfigCmd::Print) => {
            let name = |v: &dyn Fn() -> Option<clap::builder::PossibleValue>| {
                v().map_or("?".to_string(), |p| p.get_name().to_string())
            };
            cmd_meta::print_config(
                out,
                &cmd_meta::Effective {
                    matches,
                    addr: client.addr(),
                    token_set: cli.token.is_some(),
                    output: &name(&|| cli.output.to_possible_value()),
                    color: &name(&|| cli.color.to_possible_value()),
                    color_on: color,
                },
            )
        }
        Cmd::Config(cmd_meta::ConfigCmd::Validate { file, kind }) => {
            return cmd_meta::validate(&file, kind);
        }
        Cmd::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tt", &mut script);
            write_stdout(&script)?;
        }
        Cmd::Man { out_dir } => cmd_meta::man(Cli::command(), &out_dir)?,
    }
    Ok(0)
}

/// The question a destructive verb asks before it acts (see `ops::confirm`), or `None`.
fn destructive(cmd: &Cmd) -> Option<String> {
    use cmd_deploy::HostCmd;
    let hosts = |what: &str, stage: &str, hosts: &[String]| {
        Some(format!("{what} {} on {stage}", hosts.join(", ")))
    };
    match cmd {
        Cmd::Rollback { stage, to } => Some(match to {
            Some(to) => format!("roll {stage} back to deploy {to}"),
            None => format!("roll {stage} back to its last successful deploy"),
        }),
        Cmd::Restart(a) => Some(format!("restart every host of {}", a.stage)),
        Cmd::Promote { stage, from } => {
            Some(format!("deploy the build of deploy {from} to {stage}"))
        }
        Cmd::Host(HostCmd::Pause { stage, hosts: h }) => hosts("pause", stage, h),
        Cmd::Host(HostCmd::Reset { stage, hosts: h }) => hosts("reset", stage, h),
        Cmd::Host(HostCmd::Stop { stage, hosts: h }) => {
            hosts("stop the service (on every stage) of", stage, h)
        }
        Cmd::Env(EnvCmd::Delete { stage }) => Some(format!("delete stage {stage}")),
        Cmd::Build(BuildCmd::Delete { id }) => Some(format!("delete build {id}")),
        Cmd::Build(BuildCmd::Untag { tag }) => Some(format!("delete tag {tag}")),
        Cmd::Cluster(ClusterCmd::RemoveNode { id }) => {
            Some(format!("remove node {id} from the cluster"))
        }
        Cmd::Token(cmd_token::TokenCmd::Delete { name, id, .. }) => Some(format!(
            "delete token {}",
            name.as_deref().or(id.as_deref()).unwrap_or("(none named)")
        )),
        Cmd::Schedule(cmd_schedule::ScheduleArgs {
            cmd: Some(cmd_schedule::ScheduleCmd::Delete { stage }),
            ..
        }) => Some(format!("delete the schedule of {stage}")),
        Cmd::Constraint(cmd_schedule::ConstraintArgs {
            stage,
            cmd: Some(cmd_schedule::ConstraintCmd::Delete),
        }) => Some(format!("delete the deploy constraint of {stage}")),
        _ => None,
    }
}

async fn dev_cluster(
    nodes: usize,
    dir: PathBuf,
    http_port: u16,
    raft_port: u16,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed before any node starts, so that Ctrl-C at any moment stops them all.
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let bin = find_coordinator_bin()?;
    let dir = std::path::absolute(&dir).context("resolving --dir")?;
    let mut cluster = DevCluster::start(Spec {
        nodes,
        dir: dir.clone(),
        base_http_port: Some(http_port),
        base_raft_port: Some(raft_port),
        advertise: None,
        coordinator_bin: bin,
        env: vec![],
    })?;
    let ids = cluster.ids();
    let leader = tokio::select! {
        l = cluster.wait_leader(&ids, Duration::from_secs(30)) => l.with_context(|| {
            format!("the cluster did not elect a leader; see the logs in {}", dir.display())
        })?,
        _ = interrupt.recv() => {
            cluster.stop_all();
            println!("stopped before a leader was elected.");
            return Ok(());
        }
    };
    println!("cluster of {nodes} nodes is up; leader is node {leader}");
    let rows: Vec<Vec<String>> = cluster
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.pid.map_or("-".into(), |p| p.to_string()),
                format!("http://{}", n.http_addr),
                n.raft_addr.to_string(),
                n.log.display().to_string(),
            ]
        })
        .collect();
    print!("{}", table(&["ID", "PID", "HTTP", "RAFT (QUIC)", "LOG"], &rows));
    println!("\nmanifest: {}", dir.join("cluster.json").display());
    println!("try:      TT_ADDR=http://{} tt cluster status", cluster.nodes[0].http_addr);
    println!("Ctrl-C stops the cluster (data stays in {}).", dir.display());
    let mut watch = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = watch.tick() => {
                for id in cluster.ids() {
                    if !cluster.is_running(id) {
                        eprintln!("node {id} exited; last log lines:\n{}", cluster.log_tail(id, 2000));
                        cluster.stop_all();
                        anyhow::bail!("node {id} exited unexpectedly");
                    }
                }
            }
        }
    }
    println!("stopping the cluster...");
    cluster.stop_all();
    println!("stopped.");
    Ok(())
}

async fn cluster(client: &Client, out: Output, cmd: ClusterCmd) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Status => {
            let v: Value = client.get("/v1/cluster").await?;
            if out.json() {
                print_json(&v);
                return Ok(());
            }
            println!(
                "answered by node {}: leader {}, term {}, commit index {}, applied index {}",
                s(&v, "nodeId"),
                s(&v, "leaderId"),
                s(&v, "term"),
                s(&v, "commitIndex"),
                s(&v, "appliedIndex")
            );
            let rows: Vec<Vec<String>> = v["members"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    vec![
                        s(m, "id"),
                        s(m, "role"),
                        s(m, "httpAddr"),
                        s(m, "raftAddr"),
                        s(m, "matchedIndex"),
                    ]
                })
                .collect();
            print!("{}", table(&["ID", "ROLE", "HTTP", "RAFT", "MATCHED"], &rows));
        }
        ClusterCmd::AddNode { id, http_addr, raft_addr, learner } => {
            let body = json!({"id": id, "httpAddr": http_addr, "raftAddr": raft_addr, "learnerOnly": learner});
            let _: Option<Value> = client.post("/v1/cluster/nodes", &body).await?;
            println!("node {id} added as {}", if learner { "learner" } else { "voter" });
        }
        ClusterCmd::RemoveNode { id } => {
            client.delete(&format!("/v1/cluster/nodes/{id}")).await?;
            println!("node {id} removed");
        }
    }
    Ok(())
}

async fn env(client: &Client, out: Output, cmd: EnvCmd) -> anyhow::Result<()> {
    match cmd {
        EnvCmd::Create {
            stage,
            build_name,
            max_parallel,
            max_parallel_pct,
            stage_type,
            description,
        } => {
            let (e, st) = split_stage(&stage)?;
            let body = json!({
                "envName": e, "stageName": st, "buildName": build_name, "maxParallel": max_parallel,
                "maxParallelPct": max_parallel_pct, "stageType": stage_type, "description": description,
            });
            let created: Option<Value> = client.post("/v1/envs", &body).await?;
            match (out.json(), created) {
                (true, Some(v)) => print_json(&v),
                (_, v) => println!(
                    "created {stage} (id {})",
                    v.as_ref().map_or("-".into(), |v| s(v, "id"))
                ),
            }
        }
        EnvCmd::List { env } => {
            let path = match &env {
                Some(e) => format!("/v1/envs?envName={e}"),
                None => "/v1/envs".to_string(),
            };
            let envs: Vec<Value> = client.get(&path).await?;
            if out.json() {
                print_json(&envs);
            } else {
                print!("{}", ops::format::stages(&envs, &out.view));
            }
        }
        EnvCmd::Get { stage } => {
            let (e, st) = split_stage(&stage)?;
            let v: Value = client.get(&format!("/v1/envs/{e}/{st}")).await?;
            if out.json() {
                print_json(&v);
            } else {
                print!("{}", ops::format::stages(std::slice::from_ref(&v), &out.view));
            }
        }
        EnvCmd::Update { stage, build_name, max_parallel, max_parallel_pct, description } => {
            let (e, st) = split_stage(&stage)?;
            let mut body = serde_json::Map::new();
            let mut set = |k: &str, v: Value| {
                if !v.is_null() {
                    body.insert(k.to_string(), v);
                }
            };
            set("buildName", json!(build_name));
            set("maxParallel", json!(max_parallel));
            set("maxParallelPct", json!(max_parallel_pct));
            set("description", json!(description));
            if body.is_empty() {
                anyhow::bail!(
                    "nothing to update: pass at least one of --build-name, --max-parallel, --max-parallel-pct, --description"
                );
            }
            client.put(&format!("/v1/envs/{e}/{st}"), &Value::Object(body)).await?;
            println!("updated {stage}");
        }
        EnvCmd::Config(a) => cmd_env_config::env_config(client, out, a).await?,
        EnvCmd::Delete { stage } => {
            let (e, st) = split_stage(&stage)?;
            client.delete(&format!("/v1/envs/{e}/{st}")).await?;
            println!("deleted {stage}");
        }
    }
    Ok(())
}

async fn build(client: &Client, out: Output, cmd: BuildCmd) -> anyhow::Result<()> {
    match cmd {
        BuildCmd::Publish { name, artifact_url, file, pull, commit, branch, repo } => {
            let mut body = json!({"name": name, "commit": commit, "branch": branch, "repo": repo});
            if let Some(url) = &pull {
                if !out.json() {
                    eprintln!("the cluster is pulling {url} ...");
                }
                let up: Option<ops::publish::Uploaded> = client
                    .post_timeout(
                        "/v1/blobs/pull",
                        &json!({"url": url}),
                        ops::publish::UPLOAD_TIMEOUT,
                    )
                    .await
                    .with_context(|| format!("pulling {url}"))?;
                let up = up.context("the cluster answered the pull with no body")?;
                if !out.json() {
                    println!(
                        "pulled {url} ({} bytes, blake3 {}) to nodes {:?}",
                        up.size, up.blake3, up.copies
                    );
                }
                body["artifactUrl"] = json!(up.url);
                body["artifactBlake3"] = json!(up.blake3);
                body["artifactSize"] = json!(up.size);
            }
            match (&artifact_url, &file) {
                _ if pull.is_some() => {}
                (Some(url), Some(f)) => {
                    let digest = ops::publish::digest_file(f)?;
                    body["artifactUrl"] = json!(url);
                    body["artifactBlake3"] = json!(digest.blake3_hex);
                    body["artifactSize"] = json!(digest.size);
                }
                (Some(url), None) => body["artifactUrl"] = json!(url),
                (None, Some(f)) => {
                    let progress = std::io::stderr().is_terminal();
                    let up = ops::publish::upload(client, f, progress).await?;
                    if !out.json() {
                        println!(
                            "uploaded {} ({} bytes, blake3 {}) to nodes {:?}",
                            f.display(),
                            up.size,
                            up.blake3,
                            up.copies
                        );
                    }
                    body["artifactUrl"] = json!(up.url);
                    body["artifactBlake3"] = json!(up.blake3);
                    body["artifactSize"] = json!(up.size);
                }
                (None, None) => unreachable!("clap requires --artifact-url, --file or --pull"),
            }
            let v: Option<Value> = client.post("/v1/builds", &body).await?;
            match (out.json(), v) {
                (true, Some(v)) => print_json(&v),
                (_, v) => {
                    println!("published build {}", v.as_ref().map_or("-".into(), |v| s(v, "id")))
                }
            }
        }
        BuildCmd::List { name, limit } => {
            let mut path = format!("/v1/builds?pageSize={limit}");
            if let Some(n) = name {
                path.push_str(&format!("&name={n}"));
            }
            let builds: Vec<Value> = client.get(&path).await?;
            if out.json() {
                print_json(&builds);
            } else {
                print!("{}", ops::format::builds(&builds, &out.view));
            }
        }
        BuildCmd::Get { id } => {
            let id = resolve_build(client, &id).await?;
            let v: Value = client.get(&format!("/v1/builds/{id}")).await?;
            if out.json() {
                print_json(&v);
            } else {
                print!("{}", ops::format::builds(std::slice::from_ref(&v), &out.view));
            }
        }
        BuildCmd::Delete { id } => {
            let id = resolve_build(client, &id).await?;
            client.delete(&format!("/v1/builds/{id}")).await?;
            println!("deleted build {id}");
        }
        BuildCmd::Tag { id, value, reason } => {
            let id = resolve_build(client, &id).await?;
            cmd_promote::tag(client, out, &id, &value, reason).await?
        }
        BuildCmd::Tags { id } => {
            cmd_promote::tags(client, out, &resolve_build(client, &id).await?).await?
        }
        BuildCmd::Untag { tag } => cmd_promote::untag(client, &tag).await?,
    }
    Ok(())
}
