//! The deploy agent. For now: the client of the coordinators' native agent protocol.

pub mod coordinator_client;

/// Loads a cluster's CA certificate (`ca.pem`) from `dir`.
pub fn ca_cert(
    dir: &std::path::Path,
) -> Result<rustls_pki_types::CertificateDer<'static>, p2p_transfer::tls::TlsError> {
    p2p_transfer::tls::ClusterCa::load_cert(dir)
}
