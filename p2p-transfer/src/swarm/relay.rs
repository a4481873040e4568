//! Cut-through relay: a piece this node is receiving is served to peers as it arrives, chunk
//! group by chunk group, each group only once it has verified against the blob's root.
//!
//! Store-and-forward makes a piece cross the swarm one piece time per hop (a 256 KiB piece at
//! a 1 MiB/s share of an upload cap: 0.25 s), and while a flash crowd holds nothing yet its
//! upload idles. A relay passes the piece on a few chunk groups behind its own download.
//!
//! ```text
//!   fetch_piece (download)           Relays                      serve_piece (upload)
//!   status Ok ──── start(hash, piece) ─► announce ─► Incoming{hash, piece} to interested peers
//!   each verified group (with the parents before it) ─ push ─► segment ─► each relayed stream
//!   decoder done ─────── complete ─► Complete ─► stream finished
//!   error / cancel / abort ── (drop) ─► Lost ─► the rest from the store if it holds the piece
//!                                               now, else reset with STREAM_RELAY_LOST
//! ```
//!
//! **Invariant:** a segment is pushed only after the decoder verified it, so a relay serves
//! exactly the bytes an honest sender would (the encoding of a piece is deterministic), and a
//! corrupt upstream costs the relayed requester a reset, never a bad byte or a ban of the
//! relay.
//!
//! **Invariant:** at most one relay per piece on a node; an endgame duplicate of a piece
//! being relayed is not relayed itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{broadcast, watch};

use crate::blob::{BlobHash, BlobSpec};

/// Relay announcements queued for the links' have-forwarders; a forwarder that lags behind
/// skips announcements (they are hints: the piece's "have" follows anyway).
pub const RELAY_ANNOUNCE_QUEUE: usize = 1024;

/// How a relayed piece's transfer ended, so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayEnd {
    /// Still arriving.
    Open,
    /// Every segment is in; the piece is verified whole.
    Complete,
    /// The transfer failed or was cancelled before the piece was whole.
    Lost,
}

/// The verified prefix of a piece's encoding (parents and chunk groups in wire order).
#[derive(Debug)]
pub(crate) struct RelayState {
    pub segments: Vec<Bytes>,
    pub end: RelayEnd,
}

/// A piece of a blob at one size (a request naming another size gets no relay: its proofs
/// could not verify).
type Key = (BlobSpec, u32);

/// The pieces a node is relaying.
#[derive(Debug)]
pub(crate) struct Relays {
    running: Mutex<HashMap<Key, Arc<watch::Sender<RelayState>>>>,
    announce: broadcast::Sender<(BlobHash, u32)>,
}

impl Relays {
    pub fn new() -> Relays {
        Relays {
            running: Mutex::new(HashMap::new()),
            announce: broadcast::channel(RELAY_ANNOUNCE_QUEUE).0,
        }
    }

    /// Starts relaying `piece` of `spec` and announces it; `None` if it is relayed already.
    pub fn start(self: &Arc<Self>, spec: BlobSpec, piece: u32) -> Option<RelayWriter> {
        let key = (spec, piece);
        let tx = {
            let mut running = self.running.lock().expect("relays lock");
            if running.contains_key(&key) {
                return None;
            }
            let state = RelayState { segments: Vec::new(), end: RelayEnd::Open };
            let tx = Arc::new(watch::Sender::new(state));
            running.insert(key, tx.clone());
            tx
        };
        let _ = self.announce.send((spec.hash, piece));
        Some(RelayWriter { relays: self.clone(), key, tx, finished: false })
    }

    /// The relay of `piece` of `spec`, if one runs.
    pub fn subscribe(&self, spec: BlobSpec, piece: u32) -> Option<watch::Receiver<RelayState>> {
        self.running.lock().expect("relays lock").get(&(spec, piece)).map(|tx| tx.subscribe())
    }

    /// The pieces of `hash` being relayed.
    pub fn pieces_of(&self, hash: BlobHash) -> Vec<u32> {
        let running = self.running.lock().expect("relays lock");
        running.keys().filter(|(spec, _)| spec.hash == hash).map(|&(_, piece)| piece).collect()
    }

    /// Pieces as their relays start.
    pub fn announcements(&self) -> broadcast::Receiver<(BlobHash, u32)> {
        self.announce.subscribe()
    }

    /// Pieces being relayed.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.running.lock().expect("relays lock").len()
    }
}

/// The receiving side of one relay, held by the request that fetches the piece. Dropping it
/// before [`RelayWriter::complete`] marks the relay lost.
#[derive(Debug)]
pub(crate) struct RelayWriter {
    relays: Arc<Relays>,
    key: Key,
    tx: Arc<watch::Sender<RelayState>>,
    finished: bool,
}

impl RelayWriter {
    /// Appends a verified segment and wakes the relayed streams.
    pub fn push(&self, segment: Bytes) {
        self.tx.send_modify(|state| state.segments.push(segment));
    }

    /// The piece is whole and verified.
    pub fn complete(mut self) {
        self.finish(RelayEnd::Complete);
    }

    fn finish(&mut self, end: RelayEnd) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.tx.send_modify(|state| state.end = end);
        let mut running = self.relays.running.lock().expect("relays lock");
        if running.get(&self.key).is_some_and(|tx| Arc::ptr_eq(tx, &self.tx)) {
            running.remove(&self.key);
        }
    }
}

impl Drop for RelayWriter {
    fn drop(&mut self) {
        self.finish(RelayEnd::Lost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_runs_once_per_piece_and_ends_complete_or_lost() {
        let relays = Arc::new(Relays::new());
        let hash = BlobHash::of(b"blob");
        let spec = BlobSpec { hash, size: 1 << 20 };
        let mut announced = relays.announcements();
        let writer = relays.start(spec, 3).unwrap();
        assert_eq!(announced.try_recv().unwrap(), (hash, 3));
        assert!(relays.start(spec, 3).is_none(), "one relay per piece");
        assert_eq!(relays.pieces_of(hash), vec![3]);
        assert!(relays.subscribe(BlobSpec { hash, size: 1 << 19 }, 3).is_none(), "other size");
        let mut reader = relays.subscribe(spec, 3).unwrap();
        writer.push(Bytes::from_static(b"ab"));
        writer.push(Bytes::from_static(b"cd"));
        {
            let state = reader.borrow_and_update();
            assert_eq!(state.segments.len(), 2);
            assert_eq!(state.end, RelayEnd::Open);
        }
        writer.complete();
        // The sender is gone with the writer; the final state stays readable.
        assert!(reader.has_changed().is_err());
        assert_eq!(reader.borrow_and_update().end, RelayEnd::Complete);
        assert_eq!(relays.len(), 0);
        assert!(relays.subscribe(spec, 3).is_none());

        let writer = relays.start(spec, 3).expect("a finished relay frees its piece");
        let reader = relays.subscribe(spec, 3).unwrap();
        drop(writer);
        assert_eq!(reader.borrow().end, RelayEnd::Lost, "dropped before complete is lost");
        assert_eq!(relays.len(), 0);
    }
}
