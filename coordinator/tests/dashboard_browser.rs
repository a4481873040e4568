//! The dashboard in a real browser: headless Chromium driven through chromedriver's W3C
//! WebDriver HTTP protocol (plain reqwest), against a real three-node cluster in `tokens` mode
//! with simulated agents on the native protocol.
//!
//! An admin logs in with a token on a follower, opens the stage page, deploys a build through
//! the Deploy button and its confirmation, and waits — polling the DOM's `data-state`
//! attributes, never reloading (a marker on `window` must survive) — until every host cell shows
//! the new deploy done; then rolls back through its confirmation and sees the ROLLBACK deploy
//! arrive live. A READER then logs in, tries the same rollback and sees it refused.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/test.sh` installs them through
//! `scripts/ensure-deps.sh`); without them the test fails saying what to install.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{LEADER_WAIT, spec};
use ops::devcluster::DevCluster;
use ops::simfleet::{Fleet, FleetSpec, LongPoll};
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-for-the-browser-test";
const AGENT: &str = "agent-token-for-the-browser-test";
const HOSTS: usize = 6;
/// How long each simulated deploy step "runs".
const HOOK: Duration = Duration::from_millis(100);
/// How long chromedriver may take to answer its status endpoint.
const DRIVER_START_WAIT: Duration = Duration::from_secs(20);
/// How long the page may take to show what the cluster did.
const DOM_WAIT: Duration = Duration::from_secs(90);
/// How often the DOM (or the fleet) is polled while waiting.
const POLL: Duration = Duration::from_millis(100);
/// Per-request timeout towards chromedriver (a new session starts a browser).
const WEBDRIVER_TIMEOUT: Duration = Duration::from_secs(60);
/// The W3C WebDriver key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

const INSTALL_HINT: &str = "the dashboard browser test needs Debian's chromium and \
    chromium-driver: run `scripts/ensure-deps.sh chromium chromium-driver` (or `apt-get install \
    -y chromium chromium-driver`)";

/// The first of `names` found on `PATH`.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One chromedriver process and one browser session.
struct Browser {
    c: reqwest::Client,
    url: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let chromium = on_path(&["chromium", "chromium-browser"]).unwrap_or_else(|| {
            panic!("{INSTALL_HINT} (no chromium on PATH)");
        });
        let chromedriver = on_path(&["chromedriver"]).unwrap_or_else(|| {
            panic!("{INSTALL_HINT} (no chromedriver on PATH)");
        });
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}; {INSTALL_HINT}", chromedriver.display()));
        coordinator::tls::install_crypto_provider();
        let c = reqwest::Client::builder().timeout(WEBDRIVER_TIMEOUT).build().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + DRIVER_START_WAIT;
        loop {
            let ready = match c.get(format!("{base}/status")).send().await {
                Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start on port {port}");
            tokio::time::sleep(POLL).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let r: Value = c
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session ({r}); {INSTALL_HINT}"))
            .to_string();
        Browser { c, url: format!("{base}/session/{session}"), driver, _profile: profile }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self.c.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "WebDriver {path}: {status} {v}");
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT_KEY].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_string()
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/click"), Some(json!({}))).await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Polls `probe` (a script returning JSON) until `done` holds; the last value.
    async fn wait_for(&self, what: &str, probe: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DOM_WAIT;
        loop {
            let v = self.js(probe).await;
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "waited too long for {what}; the page shows {v}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Clicks an action button and confirms it in the page's dialog.
    async fn act(&self, button: &str) {
        self.click(button).await;
        self.wait_for(
            "the confirmation dialog",
            "return document.querySelector('#confirm').open",
            |v| v == true,
        )
        .await;
        self.click("#confirm-yes").await;
    }

    async fn login(&self, base: &str, token: &str) {
        self.goto(&format!("{base}/ui/env/svc/prod")).await;
        let path = self.js("return location.pathname").await;
        assert_eq!(path, "/ui/login", "an anonymous visit goes to the login form");
        self.type_into("#token", token).await;
        self.click("#login-submit").await;
        self.wait_for("the stage page after login", "return location.pathname", |v| {
            v == "/ui/env/svc/prod"
        })
        .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session's browser exits with its driver.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// What the stage page shows: the summary's deploy, every cell's state, the action result, the
/// number of live updates received and whether the page was reloaded (the marker is gone).
const PROBE: &str = "const s = document.querySelector('#summary'); \
    const r = document.querySelector('#action-result'); \
    return { deploy: s ? s.dataset.deployId : null, type: s ? s.dataset.deployType : null, \
      states: [...document.querySelectorAll('#grid .cell')].map(c => c.dataset.state), \
      stages: [...document.querySelectorAll('#grid .cell')].map(c => c.dataset.stage), \
      outcome: r ? (r.dataset.outcome || '') : '', result: r ? r.textContent : '', \
      updates: Number(document.querySelector('#live').dataset.updates || '0'), \
      marker: window.ttMarker === 'kept' };";

fn all_done(v: &Value) -> bool {
    let states = v["states"].as_array().unwrap();
    states.len() == HOSTS && states.iter().all(|s| s == "done")
}

async fn api(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> Value {
    let mut r = c.request(method, &url).header("Authorization", format!("token {ADMIN}"));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{url}: {status} {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_and_rollback_from_the_browser_with_live_host_grid() {
    // Fail early and clearly if the browser is missing, before starting a cluster.
    let browser = Browser::start().await;
    let dir = tempfile::tempdir().unwrap();
    let settings =
        vec![("TT_AUTH", "tokens"), ("TT_ADMIN_TOKEN", ADMIN), ("TT_AGENT_TOKEN", AGENT)];
    let cluster = DevCluster::start(spec(dir.path().into(), 3, settings)).unwrap();
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, LEADER_WAIT).await.unwrap();
    let follower = *ids.iter().find(|id| **id != leader).unwrap();
    let lead = cluster.base_url(leader);
    let fol = cluster.base_url(follower);
    let c = common::http();
    use reqwest::Method as M;

    api(
        &c,
        M::POST,
        format!("{lead}/v1/envs"),
        Some(json!({"envName": "svc", "stageName": "prod", "maxParallel": 2})),
    )
    .await;
    let r = c
        .put(format!("{lead}/v1/envs/svc/prod/capacity?capacityType=GROUP"))
        .header("Authorization", format!("token {ADMIN}"))
        .json(&json!(["fleet"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let mut builds = vec![];
    for commit in ["1111111aaaa", "2222222bbbb"] {
        let body = json!({"name": "svc", "artifactUrl": format!("file:///svc-{commit}.tgz"), "repo": "r", "branch": "main", "commit": commit});
        let b = api(&c, M::POST, format!("{lead}/v1/builds"), Some(body)).await;
        builds.push(b["id"].as_str().unwrap().to_string());
    }
    let t = api(
        &c,
        M::POST,
        format!("{lead}/v1/envs/svc/token_roles"),
        Some(json!({"name": "viewer", "role": "READER"})),
    )
    .await;
    let reader = t["token"].as_str().unwrap().to_string();

    let ca = agent::ca_cert(&cluster.dir().join("ca")).unwrap();
    let fleet = Fleet::start(FleetSpec {
        hosts: HOSTS,
        prefix: "host-".into(),
        groups: vec!["fleet".into()],
        coordinators: ids.iter().map(|i| cluster.base_url(*i)).collect(),
        hook: HOOK,
        idle_ping: Duration::from_millis(200),
        long_poll: Some(LongPoll {
            ca,
            agent_addrs: cluster.agent_addrs(),
            token: Some(AGENT.into()),
            wait: Duration::from_secs(5),
            endpoint: None,
        }),
        zones: vec![],
    });
    // A first deploy through the API, so that a later rollback has a target.
    let d1 =
        api(&c, M::POST, format!("{lead}/v1/envs/svc/prod/deploys?buildId={}", builds[0]), None)
            .await["id"]
            .as_str()
            .unwrap()
            .to_string();
    let deadline = Instant::now() + DOM_WAIT;
    while fleet.serving(&d1) < HOSTS {
        assert!(Instant::now() < deadline, "{} of {HOSTS} hosts serve {d1}", fleet.serving(&d1));
        tokio::time::sleep(POLL).await;
    }

    // The admin, on a follower: log in, filter the environments, open the stage, mark the
    // window.
    browser.login(&fol, ADMIN).await;
    browser.goto(&format!("{fol}/ui/envs")).await;
    let shown = "return [...document.querySelectorAll('tr[data-name]')]\
                 .filter(r => !r.hidden).map(r => r.dataset.name)";
    assert_eq!(browser.js(shown).await, json!(["svc/prod"]));
    browser.type_into("#env-filter", "nothing-matches").await;
    assert_eq!(browser.js(shown).await, json!([]), "the filter hides rows without a reload");
    browser.goto(&format!("{fol}/ui/envs")).await;
    browser.click("a[href='/ui/env/svc/prod']").await;
    browser
        .wait_for("the stage page", "return location.pathname", |v| v == "/ui/env/svc/prod")
        .await;
    browser.js("window.ttMarker = 'kept'; return true").await;
    let v = browser
        .wait_for("the first deploy done", PROBE, |v| v["deploy"] == d1.as_str() && all_done(v))
        .await;
    assert_eq!(v["stages"].as_array().unwrap().len(), HOSTS, "{v}");

    // Deploy build 2 through the button and its confirmation; watch the grid go done live.
    browser
        .js(&format!(
            "document.querySelector('#build-select').value = '{}'; return true",
            builds[1]
        ))
        .await;
    browser.act("#btn-deploy").await;
    let v = browser
        .wait_for("the new deploy on every host", PROBE, |v| {
            v["deploy"] != d1.as_str() && all_done(v)
        })
        .await;
    let d2 = v["deploy"].as_str().unwrap().to_string();
    assert_eq!(v["type"], "REGULAR", "{v}");
    assert_eq!(v["outcome"], "ok", "{v}");
    assert!(v["result"].as_str().unwrap().contains(&d2), "the result names the deploy: {v}");
    assert_eq!(v["marker"], true, "the page was not reloaded: {v}");
    assert!(v["updates"].as_u64().unwrap() >= 1, "live updates arrived: {v}");
    assert!(
        v["stages"].as_array().unwrap().iter().all(|s| s == "SERVING_BUILD"),
        "cells carry the host's deploy stage: {v}"
    );
    assert_eq!(fleet.serving(&d2), HOSTS);
    // "failed only" hides every cell that is not failed (none is), and shows them again.
    let visible = "return [...document.querySelectorAll('#grid .cell')]\
                   .filter(c => c.offsetParent !== null).length";
    browser.click("#failed-only").await;
    assert_eq!(browser.js(visible).await, 0);
    browser.click("#failed-only").await;
    assert_eq!(browser.js(visible).await, HOSTS);
    let cur = api(&c, M::GET, format!("{lead}/v1/envs/svc/prod/deploys/current"), None).await;
    assert_eq!(
        (cur["id"].as_str(), cur["buildId"].as_str()),
        (Some(d2.as_str()), Some(builds[1].as_str()))
    );

    // Rollback through its confirmation: a new ROLLBACK deploy of build 1 appears live.
    browser.act("#btn-rollback").await;
    let v = browser
        .wait_for("the rollback deploy", PROBE, |v| {
            v["deploy"] != d2.as_str() && v["type"] == "ROLLBACK"
        })
        .await;
    let d3 = v["deploy"].as_str().unwrap().to_string();
    assert_ne!(d3, d1);
    assert_eq!(v["marker"], true, "{v}");
    let cur = api(&c, M::GET, format!("{lead}/v1/envs/svc/prod/deploys/current"), None).await;
    assert_eq!(cur["id"].as_str(), Some(d3.as_str()));
    assert_eq!(cur["buildId"].as_str(), Some(builds[0].as_str()), "rolled back to build 1");
    browser
        .wait_for("the rollback on every host", PROBE, |v| {
            v["deploy"] == d3.as_str() && all_done(v)
        })
        .await;

    // A READER: sees the page, but the rollback is refused with a message naming the role.
    browser.click("nav form button").await;
    browser
        .wait_for("the login page after logout", "return location.pathname", |v| v == "/ui/login")
        .await;
    browser.login(&fol, &reader).await;
    let who = browser.js("return document.querySelector('#who').textContent").await;
    assert_eq!(who, "viewer");
    browser.act("#btn-rollback").await;
    let v = browser.wait_for("the refusal", PROBE, |v| v["outcome"] == "refused").await;
    let text = v["result"].as_str().unwrap();
    assert!(text.contains("403") && text.contains("EXECUTE on env svc"), "{v}");
    assert_eq!(v["deploy"], d3.as_str(), "nothing changed: {v}");
    let cur = api(&c, M::GET, format!("{lead}/v1/envs/svc/prod/deploys/current"), None).await;
    assert_eq!(cur["id"].as_str(), Some(d3.as_str()), "the refused rollback changed nothing");

    // History: every earlier SUCCEEDED deploy offers "roll back to this"; the current one not.
    browser.goto(&format!("{fol}/ui/env/svc/prod/history")).await;
    let rows = browser
        .js("return [...document.querySelectorAll('#history tbody tr')].map(r => \
             [r.dataset.deployId, r.querySelector('button[data-action]') !== null])")
        .await;
    assert_eq!(rows, json!([[d3, false], [d2, true], [d1, true]]), "newest first");

    let _ = browser.cmd(M::DELETE, "", None).await;
    fleet.stop().await;
}
