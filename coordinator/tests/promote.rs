//! Auto-promotion on real coordinators: the promote config and tag endpoints (Teletraan's
//! shapes, bad input answered 400 naming the field with nothing changed), and a canary -> prod
//! chain on a three-node cluster where a deploy that succeeds on canary reaches prod with no
//! operator action.

mod common;

use std::time::{Duration, Instant};

use common::{LEADER_WAIT, get_json, http, post_json, spec};
use ops::devcluster::DevCluster;
use ops::simfleet::{Fleet, FleetSpec};
use serde_json::{Value, json};

/// Hang guard for each wait below.
const WAIT: Duration = Duration::from_secs(60);

async fn body(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn stage(c: &reqwest::Client, base: &str, name: &str, group: &str) {
    post_json(c, format!("{base}/v1/envs"), json!({"envName": "svc", "stageName": name})).await;
    let r = c
        .put(format!("{base}/v1/envs/svc/{name}/capacity?capacityType=GROUP"))
        .json(&json!([group]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

async fn publish(c: &reqwest::Client, base: &str, commit: &str) -> String {
    let b = json!({"name": "svc", "artifactUrl": format!("file:///svc-{commit}.tgz"), "repo": "r", "branch": "master", "commit": commit});
    post_json(c, format!("{base}/v1/builds"), b).await["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_config_and_tags_api() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(spec(dir.path().into(), 1, vec![])).unwrap();
    cluster.wait_leader(&[1], LEADER_WAIT).await.unwrap();
    let base = cluster.base_url(1);
    let c = http();
    stage(&c, &base, "canary", "g-canary").await;
    stage(&c, &base, "prod", "g-prod").await;
    let url = format!("{base}/v1/envs/svc/prod/promotes");

    // No config yet: Teletraan's default.
    let default: Value = get_json(&c, url.clone()).await;
    assert_eq!(default["type"], "MANUAL", "{default}");
    assert_eq!(default["queueSize"], 1);
    assert_eq!(default["delay"], 0);
    assert_eq!(default["disablePolicy"], "AUTO");
    assert_eq!(default["failPolicy"], "CONTINUE");
    assert!(default["predStage"].is_null());

    // Bad input: 400 naming the field; nothing changes, nothing is recorded.
    let bad = [
        (json!({"queueSize": 0}), "queueSize"),
        (json!({"queueSize": 11}), "queueSize"),
        (json!({"delay": -5}), "delay"),
        (json!({"type": "SOMETIMES"}), "type"),
        (json!({"failPolicy": "PANIC"}), "failPolicy"),
        (json!({"schedule": "0 61 * * *"}), "schedule"),
        (json!({"predStage": "nope"}), "predStage"),
        (json!({"predStage": "prod"}), "predStage"),
        (json!({"type": "AUTO"}), "predStage"),
        (json!({"queueSize": "many"}), "queueSize"),
    ];
    for (patch, field) in bad {
        let (s, e) = body(c.put(&url).json(&patch).send().await.unwrap()).await;
        assert_eq!(s, 400, "{patch}: {e}");
        assert!(e["message"].as_str().unwrap().contains(field), "{patch}: {e}");
        let now: Value = get_json(&c, url.clone()).await;
        assert_eq!(now, default, "{patch} changed nothing");
    }
    let history: Vec<Value> = get_json(&c, format!("{base}/v1/envs/svc/prod/history")).await;
    assert!(history.iter().all(|h| h["type"] != "Env Promote Config"), "{history:?}");

    // A good config, then a partial update.
    let good = json!({"type": "AUTO", "predStage": "canary", "queueSize": 2, "delay": 5,
        "schedule": "0 0 10 ? * MON-FRI", "failPolicy": "ROLLBACK", "disablePolicy": "MANUAL"});
    let r = c.put(&url).json(&good).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = c.put(&url).json(&json!({"delay": 7})).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let p: Value = get_json(&c, url.clone()).await;
    assert_eq!(
        (&p["type"], &p["predStage"], &p["queueSize"], &p["delay"], &p["failPolicy"]),
        (&json!("AUTO"), &json!("canary"), &json!(2), &json!(7), &json!("ROLLBACK")),
        "{p}"
    );
    assert_eq!(p["lastOperator"], "anonymous");
    let history: Vec<Value> = get_json(&c, format!("{base}/v1/envs/svc/prod/history")).await;
    assert_eq!(history[0]["type"], "Env Promote Config");
    let change = history[0]["configChange"].as_str().unwrap();
    assert!(change.contains(r#""delay":7"#), "the request is recorded: {change}");

    // Tags: a BAD build; Teletraan's rewrite of targetId to the build name.
    let b1 = publish(&c, &base, "1111111aaaa").await;
    let tags = format!("{base}/v1/tags");
    for (tag, field) in [
        (json!({"value": "NOT_A_TAG", "targetId": b1}), "value"),
        (json!({"targetId": b1}), "value"),
        (json!({"value": "BAD_BUILD"}), "targetId"),
        (json!({"value": "BAD_BUILD", "targetId": "no-such-build"}), "targetId"),
        (json!({"value": "ENABLE_ENV", "targetId": b1}), "value"),
    ] {
        let (s, e) = body(c.post(&tags).json(&tag).send().await.unwrap()).await;
        assert_eq!(s, 400, "{tag}: {e}");
        assert!(e["message"].as_str().unwrap().contains(field), "{tag}: {e}");
    }
    let targets: Vec<Value> = get_json(&c, format!("{tags}/targets/{b1}")).await;
    assert!(targets.is_empty(), "refused tags left nothing: {targets:?}");
    let tag = json!({"value": "BAD_BUILD", "targetType": "BUILD", "targetId": b1, "comments": "crashes on start"});
    let r = c.post(&tags).json(&tag).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let t: Value = r.json().await.unwrap();
    assert_eq!(location, format!("/v1/tags/{}", t["id"].as_str().unwrap()));
    assert_eq!(t["targetId"], "svc", "{t}");
    assert_eq!(t["value"], "BAD_BUILD");
    let bt: Value = get_json(&c, format!("{base}/v1/builds/{b1}/tags")).await;
    assert_eq!(bt["tag"]["id"], t["id"], "{bt}");
    let latest: Value = get_json(&c, format!("{tags}/targets/{b1}/latest")).await;
    assert_eq!(latest["id"], t["id"]);
    let bad_ones: Vec<Value> = get_json(&c, format!("{tags}/values/BAD_BUILD")).await;
    assert_eq!(bad_ones.len(), 1);

    // A BAD build is refused without force, with the tag in the message.
    let deploy = format!("{base}/v1/envs/svc/canary/deploys?buildId={b1}");
    let (s, e) = body(c.post(&deploy).send().await.unwrap()).await;
    assert_eq!(s, 409, "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("BAD_BUILD") && msg.contains("crashes on start"), "{msg}");
    let (s, _) =
        body(c.get(format!("{base}/v1/envs/svc/canary/deploys/current")).send().await.unwrap())
            .await;
    assert_eq!(s, 404, "no deploy was created");
    let (s, d) = body(c.post(format!("{deploy}&force=true")).send().await.unwrap()).await;
    assert_eq!(s, 201, "{d}");

    // Deleting the tag.
    let r = c.delete(format!("{base}{location}")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = c.get(format!("{base}{location}")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

/// Waits until `svc/prod`'s current deploy was promoted from `from`; returns it.
async fn promoted_from(c: &reqwest::Client, base: &str, from: &str, cluster: &DevCluster) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = c.get(format!("{base}/v1/envs/svc/prod/deploys/current")).send().await.unwrap();
        if r.status() == 200 {
            let d: Value = r.json().await.unwrap();
            if d["fromDeployId"] == from {
                return d;
            }
        }
        assert!(
            Instant::now() < deadline,
            "prod was not promoted from {from}; leader log:\n{}",
            cluster.log_tail(1, 3000)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_serving(fleet: &Fleet, deploy: &str, hosts: usize) {
    let deadline = Instant::now() + WAIT;
    while fleet.serving(deploy) < hosts {
        assert!(Instant::now() < deadline, "{} of {hosts} serve {deploy}", fleet.serving(deploy));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_success_is_promoted_to_prod_without_an_operator() {
    const HOSTS: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        DevCluster::start(spec(dir.path().into(), 3, vec![("TT_PROMOTE_INTERVAL_MS", "200")]))
            .unwrap();
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, LEADER_WAIT).await.unwrap();
    let c = http();
    let base = cluster.base_url(leader);
    stage(&c, &base, "canary", "g-canary").await;
    stage(&c, &base, "prod", "g-prod").await;
    // Configured through a follower: the write is forwarded to the leader.
    let follower = ids.iter().copied().find(|i| *i != leader).unwrap();
    let r = c
        .put(format!("{}/v1/envs/svc/prod/promotes", cluster.base_url(follower)))
        .json(&json!({"type": "AUTO", "predStage": "canary"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let fleet = |group: &str, prefix: &str| {
        Fleet::start(FleetSpec {
            hosts: HOSTS,
            prefix: prefix.into(),
            groups: vec![group.into()],
            coordinators: ids.iter().map(|i| cluster.base_url(*i)).collect(),
            hook: Duration::from_millis(10),
            idle_ping: Duration::from_millis(100),
            long_poll: None,
            zones: vec![],
        })
    };
    let canary = fleet("g-canary", "canary-");
    let prod = fleet("g-prod", "prod-");

    for commit in ["1111111aaaa", "2222222bbbb"] {
        // Deploy on canary only; prod follows on its own.
        let build = publish(&c, &base, commit).await;
        let url = format!("{base}/v1/envs/svc/canary/deploys?buildId={build}");
        let d = post_json(&c, url, json!(null)).await;
        let canary_deploy = d["id"].as_str().unwrap().to_string();
        wait_serving(&canary, &canary_deploy, HOSTS).await;
        let promoted = promoted_from(&c, &base, &canary_deploy, &cluster).await;
        assert_eq!(promoted["operator"], "AutoPromoter", "{promoted}");
        assert_eq!(promoted["buildId"], build.as_str());
        assert_eq!(promoted["type"], "REGULAR");
        let prod_deploy = promoted["id"].as_str().unwrap().to_string();
        wait_serving(&prod, &prod_deploy, HOSTS).await;
        let deadline = Instant::now() + WAIT;
        loop {
            let d: Value = get_json(&c, format!("{base}/v1/deploys/{prod_deploy}")).await;
            if d["state"] == "SUCCEEDING" && d["acceptanceStatus"] == "ACCEPTED" {
                break;
            }
            assert!(Instant::now() < deadline, "prod deploy did not succeed: {d}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Exactly one promotion per canary deploy, and auto-promotion is still on.
    let deploys: Value = get_json(&c, format!("{base}/v1/deploys?operator=AutoPromoter")).await;
    assert_eq!(deploys["total"], 2, "{deploys}");
    let p: Value = get_json(&c, format!("{base}/v1/envs/svc/prod/promotes")).await;
    assert_eq!(p["type"], "AUTO");
    canary.stop().await;
    prod.stop().await;
}
