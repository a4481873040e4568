//! Golden tests of what `tt` prints: the pure formatting functions (`ops::format`) fed fixed API
//! JSON and a fixed "now", compared with the files under `tests/golden/`. After an intended
//! change, rewrite them with `UPDATE_GOLDEN=1 cargo test -p ops --test golden` and review the
//! diff.

use std::path::PathBuf;

use ops::format::{self, View};
use serde_json::{Value, json};

/// 2026-12-06T15:00:00Z: every relative time below is counted from here.
const NOW_MS: i64 = 1_796_569_200_000;
const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

const TABLE: View = View { now_ms: NOW_MS, wide: false, color: false };
const WIDE: View = View { now_ms: NOW_MS, wide: true, color: false };
const COLOR: View = View { now_ms: NOW_MS, wide: false, color: true };

fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; create it with UPDATE_GOLDEN=1", path.display()));
    assert!(
        expected == actual,
        "{} differs from the output (rerun with UPDATE_GOLDEN=1 if the change is intended)\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

fn deploys() -> Vec<Value> {
    vec![
        json!({
            "id": "bJ3k9QxvRkqV0Z1c2d3e4f", "envId": "e1", "buildId": "Bq7TnX0aQ4u2w9Yk1ZrPcA",
            "type": "REGULAR", "state": "RUNNING", "acceptanceStatus": "PENDING_DEPLOY",
            "successTotal": 3, "failTotal": 0, "total": 10, "operator": "alice",
            "description": "v2 to canary", "startDate": NOW_MS - 3 * MINUTE_MS - 20_000,
            "lastUpdateDate": NOW_MS - 12_000, "successDate": null,
        }),
        json!({
            "id": "aZ0y8PwuQjpU9Y0b1c2d3e", "envId": "e1", "buildId": "Ap6SmW9zP3t1v8Xj0YqObz",
            "type": "ROLLBACK", "state": "ABORTED", "acceptanceStatus": "TERMINATED",
            "successTotal": 1, "failTotal": 2, "total": 10, "operator": "bob",
            "description": null, "startDate": NOW_MS - 2 * HOUR_MS,
            "lastUpdateDate": NOW_MS - 2 * HOUR_MS + 5 * MINUTE_MS, "successDate": null,
        }),
        json!({
            "id": "Yx9w7OvtPiOT8X9a0b1c2d", "envId": "e1", "buildId": "Ap6SmW9zP3t1v8Xj0YqObz",
            "type": "REGULAR", "state": "SUCCEEDED", "acceptanceStatus": "ACCEPTED",
            "successTotal": 10, "failTotal": 0, "total": 10, "operator": "carol",
            "description": "v1", "startDate": NOW_MS - 5 * DAY_MS,
            "lastUpdateDate": NOW_MS - 5 * DAY_MS + HOUR_MS, "successDate": NOW_MS - 5 * DAY_MS + HOUR_MS,
        }),
    ]
}

fn builds() -> Vec<Value> {
    vec![
        json!({
            "id": "Bq7TnX0aQ4u2w9Yk1ZrPcA", "name": "svc", "branch": "main", "repo": "acme/svc",
            "commit": "fedcba9876543210fedcba9876543210fedcba98", "commitShort": "fedcba9",
            "commitDate": NOW_MS - 26 * HOUR_MS, "publishDate": NOW_MS - 25 * HOUR_MS,
            "publisher": "ci", "artifactUrl": "tt://blob/4a5b6c", "artifactSize": 5_242_880,
            "artifactBlake3": "4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778899",
        }),
        json!({
            "id": "Ap6SmW9zP3t1v8Xj0YqObz", "name": "svc", "branch": "main", "repo": "acme/svc",
            "commit": "0123456789abcdef0123456789abcdef01234567", "commitShort": "0123456",
            "commitDate": NOW_MS - 6 * DAY_MS, "publishDate": NOW_MS - 6 * DAY_MS + HOUR_MS,
            "publisher": "ci", "artifactUrl": "https://artifacts.example/svc-1.tgz",
            "artifactSize": 5_100_000,
            "artifactBlake3": "0011223344556677889900aabbccddeeff00112233445566778899aabbccddee",
        }),
    ]
}

fn agents() -> Vec<Value> {
    let agent = |host: &str, stage: &str, state: &str, status: &str, ago: i64| {
        json!({
            "hostId": format!("i-{host}"), "hostName": host, "envId": "e1",
            "deployId": "bJ3k9QxvRkqV0Z1c2d3e4f", "deployStage": stage, "state": state,
            "status": status, "lastErrno": if status == "SUCCEEDED" { 0 } else { 1 },
            "lastUpdateDate": NOW_MS - ago, "stageStartDate": NOW_MS - ago - 30_000,
        })
    };
    vec![
        agent("web-1", "SERVING_BUILD", "NORMAL", "SUCCEEDED", 90_000),
        agent("web-2", "RESTARTING", "NORMAL", "UNKNOWN", 4_000),
        agent("web-3", "PRE_DOWNLOAD", "PAUSED_BY_SYSTEM", "TOO_MANY_RETRY", 20 * MINUTE_MS),
    ]
}

fn stages() -> Vec<Value> {
    vec![json!({
        "id": "e1", "envName": "svc", "stageName": "canary", "stageType": "CANARY",
        "buildName": "svc", "maxParallel": 2, "maxParallelPct": null, "envState": "NORMAL",
        "deployId": "bJ3k9QxvRkqV0Z1c2d3e4f", "lastUpdate": NOW_MS - 3 * DAY_MS,
        "lastOperator": "alice", "description": "canary hosts",
    })]
}

#[test]
fn deploy_tables() {
    check("history.txt", &format::deploys(&deploys(), &TABLE));
    check("history-wide.txt", &format::deploys(&deploys(), &WIDE));
    check("history-color.txt", &format::deploys(&deploys(), &COLOR));
    check("history.json", &serde_json::to_string_pretty(&json!({"deploys": deploys()})).unwrap());
}

#[test]
fn build_tables() {
    check("builds.txt", &format::builds(&builds(), &TABLE));
    check("builds-wide.txt", &format::builds(&builds(), &WIDE));
}

#[test]
fn host_and_stage_tables() {
    check("hosts.txt", &format::agents(&agents(), &TABLE));
    check("hosts-wide.txt", &format::agents(&agents(), &WIDE));
    check("hosts-color.txt", &format::agents(&agents(), &COLOR));
    check("stages.txt", &format::stages(&stages(), &TABLE));
    check("stages-wide.txt", &format::stages(&stages(), &WIDE));
}

#[test]
fn token_table_counts_expiry_forward() {
    let tokens = vec![json!({
        "name": "ci", "id": "t1", "type": "SCRIPT", "resource": "svc", "role": "OPERATOR",
        "expireDate": NOW_MS + 179 * DAY_MS,
    })];
    check("tokens.txt", &format::tokens(&tokens, &TABLE));
}

#[test]
fn watch_output() {
    let d = &deploys()[0];
    let lines = [format::watch_line(d, false), format::watch_line(&deploys()[1], false)];
    check("watch-lines.txt", &format!("{}\n{}\n", lines[0], lines[1]));
    check("watch-frame.txt", &format::watch_frame("svc/canary", d, &agents(), &TABLE));
    assert_eq!(format::erase_lines(0), "");
    assert_eq!(format::erase_lines(7), "\x1b[7A\r\x1b[J");
}

#[test]
fn build_diff() {
    let (b, a) = (&builds()[0], &builds()[1]);
    check("diff.txt", &format::build_diff(a, b, &TABLE));
    check("diff.json", &serde_json::to_string_pretty(&format::build_diff_json(a, b)).unwrap());
}
