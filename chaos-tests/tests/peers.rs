//! Bad peers in the blob swarm (part of the quick subset): real agents deploy 4 MiB builds
//! through the swarm while the tracker also lists peers that corrupt, lie and crawl. No bad
//! byte is staged on any host, and the faults bit: every corrupting peer was banned by an
//! honest host, the crawler was asked for data, and honest hosts got bytes from each other, not
//! only from the origin.

use chaos_tests::badpeer::BadPeerMode;
use chaos_tests::lab::LinkClass;

mod common;
use common::run_scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_lying_and_crawling_peers_are_survived_and_banned() {
    let (report, _) = run_scenario("corrupt-lying-peers").await;
    let summary = report.summary();
    // Integrity (checked by run_scenario with every verdict) is what proves no bad byte was
    // staged: it hashes every archive and staged file on every host against the published
    // bytes.
    assert!(report.verdicts.iter().any(|v| v.invariant == "integrity"));

    let swarm = report.swarm.as_ref().expect("the lab ran the swarm");
    let modes: Vec<BadPeerMode> = swarm.bad_peers.iter().map(|p| p.mode).collect();
    assert_eq!(
        modes,
        [
            BadPeerMode::FlipByte,
            BadPeerMode::LieAboutPieces,
            BadPeerMode::WrongPiece,
            BadPeerMode::Crawl
        ]
    );
    for p in &swarm.bad_peers {
        assert!(p.stats.announces > 0, "{} never reached the tracker\n{summary}", p.advertise);
        assert!(p.fired(), "bad peer {} never fired\n{summary}", p.mode.label());
        if p.mode.corrupts() {
            assert!(!p.banned_by.is_empty(), "{summary}");
        } else {
            assert!(p.banned_by.is_empty(), "an honest (slow) peer was banned\n{summary}");
        }
    }
    // Honest hosts saw the bad responses, and the swarm, not only the origin, carried bytes.
    assert!(swarm.hosts.iter().map(|h| h.stats.bad_responses).sum::<u64>() > 0, "{summary}");
    assert!(swarm.from_peers_bytes() > 0, "{summary}");
    assert!(swarm.honest_uploaded_bytes() > 0, "honest hosts served each other\n{summary}");
    assert!(report.links[&LinkClass::Swarm].to_upstream > 0, "peer links went through proxies");
    // The origin's pieces came through the proxies in front of the coordinators' origins too.
    let from_origin: u64 = swarm.hosts.iter().map(|h| h.stats.downloaded_from_origin_bytes).sum();
    assert!(from_origin > 0, "{summary}");
    assert!(swarm.origin_links.to_upstream > 0 && swarm.origin_links.to_client > 0, "{summary}");
}
