//! The one HTTP client of the tests, over a plain `TcpStream` so tests control every byte:
//! one request per connection (`Connection: close`, Basic credentials, JSON bodies), a
//! keep-alive connection for load loops, and an SSE subscriber.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use super::text;

/// The credentials of the example domains' administrator.
pub const ADMIN: Option<(&str, &str)> = Some(("admin", "admin"));

/// `GET path` without credentials.
pub fn get(port: u16, path: &str) -> std::io::Result<Response> {
    request(port, "GET", path, None)
}

/// A server's `GET /v1/status` as JSON (as the example domains' administrator: the route needs
/// `servers:read`); `Null` while it does not answer.
pub fn status(port: u16) -> serde_json::Value {
    request(port, "GET", "/v1/status", ADMIN)
        .ok()
        .and_then(|r| serde_json::from_str(&r.body).ok())
        .unwrap_or(serde_json::Value::Null)
}

pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    /// The first header `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

pub fn basic(user: &str, password: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}");
    let mut out = String::new();
    for chunk in input.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn send_request(
    stream: &mut TcpStream,
    port: u16,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
) -> std::io::Result<()> {
    send_request_body(stream, port, method, path, auth, None)
}

pub fn send_request_body(
    stream: &mut TcpStream,
    port: u16,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: Option<&str>,
) -> std::io::Result<()> {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some((u, p)) = auth {
        req.push_str(&format!("Authorization: Basic {}\r\n", basic(u, p)));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    stream.write_all(req.as_bytes())
}

/// `POST path` with a JSON body.
pub fn post(port: u16, path: &str, auth: (&str, &str), body: &str) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    send_request_body(&mut stream, port, "POST", path, Some(auth), Some(body)).expect("send");
    read_response(stream).expect("response")
}

/// `POST path` with a JSON body and one extra header, without Basic credentials.
pub fn post_with_header(port: u16, path: &str, header: &str, body: &str) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{header}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).expect("send");
    read_response(stream).expect("response")
}

/// One HTTP/1.1 request with `Connection: close`; the body is read to the end (the Master answers
/// these routes with a content length, so no chunked decoding is needed).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    send_request(&mut stream, port, method, path, auth)?;
    read_response(stream)
}

/// One request with any extra `headers` (`Content-Type` among them when there is a body: none is
/// added) and `Connection: close`.
pub fn request_with(
    port: u16,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some((u, p)) = auth {
        req.push_str(&format!("Authorization: Basic {}\r\n", basic(u, p)));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).expect("send");
    read_response(stream).expect("response")
}

pub fn read_response(mut stream: TcpStream) -> std::io::Result<Response> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let raw = text(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(Response {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// An SSE subscriber: a thread reads `event:`/`data:` blocks into a channel.
pub struct Events {
    pub rx: mpsc::Receiver<(String, serde_json::Value)>,
}

impl Events {
    pub fn subscribe(port: u16) -> Events {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        send_request(
            &mut stream,
            port,
            "GET",
            "/v1/events",
            Some(("admin", "admin")),
        )
        .expect("send");
        let mut reader = BufReader::new(stream);
        // Wait for the response head: once it arrives, the subscription exists.
        let mut line = String::new();
        reader.read_line(&mut line).expect("status line");
        assert!(line.contains(" 200 "), "{line}");
        loop {
            line.clear();
            reader.read_line(&mut line).expect("header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // The body is chunked; SSE lines are what matter, chunk-size lines are skipped below.
            let (mut event, mut data) = (String::new(), String::new());
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                let l = line.trim_end_matches(['\r', '\n']);
                if let Some(v) = l.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = l.strip_prefix("data:") {
                    data.push_str(v.trim());
                } else if l.is_empty() && !data.is_empty() {
                    let v = serde_json::from_str(&data).unwrap_or(serde_json::Value::Null);
                    if tx.send((std::mem::take(&mut event), v)).is_err() {
                        return;
                    }
                    data.clear();
                }
                line.clear();
            }
        });
        Events { rx }
    }

    pub fn next(&self, within: Duration) -> (String, serde_json::Value) {
        self.rx.recv_timeout(within).expect("an event in time")
    }
}

/// A minimal HTTP/1.1 client on one connection: keep-alive (`Connection: close` is not sent),
/// so consecutive requests reuse it; for load loops that must notice a dropped connection.
pub struct HttpConn {
    reader: std::io::BufReader<std::net::TcpStream>,
}

/// One response: status code, headers (lower-cased names), body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl HttpConn {
    pub fn connect(port: u16) -> std::io::Result<HttpConn> {
        let s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(HttpConn {
            reader: std::io::BufReader::new(s),
        })
    }

    /// `GET path`; the response must carry a `Content-Length` (the engine's do).
    pub fn get(&mut self, path: &str) -> Result<HttpResponse, String> {
        use std::io::{BufRead, Read, Write};
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        self.reader
            .get_mut()
            .write_all(req.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| format!("read status: {e}"))?;
        if n == 0 {
            return Err("connection closed before the response".into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader
                .read_line(&mut h)
                .map_err(|e| format!("read header: {e}"))?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .ok_or("no content-length")?;
        let mut body = vec![0; len];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| format!("read body: {e}"))?;
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}
