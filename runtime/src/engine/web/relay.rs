//! The relay: HTTP/1.1 without hyper for the common case, as nginx serves and proxies. One task per
//! client connection reads each request head with `httparse`, writes the upstream request
//! straight from it onto a pooled plain socket to the application, and copies the answer back,
//! its head rewritten and its body passed through as it comes. No header map, no channel to a
//! connection task, one timer per connection re-armed without the timer wheel's lock: this is
//! what makes a proxied request cost about what it costs nginx (docs/web-engine.md, "Reverse
//! proxy").
//!
//! Only the common case is relayed: an HTTP/1.1 request with an origin-form target, no
//! `Expect`, no `Upgrade`, and no body (a `process` application may also get a `Content-Length`
//! one). Static routes and unrouted paths are answered here too, by the same handler and the same
//! 404 as on the hyper path, so a page, its files and its API calls stay on one fast connection.
//! Anything else, and any head `httparse` refuses, hands the connection to hyper
//! ([`super::serve`]) with the bytes read so far, for the rest of its life: HTTP/1.0 clients,
//! chunked uploads, errors in the head (hyper's own 400 or 431) are all served as before. The
//! headers sent each way are those of [`super::proxy`] (same hop-by-hop list, same
//! `X-Forwarded-*`).
//!
//! The file is over 600 lines because it is one protocol path: the head parsing, the upstream
//! exchange and the body framing share the buffers and the connection's state.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::{Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::chunked::Chunks;
use super::pool::Pooled;
use super::proxy::{HOP_BY_HOP, Peer, ProcessApp, ProxyError, may_resend};
use super::route::under;
use super::serve::{Line, admit, hyper_connection, log_access, static_rest};
use super::{Body, plain, unavailable};
use super::{Handler, Inner, Route, fmt_duration, read_snapshot};

/// hyper's default, kept for relayed connections: a client has this long to send a whole head
/// (an idle keep-alive connection is closed after it).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Headers per message, as hyper's default.
const MAX_HEADERS: usize = 100;
/// A head longer than this is handed to hyper (which answers 431); an upstream head longer is a 502.
const MAX_HEAD: usize = 64 * 1024;
/// Read size for bodies, both ways.
const READ: usize = 16 * 1024;
/// Read size for a client's heads: most connections only ever send heads, and an idle one keeps
/// its buffer (hyper starts at 8 KiB too).
const HEAD_READ: usize = 8 * 1024;

/// A plain upstream connection and what has been read from it.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Pooled for Conn {
    /// Not known without a read: [`Conn::closed`] makes one when it matters.
    fn is_closed(&self) -> bool {
        false
    }
}

impl Conn {
    /// Whether the application has closed this idle connection (or sent something unasked).
    /// Costs a read only when the reactor has seen the socket readable; made before a request
    /// that could not be sent again, the others are resent if the connection turns out closed.
    fn closed(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => {
                let mut b = [0u8; 1];
                !matches!(self.stream.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// Serves one client connection: relayed requests here, the rest of the connection through
/// hyper once a request is not one the relay takes.
pub(super) async fn serve(
    inner: &Arc<Inner>,
    index: usize,
    mut client: TcpStream,
    addr: SocketAddr,
) {
    let mut stop = inner.shutdown.subscribe();
    let peer = Arc::new(Peer::new(addr));
    let mut buf = BytesMut::with_capacity(HEAD_READ);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut head_timer = pin!(tokio::time::sleep(HEADER_READ_TIMEOUT));
    let mut request_timer = pin!(tokio::time::sleep(HEADER_READ_TIMEOUT));
    loop {
        // A whole request head.
        head_timer
            .as_mut()
            .reset(tokio::time::Instant::now() + HEADER_READ_TIMEOUT);
        let req = loop {
            if !buf.is_empty() {
                match parse_request(&buf) {
                    Parsed::Complete(req) => break req,
                    Parsed::Partial if buf.len() < MAX_HEAD => {}
                    Parsed::Partial | Parsed::Invalid => {
                        return hand_over(inner, index, client, buf, peer).await;
                    }
                }
            }
            if buf.is_empty() && *stop.borrow() {
                return;
            }
            buf.reserve(HEAD_READ);
            tokio::select! {
                biased;
                r = client.read_buf(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                _ = &mut head_timer => return,
                _ = stop.changed(), if buf.is_empty() => return,
            }
        };
        let snap = read_snapshot(inner);
        let route = snap
            .routes
            .iter()
            .find(|r| under(req.path(&buf), &r.context));
        let handler = route.map(|r| &r.handler);
        // A request without a body to a static route or none at all is answered here too, so a
        // browser's page, its files and its API calls all stay on this path.
        let takes = match handler {
            Some(Handler::Process(_)) => true,
            Some(Handler::Static(_)) | None => req.body == 0,
        };
        let (true, true, Some(limits), Some(listener)) = (
            req.relayable,
            takes,
            snap.limits.get(index),
            inner.listeners.get(index),
        ) else {
            return hand_over(inner, index, client, buf, peer).await;
        };
        let started = Instant::now();
        let head = buf.split_to(req.head_len);
        // Counted in the route's statistics and logged once the answer's head is known, as on
        // the hyper path.
        let account = |route: Option<&Route>, status: u16, bytes: Option<u64>| {
            if let Some(r) = route {
                r.stats.record(status, started.elapsed());
            }
            if snap.access_log.enabled {
                let line = req.line(&head);
                let app = route.map(|r| r.app.as_str());
                log_access(inner, &snap, &peer, &line, status, bytes, started, app);
            }
        };
        let mut ex = Exchange {
            req: &req,
            head: &head,
            out: &mut out,
            client: &mut client,
            cbuf: &mut buf,
            closing: req.close || *stop.borrow(),
            unread: req.body,
        };
        let Some(permit) = admit(listener, limits).await else {
            listener.pool.rejected.fetch_add(1, Ordering::Relaxed);
            let resp = unavailable();
            account(None, 503, declared_length(&resp));
            if ex.answer_own(resp).await {
                continue;
            }
            return;
        };
        request_timer
            .as_mut()
            .reset(tokio::time::Instant::now() + limits.request_timeout);
        let go_on = match route.map(|r| (r, &r.handler)) {
            None => {
                inner.stats.unrouted();
                let resp = plain(StatusCode::NOT_FOUND);
                account(None, 404, declared_length(&resp));
                ex.answer_own(resp).await
            }
            Some((route, Handler::Static(files))) => {
                let headers = req.header_map(&head);
                let path = req.path(&head);
                let served = files.serve(
                    &req.verb,
                    &headers,
                    static_rest(&route.context, path),
                    path,
                    req.query(&head),
                );
                let resp = tokio::select! {
                    biased;
                    r = served => r,
                    _ = &mut request_timer => plain(StatusCode::GATEWAY_TIMEOUT),
                };
                account(Some(route), resp.status().as_u16(), declared_length(&resp));
                ex.answer_own(resp).await
            }
            Some((route, Handler::Process(app))) => {
                let answered = tokio::select! {
                    biased;
                    r = ex.request(app, &peer, &route.prefix) => r,
                    _ = &mut request_timer => Err(Failure::Timeout),
                };
                match answered {
                    Ok(reply) => {
                        account(Some(route), reply.head.status, reply.head.length);
                        ex.respond(app, reply).await
                    }
                    Err(f) => {
                        let resp = ex.fail(app, f, limits.request_timeout);
                        let Some(resp) = resp else {
                            account(Some(route), 400, None);
                            return;
                        };
                        account(Some(route), resp.status().as_u16(), declared_length(&resp));
                        ex.answer_own(resp).await
                    }
                }
            }
        };
        // The slot is the client's until its answer is sent, as on the hyper path.
        drop(permit);
        if !go_on {
            return;
        }
    }
}

/// Gives the connection to hyper with the bytes already read.
async fn hand_over(
    inner: &Arc<Inner>,
    index: usize,
    client: TcpStream,
    buf: BytesMut,
    peer: Arc<Peer>,
) {
    let io = Prefixed {
        pre: buf.freeze(),
        io: client,
    };
    hyper_connection(inner, index, io, peer).await;
}

/// A request head the relay read.
struct Request {
    head_len: usize,
    relayable: bool,
    verb: hyper::Method,
    target: Range<usize>,
    /// The target's path (without the query).
    path: Range<usize>,
    body: u64,
    /// `Connection: close`.
    close: bool,
    host: bool,
    referer: Option<Range<usize>>,
    user_agent: Option<Range<usize>>,
    /// The header lines, as ranges of the head: (name, value).
    headers: Vec<(Range<usize>, Range<usize>)>,
    /// Header names `Connection` lists, to drop.
    named: Vec<Range<usize>>,
}

impl Request {
    fn is_head(&self) -> bool {
        self.verb == hyper::Method::HEAD
    }

    /// Whether it may be sent a second time (see [`may_resend`]).
    fn resendable(&self) -> bool {
        may_resend(&self.verb, self.body == 0)
    }

    fn path<'a>(&self, head: &'a [u8]) -> &'a str {
        std::str::from_utf8(&head[self.path.clone()]).unwrap_or("")
    }

    /// The query, without its `?`.
    fn query<'a>(&self, head: &'a [u8]) -> Option<&'a str> {
        let target = std::str::from_utf8(&head[self.target.clone()]).ok()?;
        target.split_once('?').map(|(_, q)| q)
    }

    /// The headers as a map, for the static files' handler.
    fn header_map(&self, head: &[u8]) -> hyper::HeaderMap {
        let mut map = hyper::HeaderMap::with_capacity(self.headers.len());
        for (n, v) in &self.headers {
            if let (Ok(n), Ok(v)) = (
                hyper::header::HeaderName::from_bytes(&head[n.clone()]),
                hyper::header::HeaderValue::from_bytes(&head[v.clone()]),
            ) {
                map.append(n, v);
            }
        }
        map
    }

    fn line<'a>(&'a self, head: &'a [u8]) -> Line<'a> {
        let s = |r: &Range<usize>| std::str::from_utf8(&head[r.clone()]).ok();
        Line {
            method: self.verb.as_str(),
            target: s(&self.target).unwrap_or(""),
            version: "HTTP/1.1",
            referer: self.referer.as_ref().and_then(s),
            user_agent: self.user_agent.as_ref().and_then(s),
        }
    }
}

enum Parsed {
    Complete(Request),
    Partial,
    Invalid,
}

fn within(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

/// Reads a request head from the start of `buf`.
fn parse_request(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Invalid,
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Invalid;
    };
    let path_end = target.find('?').unwrap_or(target.len());
    let verb = hyper::Method::from_bytes(method.as_bytes());
    let mut r = Request {
        head_len,
        // HTTP/1.1, origin form, a target hyper's URI parser takes as is, not CONNECT.
        relayable: version == 1
            && target.starts_with('/')
            && target.bytes().all(uri_byte)
            && verb.as_ref().is_ok_and(|m| *m != hyper::Method::CONNECT),
        verb: verb.unwrap_or_default(),
        target: within(buf, target.as_bytes()),
        path: within(buf, &target.as_bytes()[..path_end]),
        body: 0,
        close: false,
        host: false,
        referer: None,
        user_agent: None,
        headers: Vec::with_capacity(req.headers.len()),
        named: Vec::new(),
    };
    let mut length: Option<u64> = None;
    for h in req.headers.iter() {
        let name = h.name;
        let value = h.value;
        if name.eq_ignore_ascii_case("content-length") {
            let n = decimal(value);
            match (n, length) {
                (Some(n), None) => length = Some(n),
                // Two lengths, or one hyper may read otherwise: hyper decides.
                _ => r.relayable = false,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            r.relayable = false;
        } else if name.eq_ignore_ascii_case("connection") {
            for option in connection_options(value) {
                match option {
                    ConnectionOption::Close => r.close = true,
                    ConnectionOption::Upgrade => r.relayable = false,
                    ConnectionOption::KeepAlive => {}
                    ConnectionOption::Name(n) => r.named.push(within(buf, n)),
                }
            }
        } else if name.eq_ignore_ascii_case("host") {
            r.host = true;
        } else if name.eq_ignore_ascii_case("referer") {
            r.referer = Some(within(buf, value));
        } else if name.eq_ignore_ascii_case("user-agent") {
            r.user_agent = Some(within(buf, value));
        }
        r.headers
            .push((within(buf, name.as_bytes()), within(buf, value)));
    }
    r.body = length.unwrap_or(0);
    Parsed::Complete(r)
}

/// A `Content-Length` value: digits only, as hyper reads it (no sign, no list).
fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The bytes `http`'s URI parser accepts in an origin-form target (a stricter set only means a
/// request goes to hyper, which then decides).
fn uri_byte(b: u8) -> bool {
    matches!(b, 0x21..=0x7e)
        && !matches!(
            b,
            b'"' | b'#' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
        )
}

/// Why a relayed request got no answer from the application.
enum Failure {
    Proxy(ProxyError),
    Timeout,
    /// The client went away or broke the request (its body ended early): nothing to answer.
    Client,
}

impl From<ProxyError> for Failure {
    fn from(e: ProxyError) -> Self {
        Failure::Proxy(e)
    }
}

/// How the response body is delimited, upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the application closes: sent on to the client chunked.
    Close,
}

/// An answer from the application, its head already rewritten for the client in `out`.
struct Reply {
    conn: Conn,
    port: u16,
    head: Answer,
}

/// One request's way through the relay.
struct Exchange<'a> {
    req: &'a Request,
    head: &'a [u8],
    out: &'a mut Vec<u8>,
    client: &'a mut TcpStream,
    /// The client's bytes after the head: the body, then whatever it pipelined.
    cbuf: &'a mut BytesMut,
    /// This connection ends after this request (`Connection: close`, or the engine stops).
    closing: bool,
    /// Body bytes not yet read from the client: the connection cannot go on while any are left.
    unread: u64,
}

impl Exchange<'_> {
    /// Sends the request and reads the response head.
    async fn request(
        &mut self,
        app: &ProcessApp,
        peer: &Peer,
        prefix: &hyper::header::HeaderValue,
    ) -> Result<Reply, Failure> {
        let Some(port) = app.supervisor.port() else {
            return Err(Failure::Proxy(ProxyError::NotRunning));
        };
        self.out.clear();
        upstream_head(self.out, self.req, self.head, peer, prefix.as_bytes(), port);
        // The body bytes already read go out with the head, in one write.
        let inline = self.req.body.min(self.cbuf.len() as u64) as usize;
        self.out.extend_from_slice(&self.cbuf[..inline]);
        self.cbuf.advance(inline);
        self.unread -= inline as u64;
        let pool = app.relay_pool();
        let resendable = self.req.resendable();
        let pooled = pool.pop(port).filter(|c| resendable || !c.closed());
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => connect(port).await?,
        };
        match self.send(&mut conn).await {
            Ok(()) => {
                match read_head(&mut conn, self.req.is_head(), self.closing, self.out).await {
                    Ok(head) => return Ok(Reply { conn, port, head }),
                    Err(HeadError::Nothing(e)) if reused && self.req.resendable() => {
                        let l = self.req.line(self.head);
                        app.debug_resend((l.method, l.target), port, &e);
                    }
                    Err(e) => return Err(ProxyError::Relay(e).into()),
                }
            }
            Err(Failure::Proxy(ProxyError::Io(e))) if reused && self.req.resendable() => {
                let l = self.req.line(self.head);
                app.debug_resend((l.method, l.target), port, &e);
            }
            Err(e) => return Err(e),
        }
        // Sent again on a new connection: the request had no body and nothing came back, so
        // `out` is still its head.
        let mut conn = connect(port).await?;
        self.send(&mut conn).await?;
        match read_head(&mut conn, self.req.is_head(), self.closing, self.out).await {
            Ok(head) => Ok(Reply { conn, port, head }),
            Err(e) => Err(ProxyError::Relay(e).into()),
        }
    }

    /// Writes `out` (the head and the body bytes already read), then the rest of the body.
    async fn send(&mut self, conn: &mut Conn) -> Result<(), Failure> {
        conn.stream
            .write_all(self.out)
            .await
            .map_err(|e| Failure::Proxy(ProxyError::Io(e)))?;
        while self.unread > 0 {
            if self.cbuf.is_empty() {
                self.cbuf.reserve(READ);
                match self.client.read_buf(self.cbuf).await {
                    Ok(0) | Err(_) => return Err(Failure::Client),
                    Ok(_) => {}
                }
            }
            let n = (self.unread.min(self.cbuf.len() as u64)) as usize;
            conn.stream
                .write_all(&self.cbuf[..n])
                .await
                .map_err(|e| Failure::Proxy(ProxyError::Io(e)))?;
            self.cbuf.advance(n);
            self.unread -= n as u64;
        }
        Ok(())
    }

    /// Passes the response on: `out` holds its head. Returns whether the client connection goes
    /// on to its next request.
    async fn respond(&mut self, app: &ProcessApp, mut up: Reply) -> bool {
        let conn = &mut up.conn;
        let ended = match up.head.framing {
            Framing::None => self.client.write_all(self.out).await.is_ok(),
            Framing::Length(n) => self.copy_length(conn, n).await,
            Framing::Chunked => self.copy_chunked(conn).await,
            Framing::Close => {
                up.head.reusable = false;
                self.copy_until_close(conn).await
            }
        };
        if ended && up.head.reusable && conn.buf.is_empty() {
            app.relay_pool().put(up.port, up.conn);
        }
        ended && !self.closing
    }

    async fn copy_length(&mut self, conn: &mut Conn, mut rest: u64) -> bool {
        loop {
            let n = (rest.min(conn.buf.len() as u64)) as usize;
            self.out.extend_from_slice(&conn.buf[..n]);
            conn.buf.advance(n);
            rest -= n as u64;
            if self.client.write_all(self.out).await.is_err() {
                return false;
            }
            self.out.clear();
            if rest == 0 {
                return true;
            }
            if !fill(conn).await {
                return false;
            }
        }
    }

    async fn copy_chunked(&mut self, conn: &mut Conn) -> bool {
        let mut scan = Chunks::default();
        loop {
            let step = scan.scan(&conn.buf);
            let (n, end) = match step {
                Ok(Some(n)) => (n, true),
                Ok(None) => (conn.buf.len(), false),
                Err(()) => return false,
            };
            self.out.extend_from_slice(&conn.buf[..n]);
            conn.buf.advance(n);
            if self.client.write_all(self.out).await.is_err() {
                return false;
            }
            self.out.clear();
            if end {
                return true;
            }
            if !fill(conn).await {
                return false;
            }
        }
    }

    async fn copy_until_close(&mut self, conn: &mut Conn) -> bool {
        loop {
            if !conn.buf.is_empty() {
                chunk(self.out, &conn.buf);
                conn.buf.clear();
            }
            if self.client.write_all(self.out).await.is_err() {
                return false;
            }
            self.out.clear();
            conn.buf.reserve(READ);
            match conn.stream.read_buf(&mut conn.buf).await {
                Ok(0) => return self.client.write_all(b"0\r\n\r\n").await.is_ok(),
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    /// The answer to a request the application did not answer: 502, 503 or 504, reported as on
    /// the hyper path; `None` when the client itself broke off (nobody to answer).
    fn fail(&self, app: &ProcessApp, f: Failure, timeout: Duration) -> Option<Response<Body>> {
        let line = self.req.line(self.head);
        match f {
            Failure::Client => None,
            Failure::Timeout => {
                app.report(&format!(
                    "{} {}: no response within request-timeout {}; answered 504",
                    line.method,
                    line.target,
                    fmt_duration(timeout)
                ));
                Some(plain(StatusCode::GATEWAY_TIMEOUT))
            }
            Failure::Proxy(e) => {
                let status = e.status();
                // Not running is the supervisor's to report (it restarts the application).
                if !matches!(e, ProxyError::NotRunning) {
                    let port = app.supervisor.port().unwrap_or(0);
                    app.report(&format!(
                        "{} {} to 127.0.0.1:{port}: {e}; answered {}",
                        line.method,
                        line.target,
                        status.as_u16()
                    ));
                }
                Some(if status == StatusCode::SERVICE_UNAVAILABLE {
                    unavailable()
                } else {
                    plain(status)
                })
            }
        }
    }

    /// Sends a response of the engine's own (a static file, a 404, a 5xx) as hyper would: its
    /// length when known, else chunked; no body after HEAD, 204 or 304; `Date` added. Returns
    /// whether the connection goes on (not while the request's body is partly unread).
    async fn answer_own(&mut self, resp: Response<Body>) -> bool {
        let go_on = self.unread == 0 && !self.closing;
        let (parts, mut body) = resp.into_parts();
        let status = parts.status.as_u16();
        let bodiless = status == 204 || status == 304 || (100..200).contains(&status);
        let declared = parts.headers.contains_key(hyper::header::CONTENT_LENGTH);
        self.out.clear();
        status_line(self.out, status, None);
        for (k, v) in &parts.headers {
            header(self.out, k.as_str().as_bytes(), v.as_bytes());
        }
        if !parts.headers.contains_key(hyper::header::DATE) {
            header(self.out, b"date", &http_date());
        }
        let mut chunked = false;
        if !declared && !bodiless {
            match body.size_hint().exact() {
                Some(n) => {
                    let _ = write!(self.out, "content-length: {n}\r\n");
                }
                None => chunked = true,
            }
        }
        if chunked && !self.req.is_head() {
            self.out
                .extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if !go_on {
            self.out.extend_from_slice(b"connection: close\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        if !(self.req.is_head() || bodiless) {
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    // Cut short (a file that shrank): the client must not take it as whole.
                    let _ = self.client.write_all(self.out).await;
                    return false;
                };
                if let Ok(data) = frame.into_data() {
                    if chunked {
                        chunk(self.out, &data);
                    } else {
                        self.out.extend_from_slice(&data);
                    }
                }
                if self.out.len() >= READ {
                    if self.client.write_all(self.out).await.is_err() {
                        return false;
                    }
                    self.out.clear();
                }
            }
            if chunked {
                self.out.extend_from_slice(b"0\r\n\r\n");
            }
        }
        self.client.write_all(self.out).await.is_ok() && go_on
    }
}

/// A response's `Content-Length`, for the access log.
fn declared_length(resp: &Response<Body>) -> Option<u64> {
    resp.headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Reads more from the application; false at its end or on an error.
async fn fill(conn: &mut Conn) -> bool {
    conn.buf.reserve(READ);
    matches!(conn.stream.read_buf(&mut conn.buf).await, Ok(n) if n > 0)
}

async fn connect(port: u16) -> Result<Conn, ProxyError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|error| ProxyError::Connect(super::pool::ConnectError::Connect { addr, error }))?;
    let _ = stream.set_nodelay(true);
    Ok(Conn {
        stream,
        buf: BytesMut::with_capacity(READ),
    })
}

/// The request head as the application gets it (the headers of [`super::proxy`]'s `prepare`).
fn upstream_head(
    out: &mut Vec<u8>,
    r: &Request,
    head: &[u8],
    peer: &Peer,
    prefix: &[u8],
    port: u16,
) {
    out.extend_from_slice(r.verb.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(&head[r.target.clone()]);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded_for: Option<Vec<u8>> = None;
    let mut host: Option<&[u8]> = None;
    for (n, v) in &r.headers {
        let name = &head[n.clone()];
        let value = &head[v.clone()];
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            let f = forwarded_for.get_or_insert_with(Vec::new);
            f.extend_from_slice(value);
            f.extend_from_slice(b", ");
            continue;
        }
        if name.eq_ignore_ascii_case(b"host") {
            host = Some(value);
        }
        if hop_by_hop(name, r.named.iter().map(|n| &head[n.clone()]))
            || name.eq_ignore_ascii_case(b"x-forwarded-proto")
            || name.eq_ignore_ascii_case(b"x-forwarded-prefix")
            || (r.host && name.eq_ignore_ascii_case(b"x-forwarded-host"))
        {
            continue;
        }
        header(out, name, value);
    }
    let mut f = forwarded_for.unwrap_or_default();
    f.extend_from_slice(peer.ip().as_bytes());
    header(out, b"x-forwarded-for", &f);
    header(out, b"x-forwarded-proto", b"http");
    match host {
        Some(h) => header(out, b"x-forwarded-host", h),
        None => header(out, b"host", format!("127.0.0.1:{port}").as_bytes()),
    }
    header(out, b"x-forwarded-prefix", prefix);
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether a header is hop-by-hop: one of [`HOP_BY_HOP`] or a name its `Connection` lists.
fn hop_by_hop<'a>(name: &[u8], mut named: impl Iterator<Item = &'a [u8]>) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
        || named.any(|n| name.eq_ignore_ascii_case(n))
}

/// One option of a `Connection` header.
#[derive(Debug, PartialEq, Eq)]
enum ConnectionOption<'a> {
    Close,
    KeepAlive,
    Upgrade,
    /// A header that describes this connection only.
    Name(&'a [u8]),
}

/// The options a `Connection` value lists.
fn connection_options(value: &[u8]) -> impl Iterator<Item = ConnectionOption<'_>> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .map(|t| {
            if t.eq_ignore_ascii_case(b"close") {
                ConnectionOption::Close
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                ConnectionOption::KeepAlive
            } else if t.eq_ignore_ascii_case(b"upgrade") {
                ConnectionOption::Upgrade
            } else {
                ConnectionOption::Name(t)
            }
        })
}

/// A response head read from the application.
struct Answer {
    status: u16,
    framing: Framing,
    /// Its `Content-Length`, for the access log.
    length: Option<u64>,
    /// The connection can carry another request after this response.
    reusable: bool,
}

/// Why no response head came.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// Nothing at all (the connection was closed as the request went out): may be sent again.
    #[error("closed the connection without answering")]
    Nothing(#[source] io::Error),
    #[error("connection failed while answering: {0}")]
    Io(#[source] io::Error),
    #[error("answered with a malformed response head: {0}")]
    Malformed(httparse::Error),
    #[error("answered with a response head over {MAX_HEAD} bytes")]
    TooLong,
    #[error("answered 101 Switching Protocols to a request that asked for no upgrade")]
    Switched,
}

/// Reads the response head from `conn` and writes the client's version of it to `out` (which is
/// cleared first). The head leaves `conn.buf`; the body's first bytes stay there.
async fn read_head(
    conn: &mut Conn,
    is_head: bool,
    closing: bool,
    out: &mut Vec<u8>,
) -> Result<Answer, HeadError> {
    let mut got_any = false;
    loop {
        if !conn.buf.is_empty() {
            got_any = true;
            match client_head(&conn.buf, is_head, closing, out)? {
                Some((n, Some(a))) => {
                    conn.buf.advance(n);
                    return Ok(a);
                }
                // An informational answer (1xx): skipped, the final one follows.
                Some((n, None)) => {
                    conn.buf.advance(n);
                    continue;
                }
                None if conn.buf.len() >= MAX_HEAD => return Err(HeadError::TooLong),
                None => {}
            }
        }
        conn.buf.reserve(READ);
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) if !got_any => {
                return Err(HeadError::Nothing(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(0) => return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) if !got_any => return Err(HeadError::Nothing(e)),
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

/// Parses one response head at the start of `buf`: `None` if incomplete, else its length and,
/// for a final response, what it says (with the client's head written to `out`).
fn client_head(
    buf: &[u8],
    is_head: bool,
    closing: bool,
    out: &mut Vec<u8>,
) -> Result<Option<(usize, Option<Answer>)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf).map_err(HeadError::Malformed)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = resp.code.unwrap_or(502);
    if status == 101 {
        return Err(HeadError::Switched);
    }
    if (100..200).contains(&status) {
        return Ok(Some((n, None)));
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut encoded = false;
    let mut upstream_close = resp.version == Some(0);
    let mut named: Vec<&[u8]> = Vec::new();
    let mut date = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = decimal(h.value);
            match (v, length) {
                (Some(v), None) => length = Some(v),
                (Some(v), Some(l)) if v == l => {}
                _ => return Err(HeadError::Malformed(httparse::Error::HeaderValue)),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encoded = true;
            // Chunked only if it is the last coding (RFC 9112 §6.3).
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for option in connection_options(h.value) {
                match option {
                    ConnectionOption::Close => upstream_close = true,
                    ConnectionOption::KeepAlive if resp.version == Some(0) => {
                        upstream_close = false
                    }
                    ConnectionOption::KeepAlive => {}
                    ConnectionOption::Upgrade => named.push(b"upgrade"),
                    ConnectionOption::Name(n) => named.push(n),
                }
            }
        } else if h.name.eq_ignore_ascii_case("date") {
            date = true;
        }
    }
    let framing = if is_head || status == 204 || status == 304 {
        Framing::None
    } else if encoded {
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if let Some(l) = length {
        Framing::Length(l)
    } else {
        Framing::Close
    };
    out.clear();
    status_line(out, status, resp.reason);
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if hop_by_hop(name, named.iter().copied())
            || name.eq_ignore_ascii_case(b"server")
            || (encoded && name.eq_ignore_ascii_case(b"content-length"))
        {
            continue;
        }
        header(out, name, h.value);
    }
    if !date {
        header(out, b"date", &http_date());
    }
    if matches!(framing, Framing::Chunked | Framing::Close) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if closing {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some((
        n,
        Some(Answer {
            status,
            framing,
            length: if encoded { None } else { length },
            reusable: !upstream_close,
        }),
    )))
}

/// `HTTP/1.1 <code> <reason>` and its line end, the reason hyper would write.
fn status_line(out: &mut Vec<u8>, status: u16, reason: Option<&str>) {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .or(reason)
        .unwrap_or("");
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
}

/// `chunk` of a body sent chunked.
fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The `Date` value, formatted once a second per thread (as hyper caches it).
fn http_date() -> [u8; 29] {
    thread_local! {
        static CACHED: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let (at, v) = c.get();
        if at == secs {
            return v;
        }
        let mut v = [0u8; 29];
        let s = httpdate::fmt_http_date(now);
        let n = s.len().min(29);
        v[..n].copy_from_slice(&s.as_bytes()[..n]);
        c.set((secs, v));
        v
    })
}

/// A connection whose first bytes were already read: hyper gets them first.
struct Prefixed {
    pre: Bytes,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &str) -> Request {
        match parse_request(raw.as_bytes()) {
            Parsed::Complete(r) => r,
            Parsed::Partial => panic!("partial: {raw}"),
            Parsed::Invalid => panic!("invalid: {raw}"),
        }
    }

    #[test]
    fn only_the_common_case_is_relayed() {
        let r = request("GET /shop/x?q=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(r.relayable && r.resendable() && !r.close);
        assert_eq!(
            r.path(b"GET /shop/x?q=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            "/shop/x"
        );
        let r = request("POST /x HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
        assert!(r.relayable && !r.resendable() && r.close);
        assert_eq!((r.body, r.head_len), (5, 58));
        for raw in [
            "GET /x HTTP/1.0\r\n\r\n",
            "GET http://a/x HTTP/1.1\r\n\r\n",
            "GET /x{y} HTTP/1.1\r\n\r\n",
            "GET /x#f HTTP/1.1\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\n\r\n",
            "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET /x HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST /x HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
        ] {
            assert!(!request(raw).relayable, "{raw}");
        }
        assert!(matches!(
            parse_request(b"GET /x HTTP/1.1\r\nHo"),
            Parsed::Partial
        ));
        assert!(matches!(
            parse_request(b"GET /x HTTP/1.1\r\nBad Name: 1\r\n\r\n"),
            Parsed::Invalid
        ));
    }

    /// The relay and the hyper path send the application the same headers.
    #[test]
    fn the_application_gets_the_headers_the_hyper_path_sends() {
        let raw = "GET /shop/x?q=1 HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Drop\r\n\
                   X-Drop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Authorization: Basic eDp5\r\n\
                   X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-For: 192.0.2.2\r\n\
                   X-Forwarded-Prefix: /forged\r\nX-Forwarded-Host: forged\r\nX-Keep: 1\r\n\r\n";
        let peer = Peer::new("10.1.2.3:5555".parse().expect("addr"));
        let prefix = hyper::header::HeaderValue::from_static("/shop");
        for raw in [raw.to_owned(), raw.replace("Host: example.com\r\n", "")] {
            let r = request(&raw);
            let mut out = Vec::new();
            upstream_head(&mut out, &r, raw.as_bytes(), &peer, prefix.as_bytes(), 4000);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut sent = httparse::Request::new(&mut headers);
            assert!(sent.parse(&out).expect("parses").is_complete());
            assert_eq!(
                (sent.method, sent.path, sent.version),
                (Some("GET"), Some("/shop/x?q=1"), Some(1))
            );
            let mut relayed: Vec<(String, String)> = sent
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            relayed.sort();

            let mut b = hyper::Request::get("/shop/x?q=1");
            for h in request(&raw).headers.iter() {
                b = b.header(&raw[h.0.clone()], &raw[h.1.clone()]);
            }
            let (mut parts, ()) = b.body(()).expect("request").into_parts();
            super::super::proxy::prepare(&mut parts, &prefix, &peer, 4000);
            let mut proxied: Vec<(String, String)> = parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_owned()))
                .collect();
            proxied.sort();
            assert_eq!(relayed, proxied, "{raw}");
        }
    }

    fn answer(raw: &str, is_head: bool, closing: bool) -> (String, Answer) {
        let mut out = Vec::new();
        let (n, a) = client_head(raw.as_bytes(), is_head, closing, &mut out)
            .expect("parses")
            .expect("complete");
        assert_eq!(n, raw.find("\r\n\r\n").expect("end") + 4);
        (String::from_utf8(out).expect("utf-8"), a.expect("final"))
    }

    #[test]
    fn the_response_head_is_rewritten_and_its_framing_read() {
        let (head, a) = answer(
            "HTTP/1.1 200 Fine\r\nServer: app\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n\
             Content-Length: 3\r\nDate: then\r\nX-App: 1\r\n\r\nabc",
            false,
            false,
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nDate: then\r\nX-App: 1\r\n\r\n"
        );
        assert_eq!(
            (a.status, a.framing, a.length, a.reusable),
            (200, Framing::Length(3), Some(3), true)
        );

        let (head, a) = answer(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
            false,
            true,
        );
        assert!(
            head.contains("\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\ndate: "), "a Date is added: {head}");
        assert!(!head.contains("Content-Length"), "{head}");
        assert_eq!((a.framing, a.length), (Framing::Chunked, None));

        // HTTP/1.0 without a length: ends when the application closes, sent on chunked.
        let (head, a) = answer(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n",
            false,
            false,
        );
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("transfer-encoding: chunked")
        );
        assert_eq!((a.framing, a.reusable), (Framing::Close, false));
        let (_, a) = answer(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
        );
        assert!(a.reusable);
        let (_, a) = answer(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
        );
        assert!(!a.reusable);

        for (raw, is_head) in [
            ("HTTP/1.1 200 OK\r\nContent-Length: 615\r\n\r\n", true),
            ("HTTP/1.1 204 No Content\r\n\r\n", false),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 615\r\n\r\n",
                false,
            ),
        ] {
            assert_eq!(
                answer(raw, is_head, false).1.framing,
                Framing::None,
                "{raw}"
            );
        }

        let mut out = Vec::new();
        let informational = client_head(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            false,
            false,
            &mut out,
        );
        assert!(matches!(informational, Ok(Some((n, None))) if n == 40));
        assert!(matches!(
            client_head(b"HTTP/1.1 200 OK\r\nContent-Le", false, false, &mut out),
            Ok(None)
        ));
        for bad in [
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 OK\r\n\r\n",
        ] {
            assert!(
                client_head(bad.as_bytes(), false, false, &mut out).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn bytes_ahead_of_a_connection_are_read_first() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let addr = l.local_addr().expect("addr");
                let mut c = TcpStream::connect(addr).await.expect("connect");
                let (s, _) = l.accept().await.expect("accept");
                c.write_all(b" world").await.expect("write");
                drop(c);
                let mut p = Prefixed {
                    pre: Bytes::from_static(b"hello"),
                    io: s,
                };
                let mut all = String::new();
                p.read_to_string(&mut all).await.expect("read");
                assert_eq!(all, "hello world");
            });
    }
}
