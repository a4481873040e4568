//! The dashboard over HTTP on a real three-node cluster in `tokens` mode, without a browser:
//! redirects to the login form, login sets an HttpOnly SameSite=Strict cookie (a bad token is
//! refused), pages answer on leader and follower with every user-provided string escaped, a
//! READER's cookie reads pages but its actions are refused with 403 naming the role, a cookie
//! without the dashboard header authenticates no write (CSRF), and a node that knows no leader
//! still serves its pages under a banner.

use std::time::{Duration, Instant};

mod common;

use common::{LEADER_WAIT, spec};
use ops::devcluster::DevCluster;
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-for-the-dashboard-test";
const HOSTILE: &str = "<script>alert(1)</script>";
/// How long the lone surviving node may take to notice it has no leader.
const NO_LEADER_WAIT: Duration = Duration::from_secs(30);

fn client() -> reqwest::Client {
    coordinator::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn api(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = c.request(method, &url).header("Authorization", format!("token {ADMIN}"));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// GET `url` with the login cookie `token`; status, headers and body.
async fn page(
    c: &reqwest::Client,
    url: String,
    token: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut r = c.get(&url);
    if let Some(t) = token {
        r = r.header("Cookie", format!("tt_token={t}"));
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

/// Percent-encodes a form value (reqwest here has no `form` feature).
fn form_value(v: &str) -> String {
    coordinator::dashboard::render::seg(v)
}

/// Posts the login form; status and `Set-Cookie`.
async fn login(c: &reqwest::Client, base: &str, token: &str) -> (u16, Option<String>, String) {
    let resp = c
        .post(format!("{base}/ui/login"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("token={}&next=%2Fui%2Fenv%2Fsvc%2Fprod", form_value(token)))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let cookie = resp.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_string());
    let location =
        resp.headers().get("location").map_or(String::new(), |v| v.to_str().unwrap().to_string());
    (status, cookie, location)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_pages_logins_roles_and_escaping() {
    let dir = tempfile::tempdir().unwrap();
    let settings = vec![("TT_AUTH", "tokens"), ("TT_ADMIN_TOKEN", ADMIN)];
    let mut cluster = DevCluster::start(spec(dir.path().into(), 3, settings)).unwrap();
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, LEADER_WAIT).await.unwrap();
    let follower = *ids.iter().find(|id| **id != leader).unwrap();
    let lead = cluster.base_url(leader);
    let fol = cluster.base_url(follower);
    let c = client();
    use reqwest::Method as M;

    // A stage with a hostile description, a build with a hostile branch, a deploy, and a host
    // with a hostile name.
    let (s, e) = api(
        &c,
        M::POST,
        format!("{lead}/v1/envs"),
        Some(json!({"envName": "svc", "stageName": "prod", "description": HOSTILE})),
    )
    .await;
    assert_eq!(s, 201, "{e}");
    let (s, _) = api(
        &c,
        M::POST,
        format!("{lead}/v1/envs"),
        Some(json!({"envName": "svc", "stageName": "canary"})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = api(
        &c,
        M::PUT,
        format!("{lead}/v1/envs/svc/prod/capacity?capacityType=GROUP"),
        Some(json!(["fleet"])),
    )
    .await;
    assert_eq!(s, 204);
    let build = json!({"name": "svc", "artifactUrl": "file:///b/1", "repo": "r", "branch": HOSTILE, "commit": "a".repeat(40)});
    let (s, b) = api(&c, M::POST, format!("{lead}/v1/builds"), Some(build)).await;
    assert_eq!(s, 201, "{b}");
    let build_id = b["id"].as_str().unwrap().to_string();
    let (s, d) =
        api(&c, M::POST, format!("{lead}/v1/envs/svc/prod/deploys?buildId={build_id}"), None).await;
    assert_eq!(s, 201, "{d}");
    let deploy_id = d["id"].as_str().unwrap().to_string();
    let ping = json!({"hostId": "i-evil", "hostName": HOSTILE, "groups": ["fleet"]});
    let (s, r) = api(&c, M::POST, format!("{lead}/v1/system/ping"), Some(ping)).await;
    assert_eq!(s, 200, "{r}");
    // It fails its first step fatally, with hostile error output: the deploy turns FAILING.
    let (_, env) = api(&c, M::GET, format!("{lead}/v1/envs/svc/prod"), None).await;
    let report = json!({"deployId": deploy_id, "envId": env["id"], "deployStage": "PRE_DOWNLOAD",
        "agentStatus": "TOO_MANY_RETRY", "errorCode": 1, "errorMessage": "<b>boom</b>"});
    let ping =
        json!({"hostId": "i-evil", "hostName": HOSTILE, "groups": ["fleet"], "reports": [report]});
    let (s, r) = api(&c, M::POST, format!("{lead}/v1/system/ping"), Some(ping)).await;
    assert_eq!(s, 200, "{r}");
    let (s, t) = api(
        &c,
        M::POST,
        format!("{lead}/v1/envs/svc/token_roles"),
        Some(json!({"name": "viewer", "role": "READER"})),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    let reader = t["token"].as_str().unwrap().to_string();

    // Entry, assets and login form are public; pages redirect to the login form.
    let (s, h, _) = page(&c, format!("{fol}/"), None).await;
    assert_eq!((s, h["location"].to_str().unwrap()), (303, "/ui/envs"));
    let (s, h, css) = page(&c, format!("{fol}/ui/assets/dashboard.css"), None).await;
    assert_eq!(s, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/css"));
    assert!(css.contains(".grid"));
    let (s, _, _) = page(&c, format!("{fol}/ui/assets/nope.js"), None).await;
    assert_eq!(s, 404);
    let (s, h, _) = page(&c, format!("{fol}/ui/env/svc/prod"), None).await;
    assert_eq!(s, 303);
    assert_eq!(h["location"].to_str().unwrap(), "/ui/login?next=%2Fui%2Fenv%2Fsvc%2Fprod");
    let (s, _, body) = page(&c, format!("{fol}/ui/login?next=/ui/env/svc/prod"), None).await;
    assert_eq!(s, 200);
    assert!(body.contains("name=\"token\""), "{body}");
    let (s, _, _) = page(&c, format!("{fol}/ui/envs"), Some("tt_not-a-token")).await;
    assert_eq!(s, 303, "an unknown token in the cookie is no login");

    // Login: a bad token is refused and sets nothing; a good one sets the cookie.
    let (s, cookie, _) = login(&c, &fol, "tt_wrong").await;
    assert_eq!((s, cookie), (401, None));
    let (s, cookie, location) = login(&c, &fol, ADMIN).await;
    assert_eq!(s, 303);
    assert_eq!(location, "/ui/env/svc/prod");
    let cookie = cookie.expect("a login sets a cookie");
    for attr in ["tt_token=", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    let r = c
        .post(format!("{fol}/ui/login"))
        .header("Origin", "http://evil.example")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("token={}", form_value(ADMIN)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a cross-site login post is refused");

    // Pages on leader and follower, every hostile string escaped.
    for base in [&lead, &fol] {
        let (s, _, body) = page(&c, format!("{base}/ui/envs"), Some(ADMIN)).await;
        assert_eq!(s, 200, "{body}");
        assert!(body.contains("href=\"/ui/env/svc/prod\""), "{body}");
        let attention = body.split("id=\"attention-table\"").nth(1).expect("needs attention");
        let attention = attention.split("</table>").next().unwrap();
        assert!(attention.contains("svc/prod") && !attention.contains("svc/canary"), "{body}");
        assert!(body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "branch escaped: {body}");
        assert!(!body.contains(HOSTILE), "{body}");
        let (s, h, body) = page(&c, format!("{base}/ui/env/svc/prod"), Some(ADMIN)).await;
        assert_eq!(s, 200, "{body}");
        assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
        assert!(!body.contains(HOSTILE), "{body}");
        assert!(body.contains("data-host=\"&lt;script&gt;alert(1)&lt;/script&gt;\""), "{body}");
        assert!(body.contains(&format!("data-deploy-id=\"{deploy_id}\"")), "{body}");
        assert!(body.contains("data-state=\"failed\""), "the host failed: {body}");
        assert!(body.contains("data-count-for=\"failed\" data-count=\"1\""), "{body}");
        assert!(body.contains("data-deploy-state=\"FAILING\""), "{body}");
        assert!(body.contains("class=\"bar bad\""), "a FAILING deploy's bar is red: {body}");
        assert!(body.contains("id=\"btn-rollback\""), "{body}");
        assert!(body.contains("id=\"btn-promote\""), "another stage exists: {body}");
        assert!(body.contains("<p class=\"description\">&lt;script&gt;"), "{body}");
        assert!(body.contains("id=\"who\">admin<"), "{body}");
        let (s, _, body) = page(&c, format!("{base}/ui/env/svc/prod/history"), Some(ADMIN)).await;
        assert_eq!(s, 200);
        assert!(body.contains(&format!("data-deploy-id=\"{deploy_id}\"")), "{body}");
        let (s, _, body) =
            page(&c, format!("{base}/ui/host/%3Cscript%3Ealert(1)%3C%2Fscript%3E"), Some(ADMIN))
                .await;
        assert_eq!(s, 200, "{body}");
        assert!(body.contains("Host &lt;script&gt;"), "{body}");
        assert!(body.contains("<pre class=\"error\">&lt;b&gt;boom&lt;/b&gt;</pre>"), "{body}");
        assert!(!body.contains(HOSTILE), "{body}");
        let (s, _, body) = page(&c, format!("{base}/ui/env/svc/prod/config"), Some(ADMIN)).await;
        assert_eq!(s, 200, "{body}");
        assert!(body.contains("id=\"settings\"") && body.contains("id=\"config-history\""));
        assert!(!body.contains(HOSTILE), "{body}");
        let (s, _, body) = page(&c, format!("{base}/ui/compare?a=nope&b=nope2"), Some(ADMIN)).await;
        assert_eq!(s, 404, "{body}");
        let compare = format!("{base}/ui/compare?a={build_id}&b={build_id}");
        let (s, _, body) = page(&c, compare, Some(ADMIN)).await;
        assert_eq!(s, 200, "{body}");
        assert!(!body.contains("data-differs"), "a build equals itself: {body}");
        assert!(body.contains(&deploy_id) && !body.contains(HOSTILE), "{body}");
        let (s, _, body) = page(&c, format!("{base}/ui/cluster"), Some(ADMIN)).await;
        assert_eq!(s, 200);
        assert!(body.contains(&format!("data-leader=\"{leader}\"")), "{body}");
        assert_eq!(body.matches("<tr data-role=").count(), 3, "{body}");
        // A hostile name in the URL comes back escaped in the 404 page.
        let (s, _, body) = page(
            &c,
            format!("{base}/ui/env/%3Cscript%3Ealert(1)%3C%2Fscript%3E/prod"),
            Some(ADMIN),
        )
        .await;
        assert_eq!(s, 404);
        assert!(
            body.contains("stage &lt;script&gt;alert(1)&lt;/script&gt;/prod not found"),
            "{body}"
        );
        assert!(!body.contains(HOSTILE));
    }

    // The live stream answers with the rendered grid first.
    let resp = c
        .get(format!("{fol}/ui/env/svc/prod/events"))
        .header("Cookie", format!("tt_token={ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut resp = resp;
    let mut seen = String::new();
    while !seen.contains("data-state=") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("the first event comes at once")
            .unwrap()
            .expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.starts_with("event: live\n"), "{seen}");
    drop(resp);
    let (s, _, _) = page(&c, format!("{fol}/ui/env/svc/nope/events"), Some(ADMIN)).await;
    assert_eq!(s, 404);

    // A READER sees the pages; its actions are refused, naming the role, and change nothing.
    let (s, _, body) = page(&c, format!("{fol}/ui/env/svc/prod"), Some(&reader)).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("id=\"who\">viewer<"), "{body}");
    for base in [&lead, &fol] {
        let r = c
            .post(format!("{base}/v1/envs/svc/prod/deploys/current/actions?actionType=PAUSE"))
            .header("Cookie", format!("tt_token={reader}"))
            .header("X-TT-Dashboard", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let e: Value = r.json().await.unwrap();
        assert!(e["message"].as_str().unwrap().contains("EXECUTE on env svc"), "{e}");
    }
    // CSRF: the cookie alone (what a cross-site form would carry) authenticates no write.
    let r = c
        .post(format!("{fol}/v1/envs/svc/prod/deploys/current/actions?actionType=PAUSE"))
        .header("Cookie", format!("tt_token={ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (_, env) = api(&c, M::GET, format!("{lead}/v1/envs/svc/prod"), None).await;
    assert_eq!(env["envState"], "NORMAL", "no refused action changed anything");
    // The admin's cookie with the header acts, through a follower (forwarded to the leader).
    let r = c
        .post(format!("{fol}/v1/envs/svc/prod/deploys/current/actions?actionType=PAUSE"))
        .header("Cookie", format!("tt_token={ADMIN}"))
        .header("X-TT-Dashboard", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let (s, _, body) = page(&c, format!("{lead}/ui/env/svc/prod"), Some(ADMIN)).await;
    assert_eq!(s, 200);
    assert!(body.contains("data-env-state=\"PAUSED\""), "{body}");
    assert!(body.contains("id=\"btn-resume\""), "{body}");

    // Logout clears the cookie.
    let r = c.post(format!("{fol}/ui/logout")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));

    // A node that knows no leader still serves pages, under a banner.
    let survivor = follower;
    for id in ids.iter().filter(|id| **id != survivor) {
        cluster.kill9(*id);
    }
    let deadline = Instant::now() + NO_LEADER_WAIT;
    loop {
        let (s, _, body) = page(&c, format!("{fol}/ui/envs"), Some(ADMIN)).await;
        assert_eq!(s, 200, "{body}");
        if body.contains("id=\"banner\"") {
            assert!(body.contains("svc/prod"), "local state is shown: {body}");
            break;
        }
        assert!(Instant::now() < deadline, "no banner after the leader died: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
