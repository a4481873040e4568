//! The demo (the README's main command): a three-node coordinator cluster and five real agents
//! on loopback deploy a small real service, promote it, and roll a second version back, showing
//! each step as the `tt` command an operator would type.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::client::Client;
use crate::demo_build::build_demo_tarball;
use crate::devcluster::{DevCluster, Spec, find_coordinator_bin, find_sibling_bin};
use crate::devfleet::{AgentSpec, DevAgent, find_agent_bin};

/// The env the demo creates.
pub const DEMO_ENV: &str = "demo";
/// How often the demo polls a deploy's progress.
const PROGRESS_POLL: Duration = Duration::from_millis(250);
/// Longest the demo waits for one deploy to finish.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest a host's service may take to answer with a new version after its deploy.
const SERVICE_CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of one HTTP request to a demo service.
const SERVICE_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub dir: PathBuf,
    /// Number of agents (host 1 is the canary, the rest are prod).
    pub agents: usize,
    /// HTTP port of coordinator node 1 (`None`: free ports).
    pub http_port: Option<u16>,
    pub raft_port: Option<u16>,
    /// Parallelism of the prod stage.
    pub prod_parallel: i32,
    /// Print each step (the tests run it quietly).
    pub verbose: bool,
}

/// What the demo saw; the tests assert on it.
#[derive(Debug, Default, Clone)]
pub struct DemoReport {
    /// Version each host served at each checkpoint.
    pub checkpoints: Vec<(String, BTreeMap<String, String>)>,
    /// Most prod hosts seen deploying at once during the v2 deploy and the rollback (the
    /// promotion is every prod host's first deploy, which Teletraan never throttles).
    pub max_prod_deploying: usize,
    pub api: String,
}

/// The running demo: cluster, agents and the services they started. Dropping it stops all.
pub struct Demo {
    pub cluster: DevCluster,
    pub agents: Vec<DevAgent>,
    pub client: Client,
    opts: DemoOptions,
    /// Host name → port of its demo service.
    ports: BTreeMap<String, u16>,
}

fn host_name(i: usize) -> String {
    format!("demo-host-{i}")
}

impl Demo {
    fn say(&self, line: &str) {
        if self.opts.verbose {
            println!("{line}");
        }
    }

    fn step(&self, title: &str, cmd: &str) {
        if self.opts.verbose {
            println!("\n== {title}\n   $ {cmd}");
        }
    }

    /// Starts the cluster and the agents.
    pub async fn start(opts: DemoOptions) -> anyhow::Result<Demo> {
        ensure!(opts.agents >= 2, "the demo needs at least 2 agents (1 canary, 1 prod)");
        let dir = std::path::absolute(&opts.dir).context("resolving the demo directory")?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cluster = DevCluster::start(Spec {
            nodes: 3,
            dir: dir.join("cluster"),
            base_http_port: opts.http_port,
            base_raft_port: opts.raft_port,
            advertise: None,
            coordinator_bin: find_coordinator_bin()?,
            env: vec![],
        })?;
        let ids = cluster.ids();
        let leader =
            cluster.wait_leader(&ids, Duration::from_secs(30)).await.with_context(|| {
                format!(
                    "the cluster elected no leader; logs are in {}",
                    dir.join("cluster").display()
                )
            })?;
        let api = format!("http://{}", cluster.nodes[0].http_addr);
        let client = Client::new(&api, None);
        let mut demo = Demo {
            cluster,
            agents: Vec::new(),
            client,
            opts: opts.clone(),
            ports: BTreeMap::new(),
        };
        demo.step(
            "a three-node coordinator cluster (Raft on RocksDB, QUIC between nodes)",
            "tt dev cluster --nodes 3",
        );
        demo.say(&format!("   leader: node {leader}; API at {api}"));

        let agent_bin = find_agent_bin()?;
        demo.step(
            &format!(
                "{} deploy agents, each its own host, directories and service port",
                opts.agents
            ),
            "deploy-agent --config agents/demo-host-N/agent.toml run",
        );
        for i in 1..=opts.agents {
            let name = host_name(i);
            let port = crate::devcluster::free_tcp_port()?;
            let root = dir.join("agents").join(&name);
            let state = root.join("service");
            std::fs::create_dir_all(&state)?;
            let group = if i == 1 { "demo-canary" } else { "demo-prod" };
            let spec = AgentSpec {
                hostname: name.clone(),
                groups: vec![group.into()],
                root,
                coordinators: demo.cluster.agent_addrs(),
                ca_file: demo.cluster.ca_file(),
                token: None,
                hook_env: vec![
                    ("DEMO_PORT".into(), port.to_string()),
                    ("DEMO_STATE_DIR".into(), state.display().to_string()),
                    ("DEMO_HOST".into(), name.clone()),
                ],
                // Quick retries: the demo's hooks are fast.
                extra_config: "process_wait_interval = 1\n".into(),
            };
            let agent = DevAgent::start(&agent_bin, spec)?;
            demo.say(&format!(
                "   {name}: group {group}, service port {port}, log {}",
                agent.log.display()
            ));
            demo.ports.insert(name, port);
            demo.agents.push(agent);
        }
        Ok(demo)
    }

    fn stage(&self, stage: &str) -> String {
        format!("{DEMO_ENV}/{stage}")
    }

    /// Creates the env's two stages, their capacity and script variables.
    pub async fn create_env(&self) -> anyhow::Result<()> {
        let c = &self.client;
        self.step(
            "create env demo with stages canary and prod",
            "tt env create demo/canary --stage-type CANARY",
        );
        c.post::<_, Value>("/v1/envs", &json!({"envName": DEMO_ENV, "stageName": "canary", "stageType": "CANARY", "buildName": "demo-service"}))
            .await?;
        let prod_cmd =
            format!("tt env create demo/prod --max-parallel {}", self.opts.prod_parallel);
        self.say(&format!("   $ {prod_cmd}"));
        c.post::<_, Value>(
            "/v1/envs",
            &json!({"envName": DEMO_ENV, "stageName": "prod", "buildName": "demo-service", "maxParallel": self.opts.prod_parallel}),
        )
        .await?;
        self.say("   $ tt capacity demo/canary --group demo-canary");
        c.put("/v1/envs/demo/canary/capacity?capacityType=GROUP", &["demo-canary"]).await?;
        self.say("   $ tt capacity demo/prod --group demo-prod");
        c.put("/v1/envs/demo/prod/capacity?capacityType=GROUP", &["demo-prod"]).await?;
        for stage in ["canary", "prod"] {
            let greeting = format!("hello from {stage}");
            c.put(&format!("/v1/envs/demo/{stage}/script_configs"), &json!({"GREETING": greeting}))
                .await?;
        }
        self.say(
            "   script variable GREETING set per stage (rendered into teletraan/service.conf)",
        );
        Ok(())
    }

    /// Packages version `version` of the service and publishes it; returns the build id.
    pub async fn publish(&self, version: &str) -> anyhow::Result<String> {
        let dir = std::path::absolute(&self.opts.dir)?.join("artifacts");
        std::fs::create_dir_all(&dir)?;
        let out = dir.join(format!("demo-service-{version}.tar.gz"));
        let bin = find_sibling_bin("demo-service", "TT_DEMO_SERVICE_BIN")?;
        let build = build_demo_tarball(&out, version, &bin)?;
        let commit = blake3::hash(version.as_bytes()).to_hex().to_string();
        self.step(
            &format!("build {version} of demo-service into a tarball and publish it"),
            &format!(
                "tt build publish --name demo-service --file {} --commit {}",
                out.display(),
                &commit[..12]
            ),
        );
        let up = crate::publish::upload(&self.client, &out, false).await?;
        ensure!(up.blake3 == build.blake3_hex, "the cluster hashed the upload differently");
        let b: Option<Value> = self
            .client
            .post(
                "/v1/builds",
                &json!({"name": "demo-service", "artifactUrl": up.url, "commit": commit,
                        "branch": "main", "repo": "local/demo-service",
                        "artifactBlake3": up.blake3, "artifactSize": up.size}),
            )
            .await?;
        let id = b.as_ref().and_then(|b| b["id"].as_str()).context("publish answered no id")?;
        self.say(&format!(
            "   uploaded to coordinators {:?}; build {id}: {} bytes, blake3 {}…",
            up.copies,
            up.size,
            &up.blake3[..16]
        ));
        Ok(id.to_string())
    }

    /// Starts a deploy (or an action) and follows it until every host of the stage serves it.
    /// Returns the most hosts seen deploying at once.
    pub async fn follow(&self, stage: &str, hosts: usize) -> anyhow::Result<usize> {
        let started = Instant::now();
        let mut last = String::new();
        let mut max_deploying = 0;
        loop {
            let progress: Value = self
                .client
                .put_json(&format!("/v1/envs/demo/{stage}/deploys/current/progress"), &Value::Null)
                .await?;
            let d: Value =
                self.client.get(&format!("/v1/envs/demo/{stage}/deploys/current")).await?;
            let deploy_id = d["id"].as_str().unwrap_or_default().to_string();
            let mut deploying = Vec::new();
            let mut done = 0;
            let mut failed = Vec::new();
            for a in progress["agents"].as_array().into_iter().flatten() {
                let host = a["hostName"].as_str().unwrap_or("?");
                let step = a["deployStage"].as_str().unwrap_or("?");
                let on_deploy = a["deployId"].as_str() == Some(deploy_id.as_str());
                let status = a["status"].as_str().unwrap_or("");
                if a["state"].as_str() == Some("PAUSED_BY_SYSTEM") {
                    failed.push(format!("{host} ({step} {status})"));
                } else if on_deploy && step == "SERVING_BUILD" && status == "SUCCEEDED" {
                    done += 1;
                } else if on_deploy && step != "SERVING_BUILD" {
                    deploying.push(format!("{host}:{step}"));
                }
            }
            max_deploying = max_deploying.max(deploying.len());
            let state = d["state"].as_str().unwrap_or("?").to_string();
            let mut line = format!("   {stage:<6} {state:<10} {done}/{hosts} serving");
            if !deploying.is_empty() {
                let _ = write!(line, " · deploying {}", deploying.join(", "));
            }
            if line != last {
                self.say(&line);
                last = line;
            }
            if !failed.is_empty() || state == "FAILING" || state == "ABORTED" {
                bail!("the deploy on {stage} is {state}; failed hosts: {}", failed.join(", "));
            }
            if done >= hosts {
                return Ok(max_deploying);
            }
            if started.elapsed() > DEPLOY_TIMEOUT {
                bail!("the deploy on {stage} did not finish in {DEPLOY_TIMEOUT:?} ({last})");
            }
            tokio::time::sleep(PROGRESS_POLL).await;
        }
    }

    /// Asks every host's service which version it serves, until all of `hosts` answer
    /// `version` (or the timeout passes).
    pub async fn check_served(
        &self,
        hosts: &[String],
        version: &str,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let http = reqwest::Client::builder().timeout(SERVICE_REQUEST_TIMEOUT).build()?;
        let deadline = Instant::now() + SERVICE_CHECK_TIMEOUT;
        loop {
            let mut seen = BTreeMap::new();
            for h in hosts {
                let port = self.ports[h];
                let v = match http.get(format!("http://127.0.0.1:{port}/")).send().await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|v| v["version"].as_str().map(str::to_string))
                        .unwrap_or_else(|| "?".into()),
                    Err(_) => "down".into(),
                };
                seen.insert(h.clone(), v);
            }
            if seen.values().all(|v| v == version) {
                for (h, v) in &seen {
                    self.say(&format!("   {h} (127.0.0.1:{}) serves {v}", self.ports[h]));
                }
                return Ok(seen);
            }
            if Instant::now() > deadline {
                bail!("not every host serves {version}: {seen:?}");
            }
            tokio::time::sleep(PROGRESS_POLL).await;
        }
    }

    /// The whole story. Returns what it saw.
    pub async fn run_story(&self) -> anyhow::Result<DemoReport> {
        let mut report = DemoReport { api: self.client.addr().to_string(), ..Default::default() };
        let canary = vec![host_name(1)];
        let prod: Vec<String> = (2..=self.opts.agents).map(host_name).collect();
        let all: Vec<String> = canary.iter().chain(&prod).cloned().collect();
        self.create_env().await?;

        let v1 = self.publish("v1").await?;
        self.step(
            "deploy v1 to canary",
            &format!("tt deploy {} --build {v1}", self.stage("canary")),
        );
        self.client
            .post::<_, Value>(&format!("/v1/envs/demo/canary/deploys?buildId={v1}"), &Value::Null)
            .await?;
        self.follow("canary", canary.len()).await?;
        report.checkpoints.push(("canary v1".into(), self.check_served(&canary, "v1").await?));

        let canary_deploy: Value = self.client.get("/v1/envs/demo/canary/deploys/current").await?;
        let from = canary_deploy["id"].as_str().context("canary has a deploy")?.to_string();
        self.step(
            "promote it to prod (every prod host's first deploy: not throttled, as in Teletraan)",
            &format!("tt promote {} --from {from}", self.stage("prod")),
        );
        self.client
            .post::<_, Value>(
                &format!("/v1/envs/demo/prod/deploys/current/actions?actionType=PROMOTE&fromDeployId={from}"),
                &Value::Null,
            )
            .await?;
        self.follow("prod", prod.len()).await?;
        report.checkpoints.push(("all v1".into(), self.check_served(&all, "v1").await?));

        let v2 = self.publish("v2").await?;
        self.step(
            &format!("deploy v2 to prod, {} hosts at a time", self.opts.prod_parallel),
            &format!("tt deploy {} --build {v2}", self.stage("prod")),
        );
        self.client
            .post::<_, Value>(&format!("/v1/envs/demo/prod/deploys?buildId={v2}"), &Value::Null)
            .await?;
        report.max_prod_deploying = self.follow("prod", prod.len()).await?;
        report.checkpoints.push(("prod v2".into(), self.check_served(&prod, "v2").await?));

        self.step("roll prod back to v1", &format!("tt rollback {}", self.stage("prod")));
        self.client
            .post::<_, Value>(
                "/v1/envs/demo/prod/deploys/current/actions?actionType=ROLLBACK",
                &Value::Null,
            )
            .await?;
        let most = self.follow("prod", prod.len()).await?;
        report.max_prod_deploying = report.max_prod_deploying.max(most);
        self.say(&format!(
            "   at most {} prod hosts were seen deploying at once (limit {})",
            report.max_prod_deploying, self.opts.prod_parallel
        ));
        report.checkpoints.push(("prod rolled back".into(), self.check_served(&prod, "v1").await?));
        Ok(report)
    }

    /// Where to look, printed at the end.
    pub fn where_to_look(&self) -> String {
        let dir = std::path::absolute(&self.opts.dir).unwrap_or_else(|_| self.opts.dir.clone());
        let mut s = String::new();
        let _ = writeln!(s, "\nEverything above is still running. Where to look:");
        let _ = writeln!(
            s,
            "   API:           {}   (TT_ADDR={} tt status demo/prod)",
            self.client.addr(),
            self.client.addr()
        );
        let _ = writeln!(s, "   history:       tt history demo/prod");
        let _ = writeln!(s, "   hosts:         tt hosts demo/prod");
        let _ = writeln!(
            s,
            "   coordinators:  {}",
            dir.join("cluster").join("node-*").join("coordinator.log").display()
        );
        let _ = writeln!(
            s,
            "   agents:        {}",
            dir.join("agents").join("*").join("deploy-agent.log").display()
        );
        let _ = writeln!(
            s,
            "   hook output:   deploy-agent --root {} logs demo",
            dir.join("agents").join("demo-host-1").display()
        );
        for (h, p) in &self.ports {
            let _ = writeln!(s, "   {h}:  http://127.0.0.1:{p}/");
        }
        let _ = write!(s, "Ctrl-C stops everything.");
        s
    }

    /// Stops the services the hooks started (they outlive agents by design).
    fn stop_services(&self) {
        for a in &self.agents {
            let pid_file = a.spec.root.join("service").join("demo-service.pid");
            if let Some(pid) =
                std::fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        for a in &mut self.agents {
            a.stop();
        }
        self.stop_services();
        self.cluster.stop_all();
    }
}

/// `tt demo`: runs the story, then keeps everything up until Ctrl-C (unless `exit`).
pub async fn run(opts: DemoOptions, exit: bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let started = Instant::now();
    let demo = tokio::select! {
        d = Demo::start(opts.clone()) => d?,
        _ = interrupt.recv() => { println!("\nstopped."); return Ok(()); }
    };
    let story = tokio::select! {
        r = demo.run_story() => r,
        _ = interrupt.recv() => { println!("\nstopping everything..."); drop(demo); return Ok(()); }
        _ = terminate.recv() => { drop(demo); return Ok(()); }
    };
    if let Err(e) = story {
        eprintln!("\nthe demo failed: {e:#}");
        for a in &demo.agents {
            eprintln!("--- {} agent log (tail) ---\n{}", a.spec.hostname, a.log_tail(1500));
            eprintln!(
                "--- {} hook log (tail) ---\n{}",
                a.spec.hostname,
                a.env_log_tail(DEMO_ENV, 1500)
            );
        }
        return Err(e);
    }
    println!(
        "\nthe demo finished in {:.0?}: every host served v1, v2, then v1 again.",
        started.elapsed()
    );
    if exit {
        return Ok(());
    }
    println!("{}", demo.where_to_look());
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    println!("\nstopping everything...");
    drop(demo);
    Ok(())
}
