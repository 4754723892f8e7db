//! Upstream keep-alive connections to one process application: HTTP/1.1 connections to
//! `127.0.0.1:<PORT>` kept open between requests, so a proxied request costs no connect.
//!
//! Each [`ProcessApp`](super) has its own pools, one per kind of connection ([`Pooled`]): hyper's
//! client connections for requests served by hyper, plain sockets for the relay
//! ([`super::relay`]). A connection goes back to the pool only once its
//! response body has been read to the end (see [`Lease`]); the most recently used is taken first,
//! so under light load a few connections stay warm and the rest expire. Bounds: at most
//! [`MAX_IDLE`] idle connections, each closed after [`IDLE_TIMEOUT`] unused. The pool belongs to
//! one port: when the supervisor restarts the application on a new port, every idle connection to
//! the old one is dropped at the next checkout (a redeployed application gets a new pool with its
//! new `ProcessApp`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Idle connections kept per application: above `wrk -c50`-style concurrency, so a steady load
/// never churns connections; bounded so a burst cannot leave thousands of sockets open.
pub const MAX_IDLE: usize = 128;
/// How long an idle connection is kept. Shorter than the usual application servers' own
/// keep-alive timeouts (Node.js 5 s, nginx 75 s), so Steward normally closes first and rarely
/// sends a request on a connection the application is closing at that moment.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// The request body sent upstream: the client's, or nothing (a request without a body is sent
/// with `Empty`, so it can be sent again on another connection).
pub type ReqBody = Either<Incoming, Empty<Bytes>>;

pub type Sender = SendRequest<ReqBody>;

/// Errors opening an upstream connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing listens (the application exited since its health check).
    #[error("connect to {addr}: {error}")]
    Connect {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("HTTP handshake with {addr}: {error}")]
    Handshake {
        addr: SocketAddr,
        error: hyper::Error,
    },
}

/// A connection the pool can keep.
pub trait Pooled: Send + 'static {
    /// Whether it is known to be closed (then it is never handed out).
    fn is_closed(&self) -> bool;
}

impl Pooled for Sender {
    fn is_closed(&self) -> bool {
        SendRequest::is_closed(self)
    }
}

#[derive(Debug)]
pub struct Upstream<C = Sender> {
    idle: Mutex<Idle<C>>,
}

struct Idle<C> {
    port: u16,
    /// Oldest first: taken from the back (the warmest), dropped and reaped from the front.
    conns: VecDeque<(C, Instant)>,
    reaper: bool,
}

impl<C> Default for Upstream<C> {
    fn default() -> Self {
        Upstream {
            idle: Mutex::new(Idle {
                port: 0,
                conns: VecDeque::new(),
                reaper: false,
            }),
        }
    }
}

impl<C> std::fmt::Debug for Idle<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle")
            .field("port", &self.port)
            .field("conns", &self.conns.len())
            .finish()
    }
}

/// A connection on loan to one request. Given back with [`Lease::release`] once the response is
/// complete; dropped otherwise (the connection closes).
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Upstream>,
    port: u16,
    send: Sender,
}

impl Lease {
    pub fn release(self) {
        self.pool.put(self.port, self.send);
    }
}

impl<C: Pooled> Upstream<C> {
    pub fn new() -> Arc<Upstream<C>> {
        Arc::new(Upstream::default())
    }

    /// The warmest idle connection to `port` not known to be closed, if any.
    pub fn pop(&self, port: u16) -> Option<C> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.port != port {
            // Restarted on a new port: connections to the old process are useless.
            idle.conns.clear();
            idle.port = port;
        }
        while let Some((send, since)) = idle.conns.pop_back() {
            if since.elapsed() >= IDLE_TIMEOUT {
                // The newest is expired, so all are.
                idle.conns.clear();
                return None;
            }
            if !send.is_closed() {
                return Some(send);
            }
        }
        None
    }

    /// Gives `send` back: kept for the next request to `port`.
    pub fn put(self: &Arc<Self>, port: u16, send: C) {
        if send.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.port != port {
            if !idle.conns.is_empty() {
                // A late return from a process replaced since: keep the newer ones.
                return;
            }
            idle.port = port;
        }
        if idle.conns.len() >= MAX_IDLE {
            // Full: drop the oldest (the least likely to be taken before it expires).
            idle.conns.pop_front();
        }
        idle.conns.push_back((send, Instant::now()));
        if !idle.reaper {
            idle.reaper = true;
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    /// Idle connections now (tests).
    #[cfg(test)]
    fn idle_len(&self) -> usize {
        self.idle.lock().map(|i| i.conns.len()).unwrap_or(0)
    }
}

impl Upstream<Sender> {
    /// A lease on `send`, to be given back to this pool.
    pub fn lease(self: &Arc<Self>, port: u16, send: Sender) -> Lease {
        Lease {
            pool: Arc::clone(self),
            port,
            send,
        }
    }

    /// An idle connection to `port`, ready for a request, if the pool has one.
    pub async fn take(&self, port: u16) -> Option<Sender> {
        loop {
            let mut send = self.pop(port)?;
            // Given back as soon as its response ended: its connection task may not have
            // turned idle yet. Closed (by the application, or after `Connection: close`): next.
            if send.ready().await.is_ok() {
                return Some(send);
            }
        }
    }

    /// A new connection to `127.0.0.1:port`.
    pub async fn connect(port: u16) -> Result<Sender, ConnectError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|error| ConnectError::Connect { addr, error })?;
        let _ = stream.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| ConnectError::Handshake { addr, error })?;
        // The connection task ends when the connection closes or every handle is dropped.
        tokio::spawn(conn);
        Ok(send)
    }
}

/// Closes connections idle for longer than [`IDLE_TIMEOUT`] while the pool has any; ends when the
/// pool is empty or gone (a new one is started by the next return).
async fn reap<C: Pooled>(pool: Weak<Upstream<C>>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT / 2).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = idle
            .conns
            .iter()
            .position(|(s, since)| since.elapsed() < IDLE_TIMEOUT && !s.is_closed())
            .unwrap_or(idle.conns.len());
        idle.conns.drain(..fresh);
        if idle.conns.is_empty() {
            idle.reaper = false;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend answering every request on a connection with an empty 204, counting
    /// connections.
    async fn backend() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(k) = s.read(&mut buf).await {
                        if k == 0 {
                            return;
                        }
                        let r = b"HTTP/1.1 204 No Content\r\n\r\n";
                        if s.write_all(r).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    async fn get(send: &mut Sender) -> u16 {
        let req = hyper::Request::get("/")
            .header("host", "x")
            .body(Either::Right(Empty::new()))
            .expect("request");
        send.send_request(req)
            .await
            .expect("send")
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn returned_connections_are_reused_and_dropped_on_a_new_port() {
        let (port, accepted) = backend().await;
        let pool = Upstream::<Sender>::new();
        assert!(pool.take(port).await.is_none());
        let mut send = Upstream::<Sender>::connect(port).await.expect("connect");
        assert_eq!(get(&mut send).await, 204);
        pool.lease(port, send).release();
        assert_eq!(pool.idle_len(), 1);
        let mut again = pool.take(port).await.expect("pooled");
        assert_eq!(get(&mut again).await, 204);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        pool.lease(port, again).release();
        // The application now listens elsewhere: the old connection is not handed out.
        assert!(pool.take(port + 1).await.is_none());
        assert_eq!(pool.idle_len(), 0);
    }

    #[tokio::test]
    async fn the_idle_count_is_bounded() {
        let (port, _) = backend().await;
        let pool = Upstream::<Sender>::new();
        for _ in 0..MAX_IDLE + 3 {
            let send = Upstream::<Sender>::connect(port).await.expect("connect");
            pool.lease(port, send).release();
        }
        assert_eq!(pool.idle_len(), MAX_IDLE);
    }
}
