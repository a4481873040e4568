//! Three real coordinator processes on loopback: replication, follower reads and forwarding,
//! `kill -9` of the leader during a stream of writes, catch-up after restart, a wiped node
//! rejoining through a snapshot, and a node with a foreign certificate kept out.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::{LEADER_WAIT, get_json, http, publish, spec};
use ops::devcluster::DevCluster;
use serde_json::{Value, json};

async fn build_ids(c: &reqwest::Client, base: &str, stale: bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for page in 1.. {
        let url = format!("{base}/v1/builds?pageSize=1000&pageIndex={page}&stale={stale}");
        let v: Vec<Value> = get_json(&c, url).await;
        if v.is_empty() {
            break;
        }
        out.extend(v.iter().map(|b| b["id"].as_str().unwrap().to_string()));
    }
    out
}

async fn dump_logs(cluster: &DevCluster) -> String {
    cluster
        .ids()
        .iter()
        .map(|id| format!("--- node {id}\n{}", cluster.log_tail(*id, 3000)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_leader_kill_and_followers_read_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = DevCluster::start(spec(dir.path().into(), 3, vec![])).unwrap();
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, LEADER_WAIT).await.unwrap();
    let c = http();

    // Write at the leader, read (linearizably, the default) at each follower.
    let resp = c
        .post(format!("{}/v1/envs", cluster.base_url(leader)))
        .json(&json!({"envName": "svc", "stageName": "prod", "maxParallel": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["location"], "/v1/envs/svc/prod");
    for id in ids.iter().filter(|i| **i != leader) {
        let v: Value = get_json(&c, format!("{}/v1/envs/svc/prod", cluster.base_url(*id))).await;
        assert_eq!(v["maxParallel"], 3, "node {id} reads the leader's write");
        assert_eq!(v["maxParallelPct"], 0);
    }
    // A write sent to a follower is forwarded to the leader.
    let follower = *ids.iter().find(|i| **i != leader).unwrap();
    let resp = c
        .put(format!("{}/v1/envs/svc/prod", cluster.base_url(follower)))
        .json(&json!({"maxParallel": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let v: Value = get_json(&c, format!("{}/v1/envs/svc/prod", cluster.base_url(leader))).await;
    assert_eq!(v["maxParallel"], 5);

    // A stream of writes, spread over all nodes; kill -9 the leader in the middle.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(Mutex::new(0u64));
    let bases: Vec<String> = ids.iter().map(|i| cluster.base_url(*i)).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (acked, failures, stop, c) = (acked.clone(), failures.clone(), stop.clone(), c.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let base = &bases[(n as usize) % bases.len()];
                match publish(&c, base, n).await {
                    Ok(id) => acked.lock().unwrap().push(id),
                    Err(_) => {
                        *failures.lock().unwrap() += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_kill = acked.lock().unwrap().len();
    assert!(before_kill > 0, "writes flow before the kill");
    cluster.kill9(leader);
    let survivors: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
    let new_leader = cluster.wait_leader(&survivors, LEADER_WAIT).await.unwrap();
    assert_ne!(new_leader, leader);
    // Writes are accepted again after the failover.
    let after_failover = acked.lock().unwrap().len();
    let deadline = std::time::Instant::now() + LEADER_WAIT;
    while acked.lock().unwrap().len() < after_failover + 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "no writes after failover:\n{}",
            dump_logs(&cluster).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();

    // Every acknowledged write is on the new leader and the surviving follower.
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    for id in &survivors {
        let have = build_ids(&c, &cluster.base_url(*id), false).await;
        let missing: Vec<_> = acked.difference(&have).collect();
        assert!(missing.is_empty(), "node {id} lost acknowledged writes: {missing:?}");
    }

    // The killed node restarts and catches up.
    cluster.restart(leader).unwrap();
    let want = build_ids(&c, &cluster.base_url(new_leader), false).await;
    let deadline = std::time::Instant::now() + LEADER_WAIT;
    loop {
        let have = c
            .get(format!("{}/v1/builds?pageSize=1&stale=true", cluster.base_url(leader)))
            .send()
            .await
            .ok();
        if have.is_some_and(|r| r.status().is_success())
            && build_ids(&c, &cluster.base_url(leader), true).await == want
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "restarted node did not catch up:\n{}",
            dump_logs(&cluster).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_node_rejoins_through_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        ("TT_SNAPSHOT_EVERY_ENTRIES", "40"),
        ("TT_KEEP_ENTRIES_AFTER_SNAPSHOT", "5"),
        ("TT_PURGE_BATCH_ENTRIES", "1"),
    ];
    let mut cluster = DevCluster::start(spec(dir.path().into(), 3, env)).unwrap();
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, LEADER_WAIT).await.unwrap();
    let victim = *ids.iter().find(|i| **i != leader).unwrap();
    let c = http();
    let base = cluster.base_url(leader);
    for n in 0..150 {
        publish(&c, &base, n).await.unwrap();
    }
    // Wait until the leader has snapshotted and purged the log prefix a wiped node would need.
    let deadline = std::time::Instant::now() + LEADER_WAIT;
    loop {
        let status: Value = get_json(&c, format!("{base}/v1/cluster")).await;
        if status["purgedIndex"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "leader never purged its log: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.wipe(victim).unwrap();
    // More writes while it is gone.
    for n in 150..250 {
        publish(&c, &base, n).await.unwrap();
    }
    cluster.restart(victim).unwrap();
    let want = build_ids(&c, &base, false).await;
    assert_eq!(want.len(), 250);
    let deadline = std::time::Instant::now() + LEADER_WAIT;
    loop {
        let ok = c
            .get(format!("{}/v1/cluster", cluster.base_url(victim)))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok && build_ids(&c, &cluster.base_url(victim), true).await == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "wiped node did not rejoin:\n{}",
            dump_logs(&cluster).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status: Value = get_json(&c, format!("{}/v1/cluster", cluster.base_url(victim))).await;
    assert!(
        status["snapshotIndex"].as_u64().is_some(),
        "the wiped node installed a snapshot: {status}"
    );
    cluster.stop_all();
}

/// A node whose Raft core stops exits, instead of staying up with its state frozen and still
/// naming itself leader (agents long-polling it were never redirected and missed deploys).
/// The core is stopped the way the chaos suite stopped it: a follower's data is wiped and it
/// comes back at once, and openraft's guard against a follower log going backwards (a
/// `debug_assert!`, so debug builds only) panics the leader's core. The two other nodes then
/// elect a leader and take writes, the wiped one rejoining.
#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_raft_core_panics_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = DevCluster::start(spec(dir.path().into(), 3, vec![])).unwrap();
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, LEADER_WAIT).await.unwrap();
    let victim = *ids.iter().find(|i| **i != leader).unwrap();
    let c = http();
    let base = cluster.base_url(leader);
    for n in 0..20 {
        publish(&c, &base, n).await.unwrap();
    }
    // The leader has seen the victim take the writes (its matching index is past them).
    let want = build_ids(&c, &base, false).await;
    let deadline = std::time::Instant::now() + LEADER_WAIT;
    while build_ids(&c, &cluster.base_url(victim), true).await != want {
        assert!(std::time::Instant::now() < deadline, "the follower never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.wipe(victim).unwrap();
    cluster.restart(victim).unwrap();
    let deadline = std::time::Instant::now() + LEADER_WAIT;
    while cluster.is_running(leader) {
        assert!(
            std::time::Instant::now() < deadline,
            "the leader is still running:\n{}",
            dump_logs(&cluster).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cluster.log_tail(leader, 20_000).contains("the Raft core stopped"),
        "the leader exited because its core stopped:\n{}",
        cluster.log_tail(leader, 3000)
    );
    let others: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
    let new_leader = cluster.wait_leader(&others, LEADER_WAIT).await.unwrap();
    publish(&c, &cluster.base_url(new_leader), 20).await.unwrap();
    cluster.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_a_foreign_certificate_cannot_join() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = DevCluster::start(spec(dir.path().join("a"), 3, vec![])).unwrap();
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, LEADER_WAIT).await.unwrap();
    // A one-node cluster with its own CA plays the intruder.
    let rogue_spec = spec(dir.path().join("rogue"), 1, vec![]);
    let mut rogue = DevCluster::start(rogue_spec).unwrap();
    rogue.wait_leader(&[1], LEADER_WAIT).await.unwrap();
    let rogue_node = rogue.node(1).clone();
    let c = http();
    let status_before: Value =
        get_json(&c, format!("{}/v1/cluster", cluster.base_url(leader))).await;
    let resp = c
        .post(format!("{}/v1/cluster/nodes", cluster.base_url(leader)))
        .json(&json!({"id": 4, "httpAddr": rogue_node.http_addr.to_string(), "raftAddr": rogue_node.raft_addr.to_string(), "catchUpSecs": 3}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504, "{}", resp.text().await.unwrap());
    let status: Value = get_json(&c, format!("{}/v1/cluster", cluster.base_url(leader))).await;
    let members: Vec<u64> =
        status["members"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(members, vec![1, 2, 3], "the foreign node was not kept as a member");
    assert_eq!(status["term"], status_before["term"], "the intruder disturbed no election");
    // The rogue's log shows refused handshakes, and it received none of the cluster's entries.
    let rogue_status: Value =
        get_json(&c, format!("http://{}/v1/cluster", rogue_node.http_addr)).await;
    assert_eq!(rogue_status["members"].as_array().unwrap().len(), 1);
    rogue.stop_all();
    cluster.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_as_learner_then_voter_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = DevCluster::start(spec(dir.path().into(), 3, vec![])).unwrap();
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, LEADER_WAIT).await.unwrap();
    let c = http();
    let base = cluster.base_url(leader);
    for n in 0..30 {
        publish(&c, &base, n).await.unwrap();
    }
    let new = cluster.add_standby_node().unwrap();
    // Sent to a follower: membership changes are forwarded to the leader too.
    let follower = *ids.iter().find(|i| **i != leader).unwrap();
    let resp = c
        .post(format!("{}/v1/cluster/nodes", cluster.base_url(follower)))
        .json(&json!({"id": new.id, "httpAddr": new.http_addr.to_string(), "raftAddr": new.raft_addr.to_string()}))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let status: Value = get_json(&c, format!("{base}/v1/cluster")).await;
    let roles: Vec<(u64, String)> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_u64().unwrap(), m["role"].as_str().unwrap().to_string()))
        .collect();
    assert!(roles.contains(&(new.id, "follower".to_string())), "node 4 votes: {roles:?}");
    assert_eq!(roles.len(), 4);
    // The new member has the data and answers linearizable reads itself.
    let builds: Vec<Value> =
        get_json(&c, format!("http://{}/v1/builds?pageSize=1000", new.http_addr)).await;
    assert_eq!(builds.len(), 30);
    // Remove it again; the cluster keeps taking writes with three members.
    let resp = c.delete(format!("{base}/v1/cluster/nodes/{}", new.id)).send().await.unwrap();
    assert_eq!(resp.status(), 204, "{}", resp.text().await.unwrap());
    let status: Value = get_json(&c, format!("{base}/v1/cluster")).await;
    let members: Vec<u64> =
        status["members"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(members, ids);
    publish(&c, &base, 99).await.unwrap();
    let resp = c.delete(format!("{base}/v1/cluster/nodes/42")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    cluster.stop_all();
}
