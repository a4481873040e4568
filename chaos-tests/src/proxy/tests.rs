use super::*;

/// How long a test waits for a datagram that should arrive (a hang guard).
const ARRIVES: Duration = Duration::from_secs(5);
/// How long a test waits to be sure a datagram does not arrive.
const SILENCE: Duration = Duration::from_millis(300);

fn t0() -> Instant {
    Instant::now()
}

fn fates(seed: u64, faults: &LinkFaults, n: usize) -> Vec<Fate> {
    let mut s = Shaper::new(seed);
    let now = t0();
    (0..n).map(|_| s.decide(faults, Direction::ToUpstream, 1000, 100, now)).collect()
}

#[test]
fn a_perfect_link_delivers_everything_at_once() {
    for f in fates(1, &LinkFaults::default(), 100) {
        assert_eq!(
            f,
            Fate::Deliver {
                first: Delivery { after: Duration::ZERO, corrupt: None },
                duplicate: None,
                reordered: false
            }
        );
    }
}

#[test]
fn decisions_are_reproducible_from_the_seed() {
    let faults = LinkFaults {
        drop_rate: 0.3,
        duplicate_rate: 0.2,
        reorder_rate: 0.2,
        corrupt_rate: 0.2,
        delay_ms: 10,
        jitter_ms: 5,
        ..LinkFaults::default()
    };
    assert_eq!(fates(7, &faults, 500), fates(7, &faults, 500));
    assert_ne!(fates(7, &faults, 500), fates(8, &faults, 500));
}

#[test]
fn rates_are_roughly_honoured() {
    let faults = LinkFaults { drop_rate: 0.5, ..LinkFaults::default() };
    let dropped = fates(3, &faults, 2000).iter().filter(|f| matches!(f, Fate::Dropped(_))).count();
    assert!((800..1200).contains(&dropped), "{dropped} of 2000 dropped at rate 0.5");
    let faults = LinkFaults { duplicate_rate: 1.0, corrupt_rate: 1.0, ..LinkFaults::default() };
    for f in fates(3, &faults, 100) {
        let Fate::Deliver { first, duplicate, .. } = f else { panic!("dropped: {f:?}") };
        let (i, mask) = first.corrupt.expect("corrupted");
        assert!(i < 100 && mask != 0);
        assert!(duplicate.is_some_and(|d| d.after > first.after && d.corrupt.is_none()));
    }
}

#[test]
fn delay_and_jitter_stay_in_their_window() {
    let faults = LinkFaults { delay_ms: 50, jitter_ms: 20, ..LinkFaults::default() };
    let mut seen = BTreeSet::new();
    for f in fates(5, &faults, 500) {
        let Fate::Deliver { first, .. } = f else { panic!("dropped") };
        assert!((30..=70).contains(&first.after.as_millis()), "{:?}", first.after);
        seen.insert(first.after.as_millis());
    }
    assert!(seen.len() > 10, "jitter varies the delay: {seen:?}");
}

#[test]
fn cuts_drop_by_direction_and_port() {
    let mut s = Shaper::new(1);
    let now = t0();
    let up = Direction::ToUpstream;
    let down = Direction::ToClient;
    let f = LinkFaults { drop_to_upstream: true, ..LinkFaults::default() };
    assert_eq!(s.decide(&f, up, 1, 10, now), Fate::Dropped(DropReason::OneWay));
    assert!(matches!(s.decide(&f, down, 1, 10, now), Fate::Deliver { .. }));
    let f = LinkFaults { drop_to_client: true, ..LinkFaults::default() };
    assert!(matches!(s.decide(&f, up, 1, 10, now), Fate::Deliver { .. }));
    assert_eq!(s.decide(&f, down, 1, 10, now), Fate::Dropped(DropReason::OneWay));
    let f = LinkFaults { blackhole: true, ..LinkFaults::default() };
    assert_eq!(s.decide(&f, up, 1, 10, now), Fate::Dropped(DropReason::Blackhole));
    assert_eq!(s.decide(&f, down, 1, 10, now), Fate::Dropped(DropReason::Blackhole));
    let f = LinkFaults { drop_from_ports: [7].into(), ..LinkFaults::default() };
    assert_eq!(s.decide(&f, up, 7, 10, now), Fate::Dropped(DropReason::BlockedPort));
    assert!(matches!(s.decide(&f, down, 7, 10, now), Fate::Deliver { .. }));
    assert!(matches!(s.decide(&f, up, 8, 10, now), Fate::Deliver { .. }));
    let f = LinkFaults { drop_to_ports: [7].into(), ..LinkFaults::default() };
    assert!(matches!(s.decide(&f, up, 7, 10, now), Fate::Deliver { .. }));
    assert_eq!(s.decide(&f, down, 7, 10, now), Fate::Dropped(DropReason::BlockedPort));
}

#[test]
fn the_bandwidth_cap_queues_then_drops() {
    let mut s = Shaper::new(1);
    let now = t0();
    // 10 kB/s: the burst is MIN_BURST_BYTES, then each 1000-byte datagram waits 100 ms more.
    let f = LinkFaults { bandwidth_bytes_per_s: Some(10_000), ..LinkFaults::default() };
    let mut waits = Vec::new();
    loop {
        match s.decide(&f, Direction::ToUpstream, 1, 1000, now) {
            Fate::Deliver { first, .. } => waits.push(first.after),
            Fate::Dropped(r) => {
                assert_eq!(r, DropReason::Bandwidth);
                break;
            }
        }
        assert!(waits.len() < 100, "never dropped");
    }
    assert_eq!(waits[0], Duration::ZERO);
    assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
    assert!(*waits.last().unwrap() <= MAX_SHAPING_DELAY);
    // The other direction has its own bucket; time refills this one.
    assert!(matches!(
        s.decide(&f, Direction::ToClient, 1, 1000, now),
        Fate::Deliver { first: Delivery { after: Duration::ZERO, .. }, .. }
    ));
    let later = now + Duration::from_secs(2);
    assert!(matches!(
        s.decide(&f, Direction::ToUpstream, 1, 1000, later),
        Fate::Deliver { first: Delivery { after: Duration::ZERO, .. }, .. }
    ));
}

#[test]
fn bad_settings_are_refused() {
    assert!(LinkFaults { drop_rate: 1.5, ..LinkFaults::default() }.validate().is_err());
    assert!(LinkFaults { corrupt_rate: -0.1, ..LinkFaults::default() }.validate().is_err());
    assert!(
        LinkFaults { bandwidth_bytes_per_s: Some(0), ..LinkFaults::default() }.validate().is_err()
    );
}

/// An upstream that answers what it gets with the same bytes and counts what it got (the TCP
/// proxy's tests use it too).
pub(crate) struct Echo {
    pub(crate) addr: SocketAddr,
    pub(crate) received: Arc<AtomicU64>,
    pub(crate) task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo() -> Echo {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            r.fetch_add(1, Ordering::Relaxed);
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    Echo { addr, received, task }
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

async fn recv(sock: &UdpSocket, within: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
    match tokio::time::timeout(within, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

async fn setup() -> (Echo, Proxy, UdpSocket) {
    let e = echo().await;
    let p = Proxy::start("127.0.0.1:0".parse().unwrap(), e.addr, 42).await.unwrap();
    let c = client().await;
    c.connect(p.addr()).await.unwrap();
    (e, p, c)
}

#[tokio::test]
async fn forwards_both_ways_and_counts() {
    let (e, p, c) = setup().await;
    for i in 0..10u8 {
        c.send(&[i; 32]).await.unwrap();
        assert_eq!(recv(&c, ARRIVES).await.unwrap(), vec![i; 32]);
    }
    assert_eq!(e.received.load(Ordering::Relaxed), 10);
    let st = p.stats();
    assert_eq!((st.to_upstream, st.to_client, st.dropped()), (10, 10, 0));
}

#[tokio::test]
async fn each_client_gets_its_own_upstream_socket() {
    let (_e, p, c1) = setup().await;
    let c2 = client().await;
    c2.connect(p.addr()).await.unwrap();
    c1.send(b"one").await.unwrap();
    c2.send(b"two").await.unwrap();
    assert_eq!(recv(&c1, ARRIVES).await.unwrap(), b"one");
    assert_eq!(recv(&c2, ARRIVES).await.unwrap(), b"two");
}

#[tokio::test]
async fn blackhole_and_one_way_drops() {
    let (e, p, c) = setup().await;
    p.update(|f| f.blackhole = true).unwrap();
    c.send(b"x").await.unwrap();
    assert_eq!(recv(&c, SILENCE).await, None);
    assert_eq!(e.received.load(Ordering::Relaxed), 0);

    // Replies cut: the upstream hears the client, the client hears nothing.
    p.set_faults(LinkFaults { drop_to_client: true, ..LinkFaults::default() }).unwrap();
    c.send(b"y").await.unwrap();
    assert_eq!(recv(&c, SILENCE).await, None);
    assert_eq!(e.received.load(Ordering::Relaxed), 1);

    // Requests cut: the upstream hears nothing.
    p.set_faults(LinkFaults { drop_to_upstream: true, ..LinkFaults::default() }).unwrap();
    c.send(b"z").await.unwrap();
    assert_eq!(recv(&c, SILENCE).await, None);
    assert_eq!(e.received.load(Ordering::Relaxed), 1);

    p.set_faults(LinkFaults::default()).unwrap();
    c.send(b"w").await.unwrap();
    assert_eq!(recv(&c, ARRIVES).await.unwrap(), b"w");
    let st = p.stats();
    assert_eq!((st.dropped_blackhole, st.dropped_one_way), (1, 2));
}

#[tokio::test]
async fn blocked_client_ports_cut_only_that_client() {
    let (e, p, c1) = setup().await;
    let c2 = client().await;
    c2.connect(p.addr()).await.unwrap();
    let port = c1.local_addr().unwrap().port();
    p.update(|f| f.drop_from_ports = [port].into()).unwrap();
    c1.send(b"a").await.unwrap();
    c2.send(b"b").await.unwrap();
    assert_eq!(recv(&c2, ARRIVES).await.unwrap(), b"b");
    assert_eq!(recv(&c1, SILENCE).await, None);
    assert_eq!(e.received.load(Ordering::Relaxed), 1, "c1's datagram never left");
    // Only the answers to c1 cut: the upstream hears it, c1 hears nothing.
    p.set_faults(LinkFaults { drop_to_ports: [port].into(), ..LinkFaults::default() }).unwrap();
    c1.send(b"c").await.unwrap();
    assert_eq!(recv(&c1, SILENCE).await, None);
    assert_eq!(e.received.load(Ordering::Relaxed), 2);
    assert_eq!(p.stats().dropped_blocked_port, 2);
}

#[tokio::test]
async fn delay_holds_datagrams_back() {
    let (_e, p, c) = setup().await;
    p.update(|f| f.delay_ms = 100).unwrap();
    let start = Instant::now();
    c.send(b"slow").await.unwrap();
    assert_eq!(recv(&c, ARRIVES).await.unwrap(), b"slow");
    // Delayed on the way up and on the way back.
    assert!(start.elapsed() >= Duration::from_millis(200), "{:?}", start.elapsed());
    assert_eq!(p.stats().delayed, 2);
}

#[tokio::test]
async fn duplicates_corruption_and_reordering_reach_the_client() {
    let (e, p, c) = setup().await;
    p.update(|f| f.duplicate_rate = 1.0).unwrap();
    c.send(b"twice").await.unwrap();
    // Duplicated up (2 echoes), each echo duplicated down: 4 copies.
    for _ in 0..4 {
        assert_eq!(recv(&c, ARRIVES).await.unwrap(), b"twice");
    }
    assert_eq!(e.received.load(Ordering::Relaxed), 2);

    p.set_faults(LinkFaults { corrupt_rate: 1.0, ..LinkFaults::default() }).unwrap();
    c.send(&[0u8; 64]).await.unwrap();
    let got = recv(&c, ARRIVES).await.unwrap();
    assert_eq!(got.len(), 64);
    assert_ne!(got, vec![0u8; 64], "flipped bytes arrive");

    p.set_faults(LinkFaults { reorder_rate: 0.5, ..LinkFaults::default() }).unwrap();
    let n = 40u8;
    for i in 0..n {
        c.send(&[i]).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(recv(&c, ARRIVES).await.unwrap()[0]);
    }
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "nothing lost");
    assert_ne!(got, sorted, "some overtaken");
    assert!(p.stats().reordered > 0);
}

#[tokio::test]
async fn invalid_faults_leave_the_link_unchanged() {
    let (_e, p, c) = setup().await;
    assert!(p.update(|f| f.drop_rate = 2.0).is_err());
    assert_eq!(p.faults(), LinkFaults::default());
    c.send(b"ok").await.unwrap();
    assert_eq!(recv(&c, ARRIVES).await.unwrap(), b"ok");
}

#[tokio::test]
async fn a_proxy_bound_before_its_upstream_drops_until_told() {
    let e = echo().await;
    let p = Proxy::bind("127.0.0.1:0".parse().unwrap(), 1).await.unwrap();
    let c = client().await;
    c.connect(p.addr()).await.unwrap();
    c.send(b"early").await.unwrap();
    assert_eq!(recv(&c, SILENCE).await, None);
    assert_eq!(p.stats().dropped_no_upstream, 1);
    p.set_upstream(e.addr).unwrap();
    assert!(p.set_upstream("127.0.0.1:9".parse().unwrap()).is_err(), "set once");
    c.send(b"late").await.unwrap();
    assert_eq!(recv(&c, ARRIVES).await.unwrap(), b"late");
}
