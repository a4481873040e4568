//! `tt env config` against a one-node cluster: the whole config in sections and as JSON,
//! `--set` through `PUT /v1/envs/{e}/{s}` (unknown fields refused, nothing changed), and
//! `--history`; `tt webhooks` setting, refusing and showing hooks and a deploy's deliveries.

use std::process::Command;
use std::time::Duration;

use ops::devcluster::{DevCluster, Spec, find_coordinator_bin};
use serde_json::Value;

fn tt(addr: &str, args: &[&str]) -> (i32, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_tt")).env("TT_ADDR", addr).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_config_shows_sets_and_lists_history() {
    ops::ensure_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir(&artifacts).unwrap();
    let cluster = DevCluster::start(Spec {
        nodes: 1,
        dir: dir.path().into(),
        base_http_port: None,
        base_raft_port: None,
        coordinator_bin: find_coordinator_bin().unwrap(),
        env: vec![("TT_PULL_FILE_ROOTS".into(), artifacts.to_str().unwrap().into())],
        advertise: None,
    })
    .unwrap();
    cluster.wait_leader(&[1], Duration::from_secs(30)).await.unwrap();
    let addr = cluster.base_url(1);
    let ok = |args: &[&str]| {
        let (code, out, err) = tt(&addr, args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        out
    };
    ok(&["env", "create", "svc/prod", "--max-parallel", "2"]);
    ok(&["capacity", "svc/prod", "--group", "g-prod", "--host", "h1"]);

    let out = ok(&["env", "config", "svc/prod"]);
    for want in ["SETTINGS", "maxParallel", "successThreshold", "CAPACITY", "g-prod", "PROMOTE"] {
        assert!(out.contains(want), "{want} missing:\n{out}");
    }

    let out = ok(&[
        "env",
        "config",
        "svc/prod",
        "--set",
        "maxParallel=4",
        "--set",
        "acceptanceType=MANUAL",
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["env"]["maxParallel"], 4, "{v}");
    assert_eq!(v["env"]["maxParallelPct"], 0, "one parallelism mode at a time: {v}");
    assert_eq!(v["env"]["acceptanceType"], "MANUAL", "{v}");
    assert_eq!(v["capacity"]["groups"][0], "g-prod", "{v}");
    assert_eq!(v["capacity"]["hosts"][0], "h1", "{v}");
    assert_eq!(v["promote"]["type"], "MANUAL", "{v}");
    assert!(v["scriptConfigs"].is_object(), "{v}");

    // An unknown field, or a bad value the server refuses: an error, nothing changes.
    let (code, _, err) = tt(&addr, &["env", "config", "svc/prod", "--set", "maxParalel=9"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown field \"maxParalel\"") && err.contains("maxParallel"), "{err}");
    let (code, _, err) =
        tt(&addr, &["env", "config", "svc/prod", "--set", "successThreshold=20000"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("successThreshold"), "{err}");
    let v: Value = serde_json::from_str(&ok(&["env", "config", "svc/prod", "-o", "json"])).unwrap();
    assert_eq!(v["env"]["maxParallel"], 4);
    assert_eq!(v["env"]["successThreshold"], 10000);

    let h: Value =
        serde_json::from_str(&ok(&["env", "config", "svc/prod", "--history", "-o", "json"]))
            .unwrap();
    assert_eq!(h[0]["type"], "Env General Config", "{h}");
    assert!(h[0]["configChange"].as_str().unwrap().contains("\"maxParallel\":4"), "{h}");
    let out = ok(&["env", "config", "svc/prod", "--history"]);
    assert!(out.contains("Env General Config") && out.contains("OPERATOR"), "{out}");

    // Webhooks: a bad file is refused with the server's reason and changes nothing; a good
    // one replaces the hooks, shows in `env config`, and a deploy owes them.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"preDeployHooks": [{"url": "ftp://x"}]}"#).unwrap();
    let (code, _, err) = tt(&addr, &["webhooks", "svc/prod", "--set", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("preDeployHooks[0]") && err.contains("ftp://x"), "{err}");
    let (code, _, err) = tt(&addr, &["webhooks", "svc/prod", "--set", "/no/such/file"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/no/such/file"), "{err}");
    let good = dir.path().join("hooks.json");
    std::fs::write(
        &good,
        r#"{"preDeployHooks": [{"url": "http://127.0.0.1:9/pre/$TELETRAAN_DEPLOY_ID", "headers": "Authorization: Bearer s3cret"}],
            "postDeployHooks": [{"method": "PUT", "url": "http://127.0.0.1:9/post"}]}"#,
    )
    .unwrap();
    let out = ok(&["webhooks", "svc/prod", "--set", good.to_str().unwrap()]);
    assert!(out.contains("replaced") && out.contains("/pre/$TELETRAAN_DEPLOY_ID"), "{out}");
    assert!(out.contains("Authorization") && !out.contains("s3cret"), "{out}");
    let v: Value = serde_json::from_str(&ok(&["env", "config", "svc/prod", "-o", "json"])).unwrap();
    assert_eq!(v["webHooks"]["postDeployHooks"][0]["method"], "PUT", "{v}");
    let out = ok(&["env", "config", "svc/prod"]);
    assert!(out.contains("WEBHOOKS") && out.contains("http://127.0.0.1:9/post"), "{out}");

    // A deploy to a stage without agents succeeds at once: it owes the pre and post hooks.
    // The build is pulled through from a file:// URL inside the node's pull roots; one
    // outside them is refused (403 → exit 7) and publishes nothing.
    std::fs::write(artifacts.join("svc.tgz"), b"a build").unwrap();
    std::fs::write(dir.path().join("other.tgz"), b"not pullable").unwrap();
    let pull = |path: &std::path::Path| {
        let url = format!("file://{}", path.display());
        tt(
            &addr,
            &[
                "build", "publish", "--name", "svc", "--commit", "abc1234", "--pull", &url, "-o",
                "json",
            ],
        )
    };
    let (code, _, err) = pull(&dir.path().join("other.tgz"));
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("outside"), "{err}");
    let (code, out, err) = pull(&artifacts.join("svc.tgz"));
    assert_eq!(code, 0, "{err}");
    let build: Value = serde_json::from_str(&out).unwrap();
    let hash = blake3::hash(b"a build").to_hex().to_string();
    assert_eq!(build["artifactUrl"], format!("tt://blob/{hash}"), "{build}");
    assert_eq!(build["artifactBlake3"], hash.as_str(), "{build}");
    let builds: Value = serde_json::from_str(&ok(&["build", "list", "-o", "json"])).unwrap();
    assert_eq!(builds.as_array().unwrap().len(), 1, "the refused pull published nothing");
    ok(&["deploy", "svc/prod", "--build", build["id"].as_str().unwrap()]);
    let d: Value =
        serde_json::from_str(&ok(&["webhooks", "svc/prod", "--deploy", "current", "-o", "json"]))
            .unwrap();
    let phases: Vec<&str> =
        d.as_array().unwrap().iter().map(|x| x["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, ["PRE", "POST"], "{d}");
    let out = ok(&["webhooks", "svc/prod", "--deploy", "current"]);
    assert!(out.contains("ATTEMPTS") && out.contains("/post"), "{out}");
    let out = ok(&["webhooks", "svc/prod", "--clear", "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["preDeployHooks"],
        serde_json::json!([])
    );
}
