//! Operator CLI library: the `tt` binary is glue over these modules.
//!
//! `bench` holds the write-path benchmark against etcd.

pub mod bench;
pub mod client;
pub mod confirm;
pub mod demo;
pub mod demo_build;
pub mod devcluster;
pub mod devfleet;
pub mod format;
pub mod ids;
pub mod publish;
pub mod simfleet;

/// Installs rustls' ring crypto provider for this process (idempotent). reqwest is built without
/// a provider of its own, so every client needs this first.
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
