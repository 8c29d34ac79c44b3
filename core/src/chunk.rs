//! Chunk boundaries by bytes (protocol.md §6.2).

/// Decides where chunks close: after appending an entry, the chunk closes once the bytes
/// accumulated (each JSON line plus one) reach the threshold. A chunk therefore passes the
/// threshold by at most one entry, and a boundary may fall inside a transaction.
#[derive(Clone, Copy, Debug)]
pub struct ChunkCutter {
    threshold: u64,
    bytes: u64,
}

impl ChunkCutter {
    /// A cutter for chunks of `threshold` bytes (`ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD`),
    /// resuming with `bytes` already in the open chunk.
    pub fn new(threshold: u64, bytes: u64) -> Self {
        assert!(threshold > 0, "chunk threshold must be positive");
        Self { threshold, bytes }
    }

    /// Accounts for an entry of `len` bytes; returns whether the chunk closes after it.
    pub fn push(&mut self, len: usize) -> bool {
        self.bytes += len as u64 + 1;
        if self.bytes >= self.threshold {
            self.bytes = 0;
            return true;
        }
        false
    }

    /// Bytes in the open chunk.
    pub fn open_bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_closes_on_the_entry_that_reaches_the_threshold() {
        let mut c = ChunkCutter::new(10, 0);
        assert!(!c.push(3)); // 4
        assert!(!c.push(4)); // 9
        assert!(c.push(0)); // 10: closes
        assert_eq!(c.open_bytes(), 0);
        assert!(c.push(100)); // one big entry closes its own chunk
    }

    #[test]
    fn resumes_with_the_open_chunk_size() {
        let mut c = ChunkCutter::new(10, 8);
        assert!(c.push(1));
    }
}
