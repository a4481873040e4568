//! `tt token create|list|delete` against a one-node cluster in `auth = "tokens"` mode: a token
//! is printed once, listed without its value, works until it is deleted; 401 and 403 exit with
//! their own codes and say what to do.

use std::process::Command;

mod support;
use std::time::Duration;

use ops::devcluster::{DevCluster, Spec, find_coordinator_bin};
use serde_json::Value;

const ADMIN: &str = "admin-token-for-the-cli-test";

fn tt(addr: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    support::run(
        Command::new(env!("CARGO_BIN_EXE_tt"))
            .env("TT_ADDR", addr)
            .env("TT_TOKEN", token)
            .args(args),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_verbs_create_list_delete() {
    ops::ensure_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let env = [("TT_AUTH", "tokens"), ("TT_ADMIN_TOKEN", ADMIN)];
    let cluster = DevCluster::start(Spec {
        nodes: 1,
        dir: dir.path().into(),
        base_http_port: None,
        base_raft_port: None,
        coordinator_bin: find_coordinator_bin().unwrap(),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        advertise: None,
    })
    .unwrap();
    cluster.wait_leader(&[1], Duration::from_secs(30)).await.unwrap();
    let addr = cluster.base_url(1);

    let (code, out, err) =
        tt(&addr, ADMIN, &["token", "create", "--system", "--name", "ci", "--role", "reader"]);
    assert_eq!(code, 0, "{err}");
    let token = out.trim().to_string();
    assert!(token.starts_with("tt_"), "{out}");
    assert!(err.contains("not shown again"), "{err}");

    let (code, out, err) = tt(&addr, ADMIN, &["token", "list", "--system", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["name"], "ci");
    assert_eq!(list[0]["role"], "READER");
    assert!(list[0]["token"].is_null(), "{list}");
    assert!(!out.contains(&token));

    // The new token reads, but may not manage tokens (403 names the role).
    let (code, _, err) = tt(&addr, &token, &["env", "list"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = tt(&addr, &token, &["token", "list", "--system"]);
    assert_eq!(code, ops::client::EXIT_FORBIDDEN, "{err}");
    assert!(err.contains("MANAGE_SCRIPT_TOKEN"), "{err}");
    assert!(err.contains("ask an ADMIN"), "{err}");
    // No token at all: 401, its own exit code, and what to do.
    let (code, _, err) = tt(&addr, "", &["env", "list"]);
    assert_eq!(code, ops::client::EXIT_NOT_AUTHENTICATED, "{err}");
    assert!(err.contains("set TT_TOKEN"), "{err}");
    let (code, out, _) = tt(&addr, "", &["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("6  not authenticated") && out.contains("7  forbidden"), "{out}");

    let (code, _, err) =
        tt(&addr, ADMIN, &["token", "delete", "--system", "--name", "ci", "--yes"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = tt(&addr, &token, &["env", "list"]);
    assert_eq!(code, ops::client::EXIT_NOT_AUTHENTICATED, "{err}");
    assert!(err.contains("401"), "{err}");
}
