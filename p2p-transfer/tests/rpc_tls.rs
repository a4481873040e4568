//! Real QUIC on loopback: mutual TLS with the cluster CA, and the RPC framing.

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2p_transfer::rpc::{
    self, MAX_RPC_FRAME_BYTES, RpcClient, RpcError, RpcHandler, RpcServer,
    STREAM_CODE_FRAME_TOO_LARGE,
};
use p2p_transfer::tls::{self, ClientAuth, ClusterCa, NodeCert, TlsError};

/// ALPN of the test protocol.
const TEST_ALPN: &[u8] = b"tt-test/1";

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

fn localhost_sans() -> Vec<String> {
    vec!["127.0.0.1".to_owned(), "localhost".to_owned()]
}

/// A cluster CA plus one server node certificate.
struct Pki {
    ca: ClusterCa,
    server: NodeCert,
}

fn pki() -> Pki {
    tls::install_crypto_provider();
    let ca = ClusterCa::generate("tt test cluster CA").unwrap();
    let server = tls::issue_node_cert(&ca, "node-1", &localhost_sans()).unwrap();
    Pki { ca, server }
}

/// Echoes requests back and counts how often it ran.
fn echo_handler(calls: Arc<AtomicUsize>) -> Arc<dyn RpcHandler> {
    rpc::handler_fn(move |_peer, req: Bytes| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if req.as_ref() == b"fail" { Err("handler refused: fail".to_owned()) } else { Ok(req) }
        }
    })
}

fn start_server(
    pki: &Pki,
    client_auth: ClientAuth,
    addr: SocketAddr,
) -> (RpcServer, Arc<AtomicUsize>) {
    let config =
        tls::server_config(&pki.server, pki.ca.cert_der(), &[TEST_ALPN], client_auth).unwrap();
    let server = RpcServer::bind(addr, config).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let serving = server.clone();
    let handler = echo_handler(calls.clone());
    tokio::spawn(async move { serving.serve(handler).await });
    (server, calls)
}

fn loopback_any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn client_for(
    node: Option<&NodeCert>,
    ca_cert: &rustls_pki_types::CertificateDer<'static>,
    server: SocketAddr,
) -> RpcClient {
    let config = tls::client_config(node, ca_cert, &[TEST_ALPN]).unwrap();
    RpcClient::new(rpc::make_client_endpoint(config).unwrap(), server)
}

#[tokio::test]
async fn echo_round_trip_with_mutual_tls() {
    let pki = pki();
    let (server, calls) = start_server(&pki, ClientAuth::Required, loopback_any_port());
    let client_cert = tls::issue_node_cert(&pki.ca, "node-2", &localhost_sans()).unwrap();
    let client = client_for(Some(&client_cert), pki.ca.cert_der(), server.local_addr().unwrap());

    let response = client.call(Bytes::from_static(b"hello"), CALL_TIMEOUT).await.unwrap();
    assert_eq!(response.as_ref(), b"hello");

    let empty = client.call(Bytes::new(), CALL_TIMEOUT).await.unwrap();
    assert!(empty.is_empty());

    // Many concurrent calls share the one cached connection.
    let client = Arc::new(client);
    let tasks: Vec<_> = (0..32u32)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let req = Bytes::from(i.to_be_bytes().repeat(1000));
                let resp = client.call(req.clone(), CALL_TIMEOUT).await.unwrap();
                assert_eq!(resp, req);
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 34);
    assert_eq!(server.endpoint().open_connections(), 1);
}

#[tokio::test]
async fn large_frame_round_trip() {
    let pki = pki();
    let (server, _calls) = start_server(&pki, ClientAuth::Required, loopback_any_port());
    let client_cert = tls::issue_node_cert(&pki.ca, "node-2", &[]).unwrap();
    let client = client_for(Some(&client_cert), pki.ca.cert_der(), server.local_addr().unwrap());

    let req = Bytes::from(vec![7u8; 4 * 1024 * 1024]);
    let resp = client.call(req.clone(), Duration::from_secs(30)).await.unwrap();
    assert_eq!(resp, req);

    let too_large = Bytes::from(vec![0u8; MAX_RPC_FRAME_BYTES + 1]);
    let err = client.call(too_large, CALL_TIMEOUT).await.unwrap_err();
    assert!(matches!(err, RpcError::RequestTooLarge { .. }), "{err:?}");
}

#[tokio::test]
async fn client_signed_by_another_ca_is_refused() {
    let pki = pki();
    let (server, calls) = start_server(&pki, ClientAuth::Required, loopback_any_port());

    let rogue_ca = ClusterCa::generate("tt test cluster CA").unwrap();
    let rogue_cert = tls::issue_node_cert(&rogue_ca, "node-2", &localhost_sans()).unwrap();
    // The rogue client trusts the real CA, so only the server's check can stop it.
    let client = client_for(Some(&rogue_cert), pki.ca.cert_der(), server.local_addr().unwrap());

    let err = client.call(Bytes::from_static(b"hello"), CALL_TIMEOUT).await.unwrap_err();
    assert!(err.is_unreachable(), "{err:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "handler must never run");
}

#[tokio::test]
async fn client_without_cert_is_refused_when_required() {
    let pki = pki();
    let (server, calls) = start_server(&pki, ClientAuth::Required, loopback_any_port());
    let client = client_for(None, pki.ca.cert_der(), server.local_addr().unwrap());

    let err = client.call(Bytes::from_static(b"hello"), CALL_TIMEOUT).await.unwrap_err();
    assert!(err.is_unreachable(), "{err:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "handler must never run");
}

#[tokio::test]
async fn client_without_cert_is_served_when_not_required() {
    let pki = pki();
    let (server, calls) = start_server(&pki, ClientAuth::None, loopback_any_port());
    let client = client_for(None, pki.ca.cert_der(), server.local_addr().unwrap());

    let resp = client.call(Bytes::from_static(b"hello"), CALL_TIMEOUT).await.unwrap();
    assert_eq!(resp.as_ref(), b"hello");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn client_refuses_server_signed_by_another_ca() {
    let pki = pki();
    let (server, calls) = start_server(&pki, ClientAuth::None, loopback_any_port());
    let other_ca = ClusterCa::generate("other").unwrap();
    let client = client_for(None, other_ca.cert_der(), server.local_addr().unwrap());

    let err = client.call(Bytes::from_static(b"hello"), CALL_TIMEOUT).await.unwrap_err();
    assert!(err.is_unreachable(), "{err:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn oversized_frame_refuses_the_stream_and_server_keeps_serving() {
    let pki = pki();
    let (server, calls) = start_server(&pki, ClientAuth::Required, loopback_any_port());
    let server_addr = server.local_addr().unwrap();
    let client_cert = tls::issue_node_cert(&pki.ca, "node-2", &[]).unwrap();

    // A raw client declares a frame one byte over the limit and sends nothing else.
    let config = tls::client_config(Some(&client_cert), pki.ca.cert_der(), &[TEST_ALPN]).unwrap();
    let endpoint = rpc::make_client_endpoint(config).unwrap();
    let connection =
        endpoint.connect(server_addr, tls::CLUSTER_SERVER_NAME).unwrap().await.unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let declared = u32::try_from(MAX_RPC_FRAME_BYTES + 1).unwrap();
    send.write_all(&declared.to_be_bytes()).await.unwrap();
    let read = tokio::time::timeout(CALL_TIMEOUT, recv.read_to_end(1024)).await.unwrap();
    match read {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(code, STREAM_CODE_FRAME_TOO_LARGE)
        }
        other => panic!("expected the stream to be reset, got {other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // The same connection still carries a well-formed call.
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(&3u32.to_be_bytes()).await.unwrap();
    send.write_all(b"abc").await.unwrap();
    send.finish().unwrap();
    let response = recv.read_to_end(1024).await.unwrap();
    assert_eq!(response, [&4u32.to_be_bytes()[..], &[0], b"abc"].concat());

    // And so does a fresh client.
    let client = client_for(Some(&client_cert), pki.ca.cert_der(), server_addr);
    let resp = client.call(Bytes::from_static(b"after"), CALL_TIMEOUT).await.unwrap();
    assert_eq!(resp.as_ref(), b"after");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn handler_error_reaches_the_caller_as_remote() {
    let pki = pki();
    let (server, _calls) = start_server(&pki, ClientAuth::Required, loopback_any_port());
    let client_cert = tls::issue_node_cert(&pki.ca, "node-2", &[]).unwrap();
    let client = client_for(Some(&client_cert), pki.ca.cert_der(), server.local_addr().unwrap());

    let err = client.call(Bytes::from_static(b"fail"), CALL_TIMEOUT).await.unwrap_err();
    match err {
        RpcError::Remote(message) => assert_eq!(message, "handler refused: fail"),
        other => panic!("expected Remote, got {other:?}"),
    }
    // The connection survives a handler error.
    let resp = client.call(Bytes::from_static(b"ok"), CALL_TIMEOUT).await.unwrap();
    assert_eq!(resp.as_ref(), b"ok");
}

#[tokio::test]
async fn dead_address_is_unreachable_within_the_timeout() {
    let pki = pki();
    let client_cert = tls::issue_node_cert(&pki.ca, "node-2", &[]).unwrap();
    // Reserve a free UDP port, then release it so nothing listens there.
    let dead = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let client = client_for(Some(&client_cert), pki.ca.cert_der(), dead);

    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = client.call(Bytes::from_static(b"hello"), timeout).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, RpcError::Unreachable(_)), "{err:?}");
    assert!(elapsed < timeout + Duration::from_millis(500), "took {elapsed:?}");
}

#[tokio::test]
async fn client_reconnects_after_the_server_restarts() {
    let pki = pki();
    let (server, _calls) = start_server(&pki, ClientAuth::Required, loopback_any_port());
    let addr = server.local_addr().unwrap();
    let client_cert = tls::issue_node_cert(&pki.ca, "node-2", &[]).unwrap();
    let client = client_for(Some(&client_cert), pki.ca.cert_der(), addr);
    client.call(Bytes::from_static(b"one"), CALL_TIMEOUT).await.unwrap();

    server.close();
    server.endpoint().wait_idle().await;
    drop(server);
    // The UDP socket is released once the serve task has dropped its endpoint handle.
    let config =
        tls::server_config(&pki.server, pki.ca.cert_der(), &[TEST_ALPN], ClientAuth::Required)
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let restarted = loop {
        match RpcServer::bind(addr, config.clone()) {
            Ok(server) => break server,
            Err(err) if Instant::now() < deadline => {
                assert_eq!(err.source.kind(), std::io::ErrorKind::AddrInUse, "{err}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => panic!("{err}"),
        }
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let serving = restarted.clone();
    let handler = echo_handler(calls.clone());
    tokio::spawn(async move { serving.serve(handler).await });

    // The first call after the restart may still see the old connection die; a later one
    // must succeed on a new connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.call(Bytes::from_static(b"two"), Duration::from_secs(1)).await {
            Ok(resp) => {
                assert_eq!(resp.as_ref(), b"two");
                break;
            }
            Err(err) if err.is_unreachable() && Instant::now() < deadline => continue,
            Err(err) => panic!("no reconnect: {err:?}"),
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn key_files_are_private_and_open_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let ca_dir = dir.path().join("ca");
    let node_dir = dir.path().join("node-1");
    pki.ca.write(&ca_dir).unwrap();
    pki.server.write(&node_dir).unwrap();
    assert_eq!(mode_of(&ca_dir.join(tls::CA_KEY_FILE)), 0o600);
    assert_eq!(mode_of(&node_dir.join(tls::NODE_KEY_FILE)), 0o600);

    // Round trip: loaded material is the material written.
    let ca = ClusterCa::load(&ca_dir).unwrap();
    assert_eq!(ca.cert_der(), pki.ca.cert_der());
    assert_eq!(&ClusterCa::load_cert(&ca_dir).unwrap(), pki.ca.cert_der());
    let node = NodeCert::load(&node_dir).unwrap();
    assert_eq!(node.cert_der(), pki.server.cert_der());

    // A key readable by group and others is refused, naming the file and the fix.
    let key_path = node_dir.join(tls::NODE_KEY_FILE);
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = NodeCert::load(&node_dir).unwrap_err();
    assert!(matches!(err, TlsError::KeyFileTooOpen { mode: 0o644, .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&key_path.display().to_string()), "{message}");
    assert!(message.contains("chmod 600"), "{message}");

    let ca_key_path = ca_dir.join(tls::CA_KEY_FILE);
    std::fs::set_permissions(&ca_key_path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = ClusterCa::load(&ca_dir).unwrap_err();
    assert!(matches!(err, TlsError::KeyFileTooOpen { .. }), "{err:?}");

    // Rewriting fixes the mode of an existing key file.
    pki.server.write(&node_dir).unwrap();
    assert_eq!(mode_of(&key_path), 0o600);
    NodeCert::load(&node_dir).unwrap();

    // A key that does not belong to the certificate is refused.
    let other = tls::issue_node_cert(&pki.ca, "node-2", &[]).unwrap();
    let other_dir = dir.path().join("node-2");
    other.write(&other_dir).unwrap();
    std::fs::copy(other_dir.join(tls::NODE_KEY_FILE), &key_path).unwrap();
    let err = NodeCert::load(&node_dir).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
}

#[tokio::test]
async fn certificates_issued_by_a_loaded_ca_chain_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    pki.ca.write(dir.path()).unwrap();
    let loaded = ClusterCa::load(dir.path()).unwrap();

    // The server's cert comes from the original CA, the client's from the reloaded one.
    let (server, calls) = start_server(&pki, ClientAuth::Required, loopback_any_port());
    let client_cert = tls::issue_node_cert(&loaded, "node-3", &localhost_sans()).unwrap();
    let ca_cert = ClusterCa::load_cert(dir.path()).unwrap();
    let client = client_for(Some(&client_cert), &ca_cert, server.local_addr().unwrap());

    let resp = client.call(Bytes::from_static(b"chained"), CALL_TIMEOUT).await.unwrap();
    assert_eq!(resp.as_ref(), b"chained");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A server "crashes" (its runtime is dropped: no CONNECTION_CLOSE is sent) and a new
/// incarnation binds the same address. The client still holds a connection to the old one.
/// Returns the outcome of the client's first call to the new incarnation; with a stable key,
/// also checks that the call after it gets through.
fn first_call_after_a_crash(stable: bool) -> Result<Bytes, RpcError> {
    let pki = pki();
    let key = || stable.then(|| pki.server.reset_key());
    let config = || {
        tls::server_config(&pki.server, pki.ca.cert_der(), &[TEST_ALPN], ClientAuth::None).unwrap()
    };
    let old = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build();
    let old = old.unwrap();
    let addr = old.block_on(async {
        let server = RpcServer::bind_with_reset_key(loopback_any_port(), config(), key()).unwrap();
        let serving = server.clone();
        tokio::spawn(async move { serving.serve(echo_handler(Arc::default())).await });
        server.local_addr().unwrap()
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build();
    let rt = rt.unwrap();
    rt.block_on(async {
        let client = client_for(None, pki.ca.cert_der(), addr);
        let ok = client.call(Bytes::from_static(b"before"), CALL_TIMEOUT).await.unwrap();
        assert_eq!(ok.as_ref(), b"before");
        old.shutdown_background(); // the crash: the old endpoint vanishes without a word
        // Its socket closes once its worker thread has stopped.
        let mut attempts = 0;
        let server = loop {
            match RpcServer::bind_with_reset_key(addr, config(), key()) {
                Ok(server) => break server,
                Err(e) if attempts < 200 => {
                    attempts += 1;
                    assert_eq!(e.source.kind(), std::io::ErrorKind::AddrInUse, "{e:?}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("the old socket never closed: {e:?}"),
            }
        };
        let serving = server.clone();
        tokio::spawn(async move { serving.serve(echo_handler(Arc::default())).await });
        // Shorter than the idle timeout: only a stateless reset ends the old connection in time.
        let first = client.call(Bytes::from_static(b"after"), tls::IDLE_TIMEOUT / 2).await;
        if stable {
            // Reset, so the next call connects to the new incarnation.
            let second = client.call(Bytes::from_static(b"again"), CALL_TIMEOUT).await.unwrap();
            assert_eq!(second.as_ref(), b"again");
        }
        first
    })
}

#[test]
fn a_restarted_server_with_a_stable_reset_key_ends_old_connections_at_once() {
    match first_call_after_a_crash(true) {
        // The reset came back: the call fails as unreachable (or reconnected already).
        Ok(_) | Err(RpcError::Unreachable(_)) => {}
        Err(e) => panic!("expected the old connection to be reset, got {e}"),
    }
    // Control: with a random key nothing tells the client; its call times out.
    match first_call_after_a_crash(false) {
        Err(RpcError::Timeout(_)) => {}
        other => panic!("expected a timeout without a stable reset key, got {other:?}"),
    }
}

/// One-way delay of [`slow_link`]: a handshake (at least one round trip) takes twice this.
const SLOW_LINK_DELAY: Duration = Duration::from_millis(100);

/// A UDP forwarder to `server` that delays every datagram by [`SLOW_LINK_DELAY`] both ways
/// (one client). Returns its address and the source connection IDs of the client's Initial
/// packets it forwarded: one per connection attempt (the destination ID changes once the
/// server answers).
async fn slow_link(server: SocketAddr) -> (SocketAddr, Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    use tokio::net::UdpSocket;
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(server).await.unwrap();
    let addr = front.local_addr().unwrap();
    let client = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let attempts = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let (f, b, c, a) = (front.clone(), back.clone(), client.clone(), attempts.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *c.lock().unwrap() = Some(from);
            let datagram = buf[..n].to_vec();
            // A long-header Initial packet: form and fixed bits set, type 0; then the
            // version (4 bytes) and the destination and source connection IDs, each
            // length-prefixed.
            if n > 6 && datagram[0] & 0xf0 == 0xc0 {
                let scid_at = 6 + usize::from(datagram[5]);
                if let Some(&len) = datagram.get(scid_at) {
                    let scid =
                        datagram[scid_at + 1..(scid_at + 1 + usize::from(len)).min(n)].to_vec();
                    let mut seen = a.lock().unwrap();
                    if !seen.contains(&scid) {
                        seen.push(scid);
                    }
                }
            }
            let b = b.clone();
            tokio::spawn(async move {
                tokio::time::sleep(SLOW_LINK_DELAY).await;
                let _ = b.send(&datagram).await;
            });
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = back.recv(&mut buf).await {
            let Some(to) = *client.lock().unwrap() else { continue };
            let datagram = buf[..n].to_vec();
            let front = front.clone();
            tokio::spawn(async move {
                tokio::time::sleep(SLOW_LINK_DELAY).await;
                let _ = front.send_to(&datagram, to).await;
            });
        }
    });
    (addr, attempts)
}

#[tokio::test]
async fn a_call_that_gives_up_on_the_handshake_leaves_it_to_the_next_call() {
    let pki = pki();
    let (server, calls) = start_server(&pki, ClientAuth::Required, loopback_any_port());
    let (link, attempts) = slow_link(server.local_addr().unwrap()).await;
    let client_cert = tls::issue_node_cert(&pki.ca, "node-2", &[]).unwrap();
    let client = client_for(Some(&client_cert), pki.ca.cert_der(), link);

    // Shorter than the handshake's round trip over the slow link (a Raft heartbeat's timeout
    // against a distant peer): this call cannot connect in time.
    let short = SLOW_LINK_DELAY;
    let err = client.call(Bytes::from_static(b"early"), short).await.unwrap_err();
    assert!(matches!(err, RpcError::Unreachable(_)), "{err:?}");
    // The next call waits for the same handshake instead of starting over.
    let resp = client.call(Bytes::from_static(b"later"), CALL_TIMEOUT).await.unwrap();
    assert_eq!(resp.as_ref(), b"later");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the first call never reached the server");
    let attempts = attempts.lock().unwrap().len();
    assert_eq!(attempts, 1, "one connection attempt, not one per call ({attempts})");
}
