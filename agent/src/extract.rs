//! Safe extraction of build archives: tar, tar.gz, tar.zst and zip.
//!
//! Teletraan extracts with Python's `tarfile.extractall` / `zipfile.extractall` and no checks at
//! all (quirk 16): an archive can write anywhere the agent may write, through `..`, absolute
//! names or symlinks, and a decompression bomb fills the disk. [`extract`] is the fix.
//!
//! Goals:
//! - Nothing is written outside the destination. Entry paths must be relative without `..`;
//!   files are created with `O_CREAT | O_EXCL` (never through a symlink) after checking every
//!   parent component with `lstat`; symlinks must resolve inside the tree (checked when created
//!   and again, following every link the way the kernel would, once the tree is complete); hard
//!   links may only point at regular files extracted earlier; device nodes and FIFOs are refused.
//! - All or nothing. Entries go into a private (mode 0700) directory beside `dest`, which is
//!   renamed to `dest` only when the whole archive was accepted; a refused archive leaves
//!   nothing at `dest` and nothing in the parent.
//! - Bounded while streaming. Bytes written and entries are counted as they are produced, not
//!   taken from headers, so a decompression bomb stops at [`ExtractLimits::max_total_bytes`].
//!   Tar metadata (headers, long names, PAX records, data of entries we skip) is bounded by
//!   [`MAX_ENTRY_METADATA_BYTES`] per entry.
//!
//! Non-goals: ownership (never chown), setuid/setgid/sticky bits (dropped), xattrs, ACLs,
//! directory mtimes. Directories always keep owner `rwx` so the agent can remove old builds.

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Default for [`ExtractLimits::max_total_bytes`]: 8 GiB of file contents.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 8 << 30;
/// Default for [`ExtractLimits::max_entries`].
pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;
/// Tar bytes that may be read between two entries' data besides the data itself: headers, GNU
/// long names, PAX records (which the tar crate buffers in memory) and the data of entries that
/// carry no file contents. Far above what any real archive needs per entry.
pub const MAX_ENTRY_METADATA_BYTES: u64 = 1 << 20;
/// Longest symlink target read from a zip entry (zip stores the target as the entry's data).
pub const MAX_SYMLINK_TARGET_BYTES: u64 = 4096;
/// Symlinks followed while checking where one symlink resolves; a longer chain is a loop, which
/// the kernel refuses to resolve too (Linux's own limit is 40).
const MAX_SYMLINK_HOPS: u32 = 40;

const COPY_BUFFER_BYTES: usize = 64 * 1024;
const TAR_BLOCK_BYTES: u64 = 512;
/// Permission bits kept from an archive: rwx for user, group and other. Setuid, setgid and
/// sticky are dropped.
const PERMISSION_BITS: u32 = 0o777;
const DEFAULT_FILE_MODE: u32 = 0o644;
const DEFAULT_DIR_MODE: u32 = 0o755;
/// Forced on every extracted directory, so the agent can always fill and later delete it.
const DIR_OWNER_BITS: u32 = 0o700;
/// The staging directory is private until it is renamed into place.
const STAGING_DIR_MODE: u32 = 0o700;
/// Attempts at finding an unused staging directory name.
const STAGING_NAME_ATTEMPTS: u32 = 16;
/// Infix of staging directory names: `.<dest name>.extract-<pid>-<n>` beside `dest`.
const STAGING_INFIX: &str = ".extract-";

const S_IFMT: u32 = 0o170_000;
const S_IFSOCK: u32 = 0o140_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFREG: u32 = 0o100_000;
const S_IFBLK: u32 = 0o060_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFIFO: u32 = 0o010_000;

/// The archive formats a build may be published in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArchiveFormat {
    Tar,
    TarGz,
    TarZst,
    Zip,
}

impl ArchiveFormat {
    /// The format named by a file name or URL suffix: `.tar`, `.tar.gz`, `.tgz`, `.tar.zst`,
    /// `.tzst`, `.zip`, case-insensitively. A URL's query and fragment are ignored.
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.split(['?', '#']).next().unwrap_or(name).to_ascii_lowercase();
        const SUFFIXES: [(&str, ArchiveFormat); 6] = [
            (".tar", ArchiveFormat::Tar),
            (".tar.gz", ArchiveFormat::TarGz),
            (".tgz", ArchiveFormat::TarGz),
            (".tar.zst", ArchiveFormat::TarZst),
            (".tzst", ArchiveFormat::TarZst),
            (".zip", ArchiveFormat::Zip),
        ];
        SUFFIXES.iter().find(|(suffix, _)| name.ends_with(suffix)).map(|&(_, format)| format)
    }

    /// The format recognised from an archive's first bytes (at least 262 for a plain tar):
    /// gzip and zstd magic (assumed to wrap a tar), a zip local header, or `ustar` at offset 257.
    pub fn sniff(first_bytes: &[u8]) -> Option<Self> {
        if first_bytes.starts_with(&[0x1f, 0x8b]) {
            Some(ArchiveFormat::TarGz)
        } else if first_bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(ArchiveFormat::TarZst)
        } else if first_bytes.starts_with(b"PK\x03\x04") || first_bytes.starts_with(b"PK\x05\x06") {
            Some(ArchiveFormat::Zip)
        } else if first_bytes.get(257..262) == Some(b"ustar") {
            Some(ArchiveFormat::Tar)
        } else {
            None
        }
    }

    /// The canonical file extension, without the leading dot.
    pub fn extension(self) -> &'static str {
        match self {
            ArchiveFormat::Tar => "tar",
            ArchiveFormat::TarGz => "tar.gz",
            ArchiveFormat::TarZst => "tar.zst",
            ArchiveFormat::Zip => "zip",
        }
    }
}

impl fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

/// Bounds on what one archive may produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractLimits {
    /// File contents written, counted while writing (headers are not trusted).
    pub max_total_bytes: u64,
    /// Entries of any kind, including directories and links.
    pub max_entries: u64,
}

impl Default for ExtractLimits {
    fn default() -> Self {
        ExtractLimits { max_total_bytes: DEFAULT_MAX_TOTAL_BYTES, max_entries: DEFAULT_MAX_ENTRIES }
    }
}

/// What an accepted archive produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Regular files, hard links included.
    pub files: u64,
    /// Directories, including parents created for entries that did not list them.
    pub dirs: u64,
    pub symlinks: u64,
    /// File contents written.
    pub bytes: u64,
}

/// Why an archive was refused or could not be extracted. Every refusal names the offending
/// entry; after any error `dest` does not exist and nothing was written outside it.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// `dest` already exists and is not an empty directory. Remove it first.
    #[error("extraction target {path} already exists and is not an empty directory")]
    DestinationExists { path: PathBuf },
    /// The archive file could not be opened.
    #[error("opening archive {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading or decompressing the archive failed: it is corrupt, truncated, or not in the
    /// format it was opened as. Re-publish or re-download the build.
    #[error(
        "reading archive {archive} as {format}: {source} (corrupt, truncated or wrong format?)"
    )]
    Read {
        archive: PathBuf,
        format: ArchiveFormat,
        #[source]
        source: io::Error,
    },
    /// An entry's path is absolute. Build archives must hold paths relative to the build root.
    #[error("entry {entry:?} has an absolute path; refusing the archive (paths must be relative)")]
    AbsolutePath { entry: String },
    /// An entry's path has a `..` component (path traversal).
    #[error("entry {entry:?} has a `..` path component; refusing the archive (path traversal)")]
    ParentComponent { entry: String },
    /// An entry's path or link target is unusable (empty, NUL byte, too long).
    #[error("entry {entry:?}: {reason}; refusing the archive")]
    InvalidPath { entry: String, reason: &'static str },
    /// A symlink's target is absolute.
    #[error(
        "symlink {entry:?} has the absolute target {target:?}; refusing the archive \
         (symlinks must be relative and stay inside the build)"
    )]
    AbsoluteSymlink { entry: String, target: String },
    /// A symlink resolves outside the extraction directory.
    #[error("symlink {entry:?} -> {target:?} resolves outside the build; refusing the archive")]
    SymlinkEscape { entry: String, target: String },
    /// An entry would be created below a symlink extracted earlier (`a/x` where `a` is a link).
    #[error(
        "entry {entry:?} would be written through the symlink {symlink:?} extracted earlier; \
         refusing the archive"
    )]
    ThroughSymlink { entry: String, symlink: String },
    /// A hard link does not point at a regular file extracted earlier from the same archive.
    #[error("hard link {entry:?} -> {target:?}: {reason}; refusing the archive")]
    HardLinkTarget { entry: String, target: String, reason: &'static str },
    /// A device node, FIFO or socket.
    #[error(
        "entry {entry:?} is a {kind}; build archives may hold only files, directories and links"
    )]
    SpecialFile { entry: String, kind: &'static str },
    /// A tar entry type we do not extract (e.g. a vendor extension).
    #[error("entry {entry:?} has the unsupported tar entry type {kind}; refusing the archive")]
    UnsupportedEntry { entry: String, kind: String },
    /// An entry conflicts with one extracted earlier (a file where a directory is, or a parent
    /// that is not a directory).
    #[error("entry {entry:?}: {reason}; refusing the archive")]
    Conflict { entry: String, reason: &'static str },
    /// The archive expands to more file contents than allowed (counted while writing).
    #[error(
        "archive expands to more than {limit_bytes} bytes (stopped in entry {entry:?}); \
         refusing it as a decompression bomb, or raise max_total_bytes if the build is this big"
    )]
    TooLarge { entry: String, limit_bytes: u64 },
    /// The archive has more entries than allowed.
    #[error(
        "archive has more than {limit} entries (stopped at {entry:?}); refusing it, or raise \
         max_entries if the build really has this many files"
    )]
    TooManyEntries { entry: String, limit: u64 },
    /// More tar metadata or skipped data than [`MAX_ENTRY_METADATA_BYTES`] after one entry.
    #[error(
        "archive has more than {limit_bytes} bytes of tar headers or non-file data after entry \
         {after:?}; refusing it (corrupt or malicious)"
    )]
    MetadataTooLarge { after: String, limit_bytes: u64 },
    /// Writing the extracted tree failed (disk full, permissions).
    #[error("extracting to {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Extracts `archive` (in `format`) to `dest`, which must not exist yet (or be an empty
/// directory).
///
/// Entries are written into a fresh private directory beside `dest` and renamed to `dest` only
/// when the whole archive was accepted. On error the staging directory is removed.
pub fn extract(
    archive: &Path,
    format: ArchiveFormat,
    dest: &Path,
    limits: &ExtractLimits,
) -> Result<ExtractStats, ExtractError> {
    check_destination_free(dest)?;
    let file = File::open(archive)
        .map_err(|source| ExtractError::Open { path: archive.to_owned(), source })?;
    let staging = StagingDir::create(dest)?;
    let mut extractor = Extractor::new(staging.path(), archive, format, limits);
    match format {
        ArchiveFormat::Tar => extract_tar(&mut extractor, BufReader::new(file))?,
        ArchiveFormat::TarGz => {
            extract_tar(&mut extractor, flate2::read::MultiGzDecoder::new(BufReader::new(file)))?
        }
        ArchiveFormat::TarZst => {
            let decoder = zstd::Decoder::new(file).map_err(|e| extractor.read_error(e))?;
            extract_tar(&mut extractor, decoder)?
        }
        ArchiveFormat::Zip => extract_zip(&mut extractor, BufReader::new(file))?,
    }
    let stats = extractor.finish()?;
    staging.persist(dest)?;
    Ok(stats)
}

/// Removes staging directories that an interrupted [`extract`] to `dest` left behind (a crash
/// or kill mid-extraction). Call only while no extraction to `dest` is running. Returns how many
/// were removed.
pub fn remove_stale_staging_dirs(dest: &Path) -> io::Result<usize> {
    let (parent, name) = split_destination(dest);
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(STAGING_INFIX);
    let mut removed = 0;
    let entries = match fs::read_dir(&parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name().as_bytes().starts_with(prefix.as_bytes()) {
            fs::remove_dir_all(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn check_destination_free(dest: &Path) -> Result<(), ExtractError> {
    let taken = match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(source) => return Err(ExtractError::Io { path: dest.to_owned(), source }),
        Ok(meta) if meta.is_dir() => fs::read_dir(dest)
            .map_err(|source| ExtractError::Io { path: dest.to_owned(), source })?
            .next()
            .is_some(),
        Ok(_) => true,
    };
    if taken {
        return Err(ExtractError::DestinationExists { path: dest.to_owned() });
    }
    Ok(())
}

/// `dest`'s parent directory (`.` for a bare name) and file name.
fn split_destination(dest: &Path) -> (PathBuf, OsString) {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = dest.file_name().map(OsStr::to_owned).unwrap_or_else(|| OsString::from("dest"));
    (parent, name)
}

/// The private directory an archive is extracted into; removed on drop unless persisted.
struct StagingDir {
    path: PathBuf,
    persisted: bool,
}

impl StagingDir {
    fn create(dest: &Path) -> Result<StagingDir, ExtractError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let (parent, name) = split_destination(dest);
        let mut last_error = None;
        for _ in 0..STAGING_NAME_ATTEMPTS {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let mut staging_name = OsString::from(".");
            staging_name.push(&name);
            staging_name.push(format!("{STAGING_INFIX}{}-{n}", std::process::id()));
            let path = parent.join(staging_name);
            match fs::DirBuilder::new().mode(STAGING_DIR_MODE).create(&path) {
                Ok(()) => return Ok(StagingDir { path, persisted: false }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some(e),
                Err(source) => return Err(ExtractError::Io { path, source }),
            }
        }
        let source = last_error.unwrap_or_else(|| io::Error::other("no staging name available"));
        Err(ExtractError::Io { path: parent, source })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the tree to readers and renames it to `dest`, then syncs the parent directory so
    /// the rename survives a crash.
    fn persist(mut self, dest: &Path) -> Result<(), ExtractError> {
        let io_error = |path: &Path| {
            let path = path.to_owned();
            move |source| ExtractError::Io { path, source }
        };
        fs::set_permissions(&self.path, fs::Permissions::from_mode(DEFAULT_DIR_MODE))
            .map_err(io_error(&self.path))?;
        fs::rename(&self.path, dest).map_err(io_error(dest))?;
        self.persisted = true;
        let (parent, _) = split_destination(dest);
        File::open(&parent).and_then(|dir| dir.sync_all()).map_err(io_error(&parent))
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Writes entries into the staging root, enforcing containment and limits. Shared by the tar
/// and zip readers, which only decode entries.
struct Extractor<'a> {
    root: &'a Path,
    archive: &'a Path,
    format: ArchiveFormat,
    limits: &'a ExtractLimits,
    stats: ExtractStats,
    entries: u64,
    /// Directories listed by the archive, with the mode to apply once all entries are written
    /// (a read-only directory must not stop later entries from being created in it).
    dir_modes: Vec<(PathBuf, u32)>,
    /// Every symlink created (relative path, entry name), re-checked on the finished tree.
    symlinks: Vec<(PathBuf, String)>,
    /// Set while reading a tar stream: lets a read error be recognised as the metadata limit.
    tar_budget: Option<Rc<StreamBudget>>,
    last_entry: String,
    buf: Vec<u8>,
}

impl<'a> Extractor<'a> {
    fn new(
        root: &'a Path,
        archive: &'a Path,
        format: ArchiveFormat,
        limits: &'a ExtractLimits,
    ) -> Self {
        Extractor {
            root,
            archive,
            format,
            limits,
            stats: ExtractStats::default(),
            entries: 0,
            dir_modes: Vec::new(),
            symlinks: Vec::new(),
            tar_budget: None,
            last_entry: String::from("(start of archive)"),
            buf: vec![0; COPY_BUFFER_BYTES],
        }
    }

    fn read_error(&self, source: io::Error) -> ExtractError {
        if self.tar_budget.as_ref().is_some_and(|budget| budget.exceeded.get()) {
            return ExtractError::MetadataTooLarge {
                after: self.last_entry.clone(),
                limit_bytes: MAX_ENTRY_METADATA_BYTES,
            };
        }
        ExtractError::Read { archive: self.archive.to_owned(), format: self.format, source }
    }

    fn begin_entry(&mut self, entry: &str) -> Result<(), ExtractError> {
        self.entries += 1;
        self.last_entry = entry.to_owned();
        if self.entries > self.limits.max_entries {
            return Err(ExtractError::TooManyEntries {
                entry: entry.to_owned(),
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    fn dir(&mut self, entry: &str, rel: &Path, mode: Option<u32>) -> Result<(), ExtractError> {
        if rel.as_os_str().is_empty() {
            return Ok(()); // "./": the root itself.
        }
        let path = self.prepare_parents(entry, rel)?;
        if !self.clear_target(entry, &path, true)? {
            create_dir(&path)?;
            self.stats.dirs += 1;
        }
        let mode = (mode.unwrap_or(DEFAULT_DIR_MODE) & PERMISSION_BITS) | DIR_OWNER_BITS;
        self.dir_modes.push((path, mode));
        Ok(())
    }

    fn file(
        &mut self,
        entry: &str,
        rel: &Path,
        mode: Option<u32>,
        contents: &mut dyn Read,
        mtime: Option<SystemTime>,
    ) -> Result<(), ExtractError> {
        if rel.as_os_str().is_empty() {
            return Err(ExtractError::InvalidPath {
                entry: entry.to_owned(),
                reason: "a file entry with an empty path",
            });
        }
        let path = self.prepare_parents(entry, rel)?;
        self.clear_target(entry, &path, false)?;
        let io_error = |source| ExtractError::Io { path: path.clone(), source };
        // `create_new` is O_CREAT|O_EXCL: it never follows a symlink, even a dangling one.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error)?;
        loop {
            let n = match contents.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(e)),
            };
            self.stats.bytes += n as u64;
            if self.stats.bytes > self.limits.max_total_bytes {
                return Err(ExtractError::TooLarge {
                    entry: entry.to_owned(),
                    limit_bytes: self.limits.max_total_bytes,
                });
            }
            file.write_all(&self.buf[..n]).map_err(io_error)?;
        }
        let mode = mode.unwrap_or(DEFAULT_FILE_MODE) & PERMISSION_BITS;
        file.set_permissions(fs::Permissions::from_mode(mode)).map_err(io_error)?;
        if let Some(mtime) = mtime {
            file.set_modified(mtime).map_err(io_error)?;
        }
        self.stats.files += 1;
        Ok(())
    }

    fn symlink(&mut self, entry: &str, rel: &Path, target: &Path) -> Result<(), ExtractError> {
        let target_text = target.to_string_lossy().into_owned();
        if rel.as_os_str().is_empty() {
            return Err(ExtractError::InvalidPath {
                entry: entry.to_owned(),
                reason: "a symlink entry with an empty path",
            });
        }
        if target.as_os_str().is_empty() {
            return Err(ExtractError::InvalidPath {
                entry: entry.to_owned(),
                reason: "a symlink with an empty target",
            });
        }
        if target.is_absolute() {
            return Err(ExtractError::AbsoluteSymlink {
                entry: entry.to_owned(),
                target: target_text,
            });
        }
        // Lexical check first, for a clear early refusal; `finish` re-checks the final tree.
        let mut depth = rel.components().count() - 1;
        for component in target.components() {
            match component {
                Component::Normal(_) => depth += 1,
                Component::CurDir => {}
                Component::ParentDir if depth > 0 => depth -= 1,
                _ => {
                    return Err(ExtractError::SymlinkEscape {
                        entry: entry.to_owned(),
                        target: target_text,
                    });
                }
            }
        }
        let path = self.prepare_parents(entry, rel)?;
        self.clear_target(entry, &path, false)?;
        std::os::unix::fs::symlink(target, &path)
            .map_err(|source| ExtractError::Io { path: path.clone(), source })?;
        self.symlinks.push((rel.to_owned(), entry.to_owned()));
        self.stats.symlinks += 1;
        Ok(())
    }

    fn hard_link(&mut self, entry: &str, rel: &Path, target: &Path) -> Result<(), ExtractError> {
        let refuse = |reason| ExtractError::HardLinkTarget {
            entry: entry.to_owned(),
            target: target.to_string_lossy().into_owned(),
            reason,
        };
        if rel.as_os_str().is_empty() {
            return Err(ExtractError::InvalidPath {
                entry: entry.to_owned(),
                reason: "a hard link entry with an empty path",
            });
        }
        let mut target_rel = PathBuf::new();
        for component in target.components() {
            match component {
                Component::Normal(part) => target_rel.push(part),
                Component::CurDir => {}
                Component::ParentDir => return Err(refuse("the target has a `..` component")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(refuse("the target is an absolute path"));
                }
            }
        }
        if target_rel.as_os_str().is_empty() {
            return Err(refuse("the target is empty"));
        }
        if target_rel == rel {
            return Err(refuse("the link points at itself"));
        }
        // Walk the target with lstat: every parent a real directory, the target a regular file.
        // The staging directory is private, so any regular file in it was extracted by us.
        let mut source = self.root.to_path_buf();
        let count = target_rel.components().count();
        for (i, component) in target_rel.components().enumerate() {
            source.push(component);
            let meta = fs::symlink_metadata(&source).ok();
            let ok = match &meta {
                Some(m) if i + 1 < count => m.is_dir(),
                Some(m) => m.is_file(),
                None => false,
            };
            if !ok {
                return Err(refuse("the target is not a regular file extracted earlier"));
            }
        }
        let path = self.prepare_parents(entry, rel)?;
        self.clear_target(entry, &path, false)?;
        fs::hard_link(&source, &path).map_err(|source| ExtractError::Io { path, source })?;
        self.stats.files += 1;
        Ok(())
    }

    /// Makes sure every parent of `rel` is a real directory inside the root, creating missing
    /// ones, and returns the absolute path of `rel`. A parent that is a symlink is refused, so
    /// nothing is ever created through a link.
    fn prepare_parents(&mut self, entry: &str, rel: &Path) -> Result<PathBuf, ExtractError> {
        let mut path = self.root.to_path_buf();
        let mut prefix = PathBuf::new();
        let mut components = rel.components().peekable();
        while let Some(component) = components.next() {
            path.push(component);
            prefix.push(component);
            if components.peek().is_none() {
                break;
            }
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(ExtractError::ThroughSymlink {
                        entry: entry.to_owned(),
                        symlink: prefix.to_string_lossy().into_owned(),
                    });
                }
                Ok(_) => {
                    return Err(ExtractError::Conflict {
                        entry: entry.to_owned(),
                        reason: "a parent path component is a file extracted earlier",
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    create_dir(&path)?;
                    self.stats.dirs += 1;
                }
                Err(source) => return Err(ExtractError::Io { path, source }),
            }
        }
        Ok(path)
    }

    /// Prepares `path` (whose parents are checked) for a new entry: a non-directory left by an
    /// earlier entry is removed (the later entry wins, as with tar). Returns whether a directory
    /// already exists there, which only a directory entry may reuse.
    fn clear_target(&self, entry: &str, path: &Path, is_dir: bool) -> Result<bool, ExtractError> {
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(ExtractError::Io { path: path.to_owned(), source }),
            Ok(meta) if meta.is_dir() => {
                if is_dir {
                    Ok(true)
                } else {
                    Err(ExtractError::Conflict {
                        entry: entry.to_owned(),
                        reason: "a directory with this path was extracted earlier",
                    })
                }
            }
            Ok(_) => {
                fs::remove_file(path)
                    .map_err(|source| ExtractError::Io { path: path.to_owned(), source })?;
                Ok(false)
            }
        }
    }

    /// Checks every symlink on the finished tree, then applies directory modes deepest first.
    fn finish(mut self) -> Result<ExtractStats, ExtractError> {
        for (rel, entry) in &self.symlinks {
            self.check_symlink_inside(rel, entry)?;
        }
        self.dir_modes.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (path, mode) in &self.dir_modes {
            let io_error = |source| ExtractError::Io { path: path.clone(), source };
            // Directories are never replaced (see `clear_target`), but never chmod through a
            // link all the same.
            if fs::symlink_metadata(path).map_err(io_error)?.is_dir() {
                fs::set_permissions(path, fs::Permissions::from_mode(*mode)).map_err(io_error)?;
            }
        }
        Ok(self.stats)
    }

    /// Resolves the symlink at `rel` the way the kernel would, following every link on the way,
    /// and refuses it if the walk ever leaves the root. Needed on top of the lexical check:
    /// `x -> a/s/..` stays inside lexically but escapes if `a/s -> ../..`, and `a/s` may be
    /// extracted after `x`. Missing components are walked lexically, which is stricter than the
    /// kernel (which would fail) and stays correct if a hook creates them later.
    fn check_symlink_inside(&self, rel: &Path, entry: &str) -> Result<(), ExtractError> {
        enum Step {
            Up,
            Name(OsString),
        }
        fn steps(path: &Path) -> impl Iterator<Item = Step> + '_ {
            path.components().filter_map(|component| match component {
                Component::Normal(name) => Some(Step::Name(name.to_owned())),
                Component::ParentDir => Some(Step::Up),
                _ => None,
            })
        }
        let escape = |target: &Path| ExtractError::SymlinkEscape {
            entry: entry.to_owned(),
            target: target.to_string_lossy().into_owned(),
        };
        let mut pending: Vec<Step> = steps(rel).collect();
        pending.reverse(); // A stack: the next step is at the end.
        let mut position = self.root.to_path_buf();
        let mut depth = 0usize;
        let mut hops = 0;
        while let Some(step) = pending.pop() {
            match step {
                Step::Up if depth == 0 => {
                    let target = fs::read_link(self.root.join(rel)).unwrap_or_default();
                    return Err(escape(&target));
                }
                Step::Up => {
                    position.pop();
                    depth -= 1;
                }
                Step::Name(name) => {
                    let next = position.join(&name);
                    let is_link =
                        fs::symlink_metadata(&next).is_ok_and(|meta| meta.file_type().is_symlink());
                    if !is_link {
                        position = next;
                        depth += 1;
                        continue;
                    }
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Ok(()); // A loop: the kernel refuses to resolve it (ELOOP).
                    }
                    let target = fs::read_link(&next)
                        .map_err(|source| ExtractError::Io { path: next.clone(), source })?;
                    if target.is_absolute() {
                        return Err(escape(&target));
                    }
                    let mut expansion: Vec<Step> = steps(&target).collect();
                    expansion.reverse();
                    pending.extend(expansion);
                }
            }
        }
        Ok(())
    }
}

fn create_dir(path: &Path) -> Result<(), ExtractError> {
    fs::DirBuilder::new()
        .mode(DEFAULT_DIR_MODE)
        .create(path)
        .map_err(|source| ExtractError::Io { path: path.to_owned(), source })
}

/// An entry's path as a relative path of normal components (empty for the root itself).
fn entry_path(entry: &str, raw: &Path) -> Result<PathBuf, ExtractError> {
    if raw.as_os_str().as_bytes().contains(&0) {
        return Err(ExtractError::InvalidPath {
            entry: entry.to_owned(),
            reason: "the path contains a NUL byte",
        });
    }
    let mut rel = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(ExtractError::ParentComponent { entry: entry.to_owned() });
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ExtractError::AbsolutePath { entry: entry.to_owned() });
            }
        }
    }
    Ok(rel)
}

/// How far into the decompressed tar stream the tar reader may read. Raised after each entry to
/// cover that entry's file data plus [`MAX_ENTRY_METADATA_BYTES`], so huge PAX records, long
/// names or data attached to directories cannot make the tar crate buffer or skip unbounded
/// amounts of data.
struct StreamBudget {
    consumed: Cell<u64>,
    limit: Cell<u64>,
    exceeded: Cell<bool>,
}

struct BudgetedReader<R> {
    inner: R,
    budget: Rc<StreamBudget>,
}

impl<R: Read> Read for BudgetedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let budget = &self.budget;
        let remaining = budget.limit.get().saturating_sub(budget.consumed.get());
        if remaining == 0 && !buf.is_empty() {
            budget.exceeded.set(true);
            return Err(io::Error::other("tar metadata limit exceeded"));
        }
        let len = buf.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..len])?;
        budget.consumed.set(budget.consumed.get() + n as u64);
        Ok(n)
    }
}

fn extract_tar<R: Read>(ex: &mut Extractor<'_>, reader: R) -> Result<(), ExtractError> {
    let budget = Rc::new(StreamBudget {
        consumed: Cell::new(0),
        limit: Cell::new(MAX_ENTRY_METADATA_BYTES),
        exceeded: Cell::new(false),
    });
    ex.tar_budget = Some(Rc::clone(&budget));
    let mut archive =
        tar::Archive::new(BudgetedReader { inner: reader, budget: Rc::clone(&budget) });
    let entries = archive.entries().map_err(|e| ex.read_error(e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ex.read_error(e))?;
        let raw_path = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        ex.begin_entry(&name)?;

        let header = entry.header();
        let kind = header.entry_type();
        let has_contents = matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous)
            || kind.is_gnu_sparse();
        let data_bytes = if has_contents {
            // `Entry::size` honours a PAX `size` record (files over 8 GiB in PAX archives).
            entry.size().div_ceil(TAR_BLOCK_BYTES).saturating_mul(TAR_BLOCK_BYTES)
        } else {
            0
        };
        budget.limit.set(
            entry
                .raw_file_position()
                .saturating_add(data_bytes)
                .saturating_add(MAX_ENTRY_METADATA_BYTES),
        );
        let mode = header.mode().ok();
        let mtime = header.mtime().ok().map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
        let link_target = entry.link_name_bytes().map(|bytes| bytes.into_owned());
        let rel = entry_path(&name, Path::new(OsStr::from_bytes(&raw_path)))?;

        match kind {
            // Old (V7) archives mark directories as regular files with a trailing slash.
            tar::EntryType::Regular if raw_path.ends_with(b"/") => ex.dir(&name, &rel, mode)?,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                ex.file(&name, &rel, mode, &mut entry, mtime)?
            }
            tar::EntryType::Directory => ex.dir(&name, &rel, mode)?,
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = link_target.unwrap_or_default();
                let target = Path::new(OsStr::from_bytes(&target));
                if kind == tar::EntryType::Symlink {
                    ex.symlink(&name, &rel, target)?
                } else {
                    ex.hard_link(&name, &rel, target)?
                }
            }
            tar::EntryType::Char => return Err(special(&name, "character device")),
            tar::EntryType::Block => return Err(special(&name, "block device")),
            tar::EntryType::Fifo => return Err(special(&name, "FIFO")),
            // Global PAX records (e.g. git archive's commit id) describe the archive, not a file.
            tar::EntryType::XGlobalHeader => {}
            other => {
                return Err(ExtractError::UnsupportedEntry {
                    entry: name,
                    kind: format!("{other:?} ({:?})", char::from(other.as_byte())),
                });
            }
        }
    }
    Ok(())
}

fn special(entry: &str, kind: &'static str) -> ExtractError {
    ExtractError::SpecialFile { entry: entry.to_owned(), kind }
}

fn extract_zip<R: Read + io::Seek>(ex: &mut Extractor<'_>, reader: R) -> Result<(), ExtractError> {
    let zip_error =
        |ex: &Extractor<'_>, e: zip::result::ZipError| ex.read_error(io::Error::other(e));
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| zip_error(ex, e))?;
    for index in 0..archive.len() {
        let mut file = archive.by_index(index).map_err(|e| zip_error(ex, e))?;
        let name = file.name().to_owned();
        ex.begin_entry(&name)?;
        let unix_mode = file.unix_mode();
        let file_type = unix_mode.map_or(0, |mode| mode & S_IFMT);
        let permissions = unix_mode.map(|mode| mode & PERMISSION_BITS);
        let rel = entry_path(&name, Path::new(&name))?;
        match file_type {
            S_IFLNK => {
                let mut target = Vec::new();
                (&mut file)
                    .take(MAX_SYMLINK_TARGET_BYTES + 1)
                    .read_to_end(&mut target)
                    .map_err(|e| ex.read_error(e))?;
                if target.len() as u64 > MAX_SYMLINK_TARGET_BYTES {
                    return Err(ExtractError::InvalidPath {
                        entry: name,
                        reason: "the symlink target is too long",
                    });
                }
                ex.symlink(&name, &rel, Path::new(OsStr::from_bytes(&target)))?;
            }
            S_IFCHR => return Err(special(&name, "character device")),
            S_IFBLK => return Err(special(&name, "block device")),
            S_IFIFO => return Err(special(&name, "FIFO")),
            S_IFSOCK => return Err(special(&name, "socket")),
            S_IFDIR => ex.dir(&name, &rel, permissions)?,
            _ if file.is_dir() => ex.dir(&name, &rel, permissions)?,
            0 | S_IFREG => ex.file(&name, &rel, permissions, &mut file, None)?,
            _ => {
                return Err(ExtractError::UnsupportedEntry {
                    entry: name,
                    kind: format!("unix file type {file_type:o}"),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_name_recognises_suffixes_case_insensitively_and_ignores_query() {
        let cases = [
            ("https://h/b/web-1.tar.gz", Some(ArchiveFormat::TarGz)),
            ("web-1.TGZ", Some(ArchiveFormat::TarGz)),
            ("web.tar", Some(ArchiveFormat::Tar)),
            ("web.tar.zst?X-Amz-Signature=abc", Some(ArchiveFormat::TarZst)),
            ("web.tzst#frag", Some(ArchiveFormat::TarZst)),
            ("file:///srv/web.ZIP", Some(ArchiveFormat::Zip)),
            ("web.tar.gz.gpg", None),
            ("web.tar.bz2", None),
            ("https://h/download?file=web.tar.gz.sig", None),
            ("web", None),
        ];
        for (name, expected) in cases {
            assert_eq!(ArchiveFormat::from_name(name), expected, "{name}");
        }
    }

    #[test]
    fn sniff_recognises_magic_numbers() {
        assert_eq!(ArchiveFormat::sniff(&[0x1f, 0x8b, 8, 0]), Some(ArchiveFormat::TarGz));
        assert_eq!(ArchiveFormat::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Some(ArchiveFormat::TarZst));
        assert_eq!(ArchiveFormat::sniff(b"PK\x03\x04rest"), Some(ArchiveFormat::Zip));
        let mut tar_header = vec![0u8; 512];
        tar_header[257..263].copy_from_slice(b"ustar\0");
        assert_eq!(ArchiveFormat::sniff(&tar_header), Some(ArchiveFormat::Tar));
        assert_eq!(ArchiveFormat::sniff(b"#!/bin/sh\n"), None);
        assert_eq!(ArchiveFormat::sniff(&[]), None);
    }

    #[test]
    fn entry_path_keeps_only_normal_components() {
        assert_eq!(entry_path("e", Path::new("./a//b/./c")).unwrap(), PathBuf::from("a/b/c"));
        assert_eq!(entry_path("e", Path::new("./")).unwrap(), PathBuf::new());
        assert!(matches!(
            entry_path("e", Path::new("a/../b")),
            Err(ExtractError::ParentComponent { .. })
        ));
        assert!(matches!(
            entry_path("e", Path::new("/etc")),
            Err(ExtractError::AbsolutePath { .. })
        ));
    }
}
