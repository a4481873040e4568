//! Build publishes against our coordinator: `POST {base_url}/v1/builds`.
//!
//! Publishing a build is one client write: any node accepts it and forwards it to the Raft leader,
//! which answers once the entry is committed, i.e. fsynced on a quorum. That makes it the
//! counterpart of an etcd put.

use futures::future::BoxFuture;
use reqwest::StatusCode;

use super::loadgen::{self, WriteTarget};

/// Publishes one build per write.
#[derive(Debug, Clone)]
pub struct BuildPublish {
    /// Any coordinator node, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
}

impl BuildPublish {
    /// The JSON body of write `seq` of `worker`: a Teletraan `BuildBean` (`/v1/builds` takes
    /// `name`, `artifactUrl`, `repo`, `branch` and `commit`, all required).
    ///
    /// The string values together weigh exactly `value.len()` bytes (the etcd side's value size)
    /// whenever the fixed fields fit: `publishInfo` takes up the rest. The padding must sit in a
    /// field the coordinator stores, or it would never reach the Raft log: serde drops unknown
    /// fields such as `description` silently. `commit` is `seq` as 40 hex digits, the length of a
    /// git SHA-1.
    pub(crate) fn body(worker: usize, seq: u64, value: &[u8]) -> serde_json::Value {
        let name = format!("bench-w{worker}");
        let artifact_url = format!("file:///bench/{worker}/{seq}");
        let commit = format!("{seq:040x}");
        let (branch, repo) = ("main", "bench");
        let fixed_bytes =
            name.len() + artifact_url.len() + commit.len() + branch.len() + repo.len();
        let padding = &value[..value.len().saturating_sub(fixed_bytes)];
        serde_json::json!({
            "name": name,
            "artifactUrl": artifact_url,
            "commit": commit,
            "branch": branch,
            "repo": repo,
            "publishInfo": String::from_utf8_lossy(padding),
        })
    }
}

impl WriteTarget for BuildPublish {
    fn request(
        &self,
        client: &reqwest::Client,
        worker: usize,
        seq: u64,
        value: &[u8],
    ) -> BoxFuture<'static, Result<(), String>> {
        let request = client
            .post(format!("{}/v1/builds", self.base_url))
            .json(&Self::body(worker, seq, value));
        Box::pin(async move {
            loadgen::expect_status(request.send().await, &[StatusCode::OK, StatusCode::CREATED])
                .await
        })
    }

    fn name(&self) -> String {
        super::OURS_TARGET.to_owned()
    }
}
