//! The deploy agent: pings the coordinators, runs the deploy stages they ask for with the
//! user's hook scripts, stages builds, and persists what it did.

pub mod config;
pub mod coordinator_client;
pub mod daemon;
pub mod download;
pub mod executor;
pub mod extract;
pub mod hostinfo;
pub mod json_client;
pub mod machine;
pub mod metrics;
pub mod staging;
pub mod status;
pub mod swarm;
pub mod template;

/// Loads a cluster's CA certificate (`ca.pem`) from `dir`.
pub fn ca_cert(
    dir: &std::path::Path,
) -> Result<rustls_pki_types::CertificateDer<'static>, p2p_transfer::tls::TlsError> {
    p2p_transfer::tls::ClusterCa::load_cert(dir)
}
