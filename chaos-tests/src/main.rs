//! `chaos`: list and run the chaos scenarios.
//!
//! Exit codes: 0 every invariant held, 1 a violation, 2 the harness itself failed (a process
//! did not start, a scenario file is invalid).

use std::path::PathBuf;

use anyhow::Context;
use chaos_tests::report::Report;
use chaos_tests::run::{RunOptions, run};
use chaos_tests::scenario::{self, Scenario};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chaos",
    about = "Real processes, injected faults, checked invariants",
    after_help = "Exit codes: 0 every invariant held, 1 a violation, 2 the harness failed.\n\
                  Examples:\n  chaos list\n  chaos run leader-kill-mid-deploy --seed 7\n  \
                  chaos run --all --out /tmp/chaos"
)]
struct Cli {
    /// Directory of scenario files.
    #[arg(long, global = true, env = "CHAOS_SCENARIOS")]
    scenarios: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the scenarios with their descriptions.
    List,
    /// Run scenarios by name (or `--all`) and judge them.
    Run {
        /// Scenario names, as `chaos list` prints them (a file `NAME.toml` in the scenarios
        /// directory).
        #[arg(required_unless_present = "all")]
        names: Vec<String>,
        /// Run every scenario of the catalogue, in name order.
        #[arg(long, conflicts_with = "names")]
        all: bool,
        /// Replaces each scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Replaces each scenario's fault window, in seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// Where reports go.
        #[arg(long, default_value = "chaos-results")]
        out: PathBuf,
        /// Keep every run's process files (they are kept anyway when a run fails).
        #[arg(long)]
        keep: bool,
    },
    /// Run simulated agents (the lab starts this process for scenarios with `sim_hosts`):
    /// `--hosts` Teletraan agents long-polling `--agent-addr`s, their deploy steps written to
    /// `--out` until SIGTERM.
    Simagents {
        /// How many simulated hosts.
        #[arg(long)]
        hosts: usize,
        /// Their host names' prefix (then a number).
        #[arg(long, default_value = "sim-")]
        prefix: String,
        /// The Teletraan group (stage) they report.
        #[arg(long)]
        group: String,
        /// How long each deploy step takes, in milliseconds.
        #[arg(long, default_value_t = 20)]
        step_ms: u64,
        /// A coordinator's agent endpoint (repeat for each node).
        #[arg(long = "agent-addr", required = true)]
        agent_addrs: Vec<std::net::SocketAddr>,
        /// The cluster's CA directory (holding `ca.pem`).
        #[arg(long)]
        ca_dir: PathBuf,
        /// The file their deploy-step intervals are written to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a recorded history again (`<out>/<scenario>-seed<S>.history.json`): the
    /// linearizability of its register operations and one leader per term.
    Check {
        /// A `….history.json` file a run wrote.
        history: PathBuf,
    },
    /// Run a bad blob peer (the lab starts these; see `chaos_tests::badpeer`).
    #[command(hide = true)]
    BadPeer(chaos_tests::badpeer::Args),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHAOS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<bool> {
    let dir = cli.scenarios.unwrap_or_else(scenario::default_dir);
    match cli.cmd {
        Cmd::List => {
            let all = scenario::load_all(&dir)?;
            let width = all.iter().map(|s| s.name.len()).max().unwrap_or(0);
            for s in all {
                println!("{:<width$}  {:>5.1}s  {}", s.name, s.duration_s, s.description);
            }
            Ok(true)
        }
        Cmd::BadPeer(args) => {
            chaos_tests::badpeer::main(args)?;
            Ok(true)
        }
        Cmd::Check { history } => {
            let bytes = std::fs::read(&history)
                .with_context(|| format!("reading {}", history.display()))?;
            let rec: chaos_tests::run::Recorded = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a recorded history", history.display()))?;
            let verdicts = [
                chaos_tests::checkers::linearizable(&rec.ops),
                chaos_tests::checkers::one_leader_per_term(&rec.status),
            ];
            for v in &verdicts {
                println!("{:?} {}: {}", v.status, v.invariant, v.summary);
                for x in &v.violations {
                    println!("    {x}");
                }
            }
            Ok(verdicts.iter().all(|v| v.passed()))
        }
        Cmd::Simagents { hosts, prefix, group, step_ms, agent_addrs, ca_dir, out } => {
            let args = chaos_tests::simagents::SimArgs {
                hosts,
                prefix,
                group,
                step: std::time::Duration::from_millis(step_ms),
                agent_addrs,
                ca_dir,
                out,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(chaos_tests::simagents::serve(args)).context("simulated agents")?;
            Ok(true)
        }
        Cmd::Run { names, all, seed, duration, out, keep } => {
            let scenarios: Vec<Scenario> = if all {
                scenario::load_all(&dir)?
            } else {
                // clap requires names unless `--all`.
                names.iter().map(|n| scenario::load(&dir, n)).collect::<Result<_, _>>()?
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the runtime")?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let mut reports = Vec::new();
            for s in &scenarios {
                let report = rt.block_on(run_one(s, seed, duration, &out, keep))?;
                reports.push(report);
            }
            if reports.len() > 1 {
                print!("{}", totals(&reports));
            }
            Ok(reports.iter().all(|r| r.passed))
        }
    }
}

async fn run_one(
    s: &Scenario,
    seed: Option<u64>,
    duration: Option<f64>,
    out: &std::path::Path,
    keep: bool,
) -> anyhow::Result<Report> {
    let work = tempfile::Builder::new()
        .prefix(&format!("chaos-{}-", s.name))
        .tempdir()
        .context("creating the run's directory")?;
    let opts = RunOptions {
        seed,
        duration_s: duration,
        work_dir: work.path().to_path_buf(),
        coordinator_bin: ops::devcluster::find_coordinator_bin()?,
        agent_bin: ops::devfleet::find_agent_bin()?,
    };
    eprintln!("running {} ...", s.name);
    let result = run(s, &opts).await;
    let (report, recorded) = match result {
        Ok(r) => r,
        Err(e) => {
            let kept = work.keep();
            anyhow::bail!(
                "scenario {} could not run: {e} (files kept in {})",
                s.name,
                kept.display()
            );
        }
    };
    let stem = format!("{}-seed{}", report.scenario, report.seed);
    let path = out.join(format!("{stem}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    let history = out.join(format!("{stem}.history.json"));
    std::fs::write(&history, serde_json::to_vec(&recorded)?)
        .with_context(|| format!("writing {}", history.display()))?;
    let svg_path = out.join(format!("{stem}.svg"));
    let deploys: Vec<String> = std::iter::once(report.first_deploy.clone())
        .chain(report.deploys.iter().cloned())
        .collect();
    let title = format!("{} (seed {})", report.scenario, report.seed);
    let picture = chaos_tests::timeline::svg(
        &title,
        &recorded.progress,
        &recorded.status,
        &report.faults,
        report.timing.window_start_us,
        &deploys,
    );
    std::fs::write(&svg_path, picture)
        .with_context(|| format!("writing {}", svg_path.display()))?;
    print!("{}", report.summary());
    println!("report: {} (timeline {})", path.display(), svg_path.display());
    if !report.passed || keep {
        println!("process files kept in {}", work.keep().display());
    }
    println!();
    Ok(report)
}

fn totals(reports: &[Report]) -> String {
    let mut s = String::from("== all scenarios ==\n");
    let (mut faults, mut ops, mut violations) = (0, 0, 0);
    for r in reports {
        s.push_str(&format!(
            "  {:<4} {:<34} {:>3} faults {:>6} ops {:>3} violations\n",
            if r.passed { "PASS" } else { "FAIL" },
            r.scenario,
            r.faults.len(),
            r.operations.total,
            r.violations
        ));
        faults += r.faults.len();
        ops += r.operations.total;
        violations += r.violations;
    }
    s.push_str(&format!(
        "{} runs, {faults} faults injected, {ops} operations checked, {violations} violations\n",
        reports.len()
    ));
    s
}
