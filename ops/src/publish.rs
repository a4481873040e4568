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
