//! HTTP Basic authentication against a commit's `security/accounts.toml` (the Master's pinned
//! commit, a Managed Server's applied one), bounded so that a flood of password guesses can
//! exhaust neither memory nor CPU.
//!
//! Argon2 is slow and memory-hard on purpose (tens of milliseconds, about 19 MiB each), so:
//! - successful verifications are cached, keyed by a BLAKE2b digest of (user, password, stored
//!   hash): a changed password or hash in a new pin simply misses the cache, the cache never holds
//!   a password in the clear, and a cached user is answered at once whatever else is going on.
//!   The pool thread records a success itself, so a client that timed out while its (slow)
//!   verification ran still finds it cached when it retries;
//! - every other verification runs on a small fixed pool of threads ([`Auth::new`]: one per core, at
//!   most 4) fed by a short queue: at most that many Argon2 states exist at once, and they are
//!   allocated by the same few threads (so the allocator's per-thread arenas do not each keep one).
//!   A request that finds the queue full, or waits longer than [`QUEUE_WAIT`] for a thread, is
//!   answered 503 with `Retry-After` without any Argon2 work;
//! - failures slow down further attempts per client address and per user name ([`backoff`]):
//!   while a key is backing off, its uncached attempts are answered 429 with `Retry-After`. The
//!   table of failures is bounded ([`MAX_FAILURE_ENTRIES`]) and forgets keys quiet for [`FORGET`].
//!
//! An unknown user is checked against a dummy hash so that timing does not tell which users exist.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use axum::http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64ct::{Base64, Encoding};
use blake2::{Blake2b512, Digest};
use tokio::sync::oneshot;

/// Cached digests beyond this are dropped wholesale: a bound, not an LRU, since a domain has few users.
const CACHE_LIMIT: usize = 4096;
/// Verifications waiting for a pool thread; more are refused at once (503).
const QUEUE: usize = 16;
/// Longest a request waits for a pool thread to take its verification before it is answered 503.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// Failures allowed per key before attempts are slowed down.
const FREE_FAILURES: u32 = 10;
/// Longest back-off after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A key with no failure for this long starts afresh.
pub const FORGET: Duration = Duration::from_secs(15 * 60);
/// Keys remembered at most (client addresses and user names together).
pub const MAX_FAILURE_ENTRIES: usize = 10_000;

/// How long to refuse uncached attempts after `failures` consecutive failures of one key: nothing
/// for the first [`FREE_FAILURES`], then 1 s doubling per failure up to [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_FAILURES - 1).min(16);
    Duration::from_secs(1u64 << doublings).min(MAX_BACKOFF)
}

/// What failures are counted against: the client address (an IPv6 client by its /64, which one
/// host usually owns whole) and the user name tried.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Addr(IpAddr),
    User(String),
}

fn addr_key(ip: IpAddr) -> Key {
    match ip {
        IpAddr::V4(_) => Key::Addr(ip),
        IpAddr::V6(v6) => {
            let mut s = v6.segments();
            s[4..].fill(0);
            Key::Addr(IpAddr::from(s))
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Recent failures per key, bounded and self-pruning.
#[derive(Debug, Default)]
struct FailureTable {
    entries: HashMap<Key, Failures>,
}

impl FailureTable {
    /// How much longer `key` must wait, if it is backing off.
    fn wait(&self, key: &Key, now: Instant) -> Option<Duration> {
        let f = self.entries.get(key)?;
        let until = f.last + backoff(f.count);
        (until > now).then(|| until - now)
    }

    fn fail(&mut self, key: Key, now: Instant) {
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_FAILURE_ENTRIES {
            self.entries
                .retain(|_, f| now.saturating_duration_since(f.last) < FORGET);
            if self.entries.len() >= MAX_FAILURE_ENTRIES
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        let f = self.entries.entry(key).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.saturating_duration_since(f.last) >= FORGET {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
    }

    fn forget(&mut self, key: &Key) {
        self.entries.remove(key);
    }
}

/// The outcome of a password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Invalid,
    /// Too many verifications in flight: try again shortly.
    Busy,
    /// This client or user failed too often: try again after this long.
    Throttled(Duration),
}

struct Job {
    password: String,
    /// `None`: an unknown user, checked against the dummy hash.
    hash: Option<String>,
    /// Set when a pool thread takes the job: from then on its requester waits for the answer.
    started: Arc<std::sync::atomic::AtomicBool>,
    /// Where a success is remembered (`None`: nothing to remember, an unknown user).
    cache_key: Option<Vec<u8>>,
    reply: oneshot::Sender<bool>,
}

/// Digests of verified (user, password, hash) triples, shared with the pool threads.
#[derive(Default)]
struct Verified(Mutex<HashSet<Vec<u8>>>);

impl Verified {
    fn contains(&self, k: &[u8]) -> bool {
        self.0.lock().is_ok_and(|set| set.contains(k))
    }

    fn remember(&self, k: Vec<u8>) {
        if let Ok(mut set) = self.0.lock() {
            if set.len() >= CACHE_LIMIT {
                set.clear();
            }
            set.insert(k);
        }
    }
}

pub struct Auth {
    ok: Arc<Verified>,
    failures: Mutex<FailureTable>,
    jobs: mpsc::SyncSender<Job>,
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

/// Makes freed Argon2 states (about 19 MiB each) go back to the system at once. glibc raises its
/// mmap threshold to the size of the largest block freed, after which such states come from the
/// heap arenas and stay resident: a release-build flood of wrong passwords then kept ~220 MB,
/// against ~50 MB with the threshold fixed at 1 MiB (`benches/master_flood.py`).
fn return_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning; any value is valid for this parameter.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// One pool thread: verifies jobs until the [`Auth`] is dropped.
fn worker(jobs: Arc<Mutex<mpsc::Receiver<Job>>>, dummy: Arc<OnceLock<String>>, ok: Arc<Verified>) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        // Its requester gave up waiting: skip the work.
        if job.reply.is_closed() {
            continue;
        }
        job.started.store(true, std::sync::atomic::Ordering::SeqCst);
        let valid = match &job.hash {
            Some(hash) => schema::security::verify_password(&job.password, hash),
            None => {
                // Same work as for a real user, same answer as a wrong password.
                let dummy = dummy.get_or_init(|| {
                    schema::security::hash_password("steward-dummy").unwrap_or_default()
                });
                let _ = schema::security::verify_password(&job.password, dummy);
                false
            }
        };
        // Here rather than in the requester, which may have stopped waiting by now.
        if valid && let Some(k) = job.cache_key {
            ok.remember(k);
        }
        let _ = job.reply.send(valid);
    }
}

impl Default for Auth {
    fn default() -> Auth {
        Auth::new()
    }
}

impl Auth {
    /// Starts the verification pool: one thread per core, at most 4 (each Argon2 state is large).
    pub fn new() -> Auth {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        return_large_blocks();
        Auth::with_slots(cores.clamp(1, 4))
    }

    pub fn with_slots(slots: usize) -> Auth {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let dummy = Arc::new(OnceLock::new());
        let ok = Arc::new(Verified::default());
        for i in 0..slots {
            let (rx, dummy, ok) = (rx.clone(), dummy.clone(), ok.clone());
            // A thread that cannot be started leaves the pool smaller, never empty: the queue
            // still bounds the work, and the first thread is the one most likely to start.
            let _ = std::thread::Builder::new()
                .name(format!("steward-auth-{i}"))
                .spawn(move || worker(rx, dummy, ok));
        }
        Auth {
            ok,
            failures: Mutex::new(FailureTable::default()),
            jobs: tx,
        }
    }

    /// Whether these credentials were verified before (cheap; no Argon2, no throttling).
    pub fn cached(&self, user: &str, password: &str, hash: Option<&str>) -> bool {
        let Some(hash) = hash else { return false };
        self.ok.contains(&key(user, password, hash))
    }

    /// Checks `password` against `user`'s stored hash (`None`: no such user). `from`: the client
    /// address, when known, whose failures count too.
    pub async fn check(
        &self,
        from: Option<IpAddr>,
        user: &str,
        password: &str,
        hash: Option<&str>,
    ) -> Verdict {
        if self.cached(user, password, hash) {
            return Verdict::Valid;
        }
        let keys: Vec<Key> = from
            .map(addr_key)
            .into_iter()
            .chain([Key::User(user.to_owned())])
            .collect();
        let now = Instant::now();
        if let Ok(table) = self.failures.lock()
            && let Some(wait) = keys.iter().filter_map(|k| table.wait(k, now)).max()
        {
            return Verdict::Throttled(wait);
        }
        let (reply, mut answer) = oneshot::channel();
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let job = Job {
            password: password.to_owned(),
            hash: hash.map(str::to_owned),
            started: started.clone(),
            cache_key: hash.map(|h| key(user, password, h)),
            reply,
        };
        if self.jobs.try_send(job).is_err() {
            return Verdict::Busy;
        }
        // Only the wait for a pool thread is bounded; a verification once started is awaited.
        let answer = match tokio::time::timeout(QUEUE_WAIT, &mut answer).await {
            Ok(a) => a,
            Err(_) if started.load(std::sync::atomic::Ordering::SeqCst) => answer.await,
            // Still queued: dropping `answer` makes the pool skip the job.
            Err(_) => return Verdict::Busy,
        };
        let Ok(ok) = answer else {
            return Verdict::Busy; // the pool is gone
        };
        let now = Instant::now();
        if ok {
            if let Ok(mut table) = self.failures.lock() {
                // The user proved who they are; the address keeps its record (it may be shared
                // with whoever is guessing).
                table.forget(&Key::User(user.to_owned()));
            }
            Verdict::Valid
        } else {
            if let Ok(mut table) = self.failures.lock() {
                for k in keys {
                    table.fail(k, now);
                }
            }
            Verdict::Invalid
        }
    }
}

/// The authenticated user of a request against the users of `domain`, or the response to send
/// instead: 401 without valid credentials, 503 or 429 (with `Retry-After`) while verifications
/// are bounded (see the module's comment). `from`: the client's address, whose failures count.
pub async fn authenticate(
    auth: &Auth,
    domain: &schema::model::Domain,
    headers: &HeaderMap,
    from: Option<IpAddr>,
) -> Result<String, Response> {
    let Some((user, password)) = parse_basic(headers) else {
        return Err(unauthorized());
    };
    let hash = domain
        .accounts
        .users
        .get(&user)
        .map(|u| u.password.as_str());
    match auth.check(from, &user, &password, hash).await {
        Verdict::Valid => Ok(user),
        Verdict::Invalid => Err(unauthorized()),
        Verdict::Busy => Err(retry_after(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(1),
        )),
        Verdict::Throttled(wait) => Err(retry_after(StatusCode::TOO_MANY_REQUESTS, wait)),
    }
}

/// `status` with `Retry-After` in whole seconds (at least 1).
pub fn retry_after(status: StatusCode, wait: Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut r = status.into_response();
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    r
}

/// 401 with the challenge that makes clients send Basic credentials.
pub fn unauthorized() -> Response {
    let mut r = StatusCode::UNAUTHORIZED.into_response();
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"steward\""),
    );
    r
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
    fn backoff_grows_then_caps() {
        for n in 0..=FREE_FAILURES {
            assert_eq!(backoff(n), Duration::ZERO, "{n}");
        }
        assert_eq!(backoff(FREE_FAILURES + 1), Duration::from_secs(1));
        assert_eq!(backoff(FREE_FAILURES + 2), Duration::from_secs(2));
        assert_eq!(backoff(FREE_FAILURES + 4), Duration::from_secs(8));
        assert_eq!(backoff(FREE_FAILURES + 30), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn failure_table_backs_off_forgets_and_stays_bounded() {
        let mut t = FailureTable::default();
        let t0 = Instant::now();
        let k = Key::User("admin".into());
        for _ in 0..FREE_FAILURES {
            t.fail(k.clone(), t0);
        }
        assert_eq!(t.wait(&k, t0), None);
        t.fail(k.clone(), t0);
        assert_eq!(t.wait(&k, t0), Some(Duration::from_secs(1)));
        assert_eq!(t.wait(&k, t0 + Duration::from_secs(1)), None);
        // Quiet for FORGET: the count starts again.
        let later = t0 + FORGET;
        t.fail(k.clone(), later);
        assert_eq!(t.wait(&k, later), None);
        // Bounded: a flood of distinct keys never grows the table past the limit.
        for i in 0..(MAX_FAILURE_ENTRIES + 50) {
            t.fail(
                Key::User(format!("u{i}")),
                later + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(t.entries.len(), MAX_FAILURE_ENTRIES);
        assert!(
            !t.entries.contains_key(&Key::User("u0".into())),
            "oldest dropped"
        );
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().expect("ip");
        assert_eq!(addr_key(a), addr_key(b));
        let v4: IpAddr = "127.0.0.1".parse().expect("ip");
        assert_eq!(addr_key(v4), Key::Addr(v4));
    }

    #[tokio::test]
    async fn authenticates_against_a_domains_accounts() {
        let auth = Auth::with_slots(1);
        let mut domain = schema::model::Domain::default();
        domain.accounts.users.insert(
            "scraper".into(),
            schema::model::User {
                password: schema::security::hash_password("pw").expect("hash"),
                groups: Vec::new(),
                description: String::new(),
            },
        );
        let mut h = HeaderMap::new();
        let refused = authenticate(&auth, &domain, &h, None)
            .await
            .expect_err("401");
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert!(refused.headers().contains_key(WWW_AUTHENTICATE));
        // base64("scraper:pw")
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Basic c2NyYXBlcjpwdw=="),
        );
        let user = authenticate(&auth, &domain, &h, None).await.ok();
        assert_eq!(user.as_deref(), Some("scraper"));
        // base64("scraper:no")
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Basic c2NyYXBlcjpubw=="),
        );
        let refused = authenticate(&auth, &domain, &h, None)
            .await
            .expect_err("401");
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn verifies_caches_and_throttles() {
        let auth = Auth::with_slots(1);
        let hash = schema::security::hash_password("pw").expect("hash");
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        assert_eq!(
            auth.check(Some(ip), "u", "pw", Some(&hash)).await,
            Verdict::Valid
        );
        assert!(auth.cached("u", "pw", Some(&hash)));
        assert_eq!(
            auth.check(Some(ip), "u", "pw", None).await,
            Verdict::Invalid
        );
        for _ in 0..FREE_FAILURES {
            assert_eq!(
                auth.check(Some(ip), "u", "no", Some(&hash)).await,
                Verdict::Invalid
            );
        }
        assert!(matches!(
            auth.check(Some(ip), "other", "x", Some(&hash)).await,
            Verdict::Throttled(_)
        ));
        // Known-good credentials are answered from the cache, throttled address or not.
        assert_eq!(
            auth.check(Some(ip), "u", "pw", Some(&hash)).await,
            Verdict::Valid
        );
    }

    #[test]
    fn a_success_is_cached_even_when_its_requester_gave_up() {
        let auth = Auth::with_slots(1);
        let hash = schema::security::hash_password("pw").expect("hash");
        let (reply, answer) = oneshot::channel();
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let job = Job {
            password: "pw".to_owned(),
            hash: Some(hash.clone()),
            started: started.clone(),
            cache_key: Some(key("u", "pw", &hash)),
            reply,
        };
        auth.jobs.try_send(job).expect("queued");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !started.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the pool never took the job");
            std::thread::sleep(Duration::from_millis(1));
        }
        // The client times out while Argon2 runs.
        drop(answer);
        while !auth.cached("u", "pw", Some(&hash)) {
            assert!(Instant::now() < deadline, "the success was not remembered");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
