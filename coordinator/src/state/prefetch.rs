//! Prefetch: which cluster build a host kept waiting for a parallelism slot should fetch now,
//! so that once admitted its DOWNLOADING step reads a local copy and the parallelism window is
//! spent on restarts only.
//!
//! A stage prefetches unless its agent configs set [`PREFETCH_CONFIG_KEY`] to `false` (or
//! `off`, `0`, `no`). Only builds stored in the cluster (`tt://blob/<hash>` with a recorded
//! BLAKE3 hash and size) are prefetched: they come through the swarm, whose bytes are verified
//! chunk by chunk; a URL build is left to its DOWNLOADING step.
//!
//! Also here, the other stage setting carried in agent configs: the stage's lease TTL
//! ([`proto::agent::STAGE_LEASE_TTL_CONFIG_KEY`]).

use proto::beans::BLOB_URL_PREFIX;
use proto::command::EnvConfigKind;
use proto::ids::EnvId;

use super::State;

/// The stage agent-config key that turns prefetch off for a stage (on by default).
pub const PREFETCH_CONFIG_KEY: &str = "tt.prefetch";

/// A build to fetch ahead of admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchBlob {
    /// BLAKE3 hash (hex) of the artifact.
    pub blake3: String,
    pub size: u64,
}

impl State {
    /// The build of `env`'s current deploy, if the stage prefetches and the build is stored in
    /// the cluster.
    pub fn prefetch_blob(&self, env: &EnvId) -> Option<PrefetchBlob> {
        let off = self
            .configs
            .get(&(env.clone(), EnvConfigKind::Agent))
            .and_then(|c| c.get(PREFETCH_CONFIG_KEY))
            .is_some_and(|v| {
                matches!(v.trim().to_ascii_lowercase().as_str(), "false" | "off" | "0" | "no")
            });
        if off {
            return None;
        }
        let deploy = self.deploys.get(self.envs.get(env)?.deploy_id.as_ref()?)?;
        let build = self.builds.get(deploy.build_id.as_ref()?)?;
        let hex = build.artifact_url.as_deref()?.strip_prefix(BLOB_URL_PREFIX)?;
        let blake3 = build.artifact_blake3.as_deref()?;
        if !hex.eq_ignore_ascii_case(blake3) {
            return None;
        }
        Some(PrefetchBlob { blake3: blake3.to_ascii_lowercase(), size: build.artifact_size? })
    }
}

impl State {
    /// `env`'s parallelism lease TTL in milliseconds, if its agent configs set a valid one.
    pub fn stage_lease_ttl_ms(&self, env: &EnvId) -> Option<u64> {
        self.configs
            .get(&(env.clone(), EnvConfigKind::Agent))
            .and_then(|c| c.get(proto::agent::STAGE_LEASE_TTL_CONFIG_KEY))
            .and_then(|v| proto::agent::parse_stage_lease_ttl_ms(v))
    }
}
