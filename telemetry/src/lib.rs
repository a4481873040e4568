//! What the daemons share to be observed: the log format choice and subscriber set-up
//! ([`log`]), health checks rendered the Kubernetes way ([`health`]), and a reader of the
//! Prometheus text exposition for tests and tools ([`exposition`]).
//!
//! Knows nothing about deploys; no tokio, no HTTP server (each daemon serves the text).

pub mod exposition;
pub mod health;
pub mod log;
