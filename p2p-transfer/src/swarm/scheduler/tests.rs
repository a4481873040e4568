use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::*;
use crate::blob::MIN_PIECE_BYTES;

fn peer(n: u16) -> PeerId {
    PeerId(SocketAddr::from(([127, 0, 0, 1], n)))
}

fn bits(len: u32, ones: impl IntoIterator<Item = u32>) -> Bitfield {
    let mut bits = Bitfield::new(len.into());
    for i in ones {
        bits.set(i.into());
    }
    bits
}

fn scheduler(n_pieces: u32, config: SchedulerConfig) -> Scheduler {
    let geometry = Geometry::new(u64::from(n_pieces) * MIN_PIECE_BYTES).unwrap();
    Scheduler::new(config, geometry, &Bitfield::new(n_pieces.into()))
}

fn join(s: &mut Scheduler, p: PeerId, role: PeerRole, have: Bitfield, now: Instant) {
    s.handle_peer_joined(p, role, now);
    s.handle_bitfield(p, have, now);
}

fn drain(s: &mut Scheduler, now: Instant) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action(now)).collect()
}

fn requests_to(actions: &[Action], to: PeerId) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::Request { peer, piece } if peer == to => Some(piece),
            _ => None,
        })
        .collect()
}

#[test]
fn rarest_pieces_are_asked_first() {
    let now = Instant::now();
    let config = SchedulerConfig {
        random_first_pieces: 0,
        max_inflight: 3 * PIPELINE_MIN,
        ..SchedulerConfig::recommended(7)
    };
    let mut s = scheduler(16, config);
    let (a, b, c) = (peer(1), peer(2), peer(3));
    join(&mut s, a, PeerRole::Peer, bits(16, 0..16), now); // 8..16 only here: rarest
    join(&mut s, b, PeerRole::Peer, bits(16, 0..8), now); // 4..8 on two peers
    join(&mut s, c, PeerRole::Peer, bits(16, 0..4), now); // 0..4 on three
    let actions = drain(&mut s, now);
    assert!(requests_to(&actions, a).iter().all(|p| (8..16).contains(p)), "{actions:?}");
    assert!(requests_to(&actions, b).iter().all(|p| (4..8).contains(p)), "{actions:?}");
    assert!(requests_to(&actions, c).iter().all(|p| (0..4).contains(p)), "{actions:?}");
    assert_eq!(actions.len(), 3 * PIPELINE_MIN as usize);
}

#[test]
fn the_first_piece_is_random() {
    let now = Instant::now();
    let firsts: BTreeSet<u32> = (1..40)
        .map(|seed| {
            let mut s = scheduler(64, SchedulerConfig::recommended(seed));
            join(&mut s, peer(1), PeerRole::Peer, bits(64, 0..64), now);
            match s.poll_action(now) {
                Some(Action::Request { piece, .. }) => piece,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert!(firsts.len() > 10, "first pieces {firsts:?}");
}

#[test]
fn the_origin_serves_only_what_no_peer_has_and_a_bounded_number_at_once() {
    let now = Instant::now();
    let mut s = scheduler(8, SchedulerConfig::recommended(1));
    let (origin, partial) = (peer(1), peer(2));
    join(&mut s, origin, PeerRole::Origin, bits(8, 0..8), now);
    join(&mut s, partial, PeerRole::Peer, bits(8, 0..4), now);
    let first = drain(&mut s, now);
    assert_eq!(requests_to(&first, origin).len(), ORIGIN_MAX_INFLIGHT as usize);
    assert_eq!(requests_to(&first, partial).len(), PIPELINE_MIN as usize);

    // Serve every request at once until done; the origin only ever gets pieces 4..8.
    let mut origin_pieces = Vec::new();
    let mut pending = first;
    while !s.is_complete() {
        assert!(!pending.is_empty(), "stuck");
        for action in pending.drain(..) {
            if let Action::Request { peer, piece } = action {
                if peer == origin {
                    origin_pieces.push(piece);
                }
                s.handle_piece_received(peer, piece, now);
            }
        }
        pending = drain(&mut s, now);
    }
    origin_pieces.sort();
    assert_eq!(origin_pieces, vec![4, 5, 6, 7]);
}

#[test]
fn the_origin_is_asked_even_when_peers_fill_the_download_s_pipeline() {
    let now = Instant::now();
    let config = SchedulerConfig { max_inflight: 2, ..SchedulerConfig::recommended(3) };
    let mut s = scheduler(16, config);
    let origin = peer(1);
    for p in 2..6 {
        join(&mut s, peer(p), PeerRole::Peer, bits(16, 0..8), now);
    }
    join(&mut s, origin, PeerRole::Origin, bits(16, 0..16), now);
    let actions = drain(&mut s, now);
    // The peers take the cap; the origin still gets its own requests, for pieces only it has.
    let to_origin = requests_to(&actions, origin);
    assert_eq!(to_origin.len(), ORIGIN_MAX_INFLIGHT as usize, "{actions:?}");
    assert!(to_origin.iter().all(|p| (8..16).contains(p)), "{actions:?}");
    assert_eq!(actions.len() - to_origin.len(), 2, "{actions:?}");
}

#[test]
fn a_piece_the_origin_declined_as_seeded_is_left_to_the_swarm_for_a_while() {
    let start = Instant::now();
    let config = SchedulerConfig { origin_max_inflight: 1, ..SchedulerConfig::recommended(5) };
    let retry = config.seeded_retry;
    let mut s = scheduler(4, config);
    let origin = peer(1);
    join(&mut s, origin, PeerRole::Origin, bits(4, 0..4), start);
    let Some(Action::Request { piece: declined, .. }) = s.poll_action(start) else {
        panic!("no request")
    };
    s.handle_piece_failed(origin, declined, Failure::Seeded, start);
    // No backoff for the origin: it is asked for the other pieces at once, never this one.
    let mut asked = Vec::new();
    let mut now = start;
    while let Some(Action::Request { piece, .. }) = s.poll_action(now) {
        asked.push(piece);
        s.handle_piece_received(origin, piece, now);
        now += Duration::from_millis(1);
    }
    asked.sort();
    let others: Vec<u32> = (0..4).filter(|&p| p != declined).collect();
    assert_eq!(asked, others);
    assert!(!s.is_complete());
    // Nobody brought it; after the retry delay the origin is asked again.
    assert!(s.poll_timeout(start).is_some_and(|t| t <= start + retry));
    s.handle_timeout(start + retry);
    assert_eq!(
        s.poll_action(start + retry),
        Some(Action::Request { peer: origin, piece: declined })
    );
}

#[test]
fn a_peer_re_announced_as_origin_stops_counting_as_a_source() {
    let now = Instant::now();
    let mut s = scheduler(4, SchedulerConfig::recommended(1));
    let (a, b) = (peer(1), peer(2));
    join(&mut s, a, PeerRole::Peer, bits(4, 0..4), now);
    join(&mut s, b, PeerRole::Origin, bits(4, 0..4), now);
    s.handle_peer_joined(a, PeerRole::Origin, now);
    // Both are origins now, so nobody else holds anything and both may be asked.
    let actions = drain(&mut s, now);
    assert_eq!(requests_to(&actions, a).len(), ORIGIN_MAX_INFLIGHT as usize);
    assert_eq!(requests_to(&actions, b).len(), ORIGIN_MAX_INFLIGHT as usize);
    s.handle_peer_left(a, now);
    s.handle_peer_left(b, now); // the counts return to zero without underflow
}

#[test]
fn endgame_duplicates_the_last_pieces_and_cancels_the_slower_copy() {
    let now = Instant::now();
    let mut s = scheduler(2, SchedulerConfig::recommended(1));
    let (a, b) = (peer(1), peer(2));
    join(&mut s, a, PeerRole::Peer, bits(2, 0..2), now);
    let normal = drain(&mut s, now);
    assert_eq!(requests_to(&normal, a).len(), 2);
    join(&mut s, b, PeerRole::Peer, bits(2, 0..2), now);
    let endgame = drain(&mut s, now);
    let mut dup = requests_to(&endgame, b);
    dup.sort();
    assert_eq!(dup, vec![0, 1], "every in-flight piece gets a second request");
    assert_eq!(s.inflight(), 4);

    s.handle_piece_received(b, 1, now);
    assert_eq!(drain(&mut s, now), vec![Action::Cancel { peer: a, piece: 1 }]);
    s.handle_piece_received(a, 0, now);
    assert_eq!(drain(&mut s, now), vec![Action::Cancel { peer: b, piece: 0 }]);
    assert!(s.is_complete());
    assert_eq!(s.inflight(), 0);
}

#[test]
fn one_bad_response_bans_the_peer_until_expiry_and_its_pieces_go_elsewhere() {
    let now = Instant::now();
    let mut s = scheduler(8, SchedulerConfig::recommended(3));
    let (good, bad) = (peer(1), peer(2));
    join(&mut s, good, PeerRole::Peer, bits(8, 0..8), now);
    join(&mut s, bad, PeerRole::Peer, bits(8, 0..8), now);
    let actions = drain(&mut s, now);
    let bad_pieces = requests_to(&actions, bad);
    assert_eq!(bad_pieces.len(), 2);

    s.handle_piece_failed(bad, bad_pieces[0], Failure::Corrupt, now);
    assert!(s.is_banned(bad, now));
    assert_eq!(s.banned_peers(), vec![(bad, 1)]);
    let after = drain(&mut s, now);
    assert_eq!(after, vec![Action::Cancel { peer: bad, piece: bad_pieces[1] }]);
    // The banned peer gets nothing more; the good one takes its pieces as it frees up.
    let mut served = BTreeSet::new();
    let mut requests = requests_to(&actions, good);
    while !s.is_complete() {
        assert!(!requests.is_empty());
        for piece in requests {
            s.handle_piece_received(good, piece, now);
            served.insert(piece);
        }
        let actions = drain(&mut s, now);
        assert!(requests_to(&actions, bad).is_empty());
        requests = requests_to(&actions, good);
    }
    assert!(bad_pieces.iter().all(|p| served.contains(p)));

    let later = now + BAN_DURATION;
    assert_eq!(s.poll_timeout(now), Some(later));
    s.handle_timeout(later);
    assert!(!s.is_banned(bad, later));
    assert_eq!(s.peer_stats(bad, later).unwrap().bad_responses, 1);
}

#[test]
fn refusing_advertised_pieces_is_a_lying_bitfield_and_bans() {
    let now = Instant::now();
    let config = SchedulerConfig { pipeline_min: 1, ..SchedulerConfig::recommended(5) };
    let mut s = scheduler(8, config);
    let liar = peer(9);
    join(&mut s, liar, PeerRole::Peer, bits(8, 0..8), now);
    for refusal in 1..=MAX_REFUSALS {
        let [Action::Request { piece, .. }] = drain(&mut s, now)[..] else { panic!() };
        s.handle_piece_failed(liar, piece, Failure::NotHeld, now);
        assert_eq!(s.is_banned(liar, now), refusal == MAX_REFUSALS);
        assert_eq!(s.peer_stats(liar, now).unwrap().pieces_held, u64::from(8 - refusal));
    }
    assert!(drain(&mut s, now).is_empty());
    assert!(!s.can_progress(now));
}

#[test]
fn a_piece_a_peer_is_receiving_is_asked_of_it_and_not_of_the_origin() {
    let now = Instant::now();
    let config = SchedulerConfig {
        random_first_pieces: 0,
        origin_max_inflight: 8,
        ..SchedulerConfig::recommended(3)
    };
    let mut s = scheduler(4, config);
    let (origin, relay) = (peer(1), peer(2));
    join(&mut s, origin, PeerRole::Origin, bits(4, 0..4), now);
    join(&mut s, relay, PeerRole::Peer, bits(4, []), now);
    s.handle_incoming(relay, 2, now);
    let actions = drain(&mut s, now);
    assert_eq!(requests_to(&actions, relay), vec![2], "{actions:?}");
    assert_eq!(requests_to(&actions, origin).len(), 3, "{actions:?}");
    assert!(!requests_to(&actions, origin).contains(&2), "{actions:?}");

    // Its relay failed: the offer is withdrawn without blame, and the origin may serve it.
    s.handle_piece_failed(relay, 2, Failure::RelayLost, now);
    assert!(!s.is_banned(relay, now));
    let actions = drain(&mut s, now);
    assert_eq!(actions, vec![Action::Request { peer: origin, piece: 2 }]);
    // Announced again and then whole: a "have" turns the offer into a holding, counted once.
    s.handle_incoming(relay, 3, now);
    s.handle_have(relay, 3, now);
    s.handle_incoming(relay, 3, now);
    assert_eq!(s.peer_stats(relay, now).unwrap().pieces_held, 1);
    assert_eq!(s.availability[3], 1);
    assert_eq!(s.availability[2], 0);
}

#[test]
fn refusing_pieces_only_announced_as_incoming_is_no_lie() {
    let now = Instant::now();
    let config = SchedulerConfig { pipeline_min: 1, ..SchedulerConfig::recommended(5) };
    let mut s = scheduler(8, config);
    let relay = peer(9);
    join(&mut s, relay, PeerRole::Peer, bits(8, []), now);
    for piece in 0..8 {
        s.handle_incoming(relay, piece, now);
    }
    for _ in 0..2 * MAX_REFUSALS {
        let [Action::Request { piece, .. }] = drain(&mut s, now)[..] else { panic!() };
        // The relay ended before the request reached it.
        s.handle_piece_failed(relay, piece, Failure::NotHeld, now);
    }
    assert!(!s.is_banned(relay, now));
    assert_eq!(s.availability.iter().sum::<u32>(), 8 - 2 * MAX_REFUSALS);
    // A bitfield is the peer's whole state: the remaining announcements go with it.
    s.handle_bitfield(relay, bits(8, [7]), now);
    assert_eq!(s.availability.iter().sum::<u32>(), 1);
    // An announced piece outside the blob is a lie.
    s.handle_incoming(relay, 8, now);
    assert!(s.is_banned(relay, now));
}

#[test]
fn busy_peers_back_off_and_stale_requests_time_out() {
    let now = Instant::now();
    let config = SchedulerConfig { pipeline_min: 1, ..SchedulerConfig::recommended(5) };
    let mut s = scheduler(4, config);
    let (a, b) = (peer(1), peer(2));
    join(&mut s, a, PeerRole::Peer, bits(4, 0..4), now);
    let [Action::Request { piece, .. }] = drain(&mut s, now)[..] else { panic!() };
    s.handle_piece_failed(a, piece, Failure::Busy, now);
    assert!(drain(&mut s, now).is_empty(), "backing off");
    let later = now + BUSY_BACKOFF;
    assert_eq!(s.poll_timeout(now), Some(later));
    s.handle_timeout(later);
    let [Action::Request { piece, .. }] = drain(&mut s, later)[..] else { panic!() };

    // The request is never answered: it times out and moves to a newcomer.
    join(&mut s, b, PeerRole::Peer, bits(4, [piece]), later);
    let timeout = later + REQUEST_TIMEOUT;
    s.handle_timeout(timeout);
    let actions = drain(&mut s, timeout);
    assert_eq!(actions[0], Action::Cancel { peer: a, piece });
    assert!(actions.contains(&Action::Request { peer: b, piece }), "{actions:?}");
}

#[test]
fn peers_that_leave_free_their_requests_and_newcomers_get_work() {
    let now = Instant::now();
    let mut s = scheduler(8, SchedulerConfig::recommended(2));
    let (a, b) = (peer(1), peer(2));
    join(&mut s, a, PeerRole::Peer, bits(8, 0..8), now);
    assert_eq!(drain(&mut s, now).len(), PIPELINE_MIN as usize);
    s.handle_peer_left(a, now);
    assert_eq!(s.inflight(), 0);
    assert!(drain(&mut s, now).is_empty());
    join(&mut s, b, PeerRole::Peer, bits(8, 0..8), now);
    assert_eq!(requests_to(&drain(&mut s, now), b).len(), PIPELINE_MIN as usize);
}

/// A scheduler of `n_pieces` that keeps one peer request in flight, in rarest order.
fn one_request_at_a_time(n_pieces: u32) -> Scheduler {
    let config = SchedulerConfig {
        random_first_pieces: 0,
        max_inflight: 1,
        pipeline_min: 1,
        ..SchedulerConfig::recommended(3)
    };
    scheduler(n_pieces, config)
}

#[test]
fn a_request_already_late_wakes_the_driver_no_more() {
    let start = Instant::now();
    let mut s = one_request_at_a_time(4);
    let a = peer(1);
    join(&mut s, a, PeerRole::Peer, bits(4, 0..4), start);
    let [Action::Request { .. }] = drain(&mut s, start)[..] else { panic!() };
    // Unmeasured peer: late after LATE_UNMEASURED; nobody else can take the piece.
    let late = start + LATE_UNMEASURED;
    assert_eq!(s.poll_timeout(start), Some(late));
    s.handle_timeout(late);
    assert!(drain(&mut s, late).is_empty(), "no other peer holds the piece");
    // Until it ends, the late request changes nothing: the next wake is its timeout (a past
    // instant here would make the driver spin).
    let after = late + Duration::from_millis(1);
    assert_eq!(s.poll_timeout(after), Some(start + REQUEST_TIMEOUT));
}

#[test]
fn a_late_request_is_asked_elsewhere_long_before_the_request_timeout() {
    let start = Instant::now();
    let mut s = one_request_at_a_time(4);
    let (a, b) = (peer(1), peer(2));
    join(&mut s, a, PeerRole::Peer, bits(4, 0..4), start);
    // `a` delivers one piece in 100 ms (2.5 MiB/s), then sits on the next request.
    let [Action::Request { piece: first, .. }] = drain(&mut s, start)[..] else { panic!() };
    let t1 = start + Duration::from_millis(100);
    s.handle_piece_received(a, first, t1);
    let [Action::Request { peer: to, piece: stuck }] = drain(&mut s, t1)[..] else { panic!() };
    assert_eq!(to, a);
    join(&mut s, b, PeerRole::Peer, bits(4, 0..4), t1);
    assert!(drain(&mut s, t1).is_empty(), "the one-piece pipeline is full");
    // Expected 100 ms, late after 4 × 100 ms = 400 ms, floored at LATE_FLOOR.
    let late = t1 + LATE_FLOOR.max(Duration::from_millis(400));
    assert_eq!(s.poll_timeout(t1), Some(late), "the scheduler wakes when the request turns late");
    assert!(drain(&mut s, late - Duration::from_millis(1)).is_empty());
    s.handle_timeout(late);
    let actions = drain(&mut s, late);
    assert_eq!(actions, vec![Action::Request { peer: b, piece: stuck }], "rescued first");
    // The late request no longer blocks the pipeline: b's copy arrives, a's is cancelled,
    // and the download goes on.
    s.handle_piece_received(b, stuck, late);
    let next = drain(&mut s, late);
    assert_eq!(next[0], Action::Cancel { peer: a, piece: stuck });
    assert_eq!(next.len(), 2, "{next:?}");
    // The origin is never asked to rescue: its requests are not late (origin protection).
    let mut s =
        scheduler(2, SchedulerConfig { random_first_pieces: 0, ..SchedulerConfig::recommended(4) });
    let o = peer(9);
    join(&mut s, o, PeerRole::Origin, bits(2, 0..2), start);
    assert_eq!(requests_to(&drain(&mut s, start), o).len(), 2);
    let much_later = start + Duration::from_secs(10);
    assert!(s.poll_timeout(start).unwrap() > much_later, "only the request timeout applies");
}

#[test]
fn a_late_piece_no_other_peer_holds_is_rescued_by_the_origin() {
    let start = Instant::now();
    let mut s = one_request_at_a_time(4);
    let (crawler, o) = (peer(1), peer(9));
    join(&mut s, crawler, PeerRole::Peer, bits(4, 0..4), start);
    join(&mut s, o, PeerRole::Origin, bits(4, 0..4), start);
    let first = drain(&mut s, start);
    assert!(requests_to(&first, o).is_empty(), "pieces a peer holds are left to it: {first:?}");
    let [stuck] = requests_to(&first, crawler)[..] else { panic!("{first:?}") };
    // The crawler never answers; with no measured rate its request is late after
    // LATE_UNMEASURED, and no other peer holds the piece.
    let late = start + LATE_UNMEASURED;
    assert!(drain(&mut s, late - Duration::from_millis(1)).is_empty());
    s.handle_timeout(late);
    let rescue = drain(&mut s, late);
    assert_eq!(requests_to(&rescue, o).first(), Some(&stuck), "{rescue:?}");
}

#[test]
fn a_piece_only_a_peer_that_keeps_answering_busy_holds_is_asked_of_the_origin() {
    let now = Instant::now();
    let config = SchedulerConfig { origin_max_inflight: 1, ..SchedulerConfig::recommended(9) };
    let limit = config.busy_streak_limit;
    let backoff = config.busy_backoff;
    let mut s = scheduler(1, config);
    let (origin, saturated) = (peer(1), peer(2));
    join(&mut s, saturated, PeerRole::Peer, bits(1, [0]), now);
    join(&mut s, origin, PeerRole::Origin, bits(1, [0]), now);
    let mut t = now;
    for answer in 0..limit {
        let actions = drain(&mut s, t);
        // While the peer may still be merely busy for a moment, the origin is left alone.
        assert_eq!(requests_to(&actions, saturated), vec![0], "answer {answer}: {actions:?}");
        assert!(requests_to(&actions, origin).is_empty(), "answer {answer}: {actions:?}");
        s.handle_piece_failed(saturated, 0, Failure::Busy, t);
        t += backoff;
    }
    // Busy again and again: the piece is stranded there, so the origin is asked for it.
    let actions = drain(&mut s, t);
    assert_eq!(requests_to(&actions, origin), vec![0], "{actions:?}");
}

#[test]
fn a_piece_only_a_slow_peer_holds_is_asked_of_the_origin_and_its_requests_are_late_early() {
    let start = Instant::now();
    let config = SchedulerConfig {
        random_first_pieces: 0,
        max_inflight: 8,
        ..SchedulerConfig::recommended(4)
    };
    let mut s = scheduler(16, config);
    let (fast_a, fast_b, slow, origin) = (peer(1), peer(2), peer(3), peer(4));
    join(&mut s, fast_a, PeerRole::Peer, bits(16, 0..6), start);
    join(&mut s, fast_b, PeerRole::Peer, bits(16, 0..6), start);
    join(&mut s, slow, PeerRole::Peer, bits(16, 6..16), start);
    // Measure everyone: the fast peers deliver a piece in 62.5 ms (4 MiB/s), the slow one in
    // 2.5 s (0.1 MiB/s). No origin yet.
    let mut t = start;
    let first = drain(&mut s, t);
    let one = |p: PeerId| *requests_to(&first, p).first().expect("a request each");
    let (pa, pb, ps) = (one(fast_a), one(fast_b), one(slow));
    s.handle_piece_received(fast_a, pa, t + Duration::from_micros(62_500));
    s.handle_piece_received(fast_b, pb, t + Duration::from_micros(62_500));
    t += Duration::from_millis(2500);
    s.handle_piece_received(slow, ps, t);
    let rate = |p: PeerId| s.peer_stats(p, t).unwrap().rate_bytes_per_sec.unwrap();
    assert!(rate(slow) * SLOW_PEER_RATIO < rate(fast_a), "{} {}", rate(slow), rate(fast_a));
    // The fast peers answer everything else at once; the slow peer's second request of the
    // first round stays open.
    let mut pending: Vec<Action> = first.iter().chain(&drain(&mut s, t)).copied().collect();
    while !pending.is_empty() {
        for action in std::mem::take(&mut pending) {
            if let Action::Request { peer, piece } = action
                && peer != slow
                && piece != pa
                && piece != pb
            {
                s.handle_piece_received(peer, piece, t);
            }
        }
        pending = drain(&mut s, t);
    }
    let old: Vec<u32> = requests_to(&first, slow).into_iter().filter(|&p| p != ps).collect();
    assert_eq!(old.len(), 1, "{first:?}");
    // That request is late at the reference rate's pace (4 x 62.5 ms, so the 0.5 s floor),
    // not at its own (4 x 2.5 s): it was made at the start, 2.5 s ago. (The slow peer's new
    // request, made now, is not.)
    let (late, _) = s.late_pieces(t);
    assert_eq!(late, old);
    // An origin that joins now is asked for the pieces only the slow peer holds.
    join(&mut s, origin, PeerRole::Origin, bits(16, 0..16), t);
    let actions = drain(&mut s, t);
    let to_origin = requests_to(&actions, origin);
    assert!(!to_origin.is_empty(), "{actions:?}");
    assert!(to_origin.iter().all(|p| (6..16).contains(p)), "{actions:?}");
}

#[test]
fn the_pipeline_covers_bandwidth_times_delay() {
    let start = Instant::now();
    // A long fat link: the download-wide cap must not be what limits the pipeline here.
    let config = SchedulerConfig {
        random_first_pieces: 0,
        max_inflight: PIPELINE_MAX,
        ..SchedulerConfig::recommended(2)
    };
    let mut s = scheduler(64, config);
    let a = peer(1);
    join(&mut s, a, PeerRole::Peer, bits(64, 0..64), start);
    s.handle_rtt(a, Duration::from_millis(20));
    // Deliver a few pieces at 64 MiB/s: 256 KiB every 3.9 ms.
    let mut now = start;
    for _ in 0..4 {
        for action in drain(&mut s, now) {
            if let Action::Request { piece, .. } = action {
                now += Duration::from_micros(3906);
                s.handle_piece_received(a, piece, now);
            }
        }
    }
    drain(&mut s, now);
    // 64 MiB/s × 20 ms = 1.28 MB = 5.12 pieces, rounded up, plus one.
    assert_eq!(s.peer_stats(a, now).unwrap().inflight, 7);
}

/// A simulated download under simulated time: peers of different speeds, one corrupting
/// peer, one that leaves midway, one that joins late. Checks the invariants on every step.
#[test]
fn simulated_swarms_complete_and_never_ask_banned_peers() {
    for seed in 1..20 {
        simulate(seed);
    }
}

fn simulate(seed: u64) {
    let n_pieces = 40;
    let start = Instant::now();
    let mut s = scheduler(n_pieces, SchedulerConfig::recommended(seed));
    let piece_time = |rate_mib: u64| Duration::from_micros(256 * 1_000_000 / (rate_mib * 1024));
    // peer -> (time per piece, corrupt)
    let mut peers: BTreeMap<PeerId, (Duration, bool)> = BTreeMap::new();
    peers.insert(peer(1), (piece_time(4), false));
    peers.insert(peer(2), (piece_time(1), false));
    peers.insert(peer(3), (piece_time(8), true));
    peers.insert(peer(4), (piece_time(4), false)); // leaves at 100 ms
    let origin = peer(5);
    peers.insert(origin, (piece_time(4), false));
    for (&p, _) in peers.iter() {
        let role = if p == origin { PeerRole::Origin } else { PeerRole::Peer };
        let have = if p == peer(2) { bits(n_pieces, 0..20) } else { bits(n_pieces, 0..n_pieces) };
        join(&mut s, p, role, have, start);
    }
    // Completion events: (time, peer, piece).
    let mut events: BTreeSet<(Instant, PeerId, u32)> = BTreeSet::new();
    let mut busy_until: BTreeMap<PeerId, Instant> = BTreeMap::new();
    let mut now = start;
    let mut late_joined = false;
    let mut left = false;
    for _step in 0..10_000 {
        if s.is_complete() {
            break;
        }
        while let Some(action) = s.poll_action(now) {
            match action {
                Action::Request { peer: p, piece } => {
                    assert!(!s.is_banned(p, now), "seed {seed}: asked banned {p}");
                    // Origin requests come on top of the cap for peers.
                    assert!(s.inflight() <= MAX_INFLIGHT_PIECES + ORIGIN_MAX_INFLIGHT);
                    let (per_piece, _) = peers[&p];
                    let begin = busy_until.get(&p).copied().unwrap_or(now).max(now);
                    busy_until.insert(p, begin + per_piece);
                    events.insert((begin + per_piece, p, piece));
                }
                Action::Cancel { peer: p, piece } => {
                    events.retain(|&(_, ep, epiece)| !(ep == p && epiece == piece));
                }
            }
        }
        if !left && now >= start + Duration::from_millis(100) {
            left = true;
            events.retain(|&(_, ep, _)| ep != peer(4));
            s.handle_peer_left(peer(4), now);
        }
        if !late_joined && now >= start + Duration::from_millis(300) {
            late_joined = true;
            peers.insert(peer(6), (piece_time(16), false));
            join(&mut s, peer(6), PeerRole::Peer, bits(n_pieces, 0..n_pieces), now);
            continue;
        }
        let next_event = events.first().map(|e| e.0);
        let next = [next_event, s.poll_timeout(now)].into_iter().flatten().min();
        let Some(next) = next else { panic!("seed {seed}: stalled") };
        now = now.max(next);
        s.handle_timeout(now);
        while let Some(&(at, p, piece)) = events.first() {
            if at > now {
                break;
            }
            events.pop_first();
            if peers[&p].1 {
                s.handle_piece_failed(p, piece, Failure::Corrupt, now);
            } else {
                s.handle_piece_received(p, piece, now);
            }
        }
    }
    assert!(s.is_complete(), "seed {seed}: {} of {n_pieces}", s.pieces_done());
    let banned = s.banned_peers();
    assert_eq!(banned, vec![(peer(3), 1)], "seed {seed}");
    assert!(s.peer_stats(peer(3), now).unwrap().bad_responses <= PIPELINE_MIN);
}
