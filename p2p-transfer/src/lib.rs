//! Transfer machinery that knows nothing about deploys.
//!
//! # Brief overview
//!
//! - [`rpc`] and [`tls`]: request/response over QUIC with mutual TLS under a cluster CA (Raft).
//! - [`blob`]: content-addressed blobs named by their BLAKE3 root ([`blob::BlobHash`]),
//!   verified in 16 KiB chunk groups against a pre-order outboard (via `bao-tree`), scheduled
//!   in pieces of 256 KiB–1 MiB ([`blob::Geometry`]), kept in a [`blob::BlobStore`] with
//!   resumable partial blobs, quota, watermark eviction and pins.
//! - [`wire`]: the `tt-blob/1` frames (have/bitfield control messages, piece requests).
//! - [`swarm`]: [`swarm::BlobNode`], one host's QUIC endpoint that serves its store and runs
//!   [`swarm::Download`]s; each download is driven by the pure [`swarm::scheduler::Scheduler`]
//!   (rarest first, origin last, endgame, bans).
//! - [`ratelimit`]: the host-wide upload and download token buckets.

pub mod blob;
pub mod ratelimit;
pub mod rpc;
pub mod swarm;
pub mod tls;
pub mod wire;
