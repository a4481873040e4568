//! Downloads over file:// and over real HTTPS (a tokio-rustls server with a throwaway CA), and
//! `ensure_build`'s idempotency and cleanup.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use agent::download::{
    ChecksumAlgorithm, DownloadError, DownloadLimits, Downloader, EXTRACTED_MARKER_SUFFIX,
    Expected, ensure_build,
};
use agent::extract::{ExtractError, ExtractLimits};
use p2p_transfer::tls::{ClusterCa, issue_node_cert};
use sha1::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tar_gz(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for &(path, mode, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&builder.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

fn build_archive() -> Vec<u8> {
    tar_gz(&[
        ("teletraan/RESTARTING", 0o755, b"#!/bin/sh\nexit 0\n"),
        ("app/config.txt", 0o644, b"port=8080\n"),
    ])
}

fn file_url(path: &Path) -> String {
    reqwest::Url::from_file_path(path).unwrap().to_string()
}

fn expect_hash(bytes: &[u8]) -> Expected {
    Expected { blake3: Some(blake3::hash(bytes)), size: Some(bytes.len() as u64) }
}

fn downloader() -> Downloader {
    Downloader::new(&[], DownloadLimits::default()).unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn file_url_build_is_extracted_marked_and_then_a_no_op() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("web-1.tar.gz");
    let bytes = build_archive();
    fs::write(&source, &bytes).unwrap();
    let builds = tmp.path().join("builds");
    let dl = downloader();
    let limits = ExtractLimits::default();

    let tree =
        ensure_build(&dl, &builds, "web", "b1", &file_url(&source), &expect_hash(&bytes), &limits)
            .await
            .unwrap();
    assert_eq!(tree, builds.join("b1"));
    assert_eq!(fs::read(tree.join("app/config.txt")).unwrap(), b"port=8080\n");
    let hook = tree.join("teletraan/RESTARTING");
    assert!(
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&hook).unwrap().permissions())
            & 0o111
            != 0
    );
    let marker = fs::read_to_string(builds.join(format!("b1{EXTRACTED_MARKER_SUFFIX}"))).unwrap();
    assert_eq!(marker.trim(), format!("blake3 {}", blake3::hash(&bytes).to_hex()));
    assert_eq!(names(&builds), ["b1", "b1.extracted", "web-b1.tar.gz"]);
    assert_eq!(fs::read(builds.join("web-b1.tar.gz")).unwrap(), bytes, "archive kept");

    // Second call: marker and tree exist, so nothing is fetched (the source is gone).
    fs::remove_file(&source).unwrap();
    fs::write(tree.join("app/touched-by-hook"), b"x").unwrap();
    let again =
        ensure_build(&dl, &builds, "web", "b1", &file_url(&source), &expect_hash(&bytes), &limits)
            .await
            .unwrap();
    assert_eq!(again, tree);
    assert!(tree.join("app/touched-by-hook").exists(), "the tree was left alone");
}

#[tokio::test]
async fn wrong_blake3_keeps_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("web-1.tar.gz");
    let bytes = build_archive();
    fs::write(&source, &bytes).unwrap();
    let builds = tmp.path().join("builds");
    let expected = Expected { blake3: Some(blake3::hash(b"another build")), size: None };

    let err = ensure_build(
        &downloader(),
        &builds,
        "web",
        "b1",
        &file_url(&source),
        &expected,
        &ExtractLimits::default(),
    )
    .await
    .unwrap_err();
    match &err {
        DownloadError::HashMismatch { expected: want, actual, .. } => {
            assert_eq!(want, &blake3::hash(b"another build").to_hex().to_string());
            assert_eq!(actual, &blake3::hash(&bytes).to_hex().to_string());
        }
        other => panic!("expected HashMismatch, got {other}"),
    }
    assert!(names(&builds).is_empty(), "left behind: {:?}", names(&builds));
}

#[tokio::test]
async fn size_mismatch_keeps_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("a.tar.gz");
    fs::write(&source, build_archive()).unwrap();
    let dest = tmp.path().join("out.tar.gz");
    for size in [10, 1 << 20] {
        let err = downloader()
            .fetch(&file_url(&source), &dest, &Expected { blake3: None, size: Some(size) })
            .await
            .unwrap_err();
        assert!(
            matches!(err, DownloadError::SizeMismatch { expected_bytes, .. } if expected_bytes == size),
            "{err}"
        );
        assert_eq!(names(tmp.path()), ["a.tar.gz"]);
    }
}

#[tokio::test]
async fn stale_partial_tree_is_replaced_and_unknown_suffix_is_sniffed() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("artifact"); // No suffix: the format is sniffed.
    let bytes = build_archive();
    fs::write(&source, &bytes).unwrap();
    let builds = tmp.path().join("builds");
    fs::create_dir_all(builds.join("b1/half-extracted")).unwrap();
    fs::create_dir_all(builds.join(".b1.extract-999-0/junk")).unwrap();

    let tree = ensure_build(
        &downloader(),
        &builds,
        "web",
        "b1",
        &file_url(&source),
        &Expected::default(),
        &ExtractLimits::default(),
    )
    .await
    .unwrap();
    assert!(!tree.join("half-extracted").exists());
    assert!(tree.join("teletraan/RESTARTING").exists());
    assert_eq!(names(&builds), ["b1", "b1.extracted", "web-b1.tar.gz"]);
}

#[tokio::test]
async fn refused_archive_leaves_no_tree_marker_or_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("evil.tar.gz");
    fs::write(&source, tar_gz(&[("../escape", 0o644, b"x")])).unwrap();
    let builds = tmp.path().join("builds");
    let err = ensure_build(
        &downloader(),
        &builds,
        "web",
        "b1",
        &file_url(&source),
        &Expected::default(),
        &ExtractLimits::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, DownloadError::Extract { source: ExtractError::ParentComponent { .. }, .. }),
        "{err}"
    );
    assert!(names(&builds).is_empty(), "left behind: {:?}", names(&builds));
    assert!(!tmp.path().join("escape").exists());
}

#[tokio::test]
async fn names_that_are_not_plain_file_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for (env, build) in [("web", "../b1"), ("web/x", "b1"), ("web", ""), ("web", ".b1")] {
        let err = ensure_build(
            &downloader(),
            tmp.path(),
            env,
            build,
            "file:///nonexistent.tar",
            &Expected::default(),
            &ExtractLimits::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, DownloadError::InvalidName { .. }), "{env:?} {build:?}: {err}");
    }
}

#[tokio::test]
async fn plain_http_and_other_schemes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("x.tar.gz");
    let err = downloader()
        .fetch("http://127.0.0.1:9/x.tar.gz", &dest, &Expected::default())
        .await
        .unwrap_err();
    assert!(matches!(err, DownloadError::PlainHttpRefused { .. }), "{err}");
    let err =
        downloader().fetch("s3://bucket/x.tar.gz", &dest, &Expected::default()).await.unwrap_err();
    assert!(
        matches!(&err, DownloadError::UnsupportedScheme { scheme, .. } if scheme == "s3"),
        "{err}"
    );
    let err = downloader().fetch("not a url", &dest, &Expected::default()).await.unwrap_err();
    assert!(matches!(err, DownloadError::InvalidUrl { .. }), "{err}");
    assert!(names(tmp.path()).is_empty());
}

#[tokio::test]
async fn oversized_file_download_is_refused_while_streaming() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("big.tar");
    fs::write(&source, vec![7u8; 300_000]).unwrap();
    let limits = DownloadLimits { max_download_bytes: 100_000, ..DownloadLimits::default() };
    let dl = Downloader::new(&[], limits).unwrap();
    let dest = tmp.path().join("out.tar");
    let err = dl.fetch(&file_url(&source), &dest, &Expected::default()).await.unwrap_err();
    assert!(matches!(err, DownloadError::TooLarge { limit_bytes: 100_000, .. }), "{err}");
    assert_eq!(names(tmp.path()), ["big.tar"]);
}

// --- HTTPS ---------------------------------------------------------------------------------

struct Route {
    status: u16,
    body: Vec<u8>,
    /// Without Content-Length the body ends when the connection closes.
    content_length: bool,
}

fn ok(body: &[u8]) -> Route {
    Route { status: 200, body: body.to_vec(), content_length: true }
}

struct TestServer {
    addr: SocketAddr,
    ca_pem: Vec<u8>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// A minimal HTTPS/1.1 server: one request per connection, routes by exact path, 404 otherwise.
async fn serve(routes: Vec<(&str, Route)>) -> TestServer {
    p2p_transfer::tls::install_crypto_provider();
    let ca = ClusterCa::generate("download-test-ca").unwrap();
    let cert = issue_node_cert(&ca, "artifact-server", &["127.0.0.1".to_owned()]).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert_der().clone()], cert.key_der())
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes: Arc<HashMap<String, Route>> =
        Arc::new(routes.into_iter().map(|(path, route)| (path.to_owned(), route)).collect());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&requests);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, routes, log) = (acceptor.clone(), Arc::clone(&routes), Arc::clone(&log));
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                log.lock().unwrap().push(path.clone());
                let not_found =
                    Route { status: 404, body: b"not found".to_vec(), content_length: true };
                let route = routes.get(&path).unwrap_or(&not_found);
                let mut response = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", route.status);
                if route.content_length {
                    response.push_str(&format!("Content-Length: {}\r\n", route.body.len()));
                }
                response.push_str("\r\n");
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.write_all(&route.body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    TestServer { addr, ca_pem: ca.cert_pem().as_bytes().to_vec(), requests }
}

fn trusting(server: &TestServer, limits: DownloadLimits) -> Downloader {
    Downloader::new(std::slice::from_ref(&server.ca_pem), limits).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn https_with_extra_ca_downloads_and_extracts() {
    let bytes = build_archive();
    let server = serve(vec![("/builds/web-1.tar.gz", ok(&bytes))]).await;
    let tmp = tempfile::tempdir().unwrap();
    let builds = tmp.path().join("builds");
    let dl = trusting(&server, DownloadLimits::default());

    let tree = ensure_build(
        &dl,
        &builds,
        "web",
        "b1",
        &server.url("/builds/web-1.tar.gz"),
        &expect_hash(&bytes),
        &ExtractLimits::default(),
    )
    .await
    .unwrap();
    assert_eq!(fs::read(tree.join("app/config.txt")).unwrap(), b"port=8080\n");
    assert_eq!(
        server.requests(),
        ["/builds/web-1.tar.gz", "/builds/web-1.tar.gz.sha256", "/builds/web-1.tar.gz.sha1"],
        "the artifact, then its checksum files"
    );
}

#[tokio::test]
async fn https_without_our_ca_fails_verification() {
    let server = serve(vec![("/a.tar.gz", ok(b"data"))]).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("a.tar.gz");
    let other_ca = ClusterCa::generate("some-other-ca").unwrap();
    let other =
        Downloader::new(&[other_ca.cert_pem().as_bytes().to_vec()], DownloadLimits::default())
            .unwrap();
    for dl in [downloader(), other] {
        let err =
            dl.fetch(&server.url("/a.tar.gz"), &dest, &Expected::default()).await.unwrap_err();
        match &err {
            DownloadError::Transport { detail, .. } => {
                assert!(detail.to_lowercase().contains("certificate"), "{detail}")
            }
            other => panic!("expected a TLS failure, got {other}"),
        }
    }
    assert!(server.requests().is_empty(), "no request got through the handshake");
    assert!(names(tmp.path()).is_empty());
}

#[tokio::test]
async fn published_sha256_that_does_not_match_is_refused() {
    let bytes = build_archive();
    let wrong = hex(&sha2::Sha256::digest(b"something else"));
    let server = serve(vec![
        ("/a.tar.gz", ok(&bytes)),
        ("/a.tar.gz.sha256", ok(format!("{wrong}  a.tar.gz\n").as_bytes())),
    ])
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("a.tar.gz");
    let err = trusting(&server, DownloadLimits::default())
        .fetch(&server.url("/a.tar.gz"), &dest, &Expected::default())
        .await
        .unwrap_err();
    match &err {
        DownloadError::ChecksumMismatch { algorithm, expected, actual, .. } => {
            assert_eq!(*algorithm, ChecksumAlgorithm::Sha256);
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &hex(&sha2::Sha256::digest(&bytes)));
        }
        other => panic!("expected ChecksumMismatch, got {other}"),
    }
    assert!(names(tmp.path()).is_empty());
}

#[tokio::test]
async fn published_sha1_that_matches_is_accepted() {
    let bytes = build_archive();
    // Uppercase with a file name after it, as `sha1sum` users sometimes publish it.
    let sha1 = hex(&sha1::Sha1::digest(&bytes)).to_uppercase();
    let server = serve(vec![
        ("/a.tar.gz", ok(&bytes)),
        ("/a.tar.gz.sha1", ok(format!("{sha1} a.tar.gz\n").as_bytes())),
    ])
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("a.tar.gz");
    let fetched = trusting(&server, DownloadLimits::default())
        .fetch(&server.url("/a.tar.gz"), &dest, &expect_hash(&bytes))
        .await
        .unwrap();
    assert_eq!(fetched.bytes, bytes.len() as u64);
    assert_eq!(fetched.blake3, blake3::hash(&bytes));
    assert_eq!(fs::read(&dest).unwrap(), bytes);
    assert_eq!(names(tmp.path()), ["a.tar.gz"]);
}

#[tokio::test]
async fn sha1_mismatch_and_unusable_checksum_files_are_refused() {
    let bytes = build_archive();
    let server = serve(vec![
        ("/a.tar.gz", ok(&bytes)),
        ("/a.tar.gz.sha1", ok(hex(&sha1::Sha1::digest(b"other")).as_bytes())),
        ("/b.tar.gz", ok(&bytes)),
        ("/b.tar.gz.sha256", ok(b"<html>not a checksum</html>")),
        ("/c.tar.gz", ok(&bytes)),
        ("/c.tar.gz.sha256", Route { status: 500, body: vec![], content_length: true }),
    ])
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dl = trusting(&server, DownloadLimits::default());
    let dest = tmp.path().join("x.tar.gz");
    let err = dl.fetch(&server.url("/a.tar.gz"), &dest, &Expected::default()).await.unwrap_err();
    assert!(
        matches!(err, DownloadError::ChecksumMismatch { algorithm: ChecksumAlgorithm::Sha1, .. }),
        "{err}"
    );
    let err = dl.fetch(&server.url("/b.tar.gz"), &dest, &Expected::default()).await.unwrap_err();
    assert!(matches!(err, DownloadError::BadChecksumFile { .. }), "{err}");
    let err = dl.fetch(&server.url("/c.tar.gz"), &dest, &Expected::default()).await.unwrap_err();
    assert!(matches!(err, DownloadError::Http { status: 500, .. }), "{err}");
    assert!(names(tmp.path()).is_empty());
}

#[tokio::test]
async fn missing_artifact_is_an_http_error_with_status() {
    let server = serve(vec![]).await;
    let tmp = tempfile::tempdir().unwrap();
    let err = trusting(&server, DownloadLimits::default())
        .fetch(
            &server.url("/missing.tar.gz?token=secret"),
            &tmp.path().join("m.tar.gz"),
            &Expected::default(),
        )
        .await
        .unwrap_err();
    match &err {
        DownloadError::Http { status, url } => {
            assert_eq!(*status, 404);
            assert!(url.contains("/missing.tar.gz") && !url.contains("secret"), "{url}");
        }
        other => panic!("expected Http, got {other}"),
    }
    assert!(err.to_string().contains("404"));
    assert!(names(tmp.path()).is_empty());
}

#[tokio::test]
async fn oversized_https_download_is_refused() {
    let big = vec![1u8; 200_000];
    let server = serve(vec![
        ("/announced.tar", ok(&big)),
        ("/streamed.tar", Route { status: 200, body: big.clone(), content_length: false }),
    ])
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let limits = DownloadLimits { max_download_bytes: 50_000, ..DownloadLimits::default() };
    let dl = trusting(&server, limits);
    for path in ["/announced.tar", "/streamed.tar"] {
        let err = dl
            .fetch(&server.url(path), &tmp.path().join("x.tar"), &Expected::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, DownloadError::TooLarge { limit_bytes: 50_000, .. }),
            "{path}: {err}"
        );
        assert!(names(tmp.path()).is_empty(), "{path}");
    }
    // Under the limit the same close-delimited body is accepted.
    let dl = trusting(&server, DownloadLimits::default());
    let fetched = dl
        .fetch(&server.url("/streamed.tar"), &tmp.path().join("x.tar"), &Expected::default())
        .await
        .unwrap();
    assert_eq!(fetched.bytes, big.len() as u64);
}

#[test]
fn unusable_extra_ca_is_reported() {
    let err = Downloader::new(&[b"not a pem".to_vec()], DownloadLimits::default()).unwrap_err();
    assert!(matches!(err, DownloadError::CaCertificate { index: 0, .. }), "{err}");
}
