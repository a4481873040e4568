//! A rolling deploy on a real three-node cluster: 200 simulated agents (half over the JSON
//! ping, half over the native QUIC long-poll), `maxParallel` 10, the leader killed mid-deploy. An observer records every host's interval of
//! deploy steps and never sees more than 10 at once; every host ends on the new build.

mod common;

use std::time::{Duration, Instant};

use common::{LEADER_WAIT, get_json, http, post_json, spec};
use ops::devcluster::DevCluster;
use ops::simfleet::{Fleet, FleetSpec, LongPoll, max_overlap};
use serde_json::{Value, json};

const HOSTS: usize = 200;
const MAX_PARALLEL: usize = 10;

/// Creates stage `svc/prod` (capacity: group `fleet`, limit `max_parallel`) and two builds of
/// it; returns the build ids.
async fn stage_with_two_builds(
    c: &reqwest::Client,
    base: &str,
    max_parallel: usize,
) -> Vec<String> {
    post_json(
        c,
        format!("{base}/v1/envs"),
        json!({"envName": "svc", "stageName": "prod", "maxParallel": max_parallel}),
    )
    .await;
    let r = c
        .put(format!("{base}/v1/envs/svc/prod/capacity?capacityType=GROUP"))
        .json(&json!(["fleet"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let mut builds = vec![];
    for commit in ["1111111aaaa", "2222222bbbb"] {
        let body = json!({"name": "svc", "artifactUrl": format!("file:///svc-{commit}.tgz"), "repo": "r", "branch": "main", "commit": commit});
        let b = post_json(c, format!("{base}/v1/builds"), body).await;
        builds.push(b["id"].as_str().unwrap().to_string());
    }
    builds
}

/// Starts a deploy of `build` on `svc/prod`; returns its id.
async fn start_deploy(c: &reqwest::Client, base: &str, build: &str) -> String {
    let d =
        post_json(c, format!("{base}/v1/envs/svc/prod/deploys?buildId={build}"), json!(null)).await;
    d["id"].as_str().unwrap().to_string()
}

/// The leader-kill rollout's hosts: half ping over Teletraan's JSON ping (polling), half over
/// the native QUIC protocol (long-poll), in one stage.
struct Fleets([Fleet; 2]);

impl Fleets {
    fn serving(&self, deploy: &str) -> usize {
        self.0.iter().map(|f| f.serving(deploy)).sum()
    }

    fn intervals(&self) -> Vec<ops::simfleet::StepInterval> {
        self.0.iter().flat_map(|f| f.intervals()).collect()
    }

    fn ping_errors(&self) -> u64 {
        self.0.iter().map(|f| f.ping_errors()).sum()
    }

    async fn stop(self) {
        for f in self.0 {
            f.stop().await;
        }
    }
}

async fn wait_serving(fleet: &Fleets, deploy: &str, cluster: &DevCluster, limit: Duration) {
    let deadline = Instant::now() + limit;
    while fleet.serving(deploy) < HOSTS {
        assert!(
            Instant::now() < deadline,
            "only {} of {HOSTS} hosts serve {deploy}; node 1 log:\n{}",
            fleet.serving(deploy),
            cluster.log_tail(1, 3000)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_respects_max_parallel_across_a_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = DevCluster::start(spec(dir.path().into(), 3, vec![])).unwrap();
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, LEADER_WAIT).await.unwrap();
    let c = http();
    let base = cluster.base_url(leader);
    let builds = stage_with_two_builds(&c, &base, MAX_PARALLEL).await;
    let coordinators: Vec<String> = ids.iter().map(|i| cluster.base_url(*i)).collect();
    let ca = agent::ca_cert(&cluster.dir().join("ca")).unwrap();
    let half = |prefix: &str, long_poll: Option<LongPoll>| {
        Fleet::start(FleetSpec {
            hosts: HOSTS / 2,
            prefix: prefix.into(),
            groups: vec!["fleet".into()],
            coordinators: coordinators.clone(),
            hook: Duration::from_millis(10),
            idle_ping: Duration::from_millis(200),
            long_poll,
            zones: vec![],
        })
    };
    let fleet = Fleets([
        half("json-host-", None),
        half(
            "quic-host-",
            Some(LongPoll {
                ca,
                agent_addrs: cluster.agent_addrs(),
                token: None,
                wait: Duration::from_secs(5),
                endpoint: None,
            }),
        ),
    ]);
    // First deploy: new hosts bypass the limit.
    let d1 = start_deploy(&c, &base, &builds[0]).await;
    wait_serving(&fleet, &d1, &cluster, Duration::from_secs(120)).await;
    let dep: Value = get_json(&c, format!("{base}/v1/deploys/{d1}")).await;
    assert_eq!(dep["state"], "SUCCEEDING", "{dep}");
    assert_eq!(dep["successTotal"], HOSTS);

    // The rolling deploy, with the leader killed once a quarter of the hosts are done.
    let d2 = start_deploy(&c, &base, &builds[1]).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while fleet.serving(&d2) < HOSTS / 4 {
        assert!(
            Instant::now() < deadline,
            "rollout stalled before the kill at {}",
            fleet.serving(&d2)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill9(leader);
    let survivors: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
    let new_leader = cluster.wait_leader(&survivors, LEADER_WAIT).await.unwrap();
    wait_serving(&fleet, &d2, &cluster, Duration::from_secs(180)).await;
    let intervals = fleet.intervals();
    let overlap = max_overlap(&intervals, &d2);
    eprintln!(
        "max hosts running deploy steps at once: {overlap}; ping errors: {}",
        fleet.ping_errors()
    );
    assert!(
        overlap <= MAX_PARALLEL,
        "{overlap} hosts ran deploy steps at once; limit {MAX_PARALLEL}"
    );
    assert!(overlap >= 2, "the rollout ran hosts in parallel (max {overlap})");
    assert_eq!(
        intervals.iter().filter(|i| i.deploy_id == d2).count(),
        HOSTS,
        "each host deployed d2 once"
    );
    let base = cluster.base_url(new_leader);
    let progress: Value = c
        .put(format!("{base}/v1/envs/svc/prod/deploys/current/progress"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(progress["agents"].as_array().unwrap().len(), HOSTS);
    let dep: Value = get_json(&c, format!("{base}/v1/deploys/{d2}")).await;
    assert_eq!(dep["state"], "SUCCEEDING", "{dep}");
    let old: Value = get_json(&c, format!("{base}/v1/deploys/{d1}")).await;
    assert_eq!(old["state"], "SUCCEEDED", "the superseded deploy is final: {old}");
    fleet.stop().await;
    cluster.stop_all();
}

/// Hosts cut off mid-deploy lose their slots after the stage's lease TTL (set in its agent
/// configs, far below the cluster's default), others take them, and the cut hosts start no
/// new step until they are admitted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_hosts_lose_their_slots_after_the_lease_ttl() {
    const N: usize = 40;
    const LIMIT: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(spec(dir.path().into(), 3, vec![])).unwrap();
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, LEADER_WAIT).await.unwrap();
    let c = http();
    let base = cluster.base_url(leader);
    let builds = stage_with_two_builds(&c, &base, LIMIT).await;
    let configs = format!("{base}/v1/envs/svc/prod/agent_configs");
    let r = c.put(&configs).json(&json!({"tt.lease_ttl_ms": "500"})).send().await.unwrap();
    assert_eq!(r.status(), 400, "a lease TTL under the minimum is refused");
    let r = c.put(&configs).json(&json!({"tt.lease_ttl_ms": "2000"})).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let fleet = Fleet::start(FleetSpec {
        hosts: N,
        prefix: "host-".into(),
        groups: vec!["fleet".into()],
        coordinators: vec![cluster.base_url(leader)],
        hook: Duration::from_millis(100),
        idle_ping: Duration::from_millis(100),
        long_poll: None,
        zones: vec![],
    });
    let d1 = start_deploy(&c, &base, &builds[0]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while fleet.serving(&d1) < N {
        assert!(Instant::now() < deadline, "first deploy stalled at {}", fleet.serving(&d1));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d2 = start_deploy(&c, &base, &builds[1]).await;
    // Cut off the first hosts admitted, mid-deploy.
    let deadline = Instant::now() + Duration::from_secs(30);
    let victims = loop {
        let running = fleet.running(&d2);
        if running.len() == LIMIT {
            break running;
        }
        assert!(Instant::now() < deadline, "never saw {LIMIT} hosts running");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let victim_idx: Vec<usize> =
        victims.iter().map(|h| h.trim_start_matches("host-").parse().unwrap()).collect();
    for i in &victim_idx {
        fleet.cut_off(*i);
    }
    // The others finish without them: their slots came back after the TTL.
    let deadline = Instant::now() + Duration::from_secs(90);
    while fleet.serving(&d2) < N - LIMIT {
        assert!(
            Instant::now() < deadline,
            "rollout blocked by silent hosts at {}",
            fleet.serving(&d2)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let agents: Vec<Value> = get_json(&c, format!("{base}/v1/envs/svc/prod/agents")).await;
    let unreachable: Vec<&str> = agents
        .iter()
        .filter(|a| a["state"] == "UNREACHABLE")
        .map(|a| a["hostName"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = victims.iter().map(String::as_str).collect();
    want.sort();
    let mut got = unreachable.clone();
    got.sort();
    assert_eq!(got, want, "exactly the silent hosts lost their slots");
    // Back online: they are admitted again and finish.
    for i in &victim_idx {
        fleet.restore(*i);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while fleet.serving(&d2) < N {
        assert!(
            Instant::now() < deadline,
            "returning hosts did not finish: {}",
            fleet.serving(&d2)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let overlap = max_overlap(&fleet.intervals(), &d2);
    assert!(overlap <= LIMIT, "{overlap} hosts ran deploy steps at once; limit {LIMIT}");
    fleet.stop().await;
}

/// Hosts silent past the stale threshold that hold no slot are shown UNREACHABLE (Teletraan's
/// agent janitor), and are themselves again when they return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_serving_hosts_turn_unreachable_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        DevCluster::start(spec(dir.path().into(), 3, vec![("TT_HOST_STALE_MS", "1000")])).unwrap();
    let leader = cluster.wait_leader(&cluster.ids(), LEADER_WAIT).await.unwrap();
    let c = http();
    let base = cluster.base_url(leader);
    let builds = stage_with_two_builds(&c, &base, 1).await;
    let fleet = Fleet::start(FleetSpec {
        hosts: 3,
        prefix: "host-".into(),
        groups: vec!["fleet".into()],
        coordinators: vec![base.clone()],
        hook: Duration::from_millis(10),
        idle_ping: Duration::from_millis(100),
        long_poll: None,
        zones: vec![],
    });
    let d1 = start_deploy(&c, &base, &builds[0]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while fleet.serving(&d1) < 3 {
        assert!(Instant::now() < deadline, "first deploy stalled at {}", fleet.serving(&d1));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state_of = |agents: &[Value], host: &str| {
        agents.iter().find(|a| a["hostName"] == host).map(|a| a["state"].clone())
    };
    fleet.cut_off(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let agents: Vec<Value> = get_json(&c, format!("{base}/v1/envs/svc/prod/agents")).await;
        if state_of(&agents, "host-0") == Some(Value::from("UNREACHABLE")) {
            for h in ["host-1", "host-2"] {
                assert_eq!(state_of(&agents, h), Some(Value::from("NORMAL")), "{h} still pings");
            }
            break;
        }
        assert!(Instant::now() < deadline, "host-0 never turned UNREACHABLE: {agents:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.restore(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let agents: Vec<Value> = get_json(&c, format!("{base}/v1/envs/svc/prod/agents")).await;
        if state_of(&agents, "host-0") == Some(Value::from("NORMAL")) {
            break;
        }
        assert!(Instant::now() < deadline, "host-0 did not recover: {agents:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.stop().await;
}
