//! STOMP 1.2 frames: the codec. A frame is a command line, header lines (`name:value`, escaped
//! with `\r` `\n` `\c` `\\` except in CONNECT/CONNECTED frames), a blank line, a body (exactly
//! `content-length` bytes when that header is present, else up to the first NUL) and a NUL.
//! Lone EOLs between frames are heart-beats. Anything else is a [`FrameError`]: the connection
//! answers it with an ERROR frame and closes; the decoder never panics on input.

use bytes::{Buf, BytesMut};

/// Longest header section (command line and headers) accepted.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most headers in one frame.
pub const MAX_HEADERS: usize = 128;

/// Why input is not a STOMP 1.2 frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the frame's headers exceed {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("the frame has more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("the frame's body exceeds {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("header line {0:?} has no colon")]
    NoColon(String),
    #[error("header {0:?} has an invalid escape sequence")]
    BadEscape(String),
    #[error("the frame's headers are not UTF-8")]
    NotUtf8,
    #[error("content-length {0:?} is not a number")]
    BadContentLength(String),
    #[error("the body is not followed by a NUL octet")]
    MissingNul,
}

/// The commands of STOMP 1.2, both directions.
const COMMANDS: &[&str] = &[
    "CONNECT",
    "STOMP",
    "SEND",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "ACK",
    "NACK",
    "BEGIN",
    "COMMIT",
    "ABORT",
    "DISCONNECT",
    "CONNECTED",
    "MESSAGE",
    "RECEIPT",
    "ERROR",
];

/// One frame. Headers keep their order; a repeated header's first value is the one that counts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    pub command: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn new(command: &str) -> Frame {
        Frame {
            command: command.to_owned(),
            ..Frame::default()
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Frame {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// The value of header `name` (its first occurrence).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Appends the wire form of this frame to `out` (with `content-length`, so bodies may hold
    /// NULs).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let raw = self.command == "CONNECT" || self.command == "CONNECTED";
        out.extend_from_slice(self.command.as_bytes());
        out.push(b'\n');
        for (k, v) in &self.headers {
            if k == "content-length" {
                continue;
            }
            push_escaped(out, k, raw);
            out.push(b':');
            push_escaped(out, v, raw);
            out.push(b'\n');
        }
        if !self.body.is_empty() || matches!(self.command.as_str(), "MESSAGE" | "SEND" | "ERROR") {
            out.extend_from_slice(format!("content-length:{}\n", self.body.len()).as_bytes());
        }
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out.push(0);
    }
}

fn push_escaped(out: &mut Vec<u8>, s: &str, raw: bool) {
    if raw {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b':' => out.extend_from_slice(b"\\c"),
            _ => out.push(b),
        }
    }
}

fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            'r' => '\r',
            'n' => '\n',
            'c' => ':',
            '\\' => '\\',
            _ => return None,
        });
    }
    Some(out)
}

/// What [`decode`] found at the start of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A heart-beat (one EOL), consumed.
    HeartBeat,
    Frame(Frame),
}

/// Takes one frame (or one heart-beat EOL) off the front of `buf`; `Ok(None)` when more input is
/// needed. `max_body`: the largest body accepted.
pub fn decode(buf: &mut BytesMut, max_body: usize) -> Result<Option<Decoded>, FrameError> {
    if buf.first() == Some(&b'\n') {
        buf.advance(1);
        return Ok(Some(Decoded::HeartBeat));
    }
    if buf.starts_with(b"\r\n") {
        buf.advance(2);
        return Ok(Some(Decoded::HeartBeat));
    }
    if buf.len() == 1 && buf[0] == b'\r' {
        return Ok(None);
    }
    // The header section ends at the first empty line.
    let Some(end) = find_blank_line(buf) else {
        if buf.len() > MAX_HEADER_BYTES {
            return Err(FrameError::HeadersTooLarge);
        }
        return Ok(None);
    };
    let (head_len, body_start) = end;
    if head_len > MAX_HEADER_BYTES {
        return Err(FrameError::HeadersTooLarge);
    }
    let head = std::str::from_utf8(&buf[..head_len]).map_err(|_| FrameError::NotUtf8)?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let command = lines.next().unwrap_or_default().to_owned();
    if !COMMANDS.contains(&command.as_str()) {
        return Err(FrameError::UnknownCommand(command));
    }
    let raw = command == "CONNECT" || command == "CONNECTED";
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == MAX_HEADERS {
            return Err(FrameError::TooManyHeaders);
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(FrameError::NoColon(line.to_owned()));
        };
        let (k, v) = if raw {
            (k.to_owned(), v.to_owned())
        } else {
            let bad = || FrameError::BadEscape(k.to_owned());
            (unescape(k).ok_or_else(bad)?, unescape(v).ok_or_else(bad)?)
        };
        headers.push((k, v));
    }
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| FrameError::BadContentLength(v.clone()))
        })
        .transpose()?;
    let body_len = match length {
        Some(n) => {
            if n > max_body {
                return Err(FrameError::BodyTooLarge { limit: max_body });
            }
            if buf.len() < body_start + n + 1 {
                return Ok(None);
            }
            if buf[body_start + n] != 0 {
                return Err(FrameError::MissingNul);
            }
            n
        }
        None => match buf[body_start..].iter().position(|&b| b == 0) {
            Some(n) if n > max_body => return Err(FrameError::BodyTooLarge { limit: max_body }),
            Some(n) => n,
            None if buf.len() - body_start > max_body => {
                return Err(FrameError::BodyTooLarge { limit: max_body });
            }
            None => return Ok(None),
        },
    };
    let body = buf[body_start..body_start + body_len].to_vec();
    buf.advance(body_start + body_len + 1);
    Ok(Some(Decoded::Frame(Frame {
        command,
        headers,
        body,
    })))
}

/// `(length of the header section without its final EOL, start of the body)`.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        let rest = &buf[nl + 1..];
        let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        if rest.first() == Some(&b'\n') {
            return Some((line_end, nl + 2));
        }
        if rest.starts_with(b"\r\n") {
            return Some((line_end, nl + 3));
        }
        if rest.is_empty() || rest == b"\r" {
            return None;
        }
        i = nl + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: &[u8]) -> Result<Option<Decoded>, FrameError> {
        decode(&mut BytesMut::from(input), 1024)
    }

    fn frame(input: &[u8]) -> Frame {
        match one(input) {
            Ok(Some(Decoded::Frame(f))) => f,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_frame_with_escaped_headers_and_a_nul_terminated_body() {
        let f = frame(b"SEND\ndestination:/queue/a\nx:a\\cb\\\\c\\nd\\re\n\nhello\0");
        assert_eq!(f.command, "SEND");
        assert_eq!(f.get("destination"), Some("/queue/a"));
        assert_eq!(f.get("x"), Some("a:b\\c\nd\re"));
        assert_eq!(f.body, b"hello");
    }

    #[test]
    fn content_length_allows_nuls_in_the_body_and_crlf_lines() {
        let f = frame(b"SEND\r\ndestination:/queue/a\r\ncontent-length:3\r\n\r\na\0b\0");
        assert_eq!(f.body, b"a\0b");
    }

    #[test]
    fn the_first_of_repeated_headers_counts_and_connect_is_not_unescaped() {
        let f = frame(b"MESSAGE\nk:1\nk:2\n\n\0");
        assert_eq!(f.get("k"), Some("1"));
        let c = frame(b"CONNECT\npasscode:a\\cb\n\n\0");
        assert_eq!(c.get("passcode"), Some("a\\cb"));
    }

    #[test]
    fn partial_input_waits_and_leaves_the_buffer_alone() {
        let whole = b"SEND\ndestination:/queue/a\ncontent-length:5\n\nhello\0".to_vec();
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            let before = buf.clone();
            let r = decode(&mut buf, 1024);
            // Cuts inside the leading command cannot be heart-beats (the frame starts with S).
            assert_eq!(r, Ok(None), "cut at {cut}");
            assert_eq!(buf, before);
        }
    }

    #[test]
    fn heart_beats_between_frames_and_two_frames_in_one_buffer() {
        let mut buf = BytesMut::from(&b"\n\r\nACK\nid:1\n\n\0NACK\nid:2\n\n\0"[..]);
        assert_eq!(decode(&mut buf, 10), Ok(Some(Decoded::HeartBeat)));
        assert_eq!(decode(&mut buf, 10), Ok(Some(Decoded::HeartBeat)));
        let a = decode(&mut buf, 10);
        assert!(
            matches!(a, Ok(Some(Decoded::Frame(ref f))) if f.command == "ACK"),
            "{a:?}"
        );
        let n = decode(&mut buf, 10);
        assert!(matches!(n, Ok(Some(Decoded::Frame(ref f))) if f.get("id") == Some("2")));
        assert!(buf.is_empty());
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert_eq!(
            one(b"HELLO\n\n\0"),
            Err(FrameError::UnknownCommand("HELLO".into()))
        );
        assert_eq!(
            one(b"SEND\nnocolon\n\n\0"),
            Err(FrameError::NoColon("nocolon".into()))
        );
        assert_eq!(
            one(b"SEND\nk:a\\tb\n\n\0"),
            Err(FrameError::BadEscape("k".into()))
        );
        assert_eq!(
            one(b"SEND\nk:a\\\n\n\0"),
            Err(FrameError::BadEscape("k".into()))
        );
        assert_eq!(
            one(b"SEND\ncontent-length:x\n\n\0"),
            Err(FrameError::BadContentLength("x".into()))
        );
        assert_eq!(
            one(b"SEND\ncontent-length:2\n\nabc\0"),
            Err(FrameError::MissingNul)
        );
        assert_eq!(one(b"SEND\nk:\xff\n\n\0"), Err(FrameError::NotUtf8));
    }

    #[test]
    fn limits_are_enforced_before_the_input_is_complete() {
        assert_eq!(
            one(b"SEND\ncontent-length:2000\n\n"),
            Err(FrameError::BodyTooLarge { limit: 1024 })
        );
        let mut long = b"SEND\n\n".to_vec();
        long.extend(std::iter::repeat_n(b'a', 1100));
        assert_eq!(one(&long), Err(FrameError::BodyTooLarge { limit: 1024 }));
        let mut head = b"SEND\nk:".to_vec();
        head.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES + 1));
        assert_eq!(one(&head), Err(FrameError::HeadersTooLarge));
        let mut many = b"SEND\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend(format!("h{i}:v\n").bytes());
        }
        many.extend(b"\n\0");
        assert_eq!(one(&many), Err(FrameError::TooManyHeaders));
    }

    #[test]
    fn encode_then_decode_is_the_identity() {
        let f = Frame::new("MESSAGE")
            .header("destination", "/queue/a")
            .header("odd:name", "line\nbreak\\ and\r")
            .header("content-length", "3");
        let f = Frame {
            body: b"x\0y".to_vec(),
            ..f
        };
        let mut out = Vec::new();
        f.encode(&mut out);
        let back = frame(&out);
        assert_eq!(back.get("odd:name"), Some("line\nbreak\\ and\r"));
        assert_eq!(back.get("content-length"), Some("3"));
        assert_eq!(back.body, b"x\0y");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic fuzz: every prefix and every single-byte corruption of a frame.
        let good = b"SEND\ndestination:/queue/a\ncontent-length:3\n\nabc\0".to_vec();
        for i in 0..good.len() {
            for b in [0u8, b'\n', b'\r', b':', b'\\', 0xff] {
                let mut bad = good.clone();
                bad[i] = b;
                let mut buf = BytesMut::from(&bad[..]);
                for _ in 0..8 {
                    match decode(&mut buf, 1024) {
                        Ok(Some(_)) => continue,
                        _ => break,
                    }
                }
            }
        }
    }
}
