//! The `/v1` API on a real node: Teletraan shapes and status codes, and bad input answered with
//! a clear error that changes nothing.

use std::time::Duration;

mod common;

use common::spec;
use ops::devcluster::DevCluster;
use serde_json::{Value, json};

async fn body(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_builds_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        DevCluster::start(spec(dir.path().into(), 1, vec![("TT_MAX_BODY_BYTES", "4096")])).unwrap();
    cluster.wait_leader(&[1], Duration::from_secs(30)).await.unwrap();
    let base = cluster.base_url(1);
    let c = reqwest::Client::new();
    let post = |path: &str, v: Value| c.post(format!("{base}{path}")).json(&v).send();

    // Create a stage: 201, Location, Teletraan defaults and exact field names.
    let (s, env) =
        body(post("/v1/envs", json!({"envName": "svc", "stageName": "prod"})).await.unwrap()).await;
    assert_eq!(s, 201, "{env}");
    assert_eq!(env["id"].as_str().unwrap().len(), 22);
    assert_eq!(env["buildName"], "svc");
    assert_eq!(env["maxParallel"], 1);
    assert_eq!(env["successThreshold"], 10000);
    assert_eq!(env["stuckThreshold"], 600);
    assert_eq!(env["description"], "svc stage for env prod");
    assert_eq!(env["acceptanceType"], "AUTO");
    assert!(env.get("deployId").is_some_and(Value::is_null), "unset fields are null: {env}");
    // Same name again: 409, nothing changes.
    let (s, e) = body(
        post("/v1/envs", json!({"envName": "svc", "stageName": "prod", "maxParallel": 9}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 409, "{e}");
    assert_eq!(e["code"], 409);
    let (_, again) = body(c.get(format!("{base}/v1/envs/svc/prod")).send().await.unwrap()).await;
    assert_eq!(again["maxParallel"], 1);
    // By id, list, names.
    let (s, by_id) = body(
        c.get(format!("{base}/v1/envs/{}", env["id"].as_str().unwrap())).send().await.unwrap(),
    )
    .await;
    assert_eq!((s, by_id["stageName"].clone()), (200, json!("prod")));
    let (_, list) = body(c.get(format!("{base}/v1/envs?envName=svc")).send().await.unwrap()).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    // PUT with null = unchanged; percentage mode zeroes the absolute one.
    let r = c
        .put(format!("{base}/v1/envs/svc/prod"))
        .json(&json!({"maxParallelPct": 20, "description": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, env2) = body(c.get(format!("{base}/v1/envs/svc/prod")).send().await.unwrap()).await;
    assert_eq!(
        (env2["maxParallelPct"].clone(), env2["maxParallel"].clone()),
        (json!(20), json!(0))
    );
    assert_eq!(env2["description"], "svc stage for env prod");

    // Bad input: each a clear 4xx naming what was wrong, and no change.
    let bad: Vec<(Value, &str)> = vec![
        (json!({"envName": "svc", "stageName": "x", "maxParallel": "lots"}), "maxParallel"),
        (
            json!({"envName": "svc", "stageName": "x", "acceptanceType": "SOMETIMES"}),
            "acceptanceType",
        ),
        (json!({"envName": "s v c", "stageName": "x"}), "envName"),
        (json!({"stageName": "x"}), "envName is required"),
        (
            json!({"envName": "svc", "stageName": "x", "successThreshold": 10001}),
            "successThreshold",
        ),
    ];
    for (payload, needle) in bad {
        let (s, e) = body(post("/v1/envs", payload.clone()).await.unwrap()).await;
        assert_eq!(s, 400, "{payload} -> {e}");
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{payload}: {e} should mention {needle}"
        );
    }
    let r = c
        .post(format!("{base}/v1/envs"))
        .header("content-type", "application/json")
        .body("{\"envName\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let big = "x".repeat(8192);
    let (s, e) = body(
        post("/v1/envs", json!({"envName": "svc", "stageName": "big", "description": big}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 413, "{e}");
    let (s, _) = body(c.get(format!("{base}/v1/envs/svc/x")).send().await.unwrap()).await;
    assert_eq!(s, 404);
    let (_, list) = body(c.get(format!("{base}/v1/envs")).send().await.unwrap()).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "no bad request created a stage");

    // Builds: required fields, id shape, filters, delete.
    let (s, e) =
        body(post("/v1/builds", json!({"name": "svc", "artifactUrl": "file:///a"})).await.unwrap())
            .await;
    assert_eq!(s, 400);
    assert!(e["message"].as_str().unwrap().contains("required"), "{e}");
    let mut ids = Vec::new();
    for (i, branch) in ["main", "main", "dev"].iter().enumerate() {
        let (s, b) = body(
            post("/v1/builds", json!({"name": "svc", "artifactUrl": format!("file:///a/{i}"), "repo": "r", "branch": branch, "commit": format!("abcdef{i}123456")}))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(s, 201, "{b}");
        let id = b["id"].as_str().unwrap().to_string();
        assert!(id.ends_with(&format!("_abcdef{i}")), "id is uuid_commit7: {id}");
        assert_eq!(b["commitShort"], format!("abcdef{i}"));
        assert_eq!(b["publishInfo"], "UNKNOWN");
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (_, main) =
        body(c.get(format!("{base}/v1/builds?name=svc&branch=main")).send().await.unwrap()).await;
    let got: Vec<&str> =
        main.as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(got, vec![ids[1].as_str(), ids[0].as_str()], "newest first, filtered by branch");
    let (_, names) = body(c.get(format!("{base}/v1/builds/names")).send().await.unwrap()).await;
    assert_eq!(names, json!(["svc"]));
    let r = c.delete(format!("{base}/v1/builds/{}", ids[2])).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let (s, _) = body(c.get(format!("{base}/v1/builds/{}", ids[2])).send().await.unwrap()).await;
    assert_eq!(s, 404);
    let (s, _) =
        body(c.get(format!("{base}/v1/envs/svc/prod/deploys/current")).send().await.unwrap()).await;
    assert_eq!(s, 404, "a stage that never deployed has no current deploy");
    let (s, d) = body(c.get(format!("{base}/v1/deploys")).send().await.unwrap()).await;
    assert_eq!((s, d["total"].clone()), (200, json!(0)));

    // Stages by capacity group; deploy list filters (repeatable ones, build fields), bad
    // filters named.
    let r = c
        .put(format!("{base}/v1/envs/svc/prod/capacity?capacityType=GROUP"))
        .json(&json!(["g1"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let get = |path: String| c.get(format!("{base}{path}")).send();
    let (_, by_group) = body(get("/v1/envs?groupName=g1".into()).await.unwrap()).await;
    assert_eq!(by_group[0]["stageName"], "prod", "{by_group}");
    let (_, none) = body(get("/v1/envs?groupName=g2".into()).await.unwrap()).await;
    assert_eq!(none, json!([]));
    let mut deploys = Vec::new();
    for id in &ids[..2] {
        let (s, d) = body(
            post(&format!("/v1/envs/svc/prod/deploys?buildId={id}"), json!(null)).await.unwrap(),
        )
        .await;
        assert_eq!(s, 201, "{d}");
        deploys.push(d["id"].as_str().unwrap().to_string());
        // Lists sort by start date (ties by id); two deploys started in the same millisecond
        // would have no creation order to check below.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    for (query, want) in [
        ("deployState=SUCCEEDED&deployState=ABORTED", vec![deploys[0].as_str()]),
        ("deployState=SUCCEEDING&deployState=SUCCEEDED", vec![&deploys[1], &deploys[0]]),
        ("commit=abcdef1&repo=r&branch=main", vec![&deploys[1]]),
        ("branch=dev", vec![]),
        ("deployType=REGULAR&oldestFirst=true", vec![&deploys[0], &deploys[1]]),
    ] {
        let (s, d) = body(get(format!("/v1/deploys?{query}")).await.unwrap()).await;
        assert_eq!(s, 200, "{query}: {d}");
        let got: Vec<&str> =
            d["deploys"].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap()).collect();
        assert_eq!(got, want, "{query}");
        assert_eq!(d["total"], want.len(), "{query}");
    }
    for (query, needle) in [("deployState=DONE", "deployState"), ("envName=svc", "envName")] {
        let (s, e) = body(get(format!("/v1/deploys?{query}")).await.unwrap()).await;
        assert_eq!(s, 400, "{query}: {e}");
        assert!(e["message"].as_str().unwrap().contains(needle), "{query}: {e}");
    }

    // Ping: bad input is a clear 400 and records nothing.
    let bad_pings: Vec<(Value, &str)> = vec![
        (json!({"hostName": "h1"}), "hostId"),
        (
            json!({"hostId": "i-1", "reports": [{"envId": "x", "deployStage": "LAUNCHING"}]}),
            "deployStage",
        ),
        (
            json!({"hostId": "i-1", "reports": [{"envId": "x", "agentStatus": "FINE"}]}),
            "agentStatus",
        ),
    ];
    for (payload, needle) in bad_pings {
        let (s, e) = body(post("/v1/system/ping", payload.clone()).await.unwrap()).await;
        assert_eq!(s, 400, "{payload} -> {e}");
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{payload}: {e} should mention {needle}"
        );
    }
    let (s, r) =
        body(post("/v1/system/ping", json!({"hostId": "i-1", "hostName": "h1"})).await.unwrap())
            .await;
    assert_eq!((s, r["opCode"].clone()), (200, json!("NOOP")), "{r}");
    let (s, _) = body(c.get(format!("{base}/v1/envs/svc/prod/agents")).send().await.unwrap()).await;
    assert_eq!(s, 200);

    // Script and agent configs: maps, replaced whole.
    let r = c
        .put(format!("{base}/v1/envs/svc/prod/script_configs"))
        .json(&json!({"PORT": "8081"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, v) =
        body(c.get(format!("{base}/v1/envs/svc/prod/script_configs")).send().await.unwrap()).await;
    assert_eq!(v, json!({"PORT": "8081"}));
    let (s, e) = body(
        c.put(format!("{base}/v1/envs/svc/prod/agent_configs"))
            .json(&json!({"a": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400, "values are strings: {e}");

    // Health and metrics.
    assert_eq!(c.get(format!("{base}/livez")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{base}/readyz")).send().await.unwrap().status(), 200);
    let r = c.get(format!("{base}/readyz?verbose")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "[+]storage ok\n[+]raft-leader-known ok\n[+]applied-caught-up ok\nreadyz check passed\n"
    );
    let metrics = c.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "tt_coordinator_raft_term",
        "tt_coordinator_raft_commit_index",
        "tt_coordinator_proposals_total",
        "tt_coordinator_log_fsync_seconds",
        "tt_coordinator_apply_seconds",
        "tt_coordinator_http_request_seconds",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_without_a_quorum_get_503_with_a_retry_hint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = DevCluster::start(spec(dir.path().into(), 3, vec![])).unwrap();
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, Duration::from_secs(30)).await.unwrap();
    let others: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
    let alone = others[0];
    cluster.kill9(leader);
    cluster.kill9(others[1]);
    let c = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = c
            .post(format!("{}/v1/envs", cluster.base_url(alone)))
            .json(&json!({"envName": "svc", "stageName": "prod"}))
            .send()
            .await
            .unwrap();
        let retry = r.headers().get("retry-after").cloned();
        let (s, e) = body(r).await;
        assert_ne!(s, 201, "a lone node must not accept writes");
        if s == 503 && e["message"].as_str().unwrap().contains("no Raft leader") {
            assert_eq!(retry.unwrap(), "1");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never answered 503 no-leader: {s} {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = c.get(format!("{}/readyz", cluster.base_url(alone))).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let r = c.get(format!("{}/readyz?verbose", cluster.base_url(alone))).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let text = r.text().await.unwrap();
    assert!(text.contains("[+]storage ok\n"), "{text}");
    assert!(text.contains("[-]raft-leader-known failed: no leader known\n"), "{text}");
    assert!(text.ends_with("readyz check failed\n"), "{text}");
    // Stale reads still work; linearizable ones refuse.
    assert_eq!(
        c.get(format!("{}/v1/envs?stale=true", cluster.base_url(alone)))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/v1/envs", cluster.base_url(alone))).send().await.unwrap().status(),
        503
    );
}

/// Artifacts uploaded to any node are stored under their BLAKE3 hash on two nodes before the
/// upload is acknowledged; copies between nodes are verified; agents fetch pieces over the
/// native protocol from any node that has the blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_hashed_copied_to_two_nodes_and_served_to_agents() {
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        DevCluster::start(spec(dir.path().into(), 3, vec![("TT_MAX_BLOB_BYTES", "2000000")]))
            .unwrap();
    cluster.wait_leader(&cluster.ids(), Duration::from_secs(30)).await.unwrap();
    let c = reqwest::Client::new();
    let artifact: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let hash = blake3::hash(&artifact).to_hex().to_string();

    // Upload to node 2 (any node; blobs are not forwarded to the leader).
    let (s, up) = body(
        c.post(format!("{}/v1/blobs", cluster.base_url(2)))
            .body(artifact.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 201, "{up}");
    assert_eq!(up["blake3"], hash.as_str());
    assert_eq!(up["size"], 1_500_000);
    assert_eq!(up["url"], format!("tt://blob/{hash}"));
    let copies: Vec<u64> = serde_json::from_value(up["copies"].clone()).unwrap();
    assert_eq!(copies.len(), 2, "{up}");
    assert!(copies.contains(&2));
    for id in cluster.ids() {
        let stored = cluster.node(id).data_dir.join("blobs").join(&hash);
        assert_eq!(stored.exists(), copies.contains(&id), "node {id}");
        let r = c.get(format!("{}/v1/blobs/{hash}", cluster.base_url(id))).send().await.unwrap();
        if copies.contains(&id) {
            assert_eq!(
                r.bytes().await.unwrap().as_ref(),
                artifact.as_slice(),
                "node {id} serves it"
            );
        } else {
            assert_eq!(r.status().as_u16(), 404, "node {id}");
        }
    }

    // An agent reads it in pieces from whichever node has it.
    let ca = agent::ca_cert(&dir.path().join("ca")).unwrap();
    let client =
        agent::coordinator_client::CoordinatorClient::new(&ca, cluster.agent_addrs(), None)
            .unwrap();
    let mut got = Vec::new();
    while got.len() < artifact.len() {
        let (total, piece) = client.fetch_blob(&hash, got.len() as u64, 400_000).await.unwrap();
        assert_eq!(total, 1_500_000);
        assert!(!piece.is_empty() && piece.len() <= 400_000);
        got.extend(piece);
    }
    assert_eq!(got, artifact);
    let missing = "0".repeat(64);
    let err = client.fetch_blob(&missing, 0, 10).await.unwrap_err().to_string();
    assert!(err.contains("not stored"), "{err}");

    // A copy whose bytes do not match its name, a bad name, and an oversized upload are
    // refused and leave nothing behind.
    let wrong = "1".repeat(64);
    let (s, e) = body(
        c.put(format!("{}/v1/blobs/{wrong}", cluster.base_url(1)))
            .body(b"abc".to_vec())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert!(e["message"].as_str().unwrap().contains("hash"), "{e}");
    let (s, _) =
        body(c.get(format!("{}/v1/blobs/nothex", cluster.base_url(1))).send().await.unwrap()).await;
    assert_eq!(s, 400);
    let (s, e) = body(
        c.post(format!("{}/v1/blobs", cluster.base_url(1)))
            .body(vec![0u8; 2_000_001])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 413, "{e}");
    for id in cluster.ids() {
        let names: Vec<String> = std::fs::read_dir(cluster.node(id).data_dir.join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| *n == hash), "node {id} holds only the good blob: {names:?}");
    }
}

/// Pull-through: a node fetches an `http(s)://` or `file://` URL once into the cluster (two
/// copies, named by hash), so agents fetch the build from the swarm; bad sources, a wrong
/// expected hash and files outside the configured roots are refused and leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_pulled_through_from_urls() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("artifacts");
    std::fs::create_dir(&root).unwrap();
    let artifact: Vec<u8> = (0..300_000u32).map(|i| (i % 199) as u8).collect();
    let hash = blake3::hash(&artifact).to_hex().to_string();
    std::fs::write(root.join("a.tgz"), &artifact).unwrap();
    std::fs::write(dir.path().join("secret"), b"not for publishers").unwrap();
    let roots = root.to_str().unwrap().to_string();
    let cluster =
        DevCluster::start(spec(dir.path().into(), 3, vec![("TT_PULL_FILE_ROOTS", &roots)]))
            .unwrap();
    cluster.wait_leader(&cluster.ids(), Duration::from_secs(30)).await.unwrap();
    let c = reqwest::Client::new();
    let pull_url = format!("{}/v1/blobs/pull", cluster.base_url(3));
    let pull = |body: Value| c.post(&pull_url).json(&body).send();

    // The source: an HTTP server with the artifact and a 404.
    let served = artifact.clone();
    let app = axum::Router::new().route(
        "/a.tgz",
        axum::routing::get(move || {
            let served = served.clone();
            async move { served }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let source = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (s, up) = body(pull(json!({"url": format!("{source}/a.tgz")})).await.unwrap()).await;
    assert_eq!(s, 201, "{up}");
    assert_eq!(up["blake3"], hash.as_str());
    assert_eq!(up["url"], format!("tt://blob/{hash}"));
    assert_eq!(up["source"], format!("{source}/a.tgz"));
    let copies: Vec<u64> = serde_json::from_value(up["copies"].clone()).unwrap();
    assert_eq!(copies.len(), 2, "{up}");
    for id in copies {
        let r = c.get(format!("{}/v1/blobs/{hash}", cluster.base_url(id))).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), artifact.as_slice(), "node {id}");
    }
    // The same bytes from a file under the roots, with the expected hash.
    let file_url = format!("file://{}/a.tgz", root.display());
    let (s, up) = body(pull(json!({"url": file_url, "blake3": hash})).await.unwrap()).await;
    assert_eq!((s, up["blake3"].clone()), (201, json!(hash)), "{up}");

    // Refused, each with its reason.
    let secret = format!("file://{}/secret", dir.path().display());
    let traversal = format!("file://{}/../secret", root.display());
    for (req, status, needle) in [
        (json!({"url": format!("{source}/a.tgz"), "blake3": "0".repeat(64)}), 400, "hash"),
        (json!({"url": format!("{source}/missing")}), 400, "404"),
        (json!({"url": "http://127.0.0.1:9/x"}), 400, "cannot fetch"),
        (json!({"url": "ftp://h/a.tgz"}), 400, "not https://"),
        (json!({"url": secret}), 403, "outside"),
        (json!({"url": traversal}), 403, "outside"),
        (json!({"url": format!("file://{}/none.tgz", root.display())}), 400, "cannot open"),
        (json!({"address": "x"}), 400, "address"),
    ] {
        let (s, e) = body(pull(req.clone()).await.unwrap()).await;
        assert_eq!(s, status, "{req}: {e}");
        assert!(e["message"].as_str().unwrap().contains(needle), "{req}: {e}");
    }
    for id in cluster.ids() {
        let names: Vec<String> = std::fs::read_dir(cluster.node(id).data_dir.join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| *n == hash),
            "node {id} holds only the pulled blob: {names:?}"
        );
    }
}

/// Stopping hosts over REST: `DELETE /v1/envs/{e}/{s}/hosts` turns the host STOP and its next
/// ping gets STOP at STOPPING; `alldeploycandidates` lists every candidate with its build and
/// writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_hosts_and_all_deploy_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(spec(dir.path().into(), 1, vec![])).unwrap();
    cluster.wait_leader(&[1], Duration::from_secs(30)).await.unwrap();
    let base = cluster.base_url(1);
    let c = reqwest::Client::new();
    let (s, _) = body(
        c.post(format!("{base}/v1/envs"))
            .json(&json!({"envName": "svc", "stageName": "prod"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 201);
    let r = c
        .put(format!("{base}/v1/envs/svc/prod/capacity?capacityType=HOST"))
        .json(&json!(["h1"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let build = json!({"name": "svc", "artifactUrl": "file:///svc.tgz", "repo": "r", "branch": "main", "commit": "1111111aaaa"});
    let (_, b) = body(c.post(format!("{base}/v1/builds")).json(&build).send().await.unwrap()).await;
    let build_id = b["id"].as_str().unwrap().to_string();
    let (s, d) = body(
        c.post(format!("{base}/v1/envs/svc/prod/deploys?buildId={build_id}")).send().await.unwrap(),
    )
    .await;
    assert_eq!(s, 201, "{d}");

    let ping = json!({"hostId": "h1", "hostName": "h1"});
    let (s, all) = body(
        c.post(format!("{base}/v1/system/ping/alldeploycandidates"))
            .json(&ping)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{all}");
    let candidates = all["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 1, "{all}");
    assert_eq!(candidates[0]["deployGoal"]["deployStage"], "PRE_DOWNLOAD");
    assert_eq!(candidates[0]["deployGoal"]["build"]["id"], build_id.as_str());
    let (_, agents) =
        body(c.get(format!("{base}/v1/envs/svc/prod/agents")).send().await.unwrap()).await;
    assert_eq!(agents, json!([]), "alldeploycandidates writes nothing");

    // The real ping admits h1 (first deploy) and records its row.
    let (_, r) =
        body(c.post(format!("{base}/v1/system/ping")).json(&ping).send().await.unwrap()).await;
    assert_eq!(r["opCode"], "DEPLOY", "{r}");
    // A host without a row on the stage: 404, nothing changes.
    let r = c
        .delete(format!("{base}/v1/envs/svc/prod/hosts"))
        .json(&json!(["h1", "nope"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .delete(format!("{base}/v1/envs/svc/prod/hosts?replaceHost=false"))
        .json(&json!(["h1"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let report = json!({"hostId": "h1", "hostName": "h1", "reports": [{
        "deployId": d["id"], "envId": d["envId"], "deployStage": "PRE_DOWNLOAD",
        "agentStatus": "SUCCEEDED"}]});
    let (_, r) =
        body(c.post(format!("{base}/v1/system/ping")).json(&report).send().await.unwrap()).await;
    assert_eq!(r["opCode"], "STOP", "{r}");
    assert_eq!(r["deployGoal"]["deployStage"], "STOPPING");
}

/// A node that comes back without its blobs (a replaced blob disk) no longer counts as a copy:
/// the nodes copy the blobs that builds name back to two nodes, verified, and leave blobs no
/// build names alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_lost_with_a_disk_are_copied_back_to_two_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = DevCluster::start(spec(
        dir.path().into(),
        3,
        vec![("TT_MAX_BLOB_BYTES", "2000000"), ("TT_BLOB_REPAIR_INTERVAL_MS", "200")],
    ))
    .unwrap();
    cluster.wait_leader(&cluster.ids(), Duration::from_secs(30)).await.unwrap();
    let c = reqwest::Client::new();
    let upload = async |bytes: Vec<u8>| {
        let (s, up) = body(
            c.post(format!("{}/v1/blobs", cluster.base_url(2))).body(bytes).send().await.unwrap(),
        )
        .await;
        assert_eq!(s, 201, "{up}");
        up
    };
    let named: Vec<u8> = (0..700_000u32).map(|i| (i % 241) as u8).collect();
    let unnamed: Vec<u8> = (0..300_000u32).map(|i| (i % 239) as u8).collect();
    let (named_hash, unnamed_hash) =
        (blake3::hash(&named).to_hex().to_string(), blake3::hash(&unnamed).to_hex().to_string());
    let up = upload(named.clone()).await;
    upload(unnamed.clone()).await;
    let build = json!({"name": "svc", "artifactUrl": up["url"], "artifactBlake3": named_hash,
        "repo": "r", "branch": "main", "commit": "c0ffee"});
    let (s, b) = body(
        c.post(format!("{}/v1/builds", cluster.base_url(1))).json(&build).send().await.unwrap(),
    )
    .await;
    assert_eq!(s, 201, "{b}");

    fn holders_in(cluster: &DevCluster, hash: &str) -> Vec<u64> {
        let held = |id: &u64| cluster.node(*id).data_dir.join("blobs").join(hash).exists();
        cluster.ids().into_iter().filter(held).collect()
    }
    assert_eq!(holders_in(&cluster, &named_hash).len(), 2);
    assert!(holders_in(&cluster, &unnamed_hash).contains(&2));

    // Node 2 (a holder of both) loses its blob directory and comes back.
    cluster.kill9(2);
    let blob_dir = cluster.node(2).data_dir.join("blobs");
    std::fs::remove_dir_all(&blob_dir).unwrap();
    assert_eq!(holders_in(&cluster, &named_hash).len(), 1, "the fault took one of the two copies");
    assert_eq!(holders_in(&cluster, &unnamed_hash).len(), 1);
    cluster.restart(2).unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while holders_in(&cluster, &named_hash).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "copies: {:?}",
            holders_in(&cluster, &named_hash)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in holders_in(&cluster, &named_hash) {
        let r = c.get(format!("{}/v1/blobs/{named_hash}", cluster.base_url(id))).send().await;
        assert_eq!(r.unwrap().bytes().await.unwrap().as_ref(), named.as_slice(), "node {id}");
    }
    // The round that restored the named blob also looked at the unnamed one and left it.
    assert_eq!(holders_in(&cluster, &unnamed_hash).len(), 1, "a blob no build names is not copied");
}
