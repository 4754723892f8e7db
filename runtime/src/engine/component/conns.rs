//! Keep-alive HTTP/1.1 connections from the component engine to its components (timer callbacks
//! and message deliveries): a POST costs no connect while the component keeps its connections
//! open, as the web engine's proxy pool does for process applications (`web::pool`, whose
//! request body type is the proxied client's; this one sends whole bodies).
//!
//! Bounds: at most [`MAX_IDLE`] idle connections, each dropped once unused for [`IDLE_TIMEOUT`]
//! (looked at whenever one is taken or given back). A connection goes back only after its
//! answer was read to the end, and only a short answer is read ([`MAX_ANSWER`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};

use super::consume::DeliveryError;

/// Idle connections kept, over every component: above the usual `thread-pool.max`.
const MAX_IDLE: usize = 128;
/// Shorter than common keep-alive timeouts of HTTP servers (Node.js 5 s), so that the engine
/// rarely sends on a connection the component is closing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// The longest answer body read to keep its connection; a longer one closes it.
const MAX_ANSWER: usize = 64 * 1024;

type Sender = SendRequest<Full<Bytes>>;

#[derive(Default)]
pub(super) struct Conns {
    /// `(port, connection, idle since)`, oldest first.
    idle: Mutex<Vec<(u16, Sender, Instant)>>,
}

impl Conns {
    /// `POST path` to 127.0.0.1:`port`; the status answered.
    pub(super) async fn post(
        &self,
        port: u16,
        path: &str,
        headers: &[(HeaderName, String)],
        body: Bytes,
    ) -> Result<u16, DeliveryError> {
        let mut req = hyper::Request::post(path)
            .header(hyper::header::HOST, format!("127.0.0.1:{port}"))
            .body(Full::new(body))
            .map_err(|e| DeliveryError::Http(e.to_string()))?;
        for (k, v) in headers {
            // A value that is not a valid header (a control character in a message's content
            // type) is left out rather than failing the delivery.
            if let Ok(v) = HeaderValue::from_str(v) {
                req.headers_mut().insert(k.clone(), v);
            }
        }
        let (mut send, reused) = match self.take(port).await {
            Some(s) => (s, true),
            None => (connect(port).await?, false),
        };
        let resp = match send.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut e) => {
                // Not written at all (the component closed the idle connection): the request
                // comes back untouched and goes out once more on a new connection.
                let (true, Some(req)) = (reused, e.take_message()) else {
                    return Err(DeliveryError::Http(e.into_error().to_string()));
                };
                send = connect(port).await?;
                send.send_request(req)
                    .await
                    .map_err(|e| DeliveryError::Http(e.to_string()))?
            }
        };
        let status = resp.status().as_u16();
        // Read to its end so the connection can carry the next POST.
        if Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .is_ok()
        {
            self.put(port, send);
        }
        Ok(status)
    }

    /// An idle connection to `port` that is ready for a request.
    async fn take(&self, port: u16) -> Option<Sender> {
        loop {
            let mut send = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                idle.retain(|(_, s, since)| since.elapsed() < IDLE_TIMEOUT && !s.is_closed());
                let at = idle.iter().rposition(|(p, _, _)| *p == port)?;
                idle.remove(at).1
            };
            // Given back as soon as its answer ended: its connection task may not be idle yet.
            if send.ready().await.is_ok() {
                return Some(send);
            }
        }
    }

    fn put(&self, port: u16, send: Sender) {
        if send.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(_, s, since)| since.elapsed() < IDLE_TIMEOUT && !s.is_closed());
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push((port, send, Instant::now()));
    }
}

async fn connect(port: u16) -> Result<Sender, DeliveryError> {
    let stream = tokio::net::TcpStream::connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .map_err(|e| DeliveryError::Connect {
            port,
            error: e.to_string(),
        })?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| DeliveryError::Http(e.to_string()))?;
    // Ends when the connection closes or its sender is dropped.
    tokio::spawn(conn);
    Ok(send)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A component that answers 200 and counts the connections it accepted; `keep_alive` false:
    /// it closes each connection after its answer.
    async fn component(keep_alive: bool) -> (u16, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(stream),
                            hyper::service::service_fn(|_req| async {
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                    Bytes::from_static(b"ok"),
                                )))
                            }),
                        ),
                );
            }
        });
        (port, accepted)
    }

    async fn post_five(port: u16) {
        let conns = Conns::default();
        for _ in 0..5 {
            let status = conns.post(port, "/x", &[], Bytes::from_static(b"m")).await;
            assert_eq!(status.unwrap(), 200);
        }
    }

    #[tokio::test]
    async fn posts_reuse_one_connection() {
        let (port, accepted) = component(true).await;
        post_five(port).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for five posts"
        );
    }

    #[tokio::test]
    async fn a_component_that_closes_its_connections_gets_every_post() {
        let (port, accepted) = component(false).await;
        post_five(port).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }
}
