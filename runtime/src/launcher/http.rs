//! The few HTTP requests launchers and servers make to the Master themselves (`GET /v1/domain`,
//! reports, the event stream): a few lines over `TcpStream` give exact failure reasons (refused
//! vs. no answer) and a bounded wait. A Master URL `https://HOST:PORT` is spoken to over TLS,
//! trusting the platform's roots plus `GIT_SSL_CAINFO`; `HOST:PORT` or `http://HOST:PORT` is
//! plain HTTP.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use base64ct::Encoding;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("TLS with {addr}: {error}")]
    Tls { addr: String, error: String },
    #[error("{0}")]
    Unreachable(String),
    #[error("{addr}: {error}")]
    Io { addr: String, error: std::io::Error },
    #[error("{0}: the answer is not HTTP")]
    Malformed(String),
}

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Connects to `host:port`: refused fails at once, an unanswering host after `timeout`.
pub fn connect(host_port: &str, timeout: Duration) -> Result<TcpStream, HttpError> {
    let addrs: Vec<_> = host_port
        .to_socket_addrs()
        .map_err(|e| HttpError::Unreachable(format!("cannot resolve {host_port}: {e}")))?
        .collect();
    let mut last = format!("{host_port} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = format!("connection refused by {addr} (nothing listens there)");
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                last = format!("no answer from {addr} within {} ms", timeout.as_millis());
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(HttpError::Unreachable(last))
}

/// A connection to the Master, plain or TLS.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref(),
        }
    }

    /// Bounds every read and write of the exchange.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.tcp().set_read_timeout(timeout)?;
        self.tcp().set_write_timeout(timeout)
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// Splits a Master URL into whether it is TLS and its `HOST:PORT`.
pub fn split(base: &str) -> (bool, &str) {
    let base = base.trim_end_matches('/');
    match base.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, base.trim_start_matches("http://")),
    }
}

/// Opens a connection to a Master URL (`HOST:PORT`, `http://…` or `https://…`).
pub fn open(base: &str, connect_timeout: Duration) -> Result<Conn, HttpError> {
    let (tls, host_port) = split(base);
    let stream = connect(host_port, connect_timeout)?;
    if !tls {
        return Ok(Conn::Plain(stream));
    }
    let tls_err = |error: String| HttpError::Tls {
        addr: host_port.to_owned(),
        error,
    };
    let config = reconciler::tls::client_config().map_err(|e| tls_err(e.to_string()))?;
    let host = host_port
        .rsplit_once(':')
        .map_or(host_port, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| tls_err(format!("`{host}` is not a valid server name: {e}")))?;
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| tls_err(e.to_string()))?;
    Ok(Conn::Tls(Box::new(rustls::StreamOwned::new(conn, stream))))
}

/// `GET path` on the Master URL `master` with optional Basic credentials: connecting waits up to
/// `connect_timeout`; each read and write of the exchange up to `timeout`, so a Master that
/// accepts but never answers cannot hang the launcher either.
pub fn get(
    master: &str,
    path: &str,
    credentials: Option<(&str, &str)>,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<Response, HttpError> {
    request(
        master,
        "GET",
        path,
        credentials,
        None,
        connect_timeout,
        timeout,
    )
}

/// One request with an optional JSON body, bounded as [`get`] is.
pub fn request(
    master: &str,
    method: &str,
    path: &str,
    credentials: Option<(&str, &str)>,
    json: Option<&[u8]>,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let mut stream = open(master, connect_timeout)?;
    let host_port = split(master).1;
    let io = |error| HttpError::Io {
        addr: host_port.to_owned(),
        error,
    };
    stream.set_timeout(Some(timeout)).map_err(io)?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host_port}\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    if let Some((user, password)) = credentials {
        req.push_str(&format!("Authorization: {}\r\n", basic(user, password)));
    }
    if let Some(body) = json {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(json.unwrap_or_default());
    stream.write_all(&bytes).map_err(io)?;
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    // A TLS peer that closes without close_notify still sent a complete HTTP/1.0-style answer.
    let read = match read {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(0),
        other => other,
    };
    read.map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            HttpError::Unreachable(format!(
                "{host_port} accepted the connection but did not answer within {} ms",
                timeout.as_millis()
            ))
        } else {
            io(e)
        }
    })?;
    parse(&raw).ok_or_else(|| HttpError::Malformed(host_port.to_owned()))
}

/// The `Authorization` header value for HTTP Basic.
pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64ct::Base64::encode_string(format!("{user}:{password}").as_bytes())
    )
}

fn parse(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[end + 4..];
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Some(Response { status, body })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let r = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{\"\r\n1\r\n}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"{\"}");
    }

    #[test]
    fn refused_fails_fast() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = std::time::Instant::now();
        let e = get(
            &format!("127.0.0.1:{port}"),
            "/",
            None,
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
