//! Chunk bodies shared by the readers that hold them at the same time.
//!
//! A response keeps its chunk's bytes until the client has taken them all. A thousand clients
//! catching up on the same 10 MiB snapshot chunk each read their own copy (and the HTTP layer
//! a second one), 7.7 GB in all. Here a read of a large body first looks for a copy another
//! response still holds: the map keeps only weak references, so a body lives exactly as long
//! as some response needs it, and memory is O(distinct chunks being sent), not O(requests).
//!
//! A key names bytes that never change while the key can be asked for: a snapshot chunk is
//! written once and published only when complete, and a log range is read only once durable
//! (recovery truncates only what was never durable). Both name their shape's handle, which is
//! never reused for other contents.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use ampere_core::shape::ShapeHandle;
use bytes::Bytes;

/// Bodies at least this long are shared; smaller ones (live tails) are read per request.
pub(super) const SHARED_MIN_LEN: usize = 64 * 1024;

/// What a body is of.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(super) enum ReadKey {
    /// A snapshot chunk, by index.
    SnapshotChunk { handle: ShapeHandle, index: u64 },
    /// `len` bytes of `log.json` from `pos`.
    Log {
        handle: ShapeHandle,
        pos: u64,
        len: u64,
    },
}

/// The bodies responses hold now, by what they are of.
#[derive(Default)]
pub(super) struct SharedReads {
    live: Mutex<Live>,
}

#[derive(Default)]
struct Live {
    bodies: HashMap<ReadKey, Weak<Body>>,
    /// Entries after the last sweep of dead ones: the next sweep comes at twice that.
    swept_len: usize,
}

/// One body, owned by the [`Bytes`] handed out.
struct Body(Vec<u8>);

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl SharedReads {
    /// The body `key` names: the copy a response still holds, else `read()`'s, which is then
    /// offered to the next reader if it is large enough to be worth sharing.
    pub(super) fn get_or_read(
        &self,
        key: ReadKey,
        read: impl FnOnce() -> io::Result<Vec<u8>>,
    ) -> io::Result<Bytes> {
        if let Some(body) = self.lock().bodies.get(&key).and_then(Weak::upgrade) {
            return Ok(Bytes::from_owner(SharedBody(body)));
        }
        let bytes = read()?;
        if bytes.len() < SHARED_MIN_LEN {
            return Ok(Bytes::from(bytes));
        }
        let body = Arc::new(Body(bytes));
        let mut live = self.lock();
        // Two readers that missed together both read; the later one's copy is offered.
        live.bodies.insert(key, Arc::downgrade(&body));
        live.sweep_if_grown();
        Ok(Bytes::from_owner(SharedBody(body)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Entries in the map, dead or alive (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().bodies.len()
    }
}

impl Live {
    /// Drops the entries of bodies no response holds any more, once the map doubled since the
    /// last sweep: amortised O(1) per insert, and the map stays O(bodies held).
    fn sweep_if_grown(&mut self) {
        if self.bodies.len() < 2 * self.swept_len.max(16) {
            return;
        }
        self.bodies.retain(|_, body| body.strong_count() > 0);
        self.swept_len = self.bodies.len();
    }
}

/// A shared body as [`Bytes`]' owner.
struct SharedBody(Arc<Body>);

impl AsRef<[u8]> for SharedBody {
    fn as_ref(&self) -> &[u8] {
        &self.0 .0
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn chunk(handle: &str, index: u64) -> ReadKey {
        ReadKey::SnapshotChunk {
            handle: ShapeHandle::from_string(handle.to_owned()),
            index,
        }
    }

    #[test]
    fn readers_of_a_large_body_held_by_a_response_share_its_bytes_instead_of_reading_again() {
        let shared = SharedReads::default();
        let reads = Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            Ok(vec![7u8; SHARED_MIN_LEN])
        };
        let first = shared.get_or_read(chunk("1-1", 0), read).expect("read");
        let second = shared.get_or_read(chunk("1-1", 0), read).expect("read");
        assert_eq!(reads.get(), 1);
        assert_eq!(first, second);
        assert_eq!(first.as_ptr(), second.as_ptr(), "one allocation for both");
    }

    #[test]
    fn a_body_no_response_holds_any_more_is_read_again() {
        let shared = SharedReads::default();
        let reads = Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            Ok(vec![1u8; SHARED_MIN_LEN])
        };
        drop(shared.get_or_read(chunk("1-1", 0), read).expect("read"));
        drop(shared.get_or_read(chunk("1-1", 0), read).expect("read"));
        assert_eq!(reads.get(), 2, "nothing is kept beyond its last holder");
    }

    #[test]
    fn small_bodies_and_other_keys_are_never_shared() {
        let shared = SharedReads::default();
        let small = shared
            .get_or_read(chunk("1-1", 0), || Ok(vec![1u8; 10]))
            .expect("read");
        let large = shared
            .get_or_read(chunk("1-1", 1), || Ok(vec![2u8; SHARED_MIN_LEN]))
            .expect("read");
        let other = shared
            .get_or_read(chunk("2-1", 1), || Ok(vec![3u8; SHARED_MIN_LEN]))
            .expect("read");
        assert_eq!(small.len(), 10);
        assert_ne!(large.as_ptr(), other.as_ptr());
        assert_eq!(other[0], 3);
        assert_eq!(shared.len(), 2, "the small body was not offered");
    }

    #[test]
    fn a_failed_read_is_returned_and_remembered_by_nobody() {
        let shared = SharedReads::default();
        let failed = shared.get_or_read(chunk("1-1", 0), || Err(io::Error::other("disk")));
        assert!(failed.is_err());
        let read = shared
            .get_or_read(chunk("1-1", 0), || Ok(vec![4u8; SHARED_MIN_LEN]))
            .expect("read");
        assert_eq!(read[0], 4);
    }

    #[test]
    fn entries_of_released_bodies_are_swept_as_the_map_grows() {
        let shared = SharedReads::default();
        for index in 0..1_000 {
            drop(
                shared
                    .get_or_read(chunk("1-1", index), || Ok(vec![0u8; SHARED_MIN_LEN]))
                    .expect("read"),
            );
        }
        assert!(
            shared.len() <= 32,
            "{} entries for no held body",
            shared.len()
        );
    }
}
