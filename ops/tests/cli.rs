//! `tt` against real coordinator processes: `dev cluster` start-up, manifest and Ctrl-C, and
//! the read/write verbs with `-o json` and meaningful exit codes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

mod support;

fn tt(addr: &str, args: &[&str]) -> (i32, String, String) {
    support::run(Command::new(env!("CARGO_BIN_EXE_tt")).env("TT_ADDR", addr).args(args))
}

/// `tt build publish` of a build of `svc` at `url` and `commit`, with JSON output.
fn publish(addr: &str, url: &str, commit: &str) -> (i32, String, String) {
    let args = ["build", "publish", "--name", "svc", "--artifact-url", url, "--commit", commit];
    tt(addr, &[&args[..], &["-o", "json"]].concat())
}

fn free_port() -> u16 {
    // HTTP ports p, p+1, p+2 and Raft ports q.. must be free; pick from a high, sparse range.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn process_alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

#[test]
fn dev_cluster_serves_the_cli_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let raft = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tt"))
        .args(["dev", "cluster", "--nodes", "3", "--dir"])
        .arg(dir.path())
        .args(["--http-port", &http.to_string(), "--raft-port", &raft.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = format!("http://127.0.0.1:{http}");
    let manifest = dir.path().join("cluster.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        assert!(Instant::now() < deadline, "dev cluster did not come up");
        if manifest.exists() {
            let (code, out, _) = tt(&addr, &["cluster", "status", "-o", "json"]);
            if code == 0 {
                let v: Value = serde_json::from_str(&out).unwrap();
                if v["leaderId"].is_u64() && v["members"].as_array().unwrap().len() == 3 {
                    break v;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(["leader", "follower"].contains(&status["members"][0]["role"].as_str().unwrap()));
    let m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let pids: Vec<i32> =
        m["nodes"].as_array().unwrap().iter().map(|n| n["pid"].as_i64().unwrap() as i32).collect();
    assert_eq!(pids.len(), 3);
    for key in ["id", "httpAddr", "raftAddr", "dataDir"] {
        assert!(m["nodes"][0].get(key).is_some(), "cluster.json lacks {key}: {m}");
    }

    // The verbs, against node 1 (whoever leads).
    let (code, out, err) = tt(&addr, &["env", "create", "svc/canary", "--max-parallel", "2"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = tt(&addr, &["env", "list", "-o", "json"]);
    assert_eq!(code, 0);
    let envs: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(envs[0]["stageName"], "canary");
    assert_eq!(envs[0]["maxParallel"], 2);
    let (code, out, _) = tt(&addr, &["env", "get", "svc/canary"]);
    assert_eq!(code, 0);
    assert!(out.contains("svc/canary") && out.contains("MAX PARALLEL"), "{out}");
    // Schedules and deploy constraints.
    let (code, out, err) =
        tt(&addr, &["schedule", "set", "svc/canary", "--hosts", "10%,50%", "--cooldown", "-1,5"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("NOT_STARTED") && out.contains("1 of 2"), "{out}");
    let (code, out, _) = tt(&addr, &["schedule", "svc/canary", "-o", "json"]);
    assert_eq!(code, 0);
    let sched: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (sched["hostNumbers"].as_str(), sched["cooldownTimes"].as_str()),
        (Some("10%,50%"), Some("-1,5"))
    );
    let (code, _, err) =
        tt(&addr, &["schedule", "set", "svc/canary", "--hosts", "10%,x", "--cooldown", "1,1"]);
    assert_ne!(code, 0);
    assert!(err.contains("hostNumbers"), "{err}");
    let (code, _, err) = tt(&addr, &["schedule", "override", "svc/canary", "1"]);
    assert_ne!(code, 0, "a schedule that has not started cannot be overridden");
    assert!(err.contains("NOT_STARTED"), "{err}");
    let (code, out, err) = tt(
        &addr,
        &[
            "constraint",
            "svc/canary",
            "set",
            "--key",
            "az",
            "--max-parallel",
            "1",
            "--type",
            "GROUP_BY_GROUP",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let con: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (con["constraintKey"].as_str(), con["constraintType"].as_str()),
        (Some("az"), Some("GROUP_BY_GROUP"))
    );
    let (code, out, _) = tt(&addr, &["constraint", "svc/canary"]);
    assert_eq!(code, 0);
    assert!(out.contains("GROUP_BY_GROUP") && out.contains("FINISHED"), "{out}");
    assert_eq!(tt(&addr, &["constraint", "svc/canary", "delete", "--yes"]).0, 0);
    assert_ne!(tt(&addr, &["constraint", "svc/canary"]).0, 0, "deleted");
    assert_eq!(tt(&addr, &["schedule", "delete", "svc/canary", "-y"]).0, 0);
    assert_ne!(tt(&addr, &["schedule", "svc/canary"]).0, 0, "deleted");
    let (code, _, err) = tt(&addr, &["env", "get", "svc/nope"]);
    assert_eq!(code, 4, "not found exits 4: {err}");
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = tt(&addr, &["env", "get", "no-slash"]);
    assert_eq!(code, 1);
    assert!(err.contains("ENV/STAGE"), "{err}");
    let (code, out, err) = publish(&addr, "file:///tmp/svc.tgz", "0123456789abcdef");
    assert_eq!(code, 0, "{err}");
    let b: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(b["commitShort"], "0123456");
    let (code, out, _) = tt(&addr, &["build", "list", "--name", "svc", "-o", "json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()[0]["id"], b["id"]);
    let (code, _, _) = tt("http://127.0.0.1:1", &["cluster", "status"]);
    assert_eq!(code, 5, "unreachable exits 5");

    // Deploy verbs and `status -w` exit codes: 3 on timeout, 1 on FAILING (0 on success below).
    let build_id = b["id"].as_str().unwrap().to_string();
    let (code, out, err) = tt(&addr, &["capacity", "svc/canary", "--host", "web-1", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["hosts"][0], "web-1");
    let (code, out, err) = tt(&addr, &["deploy", "svc/canary", "--build", &build_id, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let deploy_id =
        serde_json::from_str::<Value>(&out).unwrap()["id"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    ops::ensure_crypto_provider();
    let ping_as = |host: &str, report: Value| {
        let body =
            serde_json::json!({"hostId": format!("i-{host}"), "hostName": host, "reports": report});
        rt.block_on(async {
            let r = reqwest::Client::new()
                .post(format!("{addr}/v1/system/ping"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            r.json::<Value>().await.unwrap()
        })
    };
    let ping = |report: Value| ping_as("web-1", report);
    let goal = ping(serde_json::json!([]));
    assert_eq!(goal["deployGoal"]["deployStage"], "PRE_DOWNLOAD", "{goal}");
    let (code, out, _) = tt(&addr, &["status", "svc/canary", "-w", "--timeout", "2"]);
    assert_eq!(code, 3, "a running deploy times out the watch: {out}");
    assert!(out.contains("RUNNING"), "{out}");
    assert_eq!(out.lines().count(), 1, "off a terminal, one line per change: {out}");
    // On a terminal (util-linux `script` gives it one) the watch redraws one block in place.
    let cmd = format!("{} status svc/canary -w --timeout 2", env!("CARGO_BIN_EXE_tt"));
    let (code, out, err) = support::run(
        Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("TT_ADDR", &addr)
            .env_remove("NO_COLOR"),
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("svc/canary  deploy") && out.contains("hosts: 1 pre_download"), "{out}");
    assert!(out.contains("A\r\x1b[J"), "the frame is erased and redrawn: {out:?}");
    assert!(out.contains("\x1b[33mRUNNING\x1b[0m"), "coloured on a terminal: {out:?}");
    let env_id = goal["deployGoal"]["envId"].clone();
    ping(
        serde_json::json!([{"deployId": deploy_id, "envId": env_id, "deployStage": "PRE_DOWNLOAD", "agentStatus": "TOO_MANY_RETRY", "errorCode": 1}]),
    );
    let (code, out, _) = tt(&addr, &["status", "svc/canary", "-w", "--timeout", "30"]);
    assert_eq!(code, 1, "a failing deploy exits 1: {out}");
    let (code, out, _) = tt(&addr, &["hosts", "svc/canary"]);
    assert_eq!(code, 0);
    assert!(out.contains("web-1") && out.contains("PAUSED_BY_SYSTEM"), "{out}");
    let (code, out, _) = tt(&addr, &["history", "svc/canary", "-o", "json"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["deploys"][0]["id"],
        deploy_id.as_str()
    );
    let (code, _, err) = tt(&addr, &["host", "reset", "svc/canary", "i-web-1"]);
    assert_eq!(code, 2, "a destructive verb without a terminal needs --yes: {err}");
    assert!(err.contains("--yes"), "{err}");
    let (code, _, err) = tt(&addr, &["host", "reset", "svc/canary", "i-web-1", "--yes"]);
    assert_eq!(code, 0, "{err}");

    // Promote config (show, set, bad input) and build tags.
    let (code, out, err) = tt(&addr, &["env", "create", "svc/prod"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = tt(&addr, &["promote-config", "svc/prod", "-o", "json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["type"], "MANUAL");
    let set = [
        "promote-config",
        "svc/prod",
        "--type",
        "auto",
        "--from",
        "canary",
        "--delay-minutes",
        "10",
        "--fail-policy",
        "rollback",
        "--schedule",
        "0 10 * * 1-5",
        "-o",
        "json",
    ];
    let (code, out, err) = tt(&addr, &set);
    assert_eq!(code, 0, "{err}");
    let p: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&p["type"], &p["predStage"], &p["delay"]),
        (&"AUTO".into(), &"canary".into(), &10.into())
    );
    assert_eq!(p["failPolicy"], "ROLLBACK");
    let (code, out, _) = tt(&addr, &["promote-config", "svc/prod"]);
    assert_eq!(code, 0);
    assert!(out.contains("0 10 * * 1-5") && out.contains("ROLLBACK"), "{out}");
    let (code, _, err) = tt(&addr, &["promote-config", "svc/prod", "--queue", "11"]);
    assert_eq!(code, 1);
    assert!(err.contains("queueSize"), "{err}");
    let (code, out, err) = tt(
        &addr,
        &["build", "tag", &build_id, "--value", "BAD_BUILD", "--reason", "leaks", "-o", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let t: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&t["value"], &t["comments"]), (&"BAD_BUILD".into(), &"leaks".into()));
    let (code, out, _) = tt(&addr, &["build", "tags", &build_id]);
    assert_eq!(code, 0);
    assert!(out.contains("in effect: BAD_BUILD") && out.contains("leaks"), "{out}");
    let (code, _, err) = tt(&addr, &["deploy", "svc/canary", "--build", &build_id]);
    assert_eq!(code, 1, "a BAD build needs --force");
    assert!(err.contains("BAD_BUILD") && err.contains("force"), "{err}");
    let (code, _, err) = tt(&addr, &["build", "untag", t["id"].as_str().unwrap(), "--yes"]);
    assert_eq!(code, 0, "{err}");

    // Unique id prefixes, and `status -w` exiting 0 once a deploy succeeds.
    let prefix = &build_id[..8];
    let (code, out, err) = tt(&addr, &["build", "get", prefix, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["id"], build_id.as_str());
    let (code, _, err) = tt(&addr, &["build", "get", "~~"]);
    assert_eq!(code, 4, "no id starts with it: {err}");
    assert!(err.contains("no build id starts with"), "{err}");
    let (code, out, err) = tt(&addr, &["history", "svc/canary"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("STARTED") && out.contains(" ago"), "relative times: {out}");
    let (code, out, _) = tt(&addr, &["history", "svc/canary", "-o", "wide"]);
    assert_eq!(code, 0);
    assert!(out.contains("OPERATOR") && out.contains("Z "), "absolute times in wide: {out}");
    assert_eq!(tt(&addr, &["env", "create", "svc/stg"]).0, 0);
    assert_eq!(tt(&addr, &["capacity", "svc/stg", "--host", "web-2"]).0, 0);
    let (code, _, err) = tt(&addr, &["deploy", "svc/stg", "--build", prefix]);
    assert_eq!(code, 0, "a build id prefix deploys: {err}");
    let mut report = serde_json::json!([]);
    for _ in 0..20 {
        let goal = ping_as("web-2", report);
        let g = &goal["deployGoal"];
        if g.is_null() {
            break;
        }
        report = serde_json::json!([{"deployId": g["deployId"], "envId": g["envId"], "deployStage": g["deployStage"], "agentStatus": "SUCCEEDED"}]);
    }
    let (code, out, err) = tt(&addr, &["status", "svc/stg", "-w", "--timeout", "30"]);
    assert_eq!(code, 0, "a succeeded deploy exits 0: {out}{err}");
    assert!(out.contains("SUCCEEDED") || out.contains("SUCCEEDING"), "{out}");
    assert!(!out.contains('\x1b'), "no colour and no redraw off a terminal: {out:?}");

    // `tt version`, `tt diff`, `tt open`.
    let (code, out, err) = tt(&addr, &["version", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["client"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["server"]["version"], env!("CARGO_PKG_VERSION"), "{v}");
    let (code, out, err) = publish(&addr, "file:///tmp/svc-2.tgz", "fedcba9876543210");
    assert_eq!(code, 0, "{err}");
    let b2 = serde_json::from_str::<Value>(&out).unwrap()["id"].as_str().unwrap().to_string();
    let (code, out, err) = tt(&addr, &["diff", prefix, &b2, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["a"]["id"], build_id.as_str());
    let differ: Vec<&str> =
        d["differ"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    assert!(differ.contains(&"commit") && differ.contains(&"artifactUrl"), "{differ:?}");
    assert!(!differ.contains(&"name") && !differ.contains(&"branch"), "{differ:?}");
    let (code, out, _) = tt(&addr, &["diff", &build_id, &b2]);
    assert_eq!(code, 0);
    assert!(out.contains("commits: 0123456789abcdef..fedcba9876543210 in local"), "{out}");
    let (code, out, err) = tt(&addr, &["open", "svc/stg"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("{addr}/ui/env/svc/stg"));
    let (code, _, _) = tt(&addr, &["open", "svc/nope"]);
    assert_eq!(code, 4, "no such stage");

    // Ctrl-C stops every node.
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "tt dev cluster ignored Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "{exit:?}");
    for pid in pids {
        assert!(!process_alive(pid), "node pid {pid} still running after Ctrl-C");
    }
}
