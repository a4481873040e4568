//! Schedules and deploy constraints on a real three-node cluster with simulated agents over the
//! JSON ping: a two-wave schedule whose first cooldown waits for an override stops after wave 1
//! until the override, then completes; a constraint of one host per `az` tag value never lets
//! two hosts of one zone run deploy steps at once (the agents' own records say so).

mod common;

use std::time::{Duration, Instant};

use common::{LEADER_WAIT, get_json, http, post_json, spec};
use ops::devcluster::DevCluster;
use ops::simfleet::{Fleet, FleetSpec, max_overlap};
use serde_json::{Value, json};

const HOSTS: usize = 6;
const ZONES: [&str; 3] = ["a", "b", "c"];
/// Hosts in wave 1.
const WAVE_1: usize = 2;
/// How long the test watches a stopped wave for hosts that should not start.
const HOLD_WATCH: Duration = Duration::from_secs(2);
const ROLLOUT_LIMIT: Duration = Duration::from_secs(120);

async fn wait_for(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_stop_until_override_and_constraint_keeps_one_host_per_zone() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = DevCluster::start(spec(dir.path().into(), 3, vec![])).unwrap();
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, LEADER_WAIT).await.unwrap();
    let c = http();
    let base = cluster.base_url(leader);
    post_json(
        &c,
        format!("{base}/v1/envs"),
        json!({"envName": "svc", "stageName": "prod", "maxParallel": HOSTS}),
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
        let b = post_json(&c, format!("{base}/v1/builds"), body).await;
        builds.push(b["id"].as_str().unwrap().to_string());
    }
    let fleet_spec = FleetSpec {
        hosts: HOSTS,
        prefix: "host-".into(),
        groups: vec!["fleet".into()],
        coordinators: ids.iter().map(|i| cluster.base_url(*i)).collect(),
        hook: Duration::from_millis(30),
        idle_ping: Duration::from_millis(100),
        long_poll: None,
        zones: ZONES.iter().map(|z| z.to_string()).collect(),
    };
    let fleet = Fleet::start(fleet_spec.clone());
    let deploy = async |build: &str| -> String {
        let d =
            post_json(&c, format!("{base}/v1/envs/svc/prod/deploys?buildId={build}"), json!(null))
                .await;
        d["id"].as_str().unwrap().to_string()
    };
    let d1 = deploy(&builds[0]).await;
    wait_for("the first deploy", ROLLOUT_LIMIT, async || fleet.serving(&d1) == HOSTS).await;

    // Bad input: 400, nothing stored.
    let r = c
        .put(format!("{base}/v1/schedules/svc/prod/schedules"))
        .json(&json!({"totalSessions": 2, "hostNumbers": "2", "cooldownTimes": "-1,0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(c.get(format!("{base}/v1/schedules/svc/prod")).send().await.unwrap().status(), 404);

    let sched = c
        .put(format!("{base}/v1/schedules/svc/prod/schedules"))
        .json(&json!({"totalSessions": 2, "hostNumbers": format!("{WAVE_1},2"), "cooldownTimes": "-1,0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sched.status(), 200);
    let sched: Value = sched.json().await.unwrap();
    assert_eq!(sched["state"], "NOT_STARTED", "{sched}");
    let by_id: Value =
        get_json(&c, format!("{base}/v1/schedules/svc/prod/{}", sched["id"].as_str().unwrap()))
            .await;
    assert_eq!(by_id["hostNumbers"], format!("{WAVE_1},2"));
    let con = post_json(
        &c,
        format!("{base}/v1/envs/svc/prod/deploy_constraint"),
        json!({"constraintKey": "az", "maxParallel": 1}),
    )
    .await;
    assert_eq!(con["constraintType"], "ALL_GROUPS_IN_PARALLEL", "{con}");
    // Every host reports its zone on its next ping.
    wait_for("the tag sync", ROLLOUT_LIMIT, async || {
        let v: Value = get_json(&c, format!("{base}/v1/envs/svc/prod/deploy_constraint")).await;
        v["state"] == "FINISHED"
    })
    .await;

    let d2 = deploy(&builds[1]).await;
    wait_for("wave 1 to cool down", ROLLOUT_LIMIT, async || {
        let v: Value = get_json(&c, format!("{base}/v1/schedules/svc/prod")).await;
        v["state"] == "COOLING_DOWN"
    })
    .await;
    // The cooldown is negative: nothing more starts until the override.
    tokio::time::sleep(HOLD_WATCH).await;
    let started = fleet.intervals().iter().filter(|i| i.deploy_id == d2).count();
    assert_eq!(started, WAVE_1, "wave 1 deploys {WAVE_1} hosts, then waits");
    assert_eq!(fleet.serving(&d2), WAVE_1);
    let wrong = c
        .put(format!("{base}/v1/schedules/svc/prod/override?sessionNumber=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 409, "only the current session can be overridden");
    let ok = c
        .put(format!("{base}/v1/schedules/svc/prod/override?sessionNumber=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    wait_for("the rest of the waves", ROLLOUT_LIMIT, async || fleet.serving(&d2) == HOSTS).await;
    wait_for("the schedule to finish", ROLLOUT_LIMIT, async || {
        let v: Value = get_json(&c, format!("{base}/v1/schedules/svc/prod")).await;
        v["state"] == "FINAL"
    })
    .await;

    // One host per zone at a time, by the agents' own records.
    let intervals = fleet.intervals();
    for (z, zone) in ZONES.iter().enumerate() {
        let of_zone: Vec<_> = intervals
            .iter()
            .filter(|i| {
                let n: usize = i.host.trim_start_matches("host-").parse().unwrap();
                fleet_spec.zone(n) == Some(ZONES[z])
            })
            .cloned()
            .collect();
        assert_eq!(of_zone.iter().filter(|i| i.deploy_id == d2).count(), HOSTS / ZONES.len());
        let overlap = max_overlap(&of_zone, &d2);
        assert_eq!(overlap, 1, "zone {zone}: {overlap} hosts deployed at once");
    }
    let dep: Value = get_json(&c, format!("{base}/v1/deploys/{d2}")).await;
    assert_eq!(dep["state"], "SUCCEEDING", "{dep}");
    fleet.stop().await;
    cluster.stop_all();
}
