//! Serving: the accept loop (each client connection starts in the relay, `super::relay`), the
//! hyper connection the relay hands everything else to, and each such request's way through
//! capacity, routing, its handler (static files or the proxy) and the access log.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::OwnedSemaphorePermit;

use super::listen::ListenerRt;
use super::proxy::Peer;
use super::route::{Limits, Snapshot, under};
use super::{Body, Handler, Inner, Route, access, fmt_duration, read_snapshot};

pub(super) async fn accept_loop(inner: Arc<Inner>, index: usize, tcp: tokio::net::TcpListener) {
    let mut stop = inner.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            a = tcp.accept() => a,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            // Out of descriptors and the like: back off briefly rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        inner.connections.fetch_add(1, Ordering::SeqCst);
        let inner = Arc::clone(&inner);
        tokio::spawn(async move {
            super::relay::serve(&inner, index, stream, peer).await;
            if inner.connections.fetch_sub(1, Ordering::SeqCst) == 1 {
                inner.idle.notify_waiters();
            }
        });
    }
}

/// Serves the rest of a connection with hyper (everything the relay does not take).
pub(super) async fn hyper_connection<IO>(inner: &Arc<Inner>, index: usize, io: IO, peer: Arc<Peer>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut stop = inner.shutdown.subscribe();
    let svc_inner = Arc::clone(inner);
    let service = hyper::service::service_fn(move |req| {
        let inner = Arc::clone(&svc_inner);
        let peer = Arc::clone(&peer);
        async move { Ok::<_, Infallible>(handle(&inner, index, &peer, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    if *stop.borrow() {
        conn.as_mut().graceful_shutdown();
    }
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.changed() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

pub(super) fn plain(code: StatusCode) -> Response<Body> {
    let text = code.canonical_reason().unwrap_or("");
    let mut r = Response::new(Body::full(format!("{} {text}\n", code.as_u16())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(super) fn unavailable() -> Response<Body> {
    let mut r = plain(StatusCode::SERVICE_UNAVAILABLE);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Capacity: a free slot at once, else wait up to queue-timeout; `None` if none came.
pub(super) async fn admit(listener: &ListenerRt, limits: &Limits) -> Option<OwnedSemaphorePermit> {
    match Arc::clone(&listener.pool.sem).try_acquire_owned() {
        Ok(p) => Some(p),
        Err(_) => tokio::time::timeout(
            limits.queue_timeout,
            Arc::clone(&listener.pool.sem).acquire_owned(),
        )
        .await
        .ok()
        .and_then(Result::ok),
    }
}

async fn handle(
    inner: &Arc<Inner>,
    index: usize,
    peer: &Peer,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let snap = read_snapshot(inner);
    let Some(limits) = snap.limits.get(index).cloned() else {
        return unavailable();
    };
    let Some(listener) = inner.listeners.get(index) else {
        return unavailable();
    };
    let permit = admit(listener, &limits).await;
    let log = snap.access_log.enabled.then(|| RequestLine::of(&req));
    let (resp, app) = match permit {
        None => {
            listener.pool.rejected.fetch_add(1, Ordering::Relaxed);
            (unavailable(), None)
        }
        Some(permit) => {
            let route = snap
                .routes
                .iter()
                .find(|r| under(req.uri().path(), &r.context));
            match route {
                None => {
                    inner.stats.unrouted();
                    (plain(StatusCode::NOT_FOUND), None)
                }
                Some(route) => {
                    let timed_out = matches!(&route.handler, Handler::Process(_))
                        .then(|| (req.method().clone(), req.uri().clone()));
                    let fut = dispatch(route, req, peer);
                    let resp = match tokio::time::timeout(limits.request_timeout, fut).await {
                        Ok(r) => r,
                        Err(_) => {
                            if let (Handler::Process(p), Some((method, target))) =
                                (&route.handler, timed_out)
                            {
                                p.report(&format!(
                                    "{method} {target}: no response within request-timeout {}; answered 504",
                                    fmt_duration(limits.request_timeout)
                                ));
                            }
                            plain(StatusCode::GATEWAY_TIMEOUT)
                        }
                    };
                    route
                        .stats
                        .record(resp.status().as_u16(), started.elapsed());
                    (
                        resp.map(|b| b.with_permit(Some(permit))),
                        Some(route.app.as_str()),
                    )
                }
            }
        }
    };
    if let Some(line) = log {
        let bytes = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let line = Line {
            method: &line.method,
            target: &line.target,
            version: line.version,
            referer: line.referer.as_deref(),
            user_agent: line.user_agent.as_deref(),
        };
        log_access(
            inner,
            &snap,
            peer,
            &line,
            resp.status().as_u16(),
            bytes,
            started,
            app,
        );
    }
    resp
}

/// A request as the access log names it.
pub(super) struct Line<'a> {
    pub(super) method: &'a str,
    pub(super) target: &'a str,
    pub(super) version: &'static str,
    pub(super) referer: Option<&'a str>,
    pub(super) user_agent: Option<&'a str>,
}

/// Writes one access-log line (the caller checked that the log is on).
#[allow(clippy::too_many_arguments)]
pub(super) fn log_access(
    inner: &Inner,
    snap: &Snapshot,
    peer: &Peer,
    line: &Line<'_>,
    status: u16,
    bytes: Option<u64>,
    started: Instant,
    app: Option<&str>,
) {
    let e = access::Entry {
        remote: peer.addr.ip(),
        method: line.method,
        target: line.target,
        version: line.version,
        status,
        bytes,
        referer: line.referer,
        user_agent: line.user_agent,
        duration: started.elapsed(),
        app,
    };
    inner.access.write(access::format(
        snap.access_log.format,
        &e,
        SystemTime::now(),
    ));
}

/// What the access log needs from a request, taken before the request is consumed.
struct RequestLine {
    method: String,
    target: String,
    version: &'static str,
    referer: Option<String>,
    user_agent: Option<String>,
}

impl RequestLine {
    fn of(req: &Request<Incoming>) -> RequestLine {
        let h = |n| {
            req.headers()
                .get(n)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        RequestLine {
            method: req.method().to_string(),
            target: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.to_string()),
            version: match req.version() {
                hyper::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            referer: h(header::REFERER),
            user_agent: h(header::USER_AGENT),
        }
    }
}

/// The part of `path` below a static route's context path, as its handler takes it.
pub(super) fn static_rest<'a>(context: &str, path: &'a str) -> &'a str {
    if context == "/" {
        path
    } else {
        &path[context.len().min(path.len())..]
    }
}

async fn dispatch(route: &Route, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
    match &route.handler {
        Handler::Static(app) => {
            let path = req.uri().path();
            let rest = static_rest(&route.context, path);
            app.serve(req.method(), req.headers(), rest, path, req.uri().query())
                .await
        }
        Handler::Process(p) => p.forward(&route.prefix, peer, req).await,
    }
}
