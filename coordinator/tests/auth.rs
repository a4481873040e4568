//! `auth = "tokens"` on a real three-node cluster: 401 without a valid token, 403 without the
//! role (nothing changes), an env's creator becomes its ADMIN and may deploy there but not
//! elsewhere, tokens are shown once and stop working when deleted, and a write forwarded by a
//! follower is checked by the leader; deploys, promotions and builds record the authenticated
//! principal as their operator.

use std::time::Duration;

mod common;

use common::{LEADER_WAIT, spec};
use ops::devcluster::DevCluster;
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-for-the-auth-test";

struct Caller<'a> {
    c: &'a reqwest::Client,
    token: Option<String>,
}

impl Caller<'_> {
    async fn send(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.c.request(method, &url);
        if let Some(t) = &self.token {
            r = r.header("Authorization", format!("token {t}"));
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
    async fn get(&self, url: String) -> (u16, Value) {
        self.send(reqwest::Method::GET, url, None).await
    }
    async fn post(&self, url: String, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, url, Some(body)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_mode_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let settings = vec![("TT_AUTH", "tokens"), ("TT_ADMIN_TOKEN", ADMIN)];
    let cluster = DevCluster::start(spec(dir.path().into(), 3, settings)).unwrap();
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, LEADER_WAIT).await.unwrap();
    let follower = *ids.iter().find(|id| **id != leader).unwrap();
    let lead = cluster.base_url(leader);
    let fol = cluster.base_url(follower);
    let c = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let as_ = |token: Option<&str>| Caller { c: &c, token: token.map(str::to_string) };
    let admin = as_(Some(ADMIN));

    tracing::info!("no token, or a bad one: 401 with a Dropwizard body");
    let (s, e) = as_(None).get(format!("{lead}/v1/envs")).await;
    assert_eq!((s, e["code"].clone()), (401, json!(401)), "{e}");
    let (s, _) = as_(Some("tt_nope")).get(format!("{fol}/v1/envs")).await;
    assert_eq!(s, 401);
    let (s, _) =
        as_(None).post(format!("{fol}/v1/envs"), json!({"envName": "x", "stageName": "y"})).await;
    assert_eq!(s, 401, "a forwarded write without a token is refused too");
    let (s, _) = as_(None).get(format!("{lead}/readyz")).await;
    assert_eq!(s, 200, "health checks need no token");

    tracing::info!("the admin gives alice a user token: shown once");
    let (s, t) = admin.post(format!("{fol}/v1/users/alice/tokens"), json!(null)).await;
    assert_eq!(s, 201, "{t}");
    let alice_token = t["token"].as_str().unwrap().to_string();
    let (_, list) = admin.get(format!("{lead}/v1/users/alice/tokens")).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(list[0]["token"].is_null(), "a listing never shows the token: {list}");
    let alice = as_(Some(&alice_token));

    tracing::info!("alice creates env web (through a follower) and becomes its ADMIN");
    let (s, e) = alice
        .post(
            format!("{fol}/v1/envs"),
            json!({"envName": "web", "stageName": "prod", "buildName": "svc"}),
        )
        .await;
    assert_eq!(s, 201, "{e}");
    assert_eq!(e["lastOperator"], "alice");
    let (s, roles) = admin.get(format!("{lead}/v1/envs/web/user_roles")).await;
    assert_eq!(s, 200, "{roles}");
    assert_eq!(
        roles,
        json!([{"name": "alice", "resource": "web", "type": "ENV", "role": "ADMIN"}])
    );
    let (s, e) = admin
        .post(
            format!("{lead}/v1/envs"),
            json!({"envName": "api", "stageName": "prod", "buildName": "svc"}),
        )
        .await;
    assert_eq!(s, 201, "{e}");
    // A second stage of web by someone else does not change its admins.
    let (s, _) = admin
        .post(
            format!("{lead}/v1/envs"),
            json!({"envName": "web", "stageName": "canary", "buildName": "svc"}),
        )
        .await;
    assert_eq!(s, 201);
    let (_, roles) = admin.get(format!("{lead}/v1/envs/web/user_roles")).await;
    assert_eq!(roles.as_array().unwrap().len(), 1);

    tracing::info!("alice, ADMIN of web, deploys there but not on api");
    let build = json!({"name": "svc", "artifactUrl": "file:///b/1", "repo": "r", "branch": "main", "commit": "a".repeat(40)});
    let (s, b) = alice.post(format!("{fol}/v1/builds"), build).await;
    assert_eq!(s, 201, "{b}");
    let build_id = b["id"].as_str().unwrap();
    let (s, d) =
        alice.post(format!("{fol}/v1/envs/web/prod/deploys?buildId={build_id}"), json!(null)).await;
    assert_eq!(s, 201, "{d}");
    assert_eq!(d["operator"], "alice", "the operator is the authenticated principal: {d}");
    assert_eq!(b["publisher"], "alice", "{b}");

    tracing::info!("a promotion and a restart record who asked, never a client-supplied name");
    let (s, d) = admin
        .post(
            format!(
                "{lead}/v1/envs/web/canary/deploys/current/actions?actionType=PROMOTE&fromDeployId={}&operator=mallory",
                d["id"].as_str().unwrap()
            ),
            json!({"operator": "mallory"}),
        )
        .await;
    assert_eq!(s, 201, "{d}");
    assert_eq!(d["operator"], "admin", "{d}");
    assert!(d["fromDeployId"].is_string(), "{d}");
    let (s, d) = alice
        .post(
            format!("{fol}/v1/envs/web/canary/deploys/current/actions?actionType=RESTART"),
            json!(null),
        )
        .await;
    assert_eq!(s, 201, "{d}");
    assert_eq!(d["operator"], "alice", "{d}");
    let (s, _) = alice
        .send(
            reqwest::Method::PUT,
            format!("{fol}/v1/envs/web/canary/promotes"),
            Some(json!({"delay": 3})),
        )
        .await;
    assert_eq!(s, 204);
    let (_, p) = admin.get(format!("{lead}/v1/envs/web/canary/promotes")).await;
    assert_eq!(p["lastOperator"], "alice", "{p}");
    for base in [&lead, &fol] {
        let (s, e) = alice
            .post(format!("{base}/v1/envs/api/prod/deploys?buildId={build_id}"), json!(null))
            .await;
        assert_eq!(s, 403, "{e}");
        assert!(e["message"].as_str().unwrap().contains("EXECUTE on env api"), "{e}");
    }
    let (s, cur) = admin.get(format!("{lead}/v1/envs/api/prod/deploys/current")).await;
    assert_eq!(s, 404, "the refused deploy changed nothing: {cur}");

    tracing::info!("a READER script token on web: reads, but a write is 403 naming WRITE");
    let (s, t) = alice
        .post(format!("{fol}/v1/envs/web/token_roles"), json!({"name": "dash", "role": "READER"}))
        .await;
    assert_eq!(s, 201, "{t}");
    assert_eq!(
        (t["name"].clone(), t["role"].clone(), t["type"].clone()),
        (json!("dash"), json!("READER"), json!("ENV"))
    );
    let reader = as_(Some(t["token"].as_str().unwrap()));
    let (_, listed) = alice.get(format!("{lead}/v1/envs/web/token_roles")).await;
    assert!(listed[0]["token"].is_null(), "{listed}");
    let (s, _) = reader.get(format!("{fol}/v1/envs/web/prod")).await;
    assert_eq!(s, 200);
    for base in [&lead, &fol] {
        let (s, e) = reader
            .send(
                reqwest::Method::PUT,
                format!("{base}/v1/envs/web/prod"),
                Some(json!({"description": "pwned"})),
            )
            .await;
        assert_eq!(s, 403, "{e}");
        assert!(e["message"].as_str().unwrap().contains("WRITE"), "{e}");
    }
    let (_, env) = admin.get(format!("{lead}/v1/envs/web/prod")).await;
    assert_ne!(env["description"], "pwned");
    // §6.4: tag writes need more than READ.
    let tag = json!({"value": "BAD_BUILD", "targetType": "BUILD", "targetId": build_id});
    let (s, e) = reader.post(format!("{lead}/v1/tags"), tag).await;
    assert_eq!(s, 403, "{e}");
    // A role one does not hold cannot be granted; an env ADMIN cannot touch system roles.
    let (s, _) = alice
        .post(format!("{lead}/v1/system/user_roles"), json!({"name": "alice", "role": "ADMIN"}))
        .await;
    assert_eq!(s, 403);

    tracing::info!("a deleted token stops working");
    let (s, _) = alice
        .send(reqwest::Method::DELETE, format!("{fol}/v1/envs/web/token_roles/dash"), None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = reader.get(format!("{lead}/v1/envs/web/prod")).await;
    assert_eq!(s, 401);

    tracing::info!("the JSON ping needs PINGER on the system");
    let ping = json!({"hostId": "i-1", "hostName": "h1"});
    let (s, _) = alice.post(format!("{lead}/v1/system/ping"), ping.clone()).await;
    assert_eq!(s, 403, "an env ADMIN is no pinger");
    let (s, t) = admin
        .post(format!("{lead}/v1/system/token_roles"), json!({"name": "agents", "role": "PINGER"}))
        .await;
    assert_eq!(s, 201, "{t}");
    let (s, r) =
        as_(Some(t["token"].as_str().unwrap())).post(format!("{fol}/v1/system/ping"), ping).await;
    assert_eq!(s, 200, "{r}");
}
