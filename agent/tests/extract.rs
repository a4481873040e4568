//! Safe extraction: a corpus of valid and malicious archives in all four formats, each refused
//! archive checked for leaving nothing behind anywhere in its sandbox.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use agent::extract::{ArchiveFormat, ExtractError, ExtractLimits, ExtractStats, extract};
use tar::{EntryType, Header};

const MTIME: u64 = 1_700_000_000;

/// A temporary tree: `root/sandbox/builds/<dest>`. Escapes of one, two or three `..` land in
/// `builds/`, `sandbox/` or `root/`, all covered by [`Sandbox::listing`].
struct Sandbox {
    root: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("sandbox/builds")).unwrap();
        Sandbox { root }
    }

    fn builds(&self) -> PathBuf {
        self.root.path().join("sandbox/builds")
    }

    fn dest(&self) -> PathBuf {
        self.builds().join("b1")
    }

    fn archive(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.root.path().join(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    /// Every path under the root, archives excluded.
    fn listing(&self) -> BTreeSet<PathBuf> {
        fn walk(dir: &Path, base: &Path, out: &mut BTreeSet<PathBuf>) {
            for entry in fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let path = entry.path();
                out.insert(path.strip_prefix(base).unwrap().to_owned());
                if entry.file_type().unwrap().is_dir() {
                    walk(&path, base, out);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(self.root.path(), self.root.path(), &mut out);
        out.retain(|p| !p.to_string_lossy().starts_with("archive"));
        out
    }

    /// Extracts `bytes` (as `format`) and asserts it is refused without a trace.
    fn refuse(&self, format: ArchiveFormat, bytes: &[u8], limits: &ExtractLimits) -> ExtractError {
        let archive = self.archive("archive.bin", bytes);
        let before = self.listing();
        let err = extract(&archive, format, &self.dest(), limits).expect_err("must be refused");
        assert_eq!(self.listing(), before, "a refused archive left files behind ({err})");
        assert!(!self.dest().exists());
        err
    }
}

fn header(path: &[u8], kind: EntryType, size: u64, mode: u32) -> Header {
    let mut header = Header::new_gnu();
    // Written as raw bytes: `set_path` refuses `..` and absolute paths, which is the point here.
    header.as_old_mut().name[..path.len()].copy_from_slice(path);
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(MTIME);
    header.set_cksum();
    header
}

fn link_header(path: &[u8], kind: EntryType, target: &[u8]) -> Header {
    let mut header = header(path, kind, 0, 0o777);
    header.set_link_name_literal(target).unwrap();
    header.set_cksum();
    header
}

/// One tar entry for [`tar_bytes`].
enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    Raw(Header, Vec<u8>),
}

fn tar_bytes(entries: Vec<E<'_>>) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let (header, data) = match entry {
            E::Dir(path, mode) => (header(path.as_bytes(), EntryType::Directory, 0, mode), vec![]),
            E::File(path, mode, data) => (
                header(path.as_bytes(), EntryType::Regular, data.len() as u64, mode),
                data.to_vec(),
            ),
            E::Symlink(path, target) => {
                (link_header(path.as_bytes(), EntryType::Symlink, target.as_bytes()), vec![])
            }
            E::HardLink(path, target) => {
                (link_header(path.as_bytes(), EntryType::Link, target.as_bytes()), vec![])
            }
            E::Raw(header, data) => (header, data),
        };
        builder.append(&header, data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

fn compress(format: ArchiveFormat, tar: Vec<u8>) -> Vec<u8> {
    match format {
        ArchiveFormat::Tar => tar,
        ArchiveFormat::TarGz => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).unwrap();
            gz.finish().unwrap()
        }
        ArchiveFormat::TarZst => zstd::encode_all(tar.as_slice(), 1).unwrap(),
        ArchiveFormat::Zip => unreachable!("zip archives are built with zip_bytes"),
    }
}

/// One zip entry for [`zip_bytes`].
enum Z<'a> {
    Dir(&'a str),
    File(&'a str, u32, &'a [u8]),
    Symlink(&'a str, &'a str),
}

fn zip_bytes(entries: Vec<Z<'_>>) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut writer = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for entry in entries {
        match entry {
            Z::Dir(name) => writer.add_directory(name, options).unwrap(),
            Z::File(name, mode, data) => {
                writer.start_file(name, options.unix_permissions(mode)).unwrap();
                writer.write_all(data).unwrap();
            }
            Z::Symlink(name, target) => writer.add_symlink(name, target, options).unwrap(),
        }
    }
    writer.finish().unwrap().into_inner()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn good_tar() -> Vec<u8> {
    tar_bytes(vec![
        E::Dir("./", 0o755),
        E::Dir("app/", 0o755),
        E::Dir("app/teletraan/", 0o750),
        E::File("app/teletraan/RESTARTING", 0o4755, b"#!/bin/sh\necho restart\n"),
        E::File("app/conf/nested/deep/app.conf", 0o640, b"port=8080\n"),
        E::Symlink("app/current", "teletraan/RESTARTING"),
        E::Symlink("app/conf/up", "../teletraan"),
        E::HardLink("app/conf/hard.conf", "app/conf/nested/deep/app.conf"),
        E::Dir("app/readonly/", 0o555),
        E::File("app/readonly/file", 0o444, b"ro"),
    ])
}

fn check_good_tree(dest: &Path) {
    let script = dest.join("app/teletraan/RESTARTING");
    assert_eq!(fs::read(&script).unwrap(), b"#!/bin/sh\necho restart\n");
    assert_eq!(mode(&script), 0o755, "exec bits kept, setuid dropped");
    let conf = dest.join("app/conf/nested/deep/app.conf");
    assert_eq!(fs::read(&conf).unwrap(), b"port=8080\n");
    assert_eq!(mode(&conf), 0o640);
    assert_eq!(mode(&dest.join("app/teletraan")), 0o750);
    assert_eq!(mode(&dest.join("app/readonly")), 0o755, "owner rwx forced on directories");
    assert_eq!(fs::read(dest.join("app/readonly/file")).unwrap(), b"ro");
    assert_eq!(fs::read_link(dest.join("app/current")).unwrap(), Path::new("teletraan/RESTARTING"));
    assert_eq!(fs::read(dest.join("app/current")).unwrap(), b"#!/bin/sh\necho restart\n");
    assert!(dest.join("app/conf/up/RESTARTING").exists(), "inner directory symlink works");
    let hard = fs::metadata(dest.join("app/conf/hard.conf")).unwrap();
    assert_eq!(hard.ino(), fs::metadata(&conf).unwrap().ino(), "hard link shares the inode");
    assert_eq!(
        fs::metadata(&script).unwrap().modified().unwrap(),
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(MTIME)
    );
}

#[test]
fn tar_formats_extract_the_full_tree() {
    for format in [ArchiveFormat::Tar, ArchiveFormat::TarGz, ArchiveFormat::TarZst] {
        let sandbox = Sandbox::new();
        let archive = sandbox.archive("archive.bin", &compress(format, good_tar()));
        let stats = extract(&archive, format, &sandbox.dest(), &ExtractLimits::default())
            .unwrap_or_else(|e| panic!("{format}: {e}"));
        check_good_tree(&sandbox.dest());
        // Files: RESTARTING, app.conf, hard.conf, readonly/file. Dirs: app, teletraan, conf,
        // nested, deep (implicit), readonly.
        assert_eq!(stats, ExtractStats { files: 4, dirs: 6, symlinks: 2, bytes: 35 }, "{format}");
        assert_eq!(mode(&sandbox.dest()), 0o755);
        let names: Vec<_> =
            fs::read_dir(sandbox.builds()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["b1"], "{format}: no staging directory left");
    }
}

#[test]
fn zip_extracts_the_full_tree() {
    let sandbox = Sandbox::new();
    let bytes = zip_bytes(vec![
        Z::Dir("app/"),
        Z::File("app/teletraan/RESTARTING", 0o755, b"#!/bin/sh\n"),
        Z::File("app/conf/app.conf", 0o600, b"port=8080\n"),
        Z::Symlink("app/current", "teletraan/RESTARTING"),
    ]);
    let archive = sandbox.archive("archive.zip", &bytes);
    let stats =
        extract(&archive, ArchiveFormat::Zip, &sandbox.dest(), &ExtractLimits::default()).unwrap();
    let dest = sandbox.dest();
    assert_eq!(fs::read(dest.join("app/teletraan/RESTARTING")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(mode(&dest.join("app/teletraan/RESTARTING")), 0o755);
    assert_eq!(mode(&dest.join("app/conf/app.conf")), 0o600);
    assert_eq!(fs::read_link(dest.join("app/current")).unwrap(), Path::new("teletraan/RESTARTING"));
    assert_eq!(stats.files, 2);
    assert_eq!(stats.symlinks, 1);
    assert_eq!(stats.bytes, 20);
}

/// One PAX extended-header record: `"<len> <key>=<value>\n"`, where `len` counts itself.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len();
    while len != len.to_string().len() + body.len() {
        len = len.to_string().len() + body.len();
    }
    format!("{len}{body}").into_bytes()
}

#[test]
fn large_files_long_names_and_pax_records_extract() {
    // Bigger than the per-entry metadata allowance, so the stream budget must count file data.
    let big: Vec<u8> = (0..3u32 << 20).map(|i| i as u8).collect();
    let gnu_path = format!("{}/gnu.txt", "g".repeat(150));
    let pax_path = format!("{}/pax.txt", "p".repeat(150));
    let mut builder = tar::Builder::new(Vec::new());
    let global = pax_record("comment", "8ef9007");
    let global_header =
        header(b"pax_global_header", EntryType::XGlobalHeader, global.len() as u64, 0o644);
    builder.append(&global_header, global.as_slice()).unwrap();
    let mut big_header = Header::new_gnu();
    big_header.set_size(big.len() as u64);
    big_header.set_mode(0o644);
    builder.append_data(&mut big_header, "big.bin", big.as_slice()).unwrap();
    let mut gnu_header = Header::new_gnu();
    gnu_header.set_size(3);
    gnu_header.set_mode(0o644);
    builder.append_data(&mut gnu_header, &gnu_path, &b"gnu"[..]).unwrap();
    let pax = pax_record("path", &pax_path);
    builder
        .append(
            &header(b"PaxHeaders/x", EntryType::XHeader, pax.len() as u64, 0o644),
            pax.as_slice(),
        )
        .unwrap();
    builder.append(&header(b"short", EntryType::Regular, 3, 0o644), &b"pax"[..]).unwrap();
    let bytes = compress(ArchiveFormat::TarGz, builder.into_inner().unwrap());

    let sandbox = Sandbox::new();
    let archive = sandbox.archive("archive.tar.gz", &bytes);
    let stats = extract(&archive, ArchiveFormat::TarGz, &sandbox.dest(), &ExtractLimits::default())
        .unwrap();
    let dest = sandbox.dest();
    assert!(fs::read(dest.join("big.bin")).unwrap() == big);
    assert_eq!(fs::read(dest.join(&gnu_path)).unwrap(), b"gnu");
    assert_eq!(fs::read(dest.join(&pax_path)).unwrap(), b"pax");
    assert!(!dest.join("short").exists(), "the PAX path overrides the header name");
    assert!(!dest.join("pax_global_header").exists());
    assert_eq!(stats.files, 3);
    assert_eq!(stats.bytes, big.len() as u64 + 6);
}

#[test]
fn format_detection_matches_written_archives() {
    let tar = good_tar();
    for format in [ArchiveFormat::Tar, ArchiveFormat::TarGz, ArchiveFormat::TarZst] {
        assert_eq!(ArchiveFormat::sniff(&compress(format, tar.clone())), Some(format));
    }
    assert_eq!(ArchiveFormat::sniff(&zip_bytes(vec![Z::Dir("a/")])), Some(ArchiveFormat::Zip));
}

#[test]
fn parent_traversal_is_refused() {
    let sandbox = Sandbox::new();
    let bytes = tar_bytes(vec![E::File("ok", 0o644, b"fine"), E::File("../evil", 0o644, b"x")]);
    let err = sandbox.refuse(ArchiveFormat::Tar, &bytes, &ExtractLimits::default());
    assert!(matches!(&err, ExtractError::ParentComponent { entry } if entry == "../evil"), "{err}");
    let bytes = tar_bytes(vec![E::File("a/b/../../../../evil", 0o644, b"x")]);
    let err = sandbox.refuse(ArchiveFormat::Tar, &bytes, &ExtractLimits::default());
    assert!(matches!(err, ExtractError::ParentComponent { .. }), "{err}");
}

#[test]
fn absolute_paths_are_refused() {
    let sandbox = Sandbox::new();
    let outside =
        std::env::temp_dir().join(format!("evil-{}-{}", std::process::id(), rand_suffix()));
    let bytes = tar_bytes(vec![E::File(outside.to_str().unwrap(), 0o644, b"x")]);
    let err = sandbox.refuse(
        ArchiveFormat::TarGz,
        &compress(ArchiveFormat::TarGz, bytes),
        &ExtractLimits::default(),
    );
    assert!(matches!(err, ExtractError::AbsolutePath { .. }), "{err}");
    assert!(!outside.exists());
}

#[test]
fn symlink_escapes_are_refused() {
    let sandbox = Sandbox::new();
    // The classic: a link out of the tree, then a file written through it.
    let bytes =
        tar_bytes(vec![E::Symlink("link", "../../outside"), E::File("link/file", 0o644, b"pwned")]);
    let err = sandbox.refuse(ArchiveFormat::Tar, &bytes, &ExtractLimits::default());
    assert!(matches!(&err, ExtractError::SymlinkEscape { entry, .. } if entry == "link"), "{err}");
    assert!(!sandbox.root.path().join("sandbox/outside").exists());

    let bytes = tar_bytes(vec![E::Symlink("sub/link", "../../x")]);
    let err = sandbox.refuse(ArchiveFormat::Tar, &bytes, &ExtractLimits::default());
    assert!(matches!(err, ExtractError::SymlinkEscape { .. }), "{err}");

    let bytes = tar_bytes(vec![E::Symlink("etc", "/etc")]);
    let err = sandbox.refuse(ArchiveFormat::Tar, &bytes, &ExtractLimits::default());
    assert!(
        matches!(&err, ExtractError::AbsoluteSymlink { target, .. } if target == "/etc"),
        "{err}"
    );
}

#[test]
fn symlink_that_escapes_only_through_another_symlink_is_refused() {
    let sandbox = Sandbox::new();
    // `x -> a/b/s/..` is inside lexically (a/b), but `a/b/s -> ../..` is the root, so the
    // kernel resolves x to the root's parent. `s` comes after `x`, so only the final check sees it.
    let bytes = tar_bytes(vec![
        E::Dir("a/b/", 0o755),
        E::Symlink("x", "a/b/s/.."),
        E::Symlink("a/b/s", "../.."),
    ]);
    let err = sandbox.refuse(ArchiveFormat::Tar, &bytes, &ExtractLimits::default());
    assert!(matches!(&err, ExtractError::SymlinkEscape { entry, .. } if entry == "x"), "{err}");
}

#[test]
fn writing_through_an_inner_symlink_is_refused() {
    let sandbox = Sandbox::new();
    let bytes = tar_bytes(vec![
        E::Dir("real/", 0o755),
        E::Symlink("link", "real"),
        E::File("link/file", 0o644, b"x"),
    ]);
    let err = sandbox.refuse(ArchiveFormat::Tar, &bytes, &ExtractLimits::default());
    assert!(
        matches!(&err, ExtractError::ThroughSymlink { entry, symlink } if entry == "link/file" && symlink == "link"),
        "{err}"
    );
}

#[test]
fn a_later_file_replaces_a_symlink_instead_of_writing_through_it() {
    let sandbox = Sandbox::new();
    let bytes = tar_bytes(vec![
        E::File("target.txt", 0o644, b"original"),
        E::Symlink("s", "target.txt"),
        E::File("s", 0o644, b"replacement"),
    ]);
    let archive = sandbox.archive("archive.tar", &bytes);
    extract(&archive, ArchiveFormat::Tar, &sandbox.dest(), &ExtractLimits::default()).unwrap();
    assert_eq!(fs::read(sandbox.dest().join("target.txt")).unwrap(), b"original");
    assert!(fs::symlink_metadata(sandbox.dest().join("s")).unwrap().is_file());
    assert_eq!(fs::read(sandbox.dest().join("s")).unwrap(), b"replacement");
}

#[test]
fn hard_links_must_target_files_extracted_earlier() {
    let sandbox = Sandbox::new();
    for (target, why) in [
        ("/etc/passwd", "absolute"),
        ("../../etc/passwd", "traversal"),
        ("missing", "not extracted"),
        ("dir", "a directory"),
        ("sym", "a symlink"),
    ] {
        let bytes = tar_bytes(vec![
            E::Dir("dir/", 0o755),
            E::File("file", 0o644, b"f"),
            E::Symlink("sym", "file"),
            E::HardLink("link", target),
        ]);
        let err = sandbox.refuse(ArchiveFormat::Tar, &bytes, &ExtractLimits::default());
        assert!(matches!(err, ExtractError::HardLinkTarget { .. }), "{why}: {err}");
    }
    assert_ne!(fs::metadata("/etc/passwd").unwrap().nlink(), 0);
}

#[test]
fn device_nodes_and_fifos_are_refused() {
    let sandbox = Sandbox::new();
    for (kind, name) in [
        (EntryType::Char, "character device"),
        (EntryType::Block, "block device"),
        (EntryType::Fifo, "FIFO"),
    ] {
        let mut dev = header(b"dev/null", kind, 0, 0o666);
        dev.set_device_major(1).unwrap();
        dev.set_device_minor(3).unwrap();
        dev.set_cksum();
        let bytes = tar_bytes(vec![E::File("ok", 0o644, b"fine"), E::Raw(dev, vec![])]);
        let err = sandbox.refuse(ArchiveFormat::Tar, &bytes, &ExtractLimits::default());
        assert!(matches!(&err, ExtractError::SpecialFile { kind, .. } if *kind == name), "{err}");
    }
}

#[test]
fn decompression_bomb_is_stopped_while_extracting() {
    const BOMB_BYTES: u64 = 200 << 20;
    let sandbox = Sandbox::new();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    {
        let mut builder = tar::Builder::new(&mut gz);
        let bomb = header(b"zeros", EntryType::Regular, BOMB_BYTES, 0o644);
        builder.append(&bomb, io::repeat(0).take(BOMB_BYTES)).unwrap();
        builder.finish().unwrap();
    }
    let bytes = gz.finish().unwrap();
    assert!(bytes.len() < 2 << 20, "the bomb is small compressed ({} bytes)", bytes.len());
    let limits = ExtractLimits { max_total_bytes: 10 << 20, ..ExtractLimits::default() };
    let err = sandbox.refuse(ArchiveFormat::TarGz, &bytes, &limits);
    assert!(
        matches!(&err, ExtractError::TooLarge { entry, limit_bytes } if entry == "zeros" && *limit_bytes == 10 << 20),
        "{err}"
    );
}

#[test]
fn zip_bomb_is_stopped_while_extracting() {
    let sandbox = Sandbox::new();
    let zeros = vec![0u8; 20 << 20];
    let bytes = zip_bytes(vec![Z::File("zeros", 0o644, &zeros)]);
    let limits = ExtractLimits { max_total_bytes: 1 << 20, ..ExtractLimits::default() };
    let err = sandbox.refuse(ArchiveFormat::Zip, &bytes, &limits);
    assert!(matches!(err, ExtractError::TooLarge { .. }), "{err}");
}

#[test]
fn too_many_entries_are_refused() {
    let sandbox = Sandbox::new();
    let names: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    let bytes = tar_bytes(names.iter().map(|n| E::File(n, 0o644, b"x")).collect());
    let limits = ExtractLimits { max_entries: 10, ..ExtractLimits::default() };
    let err =
        sandbox.refuse(ArchiveFormat::TarZst, &compress(ArchiveFormat::TarZst, bytes), &limits);
    assert!(
        matches!(&err, ExtractError::TooManyEntries { entry, limit: 10 } if entry == "f10"),
        "{err}"
    );

    let zip = zip_bytes(names.iter().map(|n| Z::File(n, 0o644, b"x")).collect());
    let err = sandbox.refuse(ArchiveFormat::Zip, &zip, &limits);
    assert!(matches!(err, ExtractError::TooManyEntries { .. }), "{err}");
}

#[test]
fn data_hidden_in_non_file_entries_is_bounded() {
    let sandbox = Sandbox::new();
    let size = 3 << 20;
    let dir = header(b"dir/", EntryType::Directory, size, 0o755);
    let bytes = tar_bytes(vec![E::Raw(dir, vec![0; size as usize])]);
    let err = sandbox.refuse(ArchiveFormat::Tar, &bytes, &ExtractLimits::default());
    assert!(
        matches!(&err, ExtractError::MetadataTooLarge { after, .. } if after == "dir/"),
        "{err}"
    );
}

#[test]
fn zip_traversal_absolute_and_symlink_escape_are_refused() {
    let sandbox = Sandbox::new();
    let refuse = |entries| {
        sandbox.refuse(ArchiveFormat::Zip, &zip_bytes(entries), &ExtractLimits::default())
    };
    let err = refuse(vec![Z::File("../evil", 0o644, b"x")]);
    assert!(matches!(err, ExtractError::ParentComponent { .. }), "{err}");
    let err = refuse(vec![Z::File("/abs/evil", 0o644, b"x")]);
    assert!(matches!(err, ExtractError::AbsolutePath { .. }), "{err}");
    let err = refuse(vec![Z::Symlink("l", "../../../outside"), Z::File("l/f", 0o644, b"x")]);
    assert!(matches!(err, ExtractError::SymlinkEscape { .. }), "{err}");
    let err = refuse(vec![Z::Symlink("l", "/etc")]);
    assert!(matches!(err, ExtractError::AbsoluteSymlink { .. }), "{err}");
}

#[test]
fn zip_fifo_is_refused() {
    let sandbox = Sandbox::new();
    let mut bytes = zip_bytes(vec![Z::File("fifo", 0o644, b"")]);
    // Patch the central directory's external attributes: file type FIFO (the writer only takes
    // permission bits).
    let at = bytes.windows(4).position(|w| w == b"PK\x01\x02").unwrap() + 38;
    bytes[at..at + 4].copy_from_slice(&((0o010_644u32) << 16).to_le_bytes());
    let err = sandbox.refuse(ArchiveFormat::Zip, &bytes, &ExtractLimits::default());
    assert!(matches!(&err, ExtractError::SpecialFile { kind: "FIFO", .. }), "{err}");
}

#[test]
fn corrupt_or_mismatched_archives_are_read_errors() {
    let sandbox = Sandbox::new();
    let err = sandbox.refuse(ArchiveFormat::TarGz, b"not gzip at all", &ExtractLimits::default());
    assert!(matches!(err, ExtractError::Read { format: ArchiveFormat::TarGz, .. }), "{err}");
    let mut truncated = compress(ArchiveFormat::TarZst, good_tar());
    truncated.truncate(truncated.len() / 2);
    let err = sandbox.refuse(ArchiveFormat::TarZst, &truncated, &ExtractLimits::default());
    assert!(matches!(err, ExtractError::Read { .. }), "{err}");
    let err = sandbox.refuse(ArchiveFormat::Zip, &good_tar(), &ExtractLimits::default());
    assert!(matches!(err, ExtractError::Read { .. }), "{err}");
}

#[test]
fn an_existing_destination_is_not_overwritten() {
    let sandbox = Sandbox::new();
    fs::create_dir(sandbox.dest()).unwrap();
    fs::write(sandbox.dest().join("keep"), b"mine").unwrap();
    let archive = sandbox.archive("archive.tar", &good_tar());
    let err = extract(&archive, ArchiveFormat::Tar, &sandbox.dest(), &ExtractLimits::default())
        .unwrap_err();
    assert!(matches!(err, ExtractError::DestinationExists { .. }), "{err}");
    assert_eq!(fs::read(sandbox.dest().join("keep")).unwrap(), b"mine");

    // An empty directory is fine: it is replaced.
    fs::remove_file(sandbox.dest().join("keep")).unwrap();
    extract(&archive, ArchiveFormat::Tar, &sandbox.dest(), &ExtractLimits::default()).unwrap();
    check_good_tree(&sandbox.dest());
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}
