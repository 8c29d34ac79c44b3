//! A response body made of a few pieces sent one after another, none copied into a shared
//! buffer: a chunk's bytes go out as the store handed them over (shared between the responses
//! that send the same chunk at once, `io-real`'s `SharedReads`), between a bracket and the
//! control messages. Its exact length is known, so the response has a `Content-Length` (a
//! cache in front keeps the answer whole) instead of chunked transfer encoding.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

/// The pieces of a body, in order.
#[derive(Debug, Default)]
pub(super) struct Pieces {
    pieces: VecDeque<Bytes>,
    /// Bytes not yet sent.
    remaining: u64,
}

impl Pieces {
    /// `pieces` in order; empty ones are dropped.
    pub(super) fn new(pieces: impl IntoIterator<Item = Bytes>) -> Self {
        let pieces: VecDeque<Bytes> = pieces.into_iter().filter(|p| !p.is_empty()).collect();
        let remaining = pieces.iter().map(|p| p.len() as u64).sum();
        Self { pieces, remaining }
    }

    /// Every piece joined (tests).
    #[cfg(test)]
    pub(super) fn concat(&self) -> Vec<u8> {
        self.pieces.iter().flat_map(|p| p.iter().copied()).collect()
    }
}

impl HttpBody for Pieces {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(this.pieces.pop_front().map(|piece| {
            this.remaining -= piece.len() as u64;
            Ok(Frame::data(piece))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn the_pieces_are_sent_in_order_without_the_empty_ones_and_with_their_exact_length() {
        let chunk = Bytes::from(vec![b'x'; 100_000]);
        let body = Pieces::new([
            Bytes::from_static(b"["),
            chunk.clone(),
            Bytes::new(),
            Bytes::from_static(b"]"),
        ]);
        assert_eq!(body.size_hint().exact(), Some(100_002));
        let mut body = body;
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(frame.expect("infallible").into_data().expect("data"));
        }
        assert_eq!(frames.len(), 3, "the empty piece is not a frame");
        assert_eq!(
            frames[1].as_ptr(),
            chunk.as_ptr(),
            "the chunk is sent, not copied"
        );
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }
}
