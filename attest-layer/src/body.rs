//! Reading a body into memory up to a cap, hashing each chunk as it arrives.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::Body;
use pin_project_lite::pin_project;

use crate::digest::{DigestAlgorithm, DigestHasher};
use crate::error::BoxError;

/// Why a body could not be collected.
#[derive(Debug)]
pub(crate) enum CollectError {
    /// More than `limit` bytes arrived.
    TooLarge,
    /// The body failed.
    Body(BoxError),
}

/// A collected body and the digests computed while it streamed in.
pub(crate) type Collected = (Bytes, Vec<(DigestAlgorithm, Vec<u8>)>);

pin_project! {
    /// Collects a body up to `limit` bytes, feeding every data frame to a hasher.
    pub(crate) struct Collect<B> {
        #[pin]
        body: B,
        buf: BytesMut,
        limit: usize,
        hasher: Option<DigestHasher>,
    }
}

impl<B> Collect<B> {
    pub(crate) fn new(body: B, limit: usize, hasher: Option<DigestHasher>) -> Self {
        Self {
            body,
            buf: BytesMut::new(),
            limit,
            hasher,
        }
    }
}

impl<B> Collect<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    pub(crate) fn poll_collect(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Collected, CollectError>> {
        let mut this = self.project();
        loop {
            match ready!(this.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers are not covered by the signature and are dropped.
                    if let Ok(data) = frame.into_data() {
                        let chunk = data_bytes(data);
                        if this.buf.len() + chunk.len() > *this.limit {
                            return Poll::Ready(Err(CollectError::TooLarge));
                        }
                        if let Some(h) = this.hasher.as_mut() {
                            h.update(&chunk);
                        }
                        this.buf.extend_from_slice(&chunk);
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(CollectError::Body(e.into()))),
                None => {
                    let digests = this
                        .hasher
                        .take()
                        .map(DigestHasher::finish)
                        .unwrap_or_default();
                    return Poll::Ready(Ok((std::mem::take(this.buf).freeze(), digests)));
                }
            }
        }
    }
}

fn data_bytes<D: bytes::Buf>(mut d: D) -> Bytes {
    d.copy_to_bytes(d.remaining())
}
