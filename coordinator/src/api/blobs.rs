//! Build artifacts in the cluster: `POST /v1/blobs` stores an upload on this node, copies it to
//! at least [`MIN_BLOB_COPIES`] nodes and answers its hash and `tt://blob/<hash>` URL;
//! `PUT /v1/blobs/{hash}` is the copy between nodes (refused unless the bytes hash to `hash`);
//! `GET /v1/blobs/{hash}` serves it; `POST /v1/blobs/pull` fetches an `https://`, `http://` or
//! `file://` URL once into the cluster the same way (pull-through: agents then fetch the build
//! from the swarm, not from the URL). These routes are not forwarded to the leader: any node
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
/// Largest `POST /v1/blobs/pull` request body (a URL and a hash).
pub const MAX_PULL_REQUEST_BYTES: usize = 16 * 1024;
/// How long pulling one artifact from its URL may take.
pub const BLOB_PULL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

pub fn routes() -> axum::Router<App> {
    axum::Router::new()
        .route("/v1/blobs", post(upload))
        .route(
            "/v1/blobs/pull",
            post(pull).layer(axum::extract::DefaultBodyLimit::max(MAX_PULL_REQUEST_BYTES)),
        )
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
    /// The URL a pull fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
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
    let info = app.blobs.put(body.into_data_stream(), None).await?;
    replicate(&app, &headers, info, None).await
}

/// Body of `POST /v1/blobs/pull`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PullRequest {
    url: String,
    /// If given, the pulled bytes must hash to this (400 otherwise, nothing kept).
    blake3: Option<String>,
}

/// Fetches `url` into this node's store and copies it like an upload.
async fn pull(
    State(app): State<App>,
    headers: axum::http::HeaderMap,
    super::teletraan::JsonBody(req): super::teletraan::JsonBody<PullRequest>,
) -> Result<Response, ApiError> {
    let expected = req.blake3.as_deref().map(parse_hash).transpose()?;
    let info = if let Some(path) = req.url.strip_prefix("file://") {
        let path = allowed_file(&app.pull_file_roots, path)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot open {}: {e}", path.display())))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, BLOB_READ_BYTES);
        app.blobs.put(stream, expected.as_deref()).await?
    } else if req.url.starts_with("https://") || req.url.starts_with("http://") {
        let resp = app
            .http
            .get(&req.url)
            .timeout(BLOB_PULL_TIMEOUT)
            .send()
            .await
            .map_err(|e| pull_error(&req.url, &e))?;
        if !resp.status().is_success() {
            return Err(ApiError::bad_request(format!(
                "{} answered {}; nothing was stored",
                req.url,
                resp.status()
            )));
        }
        if resp.content_length().is_some_and(|n| n > app.blobs.max_bytes()) {
            return Err(BlobError::TooLarge { limit: app.blobs.max_bytes() }.into());
        }
        app.blobs.put(resp.bytes_stream(), expected.as_deref()).await?
    } else {
        return Err(ApiError::bad_request(format!(
            "url {:?} is not https://, http:// or file://",
            req.url
        )));
    };
    info!(blob = info.blake3, source = req.url, size = info.size, "pulled");
    replicate(&app, &headers, info, Some(req.url)).await
}

fn pull_error(url: &str, e: &reqwest::Error) -> ApiError {
    ApiError::bad_request(format!("cannot fetch {url}: {}", super::error::error_chain(e)))
}

/// The canonical path of `path` if it lies inside one of `roots` (after resolving `..` and
/// symlinks), or 403 saying why not.
fn allowed_file(roots: &[std::path::PathBuf], path: &str) -> Result<std::path::PathBuf, ApiError> {
    let forbidden = |m: String| ApiError::new(StatusCode::FORBIDDEN, m);
    if roots.is_empty() {
        return Err(forbidden(
            "file:// pulls are off on this node (set pull_file_roots in its config)".into(),
        ));
    }
    let real = std::fs::canonicalize(path)
        .map_err(|e| ApiError::bad_request(format!("cannot open {path}: {e}")))?;
    if roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).any(|r| real.starts_with(r)) {
        Ok(real)
    } else {
        Err(forbidden(format!("{path} is outside this node's pull_file_roots")))
    }
}

/// Copies a stored blob to peers until [`MIN_BLOB_COPIES`] nodes hold it, then answers 201.
async fn replicate(
    app: &App,
    headers: &axum::http::HeaderMap,
    info: crate::blobs::BlobInfo,
    source: Option<String>,
) -> Result<Response, ApiError> {
    // The copy to a peer carries the uploader's credentials: the peer authorizes it too.
    let auth = headers.get(header::AUTHORIZATION).cloned();
    let mut copies = vec![app.node_id];
    let peers = crate::blob_copies::peer_addrs(app);
    let wanted = MIN_BLOB_COPIES.min(peers.len() + 1);
    let mut errors = Vec::new();
    for (id, addr) in peers {
        if copies.len() >= MIN_BLOB_COPIES {
            break;
        }
        match copy_to(app, &addr, &info.blake3, auth.as_ref()).await {
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
    let body = Uploaded {
        url: blob_url(&info.blake3),
        blake3: info.blake3,
        size: info.size,
        copies,
        source,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_pulls_need_a_root_and_stay_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a"), b"a").unwrap();
        std::fs::write(dir.path().join("b"), b"b").unwrap();
        std::os::unix::fs::symlink(dir.path().join("b"), root.join("link")).unwrap();
        let a = root.join("a");
        let off = allowed_file(&[], a.to_str().unwrap()).unwrap_err();
        assert_eq!(off.status, StatusCode::FORBIDDEN);
        assert!(off.message.contains("off"), "{}", off.message);
        let roots = [root.clone()];
        assert_eq!(allowed_file(&roots, a.to_str().unwrap()).unwrap(), a.canonicalize().unwrap());
        for outside in [dir.path().join("b"), root.join("../b"), root.join("link")] {
            let e = allowed_file(&roots, outside.to_str().unwrap()).unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{}", outside.display());
        }
    }
}
