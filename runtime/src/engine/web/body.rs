//! The response body of every route: bytes in memory, a stream from a blocking file reader, or an
//! upstream body. It also carries the request's capacity permit, so a slot of `thread-pool.max`
//! stays taken until the last byte is sent, not just until the headers are.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Body {
    kind: Kind,
    _permit: Option<OwnedSemaphorePermit>,
}

enum Kind {
    Full(Option<Bytes>),
    Stream {
        rx: mpsc::Receiver<std::io::Result<Bytes>>,
        remaining: u64,
    },
    Upstream(Incoming),
}

impl Body {
    pub fn empty() -> Body {
        Body {
            kind: Kind::Full(None),
            _permit: None,
        }
    }

    pub fn full(bytes: impl Into<Bytes>) -> Body {
        let bytes = bytes.into();
        Body {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            _permit: None,
        }
    }

    /// `len` bytes arriving on `rx` (a reader thread sends them).
    pub fn stream(rx: mpsc::Receiver<std::io::Result<Bytes>>, len: u64) -> Body {
        Body {
            kind: Kind::Stream { rx, remaining: len },
            _permit: None,
        }
    }

    pub fn upstream(body: Incoming) -> Body {
        Body {
            kind: Kind::Upstream(body),
            _permit: None,
        }
    }

    pub fn with_permit(mut self, permit: Option<OwnedSemaphorePermit>) -> Body {
        self._permit = permit;
        self
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream { rx, remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(Ok(b))) => {
                        *remaining = remaining.saturating_sub(b.len() as u64);
                        Poll::Ready(Some(Ok(Frame::data(b))))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                    // The reader stopped early (file truncated): fail the response rather than
                    // send fewer bytes than Content-Length promised.
                    Poll::Ready(None) => Poll::Ready(Some(Err("file ended early".into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
            Kind::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(|e| e.into()),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Stream { remaining, .. } => *remaining == 0,
            Kind::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream { remaining, .. } => SizeHint::with_exact(*remaining),
            Kind::Upstream(b) => b.size_hint(),
        }
    }
}
