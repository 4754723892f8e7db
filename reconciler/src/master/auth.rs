//! HTTP Basic authentication against the pinned commit's `security/accounts.toml`.
//!
//! Argon2 is slow on purpose (tens of milliseconds), and `git` makes several requests per clone or
//! push, so successful verifications are cached, keyed by a BLAKE2b digest of (user, password,
//! stored hash): a changed password or hash in a new pin simply misses the cache, and the cache
//! never holds a password in the clear. Failures are never cached, so guessing stays expensive.
//! An unknown user is checked against a dummy hash so that timing does not tell which users exist.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use base64ct::{Base64, Encoding};
use blake2::{Blake2b512, Digest};

/// Cached digests beyond this are dropped wholesale: a bound, not an LRU, since a domain has few users.
const CACHE_LIMIT: usize = 4096;

#[derive(Default)]
pub struct AuthCache {
    ok: Mutex<HashSet<Vec<u8>>>,
    dummy: OnceLock<String>,
}

/// User name and password from an `Authorization: Basic …` header.
pub fn parse_basic(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = Base64::decode_vec(rest.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn key(user: &str, password: &str, hash: &str) -> Vec<u8> {
    let mut h = Blake2b512::new();
    // Length prefixes keep ("ab","c") and ("a","bc") apart.
    for part in [user, password, hash] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().to_vec()
}

impl AuthCache {
    /// Whether `password` is `user`'s, given the stored hash (`None`: no such user). Blocking: call
    /// from `spawn_blocking`.
    pub fn verify(&self, user: &str, password: &str, hash: Option<&str>) -> bool {
        let Some(hash) = hash else {
            // Same work as for a real user, same answer as a wrong password.
            let dummy = self.dummy.get_or_init(|| {
                schema::security::hash_password("steward-dummy").unwrap_or_default()
            });
            let _ = schema::security::verify_password(password, dummy);
            return false;
        };
        let k = key(user, password, hash);
        if self.ok.lock().is_ok_and(|set| set.contains(&k)) {
            return true;
        }
        let ok = schema::security::verify_password(password, hash);
        if ok && let Ok(mut set) = self.ok.lock() {
            if set.len() >= CACHE_LIMIT {
                set.clear();
            }
            set.insert(k);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn parses_basic() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_basic(&h), None);
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Basic YWRtaW46YTpi"),
        );
        assert_eq!(parse_basic(&h), Some(("admin".into(), "a:b".into())));
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer YWRtaW46YTpi"),
        );
        assert_eq!(parse_basic(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(parse_basic(&h), None);
    }

    #[test]
    fn verifies_and_caches() {
        let cache = AuthCache::default();
        let hash = schema::security::hash_password("pw").expect("hash");
        assert!(!cache.verify("u", "nope", Some(&hash)));
        assert!(cache.verify("u", "pw", Some(&hash)));
        assert!(cache.verify("u", "pw", Some(&hash)), "cached");
        assert!(!cache.verify("u", "pw", None));
        assert_eq!(cache.ok.lock().expect("lock").len(), 1);
    }
}
