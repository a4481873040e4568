//! `deploy-agent`'s local commands, run as a real process against a real agent directory.

use std::path::Path;
use std::process::{Command, Output};

use agent::status::{self, EnvStatus, EnvStatuses, InstanceLock};
use proto::enums::{AgentStatus, DeployStage};
use proto::ids::DeployId;

fn agent(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deploy-agent"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn seed(root: &Path) {
    let dir = root.join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let mut envs = EnvStatuses::new();
    let mut st = EnvStatus::default();
    st.report.deploy_id = Some(DeployId::new("D7"));
    st.report.stage_name = Some("prod".into());
    st.report.deploy_stage = Some(DeployStage::Restarting);
    st.report.status = Some(AgentStatus::TooManyRetry);
    st.report.fail_count = Some(3);
    st.report.error_message = Some("starting\nboom: port in use\n".into());
    envs.insert("web".into(), st);
    envs.insert("api".into(), EnvStatus::default());
    status::save(&dir, &envs).unwrap();
}

#[test]
fn status_shows_each_env_and_its_last_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = agent(tmp.path(), &["status"]);
    assert!(o.status.success());
    assert!(text(&o).contains("no envs"), "{}", text(&o));

    seed(tmp.path());
    let o = agent(tmp.path(), &["status"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let web = out.lines().find(|l| l.starts_with("web")).expect(&out);
    for field in ["prod", "D7", "RESTARTING", "TOO_MANY_RETRY", "3"] {
        assert!(web.contains(field), "{field} missing from {web:?}");
    }
    assert!(out.contains("last error: boom: port in use"), "{out}");

    let o = agent(tmp.path(), &["status", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["web"]["report"]["deployStage"], "RESTARTING");
}

#[test]
fn reset_forgets_an_env_but_not_while_the_agent_runs() {
    let tmp = tempfile::tempdir().unwrap();
    seed(tmp.path());
    let o = agent(tmp.path(), &["reset", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("no status for env \"nope\""), "{}", text(&o));

    let lock = InstanceLock::acquire(&tmp.path().join("agent")).unwrap();
    let o = agent(tmp.path(), &["reset", "web"]);
    assert_eq!(o.status.code(), Some(3), "locked: {}", text(&o));
    assert!(text(&o).contains("already runs"), "{}", text(&o));
    assert!(status::load(&tmp.path().join("agent")).unwrap().contains_key("web"), "unchanged");
    drop(lock);

    let o = agent(tmp.path(), &["reset", "web"]);
    assert!(o.status.success(), "{}", text(&o));
    let left = status::load(&tmp.path().join("agent")).unwrap();
    assert!(!left.contains_key("web") && left.contains_key("api"));
}

#[test]
fn logs_print_the_tail_and_bad_config_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("web.log"), "one\ntwo\nthree\n").unwrap();
    let o = agent(tmp.path(), &["logs", "web", "-n", "2"]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "two\nthree\n");
    let o = agent(tmp.path(), &["logs", "api"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("no log for env \"api\""), "{}", text(&o));

    let cfg = tmp.path().join("agent.toml");
    std::fs::write(&cfg, "max_retry = \"three\"\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_deploy-agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(t.contains("agent.toml") && t.contains("max_retry"), "{t}");
}
