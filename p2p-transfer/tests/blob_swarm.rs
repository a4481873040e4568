//! Real QUIC on loopback: blob nodes with their own stores, swarming one blob.
//!
//! Every test has a generous hang guard ([`HANG_GUARD`]); none asserts on wall-clock speed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use p2p_transfer::blob::{BlobSpec, BlobStore, ReserveError, StoreConfig};
use p2p_transfer::swarm::{
    BlobNode, CONNECT_TIMEOUT, Download, DownloadError, DownloadOptions, MIN_PEER_LINKS,
    NodeConfig, NodeTls, PeerId, PeerInfo, PeerRole, ServeFault, UPLOAD_QUEUE_MAX,
};
use p2p_transfer::tls::{self, ClusterCa};
use p2p_transfer::wire::{self, CLOSE_PROTOCOL_VIOLATION};
use tempfile::TempDir;

const MIB: u64 = 1024 * 1024;
/// A test that has not finished after this long is hung, not slow.
const HANG_GUARD: Duration = Duration::from_secs(60);

fn test_data(len: u64, seed: u8) -> Vec<u8> {
    let mut out = vec![0; len as usize];
    blake3::Hasher::new().update(&[seed]).finalize_xof().fill(&mut out);
    out
}

struct Cluster {
    tls: NodeTls,
}

impl Cluster {
    fn new() -> Cluster {
        tls::install_crypto_provider();
        let ca = ClusterCa::generate("tt blob test CA").unwrap();
        let cert = tls::issue_node_cert(&ca, "blob-node", &["127.0.0.1".to_owned()]).unwrap();
        Cluster { tls: NodeTls::cluster(&cert, ca.cert_der()).unwrap() }
    }

    fn host(&self, configure: impl FnOnce(&mut NodeConfig, &mut StoreConfig)) -> Host {
        let dir = tempfile::tempdir().unwrap();
        self.host_in(dir, configure)
    }

    fn host_in(
        &self,
        dir: TempDir,
        configure: impl FnOnce(&mut NodeConfig, &mut StoreConfig),
    ) -> Host {
        let mut store = StoreConfig {
            dir: dir.path().to_owned(),
            max_bytes: 256 * MIB,
            high_watermark_bytes: 256 * MIB,
            low_watermark_bytes: 128 * MIB,
            min_free_bytes: 0,
            keep_newest: 2,
        };
        let mut node = NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            upload_bytes_per_sec: None,
            download_bytes_per_sec: None,
            leech_only: false,
            max_concurrent_uploads: 16,
            max_queued_uploads: UPLOAD_QUEUE_MAX,
            origin_repeat_window: None,
            cut_through: true,
            fault: None,
        };
        configure(&mut node, &mut store);
        let store = BlobStore::open(store).unwrap();
        let node = BlobNode::start(node, self.tls.clone(), store).unwrap();
        Host { node, dir }
    }
}

struct Host {
    node: BlobNode,
    dir: TempDir,
}

impl Host {
    fn peer(&self, role: PeerRole) -> PeerInfo {
        PeerInfo { peer: self.node.peer_id(), role }
    }

    fn import(&self, data: &[u8]) -> BlobSpec {
        self.node.store().import_bytes(data).unwrap().spec()
    }

    async fn download(&self, spec: BlobSpec, peers: Vec<PeerInfo>) -> Download {
        self.node.download(spec, peers, DownloadOptions::recommended()).await.unwrap()
    }

    fn count_entries(&self, sub: &str) -> usize {
        std::fs::read_dir(self.dir.path().join(sub)).unwrap().count()
    }
}

async fn guarded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, test).await.expect("test hung")
}

async fn wait_for_pieces(download: &Download, n: u64) {
    while download.progress().pieces_done < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_of_thirty_peers_all_end_with_the_exact_blob() {
    guarded(async {
        let cluster = Cluster::new();
        let origin = cluster.host(|node, _| {
            node.max_concurrent_uploads = 4;
            node.origin_repeat_window = Some(Duration::from_millis(500));
        });
        let data = test_data(4 * MIB + 12_345, 1);
        let spec = origin.import(&data);
        let hosts: Vec<Host> = (0..30).map(|_| cluster.host(|_, _| {})).collect();

        // Like the tracker: the origin last, plus a handful of other hosts each (offsets that
        // make one connected swarm).
        let mut downloads = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            let mut peers: Vec<PeerInfo> = [1, 2, 3, 5, 8, 13]
                .iter()
                .map(|k| hosts[(i + k) % hosts.len()].peer(PeerRole::Peer))
                .collect();
            peers.push(origin.peer(PeerRole::Origin));
            downloads.push(host.download(spec, peers).await);
        }
        let mut received = 0;
        for (host, download) in hosts.iter().zip(downloads) {
            let report = download.finish().await.unwrap();
            assert_eq!(report.blob.read_to_vec().unwrap(), data);
            assert!(report.banned_peers.is_empty(), "{:?}", report.banned_peers);
            assert_eq!(host.count_entries("partial"), 0);
            received += report.bytes_received;
        }
        let origin_copies = origin.node.stats().uploaded_bytes as f64 / spec.size as f64;
        let peer_copies = received as f64 / spec.size as f64;
        eprintln!("origin sent {origin_copies:.2} copies; hosts received {peer_copies:.2}");
        // Super-seeding: about one copy, however many hosts.
        assert!(origin_copies < 2.0, "origin sent {origin_copies:.2} copies");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_that_never_meet_each_get_the_blob_from_the_origin() {
    guarded(async {
        let cluster = Cluster::new();
        let origin = cluster.host(|node, _| {
            node.origin_repeat_window = Some(Duration::from_millis(300));
        });
        let data = test_data(2 * MIB, 8);
        let spec = origin.import(&data);
        let groups: Vec<Vec<Host>> =
            (0..2).map(|_| (0..4).map(|_| cluster.host(|_, _| {})).collect()).collect();
        let mut downloads = Vec::new();
        for group in &groups {
            for host in group {
                let mut peers: Vec<PeerInfo> = group
                    .iter()
                    .filter(|other| other.node.peer_id() != host.node.peer_id())
                    .map(|other| other.peer(PeerRole::Peer))
                    .collect();
                peers.push(origin.peer(PeerRole::Origin));
                downloads.push(host.download(spec, peers).await);
            }
        }
        for download in downloads {
            assert_eq!(download.finish().await.unwrap().blob.read_to_vec().unwrap(), data);
        }
        // The origin first declines pieces it sent to the other group ("seeded"), then sends
        // them again once they are still missing: each group needs a copy of its own, and
        // neither waits for a piece that can never reach it.
        let stats = origin.node.stats();
        let copies = stats.uploaded_bytes as f64 / spec.size as f64;
        assert!(stats.repeats_declined > 0, "{stats:?}");
        assert!((2.0..4.0).contains(&copies), "origin sent {copies:.2} copies");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_never_answers_holds_the_peers_back_only_for_the_head_start() {
    guarded(async {
        let cluster = Cluster::new();
        // A bound UDP socket that reads nothing: dialing it lasts the whole CONNECT_TIMEOUT.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let silent_origin =
            PeerInfo { peer: PeerId(silent.local_addr().unwrap()), role: PeerRole::Origin };
        let seeder = cluster.host(|_, _| {});
        let data = test_data(MIB, 12);
        let spec = seeder.import(&data);
        let host = cluster.host(|_, _| {});
        let download = host.download(spec, vec![silent_origin, seeder.peer(PeerRole::Peer)]).await;
        // Peers wait for an origin dial at most ORIGIN_HEAD_START (200 ms), so the blob
        // arrives from the seeder while the origin's first dial is still under way (it ends
        // only after CONNECT_TIMEOUT, 5 s), not after the origin was given up.
        let report = tokio::time::timeout(CONNECT_TIMEOUT, download.finish())
            .await
            .expect("the download waited for the silent origin's dial")
            .unwrap();
        assert_eq!(report.blob.read_to_vec().unwrap(), data);
        assert_eq!(host.node.stats().downloaded_from_origin_bytes, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupting_peers_are_banned_after_one_bad_response_and_no_bad_byte_lands() {
    guarded(async {
        let cluster = Cluster::new();
        let data = test_data(8 * MIB, 2);
        let slow = |node: &mut NodeConfig, _: &mut StoreConfig| {
            node.upload_bytes_per_sec = Some(8 * MIB);
        };
        let origin = cluster.host(slow);
        let spec = origin.import(&data);
        let honest = cluster.host(slow);
        honest.import(&data);
        let corrupt: Vec<Host> =
            [ServeFault::FlipByte, ServeFault::LieAboutPieces, ServeFault::WrongPiece]
                .into_iter()
                .map(|fault| {
                    let host = cluster.host(|node, _| node.fault = Some(fault));
                    if fault != ServeFault::LieAboutPieces {
                        host.import(&data);
                    }
                    host
                })
                .collect();
        let corrupt_ids: Vec<PeerId> = corrupt.iter().map(|h| h.node.peer_id()).collect();

        let downloaders: Vec<Host> = (0..4).map(|_| cluster.host(|_, _| {})).collect();
        let mut downloads = Vec::new();
        for host in &downloaders {
            let mut peers: Vec<PeerInfo> = corrupt.iter().map(|h| h.peer(PeerRole::Peer)).collect();
            peers.push(honest.peer(PeerRole::Peer));
            peers.push(origin.peer(PeerRole::Origin));
            downloads.push(host.download(spec, peers).await);
        }
        for download in downloads {
            let report = download.finish().await.unwrap();
            assert_eq!(report.blob.read_to_vec().unwrap(), data, "a bad byte was staged");
            for (peer, bans) in &report.banned_peers {
                assert!(corrupt_ids.contains(peer), "honest peer {peer} banned");
                assert_eq!(*bans, 1, "{peer} banned more than once");
            }
            // Every corrupt peer was asked (unmeasured peers are tried first) and banned.
            assert_eq!(report.banned_peers.len(), corrupt_ids.len(), "{:?}", report.banned_peers);
            // At most the requests that were already in flight when the first bad one hit.
            assert!(
                report.bad_responses <= 2 * corrupt_ids.len() as u64,
                "{} bad responses",
                report.bad_responses
            );
        }
    })
    .await;
}

/// Whether `host` holds any piece of `spec`.
fn holds_any(host: &Host, spec: BlobSpec) -> bool {
    host.node.store().pieces(&spec.hash, spec.size).is_some_and(|p| p.count() > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_is_relayed_while_it_is_still_arriving() {
    guarded(async {
        let cluster = Cluster::new();
        // 1 s per piece from the origin (two at a time at half its cap each).
        let origin = cluster.host(|node, _| node.upload_bytes_per_sec = Some(MIB / 2));
        let data = test_data(MIB, 11);
        let spec = origin.import(&data);
        let relay = cluster.host(|_, _| {});
        let leaf = cluster.host(|_, _| {});
        let relaying = relay.download(spec, vec![origin.peer(PeerRole::Origin)]).await;
        // The leaf knows only the relay, which holds nothing yet.
        let leafing = leaf.download(spec, vec![relay.peer(PeerRole::Peer)]).await;

        // Pieces only grow: no piece held after the upload count was read means none held
        // when it was read either.
        let mut relayed_before_any_piece = false;
        while !(relaying.progress().pieces_done == 4 && leafing.progress().pieces_done == 4) {
            let uploaded = relay.node.stats().uploaded_bytes;
            relayed_before_any_piece |= uploaded > 0 && !holds_any(&relay, spec);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        relaying.finish().await.unwrap();
        let report = leafing.finish().await.unwrap();
        assert_eq!(report.blob.read_to_vec().unwrap(), data);
        assert!(relayed_before_any_piece, "the relay sent nothing before it held a piece");
        let stats = relay.node.stats();
        assert!(stats.pieces_relayed >= 1, "{stats:?}");
        assert_eq!(origin.node.stats().pieces_served, 4, "the leaf never asked the origin");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_unproven_peer_sends_is_not_relayed_so_a_corrupt_one_costs_the_relay_s_peers_nothing()
 {
    guarded(async {
        let cluster = Cluster::new();
        let data = test_data(MIB, 12);
        // Slow enough that the corrupt peer is linked (after the origin's head start) before
        // the origin could have sent every piece.
        let origin = cluster.host(|node, _| node.upload_bytes_per_sec = Some(MIB / 2));
        let spec = origin.import(&data);
        // Flips a byte in the last chunk group of every piece, slowly: relayed, most of a
        // piece would have been passed on before the flip showed.
        let corrupt = cluster.host(|node, _| {
            node.fault = Some(ServeFault::FlipByte);
            node.upload_bytes_per_sec = Some(MIB / 2);
        });
        corrupt.import(&data);
        let relay = cluster.host(|_, _| {});
        let leaf = cluster.host(|_, _| {});
        let relaying = relay
            .download(spec, vec![corrupt.peer(PeerRole::Peer), origin.peer(PeerRole::Origin)])
            .await;
        let leafing = leaf.download(spec, vec![relay.peer(PeerRole::Peer)]).await;

        let relayed = relaying.finish().await.unwrap();
        assert_eq!(relayed.banned_peers, vec![(corrupt.node.peer_id(), 1)]);
        let report = leafing.finish().await.unwrap();
        assert_eq!(report.blob.read_to_vec().unwrap(), data, "a bad byte was staged");
        assert!(report.banned_peers.is_empty(), "{:?}", report.banned_peers);
        assert_eq!(report.bad_responses, 0);
        let stats = relay.node.stats();
        assert_eq!(stats.relays_reset, 0, "a corrupt peer's response was relayed: {stats:?}");
        assert!(stats.pieces_relayed >= 1, "the origin's pieces are relayed: {stats:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_source_dies_resets_its_streams_and_nobody_blames_it() {
    guarded(async {
        let cluster = Cluster::new();
        let data = test_data(MIB, 13);
        // Two pieces at a time at a quarter MiB/s each: a second per pair of pieces.
        let source = cluster.host(|node, _| node.upload_bytes_per_sec = Some(MIB / 2));
        let spec = source.import(&data);
        let origin = cluster.host(|_, _| {});
        origin.import(&data);
        let relay = cluster.host(|_, _| {});
        let leaf = cluster.host(|_, _| {});
        let relaying = relay.download(spec, vec![source.peer(PeerRole::Peer)]).await;
        let leafing = leaf.download(spec, vec![relay.peer(PeerRole::Peer)]).await;

        // Once the source has delivered pieces (it is proven) and the relay has passed on
        // some of a piece it is still receiving, the source dies.
        let piece_bytes = 256 * 1024 + 4096;
        loop {
            let uploaded = relay.node.stats().uploaded_bytes;
            let held = relay.node.store().pieces(&spec.hash, spec.size).map_or(0, |p| p.count());
            if held == 2 && uploaded > 2 * piece_bytes + 16 * 1024 {
                break;
            }
            assert!(held < 4, "the relay finished before its source could die");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        source.node.close();
        relaying.add_peers(vec![origin.peer(PeerRole::Origin)]);

        relaying.finish().await.unwrap();
        let report = leafing.finish().await.unwrap();
        assert_eq!(report.blob.read_to_vec().unwrap(), data);
        assert!(report.banned_peers.is_empty(), "{:?}", report.banned_peers);
        let stats = relay.node.stats();
        assert!(stats.relays_reset >= 1, "{stats:?}");
        assert!(!leaf.node.connected_peers().is_empty(), "the leaf kept its link to the relay");
    })
    .await;
}

/// Response bytes over elapsed time, as a share of `cap_bytes_per_sec`.
fn share_of_cap(bytes: u64, started: std::time::Instant, cap_bytes_per_sec: u64) -> f64 {
    bytes as f64 / started.elapsed().as_secs_f64() / cap_bytes_per_sec as f64
}

/// The caps are host-wide and hold over real connections: never more than 10% above the
/// setting, however many peers share them. (A loaded machine can only make a transfer
/// slower; that it gets the cap's rate is what `tt bench swarm`'s throttled runs measure.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_download_caps_hold_across_peers() {
    guarded(async {
        let cluster = Cluster::new();
        let cap = 2 * MIB;
        let data = test_data(2 * MIB, 14);
        let seeder = cluster.host(|node, _| node.upload_bytes_per_sec = Some(cap));
        let spec = seeder.import(&data);
        let downloaders: Vec<Host> = (0..3).map(|_| cluster.host(|_, _| {})).collect();
        let started = std::time::Instant::now();
        let mut downloads = Vec::new();
        for host in &downloaders {
            downloads.push(host.download(spec, vec![seeder.peer(PeerRole::Peer)]).await);
        }
        for download in downloads {
            assert_eq!(download.finish().await.unwrap().blob.read_to_vec().unwrap(), data);
        }
        let uploaded = seeder.node.stats().uploaded_bytes;
        assert!(uploaded >= 3 * spec.size, "{uploaded}");
        let share = share_of_cap(uploaded, started, cap);
        assert!(share <= 1.10, "three peers drew {share:.2}× the seeder's upload cap");

        // Two unthrottled seeders, one capped downloader.
        let data = test_data(4 * MIB, 15);
        let seeders = [cluster.host(|_, _| {}), cluster.host(|_, _| {})];
        let spec = seeders[0].import(&data);
        seeders[1].import(&data);
        let leech = cluster.host(|node, _| node.download_bytes_per_sec = Some(cap));
        let started = std::time::Instant::now();
        let peers = seeders.iter().map(|h| h.peer(PeerRole::Peer)).collect();
        let report = leech.download(spec, peers).await.finish().await.unwrap();
        assert_eq!(report.blob.read_to_vec().unwrap(), data);
        let share = share_of_cap(report.bytes_received, started, cap);
        assert!(share <= 1.10, "two seeders delivered {share:.2}× the download cap");
        assert!(leech.node.stats().download_throttle.waits > 0, "the cap never held back");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_killed_mid_transfer_is_replaced_by_one_that_joins_later() {
    guarded(async {
        let cluster = Cluster::new();
        let data = test_data(4 * MIB, 3);
        let seeder = cluster.host(|node, _| node.upload_bytes_per_sec = Some(2 * MIB));
        let spec = seeder.import(&data);
        let origin = cluster.host(|_, _| {});
        origin.import(&data);
        let host = cluster.host(|_, _| {});
        let download = host.download(spec, vec![seeder.peer(PeerRole::Peer)]).await;
        wait_for_pieces(&download, 2).await;
        seeder.node.close();
        download.add_peers(vec![origin.peer(PeerRole::Origin)]);
        let report = download.finish().await.unwrap();
        assert_eq!(report.blob.read_to_vec().unwrap(), data);
        assert!(origin.node.stats().pieces_served > 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downloader_killed_and_restarted_resumes_and_refetches_only_what_was_in_flight() {
    guarded(async {
        let cluster = Cluster::new();
        let data = test_data(4 * MIB, 4);
        let origin = cluster.host(|node, _| node.upload_bytes_per_sec = Some(4 * MIB));
        let spec = origin.import(&data);
        let piece_bytes = p2p_transfer::blob::Geometry::new(spec.size).unwrap().piece_bytes();

        let first = cluster.host(|_, _| {});
        let download = first.download(spec, vec![origin.peer(PeerRole::Origin)]).await;
        wait_for_pieces(&download, 4).await;
        let held_at_kill = download.progress().pieces_done;
        download.abort();
        first.node.close();
        let Host { node, dir } = first;
        drop(node);

        let second = cluster.host_in(dir, |_, _| {});
        let report = second
            .download(spec, vec![origin.peer(PeerRole::Origin)])
            .await
            .finish()
            .await
            .unwrap();
        assert_eq!(report.blob.read_to_vec().unwrap(), data);
        let resumed_bytes = report.resumed_groups * 16 * 1024;
        assert!(resumed_bytes >= held_at_kill * piece_bytes, "lost verified pieces");
        // Requests are for whole pieces, so a piece that was in flight at the kill is fetched
        // whole again; pieces that were complete are not. Proofs add about 0.4%.
        let missing = spec.size - held_at_kill * piece_bytes;
        assert!(
            report.bytes_received <= missing + missing / 50 + 1024,
            "received {} bytes for {missing} missing",
            report.bytes_received
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_error_and_nothing_is_half_staged() {
    guarded(async {
        let cluster = Cluster::new();
        let data = test_data(4 * MIB, 5);
        let origin = cluster.host(|_, _| {});
        let spec = origin.import(&data);

        // Over quota: refused before anything is written.
        let small = cluster.host(|_, store| {
            store.max_bytes = MIB;
            store.high_watermark_bytes = MIB;
            store.low_watermark_bytes = MIB / 2;
        });
        let error = small
            .node
            .download(spec, vec![origin.peer(PeerRole::Origin)], DownloadOptions::recommended())
            .await
            .unwrap_err();
        assert!(
            matches!(error, DownloadError::Reserve(ReserveError::QuotaExceeded { .. })),
            "{error}"
        );
        assert_eq!(small.count_entries("partial"), 0);

        // The disk fills up mid-download: the download fails and its files are removed.
        let host = cluster.host(|_, _| {});
        host.node.store().set_write_fault(Some(MIB));
        let error = host
            .download(spec, vec![origin.peer(PeerRole::Origin)])
            .await
            .finish()
            .await
            .unwrap_err();
        assert!(matches!(error, DownloadError::Write(_)), "{error}");
        assert!(error.to_string().contains("No space left"), "{error}");
        assert_eq!(host.count_entries("partial"), 0);
        assert_eq!(host.count_entries("complete"), 0);
        assert!(host.node.store().get(&spec.hash).is_none());
        assert_eq!(host.node.store().usage().used_bytes, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_close_that_connection_only() {
    guarded(async {
        let cluster = Cluster::new();
        let data = test_data(MIB, 6);
        let server = cluster.host(|_, _| {});
        let spec = server.import(&data);
        let addr = server.node.peer_id().0;

        let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        endpoint.set_default_client_config(cluster.tls.client.clone());
        let connect =
            || async { endpoint.connect(addr, tls::CLUSTER_SERVER_NAME).unwrap().await.unwrap() };
        let expect_violation = |connection: quinn::Connection| async move {
            match connection.closed().await {
                quinn::ConnectionError::ApplicationClosed(close) => {
                    assert_eq!(close.error_code, CLOSE_PROTOCOL_VIOLATION, "{close:?}")
                }
                other => panic!("expected a protocol-violation close, got {other}"),
            }
        };

        // An oversized control frame.
        let connection = connect().await;
        let mut control = connection.open_uni().await.unwrap();
        control.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        expect_violation(connection).await;

        // A control frame of an unknown kind.
        let connection = connect().await;
        let mut control = connection.open_uni().await.unwrap();
        control.write_all(&[0, 0, 0, 2, 0x7f, 0]).await.unwrap();
        expect_violation(connection).await;

        // An oversized piece request.
        let connection = connect().await;
        let (mut send, _recv) = connection.open_bi().await.unwrap();
        send.write_all(&[0, 0, 4, 0]).await.unwrap();
        // The server refuses the frame from its length alone and may close the connection
        // before the body is written.
        let _ = send.write_all(&[0; 1024]).await;
        expect_violation(connection).await;

        // A request for a piece outside the blob.
        let connection = connect().await;
        let (mut send, _recv) = connection.open_bi().await.unwrap();
        let request = wire::PieceRequest { spec, piece: 0 }.encode();
        let mut frame = request.to_vec();
        let last = frame.len() - 1;
        frame[last] = 200;
        send.write_all(&frame).await.unwrap();
        send.finish().unwrap();
        expect_violation(connection).await;
        assert_eq!(server.node.stats().protocol_violations, 4);

        // The server still serves everyone else.
        let host = cluster.host(|_, _| {});
        let report =
            host.download(spec, vec![server.peer(PeerRole::Peer)]).await.finish().await.unwrap();
        assert_eq!(report.blob.read_to_vec().unwrap(), data);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leech_only_host_downloads_but_never_uploads() {
    guarded(async {
        let cluster = Cluster::new();
        let data = test_data(MIB, 7);
        let origin = cluster.host(|_, _| {});
        let spec = origin.import(&data);
        let leech = cluster.host(|node, _| node.leech_only = true);
        let report =
            leech.download(spec, vec![origin.peer(PeerRole::Origin)]).await.finish().await.unwrap();
        assert_eq!(report.blob.read_to_vec().unwrap(), data);

        let other = cluster.host(|_, _| {});
        let options = DownloadOptions {
            stall_timeout: Duration::from_millis(500),
            ..DownloadOptions::recommended()
        };
        let error = other
            .node
            .download(spec, vec![leech.peer(PeerRole::Peer)], options)
            .await
            .unwrap()
            .finish()
            .await
            .unwrap_err();
        assert!(matches!(error, DownloadError::Stalled { .. }), "{error}");
        assert_eq!(leech.node.stats().uploaded_bytes, 0);
        // The stalled download's partial blob is kept for a resume with better peers.
        assert_eq!(other.count_entries("partial"), 1);
        let _ = Arc::clone(other.node.store());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_blob_links_only_its_peer_budget_and_dials_the_reserve_when_stuck() {
    guarded(async {
        let cluster = Cluster::new();
        // 4 pieces: the budget is MIN_PEER_LINKS.
        let data = test_data(MIB, 7);
        let seeders: Vec<Host> = (0..6).map(|_| cluster.host(|_, _| {})).collect();
        let spec = seeders[0].import(&data);
        for s in &seeders[1..] {
            s.import(&data);
        }
        let host = cluster.host(|_, _| {});
        let peers = seeders.iter().map(|s| s.peer(PeerRole::Peer)).collect();
        let report = host.download(spec, peers).await.finish().await.unwrap();
        assert_eq!(report.blob.spec(), spec);
        let linked = host.node.connected_peers().len();
        assert_eq!(linked, MIN_PEER_LINKS, "six seeders named, {linked} linked");

        // The first peers named hold nothing: the download cannot progress with them, so it
        // dials the reserve, one peer at a time, until it reaches the seeder.
        let empty: Vec<Host> = (0..MIN_PEER_LINKS).map(|_| cluster.host(|_, _| {})).collect();
        let other = cluster.host(|_, _| {});
        let mut peers: Vec<PeerInfo> = empty.iter().map(|e| e.peer(PeerRole::Peer)).collect();
        peers.push(seeders[5].peer(PeerRole::Peer));
        let report = other.download(spec, peers).await.finish().await.unwrap();
        assert_eq!(report.blob.spec(), spec);
        assert!(other.node.connected_peers().contains(&seeders[5].node.peer_id()));
    })
    .await;
}
