//! The Master's HTTPS listener: TLS handshakes run in their own tasks, each bounded in time, and
//! only finished connections reach axum, so a client that stalls in its handshake delays nobody.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::conn::{Registry, Tracked};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for axum to take them.
const BACKLOG: usize = 128;

/// A [`axum::serve::Listener`] yielding TLS connections.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<Tracked<TcpStream>>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Accepts TCP connections on `tcp` (registered in `registry`, so the cap and timeouts apply to
/// handshakes too) and completes their handshakes with `config`.
pub fn listen(
    tcp: TcpListener,
    config: Arc<rustls::ServerConfig>,
    registry: Arc<Registry>,
) -> std::io::Result<TlsListener> {
    let local = tcp.local_addr()?;
    let (tx, rx) = mpsc::channel(BACKLOG);
    let acceptor = TlsAcceptor::from(config);
    let accepting = tokio::spawn(async move {
        loop {
            let (sock, remote) = super::conn::accept(&tcp, &registry).await;
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                // A failed or slow handshake (a plain-HTTP client, a scanner) is dropped quietly:
                // logging each would let anyone fill the log.
                if let Ok(Ok(stream)) =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await
                {
                    let _ = tx.send((stream, remote)).await;
                }
            });
        }
    });
    Ok(TlsListener {
        rx,
        local,
        accepting,
    })
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<Tracked<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accepting task ended (it only does when aborted): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
