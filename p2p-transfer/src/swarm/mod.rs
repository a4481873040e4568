//! The swarm: a deterministic download scheduler ([`scheduler`]), and the QUIC node that
//! serves blobs and drives downloads ([`BlobNode`]).
//!
//! Typical use on a host (the agent) or an origin (a coordinator):
//!
//! ```text
//! let store = BlobStore::open(store_config)?;
//! let node = BlobNode::start(node_config, NodeTls::cluster(&cert, &ca)?, store)?;
//! // origin: node.store().import_file(path)?  — then it serves it
//! let download = node.download(spec, peers_from_tracker, DownloadOptions::recommended()).await?;
//! download.add_peers(more_peers);            // as the tracker learns of them
//! let report = download.finish().await?;     // report.blob: verified, complete
//! ```

mod download;
mod node;
pub mod relay;
pub mod repeats;
pub mod scheduler;

pub use download::{
    DOWNLOAD_EVENT_QUEUE, Download, DownloadError, DownloadOptions, DownloadProgress,
    DownloadReport, MAX_DIALS, MIN_PEER_LINKS, ORIGIN_HEAD_START, PIECES_PER_PEER_LINK, PeerAdder,
    PeerInfo, REDIAL_BACKOFF, STALL_TIMEOUT,
};
pub use node::{
    BlobNode, CONNECT_TIMEOUT, CONTROL_QUEUE_FRAMES, ConnectError, MAX_LINKS,
    MAX_PIECE_STREAMS_PER_LINK, NodeConfig, NodeStats, NodeTls, RECOMMENDED_ORIGIN_REPEAT_WINDOW,
    RECOMMENDED_QUEUED_UPLOADS, RECOMMENDED_UPLOAD_SLOTS, SOCKET_BUFFER_BYTES, ServeFault,
    StartError, UPLOAD_QUEUE_MAX, UPLOAD_SLICE_BYTES,
};
pub use repeats::RECENT_UPLOADS_MAX;
pub use scheduler::{PeerId, PeerRole};
