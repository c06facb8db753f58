use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::BoxError;

pin_project! {
    /// The request body [`Bearer`](super::Bearer) hands to its inner service: either buffered
    /// (and so replayable) or the caller's stream.
    #[project = ReplayBodyProj]
    pub enum ReplayBody<B> {
        /// A buffered body.
        Buffered {
            /// The bytes not yet yielded.
            data: Option<Bytes>,
        },
        /// A streamed body, sent once.
        Streaming {
            /// The caller's body.
            #[pin]
            body: B,
        },
    }
}

impl<B> ReplayBody<B> {
    pub(crate) fn buffered(data: Bytes) -> Self {
        Self::Buffered {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl<B> std::fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Buffered { data } => f
                .debug_struct("Buffered")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Self::Streaming { .. } => f.write_str("Streaming"),
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ReplayBodyProj::Buffered { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ReplayBodyProj::Streaming { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Buffered { data } => data.is_none(),
            Self::Streaming { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Buffered { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Self::Streaming { body } => body.size_hint(),
        }
    }
}
