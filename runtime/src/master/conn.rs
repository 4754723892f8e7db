//! The Master's connections: a cap, a header timeout and an idle timeout, so that neither slow
//! clients nor a flood of idle connections can starve `/healthz`, heartbeats or pushes.
//!
//! Every accepted connection is registered. One that has no request in flight is *idle*: it must
//! send a complete request head within [`HEADER_TIMEOUT`] of opening, and its next one within
//! [`IDLE_TIMEOUT`] of its last response; otherwise it is closed. At the cap
//! ([`max_connections`]) a new connection closes the oldest idle one to make room (one that is
//! serving a request, such as an event stream or a push, is never closed for that); when none is
//! idle, the new one is closed instead. Closing means `shutdown(2)` on the socket: the connection's
//! task sees the end of its stream and finishes, whatever it was waiting for.
//!
//! A request counts as in flight from the moment the router sees it until its response body has
//! been sent or dropped (see [`Conn::begin`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::log;

/// A new connection must send its first request head within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A kept-alive connection must send its next request head within this of the last response.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The cap when the descriptor limit allows it.
pub const MAX_CONNECTIONS: usize = 4096;
/// Descriptors kept for everything but client connections (the repository, `git` pipes, logs).
const RESERVED_FDS: u64 = 256;
/// How often idle connections are checked against their timeouts.
const SWEEP: Duration = Duration::from_secs(1);

/// Raises the soft limit on open descriptors to the hard limit (a Master holds one per client
/// connection) and returns the connection cap that fits: [`MAX_CONNECTIONS`], or less when the
/// descriptors do not allow it (half of what is left after a reserve, at least 64).
pub fn raise_fd_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit fill or read a plain struct we own.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            1024
        } else {
            if lim.rlim_cur < lim.rlim_max {
                let want = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
            lim.rlim_cur
        }
    };
    cap_for(soft)
}

/// The connection cap for a descriptor limit of `soft`.
pub fn cap_for(soft: u64) -> usize {
    let usable = soft.saturating_sub(RESERVED_FDS) / 2;
    (usable as usize).clamp(64, MAX_CONNECTIONS)
}

/// One client connection's state, shared by its stream, the registry and the requests on it.
pub struct Conn {
    id: u64,
    fd: RawFd,
    in_flight: AtomicUsize,
    /// When it last became idle (opened, or finished a response), and whether it served before.
    idle_since: Mutex<(Instant, bool)>,
    /// Whether `fd` still belongs to this connection; guards against acting on a reused number.
    open: Mutex<bool>,
}

impl Conn {
    /// Marks a request in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
    }

    /// Whether this idle connection has outlived its timeout at `now`.
    fn expired(&self, now: Instant) -> bool {
        if !self.idle() {
            return false;
        }
        let (since, served) = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        let limit = if served { IDLE_TIMEOUT } else { HEADER_TIMEOUT };
        now.saturating_duration_since(since) >= limit
    }

    /// Ends the connection: its reads see the end of the stream, its writes fail.
    fn close(&self) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if *open {
            // SAFETY: `fd` is this connection's socket while `open` holds (see `Tracked::drop`).
            unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        }
    }

    /// Whether the client has closed its side (or the connection broke): for work that runs long
    /// without reading or writing the connection, such as a push's pre-receive step.
    pub fn hung_up(&self) -> bool {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if !*open {
            return true;
        }
        let mut p = libc::pollfd {
            fd: self.fd,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one pollfd we own, no wait; `fd` is valid while `open` holds.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }
}

/// A request in flight on a connection (see [`Conn::begin`]).
pub struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = (Instant::now(), true);
        }
    }
}

/// Every open connection, oldest first.
pub struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
    next: AtomicU64,
    cap: usize,
}

impl Registry {
    pub fn new(cap: usize) -> Arc<Registry> {
        let r = Arc::new(Registry {
            conns: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
            cap,
        });
        tokio::spawn(sweep(Arc::downgrade(&r)));
        r
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn len(&self) -> usize {
        self.conns.lock().map_or(0, |c| c.len())
    }

    /// Registers a new connection, making room at the cap; `None`: no room (close it).
    fn admit(&self, fd: RawFd) -> Option<Arc<Conn>> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() >= self.cap {
            let oldest_idle = conns.iter().find(|(_, c)| c.idle()).map(|(id, _)| *id);
            let Some(victim) = oldest_idle.and_then(|id| conns.remove(&id)) else {
                log::limited(
                    log::Level::Warning,
                    "Master-0061",
                    &format!(
                        "{} connections, all busy: refusing a new one (the cap)",
                        conns.len()
                    ),
                );
                return None;
            };
            victim.close();
            log::limited(
                log::Level::Warning,
                "Master-0061",
                &format!(
                    "{} connections (the cap): closing the oldest idle one for a new one",
                    self.cap
                ),
            );
        }
        let conn = Arc::new(Conn {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            fd,
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new((Instant::now(), false)),
            open: Mutex::new(true),
        });
        conns.insert(conn.id, conn.clone());
        Some(conn)
    }

    fn remove(&self, id: u64) {
        if let Ok(mut c) = self.conns.lock() {
            c.remove(&id);
        }
    }
}

/// Closes idle connections past their timeouts, until the registry is gone.
async fn sweep(registry: std::sync::Weak<Registry>) {
    loop {
        tokio::time::sleep(SWEEP).await;
        let Some(r) = registry.upgrade() else { return };
        let now = Instant::now();
        let expired: Vec<Arc<Conn>> = {
            let mut conns = r.conns.lock().unwrap_or_else(|p| p.into_inner());
            let ids: Vec<u64> = conns
                .iter()
                .filter(|(_, c)| c.expired(now))
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| conns.remove(id)).collect()
        };
        for c in expired {
            c.close();
        }
    }
}

/// A registered connection's stream.
pub struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl<S> Tracked<S> {
    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl<S> Drop for Tracked<S> {
    fn drop(&mut self) {
        // Before the socket closes (fields drop after this): nothing may shut down its number
        // once the kernel can hand it to another file.
        *self.conn.open.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.registry.remove(self.conn.id);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts the next connection the registry has room for. Accept errors (out of descriptors)
/// pause briefly instead of spinning, and are logged at most once a minute.
pub async fn accept(
    tcp: &TcpListener,
    registry: &Arc<Registry>,
) -> (Tracked<TcpStream>, SocketAddr) {
    loop {
        let (sock, remote) = match tcp.accept().await {
            Ok(x) => x,
            Err(e) => {
                log::limited(
                    log::Level::Warning,
                    "Master-0060",
                    &format!("Cannot accept a connection: {e}"),
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small requests and SSE events should leave at once, not after Nagle's delay.
        let _ = sock.set_nodelay(true);
        let Some(conn) = registry.admit(sock.as_raw_fd()) else {
            continue; // dropped: closed
        };
        let stream = Tracked {
            inner: sock,
            conn,
            registry: registry.clone(),
        };
        return (stream, remote);
    }
}

/// The plain-HTTP listener.
pub struct Plain {
    pub tcp: TcpListener,
    pub registry: Arc<Registry>,
}

impl axum::serve::Listener for Plain {
    type Io = Tracked<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        accept(&self.tcp, &self.registry).await
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// What a request knows of its connection: the client's address and the connection's state.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub conn: Arc<Conn>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Plain>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Plain>) -> Self {
        Peer {
            addr: *stream.remote_addr(),
            conn: stream.io().conn().clone(),
        }
    }
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, super::https::TlsListener>,
    > for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, super::https::TlsListener>) -> Self {
        Peer {
            addr: *stream.remote_addr(),
            conn: stream.io().get_ref().0.conn().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_follows_the_descriptor_limit() {
        assert_eq!(cap_for(1024), 384);
        assert_eq!(cap_for(20_000), MAX_CONNECTIONS);
        assert_eq!(cap_for(100), 64);
    }

    fn conn(served: bool, since: Instant) -> Conn {
        Conn {
            id: 0,
            fd: -1,
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new((since, served)),
            open: Mutex::new(false),
        }
    }

    #[test]
    fn idle_connections_expire_busy_ones_never() {
        let t0 = Instant::now();
        let fresh = conn(false, t0);
        assert!(!fresh.expired(t0 + HEADER_TIMEOUT / 2));
        assert!(fresh.expired(t0 + HEADER_TIMEOUT));
        let kept_alive = conn(true, t0);
        assert!(!kept_alive.expired(t0 + HEADER_TIMEOUT));
        assert!(kept_alive.expired(t0 + IDLE_TIMEOUT));
        let busy = Arc::new(conn(false, t0));
        let guard = busy.begin();
        assert!(!busy.expired(t0 + IDLE_TIMEOUT * 10));
        drop(guard);
        let (since, served) = *busy.idle_since.lock().expect("lock");
        assert!(served && since >= t0);
    }
}
