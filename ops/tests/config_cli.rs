//! `tt config validate FILE` with the real parsers: the shipped example configs pass, and a
//! broken one fails (exit 1) naming the key and the line. `tt config print` names the sources.

use std::path::Path;
use std::process::Command;

mod support;

fn tt(args: &[&str]) -> (i32, String, String) {
    support::run(
        Command::new(env!("CARGO_BIN_EXE_tt"))
            .env_remove("TT_ADDR")
            .env_remove("TT_TOKEN")
            .args(args),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn the_packaged_example_configs_are_valid() {
    let etc = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/etc/tt");
    for (file, kind) in [("agent.toml", "agent"), ("coordinator.toml", "coordinator")] {
        let (code, out, err) = tt(&["config", "validate", &format!("{etc}/{file}")]);
        assert_eq!(code, 0, "{file}: {out}{err}");
        assert!(out.contains(&format!("valid {kind} config")), "{out}");
    }
}

#[test]
fn agent_configs_are_checked_by_the_agent_parser() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "agent.toml", "coordinators = [\"a:7410\"]\nmax_retryy = 3\n");
    let (code, _, err) = tt(&["config", "validate", &bad]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("line 2") && err.contains("max_retryy"), "{err}");
}

#[test]
fn coordinator_configs_are_checked_by_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "coordinator.toml",
        "node_id = 1\ndata_dir = \"/var/lib/tt\"\ntls_dir = \"/etc/tt/tls\"\n",
    );
    let (code, out, err) = tt(&["config", "validate", &good]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("valid coordinator config (node 1"), "{out}");

    let bad = write(
        dir.path(),
        "bad.toml",
        "node_id = 1\ndata_dir = \"/d\"\ntls_dir = \"/t\"\nraft_addr = 12\n",
    );
    let (code, _, err) = tt(&["config", "validate", &bad]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("line 4") && err.contains("socket address"), "{err}");

    let invalid =
        write(dir.path(), "zero.toml", "node_id = 0\ndata_dir = \"/d\"\ntls_dir = \"/t\"\n");
    let (code, _, err) = tt(&["config", "validate", &invalid]);
    assert_eq!(code, 1);
    assert!(err.contains("node_id must be greater than 0"), "{err}");
}

#[test]
fn unparseable_or_unrecognisable_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broken = write(dir.path(), "broken.toml", "x = [\n");
    let (code, _, err) = tt(&["config", "validate", &broken]);
    assert_eq!(code, 1);
    assert!(err.contains("not valid TOML") && err.contains("line 1"), "{err}");
    let unknown = write(dir.path(), "unknown.toml", "max_retry = 3\n");
    let (code, _, err) = tt(&["config", "validate", &unknown]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--kind"), "{err}");
    let (code, out, err) = tt(&["config", "validate", &unknown, "--kind", "agent"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn config_print_names_where_each_setting_came_from() {
    let (code, text, _) = support::run(
        Command::new(env!("CARGO_BIN_EXE_tt"))
            .env("TT_ADDR", "http://tt.example:8080")
            .env("TT_TOKEN", "secret-value")
            .args(["config", "print", "-o", "json"]),
    );
    assert_eq!(code, 0, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["server"]["value"], "http://tt.example:8080");
    assert_eq!(v["server"]["source"], "environment TT_ADDR");
    assert_eq!(v["token"]["source"], "environment TT_TOKEN");
    assert!(!text.contains("secret-value"), "the token's value is never printed: {text}");
    assert_eq!(v["output"]["source"], "flag --output");
    let (code, out, _) = tt(&["config", "print"]);
    assert_eq!(code, 0);
    assert!(out.contains("http://127.0.0.1:8080") && out.contains("default"), "{out}");
}

#[test]
fn completions_and_man_pages_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = tt(&["completion", shell]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("rollback") && out.contains("history"), "{shell}: {out}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = tt(&["man", "--out-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for page in ["tt.1", "tt-status.1", "tt-env-create.1", "tt-config-validate.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_default();
        assert!(text.contains(".TH"), "{page} is a man page: {text:.200}");
    }
}
