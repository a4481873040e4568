//! Webhooks on a real three-node cluster: the stage's hooks through `/web_hooks` (bad hooks
//! refused with nothing changed, changes in the config history), a deploy's pre-deploy hooks
//! sent at creation and post-deploy hooks at its first SUCCEEDING, with Teletraan's variables
//! substituted; a receiver that fails twice is retried until it answers, a closed port is given
//! up after the last attempt, and every outcome is recorded on the deploy.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use common::{LEADER_WAIT, get_json, http, post_json, spec};
use ops::devcluster::DevCluster;
use ops::simfleet::{Fleet, FleetSpec};
use serde_json::{Value, json};

/// Hang guard for each wait below (the closed port's five attempts take about 8 s).
const WAIT: Duration = Duration::from_secs(60);
/// Requests to `/flaky` answered 503 before it starts answering 200.
const FLAKY_FAILURES: usize = 2;

#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: String,
    deploy_header: Option<String>,
    body: String,
}

#[derive(Default)]
struct Receiver {
    seen: Mutex<Vec<Seen>>,
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut seen = r.seen.lock().unwrap();
    seen.push(Seen {
        method,
        uri: uri.to_string(),
        deploy_header: headers.get("x-deploy").map(|v| v.to_str().unwrap().to_string()),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let flaky_so_far = seen.iter().filter(|s| s.uri.starts_with("/flaky")).count();
    if uri.path() == "/flaky" && flaky_so_far <= FLAKY_FAILURES {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn start_receiver() -> (String, Arc<Receiver>) {
    let state = Arc::new(Receiver::default());
    let app = Router::new().fallback(receive).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), state)
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_are_sent_retried_and_their_outcomes_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(spec(dir.path().into(), 3, vec![])).unwrap();
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, LEADER_WAIT).await.unwrap();
    let follower = ids.iter().copied().find(|i| *i != leader).unwrap();
    let c = http();
    let base = cluster.base_url(leader);
    let (recv, receiver) = start_receiver().await;
    post_json(&c, format!("{base}/v1/envs"), json!({"envName": "svc", "stageName": "prod"})).await;
    let r = c
        .put(format!("{base}/v1/envs/svc/prod/capacity?capacityType=GROUP"))
        .json(&json!(["g"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let hooks_url = format!("{}/v1/envs/svc/prod/web_hooks", cluster.base_url(follower));

    // Bad hooks: 400 naming the hook, nothing stored.
    for (bad, what) in [
        (json!({"preDeployHooks": [{"url": "ftp://x"}]}), "preDeployHooks[0]"),
        (json!({"postDeployHooks": [{"url": "http://x", "method": "PATCH"}]}), "PATCH"),
        (json!({"preDeployHooks": [{"url": "http://x", "headers": "no-colon"}]}), "no-colon"),
        (json!({"preDeployHooks": "not a list"}), "preDeployHooks"),
    ] {
        let r = c.put(&hooks_url).json(&bad).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let e: Value = r.json().await.unwrap();
        assert!(e["message"].as_str().unwrap().contains(what), "{bad}: {e}");
    }
    let none: Value = get_json(&c, hooks_url.clone()).await;
    assert_eq!(none, json!({"preDeployHooks": [], "postDeployHooks": []}));

    // Set through a follower (forwarded to the leader).
    let closed = closed_port();
    let hooks = json!({
        "preDeployHooks": [
            {
                "method": "POST",
                "url": format!("{recv}/flaky?deploy=$TELETRAAN_DEPLOY_ID"),
                "headers": "X-Deploy: $TELETRAAN_DEPLOY_ID; Content-Type: application/json",
                "body": r#"{"state": $TELETRAAN_NUMERIC_DEPLOY_STATE, "type": "$TELETRAAN_DEPLOY_TYPE"}"#
            },
            {"method": "GET", "url": format!("http://127.0.0.1:{closed}/never")}
        ],
        "postDeployHooks": [
            {"method": "PUT", "url": format!("{recv}/post/$TELETRAAN_DEPLOY_ID"), "body": "$TELETRAAN_NUMERIC_DEPLOY_STATE"}
        ]
    });
    let r = c.put(&hooks_url).json(&hooks).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let stored: Value = get_json(&c, hooks_url.clone()).await;
    assert_eq!(stored["preDeployHooks"][0]["url"], hooks["preDeployHooks"][0]["url"]);
    assert_eq!(stored["postDeployHooks"].as_array().unwrap().len(), 1);
    let history: Value = get_json(&c, format!("{base}/v1/envs/svc/prod/history")).await;
    assert!(history.to_string().contains("Env Webhook Config"), "{history}");

    // A deploy to two hosts.
    let fleet = Fleet::start(FleetSpec {
        hosts: 2,
        prefix: "wh-".into(),
        groups: vec!["g".into()],
        coordinators: ids.iter().map(|i| cluster.base_url(*i)).collect(),
        hook: Duration::from_millis(10),
        idle_ping: Duration::from_millis(100),
        long_poll: None,
        zones: vec![],
    });
    let b = json!({"name": "svc", "artifactUrl": "file:///svc-1.tgz", "repo": "r", "branch": "main", "commit": "1111111aaaa"});
    let build =
        post_json(&c, format!("{base}/v1/builds"), b).await["id"].as_str().unwrap().to_string();
    let d = post_json(&c, format!("{base}/v1/envs/svc/prod/deploys?buildId={build}"), json!(null))
        .await;
    let deploy = d["id"].as_str().unwrap().to_string();

    // Every delivery reaches a final state.
    let deliveries_url = format!("{base}/v1/deploys/{deploy}/webhooks");
    let deadline = Instant::now() + WAIT;
    let deliveries = loop {
        let all: Vec<Value> = get_json(&c, deliveries_url.clone()).await;
        if all.len() == 3 && all.iter().all(|d| d["state"] != "PENDING") {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries did not finish: {all:#?}\nleader log:\n{}",
            cluster.log_tail(leader, 3000)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let by = |phase: &str, index: u64| {
        deliveries
            .iter()
            .find(|d| d["phase"] == phase && d["index"] == index)
            .unwrap_or_else(|| panic!("no {phase}[{index}] in {deliveries:#?}"))
            .clone()
    };
    let flaky = by("PRE", 0);
    assert_eq!(flaky["state"], "SUCCEEDED", "{flaky}");
    assert_eq!(flaky["attempts"], FLAKY_FAILURES as u64 + 1, "{flaky}");
    assert_eq!(flaky["deployState"], "RUNNING");
    let dead = by("PRE", 1);
    assert_eq!(dead["state"], "FAILED", "{dead}");
    assert_eq!(dead["attempts"], 5, "every attempt was made: {dead}");
    assert!(dead["detail"].as_str().unwrap().to_lowercase().contains("connect"), "{dead}");
    let post = by("POST", 0);
    assert_eq!(post["state"], "SUCCEEDED", "{post}");
    assert_eq!(post["attempts"], 1);
    assert_eq!(post["deployState"], "SUCCEEDING");
    let state: Value = get_json(&c, format!("{base}/v1/deploys/{deploy}")).await;
    assert_eq!(state["state"], "SUCCEEDING", "post hooks fire at the first SUCCEEDING");

    // What the receiver saw: the variables substituted in url, header and body.
    let seen = receiver.seen.lock().unwrap().clone();
    let flaky_calls: Vec<&Seen> = seen.iter().filter(|s| s.uri.starts_with("/flaky")).collect();
    assert_eq!(flaky_calls.len(), FLAKY_FAILURES + 1, "{seen:#?}");
    for s in &flaky_calls {
        assert_eq!(s.method, Method::POST);
        assert_eq!(s.uri, format!("/flaky?deploy={deploy}"));
        assert_eq!(s.deploy_header.as_deref(), Some(deploy.as_str()));
        let body: Value = serde_json::from_str(&s.body).unwrap();
        assert_eq!(body, json!({"state": 0, "type": "REGULAR"}));
    }
    let posts: Vec<&Seen> = seen.iter().filter(|s| s.uri.starts_with("/post/")).collect();
    assert_eq!(posts.len(), 1, "{seen:#?}");
    assert_eq!(posts[0].method, Method::PUT);
    assert_eq!(posts[0].uri, format!("/post/{deploy}"));
    assert_eq!(posts[0].body, "2", "SUCCEEDING's ordinal");

    // The deliveries are replicated: a follower's local read has them too.
    let local: Vec<Value> =
        get_json(&c, format!("{}/v1/deploys/{deploy}/webhooks", cluster.base_url(follower))).await;
    assert_eq!(local, deliveries);
    fleet.stop().await;
}
