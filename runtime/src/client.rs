//! Steward's own HTTP requests: the launcher's `GET /v1/domain`, the server's reports and its
//! watch of the Master's event stream, `stop-server` asking a server for its status. One blocking
//! reqwest client (every caller is a plain thread), with the failures that matter told apart:
//! refused (nothing listens), no answer within the connect timeout, accepted but silent.
//!
//! A Master URL `https://HOST:PORT` is spoken to over TLS (rustls, the process's `ring` provider),
//! trusting the platform's roots plus `GIT_SSL_CAINFO`, as the Git fetches do; `HOST:PORT` or
//! `http://HOST:PORT` is plain HTTP. No proxy from the environment and no redirects: these
//! requests go to the address given, credentials included, and nowhere else.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use reqwest::blocking;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection refused by {addr} (nothing listens there)")]
    Refused { addr: String },
    #[error("no answer from {addr} within {} ms", .timeout.as_millis())]
    NoConnection { addr: String, timeout: Duration },
    #[error("{addr} accepted the connection but did not answer within {} ms", .timeout.as_millis())]
    NoAnswer { addr: String, timeout: Duration },
    #[error("TLS with {addr}: {error}")]
    Tls { addr: String, error: String },
    #[error("cannot connect to {addr}: {error}")]
    Connect { addr: String, error: String },
    #[error("{addr}: {error}")]
    Http { addr: String, error: String },
    #[error("{addr}: GET {path} answered {status}")]
    Status {
        addr: String,
        path: String,
        status: u16,
    },
}

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Splits a Master URL into whether it is TLS and its `HOST:PORT`.
pub fn split(base: &str) -> (bool, &str) {
    let base = base.trim_end_matches('/');
    match base.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, base.trim_start_matches("http://")),
    }
}

/// Requests to one Master (or server) URL, with optional Basic credentials.
pub struct Client {
    http: blocking::Client,
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    base: String,
    host_port: String,
    credentials: Option<(String, String)>,
    connect_timeout: Duration,
    timeout: Duration,
}

impl Client {
    /// A client for `url` (`HOST:PORT`, `http://…` or `https://…`): connecting waits up to
    /// `connect_timeout`; the answer, and then each read of its body, up to `timeout`, so a peer
    /// that accepts but never answers cannot hang the caller either.
    pub fn new(
        url: &str,
        credentials: Option<(&str, &str)>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let (tls, host_port) = split(url);
        let tls_err = |error: String| ClientError::Tls {
            addr: host_port.to_owned(),
            error,
        };
        // reqwest takes the process's rustls provider even for plain HTTP.
        reconciler::tls::install_provider();
        let mut builder = blocking::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            // A connection per request, as the Master's idle timeouts expect: a kept one could
            // be closed by the Master just as a heartbeat goes out on it.
            .pool_max_idle_per_host(0);
        builder = if tls {
            builder.tls_certs_merge(reconciler::tls::reqwest_extra_roots().map_err(tls_err)?)
        } else {
            // Plain HTTP never verifies a certificate: an empty root store spares loading the
            // platform's (milliseconds at every launcher start).
            builder.tls_certs_only(std::iter::empty())
        };
        let http = builder.build().map_err(|e| tls_err(root_cause(&e)))?;
        Ok(Client {
            http,
            base: format!("{}://{host_port}", if tls { "https" } else { "http" }),
            host_port: host_port.to_owned(),
            credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
            connect_timeout,
            timeout,
        })
    }

    /// `GET path`, expecting JSON.
    pub fn get(&self, path: &str) -> Result<Response, ClientError> {
        self.send(self.request(reqwest::Method::GET, path, "application/json"))
    }

    /// `POST path` with a JSON body.
    pub fn post_json(&self, path: &str, json: Vec<u8>) -> Result<Response, ClientError> {
        let req = self
            .request(reqwest::Method::POST, path, "application/json")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json);
        self.send(req)
    }

    /// `DELETE path`, expecting JSON.
    pub fn delete(&self, path: &str) -> Result<Response, ClientError> {
        self.send(self.request(reqwest::Method::DELETE, path, "application/json"))
    }

    /// `GET path` as a Server-Sent Events stream. Each read waits up to the client's `timeout`
    /// and then reports [`Next::Idle`], so a caller can look at its stop flag meanwhile.
    pub fn events(&self, path: &str) -> Result<Events, ClientError> {
        let req = self.request(reqwest::Method::GET, path, "text/event-stream");
        let resp = req.send().map_err(|e| self.classify(&e))?;
        if !resp.status().is_success() {
            return Err(ClientError::Status {
                addr: self.host_port.clone(),
                path: path.to_owned(),
                status: resp.status().as_u16(),
            });
        }
        Ok(Events {
            addr: self.host_port.clone(),
            body: BufReader::new(resp),
            line: Vec::new(),
            event: Event::default(),
        })
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        accept: &str,
    ) -> blocking::RequestBuilder {
        let req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::ACCEPT, accept);
        match &self.credentials {
            Some((user, password)) => req.basic_auth(user, Some(password)),
            None => req,
        }
    }

    fn send(&self, req: blocking::RequestBuilder) -> Result<Response, ClientError> {
        let resp = req.send().map_err(|e| self.classify(&e))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().map_err(|e| self.classify(&e))?.to_vec();
        Ok(Response { status, body })
    }

    /// Names a failure by what it means for the caller, not by reqwest's wording.
    fn classify(&self, e: &reqwest::Error) -> ClientError {
        let addr = self.host_port.clone();
        let mut refused = false;
        let mut tls = None;
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
                // An io::Error hides the error it wraps from `source()`.
                if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    tls = Some(t.to_string());
                }
            }
            if let Some(t) = err.downcast_ref::<rustls::Error>() {
                tls = Some(t.to_string());
            }
            source = err.source();
        }
        if refused {
            ClientError::Refused { addr }
        } else if let Some(error) = tls {
            ClientError::Tls { addr, error }
        } else if e.is_timeout() && e.is_connect() {
            ClientError::NoConnection {
                addr,
                timeout: self.connect_timeout,
            }
        } else if e.is_timeout() {
            ClientError::NoAnswer {
                addr,
                timeout: self.timeout,
            }
        } else if e.is_connect() {
            ClientError::Connect {
                addr,
                error: root_cause(e),
            }
        } else {
            ClientError::Http {
                addr,
                error: root_cause(e),
            }
        }
    }
}

/// The innermost error: reqwest's own wording ("error sending request for url") says nothing.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(e), |e| e.source())
        .last()
        .map_or_else(|| e.to_string(), ToString::to_string)
}

/// One Server-Sent Event: the `event:`, `id:` and `data:` fields the Master sends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: String,
    pub id: String,
    pub data: String,
}

/// What reading an event stream gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Event(Event),
    /// Nothing within the read timeout; the stream goes on.
    Idle,
    /// The peer closed the stream.
    End,
}

/// An open event stream.
pub struct Events {
    addr: String,
    body: BufReader<blocking::Response>,
    /// A line not yet complete (a read timed out in the middle of it).
    line: Vec<u8>,
    event: Event,
}

impl Events {
    /// The next event, [`Next::Idle`] after a read timeout, or [`Next::End`].
    pub fn next_event(&mut self) -> Result<Next, ClientError> {
        loop {
            match self.body.read_until(b'\n', &mut self.line) {
                // At the end a partial line is dropped, as the SSE format says.
                Ok(0) => return Ok(Next::End),
                Ok(_) if !self.line.ends_with(b"\n") => return Ok(Next::End),
                Ok(_) => {
                    let line = String::from_utf8_lossy(&self.line).into_owned();
                    self.line.clear();
                    if let Some(event) = field(&mut self.event, &line) {
                        return Ok(Next::Event(event));
                    }
                }
                Err(e) if is_read_timeout(&e) => return Ok(Next::Idle),
                Err(e) => {
                    return Err(ClientError::Http {
                        addr: self.addr.clone(),
                        error: e.to_string(),
                    });
                }
            }
        }
    }
}

fn is_read_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    ) || e
        .get_ref()
        .and_then(|i| i.downcast_ref::<reqwest::Error>())
        .is_some_and(reqwest::Error::is_timeout)
}

/// Takes one line of an event stream into `event`; an empty line completes it (returned, unless
/// it had no field: keep-alive comments make such empty events).
fn field(event: &mut Event, line: &str) -> Option<Event> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.is_empty() {
        let done = std::mem::take(event);
        return (done != Event::default()).then_some(done);
    }
    let (name, value) = line.split_once(':').unwrap_or((line, ""));
    let value = value.strip_prefix(' ').unwrap_or(value);
    match name {
        "event" => event.kind = value.to_owned(),
        "id" => event.id = value.to_owned(),
        "data" => {
            if !event.data.is_empty() {
                event.data.push('\n');
            }
            event.data.push_str(value);
        }
        // Comments (`: keep-alive`) and unknown fields.
        _ => {}
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_urls_split_into_tls_and_address() {
        assert_eq!(split("127.0.0.1:9736"), (false, "127.0.0.1:9736"));
        assert_eq!(split("http://h:1/"), (false, "h:1"));
        assert_eq!(split("https://h:1"), (true, "h:1"));
    }

    #[test]
    fn event_lines_make_events() {
        let mut e = Event::default();
        let lines = [
            ": keep-alive",
            "",
            "event: pinned",
            "id: abc",
            "data: {\"a\":1}",
            "data: more",
            "\r\n",
        ];
        let got: Vec<Event> = lines.iter().filter_map(|l| field(&mut e, l)).collect();
        assert_eq!(
            got,
            [Event {
                kind: "pinned".into(),
                id: "abc".into(),
                data: "{\"a\":1}\nmore".into(),
            }]
        );
    }

    #[test]
    fn refused_fails_fast_and_says_so() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Client::new(
            &format!("127.0.0.1:{port}"),
            None,
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .unwrap();
        let e = c.get("/").unwrap_err();
        assert!(matches!(e, ClientError::Refused { .. }), "{e}");
    }

    #[test]
    fn a_silent_peer_is_no_answer() {
        // Accepts (the kernel's backlog) but never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let c = Client::new(
            &addr.to_string(),
            Some(("u", "p")),
            Duration::from_secs(5),
            Duration::from_millis(200),
        )
        .unwrap();
        let e = c.get("/").unwrap_err();
        assert!(matches!(e, ClientError::NoAnswer { .. }), "{e}");
        assert!(
            e.to_string().contains("did not answer within 200 ms"),
            "{e}"
        );
    }
}
