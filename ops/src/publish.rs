//! Publishing helpers: the artifact's BLAKE3 hash and size, and its `file://` URL.

use std::io::Read;
use std::path::Path;

use anyhow::Context;

/// Read size while hashing an artifact.
const HASH_READ_BYTES: usize = 1 << 20;

/// What agents check an artifact against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub blake3_hex: String,
    pub size: u64,
}

/// Hashes `path` with BLAKE3 (streamed; any size).
pub fn digest_file(path: &Path) -> anyhow::Result<Digest> {
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("cannot open the artifact {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; HASH_READ_BYTES];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Digest { blake3_hex: hasher.finalize().to_hex().to_string(), size })
}

/// The `file://` URL of `path` (made absolute).
pub fn file_url(path: &Path) -> anyhow::Result<String> {
    let abs =
        std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let s = abs.to_str().with_context(|| format!("{} is not UTF-8", abs.display()))?;
    Ok(format!("file://{s}"))
}

/// Longest an artifact upload may take.
pub const UPLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// Read size while uploading.
const UPLOAD_READ_BYTES: usize = 256 * 1024;
/// How often upload progress is printed.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// What the cluster answered to an upload.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Uploaded {
    pub blake3: String,
    pub size: u64,
    /// `tt://blob/<hash>`: the build's `artifactUrl`.
    pub url: String,
    /// Nodes holding a copy.
    pub copies: Vec<u64>,
}

/// Streams `path` to the cluster (`POST /v1/blobs`), printing progress to stderr when
/// `progress` is set; the cluster hashes it and keeps copies on two nodes.
pub async fn upload(
    client: &crate::client::Client,
    path: &Path,
    progress: bool,
) -> anyhow::Result<Uploaded> {
    use futures::StreamExt;
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open the artifact {}", path.display()))?;
    let total = file.metadata().await?.len();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut sent = 0u64;
    let mut last = std::time::Instant::now();
    let stream =
        tokio_util::io::ReaderStream::with_capacity(file, UPLOAD_READ_BYTES).map(move |chunk| {
            if let Ok(c) = &chunk {
                sent += c.len() as u64;
                if progress && (last.elapsed() >= PROGRESS_EVERY || sent == total) {
                    last = std::time::Instant::now();
                    let pct = if total == 0 { 100.0 } else { sent as f64 * 100.0 / total as f64 };
                    eprint!(
                        "\ruploading {name}: {pct:5.1}% ({:.1}/{:.1} MiB)",
                        sent as f64 / 1048576.0,
                        total as f64 / 1048576.0
                    );
                }
            }
            chunk
        });
    let up: Option<Uploaded> = client
        .post_body("/v1/blobs", reqwest::Body::wrap_stream(stream), UPLOAD_TIMEOUT)
        .await
        .with_context(|| format!("uploading {}", path.display()))?;
    if progress {
        eprintln!();
    }
    up.context("the cluster answered the upload with no body")
}

/// Writes a `.tar.gz` of `files` (path inside the archive, mode, contents) and returns its
/// digest: builds for tests and benchmarks.
pub fn write_tarball(path: &Path, files: &[(&str, u32, &[u8])]) -> anyhow::Result<Digest> {
    use std::io::Write;
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, mode, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(*mode);
        h.set_cksum();
        tar.append_data(&mut h, name, *body).with_context(|| format!("adding {name}"))?;
    }
    tar.into_inner()?.finish()?.flush()?;
    digest_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_blake3_and_urls_are_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tar.gz");
        std::fs::write(&p, vec![7u8; 3 * HASH_READ_BYTES + 5]).unwrap();
        let d = digest_file(&p).unwrap();
        assert_eq!(d.size, 3 * HASH_READ_BYTES as u64 + 5);
        assert_eq!(
            d.blake3_hex,
            blake3::hash(&vec![7u8; 3 * HASH_READ_BYTES + 5]).to_hex().to_string()
        );
        assert_eq!(file_url(&p).unwrap(), format!("file://{}", p.display()));
        assert!(
            digest_file(&dir.path().join("missing"))
                .unwrap_err()
                .to_string()
                .contains("cannot open")
        );
    }
}
