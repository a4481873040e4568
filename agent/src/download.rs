//! Fetching a build archive and making it ready to stage (Teletraan's `deploy-downloader`).
//!
//! [`Downloader::fetch`] copies a `file://` or `https://` URL to a local file, hashing it with
//! BLAKE3 while it streams, and keeps it only if it matches what was expected. [`ensure_build`]
//! is the DOWNLOADING stage: fetch `<builds_dir>/<env>-<build>.<ext>`, extract it safely to
//! `<builds_dir>/<build>/` and write the `<build>.extracted` marker.
//!
//! Goals:
//! - Verified or absent. A download goes to `<dest>.part` and is renamed into place only after
//!   the size and the hashes matched; on any error (or if the future is dropped) the part file is
//!   deleted and nothing is extracted.
//! - TLS verification always on (fixes quirk 5, curl `-k`): the system roots plus the operator's
//!   extra CAs. Plain `http://` only when [`DownloadLimits::allow_plain_http`] says so.
//! - A published `<url>.sha256` or `<url>.sha1` is honoured, comparing its first token as
//!   lowercase hex (fixes quirk 3, where the comparison always failed under Python 3).
//! - Bounded: a byte limit enforced while streaming, connect and read timeouts.
//!
//! Non-goals: `s3://` (broken in Teletraan, quirk 4), GPG-encrypted archives, resuming partial
//! downloads, retries (the caller retries the whole stage, as Teletraan's executor does).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha1::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::extract::{self, ArchiveFormat, ExtractError, ExtractLimits};

/// Default for [`DownloadLimits::max_download_bytes`]: 8 GiB.
pub const DEFAULT_MAX_DOWNLOAD_BYTES: u64 = 8 << 30;
/// Default for [`DownloadLimits::connect_timeout_ms`].
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Default for [`DownloadLimits::read_timeout_ms`]: the longest silence allowed while reading
/// a response (not a limit on the whole download, which may legitimately take long).
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 60_000;
/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 10;
/// Largest `.sha256` / `.sha1` file read; real ones are under 200 bytes.
pub const MAX_CHECKSUM_FILE_BYTES: usize = 4096;
/// Suffix of the marker written once a build is extracted: `<builds_dir>/<build_id>.extracted`.
pub const EXTRACTED_MARKER_SUFFIX: &str = ".extracted";
/// Longest env name or build id accepted as a file name component.
pub const MAX_NAME_BYTES: usize = 200;

const COPY_BUFFER_BYTES: usize = 64 * 1024;
const PART_SUFFIX: &str = ".part";
/// Extension of a download whose format is not known from its URL, until it is sniffed.
const UNKNOWN_FORMAT_SUFFIX: &str = ".download";
/// Bytes read from a downloaded file to recognise its format (`ustar` sits at 257..262).
const SNIFF_BYTES: usize = 512;

/// What the downloaded bytes must match. Unset fields are not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    pub blake3: Option<blake3::Hash>,
    pub size: Option<u64>,
}

/// Where a DOWNLOADING step got its build, in words for the coordinator's host timeline
/// (reported as `extraInfo.downloadSource`): for a build in the cluster, the bytes the swarm
/// brought from peers and from the origin between `before` and `after` (none: a local copy,
/// prefetched or kept); otherwise the URL without its query (which may carry credentials).
pub fn describe_source(
    url: &str,
    before: Option<&p2p_transfer::swarm::NodeStats>,
    after: Option<&p2p_transfer::swarm::NodeStats>,
) -> String {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1_048_576.0);
    if !url.starts_with(proto::beans::BLOB_URL_PREFIX) {
        return url.split(['?', '#']).next().unwrap_or(url).to_string();
    }
    match (before, after) {
        (Some(b), Some(a)) => {
            let origin =
                a.downloaded_from_origin_bytes.saturating_sub(b.downloaded_from_origin_bytes);
            let total = a.downloaded_bytes.saturating_sub(b.downloaded_bytes);
            let peers = total.saturating_sub(origin);
            if total == 0 {
                "a local copy (prefetched or kept)".into()
            } else {
                format!("swarm: {} from peers, {} from the origin", mib(peers), mib(origin))
            }
        }
        _ => "the coordinators (tt-agent/1)".into(),
    }
}

/// A verified download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub path: PathBuf,
    pub bytes: u64,
    pub blake3: blake3::Hash,
}

/// Bounds and policy for downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadLimits {
    /// Downloads larger than this are refused while streaming.
    pub max_download_bytes: u64,
    pub connect_timeout_ms: u64,
    /// Longest silence while reading a response.
    pub read_timeout_ms: u64,
    /// Accept `http://` URLs (and redirects to them). Off by default: without TLS anyone on the
    /// path can swap the build unless a BLAKE3 hash is expected.
    pub allow_plain_http: bool,
}

impl Default for DownloadLimits {
    fn default() -> Self {
        DownloadLimits {
            max_download_bytes: DEFAULT_MAX_DOWNLOAD_BYTES,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            read_timeout_ms: DEFAULT_READ_TIMEOUT_MS,
            allow_plain_http: false,
        }
    }
}

/// The hash algorithm of a checksum file published beside an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    Sha256,
    Sha1,
}

impl ChecksumAlgorithm {
    fn suffix(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Sha256 => ".sha256",
            ChecksumAlgorithm::Sha1 => ".sha1",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            ChecksumAlgorithm::Sha256 => 64,
            ChecksumAlgorithm::Sha1 => 40,
        }
    }
}

impl fmt::Display for ChecksumAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChecksumAlgorithm::Sha256 => "SHA-256",
            ChecksumAlgorithm::Sha1 => "SHA-1",
        })
    }
}

/// Why a build could not be fetched or prepared. URLs in messages have their query string and
/// password removed (presigned URLs carry secrets).
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The URL does not parse, or a `file://` URL is not a local absolute path.
    #[error("invalid build URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A scheme other than `file`, `https` (and `http` when allowed).
    #[error(
        "unsupported URL scheme {scheme:?} in {url}; builds are fetched over https:// or file://"
    )]
    UnsupportedScheme { scheme: String, url: String },
    /// `http://` without [`DownloadLimits::allow_plain_http`].
    #[error(
        "refusing plain http:// for {url}: publish the build over https://, or set \
         allow_plain_http if this network is trusted"
    )]
    PlainHttpRefused { url: String },
    /// An env name or build id that cannot be used as a file name.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName { what: &'static str, value: String, reason: &'static str },
    /// An extra CA certificate given to [`Downloader::new`] is not valid PEM.
    #[error("extra CA certificate #{index} is unusable: {reason}")]
    CaCertificate { index: usize, reason: String },
    /// The HTTP client could not be built (e.g. no CA certificates at all on this host).
    #[error("building the HTTPS client: {detail}")]
    Client { detail: String },
    /// Connecting, the TLS handshake (e.g. an untrusted certificate), a timeout or reading the
    /// response failed. Retry later, or check the URL's host, its certificate and our CAs.
    #[error("fetching {url}: {detail}")]
    Transport { url: String, detail: String },
    /// The server answered with a non-2xx status.
    #[error("fetching {url}: HTTP {status}{hint}", hint = http_hint(*status))]
    Http { status: u16, url: String },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The BLAKE3 hash differs from the build's: corrupt or tampered download. Nothing was
    /// kept or extracted.
    #[error(
        "BLAKE3 mismatch for {url}: expected {expected}, got {actual}; the download was \
         discarded (corrupt artifact, or the build was re-published with different bytes)"
    )]
    HashMismatch { url: String, expected: String, actual: String },
    /// The checksum file published beside the artifact does not match it.
    #[error(
        "{algorithm} mismatch for {url}: {checksum_url} says {expected}, the download hashes \
         to {actual}; the download was discarded"
    )]
    ChecksumMismatch {
        url: String,
        checksum_url: String,
        algorithm: ChecksumAlgorithm,
        expected: String,
        actual: String,
    },
    /// The checksum file beside the artifact exists but holds no usable hash.
    #[error("checksum file {checksum_url} is unusable: {reason}")]
    BadChecksumFile { checksum_url: String, reason: String },
    /// The size differs from the build's. The download was discarded.
    #[error(
        "size mismatch for {url}: expected {expected_bytes} bytes, received {received_bytes}; \
         the download was discarded"
    )]
    SizeMismatch { url: String, expected_bytes: u64, received_bytes: u64 },
    /// The download is larger than [`DownloadLimits::max_download_bytes`].
    #[error(
        "{url} is larger than the {limit_bytes}-byte download limit; refused (raise \
         max_download_bytes if the build is really this big)"
    )]
    TooLarge { url: String, limit_bytes: u64 },
    /// Neither the URL's name nor the downloaded bytes say which archive format this is.
    #[error(
        "cannot tell the archive format of {url}: its name has no .tar, .tar.gz, .tgz, .tar.zst, \
         .tzst or .zip suffix and its bytes are not gzip, zstd, zip or tar"
    )]
    UnknownFormat { url: String },
    /// The archive was downloaded and verified but refused or not extractable. It was deleted.
    #[error("extracting {archive}: {source}")]
    Extract {
        archive: PathBuf,
        #[source]
        source: ExtractError,
    },
}

fn http_hint(status: u16) -> &'static str {
    match status {
        404 | 410 => " (no build at this URL: not published yet, or deleted)",
        401 | 403 => " (access denied: check the artifact store's permissions for this host)",
        500..=599 => " (artifact server error; retry later)",
        _ => "",
    }
}

/// Fetches builds over `https://` (and `file://`), verifying TLS against the system roots plus
/// extra CAs. Cheap to share: one connection pool.
#[derive(Clone)]
pub struct Downloader {
    client: reqwest::Client,
    limits: DownloadLimits,
    blobs: Option<std::sync::Arc<dyn BlobSource>>,
}

impl fmt::Debug for Downloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Downloader")
            .field("limits", &self.limits)
            .field("blobs", &self.blobs.is_some())
            .finish()
    }
}

/// Bytes one `tt://blob/<hash>` read asks for.
pub const BLOB_READ_BYTES: u32 = proto::agent::MAX_BLOB_CHUNK_BYTES;

/// Where `tt://blob/<hash>` artifacts come from: the coordinators (the peer-to-peer swarm
/// later). The bytes are hashed as they arrive and checked like any other download.
pub trait BlobSource: Send + Sync {
    /// Up to `max_len` bytes of blob `hash` (hex) from `offset`, and the blob's size.
    fn read_blob<'a>(
        &'a self,
        hash: &'a str,
        offset: u64,
        max_len: u32,
    ) -> futures::future::BoxFuture<'a, Result<(u64, Vec<u8>), String>>;
}

impl Downloader {
    /// A downloader trusting the system's CA roots plus `extra_ca_pem` (each a PEM file's
    /// contents; a file may hold several certificates).
    pub fn new(extra_ca_pem: &[Vec<u8>], limits: DownloadLimits) -> Result<Self, DownloadError> {
        // reqwest is built with `rustls-no-provider`: it uses the process-default provider.
        p2p_transfer::tls::install_crypto_provider();
        let mut roots = Vec::new();
        for (index, pem) in extra_ca_pem.iter().enumerate() {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| DownloadError::CaCertificate { index, reason: error_chain(&e) })?;
            if certs.is_empty() {
                return Err(DownloadError::CaCertificate {
                    index,
                    reason: "no PEM CERTIFICATE block found".to_owned(),
                });
            }
            roots.extend(certs);
        }
        let client = reqwest::Client::builder()
            .tls_backend_rustls()
            .tls_certs_merge(roots)
            .https_only(!limits.allow_plain_http)
            .connect_timeout(Duration::from_millis(limits.connect_timeout_ms))
            .read_timeout(Duration::from_millis(limits.read_timeout_ms))
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .user_agent(concat!("tt-deploy-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DownloadError::Client { detail: error_chain(&e) })?;
        Ok(Downloader { client, limits, blobs: None })
    }

    /// Fetches `tt://blob/<hash>` URLs from `source`.
    pub fn with_blob_source(mut self, source: std::sync::Arc<dyn BlobSource>) -> Self {
        self.blobs = Some(source);
        self
    }

    /// The limits this downloader enforces.
    pub fn limits(&self) -> &DownloadLimits {
        &self.limits
    }

    /// Downloads `url` to `dest_file` (whose directory must exist), replacing it.
    ///
    /// The bytes stream to `<dest_file>.part` while being hashed; the part file is synced and
    /// renamed to `dest_file` only if the size, the BLAKE3 hash and (for https) a published
    /// `.sha256`/`.sha1` match. On error nothing is left at either path.
    pub async fn fetch(
        &self,
        url: &str,
        dest_file: &Path,
        expected: &Expected,
    ) -> Result<Fetched, DownloadError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| DownloadError::InvalidUrl {
            url: redact_unparsed(url),
            reason: e.to_string(),
        })?;
        let shown = redact(&parsed);
        match parsed.scheme() {
            "file" => {
                let source = parsed.to_file_path().map_err(|()| DownloadError::InvalidUrl {
                    url: shown.clone(),
                    reason: "a file:// URL must name an absolute path on this host".to_owned(),
                })?;
                let mut sink = Sink::create(dest_file, &shown, None, self, expected).await?;
                copy_local(&source, &mut sink).await?;
                sink.finish(dest_file, expected, None).await
            }
            "https" => self.fetch_http(&parsed, &shown, dest_file, expected).await,
            "http" if self.limits.allow_plain_http => {
                self.fetch_http(&parsed, &shown, dest_file, expected).await
            }
            "http" => Err(DownloadError::PlainHttpRefused { url: shown }),
            "tt" => self.fetch_blob(&parsed, &shown, dest_file, expected).await,
            scheme => {
                Err(DownloadError::UnsupportedScheme { scheme: scheme.to_owned(), url: shown })
            }
        }
    }

    /// `tt://blob/<hash>`: read from the blob source in pieces; the URL's hash is the expected
    /// one unless the build names its own (they must agree).
    async fn fetch_blob(
        &self,
        url: &reqwest::Url,
        shown: &str,
        dest_file: &Path,
        expected: &Expected,
    ) -> Result<Fetched, DownloadError> {
        let invalid = |reason: &str| DownloadError::InvalidUrl {
            url: shown.to_owned(),
            reason: reason.to_owned(),
        };
        if url.host_str() != Some("blob") {
            return Err(invalid("a tt:// URL must be tt://blob/<BLAKE3 hash>"));
        }
        let hash = blake3::Hash::from_hex(url.path().trim_start_matches('/'))
            .map_err(|_| invalid("the path must be a BLAKE3 hash (64 hex digits)"))?;
        if expected.blake3.is_some_and(|e| e != hash) {
            return Err(invalid("the URL's hash differs from the build's artifactBlake3"));
        }
        let Some(source) = &self.blobs else {
            return Err(DownloadError::UnsupportedScheme {
                scheme: "tt".to_owned(),
                url: shown.to_owned(),
            });
        };
        let expected = Expected { blake3: Some(hash), size: expected.size };
        let hex = hash.to_hex().to_string();
        let mut sink = Sink::create(dest_file, shown, None, self, &expected).await?;
        let mut offset = 0u64;
        loop {
            let (total, data) = source
                .read_blob(&hex, offset, BLOB_READ_BYTES)
                .await
                .map_err(|detail| DownloadError::Transport { url: shown.to_owned(), detail })?;
            if total > self.limits.max_download_bytes {
                return Err(DownloadError::TooLarge {
                    url: shown.to_owned(),
                    limit_bytes: self.limits.max_download_bytes,
                });
            }
            if data.is_empty() && offset < total {
                return Err(DownloadError::Transport {
                    url: shown.to_owned(),
                    detail: format!("the source sent nothing at offset {offset} of {total}"),
                });
            }
            offset += data.len() as u64;
            sink.write(&data).await?;
            if offset >= total {
                break;
            }
        }
        sink.finish(dest_file, &expected, None).await
    }

    async fn fetch_http(
        &self,
        url: &reqwest::Url,
        shown: &str,
        dest_file: &Path,
        expected: &Expected,
    ) -> Result<Fetched, DownloadError> {
        let mut response =
            self.client.get(url.clone()).send().await.map_err(|e| transport_error(shown, e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(DownloadError::Http { status: status.as_u16(), url: shown.to_owned() });
        }
        if response.content_length().is_some_and(|len| len > self.limits.max_download_bytes) {
            return Err(DownloadError::TooLarge {
                url: shown.to_owned(),
                limit_bytes: self.limits.max_download_bytes,
            });
        }
        // Looked up once the artifact answered, so a missing build or a TLS failure is reported
        // for the artifact's own URL.
        let published = self.published_checksum(url).await?;
        let algorithm = published.as_ref().map(|p| p.algorithm);
        let mut sink = Sink::create(dest_file, shown, algorithm, self, expected).await?;
        while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(shown, e))? {
            sink.write(&chunk).await?;
        }
        sink.finish(dest_file, expected, published.as_ref()).await
    }

    /// The checksum published beside `url`: `<url>.sha256`, else `<url>.sha1` (the suffix is
    /// appended to the path, so a query string stays valid). 404, 410 and 403 mean "not
    /// published" — 403 because object stores answer it for missing keys and presigned URLs do
    /// not cover the sidecar; the checksum file guards against corruption, while authenticity
    /// comes from TLS and the build's BLAKE3. Any other failure is an error, so a flaky server
    /// cannot silently skip the check.
    async fn published_checksum(
        &self,
        url: &reqwest::Url,
    ) -> Result<Option<PublishedChecksum>, DownloadError> {
        for algorithm in [ChecksumAlgorithm::Sha256, ChecksumAlgorithm::Sha1] {
            let mut checksum_url = url.clone();
            checksum_url.set_path(&format!("{}{}", url.path(), algorithm.suffix()));
            let shown = redact(&checksum_url);
            let mut response = self
                .client
                .get(checksum_url)
                .send()
                .await
                .map_err(|e| transport_error(&shown, e))?;
            let status = response.status().as_u16();
            if matches!(status, 403 | 404 | 410) {
                tracing::debug!(checksum_url = %shown, status, "no checksum file published");
                continue;
            }
            if !response.status().is_success() {
                return Err(DownloadError::Http { status, url: shown });
            }
            let mut body = Vec::new();
            while let Some(chunk) =
                response.chunk().await.map_err(|e| transport_error(&shown, e))?
            {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_CHECKSUM_FILE_BYTES {
                    return Err(DownloadError::BadChecksumFile {
                        checksum_url: shown,
                        reason: format!("larger than {MAX_CHECKSUM_FILE_BYTES} bytes"),
                    });
                }
            }
            let hex = parse_checksum_file(&body, algorithm).map_err(|reason| {
                DownloadError::BadChecksumFile { checksum_url: shown.clone(), reason }
            })?;
            return Ok(Some(PublishedChecksum { algorithm, hex, url: shown }));
        }
        Ok(None)
    }
}

/// A checksum read from a file published beside the artifact.
struct PublishedChecksum {
    algorithm: ChecksumAlgorithm,
    /// Lowercase hex.
    hex: String,
    /// Where it was read (redacted), for messages.
    url: String,
}

/// The first whitespace-separated token of a checksum file (`sha256sum` output or a bare hash),
/// as lowercase hex of the algorithm's length.
fn parse_checksum_file(body: &[u8], algorithm: ChecksumAlgorithm) -> Result<String, String> {
    let text = String::from_utf8_lossy(body);
    let token = text.split_whitespace().next().ok_or("the file is empty")?.to_ascii_lowercase();
    if token.len() != algorithm.hex_len() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "expected {} hex digits of {algorithm} as the first word, found {:?}",
            algorithm.hex_len(),
            token.chars().take(80).collect::<String>()
        ));
    }
    Ok(token)
}

enum ChecksumHasher {
    Sha256(sha2::Sha256),
    Sha1(sha1::Sha1),
}

impl ChecksumHasher {
    fn new(algorithm: ChecksumAlgorithm) -> Self {
        match algorithm {
            ChecksumAlgorithm::Sha256 => ChecksumHasher::Sha256(sha2::Sha256::new()),
            ChecksumAlgorithm::Sha1 => ChecksumHasher::Sha1(sha1::Sha1::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            ChecksumHasher::Sha256(hasher) => hasher.update(bytes),
            ChecksumHasher::Sha1(hasher) => hasher.update(bytes),
        }
    }

    fn finish_hex(self) -> String {
        let digest: Vec<u8> = match self {
            ChecksumHasher::Sha256(hasher) => hasher.finalize().to_vec(),
            ChecksumHasher::Sha1(hasher) => hasher.finalize().to_vec(),
        };
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The `.part` file a download streams into, with its running hashes and limits. Deleted on
/// drop unless [`Sink::finish`] renamed it into place.
struct Sink {
    part: PathBuf,
    file: tokio::fs::File,
    url: String,
    blake3: blake3::Hasher,
    checksum: Option<ChecksumHasher>,
    bytes: u64,
    max_bytes: u64,
    expected_size: Option<u64>,
    keep: bool,
}

impl Sink {
    async fn create(
        dest_file: &Path,
        url: &str,
        checksum: Option<ChecksumAlgorithm>,
        downloader: &Downloader,
        expected: &Expected,
    ) -> Result<Sink, DownloadError> {
        let mut part_name = dest_file.file_name().unwrap_or_default().to_owned();
        part_name.push(PART_SUFFIX);
        let part = dest_file.with_file_name(part_name);
        let file = tokio::fs::File::create(&part).await.map_err(io_error(&part))?;
        Ok(Sink {
            part,
            file,
            url: url.to_owned(),
            blake3: blake3::Hasher::new(),
            checksum: checksum.map(ChecksumHasher::new),
            bytes: 0,
            max_bytes: downloader.limits.max_download_bytes,
            expected_size: expected.size,
            keep: false,
        })
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), DownloadError> {
        let bytes = self.bytes + chunk.len() as u64;
        if bytes > self.max_bytes {
            return Err(DownloadError::TooLarge {
                url: self.url.clone(),
                limit_bytes: self.max_bytes,
            });
        }
        if let Some(expected_bytes) = self.expected_size.filter(|&size| bytes > size) {
            return Err(DownloadError::SizeMismatch {
                url: self.url.clone(),
                expected_bytes,
                received_bytes: bytes,
            });
        }
        self.blake3.update(chunk);
        if let Some(checksum) = &mut self.checksum {
            checksum.update(chunk);
        }
        self.file.write_all(chunk).await.map_err(io_error(&self.part))?;
        self.bytes = bytes;
        Ok(())
    }

    /// Verifies, syncs and renames the part file to `dest_file`.
    async fn finish(
        mut self,
        dest_file: &Path,
        expected: &Expected,
        published: Option<&PublishedChecksum>,
    ) -> Result<Fetched, DownloadError> {
        if let Some(expected_bytes) = expected.size.filter(|&size| size != self.bytes) {
            return Err(DownloadError::SizeMismatch {
                url: self.url.clone(),
                expected_bytes,
                received_bytes: self.bytes,
            });
        }
        let actual = self.blake3.finalize();
        if let Some(want) = expected.blake3.filter(|want| *want != actual) {
            return Err(DownloadError::HashMismatch {
                url: self.url.clone(),
                expected: want.to_hex().to_string(),
                actual: actual.to_hex().to_string(),
            });
        }
        if let (Some(published), Some(checksum)) = (published, self.checksum.take()) {
            let got = checksum.finish_hex();
            if got != published.hex {
                return Err(DownloadError::ChecksumMismatch {
                    url: self.url.clone(),
                    checksum_url: published.url.clone(),
                    algorithm: published.algorithm,
                    expected: published.hex.clone(),
                    actual: got,
                });
            }
        }
        self.file.flush().await.map_err(io_error(&self.part))?;
        self.file.sync_all().await.map_err(io_error(&self.part))?;
        tokio::fs::rename(&self.part, dest_file).await.map_err(io_error(dest_file))?;
        self.keep = true;
        sync_parent_dir(dest_file).await?;
        Ok(Fetched { path: dest_file.to_owned(), bytes: self.bytes, blake3: actual })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

async fn copy_local(source: &Path, sink: &mut Sink) -> Result<(), DownloadError> {
    let mut file = tokio::fs::File::open(source).await.map_err(io_error(source))?;
    let mut buf = vec![0; COPY_BUFFER_BYTES];
    loop {
        let n = file.read(&mut buf).await.map_err(io_error(source))?;
        if n == 0 {
            return Ok(());
        }
        sink.write(&buf[..n]).await?;
    }
}

async fn sync_parent_dir(path: &Path) -> Result<(), DownloadError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let result = async { tokio::fs::File::open(&parent).await?.sync_all().await }.await;
    result.map_err(io_error(&parent))
}

/// Makes build `build_id` of `env_name` ready to stage and returns `<builds_dir>/<build_id>`.
///
/// Idempotent like Teletraan's downloader (§A.2.5) but stricter: it returns at once only if both
/// the `<build_id>.extracted` marker and the `<build_id>/` tree exist. Otherwise it clears stale
/// leftovers (a tree without marker, a marker without tree, interrupted extractions), downloads
/// to `<builds_dir>/<env_name>-<build_id>.<ext>` (`ext` from the URL, else sniffed), verifies,
/// extracts into a staging directory renamed to `<build_id>/`, syncs the filesystem, and writes
/// the marker (holding the archive's BLAKE3). The archive is kept: stale-build cleanup uses
/// `<env>-<id>.*` as its index.
///
/// Not safe to run twice at once for the same `build_id` (two envs sharing a build); the agent
/// runs downloads for one build at a time.
pub async fn ensure_build(
    dl: &Downloader,
    builds_dir: &Path,
    env_name: &str,
    build_id: &str,
    url: &str,
    expected: &Expected,
    limits: &ExtractLimits,
) -> Result<PathBuf, DownloadError> {
    check_name("env name", env_name)?;
    check_name("build id", build_id)?;
    let tree = builds_dir.join(build_id);
    let marker = builds_dir.join(format!("{build_id}{EXTRACTED_MARKER_SUFFIX}"));
    let tree_is_dir = tokio::fs::symlink_metadata(&tree).await.is_ok_and(|m| m.is_dir());
    let marker_exists = tokio::fs::try_exists(&marker).await.map_err(io_error(&marker))?;
    if tree_is_dir && marker_exists {
        tracing::debug!(build_id, "build already extracted");
        return Ok(tree);
    }

    tokio::fs::create_dir_all(builds_dir).await.map_err(io_error(builds_dir))?;
    remove_stale(&marker, &tree).await?;

    let stem = format!("{env_name}-{build_id}");
    let (archive, format, fetched) = match ArchiveFormat::from_name(url) {
        Some(format) => {
            let archive = builds_dir.join(format!("{stem}.{}", format.extension()));
            let fetched = dl.fetch(url, &archive, expected).await?;
            (archive, format, fetched)
        }
        None => {
            let download = builds_dir.join(format!("{stem}{UNKNOWN_FORMAT_SUFFIX}"));
            let fetched = dl.fetch(url, &download, expected).await?;
            let Some(format) = sniff_file(&download).await? else {
                let _ = tokio::fs::remove_file(&download).await;
                return Err(DownloadError::UnknownFormat { url: redact_unparsed(url) });
            };
            let archive = builds_dir.join(format!("{stem}.{}", format.extension()));
            tokio::fs::rename(&download, &archive).await.map_err(io_error(&archive))?;
            (archive, format, fetched)
        }
    };

    let task = {
        let (archive, tree, limits) = (archive.clone(), tree.clone(), limits.clone());
        tokio::task::spawn_blocking(move || extract::extract(&archive, format, &tree, &limits))
    };
    let extracted = task.await.map_err(|e| io_error(&archive)(io::Error::other(e)))?;
    let stats = match extracted {
        Ok(stats) => stats,
        Err(source) => {
            // A refused archive must not linger where staging or a later retry could use it.
            let _ = tokio::fs::remove_file(&archive).await;
            return Err(DownloadError::Extract { archive, source });
        }
    };

    write_marker(builds_dir, &marker, &fetched.blake3).await?;
    tracing::info!(
        env = env_name,
        build_id,
        bytes = fetched.bytes,
        files = stats.files,
        extracted_bytes = stats.bytes,
        "build downloaded, verified and extracted"
    );
    Ok(tree)
}

/// Removes a marker without its tree, a tree without its marker, and staging directories left
/// by an interrupted extraction.
async fn remove_stale(marker: &Path, tree: &Path) -> Result<(), DownloadError> {
    match tokio::fs::remove_file(marker).await {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_error(marker)(e)),
        _ => {}
    }
    match tokio::fs::symlink_metadata(tree).await {
        Ok(meta) if meta.is_dir() => {
            tracing::info!(path = %tree.display(), "removing partial build tree without marker");
            tokio::fs::remove_dir_all(tree).await.map_err(io_error(tree))?;
        }
        Ok(_) => tokio::fs::remove_file(tree).await.map_err(io_error(tree))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(tree)(e)),
    }
    let tree_owned = tree.to_owned();
    tokio::task::spawn_blocking(move || extract::remove_stale_staging_dirs(&tree_owned))
        .await
        .map_err(io::Error::other)
        .and_then(|result| result)
        .map_err(io_error(tree))?;
    Ok(())
}

/// Flushes the extracted tree to disk (one `syncfs` for the whole filesystem rather than an
/// fsync per file), then writes and syncs the marker and its directory, so a marker seen after a
/// crash always means a complete tree.
async fn write_marker(
    builds_dir: &Path,
    marker: &Path,
    blake3: &blake3::Hash,
) -> Result<(), DownloadError> {
    let (builds_dir, marker) = (builds_dir.to_owned(), marker.to_owned());
    let marker_path = marker.clone();
    let contents = format!("blake3 {}\n", blake3.to_hex());
    tokio::task::spawn_blocking(move || {
        let dir = std::fs::File::open(&builds_dir).map_err(io_error(&builds_dir))?;
        nix::unistd::syncfs(&dir).map_err(|errno| io_error(&builds_dir)(errno.into()))?;
        let write = || -> io::Result<()> {
            let mut file = std::fs::File::create(&marker)?;
            io::Write::write_all(&mut file, contents.as_bytes())?;
            file.sync_all()
        };
        write().map_err(io_error(&marker))?;
        dir.sync_all().map_err(io_error(&builds_dir))
    })
    .await
    .map_err(|e| io_error(&marker_path)(io::Error::other(e)))?
}

async fn sniff_file(path: &Path) -> Result<Option<ArchiveFormat>, DownloadError> {
    let mut file = tokio::fs::File::open(path).await.map_err(io_error(path))?;
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    (&mut file).take(SNIFF_BYTES as u64).read_to_end(&mut head).await.map_err(io_error(path))?;
    Ok(ArchiveFormat::sniff(&head))
}

/// Env names and build ids become file names: one plain component, no hidden names.
fn check_name(what: &'static str, value: &str) -> Result<(), DownloadError> {
    let reason = if value.is_empty() {
        Some("it is empty")
    } else if value.len() > MAX_NAME_BYTES {
        Some("it is too long")
    } else if value.contains(['/', '\0']) {
        Some("it contains '/' or a NUL byte")
    } else if value.starts_with('.') {
        Some("it starts with a dot")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DownloadError::InvalidName {
            what,
            value: value.chars().take(80).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

/// `url` without password and query, for logs and errors.
fn redact(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let had_query = shown.query().is_some();
    shown.set_query(None);
    shown.set_fragment(None);
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    let mut text = shown.to_string();
    if had_query {
        text.push_str("?…");
    }
    text
}

fn redact_unparsed(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => redact(&parsed),
        Err(_) => {
            let base: String =
                url.split(['?', '#', '@']).next().unwrap_or_default().chars().take(200).collect();
            if base.len() < url.len() { format!("{base}…") } else { base }
        }
    }
}

/// Maps an IO error on `path`: `.map_err(io_error(&path))`.
fn io_error(path: &Path) -> impl FnOnce(io::Error) -> DownloadError + use<> {
    let path = path.to_owned();
    move |source| DownloadError::Io { path, source }
}

fn transport_error(url: &str, error: reqwest::Error) -> DownloadError {
    DownloadError::Transport { url: url.to_owned(), detail: error_chain(&error.without_url()) }
}

/// An error and its sources as one line: reqwest's top-level message alone ("error sending
/// request") hides the cause an operator needs ("invalid peer certificate: UnknownIssuer").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_sources_say_peers_origin_local_or_url() {
        use p2p_transfer::swarm::NodeStats;
        let blob = format!("{}{}", proto::beans::BLOB_URL_PREFIX, "ab".repeat(32));
        let before = NodeStats {
            downloaded_bytes: 100,
            downloaded_from_origin_bytes: 10,
            ..Default::default()
        };
        let after = NodeStats {
            downloaded_bytes: 100 + 3 * 1_048_576,
            downloaded_from_origin_bytes: 10 + 1_048_576,
            ..Default::default()
        };
        assert_eq!(
            describe_source(&blob, Some(&before), Some(&after)),
            "swarm: 2.0 MiB from peers, 1.0 MiB from the origin"
        );
        assert_eq!(
            describe_source(&blob, Some(&after), Some(&after)),
            "a local copy (prefetched or kept)"
        );
        assert_eq!(describe_source(&blob, None, None), "the coordinators (tt-agent/1)");
        assert_eq!(
            describe_source("https://ci.example/b.tgz?token=s3cret", None, None),
            "https://ci.example/b.tgz"
        );
    }

    #[test]
    fn checksum_file_first_token_lowercased() {
        let sha1 = "A9993E364706816ABA3E25717850C26C9CD0D89D";
        let body = format!("{sha1}  web-1.tar.gz\n");
        assert_eq!(
            parse_checksum_file(body.as_bytes(), ChecksumAlgorithm::Sha1).unwrap(),
            sha1.to_ascii_lowercase()
        );
        assert!(parse_checksum_file(b"", ChecksumAlgorithm::Sha1).is_err());
        assert!(parse_checksum_file(b"   \n", ChecksumAlgorithm::Sha256).is_err());
        assert!(parse_checksum_file(body.as_bytes(), ChecksumAlgorithm::Sha256).is_err());
        assert!(parse_checksum_file(b"SHA256 (x) = ab", ChecksumAlgorithm::Sha256).is_err());
    }

    #[test]
    fn redaction_drops_query_and_password() {
        let url = reqwest::Url::parse("https://u:secret@h/b/x.tar.gz?X-Amz-Signature=s").unwrap();
        let shown = redact(&url);
        assert!(!shown.contains("secret") && !shown.contains("Signature"), "{shown}");
        assert!(shown.starts_with("https://u:***@h/b/x.tar.gz"), "{shown}");
        assert_eq!(redact_unparsed("not a url?token=1"), "not a url…");
    }

    #[test]
    fn names_must_be_one_plain_component() {
        for bad in ["", ".", "..", ".hidden", "a/b", "a\0b"] {
            assert!(check_name("build id", bad).is_err(), "{bad:?}");
        }
        check_name("build id", "r4TTZfrWQEmgyaYic8uU6w_8ef9007").unwrap();
    }
}
