//! Helpers shared by the integration tests that run real coordinator processes.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::PathBuf;
use std::time::Duration;

use ops::devcluster::Spec;
use serde_json::{Value, json};

/// How long a test waits for an agreed leader or for a node to catch up.
pub const LEADER_WAIT: Duration = Duration::from_secs(30);

/// A cluster of `nodes` coordinator processes of this build, with extra `TT_*` settings.
pub fn spec(dir: PathBuf, nodes: usize, env: Vec<(&str, &str)>) -> Spec {
    coordinator::tls::install_crypto_provider();
    Spec {
        nodes,
        dir,
        base_http_port: None,
        base_raft_port: None,
        advertise: None,
        coordinator_bin: PathBuf::from(env!("CARGO_BIN_EXE_coordinator")),
        env: env.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

pub fn http() -> reqwest::Client {
    coordinator::tls::install_crypto_provider();
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

/// GET `url` and parse the body as JSON (panics on transport errors).
pub async fn get_json<T: serde::de::DeserializeOwned>(c: &reqwest::Client, url: String) -> T {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

/// Publishes build number `n`; returns its id or the error status and body.
pub async fn publish(c: &reqwest::Client, base: &str, n: u64) -> Result<String, String> {
    let body = json!({"name": "svc", "artifactUrl": format!("file:///b/{n}"), "repo": "r", "branch": "main", "commit": format!("{n:040x}")});
    let resp =
        c.post(format!("{base}/v1/builds")).json(&body).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let v: Value = resp.json().await.map_err(|e| e.to_string())?;
    if status.as_u16() != 201 {
        return Err(format!("{status}: {v}"));
    }
    Ok(v["id"].as_str().unwrap().to_string())
}

/// POST `body` to `url` and return the JSON answer, asserting success.
pub async fn post_json(c: &reqwest::Client, url: String, body: Value) -> Value {
    let r = c.post(&url).json(&body).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{url}: {status} {v}");
    v
}
