//! An origin's super-seeding memory: which pieces it handed out, and when.
//!
//! After an origin sends a piece, it answers "seeded" to further requests for that piece for
//! its repeat window, so that the swarm takes the piece from whoever got it and the origin's
//! upload goes to pieces nobody has yet. The window counts from when the upload finished.
//!
//! Pure: time is an argument, so tests drive it directly; [`super::node`] holds one behind a
//! lock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::blob::BlobHash;

/// Pieces remembered for the repeat window; entries past their window are pruned when the
/// table grows beyond this.
pub const RECENT_UPLOADS_MAX: usize = 65_536;

/// What an origin does with a piece request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepeatDecision {
    /// Send the piece (recorded as handed out now).
    Serve,
    /// Answer "seeded": the piece went to another peer moments ago.
    Seeded,
}

/// The repeat window of every piece an origin handed out.
#[derive(Debug)]
pub struct RepeatGuard {
    window: Duration,
    last_upload: HashMap<(BlobHash, u32), Instant>,
}

impl RepeatGuard {
    pub fn new(window: Duration) -> RepeatGuard {
        RepeatGuard { window, last_upload: HashMap::new() }
    }

    /// Whether a request for `piece` at `now` is served; a served request is recorded.
    pub fn decide(&mut self, hash: BlobHash, piece: u32, now: Instant) -> RepeatDecision {
        if self.last_upload.get(&(hash, piece)).is_some_and(|&last| now < last + self.window) {
            return RepeatDecision::Seeded;
        }
        if self.last_upload.len() >= RECENT_UPLOADS_MAX {
            let window = self.window;
            self.last_upload.retain(|_, &mut last| now < last + window);
        }
        self.last_upload.insert((hash, piece), now);
        RepeatDecision::Serve
    }

    /// A served request's upload did not happen (no slot, or the requester went away): the
    /// piece may be handed out again at once.
    pub fn forget(&mut self, hash: BlobHash, piece: u32) {
        self.last_upload.remove(&(hash, piece));
    }

    /// An upload finished: the window starts again now, when the receiver holds the piece.
    pub fn renew(&mut self, hash: BlobHash, piece: u32, now: Instant) {
        self.last_upload.insert((hash, piece), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(5);

    fn hash() -> BlobHash {
        BlobHash::from_bytes([7; 32])
    }

    #[test]
    fn a_piece_is_served_once_per_window_counted_from_the_upload_end() {
        let t0 = Instant::now();
        let mut g = RepeatGuard::new(WINDOW);
        assert_eq!(g.decide(hash(), 3, t0), RepeatDecision::Serve);
        assert_eq!(g.decide(hash(), 3, t0 + Duration::from_secs(1)), RepeatDecision::Seeded);
        assert_eq!(g.decide(hash(), 4, t0 + Duration::from_secs(1)), RepeatDecision::Serve);
        g.renew(hash(), 3, t0 + Duration::from_secs(2));
        assert_eq!(g.decide(hash(), 3, t0 + Duration::from_secs(6)), RepeatDecision::Seeded);
        assert_eq!(g.decide(hash(), 3, t0 + Duration::from_secs(7)), RepeatDecision::Serve);
    }

    #[test]
    fn an_upload_that_did_not_happen_frees_the_piece() {
        let t0 = Instant::now();
        let mut g = RepeatGuard::new(WINDOW);
        assert_eq!(g.decide(hash(), 0, t0), RepeatDecision::Serve);
        g.forget(hash(), 0);
        assert_eq!(g.decide(hash(), 0, t0), RepeatDecision::Serve);
    }
}
