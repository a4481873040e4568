use super::*;
use crate::proxy::tests::Echo;

/// How long a test waits for bytes that should arrive (a hang guard).
const ARRIVES: Duration = Duration::from_secs(5);
/// How long a test waits to be sure bytes do not arrive.
const SILENCE: Duration = Duration::from_millis(300);
/// Pause between looks at what the upstream got.
const POLL: Duration = Duration::from_millis(10);

const UP: Direction = Direction::ToUpstream;
const DOWN: Direction = Direction::ToClient;

fn peer(port: u16, owner: Option<u32>) -> Peer {
    Peer { client_port: port, owner }
}

fn fates(seed: u64, faults: &TcpFaults, n: usize) -> Vec<ChunkFate> {
    let mut s = TcpShaper::new(seed);
    let now = Instant::now();
    (0..n).map(|_| s.decide(faults, UP, peer(1000, None), 100, now)).collect()
}

fn link(link: LinkFaults) -> TcpFaults {
    TcpFaults { link, ..TcpFaults::default() }
}

const AT_ONCE: ChunkFate = ChunkFate::Deliver(ChunkDelivery {
    after: Duration::ZERO,
    corrupt: None,
    retransmitted: false,
});

#[test]
fn a_perfect_link_delivers_every_chunk_at_once() {
    assert!(fates(1, &TcpFaults::default(), 100).iter().all(|f| *f == AT_ONCE));
}

#[test]
fn duplication_and_reordering_do_not_exist_on_a_stream() {
    let faults =
        link(LinkFaults { duplicate_rate: 1.0, reorder_rate: 1.0, ..LinkFaults::default() });
    assert!(fates(1, &faults, 100).iter().all(|f| *f == AT_ONCE));
}

#[test]
fn decisions_are_reproducible_from_the_seed() {
    let faults = link(LinkFaults {
        drop_rate: 0.3,
        corrupt_rate: 0.2,
        delay_ms: 10,
        jitter_ms: 5,
        ..LinkFaults::default()
    });
    assert_eq!(fates(7, &faults, 500), fates(7, &faults, 500));
    assert_ne!(fates(7, &faults, 500), fates(8, &faults, 500));
}

#[test]
fn loss_is_a_retransmission_delay_and_corruption_flips_one_byte() {
    let faults = link(LinkFaults { drop_rate: 1.0, delay_ms: 5, ..LinkFaults::default() });
    for f in fates(3, &faults, 50) {
        let ChunkFate::Deliver(d) = f else { panic!("held: {f:?}") };
        assert!(d.retransmitted);
        assert_eq!(d.after, RETRANSMIT_DELAY + Duration::from_millis(5));
    }
    let faults = link(LinkFaults { drop_rate: 0.5, ..LinkFaults::default() });
    let late = fates(3, &faults, 2000)
        .iter()
        .filter(|f| matches!(f, ChunkFate::Deliver(d) if d.retransmitted))
        .count();
    assert!((800..1200).contains(&late), "{late} of 2000 retransmitted at rate 0.5");
    let faults = link(LinkFaults { corrupt_rate: 1.0, ..LinkFaults::default() });
    for f in fates(3, &faults, 50) {
        let ChunkFate::Deliver(ChunkDelivery { corrupt: Some((i, mask)), .. }) = f else {
            panic!("not corrupted: {f:?}")
        };
        assert!(i < 100 && mask != 0);
    }
    // The connection's end has no byte to flip.
    let mut s = TcpShaper::new(1);
    assert!(matches!(
        s.decide(&faults, UP, peer(1, None), 0, Instant::now()),
        ChunkFate::Deliver(ChunkDelivery { corrupt: None, .. })
    ));
}

#[test]
fn delay_and_jitter_stay_in_their_window() {
    let faults = link(LinkFaults { delay_ms: 50, jitter_ms: 20, ..LinkFaults::default() });
    let mut seen = BTreeSet::new();
    for f in fates(5, &faults, 500) {
        let ChunkFate::Deliver(d) = f else { panic!("held") };
        assert!((30..=70).contains(&d.after.as_millis()), "{:?}", d.after);
        seen.insert(d.after.as_millis());
    }
    assert!(seen.len() > 10, "jitter varies the delay: {seen:?}");
}

#[test]
fn a_lane_never_lets_a_chunk_overtake_the_one_before() {
    let mut lane = Lane::default();
    let t = Instant::now();
    let ms = Duration::from_millis;
    assert_eq!(lane.schedule(t, ms(50)), t + ms(50));
    // Read later with a shorter delay: it waits for the one ahead.
    assert_eq!(lane.schedule(t + ms(10), ms(5)), t + ms(50));
    assert_eq!(lane.schedule(t + ms(60), ms(0)), t + ms(60));
}

#[test]
fn cuts_hold_by_direction_port_and_process() {
    let mut s = TcpShaper::new(1);
    let now = Instant::now();
    let mut decide = |f: &TcpFaults, dir, p| s.decide(f, dir, p, 10, now);
    let anyone = peer(1, Some(10));
    let f = link(LinkFaults { blackhole: true, ..LinkFaults::default() });
    assert_eq!(decide(&f, UP, anyone), ChunkFate::Hold(HoldReason::Blackhole));
    assert_eq!(decide(&f, DOWN, anyone), ChunkFate::Hold(HoldReason::Blackhole));
    let f = link(LinkFaults { drop_to_upstream: true, ..LinkFaults::default() });
    assert_eq!(decide(&f, UP, anyone), ChunkFate::Hold(HoldReason::OneWay));
    assert_eq!(decide(&f, DOWN, anyone), AT_ONCE);
    let f = link(LinkFaults { drop_to_client: true, ..LinkFaults::default() });
    assert_eq!(decide(&f, UP, anyone), AT_ONCE);
    assert_eq!(decide(&f, DOWN, anyone), ChunkFate::Hold(HoldReason::OneWay));
    let f = link(LinkFaults { drop_from_ports: [7].into(), ..LinkFaults::default() });
    assert_eq!(decide(&f, UP, peer(7, None)), ChunkFate::Hold(HoldReason::BlockedPort));
    assert_eq!(decide(&f, DOWN, peer(7, None)), AT_ONCE);
    assert_eq!(decide(&f, UP, peer(8, None)), AT_ONCE);
    let f = TcpFaults { hold_from_pids: [10].into(), ..TcpFaults::default() };
    assert_eq!(decide(&f, UP, anyone), ChunkFate::Hold(HoldReason::Process));
    assert_eq!(decide(&f, DOWN, anyone), AT_ONCE);
    assert_eq!(decide(&f, UP, peer(1, Some(11))), AT_ONCE);
    assert_eq!(decide(&f, UP, peer(1, None)), AT_ONCE, "an unknown owner is nobody cut");
    let f = TcpFaults { hold_to_pids: [10].into(), ..TcpFaults::default() };
    assert_eq!(decide(&f, UP, anyone), AT_ONCE);
    assert_eq!(decide(&f, DOWN, anyone), ChunkFate::Hold(HoldReason::Process));
}

#[test]
fn the_bandwidth_cap_makes_chunks_wait_and_never_drops_them() {
    let mut s = TcpShaper::new(1);
    let now = Instant::now();
    // 10 kB/s: the burst is MIN_BURST_BYTES, then each 1000-byte chunk waits 100 ms more.
    let f = link(LinkFaults { bandwidth_bytes_per_s: Some(10_000), ..LinkFaults::default() });
    let waits: Vec<Duration> = (0..50)
        .map(|_| match s.decide(&f, UP, peer(1, None), 1000, now) {
            ChunkFate::Deliver(d) => d.after,
            held => panic!("{held:?}"),
        })
        .collect();
    assert_eq!(waits[0], Duration::ZERO);
    assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
    assert!(waits[49] > Duration::from_secs(4), "past the datagram proxy's limit: {waits:?}");
    // The other direction has its own bucket.
    assert_eq!(s.decide(&f, DOWN, peer(1, None), 1000, now), AT_ONCE);
}

/// An upstream that echoes every connection's bytes and counts them.
async fn echo() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let r = r.clone();
            conns.spawn(async move {
                let mut buf = vec![0u8; CHUNK_BYTES];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    r.fetch_add(n as u64, Ordering::Relaxed);
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Echo { addr, received, task }
}

/// Waits until the upstream got `n` bytes (`what` if it does not within [`ARRIVES`]).
async fn received(e: &Echo, n: u64, what: &str) {
    let got = tokio::time::timeout(ARRIVES, async {
        while e.received.load(Ordering::Relaxed) < n {
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    assert!(got.is_ok(), "{what}: the upstream got {}", e.received.load(Ordering::Relaxed));
}

/// Reads exactly `n` bytes within `within`, or `None`.
async fn read_n(s: &mut TcpStream, n: usize, within: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; n];
    match tokio::time::timeout(within, s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf),
        _ => None,
    }
}

async fn setup() -> (Echo, TcpProxy, TcpStream) {
    let e = echo().await;
    let p = TcpProxy::start("127.0.0.1:0".parse().unwrap(), e.addr, 42).await.unwrap();
    let c = TcpStream::connect(p.addr()).await.unwrap();
    (e, p, c)
}

/// Sends `bytes` and expects them back within [`ARRIVES`].
async fn round_trip(c: &mut TcpStream, bytes: &[u8]) {
    c.write_all(bytes).await.unwrap();
    assert_eq!(read_n(c, bytes.len(), ARRIVES).await.as_deref(), Some(bytes));
}

#[tokio::test]
async fn forwards_both_ways_and_counts() {
    let (e, p, mut c) = setup().await;
    for i in 0..10u8 {
        round_trip(&mut c, &[i; 100]).await;
    }
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    round_trip(&mut c, &big).await;
    assert_eq!(e.received.load(Ordering::Relaxed), 201_000);
    let st = p.stats();
    assert_eq!((st.connections, st.to_upstream, st.to_client, st.held()), (1, 201_000, 201_000, 0));
}

#[tokio::test]
async fn a_blackhole_holds_bytes_of_open_connections_and_releases_them_on_heal() {
    let (e, p, mut c) = setup().await;
    round_trip(&mut c, b"before").await;
    p.update(|f| f.link.blackhole = true).unwrap();
    c.write_all(b"held").await.unwrap();
    assert_eq!(read_n(&mut c, 4, SILENCE).await, None, "nothing comes back");
    assert_eq!(e.received.load(Ordering::Relaxed), 6, "nothing reached the upstream");
    // A new connection is held too, and not refused.
    let mut c2 = TcpStream::connect(p.addr()).await.unwrap();
    c2.write_all(b"new").await.unwrap();
    assert_eq!(read_n(&mut c2, 3, SILENCE).await, None);

    p.set_faults(TcpFaults::default()).unwrap();
    assert_eq!(read_n(&mut c, 4, ARRIVES).await.as_deref(), Some(&b"held"[..]));
    assert_eq!(read_n(&mut c2, 3, ARRIVES).await.as_deref(), Some(&b"new"[..]));
    let st = p.stats();
    // c2's bytes stayed in the kernel: its connection to the upstream waited for the heal.
    assert_eq!(st.held_blackhole, 4, "{st:?}");
    assert_eq!((st.held_connections, st.refused), (1, 0));
}

#[tokio::test]
async fn a_one_way_cut_holds_one_direction_only() {
    let (e, p, mut c) = setup().await;
    round_trip(&mut c, b"x").await;
    // Answers cut: the upstream hears the client, the client hears nothing.
    p.update(|f| f.link.drop_to_client = true).unwrap();
    c.write_all(b"ask").await.unwrap();
    received(&e, 4, "the request went through").await;
    assert_eq!(read_n(&mut c, 3, SILENCE).await, None, "its answer did not");
    // Requests cut instead: the held answer is let through, new requests are held.
    p.set_faults(link(LinkFaults { drop_to_upstream: true, ..LinkFaults::default() })).unwrap();
    assert_eq!(read_n(&mut c, 3, ARRIVES).await.as_deref(), Some(&b"ask"[..]));
    c.write_all(b"more").await.unwrap();
    assert_eq!(read_n(&mut c, 4, SILENCE).await, None);
    assert_eq!(e.received.load(Ordering::Relaxed), 4);
    let st = p.stats();
    assert_eq!((st.held_one_way, st.held_process), (7, 0), "{st:?}");
}

#[tokio::test]
async fn connections_of_a_cut_process_are_held_by_their_owner() {
    let (e, p, mut early) = setup().await;
    let me = std::process::id();
    round_trip(&mut early, b"a").await;
    // Watched only now: the connection opened before is recognised too.
    p.set_owners([me].into());
    let mut late = TcpStream::connect(p.addr()).await.unwrap();
    round_trip(&mut late, b"b").await;
    // Another process cut: these connections are not its.
    p.update(|f| f.hold_from_pids = [u32::MAX].into()).unwrap();
    round_trip(&mut early, b"c").await;
    // This process cut from sending: both its connections hold, and nothing is closed.
    p.update(|f| f.hold_from_pids = [me].into()).unwrap();
    early.write_all(b"d").await.unwrap();
    late.write_all(b"e").await.unwrap();
    assert_eq!(read_n(&mut early, 1, SILENCE).await, None);
    assert_eq!(read_n(&mut late, 1, SILENCE).await, None);
    assert_eq!(e.received.load(Ordering::Relaxed), 3);
    // Cut from hearing instead: the requests pass, the answers hold.
    p.set_faults(TcpFaults { hold_to_pids: [me].into(), ..TcpFaults::default() }).unwrap();
    received(&e, 5, "the held requests went on").await;
    assert_eq!(read_n(&mut early, 1, SILENCE).await, None);
    p.set_faults(TcpFaults::default()).unwrap();
    assert_eq!(read_n(&mut early, 1, ARRIVES).await.as_deref(), Some(&b"d"[..]));
    assert_eq!(read_n(&mut late, 1, ARRIVES).await.as_deref(), Some(&b"e"[..]));
    let st = p.stats();
    assert_eq!(st.held_process, 4, "two requests, then their two answers: {st:?}");
}

#[tokio::test]
async fn corruption_changes_bytes_and_nothing_else() {
    let (_e, p, mut c) = setup().await;
    p.update(|f| f.link.corrupt_rate = 1.0).unwrap();
    c.write_all(&[0u8; 64]).await.unwrap();
    let got = read_n(&mut c, 64, ARRIVES).await.expect("as many bytes as sent");
    assert_ne!(got, vec![0u8; 64], "flipped bytes arrive");
    assert!(got.iter().filter(|&&b| b != 0).count() <= 2, "one byte a chunk, each way: {got:?}");
    assert!(p.stats().corrupted_chunks >= 1);
}

#[tokio::test]
async fn delay_holds_chunks_back_and_jitter_keeps_their_order() {
    let (_e, p, mut c) = setup().await;
    p.update(|f| f.link.delay_ms = 100).unwrap();
    let start = Instant::now();
    round_trip(&mut c, b"slow").await;
    // Delayed on the way up and on the way back.
    assert!(start.elapsed() >= Duration::from_millis(200), "{:?}", start.elapsed());
    assert!(p.stats().delayed_chunks >= 2);

    p.set_faults(link(LinkFaults { delay_ms: 20, jitter_ms: 20, ..LinkFaults::default() }))
        .unwrap();
    let sent: Vec<u8> = (0..200u8).collect();
    for b in &sent {
        c.write_all(&[*b]).await.unwrap();
    }
    assert_eq!(read_n(&mut c, sent.len(), ARRIVES).await, Some(sent), "in order");
}

#[tokio::test]
async fn a_proxy_bound_before_its_upstream_holds_connections_until_told() {
    let e = echo().await;
    let p = TcpProxy::bind("127.0.0.1:0".parse().unwrap(), 1).await.unwrap();
    let mut c = TcpStream::connect(p.addr()).await.unwrap();
    c.write_all(b"early").await.unwrap();
    assert_eq!(read_n(&mut c, 5, SILENCE).await, None);
    p.set_upstream(e.addr).unwrap();
    assert!(p.set_upstream("127.0.0.1:9".parse().unwrap()).is_err(), "set once");
    assert!(p.set_upstream(e.addr).is_ok(), "the same again is no change");
    assert_eq!(read_n(&mut c, 5, ARRIVES).await.as_deref(), Some(&b"early"[..]));
}

#[tokio::test]
async fn a_dead_upstream_closes_the_connection() {
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let p = TcpProxy::start("127.0.0.1:0".parse().unwrap(), gone, 1).await.unwrap();
    let mut c = TcpStream::connect(p.addr()).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(ARRIVES, c.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(p.stats().refused, 1);
}

#[tokio::test]
async fn invalid_faults_leave_the_link_unchanged() {
    let (_e, p, mut c) = setup().await;
    assert!(p.update(|f| f.link.drop_rate = 2.0).is_err());
    assert_eq!(p.faults(), TcpFaults::default());
    round_trip(&mut c, b"ok").await;
}
