//! Transfer machinery that knows nothing about deploys: QUIC request/response with TLS under a
//! cluster CA (`rpc`, `tls`), and (next) the BLAKE3-verified blob swarm.

pub mod rpc;
pub mod tls;
