//! Cuts of a node reach the coordinators' HTTP between each other too (write forwarding, the
//! read index, blob copies), not only Raft: a follower cut from the leader cannot forward a
//! write to it over an unproxied link.
//!
//! The nodes run with election timeouts far longer than a test, so a cut follower keeps
//! naming the leader and forwards to it (with the default timeouts it would stand for election
//! within a second and answer "no leader" on its own, whether or not HTTP is cut).

use std::time::Duration;

use chaos_tests::lab::{Cuts, Lab, LabSpec};
use coordinator::api::FORWARD_TIMEOUT;
use ops::client::ClientError;
use ops::devcluster::find_coordinator_bin;
use ops::devfleet::find_agent_bin;
use serde_json::{Value, json};

/// Election timeouts no test outlives (milliseconds): the founding node elects itself at once
/// (openraft elects on initialisation), nobody else ever starts an election.
const ELECTION_TIMEOUT_MIN_MS: &str = "60000";
const ELECTION_TIMEOUT_MAX_MS: &str = "90000";
/// Hang guard for the first leader.
const ELECTION_WAIT: Duration = Duration::from_secs(60);
/// How long a client waits for a write sent to a cut follower (the workload's op timeout).
const CUT_WRITE_WAIT: Duration = Duration::from_secs(3);
/// How much longer than the follower's forward timeout a client waits for its answer.
const ANSWER_MARGIN: Duration = Duration::from_secs(3);
/// Hang guard for a write to take effect once its bytes may flow.
const APPLY_WAIT: Duration = Duration::from_secs(20);
/// Pause between reads while waiting for a write to take effect.
const POLL: Duration = Duration::from_millis(100);

async fn lab(dir: &std::path::Path) -> Lab {
    Lab::start(LabSpec {
        dir: dir.to_path_buf(),
        seed: 3,
        coordinator_bin: find_coordinator_bin().unwrap(),
        agent_bin: find_agent_bin().unwrap(),
        agents: 0,
        group: "g".into(),
        coordinator_env: vec![
            ("TT_ELECTION_TIMEOUT_MIN_MS".into(), ELECTION_TIMEOUT_MIN_MS.into()),
            ("TT_ELECTION_TIMEOUT_MAX_MS".into(), ELECTION_TIMEOUT_MAX_MS.into()),
        ],
        agent_config: String::new(),
        swarm: false,
    })
    .await
    .unwrap()
}

fn stage(name: &str) -> Value {
    json!({"envName": "h", "stageName": name, "maxParallel": 1})
}

/// Creates stage `name` through node `id`'s own HTTP address, waiting at most `wait`.
async fn create(lab: &Lab, id: u64, name: &str, wait: Duration) -> Result<(), ClientError> {
    lab.client(id).post_timeout::<_, Value>("/v1/envs", &stage(name), wait).await.map(|_| ())
}

/// Waits until node `id` (read locally) holds stage `name`; panics after [`APPLY_WAIT`].
async fn wait_applied(lab: &Lab, id: u64, name: &str) {
    let path = format!("/v1/envs/h/{name}?stale=true");
    let found = tokio::time::timeout(APPLY_WAIT, async {
        while lab.client(id).get::<Value>(&path).await.is_err() {
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    assert!(found.is_ok(), "stage {name} never appeared on node {id}");
}

/// The leader and a follower.
async fn roles(lab: &Lab) -> (u64, u64) {
    let leader = lab.cluster.wait_leader(&lab.ids(), ELECTION_WAIT).await.unwrap();
    let follower = lab.ids().into_iter().find(|&n| n != leader).unwrap();
    (leader, follower)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_follower_forwards_no_write_until_the_heal() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lab = lab(tmp.path()).await;
    let (leader, follower) = roles(&lab).await;
    // Forwarding works, and leaves a pooled connection from the follower to the leader.
    create(&lab, follower, "before", CUT_WRITE_WAIT).await.unwrap();

    lab.set_cuts(Cuts { isolated: [follower].into(), ..Cuts::default() }).unwrap();
    let cut = create(&lab, follower, "during", CUT_WRITE_WAIT).await;
    assert!(cut.is_err(), "a write through the isolated follower was acknowledged: {cut:?}");
    // The majority side still takes writes.
    create(&lab, leader, "majority", CUT_WRITE_WAIT).await.unwrap();

    // The forward was held at the leader's proxy, on the follower's own connection.
    let http = lab.http_stats();
    assert!(http.held_process > 0, "{http:?}");

    lab.set_cuts(Cuts::default()).unwrap();
    create(&lab, follower, "after", CUT_WRITE_WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deaf_follower_forwards_writes_but_never_hears_the_answers_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lab = lab(tmp.path()).await;
    let (leader, follower) = roles(&lab).await;
    create(&lab, follower, "before", CUT_WRITE_WAIT).await.unwrap();

    lab.set_cuts(Cuts { deaf: [follower].into(), ..Cuts::default() }).unwrap();
    // The client waits out the follower's forward: the follower must not claim that nothing
    // was written, since the leader got the request.
    let cut = create(&lab, follower, "deaf", FORWARD_TIMEOUT + ANSWER_MARGIN).await;
    match &cut {
        Err(ClientError::Api { status: 503, message }) => {
            assert!(message.contains("outcome is unknown"), "{message}")
        }
        other => panic!("the deaf follower heard the leader's answer: {other:?}"),
    }
    // The request went through one way: the leader applied it while the cut lasts.
    wait_applied(&lab, leader, "deaf").await;
    let http = lab.http_stats();
    assert!(http.held_process > 0, "the answer to the follower was held: {http:?}");

    lab.set_cuts(Cuts::default()).unwrap();
    create(&lab, follower, "after", CUT_WRITE_WAIT).await.unwrap();
}
