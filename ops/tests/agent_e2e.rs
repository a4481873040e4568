//! End to end: real coordinators and real `deploy-agent` processes deploy real tarballs with
//! real hook scripts on loopback.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ops::client::Client;
use ops::devcluster::{DevCluster, Spec, find_coordinator_bin};
use ops::devfleet::{AgentSpec, DevAgent, find_agent_bin};
use serde_json::{Value, json};
use telemetry::exposition::{Sample, parse, sum, value};

/// Longest any wait in these tests may take before the test fails (a hang guard).
const WAIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(100);

/// A `.tar.gz` with `files` (path, mode, contents); its BLAKE3 hash and size.
fn tarball(path: &Path, files: &[(&str, u32, String)]) -> (String, u64) {
    let files: Vec<(&str, u32, &[u8])> =
        files.iter().map(|(n, m, b)| (*n, *m, b.as_bytes())).collect();
    let digest = ops::publish::write_tarball(path, &files).unwrap();
    (digest.blake3_hex, digest.size)
}

/// `len` pseudo-random hex characters seeded by `seed`.
fn bulk(seed: &str, len: usize) -> String {
    let mut x = blake3::hash(seed.as_bytes()).as_bytes()[0] as u64 | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b"0123456789abcdef"[(x & 15) as usize])
        })
        .collect()
}

/// A hook that journals its start and end (with the deploy id) and takes a moment.
fn journaling_hook(step: &str) -> String {
    format!(
        "#!/bin/sh\nset -eu\necho \"{step} start $DEPLOY_ID\" >> \"$JOURNAL\"\nsleep 1\necho \"{step} end $DEPLOY_ID\" >> \"$JOURNAL\"\n"
    )
}

struct Fleet {
    cluster: DevCluster,
    agents: Vec<DevAgent>,
    /// Each agent's `metrics_listen` address.
    agent_metrics: Vec<std::net::SocketAddr>,
    client: Client,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

async fn fleet(agents: usize, group: &str) -> Fleet {
    fleet_with(agents, group, false).await
}

/// With `swarm`, every coordinator runs a blob origin and every agent a `tt-blob/1` node with a
/// certificate of its own from the cluster CA.
async fn fleet_with(agents: usize, group: &str, swarm: bool) -> Fleet {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let cluster = DevCluster::start(Spec {
        nodes: 3,
        dir: dir.join("cluster"),
        base_http_port: None,
        base_raft_port: None,
        advertise: None,
        coordinator_bin: find_coordinator_bin().unwrap(),
        env: if swarm { vec![("TT_SWARM_ADDR".into(), "127.0.0.1:0".into())] } else { vec![] },
    })
    .unwrap();
    cluster.wait_leader(&cluster.ids(), Duration::from_secs(30)).await.unwrap();
    let ca = swarm.then(|| p2p_transfer::tls::ClusterCa::load(&cluster.dir().join("ca")).unwrap());
    let client = Client::new(&format!("http://{}", cluster.nodes[1].http_addr), None);
    let bin = find_agent_bin().unwrap();
    let agent_metrics: Vec<std::net::SocketAddr> = (0..agents)
        .map(|_| ([127, 0, 0, 1], ops::devcluster::free_tcp_port().unwrap()).into())
        .collect();
    let agents = (1..=agents)
        .map(|i| {
            let root = dir.join(format!("host-{i}"));
            // Quick retries and heartbeats: the tests' hooks are short.
            let mut extra_config = format!(
                "process_wait_interval = 1\nmin_running_time = 1\nmetrics_listen = \"{}\"\n",
                agent_metrics[i - 1]
            );
            if let Some(ca) = &ca {
                let tls = root.join("swarm-tls");
                let cert = p2p_transfer::tls::issue_node_cert(
                    ca,
                    &format!("host-{i}"),
                    &["127.0.0.1".to_owned()],
                )
                .unwrap();
                cert.write(&tls).unwrap();
                ca.write_cert(&tls).unwrap();
                extra_config.push_str(&format!(
                    "swarm_listen = \"127.0.0.1:0\"\nswarm_tls_dir = \"{}\"\n",
                    tls.display()
                ));
            }
            DevAgent::start(
                &bin,
                AgentSpec {
                    hostname: format!("host-{i}"),
                    groups: vec![group.into()],
                    root: root.clone(),
                    coordinators: cluster.agent_addrs(),
                    ca_file: cluster.ca_file(),
                    token: None,
                    hook_env: vec![("JOURNAL".into(), root.join("journal").display().to_string())],
                    extra_config,
                },
            )
            .unwrap()
        })
        .collect();
    Fleet { cluster, agents, agent_metrics, client, dir, _tmp: tmp }
}

impl Fleet {
    async fn create_stage(&self, env: &str, stage: &str, group: &str, max_parallel: i32) {
        self.client
            .post::<_, Value>(
                "/v1/envs",
                &json!({"envName": env, "stageName": stage, "maxParallel": max_parallel, "buildName": "svc"}),
            )
            .await
            .unwrap();
        self.client
            .put(&format!("/v1/envs/{env}/{stage}/capacity?capacityType=GROUP"), &[group])
            .await
            .unwrap();
    }

    async fn publish(
        &self,
        name: &str,
        files: &[(&str, u32, String)],
        blake3: Option<&str>,
    ) -> String {
        let path = self.dir.join(format!("{name}.tar.gz"));
        let (hash, size) = tarball(&path, files);
        let b: Option<Value> = self
            .client
            .post(
                "/v1/builds",
                &json!({"name": "svc", "artifactUrl": ops::publish::file_url(&path).unwrap(),
                        "commit": format!("{name}0000000"), "branch": "main", "repo": "t/svc",
                        "artifactBlake3": blake3.unwrap_or(&hash), "artifactSize": size}),
            )
            .await
            .unwrap();
        b.unwrap()["id"].as_str().unwrap().to_string()
    }

    async fn deploy(&self, env: &str, stage: &str, build: &str) -> String {
        let d: Option<Value> = self
            .client
            .post(&format!("/v1/envs/{env}/{stage}/deploys?buildId={build}"), &Value::Null)
            .await
            .unwrap();
        d.unwrap()["id"].as_str().unwrap().to_string()
    }

    /// Agent rows of the stage, after a transition (as the UI's poll does).
    async fn agents(&self, env: &str, stage: &str) -> Vec<Value> {
        let p: Value = self
            .client
            .put_json(&format!("/v1/envs/{env}/{stage}/deploys/current/progress"), &Value::Null)
            .await
            .unwrap();
        p["agents"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `n` hosts of the stage satisfy `pred`.
    async fn wait_hosts(
        &self,
        env: &str,
        stage: &str,
        n: usize,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) {
        let start = Instant::now();
        loop {
            let agents = self.agents(env, stage).await;
            if agents.iter().filter(|a| pred(a)).count() >= n {
                return;
            }
            if start.elapsed() > WAIT {
                let logs: Vec<String> = self
                    .agents
                    .iter()
                    .map(|a| {
                        format!(
                            "{}:\n{}\n{}",
                            a.spec.hostname,
                            a.log_tail(3000),
                            a.env_log_tail(env, 2000)
                        )
                    })
                    .collect();
                panic!(
                    "timed out waiting for {n} hosts {what}; agents: {agents:#?}\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

fn serving(deploy: &str) -> impl Fn(&Value) -> bool + '_ {
    move |a: &Value| {
        a["deployId"] == deploy && a["deployStage"] == "SERVING_BUILD" && a["status"] == "SUCCEEDED"
    }
}

/// Processes of group `pgid` that are not zombies (init may reap orphans late).
fn live_members(pgid: i32) -> usize {
    let Ok(procs) = std::fs::read_dir("/proc") else { return 0 };
    procs
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return false };
            let f: Vec<&str> = after.split_whitespace().collect();
            f.len() > 3 && f[2].parse::<i32>().ok() == Some(pgid) && !matches!(f[0], "Z" | "X")
        })
        .count()
}

fn read_env_file(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_deploy_a_real_tarball_and_report_failures_with_their_output() {
    let f = fleet(3, "web").await;
    f.create_stage("web", "prod", "web", 3).await;
    f.client.put("/v1/envs/web/prod/script_configs", &json!({"GREETING": "hi"})).await.unwrap();

    let good = f
        .publish(
            "good",
            &[
                ("VERSION", 0o644, "a\n".into()),
                (
                    "teletraan/RESTARTING",
                    0o755,
                    "#!/bin/sh\nset -eu\nenv | sort > \"$TARGET/restart.env\"\necho restarted $(cat ../VERSION)\n".into(),
                ),
                ("teletraan/POST_RESTART", 0o755, "#!/bin/sh\necho post-restart ok\n".into()),
                ("teletraan/app.conf.tmpl", 0o644, "greeting=${TELETRAAN_GREETING:none}\n".into()),
            ],
            None,
        )
        .await;
    let d1 = f.deploy("web", "prod", &good).await;
    f.wait_hosts("web", "prod", 3, "serving the good build", serving(&d1)).await;
    for a in &f.agents {
        let target = a.target("web");
        assert_eq!(std::fs::read_to_string(target.join("VERSION")).unwrap(), "a\n");
        let env = read_env_file(&target.join("restart.env"));
        assert_eq!(env["DEPLOY_ID"], d1);
        assert_eq!(env["BUILD_ID"], good);
        assert_eq!(env["ENV_NAME"], "web");
        assert_eq!(env["STAGE_NAME"], "prod");
        assert_eq!(env["DEPLOY_STEP"], "RESTARTING");
        assert_eq!(env["OPCODE"], "DEPLOY");
        assert_eq!(env["DEPLOY_TYPE"], "REGULAR");
        assert_eq!(env["GREETING"], "hi", "script variables reach hooks");
        assert_eq!(std::fs::read_link(&target).unwrap().file_name().unwrap(), good.as_str());
        assert_eq!(
            std::fs::read_to_string(target.join("teletraan/app.conf")).unwrap(),
            "greeting=hi\n",
            "templates are rendered with the stage's script variables"
        );
        assert!(a.env_log_tail("web", 20_000).contains("restarted a"), "hook output is logged");
        let out = std::process::Command::new(find_agent_bin().unwrap())
            .arg("--config")
            .arg(&a.config)
            .args(["status", "-o", "json"])
            .output()
            .unwrap();
        let st: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(st["web"]["report"]["deployStage"], "SERVING_BUILD", "{st}");
    }

    // A build whose RESTARTING fails: the failure, its output tail and FAILING.
    let bad = f
        .publish(
            "bad",
            &[
                ("VERSION", 0o644, "b\n".into()),
                (
                    "teletraan/RESTARTING",
                    0o755,
                    "#!/bin/sh\necho 'boom: cannot bind port 8000' >&2\nexit 7\n".into(),
                ),
            ],
            None,
        )
        .await;
    let d2 = f.deploy("web", "prod", &bad).await;
    f.wait_hosts("web", "prod", 3, "failed at RESTARTING", |a| {
        a["deployId"] == d2.as_str() && a["state"] == "PAUSED_BY_SYSTEM"
    })
    .await;
    for a in f.agents("web", "prod").await {
        assert_eq!(a["deployStage"], "RESTARTING");
        assert_eq!(a["status"], "TOO_MANY_RETRY");
        assert_eq!(a["lastErrno"], 7);
        let host = a["hostName"].as_str().unwrap();
        let err: Value =
            f.client.get(&format!("/v1/envs/web/prod/agents/errors/{host}")).await.unwrap();
        assert!(
            err["errorMessage"].as_str().unwrap().contains("boom: cannot bind port 8000"),
            "the output tail reaches the coordinator: {err}"
        );
    }
    let deploy: Value = f.client.get("/v1/envs/web/prod/deploys/current").await.unwrap();
    assert_eq!(deploy["state"], "FAILING", "{deploy}");

    // A build whose bytes do not match its published hash is never staged.
    let forged = f
        .publish(
            "forged",
            &[
                ("VERSION", 0o644, "c\n".into()),
                ("teletraan/RESTARTING", 0o755, "#!/bin/sh\n".into()),
            ],
            Some(&"0".repeat(64)),
        )
        .await;
    let d3 = f.deploy("web", "prod", &forged).await;
    f.wait_hosts("web", "prod", 3, "refusing the forged build", |a| {
        a["deployId"] == d3.as_str() && a["state"] == "PAUSED_BY_SYSTEM"
    })
    .await;
    for a in &f.agents {
        let target = a.target("web");
        assert_eq!(
            std::fs::read_link(&target).unwrap().file_name().unwrap(),
            bad.as_str(),
            "the forged build was not staged"
        );
        assert!(!a.spec.root.join("builds").join(&forged).exists(), "nor extracted");
        let err: Value = f
            .client
            .get(&format!("/v1/envs/web/prod/agents/errors/{}", a.spec.hostname))
            .await
            .unwrap();
        let msg = err["errorMessage"].as_str().unwrap().to_lowercase();
        assert!(msg.contains("hash") || msg.contains("blake3"), "{msg}");
    }

    // The hosts leave the stage's capacity: each gets DELETE, forgets the env and removes
    // what it left (symlink, script config, builds).
    f.client
        .put("/v1/envs/web/prod/capacity?capacityType=GROUP", &Vec::<String>::new())
        .await
        .unwrap();
    for a in &f.agents {
        let status_file = a.spec.root.join("agent").join("env_status");
        let start = Instant::now();
        loop {
            let st: Value = serde_json::from_slice(&std::fs::read(&status_file).unwrap()).unwrap();
            if st.get("web").is_none() {
                break;
            }
            assert!(start.elapsed() < WAIT, "{} never forgot env web", a.spec.hostname);
            tokio::time::sleep(POLL).await;
        }
        assert!(std::fs::symlink_metadata(a.target("web")).is_err(), "the symlink is removed");
        assert!(!a.spec.root.join("agent").join("web_SCRIPT_CONFIG").exists());
        assert!(!a.spec.root.join("builds").join(&good).exists(), "unused builds are removed");
        assert!(!a.spec.root.join("builds").join(&bad).exists());
    }
    drop(f.cluster);
}

/// `kill -9` the agent once at every step of a deploy (mid-hook where there is one), restart
/// it, and check the deploy completes without skipping or reordering a step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_at_every_step_resumes_and_never_skips_one() {
    let mut f = fleet(1, "crash").await;
    f.create_stage("crash", "prod", "crash", 1).await;
    const HOOKS: [&str; 5] =
        ["PRE_DOWNLOAD", "POST_DOWNLOAD", "PRE_RESTART", "RESTARTING", "POST_RESTART"];
    let files = |v: &str| -> Vec<(&'static str, u32, String)> {
        let mut f: Vec<(&'static str, u32, String)> = vec![
            ("VERSION", 0o644, format!("{v}\n")),
            // Bulk (barely compressible), so that DOWNLOADING lasts long enough to be killed in.
            ("data/bulk", 0o644, bulk(v, 24 << 20)),
        ];
        for h in HOOKS {
            let name: &'static str = Box::leak(format!("teletraan/{h}").into_boxed_str());
            f.push((name, 0o755, journaling_hook(h)));
        }
        f
    };
    let a = f.publish("a", &files("a"), None).await;
    let d1 = f.deploy("crash", "prod", &a).await;
    f.wait_hosts("crash", "prod", 1, "serving build a", serving(&d1)).await;

    let b = f.publish("b", &files("b"), None).await;
    let d2 = f.deploy("crash", "prod", &b).await;
    let status_file = f.agents[0].spec.root.join("agent").join("env_status");
    let mut killed_at: Vec<String> = Vec::new();
    let start = Instant::now();
    loop {
        let st: Value = std::fs::read(&status_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let r = &st["crash"]["report"];
        let step = r["deployStage"].as_str().unwrap_or("").to_string();
        if r["deployId"] == d2.as_str() {
            if step == "SERVING_BUILD" && r["status"] == "SUCCEEDED" {
                break;
            }
            if r["status"] == "UNKNOWN" && !killed_at.contains(&step) {
                // Mid-step: hooks take 1 s; built-in steps are killed at once.
                if !matches!(step.as_str(), "DOWNLOADING" | "STAGING") {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                f.agents[0].kill9();
                killed_at.push(step);
                f.agents[0].restart().unwrap();
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "the deploy did not finish; killed at {killed_at:?}\n{}",
            f.agents[0].log_tail(4000)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f.wait_hosts("crash", "prod", 1, "serving build b", serving(&d2)).await;
    for h in HOOKS.iter().chain(&["DOWNLOADING"]) {
        assert!(killed_at.iter().any(|k| k == h), "never killed during {h}: {killed_at:?}");
    }

    let journal = std::fs::read_to_string(f.agents[0].spec.root.join("journal")).unwrap();
    let lines: Vec<(&str, &str)> = journal
        .lines()
        .filter(|l| l.ends_with(d2.as_str()))
        .filter_map(|l| {
            let mut it = l.split(' ');
            Some((it.next()?, it.next()?))
        })
        .collect();
    let first_end = |h: &str| lines.iter().position(|&(s, e)| s == h && e == "end");
    let first_start = |h: &str| lines.iter().position(|&(s, e)| s == h && e == "start");
    let mut prev_end = None;
    for h in HOOKS {
        let end = first_end(h).unwrap_or_else(|| panic!("{h} never finished:\n{journal}"));
        let start = first_start(h).unwrap();
        if let Some(prev) = prev_end {
            assert!(start > prev, "{h} started before the previous step finished:\n{journal}");
        }
        prev_end = Some(end);
        let ends = lines.iter().filter(|&&(s, e)| s == h && e == "end").count();
        assert_eq!(
            ends, 1,
            "{h} must complete exactly once (the killed attempt is stopped, not left running):\n{journal}"
        );
    }
    let target = f.agents[0].target("crash");
    assert_eq!(std::fs::read_to_string(target.join("VERSION")).unwrap(), "b\n");
    drop(f.cluster);
}

/// The leader dies mid-deploy: agents fail over by themselves and the deploy completes. Then a
/// new deploy arrives while a hook hangs: the heartbeat sees the changed goal, the hook's whole
/// process group is stopped, and the new deploy proceeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_fail_over_and_a_new_deploy_aborts_a_hanging_hook() {
    let mut f = fleet(2, "ha").await;
    f.create_stage("ha", "prod", "ha", 2).await;
    let slow = f
        .publish(
            "slow",
            &[
                ("VERSION", 0o644, "slow\n".into()),
                ("teletraan/RESTARTING", 0o755, "#!/bin/sh\nsleep 3\n".into()),
            ],
            None,
        )
        .await;
    let d1 = f.deploy("ha", "prod", &slow).await;
    f.wait_hosts("ha", "prod", 1, "restarting", |a| {
        a["deployId"] == d1.as_str() && a["deployStage"] == "RESTARTING"
    })
    .await;
    let leader = f.cluster.wait_leader(&f.cluster.ids(), Duration::from_secs(10)).await.unwrap();
    f.cluster.kill9(leader);
    let others: Vec<u64> = f.cluster.ids().into_iter().filter(|&i| i != leader).collect();
    let new_leader = f.cluster.wait_leader(&others, Duration::from_secs(30)).await.unwrap();
    f.client = Client::new(&f.cluster.base_url(new_leader), None);
    f.wait_hosts("ha", "prod", 2, "serving after the failover", serving(&d1)).await;

    let hang = f
        .publish(
            "hang",
            &[
                ("VERSION", 0o644, "hang\n".into()),
                (
                    "teletraan/RESTARTING",
                    0o755,
                    "#!/bin/sh\necho \"hang $$\" >> \"$JOURNAL\"\nsleep 600 &\nwait\n".into(),
                ),
            ],
            None,
        )
        .await;
    let d2 = f.deploy("ha", "prod", &hang).await;
    f.wait_hosts("ha", "prod", 2, "hanging in RESTARTING", |a| {
        a["deployId"] == d2.as_str() && a["deployStage"] == "RESTARTING"
    })
    .await;
    let quick = f
        .publish(
            "quick",
            &[
                ("VERSION", 0o644, "quick\n".into()),
                ("teletraan/RESTARTING", 0o755, "#!/bin/sh\n".into()),
            ],
            None,
        )
        .await;
    let d3 = f.deploy("ha", "prod", &quick).await;
    f.wait_hosts("ha", "prod", 2, "serving the new deploy", serving(&d3)).await;
    for a in &f.agents {
        assert_eq!(std::fs::read_to_string(a.target("ha").join("VERSION")).unwrap(), "quick\n");
        let journal = std::fs::read_to_string(a.spec.root.join("journal")).unwrap();
        for line in journal.lines().filter(|l| l.starts_with("hang ")) {
            let pid: i32 = line[5..].trim().parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while live_members(pid) > 0 && Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
            }
            assert_eq!(
                live_members(pid),
                0,
                "the aborted hook's group {pid} (and its sleep) must be gone"
            );
        }
        assert!(
            a.env_log_tail("ha", 20_000).contains("aborted by the coordinator"),
            "{}",
            a.env_log_tail("ha", 3000)
        );
    }
}

/// The agent also speaks Teletraan's JSON ping (for a stock Teletraan service): pointed at the
/// coordinators' HTTP ports, it polls and deploys like a native agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_teletraans_json_ping_deploys_too() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let cluster = DevCluster::start(Spec {
        nodes: 3,
        dir: dir.join("cluster"),
        base_http_port: None,
        base_raft_port: None,
        coordinator_bin: find_coordinator_bin().unwrap(),
        env: vec![],
        advertise: None,
    })
    .unwrap();
    cluster.wait_leader(&cluster.ids(), Duration::from_secs(30)).await.unwrap();
    let urls: Vec<String> =
        cluster.ids().iter().map(|&i| format!("\"{}\"", cluster.base_url(i))).collect();
    let root = dir.join("json-host");
    let agent = DevAgent::start(
        &find_agent_bin().unwrap(),
        AgentSpec {
            hostname: "json-host".into(),
            groups: vec!["json".into()],
            root: root.clone(),
            coordinators: cluster.agent_addrs(),
            ca_file: cluster.ca_file(),
            token: None,
            hook_env: vec![],
            extra_config: format!(
                "protocol = \"json\"\nservice_urls = [{}]\ndaemon_sleep_time_ms = 200\n",
                urls.join(", ")
            ),
        },
    )
    .unwrap();
    let f = Fleet {
        client: Client::new(&cluster.base_url(1), None),
        cluster,
        agents: vec![agent],
        agent_metrics: Vec::new(),
        dir,
        _tmp: tmp,
    };
    f.create_stage("json", "prod", "json", 1).await;
    let build = f
        .publish(
            "json",
            &[
                ("VERSION", 0o644, "j\n".into()),
                ("teletraan/RESTARTING", 0o755, "#!/bin/sh\n".into()),
            ],
            None,
        )
        .await;
    let d = f.deploy("json", "prod", &build).await;
    f.wait_hosts("json", "prod", 1, "serving over the JSON ping", serving(&d)).await;
    assert_eq!(std::fs::read_to_string(f.agents[0].target("json").join("VERSION")).unwrap(), "j\n");
    let log = f.agents[0].log_tail(100_000);
    assert!(log.contains("Teletraan's JSON ping") && log.contains("step ends"), "{log}");
    // The leader answered them, and counts them as JSON pings.
    let mut json_pings = 0.0;
    for id in f.cluster.ids() {
        let s = scrape(&f.cluster.base_url(id)).await;
        json_pings += sum(&s, "tt_coordinator_pings_total", &[("protocol", "json")]);
        assert_eq!(sum(&s, "tt_coordinator_pings_total", &[("protocol", "native")]), 0.0);
    }
    assert!(json_pings >= 8.0, "one ping per step at least: {json_pings}");
}

/// A build of `mib` MiB of incompressible data (`data.bin`, seeded by `seed`) uploaded to the
/// cluster (`tt://blob/<hash>`), whose RESTARTING hook runs `restart`: the build id and data.
async fn blob_build(f: &Fleet, seed: &str, mib: usize, restart: &str) -> (String, Vec<u8>) {
    let path = f.dir.join(format!("{seed}.tar.gz"));
    let data: Vec<u8> = {
        let mut out = vec![0u8; mib << 20];
        blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut out);
        out
    };
    let hook = format!("#!/bin/sh\n{restart}\n");
    let digest = ops::publish::write_tarball(
        &path,
        &[
            ("VERSION", 0o644, seed.as_bytes()),
            ("teletraan/RESTARTING", 0o755, hook.as_bytes()),
            ("data.bin", 0o644, &data),
        ],
    )
    .unwrap();
    let up = ops::publish::upload(&f.client, &path, false).await.unwrap();
    assert_eq!(up.blake3, digest.blake3_hex);
    let build: Option<Value> = f
        .client
        .post(
            "/v1/builds",
            &json!({"name": "svc", "artifactUrl": up.url, "commit": "5a4a4d0000000",
                    "branch": "main", "repo": "t/svc", "artifactBlake3": up.blake3,
                    "artifactSize": up.size}),
        )
        .await
        .unwrap();
    (build.unwrap()["id"].as_str().unwrap().to_string(), data)
}

/// The agent's swarm counters (rewritten every second), or null before the first write.
fn swarm_stats(a: &DevAgent) -> Value {
    let path = a.spec.root.join("agent").join(agent::swarm::STATS_FILE);
    std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}

/// Waits until `done` holds for every agent's swarm counters; returns them.
async fn wait_stats(f: &Fleet, what: &str, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let all: Vec<Value> = f.agents.iter().map(swarm_stats).collect();
        if all.iter().all(&done) {
            return all;
        }
        assert!(start.elapsed() < WAIT, "{what}: swarm stats: {all:#?}");
        tokio::time::sleep(POLL).await;
    }
}

/// The swarm end to end: a build uploaded to the cluster (`tt://blob/<hash>`) reaches three
/// agents through `tt-blob/1`, the coordinators' origin handing out each piece once and the
/// agents fetching the rest from each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_fetch_a_build_from_each_other_through_the_swarm() {
    let f = fleet_with(3, "swarm", true).await;
    f.create_stage("swarm", "prod", "swarm", 3).await;
    // Incompressible enough to make a few MiB of tarball: many pieces to share.
    let (build, data) = blob_build(&f, "swarm build", 6, "echo restarted").await;
    let deploy = f.deploy("swarm", "prod", &build).await;
    f.wait_hosts("swarm", "prod", 3, "serving the swarm build", serving(&deploy)).await;

    // Every agent staged the exact build; the stats show it came through the swarm, and that
    // agents served each other.
    let all =
        wait_stats(&f, "fetched through the swarm", |s| s["swarm_downloads"].as_u64() >= Some(1))
            .await;
    for (a, s) in f.agents.iter().zip(&all) {
        assert_eq!(s["fallbacks"], 0, "{}: {s}", a.spec.hostname);
        assert!(s["downloaded_bytes"].as_u64() > Some(0), "{}: {s}", a.spec.hostname);
        let staged = std::fs::read(a.target("swarm").join("data.bin")).unwrap();
        assert!(staged == data, "{}: the staged build differs", a.spec.hostname);
    }
    let from_peers: u64 = all.iter().map(|s| s["uploaded_bytes"].as_u64().unwrap_or(0)).sum();
    assert!(from_peers > 0, "no agent served another: {all:#?}");
}

/// Prefetch: with one slot for three hosts, the two kept waiting are told to fetch the build
/// before they are admitted, and do; every host stages the exact build, none falls back to the
/// coordinators. Then `tt.prefetch=false` in the stage's agent configs turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_hosts_prefetch_the_build_before_admission() {
    let f = fleet_with(3, "prefetch", true).await;
    f.create_stage("prefetch", "prod", "prefetch", 1).await;
    // First deploy: new hosts bypass the limit, nobody waits.
    let (first, _) = blob_build(&f, "prefetch v1", 1, "true").await;
    let d1 = f.deploy("prefetch", "prod", &first).await;
    f.wait_hosts("prefetch", "prod", 3, "serving v1", serving(&d1)).await;
    let before: Vec<Value> = f.agents.iter().map(swarm_stats).collect();
    assert!(
        before.iter().all(|s| s["prefetches"] == 0),
        "no prefetch on a first deploy: {before:#?}"
    );

    // Hosts restart one at a time (a slow RESTARTING): two wait, and prefetch meanwhile.
    let (second, data) = blob_build(&f, "prefetch v2", 4, "sleep 1").await;
    let d2 = f.deploy("prefetch", "prod", &second).await;
    f.wait_hosts("prefetch", "prod", 3, "serving v2", serving(&d2)).await;
    let all = wait_stats(&f, "v2 fetched", |s| s["swarm_downloads"].as_u64() >= Some(2)).await;
    let prefetched: u64 = all.iter().map(|s| s["prefetches"].as_u64().unwrap_or(0)).sum();
    assert!(prefetched >= 2, "the two waiting hosts prefetched: {all:#?}");
    // The leader saw hosts wait for the one slot, and admitted each host once per deploy.
    let leader = f.cluster.wait_leader(&f.cluster.ids(), WAIT).await.unwrap();
    let s = scrape(&f.cluster.base_url(leader)).await;
    let stage = [("env", "prefetch"), ("stage", "prod")];
    assert!(value(&s, "tt_coordinator_admission_waits_total", &stage) >= Some(2.0), "{s:#?}");
    assert!(value(&s, "tt_coordinator_admissions_total", &stage) >= Some(6.0), "{s:#?}");
    for (a, s) in f.agents.iter().zip(&all) {
        assert_eq!(s["fallbacks"], 0, "{}: {s}", a.spec.hostname);
        let staged = std::fs::read(a.target("prefetch").join("data.bin")).unwrap();
        assert!(staged == data, "{}: the staged build differs", a.spec.hostname);
    }

    // Off for the stage: the next deploy is fetched in DOWNLOADING only.
    f.client
        .put("/v1/envs/prefetch/prod/agent_configs", &json!({"tt.prefetch": "false"}))
        .await
        .unwrap();
    let (third, _) = blob_build(&f, "prefetch v3", 1, "sleep 1").await;
    let d3 = f.deploy("prefetch", "prod", &third).await;
    f.wait_hosts("prefetch", "prod", 3, "serving v3", serving(&d3)).await;
    let after = wait_stats(&f, "v3 fetched", |s| s["swarm_downloads"].as_u64() >= Some(3)).await;
    let prefetched_after: u64 = after.iter().map(|s| s["prefetches"].as_u64().unwrap_or(0)).sum();
    assert_eq!(prefetched_after, prefetched, "no prefetch with tt.prefetch=false: {after:#?}");
}

/// GETs `url`: its status and body.
async fn get_text(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The samples of a `/metrics` scrape.
async fn scrape(base: &str) -> Vec<Sample> {
    let (status, text) = get_text(&format!("{base}/metrics")).await;
    assert_eq!(status, 200, "{text}");
    parse(&text).unwrap_or_else(|e| panic!("{base}/metrics: {e}\n{text}"))
}

/// After a deploy through the swarm, the leader's and the agents' `/metrics` show it: pings,
/// admissions, the deploy's state, hook runs, downloads and swarm bytes by source; both
/// `/readyz?verbose` list their checks as passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_a_deploy_shows_pings_admissions_hooks_and_swarm_bytes() {
    let f = fleet_with(3, "obs", true).await;
    f.create_stage("obs", "prod", "obs", 3).await;
    let (build, _) = blob_build(&f, "observed build", 2, "sleep 0.2").await;
    let deploy = f.deploy("obs", "prod", &build).await;
    f.wait_hosts("obs", "prod", 3, "serving the build", serving(&deploy)).await;

    let leader = f.cluster.wait_leader(&f.cluster.ids(), WAIT).await.unwrap();
    let base = f.cluster.base_url(leader);
    let s = scrape(&base).await;
    let stage = [("env", "obs"), ("stage", "prod")];
    assert!(sum(&s, "tt_coordinator_pings_total", &[("protocol", "native")]) >= 3.0, "{s:#?}");
    assert!(
        sum(&s, "tt_coordinator_pings_total", &[("protocol", "native"), ("result", "DEPLOY")])
            >= 3.0,
        "every host got goals: {s:#?}"
    );
    assert!(sum(&s, "tt_coordinator_ping_seconds_count", &[("protocol", "native")]) >= 3.0);
    assert_eq!(value(&s, "tt_coordinator_pings_held", &[]).map(|v| v >= 0.0), Some(true));
    assert!(
        value(&s, "tt_coordinator_admissions_total", &stage) >= Some(3.0),
        "each host was admitted: {s:#?}"
    );
    assert_eq!(
        value(&s, "tt_coordinator_deploys", &[("state", "SUCCEEDING")]),
        Some(1.0),
        "the stage's deploy succeeded: {s:#?}"
    );
    assert_eq!(value(&s, "tt_coordinator_deploys", &[("state", "FAILING")]), Some(0.0));
    let lag = value(&s, "tt_coordinator_raft_apply_lag_entries", &[]).expect("apply lag");
    assert!(lag >= 0.0);
    assert!(value(&s, "tt_coordinator_raft_commit_index", &[]) > Some(0.0));
    assert!(
        value(&s, "tt_coordinator_origin_sent_bytes_total", &[]) > Some(0.0),
        "the leader's origin sent pieces: {s:#?}"
    );
    let (status, ready) = get_text(&format!("{base}/readyz?verbose")).await;
    assert_eq!(status, 200, "{ready}");
    for check in ["storage", "raft-leader-known", "applied-caught-up"] {
        assert!(ready.contains(&format!("[+]{check} ok\n")), "{ready}");
    }

    let mut from_origin = 0.0;
    for (a, addr) in f.agents.iter().zip(&f.agent_metrics) {
        let base = format!("http://{addr}");
        let s = scrape(&base).await;
        let host = &a.spec.hostname;
        assert!(
            value(&s, "tt_agent_pings_total", &[("kind", "goal"), ("result", "ok")]) > Some(0.0),
            "{host}: {s:#?}"
        );
        for step in ["DOWNLOADING", "STAGING", "RESTARTING"] {
            assert_eq!(
                value(&s, "tt_agent_steps_total", &[("step", step), ("outcome", "SUCCEEDED")]),
                Some(1.0),
                "{host} ran {step} once: {s:#?}"
            );
        }
        // The build has one hook, RESTARTING (the others are absent and not run).
        assert_eq!(
            value(
                &s,
                "tt_agent_hook_seconds_count",
                &[("step", "RESTARTING"), ("outcome", "SUCCEEDED")]
            ),
            Some(1.0),
            "{host}: {s:#?}"
        );
        assert!(
            value(&s, "tt_agent_hook_seconds_sum", &[("step", "RESTARTING")]) >= Some(0.2),
            "{host}: the hook sleeps 0.2 s: {s:#?}"
        );
        assert!(value(&s, "tt_agent_downloads_total", &[("outcome", "ok")]) >= Some(1.0));
        let received = sum(&s, "tt_agent_swarm_received_bytes_total", &[]);
        assert!(received > 0.0, "{host} fetched through the swarm: {s:#?}");
        from_origin += sum(&s, "tt_agent_swarm_received_bytes_total", &[("source", "origin")]);
        assert_eq!(value(&s, "tt_agent_swarm_peer_bans_total", &[]), Some(0.0));
        assert!(
            value(&s, "tt_agent_swarm_throttle_waits_total", &[("direction", "upload")]).is_some()
        );
        let (status, ready) = get_text(&format!("{base}/readyz?verbose")).await;
        assert_eq!(status, 200, "{host}: {ready}");
        assert!(ready.contains("[+]coordinator-reachable ok\n"), "{host}: {ready}");
        // The dashboard's host page: the deploy's steps with their durations, and where the
        // build came from (reported by the agent after DOWNLOADING).
        let (status, page) =
            get_text(&format!("{}/ui/host/{host}", f.cluster.base_url(leader))).await;
        assert_eq!(status, 200, "{host}: {page}");
        for step in ["PRE_DOWNLOAD", "DOWNLOADING", "RESTARTING", "SERVING_BUILD"] {
            assert!(page.contains(&format!("data-step=\"{step}\"")), "{host} {step}: {page}");
        }
        assert!(page.contains("Build from: swarm: "), "{host}: {page}");
    }
    assert!(from_origin > 0.0, "the origin brought the first pieces into the swarm");
}
