//! An origin's super-seeding memory: which pieces it handed out, and when.
//!
//! After an origin sends a piece, it answers "seeded" to further requests for that piece for
//! its repeat window, so that the swarm takes the piece from whoever got it and the origin's
//! upload goes to pieces nobody has yet. The window counts from when the upload finished.
//!
//! **Stranded pieces.** A requester asks an origin only for pieces no usable peer of its own
//! holds, and asks again after a "seeded" answer only once its scheduler's retry delay has
//! passed with still no usable holder. A requester turned away [`RESCUE_AFTER_DECLINES`]
//! times is therefore not waiting for a piece on its way: the piece's first receiver died,
//! serves corrupt data or crawls. Its next request is served inside the window (a rescue),
//! and the window starts again, so a piece stranded everywhere costs at most one more copy
//! per window and rescue, not one per requester. Measured with `tt bench swarm` (request logs
//! of a healthy 50-host run): no requester was turned away three times for the same piece;
//! with 10% corrupt, 10% slow and 10% killed hosts, 57 of 256 pieces had requesters turned
//! away three to eight times (seconds each).
//!
//! Pure: time is an argument, so tests drive it directly; [`super::node`] holds one behind a
//! lock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::blob::BlobHash;
use crate::swarm::scheduler::PeerId;

/// Pieces remembered for the repeat window; entries past their window are pruned when the
/// table grows beyond this.
pub const RECENT_UPLOADS_MAX: usize = 65_536;
/// "Seeded" answers to one requester for one piece after which its next request is served.
pub const RESCUE_AFTER_DECLINES: u8 = 2;
/// Requesters whose declines are remembered per piece; beyond this, new ones are not counted
/// (they are served when the window ends, as without rescues).
pub const DECLINED_PEERS_MAX: usize = 64;

/// What an origin does with a piece request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepeatDecision {
    /// Send the piece (recorded as handed out now).
    Serve,
    /// Send the piece again inside its window: this requester was turned away
    /// [`RESCUE_AFTER_DECLINES`] times (recorded as handed out now).
    Rescue,
    /// Answer "seeded": the piece went to another peer moments ago.
    Seeded,
}

/// The repeat window of every piece an origin handed out.
#[derive(Debug)]
pub struct RepeatGuard {
    window: Duration,
    pieces: HashMap<(BlobHash, u32), Handout>,
}

/// One piece's last hand-out and whom the origin turned away since.
#[derive(Debug)]
struct Handout {
    at: Instant,
    declined: Vec<(PeerId, u8)>,
}

impl Handout {
    fn new(at: Instant) -> Handout {
        Handout { at, declined: Vec::new() }
    }
}

impl RepeatGuard {
    pub fn new(window: Duration) -> RepeatGuard {
        RepeatGuard { window, pieces: HashMap::new() }
    }

    /// Whether `peer`'s request for `piece` at `now` is served; a served request is recorded
    /// as a hand-out, a declined one counts against the piece's window.
    pub fn decide(
        &mut self,
        hash: BlobHash,
        piece: u32,
        peer: PeerId,
        now: Instant,
    ) -> RepeatDecision {
        if let Some(handout) = self.pieces.get_mut(&(hash, piece))
            && now < handout.at + self.window
        {
            let position = handout.declined.iter().position(|(p, _)| *p == peer);
            match position {
                Some(i) if handout.declined[i].1 >= RESCUE_AFTER_DECLINES => {
                    *handout = Handout::new(now);
                    return RepeatDecision::Rescue;
                }
                Some(i) => handout.declined[i].1 += 1,
                None if handout.declined.len() < DECLINED_PEERS_MAX => {
                    handout.declined.push((peer, 1));
                }
                None => {}
            }
            return RepeatDecision::Seeded;
        }
        if self.pieces.len() >= RECENT_UPLOADS_MAX {
            let window = self.window;
            self.pieces.retain(|_, handout| now < handout.at + window);
        }
        self.pieces.insert((hash, piece), Handout::new(now));
        RepeatDecision::Serve
    }

    /// A served request's upload did not happen (no slot, or the requester went away): the
    /// piece may be handed out again at once.
    pub fn forget(&mut self, hash: BlobHash, piece: u32) {
        self.pieces.remove(&(hash, piece));
    }

    /// An upload finished: the window starts again now, when the receiver holds the piece.
    /// Declines counted so far still count.
    pub fn renew(&mut self, hash: BlobHash, piece: u32, now: Instant) {
        self.pieces.entry((hash, piece)).or_insert_with(|| Handout::new(now)).at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(5);

    fn hash() -> BlobHash {
        BlobHash::from_bytes([7; 32])
    }

    fn peer(n: u16) -> PeerId {
        PeerId(([127, 0, 0, 1], n).into())
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_piece_is_served_once_per_window_counted_from_the_upload_end() {
        let t0 = Instant::now();
        let mut g = RepeatGuard::new(WINDOW);
        assert_eq!(g.decide(hash(), 3, peer(1), t0), RepeatDecision::Serve);
        assert_eq!(g.decide(hash(), 3, peer(2), t0 + secs(1)), RepeatDecision::Seeded);
        assert_eq!(g.decide(hash(), 4, peer(2), t0 + secs(1)), RepeatDecision::Serve);
        g.renew(hash(), 3, t0 + secs(2));
        assert_eq!(g.decide(hash(), 3, peer(3), t0 + secs(6)), RepeatDecision::Seeded);
        assert_eq!(g.decide(hash(), 3, peer(4), t0 + secs(7)), RepeatDecision::Serve);
    }

    #[test]
    fn a_requester_turned_away_twice_is_served_and_the_window_starts_again() {
        let t0 = Instant::now();
        let mut g = RepeatGuard::new(WINDOW);
        assert_eq!(g.decide(hash(), 9, peer(1), t0), RepeatDecision::Serve);
        g.renew(hash(), 9, t0);
        // Many requesters once each: all turned away (the piece is on its way to them).
        for p in 2..40 {
            assert_eq!(g.decide(hash(), 9, peer(p), t0), RepeatDecision::Seeded);
        }
        // Peer 2 asks again a second later, still without a holder: turned away once more.
        assert_eq!(g.decide(hash(), 9, peer(2), t0 + secs(1)), RepeatDecision::Seeded);
        // The third time it is served, inside the window.
        assert_eq!(g.decide(hash(), 9, peer(2), t0 + secs(2)), RepeatDecision::Rescue);
        // The window starts again and everyone's count with it: peer 3, turned away once
        // before the rescue, is turned away again, twice, before it may be rescued.
        assert_eq!(g.decide(hash(), 9, peer(3), t0 + secs(3)), RepeatDecision::Seeded);
        assert_eq!(g.decide(hash(), 9, peer(3), t0 + secs(4)), RepeatDecision::Seeded);
        assert_eq!(g.decide(hash(), 9, peer(3), t0 + secs(5)), RepeatDecision::Rescue);
        // Another piece's counts are its own.
        assert_eq!(g.decide(hash(), 10, peer(2), t0 + secs(5)), RepeatDecision::Serve);
    }

    #[test]
    fn declines_are_remembered_for_a_bounded_number_of_requesters() {
        let t0 = Instant::now();
        let mut g = RepeatGuard::new(WINDOW);
        assert_eq!(g.decide(hash(), 0, peer(0), t0), RepeatDecision::Serve);
        for p in 1..=(DECLINED_PEERS_MAX as u16 + 10) {
            assert_eq!(g.decide(hash(), 0, peer(p), t0), RepeatDecision::Seeded);
        }
        // A requester beyond the bound is never counted, so never rescued early.
        let late = peer(DECLINED_PEERS_MAX as u16 + 5);
        for _ in 0..5 {
            assert_eq!(g.decide(hash(), 0, late, t0 + secs(1)), RepeatDecision::Seeded);
        }
        assert_eq!(g.decide(hash(), 0, late, t0 + WINDOW), RepeatDecision::Serve);
    }

    #[test]
    fn an_upload_that_did_not_happen_frees_the_piece() {
        let t0 = Instant::now();
        let mut g = RepeatGuard::new(WINDOW);
        assert_eq!(g.decide(hash(), 0, peer(1), t0), RepeatDecision::Serve);
        g.forget(hash(), 0);
        assert_eq!(g.decide(hash(), 0, peer(2), t0), RepeatDecision::Serve);
    }
}
