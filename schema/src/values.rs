//! Parsers and checks for the value kinds of the domain format, shared by the loader (which
//! reports problems) and the typed model (which deserializes already-checked values).

use std::fmt;
use std::time::Duration;

/// Why a text is not a value of its kind. The message says what is wrong and how to write it; the
/// loader adds where (`file:line:col`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(String);

impl From<String> for ValueError {
    fn from(message: String) -> Self {
        ValueError(message)
    }
}

impl From<&str> for ValueError {
    fn from(message: &str) -> Self {
        ValueError(message.to_owned())
    }
}

impl From<ValueError> for String {
    fn from(e: ValueError) -> String {
        e.0
    }
}

/// A duration written as `500ms`, `30s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        ValueError(format!(
            "`{text}` is not a duration; write a number and a unit: `500ms`, `30s`, `5m`, `1h`"
        ))
    })?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => {
            return Err(ValueError(format!(
                "`{text}` has no known unit; use `ms`, `s`, `m` or `h` (e.g. `30s`)"
            )));
        }
    }
    .ok_or_else(|| ValueError(format!("`{text}` is too long a duration")))?;
    Ok(Duration::from_millis(ms))
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms != 0 && ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms != 0 && ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1_000) {
            write!(f, "{}s", ms / 1_000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl serde::Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// A size in bytes, written `64KiB`, `10MiB`, `1GiB`, `500KB`, or as a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

const UNITS: &[(&str, u64)] = &[
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
    ("", 1),
];

pub fn parse_byte_size(text: &str) -> Result<u64, ValueError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        ValueError(format!(
            "`{text}` is not a size; write e.g. `64KiB`, `10MiB`, `1GiB`"
        ))
    })?;
    let mult = UNITS
        .iter()
        .find(|(u, _)| *u == unit.trim())
        .map(|(_, m)| *m)
        .ok_or_else(|| {
            ValueError(format!(
                "`{text}` has no known unit; use `B`, `KiB`, `MiB` or `GiB`"
            ))
        })?;
    n.checked_mul(mult)
        .ok_or_else(|| ValueError(format!("`{text}` is too large")))
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, mult) in &UNITS[..3] {
            if self.0 != 0 && self.0.is_multiple_of(*mult) {
                return write!(f, "{}{unit}", self.0 / mult);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(t) => parse_byte_size(&t)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// A name: a letter, then letters, digits, `-` or `_`; at most 63 characters.
pub fn check_ident(name: &str) -> Result<(), ValueError> {
    let mut chars = name.chars();
    let ok_first = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let ok_rest = chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if name.len() > 63 {
        Err(ValueError(format!("`{name}` is longer than 63 characters")))
    } else if ok_first && ok_rest {
        Ok(())
    } else {
        Err(ValueError(format!(
            "`{name}` is not a valid name: start with a letter, then use letters, digits, `-` or `_`"
        )))
    }
}

pub fn check_env_name(name: &str) -> Result<(), ValueError> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ValueError(format!(
            "`{name}` is not an environment variable name: use letters, digits and `_`, not starting with a digit"
        )))
    }
}

/// A relative, `/`-separated path inside the repository that cannot leave it.
pub fn check_repo_path(path: &str) -> Result<(), ValueError> {
    if path.is_empty() {
        return Err(ValueError("the path is empty".into()));
    }
    if path.starts_with('/') || path.contains('\\') || path.contains(':') {
        return Err(ValueError(format!(
            "`{path}` must be a relative path inside the repository, with `/` separators"
        )));
    }
    if path
        .split('/')
        .any(|seg| seg == ".." || seg == "." || seg.is_empty())
    {
        return Err(ValueError(format!(
            "`{path}` must not contain `.`, `..` or empty segments"
        )));
    }
    Ok(())
}

pub fn check_context_path(path: &str) -> Result<(), ValueError> {
    if path == "/" {
        return Ok(());
    }
    let valid_seg = |seg: &str| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
    };
    match path.strip_prefix('/') {
        Some(rest) if !rest.ends_with('/') && rest.split('/').all(valid_seg) => Ok(()),
        _ => Err(ValueError(format!(
            "`{path}` is not a context path: write `/` or `/name[/name…]` with letters, digits, `-`, `.`, `_`, `~`, and no trailing `/`"
        ))),
    }
}

pub fn check_host(host: &str) -> Result<(), ValueError> {
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.parse::<std::net::IpAddr>().is_ok()
        || (host.len() <= 253 && host.split('.').all(valid_label))
    {
        Ok(())
    } else {
        Err(ValueError(format!(
            "`{host}` is not a host name or IP address"
        )))
    }
}

/// Whether a password field holds a well-formed Argon2 PHC hash.
pub fn check_password_hash(value: &str) -> Result<(), ValueError> {
    const HINT: &str = "store a hash: run `steward hash-password` and paste its output";
    if !value.starts_with('$') {
        return Err(ValueError(format!(
            "plain-text passwords are refused; {HINT}"
        )));
    }
    let hash = argon2::password_hash::phc::PasswordHash::new(value)
        .map_err(|e| ValueError(format!("malformed password hash ({e}); {HINT}")))?;
    match hash.algorithm.as_str() {
        "argon2id" | "argon2i" | "argon2d" if hash.hash.is_some() && hash.salt.is_some() => Ok(()),
        "argon2id" | "argon2i" | "argon2d" => Err(ValueError(format!(
            "the password hash has no salt or no hash part; {HINT}"
        ))),
        other => Err(ValueError(format!(
            "unsupported password hash algorithm `{other}`: only Argon2 is accepted; {HINT}"
        ))),
    }
}

/// Edit distance counting a swap of two neighbours as one edit (`prot` → `port`), for
/// "did you mean" suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// The closest candidate to `word`, if it is close enough to be what was meant.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for (text, ms) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
        ] {
            let d = parse_duration(text).unwrap();
            assert_eq!(d.as_millis(), ms);
            assert_eq!(Dur(d).to_string(), text);
        }
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_byte_size("10MiB").unwrap(), 10 << 20);
        assert_eq!(parse_byte_size("4096").unwrap(), 4096);
        assert_eq!(ByteSize(10 << 20).to_string(), "10MiB");
        assert!(parse_byte_size("10XB").is_err());
    }

    #[test]
    fn names_and_paths() {
        assert!(check_ident("server-1").is_ok());
        assert!(check_ident("1server").is_err());
        assert!(check_ident("a b").is_err());
        assert!(check_repo_path("apps/shop").is_ok());
        assert!(check_repo_path("../etc").is_err());
        assert!(check_repo_path("/etc").is_err());
        assert!(check_context_path("/").is_ok());
        assert!(check_context_path("/shop/v2").is_ok());
        assert!(check_context_path("/shop/").is_err());
        assert!(check_context_path("shop").is_err());
        assert!(check_host("node-1.example.com").is_ok());
        assert!(check_host("bad_host").is_err());
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("prot", ["port", "address"]), Some("port"));
        assert_eq!(did_you_mean("zzzz", ["port", "address"]), None);
    }

    #[test]
    fn password_hashes() {
        assert!(
            check_password_hash("admin")
                .unwrap_err()
                .to_string()
                .contains("plain-text")
        );
        assert!(check_password_hash("$argon2id$v=19$garbage").is_err());
        assert!(check_password_hash("$md5$abc$def").is_err());
    }
}
