//! The coordinator: one node of the three-node Raft cluster that stores Teletraan's state
//! (stages, builds, deploys) and serves the `/v1` API. See ARCHITECTURE.md for the map.

pub mod agent_api;
pub mod api;
pub mod auth;
pub mod blob_copies;
pub mod blobs;
pub mod config;
pub mod dashboard;
pub mod failpoints;
pub mod feed;
pub mod ids;
pub mod metrics;
pub mod node;
pub mod proposer;
pub mod raft;
pub mod state;
pub mod store;
pub mod swarm;
pub mod webhooks;

pub use p2p_transfer::{rpc, tls};
