//! `static` applications: files of a deploy image over HTTP, with content types, the index file,
//! single byte ranges, conditional requests (ETag, Last-Modified) and HEAD.
//!
//! A deploy image never changes in place (deployment replaces it whole, and the engine then
//! builds a new [`StaticApp`]), so what a request path resolves to is cached for the life of the
//! app: after the first request, a small file is served from memory with no system call at all.
//! Paths are decoded segment by segment and `..` refused before touching the disk; what is found
//! is canonicalized and must lie inside the image root, so a symbolic link cannot lead outside.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};

use super::body::Body;

/// Files up to this size are kept in memory after their first request.
const CACHE_FILE_MAX: u64 = 256 << 10;
/// Most paths remembered per application (further ones are resolved on each request).
const CACHE_ENTRIES_MAX: usize = 4096;
/// Chunk size when streaming a large file.
const CHUNK: usize = 64 << 10;

/// Content types by file extension: the common web formats. Anything else is
/// `application/octet-stream`.
const TYPES: &[(&str, &str)] = &[
    ("html", "text/html; charset=utf-8"),
    ("htm", "text/html; charset=utf-8"),
    ("css", "text/css; charset=utf-8"),
    ("js", "text/javascript; charset=utf-8"),
    ("mjs", "text/javascript; charset=utf-8"),
    ("json", "application/json"),
    ("map", "application/json"),
    ("txt", "text/plain; charset=utf-8"),
    ("md", "text/markdown; charset=utf-8"),
    ("csv", "text/csv; charset=utf-8"),
    ("xml", "application/xml"),
    ("svg", "image/svg+xml"),
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("gif", "image/gif"),
    ("webp", "image/webp"),
    ("avif", "image/avif"),
    ("ico", "image/x-icon"),
    ("woff", "font/woff"),
    ("woff2", "font/woff2"),
    ("ttf", "font/ttf"),
    ("otf", "font/otf"),
    ("wasm", "application/wasm"),
    ("pdf", "application/pdf"),
    ("zip", "application/zip"),
    ("gz", "application/gzip"),
    ("tar", "application/x-tar"),
    ("mp4", "video/mp4"),
    ("webm", "video/webm"),
    ("mp3", "audio/mpeg"),
    ("ogg", "audio/ogg"),
    ("wav", "audio/wav"),
];

pub fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    TYPES
        .iter()
        .find(|(e, _)| *e == ext)
        .map(|(_, t)| *t)
        .unwrap_or("application/octet-stream")
}

/// One resolved file.
#[derive(Debug)]
struct FileMeta {
    path: PathBuf,
    len: u64,
    etag: HeaderValue,
    last_modified: HeaderValue,
    /// Whole seconds since the epoch: HTTP dates have no finer resolution.
    mtime_secs: u64,
    content_type: HeaderValue,
    data: Option<Bytes>,
}

/// What a request path resolves to.
#[derive(Debug, Clone)]
enum Resolved {
    File(Arc<FileMeta>),
    /// A directory asked for without its trailing slash: redirect, so relative links work.
    Directory,
    NotFound,
}

/// One `static` application.
#[derive(Debug)]
pub struct StaticApp {
    root: PathBuf,
    index: String,
    cache: RwLock<HashMap<String, Resolved>>,
}

impl StaticApp {
    /// Serves `image` with `index` for directories. The root is canonicalized once here.
    pub fn new(image: &Path, index: &str) -> std::io::Result<StaticApp> {
        Ok(StaticApp {
            root: image.canonicalize()?,
            index: index.to_owned(),
            cache: RwLock::new(HashMap::new()),
        })
    }

    /// Answers a request whose path below the context path is `rest` (raw, still percent-encoded;
    /// `""` for the context path itself). `full_path` is the whole request path, for redirects.
    pub async fn serve(
        self: &Arc<Self>,
        method: &Method,
        headers: &HeaderMap,
        rest: &str,
        full_path: &str,
        query: Option<&str>,
    ) -> Response<Body> {
        if method != Method::GET && method != Method::HEAD {
            let mut r = status(StatusCode::METHOD_NOT_ALLOWED);
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let Some(rel) = decode_path(rest) else {
            return status(StatusCode::BAD_REQUEST);
        };
        // The context path itself, without its slash: the image root, asked for as a file.
        let rel = if rest.is_empty() { ".".to_owned() } else { rel };
        let cached = self.cache.read().ok().and_then(|c| c.get(&rel).cloned());
        let resolved = match cached {
            Some(r) => r,
            None => {
                let this = Arc::clone(self);
                let key = rel.clone();
                let r = tokio::task::spawn_blocking(move || this.resolve(&key))
                    .await
                    .unwrap_or(Resolved::NotFound);
                if let Ok(mut c) = self.cache.write()
                    && c.len() < CACHE_ENTRIES_MAX
                    && !matches!(r, Resolved::NotFound)
                {
                    c.insert(rel, r.clone());
                }
                r
            }
        };
        match resolved {
            Resolved::NotFound => status(StatusCode::NOT_FOUND),
            Resolved::Directory => {
                let mut loc = format!("{full_path}/");
                if let Some(q) = query {
                    loc.push('?');
                    loc.push_str(q);
                }
                let mut r = status(StatusCode::MOVED_PERMANENTLY);
                if let Ok(v) = HeaderValue::from_str(&loc) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r
            }
            Resolved::File(meta) => respond(&meta, method, headers),
        }
    }

    /// Finds what `rel` (decoded, `/`-separated, no `..`) names inside the root.
    fn resolve(&self, rel: &str) -> Resolved {
        let wants_dir = rel.is_empty() || rel.ends_with('/');
        let mut path = if rel == "." {
            self.root.clone()
        } else {
            self.root.join(rel.trim_end_matches('/'))
        };
        let Ok(meta) = std::fs::metadata(&path) else {
            return Resolved::NotFound;
        };
        if meta.is_dir() {
            if !wants_dir {
                return Resolved::Directory;
            }
            path.push(&self.index);
        } else if wants_dir {
            return Resolved::NotFound;
        }
        // Canonicalizing follows every link; the result must still be inside the image.
        let Ok(real) = path.canonicalize() else {
            return Resolved::NotFound;
        };
        if !real.starts_with(&self.root) {
            return Resolved::NotFound;
        }
        let Ok(meta) = std::fs::metadata(&real) else {
            return Resolved::NotFound;
        };
        if !meta.is_file() {
            return Resolved::NotFound;
        }
        let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
        let mtime_secs = mtime
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let len = meta.len();
        let etag = format!("\"{len:x}-{mtime_secs:x}\"");
        let data = if len <= CACHE_FILE_MAX {
            match std::fs::read(&real) {
                Ok(d) if d.len() as u64 == len => Some(Bytes::from(d)),
                _ => return Resolved::NotFound,
            }
        } else {
            None
        };
        let (Ok(etag), Ok(last_modified)) = (
            HeaderValue::from_str(&etag),
            HeaderValue::from_str(&httpdate::fmt_http_date(
                UNIX_EPOCH + std::time::Duration::from_secs(mtime_secs),
            )),
        ) else {
            return Resolved::NotFound;
        };
        Resolved::File(Arc::new(FileMeta {
            content_type: HeaderValue::from_static(content_type(&real)),
            path: real,
            len,
            etag,
            last_modified,
            mtime_secs,
            data,
        }))
    }
}

/// The engine's plain answer (the same as for every other route).
fn status(code: StatusCode) -> Response<Body> {
    super::plain(code)
}

/// Decodes the path below the context path: each segment percent-decoded; `..` (in any
/// spelling), NUL, `\` and a `/` hidden inside a segment refused (`None`); `.` and empty segments
/// dropped. A trailing `/` is kept: it asks for a directory.
pub fn decode_path(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    for seg in raw.split('/') {
        if seg.is_empty() {
            continue;
        }
        let bytes = percent_decode(seg)?;
        let s = String::from_utf8(bytes).ok()?;
        if s == ".." || s.contains(['/', '\\', '\0']) {
            return None;
        }
        if s == "." {
            continue;
        }
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(&s);
    }
    if raw.ends_with('/') && !out.is_empty() {
        out.push('/');
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison, as RFC 9110 asks for GET).
fn none_match(value: &str, etag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let ours = strip(etag);
    value
        .split(',')
        .any(|t| t.trim() == "*" || strip(t) == ours)
}

/// A single byte range of `len` bytes: `Ok(None)` when the header is to be ignored (invalid or
/// several ranges), `Err(())` when unsatisfiable.
#[allow(clippy::result_unit_err)]
pub fn parse_range(value: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || len == 0 {
            return Err(());
        }
        return Ok(Some((len.saturating_sub(n), len - 1)));
    }
    let Ok(start) = a.parse::<u64>() else {
        return Ok(None);
    };
    let end = if b.is_empty() {
        len.saturating_sub(1)
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e.min(len.saturating_sub(1)),
            _ => return Ok(None),
        }
    };
    if start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

fn respond(meta: &Arc<FileMeta>, method: &Method, headers: &HeaderMap) -> Response<Body> {
    let get = |h| headers.get(h).and_then(|v: &HeaderValue| v.to_str().ok());
    let etag = meta.etag.to_str().unwrap_or_default();
    let not_modified = match (get(header::IF_NONE_MATCH), get(header::IF_MODIFIED_SINCE)) {
        (Some(inm), _) => none_match(inm, etag),
        (None, Some(ims)) => httpdate::parse_http_date(ims)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .is_some_and(|t| meta.mtime_secs <= t.as_secs()),
        (None, None) => false,
    };
    let mut builder = Response::builder()
        .header(header::ETAG, meta.etag.clone())
        .header(header::LAST_MODIFIED, meta.last_modified.clone());
    if not_modified {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR));
    }
    builder = builder
        .header(header::CONTENT_TYPE, meta.content_type.clone())
        .header(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // If-Range: the range applies only to the representation the client already has.
    let range_applies = match get(header::IF_RANGE) {
        None => true,
        Some(v) => v == etag || Some(v) == meta.last_modified.to_str().ok(),
    };
    let range = match get(header::RANGE).filter(|_| range_applies) {
        Some(r) => parse_range(r, meta.len),
        None => Ok(None),
    };
    let (code, start, len) = match range {
        Err(()) => {
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{}", meta.len))
                .body(Body::empty())
                .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR));
        }
        Ok(Some((s, e))) => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {s}-{e}/{}", meta.len));
            (StatusCode::PARTIAL_CONTENT, s, e - s + 1)
        }
        Ok(None) => (StatusCode::OK, 0, meta.len),
    };
    builder = builder
        .status(code)
        .header(header::CONTENT_LENGTH, len.to_string());
    let body = if method == Method::HEAD {
        Body::empty()
    } else if let Some(data) = &meta.data {
        let (s, e) = (start as usize, (start + len) as usize);
        Body::full(data.slice(s.min(data.len())..e.min(data.len())))
    } else {
        stream_file(meta.path.clone(), start, len)
    };
    builder
        .body(body)
        .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR))
}

/// Streams `len` bytes of `path` from `start` on a blocking thread.
fn stream_file(path: PathBuf, start: u64, len: u64) -> Body {
    use std::io::{Read, Seek, SeekFrom};
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        if let Err(e) = f.seek(SeekFrom::Start(start)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut left = len;
        while left > 0 {
            let mut buf = vec![0u8; CHUNK.min(left as usize)];
            match f.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    left -= n as u64;
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    Body::stream(rx, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_refuses_traversal() {
        assert_eq!(decode_path("/a/%20b/").as_deref(), Some("a/ b/"));
        assert_eq!(decode_path("").as_deref(), Some(""));
        assert_eq!(decode_path("/./a//b").as_deref(), Some("a/b"));
        for bad in [
            "/../x",
            "/%2e%2e/x",
            "/%2E%2E",
            "/a%2fb",
            "/a%5cb",
            "/%00",
            "/%zz",
        ] {
            assert_eq!(decode_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Ok(Some((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
    }

    #[test]
    fn etag_matching() {
        assert!(none_match("\"a\", W/\"b\"", "\"b\""));
        assert!(none_match("*", "\"b\""));
        assert!(!none_match("\"a\"", "\"b\""));
    }
}
