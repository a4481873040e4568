//! A fixed-length bit set: which pieces a peer has, which chunk groups a partial blob holds.

/// A fixed-length set of bits, counted. Serialized LSB-first, `len.div_ceil(8)` bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Bitfield {
    words: Vec<u64>,
    len: u64,
    count: u64,
}

impl std::fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitfield({}/{})", self.count, self.len)
    }
}

impl Bitfield {
    /// `len` clear bits.
    pub fn new(len: u64) -> Bitfield {
        Bitfield { words: vec![0; len.div_ceil(64) as usize], len, count: 0 }
    }

    /// `len` set bits.
    pub fn full(len: u64) -> Bitfield {
        let mut bits = Bitfield::new(len);
        for i in 0..len {
            bits.set(i);
        }
        bits
    }

    /// Number of bits.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if the set has no bits at all (`len() == 0`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// True if every bit is set.
    pub fn is_full(&self) -> bool {
        self.count == self.len
    }

    /// Whether bit `i` is set. Panics if `i >= len()`.
    pub fn get(&self, i: u64) -> bool {
        assert!(i < self.len, "bit {i} out of range {}", self.len);
        self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Sets bit `i`; returns true if it was clear.
    pub fn set(&mut self, i: u64) -> bool {
        assert!(i < self.len, "bit {i} out of range {}", self.len);
        let word = &mut self.words[(i / 64) as usize];
        let mask = 1 << (i % 64);
        let was_clear = *word & mask == 0;
        *word |= mask;
        self.count += u64::from(was_clear);
        was_clear
    }

    /// Clears bit `i`; returns true if it was set.
    pub fn clear(&mut self, i: u64) -> bool {
        assert!(i < self.len, "bit {i} out of range {}", self.len);
        let word = &mut self.words[(i / 64) as usize];
        let mask = 1 << (i % 64);
        let was_set = *word & mask != 0;
        *word &= !mask;
        self.count -= u64::from(was_set);
        was_set
    }

    /// True if every bit in `range` is set.
    pub fn all_in(&self, range: std::ops::Range<u64>) -> bool {
        range.into_iter().all(|i| self.get(i))
    }

    /// The set bits, ascending.
    pub fn ones(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }

    /// Serialized form: `len.div_ceil(8)` bytes, bit `i` in byte `i / 8`, bit `i % 8`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n_bytes = self.len.div_ceil(8) as usize;
        let mut bytes = Vec::with_capacity(n_bytes);
        for word in &self.words {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        bytes.truncate(n_bytes);
        bytes
    }

    /// Parses [`Bitfield::to_bytes`]. `None` if the length is wrong or a bit past `len` is set.
    pub fn from_bytes(len: u64, bytes: &[u8]) -> Option<Bitfield> {
        if bytes.len() as u64 != len.div_ceil(8) {
            return None;
        }
        let mut bits = Bitfield::new(len);
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            bits.words[i] = u64::from_le_bytes(word);
        }
        let tail = len % 64;
        if tail != 0 && bits.words.last().is_some_and(|w| w >> tail != 0) {
            return None;
        }
        bits.count = bits.words.iter().map(|w| u64::from(w.count_ones())).sum();
        Some(bits)
    }
}

#[cfg(test)]
mod tests {
    use super::Bitfield;

    #[test]
    fn set_clear_count_and_round_trip() {
        let mut bits = Bitfield::new(70);
        assert!(bits.set(0) && bits.set(69) && !bits.set(69));
        assert_eq!(bits.count(), 2);
        let bytes = bits.to_bytes();
        assert_eq!(bytes.len(), 9);
        assert_eq!(Bitfield::from_bytes(70, &bytes), Some(bits.clone()));
        assert!(bits.clear(0) && !bits.clear(0));
        assert_eq!(bits.ones().collect::<Vec<_>>(), vec![69]);
        assert!(Bitfield::full(70).is_full());
    }

    #[test]
    fn parsing_refuses_wrong_lengths_and_stray_bits() {
        assert_eq!(Bitfield::from_bytes(70, &[0; 8]), None);
        let mut bytes = vec![0; 9];
        bytes[8] = 0x80; // bit 71 of a 70-bit field
        assert_eq!(Bitfield::from_bytes(70, &bytes), None);
        assert!(Bitfield::from_bytes(0, &[]).is_some_and(|b| b.is_empty()));
    }
}
