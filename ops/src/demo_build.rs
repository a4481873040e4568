//! The demo's build artifact: `demo-service` and its Teletraan hooks as a deterministic
//! `.tar.gz`.
//!
//! Layout (what the agent extracts into `<builds_dir>/<buildId>/`):
//!
//! ```text
//! VERSION                 the version string and a newline
//! bin/demo-service        the service binary, mode 755
//! teletraan/...           the hooks of `ops/demo/teletraan/` (embedded here), modes kept
//! ```
//!
//! The hooks are compiled into this crate ([`HOOK_FILES`]), so an installed `tt` packages the
//! demo without the source tree. The same inputs give the same bytes: entries are sorted, owned
//! by 0:0 without user names, and carry one fixed mtime; the gzip header has no name or time.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;

/// The mtime of every entry (2000-01-01T00:00:00Z; GNU tar warns about 0 on extraction).
pub const DEMO_TARBALL_MTIME_EPOCH_S: u64 = 946_684_800;
/// A larger service binary is refused (it is read into memory whole).
pub const MAX_SERVICE_BINARY_BYTES: u64 = 512 * 1024 * 1024;
/// Longest accepted version string.
pub const MAX_VERSION_BYTES: usize = 128;

/// One file of `teletraan/` in the tarball.
#[derive(Debug, Clone, Copy)]
pub struct HookFile {
    /// File name inside `teletraan/`.
    pub name: &'static str,
    pub mode: u32,
    pub contents: &'static [u8],
}

macro_rules! hook {
    ($name:literal, $mode:literal) => {
        HookFile {
            name: $name,
            mode: $mode,
            contents: include_bytes!(concat!("../demo/teletraan/", $name)),
        }
    };
}

/// Every file of `ops/demo/teletraan/`, sorted by name. A test checks this table against the
/// directory (names and modes), so a new hook file must be added here.
pub const HOOK_FILES: &[HookFile] = &[
    hook!("POST_DOWNLOAD", 0o755),
    hook!("POST_RESTART", 0o755),
    hook!("PRE_DOWNLOAD", 0o755),
    hook!("PRE_RESTART", 0o755),
    hook!("RESTARTING", 0o755),
    hook!("STOPPING", 0o755),
    hook!("lib.sh", 0o644),
    hook!("service.conf.tmpl", 0o644),
];

/// A written tarball.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoBuild {
    pub path: PathBuf,
    /// Size of the `.tar.gz`.
    pub bytes: u64,
    /// BLAKE3 of the `.tar.gz`, lowercase hex.
    pub blake3_hex: String,
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoBuildError {
    #[error(
        "version {version:?} is not usable: give 1 to {MAX_VERSION_BYTES} characters of A-Z a-z 0-9 . _ + -"
    )]
    InvalidVersion { version: String },
    #[error(
        "cannot read the service binary {}: {source}; build it with `cargo build -p ops --bin demo-service`",
        path.display()
    )]
    ReadBinary { path: PathBuf, source: io::Error },
    #[error(
        "the service binary {} is {bytes} bytes, over the {MAX_SERVICE_BINARY_BYTES} byte limit; is it the right file?",
        path.display()
    )]
    BinaryTooLarge { path: PathBuf, bytes: u64 },
    #[error("cannot write the tarball {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// Writes the demo build of `version` with `service_binary` to `out` (through `<out>.partial`
/// and a rename, so `out` is never half-written). Creates `out`'s directory if needed.
pub fn build_demo_tarball(
    out: &Path,
    version: &str,
    service_binary: &Path,
) -> Result<DemoBuild, DemoBuildError> {
    if !version_is_valid(version) {
        return Err(DemoBuildError::InvalidVersion { version: version.to_owned() });
    }
    let read_error =
        |source| DemoBuildError::ReadBinary { path: service_binary.to_owned(), source };
    let binary_bytes = std::fs::metadata(service_binary).map_err(read_error)?.len();
    if binary_bytes > MAX_SERVICE_BINARY_BYTES {
        return Err(DemoBuildError::BinaryTooLarge {
            path: service_binary.to_owned(),
            bytes: binary_bytes,
        });
    }
    let binary = std::fs::read(service_binary).map_err(read_error)?;

    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let (bytes, hash) = write_tarball(&partial, version, &binary)
        .and_then(|written| std::fs::rename(&partial, out).map(|()| written))
        .map_err(|source| {
            let _ = std::fs::remove_file(&partial);
            DemoBuildError::Write { path: out.to_owned(), source }
        })?;
    Ok(DemoBuild {
        path: out.to_owned(),
        bytes,
        blake3_hex: hash.to_hex().to_string(),
        version: version.to_owned(),
    })
}

/// Versions end up in file contents, JSON and shell variables: keep them to a safe alphabet.
fn version_is_valid(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= MAX_VERSION_BYTES
        && version.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

struct Entry<'a> {
    path: String,
    mode: u32,
    /// `None` for a directory.
    contents: Option<&'a [u8]>,
}

fn write_tarball(path: &Path, version: &str, binary: &[u8]) -> io::Result<(u64, blake3::Hash)> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let version_file = format!("{version}\n");
    let mut entries = vec![
        Entry { path: "VERSION".into(), mode: 0o644, contents: Some(version_file.as_bytes()) },
        Entry { path: "bin/".into(), mode: 0o755, contents: None },
        Entry { path: "bin/demo-service".into(), mode: 0o755, contents: Some(binary) },
        Entry { path: "teletraan/".into(), mode: 0o755, contents: None },
    ];
    entries.extend(HOOK_FILES.iter().map(|hook| Entry {
        path: format!("teletraan/{}", hook.name),
        mode: hook.mode,
        contents: Some(hook.contents),
    }));
    entries.sort_by(|a, b| a.path.cmp(&b.path));

    let file = HashingWriter::new(BufWriter::new(File::create(path)?));
    let mut tar = tar::Builder::new(GzEncoder::new(file, Compression::default()));
    for entry in &entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(DEMO_TARBALL_MTIME_EPOCH_S);
        match entry.contents {
            Some(contents) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(contents.len() as u64);
                tar.append_data(&mut header, &entry.path, contents)?;
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, &entry.path, io::empty())?;
            }
        }
    }
    let hashed = tar.into_inner()?.finish()?;
    let (buffered, bytes, hash) = hashed.finish();
    let file = buffered.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    Ok((bytes, hash))
}

/// Counts and hashes what passes through.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: blake3::Hasher::new(), bytes: 0 }
    }

    fn finish(self) -> (W, u64, blake3::Hash) {
        (self.inner, self.bytes, self.hasher.finalize())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    use flate2::read::GzDecoder;

    use super::*;

    /// (path, mode, uid, gid, mtime, user name, contents) of every entry, in archive order.
    type Listing = Vec<(String, u32, u64, u64, u64, String, Vec<u8>)>;

    fn list(tarball: &Path) -> Listing {
        let mut archive = tar::Archive::new(GzDecoder::new(File::open(tarball).unwrap()));
        let mut listing = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let mut contents = Vec::new();
            entry.read_to_end(&mut contents).unwrap();
            listing.push((
                entry.path().unwrap().to_string_lossy().into_owned(),
                header.mode().unwrap(),
                header.uid().unwrap(),
                header.gid().unwrap(),
                header.mtime().unwrap(),
                header.username().unwrap().unwrap_or_default().to_owned(),
                contents,
            ));
        }
        listing
    }

    fn fake_binary(dir: &Path) -> PathBuf {
        let path = dir.join("demo-service");
        std::fs::write(&path, b"\x7fELF not really").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        path
    }

    #[test]
    fn embedded_hooks_are_exactly_the_demo_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/teletraan");
        let mut on_disk = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            assert!(meta.is_file(), "{:?}: only plain files belong in teletraan/", entry.path());
            let name = entry.file_name().into_string().unwrap();
            on_disk.insert(name, (meta.permissions().mode() & 0o777, std::fs::read(entry.path())));
        }
        let embedded: BTreeMap<_, _> = HOOK_FILES
            .iter()
            .map(|h| (h.name.to_owned(), (h.mode, Ok::<_, io::Error>(h.contents.to_vec()))))
            .collect();
        assert_eq!(
            embedded.keys().collect::<Vec<_>>(),
            on_disk.keys().collect::<Vec<_>>(),
            "HOOK_FILES must list every file of {dir:?}"
        );
        for (name, (mode, contents)) in &on_disk {
            let (embedded_mode, embedded_contents) = &embedded[name];
            assert_eq!(mode, embedded_mode, "mode of {name} (git keeps it: chmod the file)");
            assert_eq!(contents.as_ref().unwrap(), embedded_contents.as_ref().unwrap());
        }
        let names: Vec<_> = HOOK_FILES.iter().map(|h| h.name).collect();
        assert!(names.is_sorted(), "HOOK_FILES must be sorted by name");
        for hook in HOOK_FILES.iter().filter(|h| h.mode & 0o111 != 0) {
            assert!(hook.contents.starts_with(b"#!/bin/sh\n"), "{} needs #!/bin/sh", hook.name);
        }
    }

    #[test]
    fn tarball_has_the_layout_and_the_same_bytes_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let binary = fake_binary(dir.path());
        let first =
            build_demo_tarball(&dir.path().join("a/demo.tar.gz"), "1.2.3", &binary).unwrap();
        let second = build_demo_tarball(&dir.path().join("b.tar.gz"), "1.2.3", &binary).unwrap();

        let first_bytes = std::fs::read(&first.path).unwrap();
        assert_eq!(first_bytes, std::fs::read(&second.path).unwrap());
        assert_eq!(first.bytes, first_bytes.len() as u64);
        assert_eq!(first.blake3_hex, blake3::hash(&first_bytes).to_hex().to_string());
        assert_eq!(first.blake3_hex, second.blake3_hex);
        assert_eq!(first.version, "1.2.3");
        assert!(!dir.path().join("a/demo.tar.gz.partial").exists());

        let listing = list(&first.path);
        let mut expected: Vec<(String, u32, Vec<u8>)> = vec![
            ("VERSION".into(), 0o644, b"1.2.3\n".to_vec()),
            ("bin/".into(), 0o755, vec![]),
            ("bin/demo-service".into(), 0o755, std::fs::read(&binary).unwrap()),
            ("teletraan/".into(), 0o755, vec![]),
        ];
        expected.extend(
            HOOK_FILES
                .iter()
                .map(|h| (format!("teletraan/{}", h.name), h.mode, h.contents.to_vec())),
        );
        let got: Vec<_> = listing
            .iter()
            .map(|(path, mode, .., contents)| (path.clone(), *mode, contents.clone()))
            .collect();
        assert_eq!(got, expected);
        for (path, _, uid, gid, mtime, user, _) in &listing {
            assert_eq!((*uid, *gid, user.as_str()), (0, 0, ""), "{path}");
            assert_eq!(*mtime, DEMO_TARBALL_MTIME_EPOCH_S, "{path}");
        }

        let other = build_demo_tarball(&dir.path().join("c.tar.gz"), "1.2.4", &binary).unwrap();
        assert_ne!(other.blake3_hex, first.blake3_hex);
    }

    #[test]
    fn bad_inputs_are_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let binary = fake_binary(dir.path());
        let out = dir.path().join("demo.tar.gz");
        for version in ["", "1.0\"x", "1 0", "v/1", &"9".repeat(MAX_VERSION_BYTES + 1)] {
            let err = build_demo_tarball(&out, version, &binary).unwrap_err();
            assert!(matches!(err, DemoBuildError::InvalidVersion { .. }), "{version:?}: {err}");
        }
        let err = build_demo_tarball(&out, "1", &dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, DemoBuildError::ReadBinary { .. }), "{err}");
        assert!(err.to_string().contains("cargo build -p ops --bin demo-service"), "{err}");
        // The output's directory would be inside a regular file.
        let err = build_demo_tarball(&binary.join("demo.tar.gz"), "1", &binary);
        assert!(matches!(err, Err(DemoBuildError::Write { .. })), "{err:?}");
        assert!(!out.exists());
    }
}
