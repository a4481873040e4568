//! The README's main command runs in the suite: a real cluster and real agents deploy the demo
//! service, promote it, deploy a second version and roll it back; every host serves each build.

use std::time::Duration;

use ops::demo::{Demo, DemoOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_deploys_promotes_and_rolls_back_on_real_agents() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = DemoOptions {
        dir: tmp.path().join("demo"),
        agents: 3,
        http_port: None,
        raft_port: None,
        prod_parallel: 1,
        verbose: false,
    };
    let demo = Demo::start(opts).await.unwrap();
    let report = match tokio::time::timeout(Duration::from_secs(240), demo.run_story()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let logs: Vec<String> = demo
                .agents
                .iter()
                .map(|a| {
                    format!(
                        "{}\n{}\n{}",
                        a.spec.hostname,
                        a.log_tail(3000),
                        a.env_log_tail("demo", 3000)
                    )
                })
                .collect();
            panic!("the demo failed: {e:#}\n{}", logs.join("\n"));
        }
        Err(_) => panic!("the demo hung"),
    };
    let by_name: std::collections::BTreeMap<_, _> = report.checkpoints.iter().cloned().collect();
    let served = |name: &str| by_name.get(name).unwrap_or_else(|| panic!("no checkpoint {name}"));
    assert_eq!(served("canary v1").len(), 1);
    assert!(served("all v1").values().all(|v| v == "v1") && served("all v1").len() == 3);
    assert!(served("prod v2").values().all(|v| v == "v2") && served("prod v2").len() == 2);
    assert!(served("prod rolled back").values().all(|v| v == "v1"));
    assert!(
        report.max_prod_deploying <= 1,
        "prod's limit of 1 was exceeded: {} seen deploying at once",
        report.max_prod_deploying
    );
    drop(demo);
}
