//! The response body of every route: bytes in memory, a stream from a blocking file reader, or an
//! upstream body. It also carries the request's capacity permit, so a slot of `thread-pool.max`
//! stays taken until the last byte is sent, not just until the headers are. An upstream body
//! also carries the lease on its upstream connection, given back to the pool when the body ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc;

use super::pool::Lease;

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
    Upstream {
        body: Incoming,
        /// Given back once the body ended; dropped (connection closed) if it never does.
        lease: Option<Lease>,
    },
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

    /// An upstream response body; `lease` goes back to its pool when the body has been read to
    /// the end (at once if it is already empty: hyper does not poll an empty body).
    pub fn upstream(body: Incoming, mut lease: Option<Lease>) -> Body {
        if body.is_end_stream()
            && let Some(l) = lease.take()
        {
            l.release();
        }
        Body {
            kind: Kind::Upstream { body, lease },
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
            Kind::Upstream { body, lease } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                // hyper stops polling once `is_end_stream` is true (a known length reached), so
                // the end is noticed on the last frame, not only on `None`.
                let ended = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    _ => false,
                };
                if ended && let Some(l) = lease.take() {
                    l.release();
                }
                polled.map_err(|e| e.into())
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Stream { remaining, .. } => *remaining == 0,
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream { remaining, .. } => SizeHint::with_exact(*remaining),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}
