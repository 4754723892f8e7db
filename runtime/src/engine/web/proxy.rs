//! The reverse proxy to `process` applications: one request in, one request out on a pooled
//! upstream connection ([`super::pool`]), the response passed back as HTTP/1.1.
//!
//! Headers (RFC 9110 §7.6.1): hop-by-hop headers — `Connection` and every header it names,
//! `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`,
//! `Proxy-Authenticate`, `Proxy-Authorization` — describe one connection and are removed in both
//! directions; each side's framing (length or chunked) and keep-alive are hyper's, per connection.
//! The application's `Server` header is dropped, as static responses carry none. Requests get
//! `X-Forwarded-For/Proto/Host/Prefix`.
//!
//! Errors: the application not listening gives 503 (it exited; the supervisor restarts it), any
//! other upstream failure 502. A request without a body and with an idempotent method that fails
//! on a reused connection (the application closed it as the request went out) is sent once more
//! on a new connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{Either, Empty};
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri};

use super::pool::{ConnectError, Lease, ReqBody, Sender, Upstream};
use super::relay::{Conn, HeadError};
use super::supervisor::Supervisor;
use super::{Body, plain, unavailable};
use crate::logfile::Logger;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// Hop-by-hop headers (RFC 9110 §7.6.1, and the `Proxy-*` ones of RFC 9110 §11.7 and
/// RFC 9112 Appendix C.2.2): they describe one connection and are not forwarded.
pub(super) const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// At most one warning per application this often; every error is logged at debug.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A routed `process` application: its supervisor and its upstream connections.
#[derive(Debug)]
pub struct ProcessApp {
    pub name: String,
    pub supervisor: Arc<Supervisor>,
    upstream: Arc<Upstream>,
    /// The relay's connections ([`super::relay`]).
    relay: Arc<Upstream<Conn>>,
    logger: Option<Logger>,
    last_warning: Mutex<Option<Instant>>,
}

/// The client's side of a connection, computed once per connection.
#[derive(Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Its IP as an `X-Forwarded-For` value.
    ip: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        let ip = HeaderValue::try_from(addr.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        Peer { addr, ip }
    }

    /// Its IP as an `X-Forwarded-For` value.
    pub fn ip(&self) -> &HeaderValue {
        &self.ip
    }
}

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The application has no port (not started, or between restarts).
    #[error("the application is not running")]
    NotRunning,
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Upstream(hyper::Error),
    /// Sending the request on the relay's connection.
    #[error("connection failed while sending: {0}")]
    Io(#[source] std::io::Error),
    /// The relay's response head.
    #[error(transparent)]
    Relay(#[from] HeadError),
}

impl ProxyError {
    /// The status the client gets.
    pub(super) fn status(&self) -> StatusCode {
        match self {
            // Nothing listens: exited since its health check, the supervisor restarts it.
            ProxyError::NotRunning | ProxyError::Connect(ConnectError::Connect { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

impl ProcessApp {
    pub fn new(name: &str, supervisor: Supervisor, logger: Option<Logger>) -> ProcessApp {
        ProcessApp {
            name: name.to_owned(),
            supervisor: Arc::new(supervisor),
            upstream: Upstream::new(),
            relay: Upstream::new(),
            logger,
            last_warning: Mutex::new(None),
        }
    }

    /// Forwards `req` with the path unchanged (the application sees the full path, context
    /// path included); `prefix` is the context path as an `X-Forwarded-Prefix` value.
    pub async fn forward(
        &self,
        prefix: &HeaderValue,
        peer: &Peer,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let Some(port) = self.supervisor.port() else {
            return unavailable();
        };
        let (mut parts, body) = req.into_parts();
        prepare(&mut parts, prefix, peer, port);
        // No body: sent as `Empty`, so the request can be sent again.
        let body: ReqBody = if body.is_end_stream() {
            Either::Right(Empty::new())
        } else {
            Either::Left(body)
        };
        let resendable = may_resend(&parts.method, matches!(body, Either::Right(_)));
        let (method, target) = (parts.method.clone(), parts.uri.clone());
        match self.exchange(port, parts, body, resendable).await {
            Ok(resp) => resp,
            Err(e) => {
                let status = e.status();
                self.report(&format!(
                    "{method} {target} to 127.0.0.1:{port}: {e}; answered {}",
                    status.as_u16()
                ));
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    unavailable()
                } else {
                    plain(status)
                }
            }
        }
    }

    async fn exchange(
        &self,
        port: u16,
        parts: Parts,
        body: ReqBody,
        resendable: bool,
    ) -> Result<Response<Body>, ProxyError> {
        let (mut send, reused) = match self.upstream.take(port).await {
            Some(s) => (s, true),
            None => (Upstream::<Sender>::connect(port).await?, false),
        };
        // A copy only when it may be needed: the request goes out on a connection the
        // application may be closing.
        let spare = (reused && resendable).then(|| copy_head(&parts));
        match send
            .try_send_request(Request::from_parts(parts, body))
            .await
        {
            Ok(resp) => Ok(self.respond(port, send, resp)),
            Err(mut e) => {
                // Not written at all (the connection was found closed): the request itself
                // comes back and can go anywhere, whatever its method.
                let again = e
                    .take_message()
                    .or_else(|| spare.map(|h| h.map(|()| Either::Right(Empty::new()))));
                let error = e.into_error();
                let (true, Some(req)) = (reused, again) else {
                    return Err(ProxyError::Upstream(error));
                };
                self.debug_resend(
                    (req.method().as_str(), &req.uri().to_string()),
                    port,
                    &error,
                );
                let mut send = Upstream::<Sender>::connect(port).await?;
                let resp = send.send_request(req).await.map_err(ProxyError::Upstream)?;
                Ok(self.respond(port, send, resp))
            }
        }
    }

    /// The upstream response as the client gets it; its connection goes back to the pool when
    /// the body has been read, unless the application said it closes it.
    fn respond(&self, port: u16, send: Sender, resp: Response<Incoming>) -> Response<Body> {
        let (mut parts, body) = resp.into_parts();
        let close = strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::SERVER);
        // HTTP/1.1 to the client whatever the application speaks (hyper still answers an
        // HTTP/1.0 client in HTTP/1.0).
        parts.version = hyper::Version::HTTP_11;
        let lease: Option<Lease> = (!close).then(|| self.upstream.lease(port, send));
        Response::from_parts(parts, Body::upstream(body, lease))
    }

    /// A request that failed, or its timeout (`request-timeout`, answered 504 by the caller):
    /// logged at debug, and at most every [`WARN_EVERY`] as a warning.
    pub fn report(&self, what: &str) {
        let Some(l) = &self.logger else {
            return;
        };
        let now = Instant::now();
        let warn = {
            let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|t| now.duration_since(t) >= WARN_EVERY);
            if due {
                *last = Some(now);
            }
            due
        };
        let msg = format!("Application {}: {what}", self.name);
        if warn {
            l.warn("WEB-0212", &msg);
        } else {
            l.debug("WEB-0210", &msg);
        }
    }

    /// The relay's connections to this application.
    pub(super) fn relay_pool(&self) -> &Arc<Upstream<Conn>> {
        &self.relay
    }

    /// A request sent again after its reused connection failed.
    pub(super) fn debug_resend(
        &self,
        method_target: (&str, &str),
        port: u16,
        error: &dyn std::fmt::Display,
    ) {
        self.debug(
            "WEB-0211",
            &format!(
                "{} {} to 127.0.0.1:{port}: reused connection failed ({error}); sending again on a new one",
                method_target.0, method_target.1
            ),
        );
    }

    fn debug(&self, id: &str, what: &str) {
        if let Some(l) = &self.logger {
            l.debug(id, &format!("Application {}: {what}", self.name));
        }
    }
}

/// Whether a request may be sent a second time after its first attempt failed on a reused
/// connection: idempotent methods (RFC 9110 §9.2.2) without a body to replay.
pub fn may_resend(method: &Method, no_body: bool) -> bool {
    no_body
        && matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        )
}

/// The request head as the application gets it.
pub(super) fn prepare(parts: &mut Parts, prefix: &HeaderValue, peer: &Peer, port: u16) {
    strip_hop_by_hop(&mut parts.headers);
    let h = &mut parts.headers;
    let forwarded_for = match h.get(&X_FORWARDED_FOR) {
        None => peer.ip.clone(),
        Some(_) => append_for(h, &peer.ip),
    };
    h.insert(X_FORWARDED_FOR, forwarded_for);
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    match h.get(header::HOST).cloned() {
        Some(host) => {
            h.insert(X_FORWARDED_HOST, host);
        }
        None => {
            // An HTTP/1.0 client may send none; HTTP/1.1 requires one upstream.
            let host = HeaderValue::try_from(format!("127.0.0.1:{port}"))
                .unwrap_or(HeaderValue::from_static("localhost"));
            h.insert(header::HOST, host);
        }
    }
    h.insert(X_FORWARDED_PREFIX, prefix.clone());
    // Origin form: an absolute-form target (`GET http://host/x`) goes upstream as `/x`.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
        parts.uri = Uri::from(pq);
    }
    parts.version = hyper::Version::HTTP_11;
}

/// Every incoming `X-Forwarded-For` line, then `ip`, as one value.
fn append_for(h: &HeaderMap, ip: &HeaderValue) -> HeaderValue {
    let mut v: Vec<u8> = Vec::new();
    for prev in h.get_all(&X_FORWARDED_FOR) {
        v.extend_from_slice(prev.as_bytes());
        v.extend_from_slice(b", ");
    }
    v.extend_from_slice(ip.as_bytes());
    HeaderValue::from_bytes(&v).unwrap_or_else(|_| ip.clone())
}

/// Removes the hop-by-hop headers; returns whether `Connection` said `close`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    let mut close = false;
    let mut named: Vec<HeaderName> = Vec::new();
    for v in headers.get_all(header::CONNECTION) {
        let Ok(v) = v.to_str() else { continue };
        for token in v.split(',').map(str::trim) {
            if token.eq_ignore_ascii_case("close") {
                close = true;
            } else if token.eq_ignore_ascii_case("keep-alive") {
                // Removed below anyway: no allocation for the usual case.
            } else if let Ok(n) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(n);
            }
        }
    }
    for n in named {
        headers.remove(n);
    }
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
    close
}

/// A copy of the request head, to send it again.
fn copy_head(p: &Parts) -> Request<()> {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::get("http://example.com/shop/x?q=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = head(&[
            ("connection", "keep-alive, X-Drop"),
            ("connection", "close"),
            ("x-drop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eDp5"),
            ("proxy-authenticate", "Basic"),
            ("x-keep", "1"),
        ])
        .headers;
        assert!(strip_hop_by_hop(&mut h));
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["x-keep"]);
        let mut h = head(&[("connection", "keep-alive")]).headers;
        assert!(!strip_hop_by_hop(&mut h));
        assert!(h.is_empty());
    }

    #[test]
    fn the_application_gets_forwarding_headers_and_an_origin_form_target() {
        let peer = Peer::new("10.1.2.3:5555".parse().expect("addr"));
        let prefix = HeaderValue::from_static("/shop");
        let mut p = head(&[
            ("host", "example.com"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "192.0.2.2"),
            ("x-forwarded-prefix", "/forged"),
        ]);
        prepare(&mut p, &prefix, &peer, 4000);
        let h = &p.headers;
        assert_eq!(p.uri.to_string(), "/shop/x?q=1");
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 192.0.2.2, 10.1.2.3");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["x-forwarded-prefix"], "/shop");
        assert_eq!(h["host"], "example.com");

        let mut p = head(&[]);
        p.uri = Uri::from_static("/x");
        prepare(&mut p, &prefix, &peer, 4000);
        assert_eq!(p.headers["host"], "127.0.0.1:4000");
        assert_eq!(p.headers["x-forwarded-for"], "10.1.2.3");
        assert!(p.headers.get("x-forwarded-host").is_none());
    }

    #[test]
    fn only_idempotent_requests_without_a_body_are_sent_twice() {
        for m in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
            assert!(may_resend(&m, true), "{m}");
            assert!(!may_resend(&m, false), "{m} with a body");
        }
        assert!(!may_resend(&Method::POST, true));
        assert!(!may_resend(&Method::PATCH, true));
    }
}
