//! The coordinators' blob store: build artifacts named by their BLAKE3 hash, one file each under
//! `<data_dir>/blobs/`. A blob is written to a temp file while it is hashed and renamed into
//! place only when complete (and, for a named upload, only when the hash matches), so a reader
//! never sees a partial or wrong blob. Agents fetch blobs from any node that has one; the
//! peer-to-peer swarm will make the coordinators the origin of a swarm instead.

use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Copies of every uploaded blob (on distinct nodes) before the upload is acknowledged.
pub const MIN_BLOB_COPIES: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{0:?} is not a BLAKE3 hash (64 hex digits)")]
    BadHash(String),
    #[error("blob {0} is not stored on this node")]
    NotFound(String),
    #[error("the upload exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the upload's BLAKE3 hash is {actual}, not the {expected} it was sent as")]
    HashMismatch { expected: String, actual: String },
    #[error("the upload was cut off: {0}")]
    Body(String),
    #[error("blob store IO on {path}: {source} (is the disk full?)")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub blake3: String,
    pub size: u64,
}

pub struct BlobStore {
    dir: PathBuf,
    max_bytes: u64,
}

/// Validates and normalises a hex hash.
pub fn parse_hash(hex: &str) -> Result<String, BlobError> {
    let h = hex.trim().to_ascii_lowercase();
    if h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()) {
        Ok(h)
    } else {
        Err(BlobError::BadHash(hex.to_string()))
    }
}

impl BlobStore {
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, BlobError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| BlobError::Io { path: dir.to_path_buf(), source })?;
        // Uploads cut off by a crash leave temp files; nothing refers to them.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".partial") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(Self { dir: dir.to_path_buf(), max_bytes })
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(hash)
    }

    /// The blob's size, if this node has it.
    pub fn size(&self, hash: &str) -> Option<u64> {
        std::fs::metadata(self.path(hash)).ok().map(|m| m.len())
    }

    /// Stores a stream; if `expected` is given, refuses bytes whose hash differs.
    pub async fn put<S, E>(
        &self,
        mut body: S,
        expected: Option<&str>,
    ) -> Result<BlobInfo, BlobError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.dir.join(format!("upload-{}-{n}.partial", std::process::id()));
        let io = |source| BlobError::Io { path: tmp.clone(), source };
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let result = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > self.max_bytes {
                    return Err(BlobError::TooLarge { limit: self.max_bytes });
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(io)?;
            }
            file.sync_all().await.map_err(io)?;
            let actual = hasher.finalize().to_hex().to_string();
            if let Some(expected) = expected
                && expected != actual
            {
                return Err(BlobError::HashMismatch { expected: expected.to_string(), actual });
            }
            let dest = self.path(&actual);
            tokio::fs::rename(&tmp, &dest)
                .await
                .map_err(|source| BlobError::Io { path: dest.clone(), source })?;
            Ok(BlobInfo { blake3: actual, size })
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Up to `max_len` bytes of `hash` from `offset`, and the blob's size.
    pub async fn read(
        &self,
        hash: &str,
        offset: u64,
        max_len: u32,
    ) -> Result<(u64, Vec<u8>), BlobError> {
        let hash = parse_hash(hash)?;
        let path = self.path(&hash);
        let mut f = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlobError::NotFound(hash));
            }
            Err(source) => return Err(BlobError::Io { path, source }),
        };
        let io = |source| BlobError::Io { path: path.clone(), source };
        let total = f.metadata().await.map_err(io)?.len();
        let len = (max_len as u64).min(total.saturating_sub(offset)) as usize;
        let mut data = vec![0u8; len];
        f.seek(std::io::SeekFrom::Start(offset.min(total))).await.map_err(io)?;
        f.read_exact(&mut data).await.map_err(io)?;
        Ok((total, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(
        parts: Vec<&'static [u8]>,
    ) -> impl Stream<Item = Result<bytes::Bytes, String>> + Unpin {
        futures::stream::iter(parts.into_iter().map(|p| Ok(bytes::Bytes::from_static(p))))
    }

    #[tokio::test]
    async fn blobs_are_named_by_hash_verified_and_read_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 100).unwrap();
        let info = store.put(stream(vec![b"hello ", b"world"]), None).await.unwrap();
        assert_eq!(info.blake3, blake3::hash(b"hello world").to_hex().to_string());
        assert_eq!(info.size, 11);
        assert_eq!(store.read(&info.blake3, 6, 3).await.unwrap(), (11, b"wor".to_vec()));
        assert_eq!(store.read(&info.blake3, 9, 100).await.unwrap(), (11, b"ld".to_vec()));
        assert_eq!(store.read(&info.blake3, 50, 100).await.unwrap(), (11, vec![]));

        let wrong = "0".repeat(64);
        let err = store.put(stream(vec![b"abc"]), Some(&wrong)).await.unwrap_err();
        assert!(matches!(err, BlobError::HashMismatch { .. }), "{err}");
        assert!(matches!(store.read(&wrong, 0, 1).await, Err(BlobError::NotFound(_))));
        let err = store.put(stream(vec![&[0u8; 101]]), None).await.unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { limit: 100 }), "{err}");
        assert!(matches!(store.read("xyz", 0, 1).await, Err(BlobError::BadHash(_))));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![info.blake3], "refused uploads leave nothing behind");
    }
}
