//! Wire and persisted types shared by every part of the deploy system. No IO, no async.
//!
//! - [`beans`]: Teletraan's REST beans (`EnvironBean`, `DeployBean`, `AgentBean`, …) with
//!   Teletraan's exact JSON field names, and the "null = unchanged" update of a stage.
//! - [`ping`]: the agent ping protocol (`PingRequestBean` in, `PingResponseBean` out).
//! - [`enums`]: every Teletraan enum with its exact wire strings.
//! - [`ids`]: id newtypes and Teletraan's deterministic id encoding.
//! - [`command`]: Raft command payloads the coordinator leader proposes.
//! - [`auth`]: roles, role beans and token records (hashes only).
//! - [`frame`]: length-prefixed postcard frames for the QUIC protocols.
//!
//! JSON (serde_json) is the REST encoding; postcard is the Raft and QUIC encoding. Both
//! encode the same types, so every type here avoids serde features postcard cannot carry
//! (skipped fields, untagged or flattened enums, `deserialize_any`). postcard encodes enum
//! variants and struct fields by position: they are appended, never reordered or removed.

pub mod agent;
pub mod auth;
pub mod beans;
pub mod command;
pub mod enums;
pub mod frame;
pub mod ids;
mod nulls;
pub mod ping;

/// A point in time as Teletraan stores it: milliseconds since the Unix epoch.
pub type EpochMillis = i64;

pub use frame::{FrameDecoder, FrameError, MAX_FRAME_BYTES};
pub use ids::{
    AgentKey, BuildId, ChangeId, ConstraintId, DataId, DeployId, EnvId, HostId, HotfixId, NodeId,
    ScheduleId, TagId,
};

/// QUIC ALPN protocol names: one per link (see DESIGN §3). A new version gets a new name.
pub mod alpn {
    /// Coordinator to coordinator: Raft RPCs, mutual TLS.
    pub const RAFT: &[u8] = b"tt-raft/1";
    /// Agent to coordinator: ping and long-poll.
    pub const AGENT: &[u8] = b"tt-agent/1";
    /// Agent to agent and agent to coordinator: blobs.
    pub const BLOB: &[u8] = b"tt-blob/1";
}
