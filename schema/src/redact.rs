//! Which parts of a file must never be shown: the values of secret-bearing keys and anything that
//! looks like a password hash. Problems are shown with their source line (human output, the JSON
//! `source_line`, the pusher's terminal), and a problem can sit on exactly such a line: a
//! plain-text `password = "…"`, or a misspelt `pasword = "$argon2id$…"`.
//!
//! The file is scanned with the TOML lexer (not the parser), so broken files are covered too.

use std::ops::Range;
use std::sync::OnceLock;

use toml_parser::Source;
use toml_parser::lexer::TokenKind;

use crate::fasthash::FastSet;
use crate::settings::SETTINGS;

/// What a redacted value is shown as.
pub const PLACEHOLDER: &str = "<redacted>";

/// Fragments of key names that say the value is a credential.
const SECRET_WORDS: &[&str] = &[
    "pass",
    "pwd",
    "secret",
    "token",
    "credential",
    "private",
    "apikey",
    "api-key",
    "api_key",
];

/// Whether a key's value is to be hidden: the key of a secret setting, a key close to one
/// (`pasword`), or a key naming a credential (`DB_PASSWORD`, `api-token`). Keys of non-secret
/// settings keep their values visible even if they contain such a word (`webhook-secret-env`
/// names a variable, not a secret).
pub fn is_secret_key(key: &str) -> bool {
    let key = key.trim_matches(['"', '\'']).to_ascii_lowercase();
    let (secret, plain) = leaves();
    if secret.contains(key.as_str()) {
        return true;
    }
    if plain.contains(key.as_str()) {
        return false;
    }
    if SECRET_WORDS.iter().any(|w| key.contains(w)) {
        return true;
    }
    // `did_you_mean` allows a third of the length in edits, so only keys of about a secret
    // name's length can be taken for one; the length test spares the edit distance.
    secret.iter().any(|s| {
        key.len().abs_diff(s.len()) <= (s.len().max(key.len()) / 3).max(1)
            && crate::values::did_you_mean(&key, [*s]).is_some()
    })
}

/// The last key segments of the secret settings, and of the others.
fn leaves() -> &'static (FastSet<&'static str>, FastSet<&'static str>) {
    static LEAVES: OnceLock<(FastSet<&'static str>, FastSet<&'static str>)> = OnceLock::new();
    LEAVES.get_or_init(|| {
        let (mut secret, mut plain) = (FastSet::default(), FastSet::default());
        for s in SETTINGS {
            let leaf = s.path.rsplit('.').next().unwrap_or(s.path);
            if s.secret {
                secret.insert(leaf);
            } else {
                plain.insert(leaf);
            }
        }
        (secret, plain)
    })
}

/// Whether a value looks like a password hash in the PHC or crypt format: `$argon2id$…`,
/// `$2b$…`, `$6$…`.
pub fn looks_like_hash(raw: &str) -> bool {
    let v = raw.trim_matches(['"', '\'']);
    let Some(rest) = v.strip_prefix('$') else {
        return false;
    };
    match rest.find('$') {
        Some(i) => {
            i > 0
                && rest[..i]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }
        None => false,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Frame {
    /// The document: keys at line starts.
    Top,
    /// `{ k = v, … }`; `all` when it is itself a secret value.
    Inline { all: bool },
    /// `[v, …]`, its values as secret as its key's.
    Array { secret: bool },
}

/// Byte ranges of `text` to hide, in order and disjoint. Linear in the text.
pub fn secret_ranges(text: &str) -> Vec<Range<usize>> {
    let source = Source::new(text);
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut stack = vec![Frame::Top];
    // In key position (before `=`) of the innermost table frame, and the last key segment seen.
    let mut expect_key = true;
    let mut key: Option<Range<usize>> = None;
    // The current key's value is secret (for the innermost table frame).
    let mut secret = false;
    let mut header = false;
    // Secrecy of the keys of enclosing inline tables, restored when they close.
    let mut saved: Vec<bool> = Vec::new();
    for token in source.lex() {
        let span = token.span();
        let range = span.start()..span.end();
        let top = *stack.last().unwrap_or(&Frame::Top);
        let value_secret = match top {
            Frame::Array { secret } => secret,
            Frame::Inline { all } => all || secret,
            Frame::Top => secret,
        };
        match token.kind() {
            TokenKind::Whitespace | TokenKind::Comment | TokenKind::Eof => {}
            TokenKind::Newline => {
                if !matches!(top, Frame::Array { .. }) {
                    // Inline tables end with their line; a broken one must not hide the rest.
                    while stack.len() > 1 && matches!(stack.last(), Some(Frame::Inline { .. })) {
                        stack.pop();
                    }
                    if stack.len() == 1 {
                        saved.clear();
                        expect_key = true;
                        secret = false;
                        header = false;
                        key = None;
                    }
                }
            }
            TokenKind::Equals => {
                if expect_key && !header && !matches!(top, Frame::Array { .. }) {
                    secret = key
                        .take()
                        .and_then(|k| text.get(k))
                        .is_some_and(is_secret_key);
                    expect_key = false;
                }
            }
            TokenKind::LeftSquareBracket => {
                if expect_key && top == Frame::Top {
                    header = true;
                } else if !header {
                    stack.push(Frame::Array {
                        secret: value_secret,
                    });
                }
            }
            TokenKind::RightSquareBracket => {
                if matches!(top, Frame::Array { .. }) {
                    stack.pop();
                }
            }
            TokenKind::LeftCurlyBracket => {
                saved.push(secret);
                // Inside a secret value, every value is hidden; the keys stay visible.
                stack.push(Frame::Inline { all: value_secret });
                expect_key = true;
                secret = false;
            }
            TokenKind::RightCurlyBracket => {
                if matches!(top, Frame::Inline { .. }) {
                    stack.pop();
                    secret = saved.pop().unwrap_or(false);
                    expect_key = false;
                }
            }
            TokenKind::Comma => {
                if matches!(top, Frame::Inline { .. }) {
                    expect_key = true;
                    secret = false;
                }
            }
            TokenKind::Dot => {}
            TokenKind::Atom
            | TokenKind::BasicString
            | TokenKind::LiteralString
            | TokenKind::MlBasicString
            | TokenKind::MlLiteralString => {
                if header {
                    continue;
                }
                if expect_key && !matches!(top, Frame::Array { .. }) {
                    key = Some(range);
                } else if value_secret || text.get(range.clone()).is_some_and(looks_like_hash) {
                    out.push(range);
                }
            }
        }
    }
    out.sort_by_key(|r| r.start);
    out
}

/// `text[window]` with every secret range in it replaced by [`PLACEHOLDER`], and a map from
/// offsets in `text` to offsets in the result.
pub struct Redacted {
    pub text: String,
    window_start: usize,
    /// (original range, start in `text`) of each replacement, in order.
    replaced: Vec<(Range<usize>, usize)>,
}

impl Redacted {
    /// `secrets` sorted and disjoint, as [`secret_ranges`] returns them.
    pub fn new(text: &str, window: Range<usize>, secrets: &[Range<usize>]) -> Self {
        let first = secrets.partition_point(|r| r.end <= window.start);
        let mut out = String::with_capacity(window.len());
        let mut replaced = Vec::new();
        let mut at = window.start;
        for r in secrets[first..].iter().take_while(|r| r.start < window.end) {
            let (s, e) = (r.start.max(at), r.end.min(window.end));
            out.push_str(text.get(at..s).unwrap_or(""));
            replaced.push((s..e, out.len()));
            out.push_str(PLACEHOLDER);
            at = e;
        }
        out.push_str(text.get(at..window.end).unwrap_or(""));
        Redacted {
            text: out,
            window_start: window.start,
            replaced,
        }
    }

    /// Where `offset` of the original text is in [`Redacted::text`]. An offset inside a
    /// replaced value goes to the placeholder's start (`end` false) or end (`end` true).
    pub fn map(&self, offset: usize, end: bool) -> usize {
        let mut shift: isize = 0;
        for (r, at) in &self.replaced {
            if offset <= r.start {
                break;
            }
            if offset < r.end {
                return if end { at + PLACEHOLDER.len() } else { *at };
            }
            shift += PLACEHOLDER.len() as isize - r.len() as isize;
        }
        let o = offset.saturating_sub(self.window_start) as isize + shift;
        (o.max(0) as usize).min(self.text.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &str) -> String {
        Redacted::new(text, 0..text.len(), &secret_ranges(text)).text
    }

    #[test]
    fn secret_keys_and_hashes_are_hidden() {
        assert_eq!(shown("password = \"admin\"\n"), "password = <redacted>\n");
        assert_eq!(
            shown("pasword = \"$argon2id$v=19$x\"\nname = \"a\"\n"),
            "pasword = <redacted>\nname = \"a\"\n"
        );
        // A hash is hidden under any key; the key and position stay visible.
        assert_eq!(
            shown("descr = '$argon2id$v=19$x' # c\n"),
            "descr = <redacted> # c\n"
        );
        assert_eq!(
            shown("env = { DB_PASSWORD = \"x\", MODE = \"y\" }\n"),
            "env = { DB_PASSWORD = <redacted>, MODE = \"y\" }\n"
        );
        assert_eq!(
            shown("api-token = [\"a\", \"b\"]\nport = 1\n"),
            "api-token = [<redacted>, <redacted>]\nport = 1\n"
        );
        assert_eq!(
            shown("password = { v = \"x\" }\n"),
            "password = { v = <redacted> }\n"
        );
        assert_eq!(
            shown("users.ops.password = \"\"\"\nhunter2\n\"\"\"\n"),
            "users.ops.password = <redacted>\n"
        );
        // A setting that names a variable keeps its value, and table headers are not values.
        assert_eq!(
            shown("[master.upstream]\nwebhook-secret-env = \"HOOK\"\n"),
            "[master.upstream]\nwebhook-secret-env = \"HOOK\"\n"
        );
        // A broken line does not leak the next one's secret, nor hide the next normal line.
        assert_eq!(
            shown("a = { b = \npassword = hunter2\nc = 1\n"),
            "a = { b = \npassword = <redacted>\nc = 1\n"
        );
    }

    #[test]
    fn offsets_map_around_placeholders() {
        let text = "x = 1\npassword = \"admin\" # here\n";
        let line = 6..text.len() - 1;
        let r = Redacted::new(text, line, &secret_ranges(text));
        assert_eq!(r.text, "password = <redacted> # here");
        assert_eq!(r.map(6, false), 0);
        // inside the value: the placeholder
        assert_eq!(r.map(19, false), 11);
        assert_eq!(r.map(20, true), 11 + PLACEHOLDER.len());
        // after it: shifted
        let hash = text.find('#').unwrap();
        assert_eq!(&r.text[r.map(hash, false)..], "# here");
    }

    #[test]
    fn secret_words() {
        for k in [
            "password",
            "pasword",
            "passwd",
            "\"DB_PASSWORD\"",
            "api-token",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in ["port", "listen", "webhook-secret-env", "name", "key"] {
            assert!(!is_secret_key(k), "{k}");
        }
        assert!(looks_like_hash("\"$argon2id$v=19$m=1\""));
        assert!(looks_like_hash("'$2b$12$abc'"));
        assert!(!looks_like_hash("\"$HOME\""));
        assert!(!looks_like_hash("\"$$\""));
    }
}
