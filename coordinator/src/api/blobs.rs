//! Build artifacts in the cluster: `POST /v1/blobs` stores an upload on this node, copies it to
//! at least [`MIN_BLOB_COPIES`] nodes and answers its hash and `tt://blob/<hash>` URL;
//! `PUT /v1/blobs/{hash}` is the copy between nodes (refused unless the bytes hash to `hash`);
//! `GET /v1/blobs/{hash}` serves it. These routes are not forwarded to the leader: any node
//! stores and serves blobs, and Raft only ever carries the hash (`artifactBlake3`).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tracing::{info, warn};

use super::{ApiError, App};
use crate::blobs::{BlobError, MIN_BLOB_COPIES, parse_hash};

/// How long copying one blob to another node may take.
pub const BLOB_COPY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// Read size when streaming a blob to a client or a peer.
const BLOB_READ_BYTES: usize = 256 * 1024;

pub fn routes() -> axum::Router<App> {
    axum::Router::new()
        .route("/v1/blobs", post(upload))
        .route("/v1/blobs/{hash}", get(download).head(head).put(copy_in))
}

/// The URL a build's `artifactUrl` carries for a blob in the cluster.
pub fn blob_url(hash: &str) -> String {
    format!("{}{hash}", proto::beans::BLOB_URL_PREFIX)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Uploaded {
    blake3: String,
    size: u64,
    url: String,
    /// Nodes holding a copy.
    copies: Vec<u64>,
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::BadHash(_) | BlobError::HashMismatch { .. } | BlobError::Body(_) => {
                ApiError::bad_request(e.to_string())
            }
            BlobError::NotFound(_) => ApiError::not_found(e.to_string()),
            BlobError::TooLarge { limit } => ApiError::too_large(limit as usize),
            BlobError::Io { .. } => ApiError::unavailable(e.to_string()),
        }
    }
}

async fn upload(
    State(app): State<App>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // The copy to a peer carries the uploader's credentials: the peer authorizes it too.
    let auth = headers.get(header::AUTHORIZATION).cloned();
    let info = app.blobs.put(body.into_data_stream(), None).await?;
    let mut copies = vec![app.node_id];
    let peers: Vec<(u64, String)> = {
        let m = app.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != app.node_id)
            .map(|(id, n)| (*id, n.http_addr.clone()))
            .collect()
    };
    let wanted = MIN_BLOB_COPIES.min(peers.len() + 1);
    let mut errors = Vec::new();
    for (id, addr) in peers {
        if copies.len() >= MIN_BLOB_COPIES {
            break;
        }
        match copy_to(&app, &addr, &info.blake3, auth.as_ref()).await {
            Ok(()) => copies.push(id),
            Err(e) => {
                warn!(blob = info.blake3, peer = id, error = %e, "copying the blob failed");
                errors.push(format!("node {id}: {e}"));
            }
        }
    }
    if copies.len() < wanted {
        return Err(ApiError::unavailable(format!(
            "blob {} is stored on node {} only; copying it to a second node failed ({}); retry the upload",
            info.blake3,
            app.node_id,
            errors.join("; ")
        )));
    }
    info!(blob = info.blake3, size = info.size, ?copies, "blob stored");
    let body =
        Uploaded { url: blob_url(&info.blake3), blake3: info.blake3, size: info.size, copies };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Streams a local blob to a peer's `PUT /v1/blobs/{hash}`.
async fn copy_to(
    app: &App,
    addr: &str,
    hash: &str,
    auth: Option<&axum::http::HeaderValue>,
) -> Result<(), String> {
    let file = tokio::fs::File::open(app.blobs.path(hash)).await.map_err(|e| e.to_string())?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, BLOB_READ_BYTES);
    let mut req = app.http.put(format!("http://{addr}/v1/blobs/{hash}")).timeout(BLOB_COPY_TIMEOUT);
    if let Some(auth) = auth {
        req = req.header(header::AUTHORIZATION, auth.clone());
    }
    let resp =
        req.body(reqwest::Body::wrap_stream(stream)).send().await.map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("{}: {}", resp.status(), resp.text().await.unwrap_or_default()))
    }
}

async fn copy_in(
    State(app): State<App>,
    Path(hash): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let hash = parse_hash(&hash)?;
    if app.blobs.size(&hash).is_some() {
        return Ok(StatusCode::NO_CONTENT);
    }
    app.blobs.put(body.into_data_stream(), Some(&hash)).await?;
    Ok(StatusCode::CREATED)
}

async fn head(State(app): State<App>, Path(hash): Path<String>) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash)?;
    let size = app.blobs.size(&hash).ok_or(BlobError::NotFound(hash))?;
    Ok(([(header::CONTENT_LENGTH, size.to_string())], StatusCode::OK).into_response())
}

async fn download(State(app): State<App>, Path(hash): Path<String>) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash)?;
    let path = app.blobs.path(&hash);
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BlobError::NotFound(hash).into());
        }
        Err(source) => return Err(BlobError::Io { path, source }.into()),
    };
    let size = file.metadata().await.map(|m| m.len()).unwrap_or_default();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, BLOB_READ_BYTES);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
