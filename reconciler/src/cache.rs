//! The machine's local clone of the domain repository, `DOMAIN_HOME/.cache/domain.git`: what the
//! launchers fetch into and boot from, and what lets a server boot while the Master is down.
//!
//! Rules this module keeps:
//! - One process at a time changes the cache: [`Cache::open`] takes an exclusive `flock` on
//!   `DOMAIN_HOME/.cache/lock` held until the [`Cache`] is dropped. Readers that only need a commit
//!   they were told about (the server process) take the shared lock ([`Cache::open_shared`]).
//! - Ref updates go through gix's lock files (write then rename), so a crash never leaves a
//!   half-written ref.
//! - `refs/steward/last-valid` moves only after a commit passed validation; with it, a small
//!   record (`steward-last-valid` inside the repository) says when and from where.
//! - A corrupt cache (unreadable repository, broken ref, missing or damaged object) is detected by
//!   reading every tip fully, moved aside (never deleted: an operator may want to look) and
//!   replaced by an empty repository that the next fetch fills again. It is never booted from.
//!   Objects already read with their hash checked are not read again while the files holding
//!   them are unchanged ([`verified`]), so an open costs what is new.

mod verified;

use std::collections::HashSet;
use std::fs::File;
use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gix::bstr::ByteSlice;
use gix::refs::transaction::PreviousValue;
use serde::{Deserialize, Serialize};

use crate::git::{CommitTree, Oid, Repo};
use verified::Verified;

/// The ref that names the last commit of the cache that passed validation.
pub const LAST_VALID: &str = "refs/steward/last-valid";
/// Where a fetch from the Master lands (the Master's `refs/steward/pinned`).
pub const MASTER_PINNED: &str = "refs/steward/master/pinned";
/// Where a fetch from a Git URL lands: its `refs/steward/pinned`, if it has one.
pub const GIT_PINNED: &str = "refs/steward/git/pinned";
/// Where a fetch from a Git URL lands: its branch.
pub const GIT_BRANCH: &str = "refs/steward/git/branch";

const RECORD: &str = "steward-last-valid";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {what}: {error}")]
    Io {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
    /// The cache exists but cannot be trusted; the message says what is wrong.
    #[error("the local cache {path} is corrupt: {problem}")]
    Corrupt { path: PathBuf, problem: String },
    #[error("{0}")]
    Git(String),
    /// The remote could not be reached at all (refused, no answer, unknown host).
    #[error("{url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The remote answered but the fetch failed (authentication, protocol, missing refs).
    #[error("fetching from {url} failed: {cause}")]
    Fetch { url: String, cause: String },
    #[error("{url} has neither refs/steward/pinned nor refs/heads/{branch}")]
    NothingToFetch { url: String, branch: String },
}

type Result<T, E = CacheError> = std::result::Result<T, E>;

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> CacheError + 'a {
    move |error| CacheError::Io {
        path: path.to_owned(),
        what,
        error,
    }
}

/// A gix error with its whole chain: the useful detail is usually in a source.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}

fn git_err(what: &str) -> impl FnOnce(gix::Error) -> CacheError + '_ {
    move |e| CacheError::Git(format!("{what}: {}", chain(&e)))
}

/// Where a remote is and how to log in to it.
#[derive(Clone)]
pub struct Remote {
    /// A Git URL: `http://host:port/path`, `file:///path`, or a plain path.
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// How long to wait for a TCP connection before calling the remote unreachable.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("Remote")
            .field("url", &self.url)
            .field("user", &self.user)
            .finish()
    }
}

/// What `refs/steward/last-valid` is, and when and from where it was validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastValid {
    pub commit: String,
    /// Unix seconds of the validation; `None` when the record is missing or out of step.
    pub at: Option<u64>,
    /// `master URL`, `git URL`, …: a human-readable origin.
    pub source: Option<String>,
}

/// The result of a fetch from a Git URL: the commit chosen and the remote ref it came from.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub commit: Oid,
    pub remote_ref: String,
    pub transfer: Transfer,
}

/// What a fetch moved: zero when the cache already had everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    pub objects: u32,
    /// Size of the received pack.
    pub bytes: u64,
}

impl std::fmt::Display for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} objects, {} bytes", self.objects, self.bytes)
    }
}

/// An open, locked cache.
pub struct Cache {
    git_dir: PathBuf,
    repo: gix::Repository,
    /// The objects already checked; saved only under the exclusive lock.
    verified: Mutex<Verified>,
    exclusive: bool,
    // Released on drop (flock is tied to the open file description).
    _lock: File,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("git_dir", &self.git_dir)
            .finish()
    }
}

/// What [`Cache::open`] found wrong and did about it.
#[derive(Debug, Clone)]
pub struct Repaired {
    pub problem: String,
    /// Where the corrupt repository was moved.
    pub moved_to: PathBuf,
}

/// The seed: a server on the Master's machine needs no configuration transfer. When this domain
/// home also holds the Master's repository (`config/domain.git`), the cache reads the Master's
/// objects in place through Git's alternates mechanism (as `git clone --shared` does), so a new
/// pin is usable at once instead of after an HTTP fetch. If that repository goes away, the
/// cache's integrity check fails and it is rebuilt from a reachable source, as for any damage.
fn share_local_master(domain_home: &Path, git_dir: &Path) -> Result<()> {
    let master = domain_home.join("config/domain.git/objects");
    let Ok(master) = master.canonicalize() else {
        return Ok(());
    };
    let info = git_dir.join("objects/info");
    let file = info.join("alternates");
    let current = std::fs::read_to_string(&file).unwrap_or_default();
    let line = master.display().to_string();
    if current.lines().any(|l| l == line) {
        return Ok(());
    }
    std::fs::create_dir_all(&info).map_err(io(&info, "cannot create"))?;
    let tmp = info.join(format!("alternates.tmp{}", std::process::id()));
    std::fs::write(&tmp, format!("{current}{line}\n")).map_err(io(&tmp, "cannot write"))?;
    std::fs::rename(&tmp, &file).map_err(io(&file, "cannot replace"))?;
    Ok(())
}

/// `DOMAIN_HOME/.cache/domain.git`.
pub fn git_dir(domain_home: &Path) -> PathBuf {
    domain_home.join(".cache").join("domain.git")
}

fn lock_file(domain_home: &Path) -> Result<File> {
    let dir = domain_home.join(".cache");
    std::fs::create_dir_all(&dir).map_err(io(&dir, "cannot create the cache directory"))?;
    let path = dir.join("lock");
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path, "cannot open the cache lock"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Cache {
    /// Opens the cache for changes (creating it if needed) under the exclusive lock, and checks
    /// it. A corrupt cache is moved aside and replaced by an empty one; the returned
    /// [`Repaired`] says so, for the caller to report.
    pub fn open(domain_home: &Path) -> Result<(Cache, Option<Repaired>)> {
        let lock = lock_file(domain_home)?;
        let lock_path = domain_home.join(".cache/lock");
        lock.lock()
            .map_err(io(&lock_path, "cannot lock the cache"))?;
        let git_dir = git_dir(domain_home);
        let opened = if git_dir.exists() {
            share_local_master(domain_home, &git_dir)?;
            open_repo(&git_dir).and_then(|repo| {
                let mut verified = Verified::load(&git_dir);
                check(&repo, &git_dir, &mut verified)?;
                Ok((repo, verified))
            })
        } else {
            // A new cache on the Master's machine shares its objects from the start.
            init_repo(&git_dir).and_then(|_| {
                share_local_master(domain_home, &git_dir)?;
                Ok((open_repo(&git_dir)?, Verified::default()))
            })
        };
        let cache = |repo, verified| Cache {
            git_dir: git_dir.clone(),
            repo,
            verified: Mutex::new(verified),
            exclusive: true,
            _lock: lock,
        };
        match opened {
            Ok((repo, verified)) => Ok((cache(repo, verified), None)),
            Err(CacheError::Corrupt { problem, .. }) => {
                let moved_to = move_aside(&git_dir)?;
                let repo = init_repo(&git_dir)?;
                Ok((
                    cache(repo, Verified::default()),
                    Some(Repaired { problem, moved_to }),
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// Opens an existing cache to read a known commit, under the shared lock (so no launcher
    /// moves it aside meanwhile). No check: the caller verifies the commit it reads.
    pub fn open_shared(domain_home: &Path) -> Result<Cache> {
        let lock = lock_file(domain_home)?;
        let lock_path = domain_home.join(".cache/lock");
        lock.lock_shared()
            .map_err(io(&lock_path, "cannot lock the cache"))?;
        let git_dir = git_dir(domain_home);
        let repo = open_repo(&git_dir)?;
        Ok(Cache {
            verified: Mutex::new(Verified::load(&git_dir)),
            exclusive: false,
            git_dir,
            repo,
            _lock: lock,
        })
    }

    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// The cache as a read-only [`Repo`], for reading trees to validate.
    pub fn repo(&self) -> Result<Repo> {
        Repo::open(&self.git_dir).map_err(|e| CacheError::Git(e.to_string()))
    }

    /// The tree of `commit`, after reading it fully ([`Cache::verify`]).
    pub fn tree(&self, commit: Oid) -> Result<CommitTree> {
        self.verify(commit)?;
        self.repo()?
            .tree(commit)
            .map_err(|e| CacheError::Git(e.to_string()))
    }

    /// True when `commit` and everything its tree needs are in the cache and intact.
    pub fn has_complete(&self, commit: Oid) -> bool {
        self.verify(commit).is_ok()
    }

    /// Reads `commit`, its tree and every object below it, checking each object's hash, except
    /// those already checked in files unchanged since. A missing or damaged object is
    /// [`CacheError::Corrupt`].
    pub fn verify(&self, commit: Oid) -> Result<()> {
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        verified.refresh(&self.git_dir, self.repo.object_hash());
        let mut checked = HashSet::new();
        verify_commit(
            &self.repo,
            commit.as_gix().to_owned(),
            verified.ids(),
            &mut checked,
        )
        .map_err(|problem| CacheError::Corrupt {
            path: self.git_dir.clone(),
            problem,
        })?;
        if !checked.is_empty() {
            verified.extend(checked);
            // Under the shared lock another reader may be writing it; the launcher saves it.
            if self.exclusive {
                // A record not saved costs a full read next time, nothing else.
                let _ = verified.save(&self.git_dir);
            }
        }
        Ok(())
    }

    /// The commit a local ref names, if the ref exists.
    pub fn ref_commit(&self, name: &str) -> Result<Option<Oid>> {
        let found = self
            .repo
            .try_find_reference(name)
            .map_err(|e| CacheError::Corrupt {
                path: self.git_dir.clone(),
                problem: format!("cannot read {name}: {}", chain(&e)),
            })?;
        let Some(mut r) = found else {
            return Ok(None);
        };
        let id = r.peel_to_id().map_err(|e| CacheError::Corrupt {
            path: self.git_dir.clone(),
            problem: format!("{name} does not resolve: {}", chain(&e)),
        })?;
        Ok(Some(Oid::from(id.detach())))
    }

    /// Points `name` at `commit` (atomically: lock file, then rename).
    pub fn set_ref(&self, name: &str, commit: Oid, message: &str) -> Result<()> {
        self.repo
            .reference(
                name,
                commit.as_gix().to_owned(),
                PreviousValue::Any,
                message,
            )
            .map_err(git_err("cannot update a ref of the cache"))?;
        Ok(())
    }

    /// The last commit that passed validation, with when and from where.
    pub fn last_valid(&self) -> Result<Option<LastValid>> {
        let Some(commit) = self.ref_commit(LAST_VALID)? else {
            return Ok(None);
        };
        let record: Option<LastValid> = std::fs::read(self.git_dir.join(RECORD))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let hex = commit.to_hex();
        Ok(Some(match record {
            Some(r) if r.commit == hex => r,
            // The ref moved without its record (a crash between the two writes): the commit is
            // still right, only the time is unknown.
            _ => LastValid {
                commit: hex,
                at: None,
                source: None,
            },
        }))
    }

    /// Records that `commit` passed validation now, having come from `source`.
    pub fn record_valid(&self, commit: Oid, source: &str) -> Result<()> {
        self.set_ref(LAST_VALID, commit, &format!("validated, from {source}"))?;
        let record = LastValid {
            commit: commit.to_hex(),
            at: Some(now()),
            source: Some(source.to_owned()),
        };
        let path = self.git_dir.join(RECORD);
        let tmp = self
            .git_dir
            .join(format!("{RECORD}.tmp{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(&record).map_err(|e| CacheError::Io {
            path: path.clone(),
            what: "cannot encode the record",
            error: std::io::Error::other(e),
        })?;
        std::fs::write(&tmp, bytes).map_err(io(&tmp, "cannot write"))?;
        std::fs::rename(&tmp, &path).map_err(io(&path, "cannot replace"))?;
        Ok(())
    }

    /// Fetches the Master's `refs/steward/pinned` into [`MASTER_PINNED`]: only the objects the
    /// cache lacks travel (the cache's refs are the negotiation's "haves").
    pub fn fetch_master(&self, remote: &Remote) -> Result<(Oid, Transfer)> {
        let (_, transfer) =
            self.fetch(remote, &[format!("+refs/steward/pinned:{MASTER_PINNED}")])?;
        self.ref_commit(MASTER_PINNED)?
            .map(|c| (c, transfer))
            .ok_or_else(|| CacheError::NothingToFetch {
                url: redact(&remote.url),
                branch: "main".into(),
            })
    }

    /// Fetches `refs/steward/pinned` and `refs/heads/<branch>` from a Git URL; the pinned ref
    /// wins when the remote has it (it is what a Master there validated), else the branch.
    pub fn fetch_git(&self, remote: &Remote, branch: &str) -> Result<Fetched> {
        let (outcome, transfer) = self.fetch(
            remote,
            &[
                format!("+refs/steward/pinned:{GIT_PINNED}"),
                format!("+refs/heads/{branch}:{GIT_BRANCH}"),
            ],
        )?;
        // The refs the remote advertised decide, not what older fetches left behind.
        let has = |name: &str| outcome.iter().any(|r| r == name);
        if has("refs/steward/pinned")
            && let Some(c) = self.ref_commit(GIT_PINNED)?
        {
            return Ok(Fetched {
                commit: c,
                remote_ref: "refs/steward/pinned".into(),
                transfer,
            });
        }
        let branch_ref = format!("refs/heads/{branch}");
        if has(&branch_ref)
            && let Some(c) = self.ref_commit(GIT_BRANCH)?
        {
            return Ok(Fetched {
                commit: c,
                remote_ref: branch_ref,
                transfer,
            });
        }
        Err(CacheError::NothingToFetch {
            url: redact(&remote.url),
            branch: branch.to_owned(),
        })
    }

    /// Runs one fetch with `specs`; returns the names of the remote refs that matched.
    fn fetch(&self, remote: &Remote, specs: &[String]) -> Result<(Vec<String>, Transfer)> {
        // gix fetches HTTP through reqwest, which panics without a TLS provider installed.
        crate::tls::install_provider();
        let shown = redact(&remote.url);
        let url = gix::url::parse(remote.url.as_bytes().as_bstr()).map_err(|e| {
            CacheError::Unreachable {
                url: shown.clone(),
                reason: format!("not a Git URL: {}", chain(&e)),
            }
        })?;
        let is_http = matches!(url.scheme, gix::url::Scheme::Http | gix::url::Scheme::Https);
        if is_http {
            reachable(&url, remote.connect_timeout).map_err(|reason| CacheError::Unreachable {
                url: shown.clone(),
                reason,
            })?;
        } else if url.scheme == gix::url::Scheme::File {
            let exists = gix::path::from_bstr(url.path.as_bstr())
                .map(|p| p.exists())
                .unwrap_or(false);
            if !exists {
                return Err(CacheError::Unreachable {
                    url: shown,
                    reason: "no such repository".into(),
                });
            }
        }
        let fetch_err = |e: gix::Error| CacheError::Fetch {
            url: shown.clone(),
            cause: chain(&e),
        };
        let r = self
            .repo
            .remote_at(url)
            .map_err(fetch_err)?
            .with_fetch_tags(gix::remote::fetch::Tags::None)
            .with_refspecs(
                specs.iter().map(|s| s.as_bytes().as_bstr()),
                gix::remote::Direction::Fetch,
            )
            .map_err(fetch_err)?;
        let connection = r
            .connect(gix::remote::Direction::Fetch)
            .map_err(fetch_err)?;
        let mut connection = connection.with_credentials(|action| match action {
            // Never prompt and never run credential helpers: a launcher runs unattended.
            gix::credentials::helper::Action::Get(ctx) => {
                Err(gix::Error::from_error(gix::error::validation(format!(
                    "the remote asks for credentials for {}; give them with -u/-p or \
                     STEWARD_USER/STEWARD_PASSWORD",
                    ctx.url.as_ref().map(|u| u.to_string()).unwrap_or_default()
                ))))
            }
            _ => Ok(None),
        });
        if is_http {
            let auth = remote.user.as_deref().zip(remote.password.as_deref());
            connection.set_transport_options(Box::new(http_options(remote.connect_timeout, auth)));
        }
        // Into an empty cache only the tips are fetched (depth 1): booting needs one commit's
        // tree, not the domain's history. Later fetches negotiate from those tips and bring only
        // new objects; an older commit (a rolled-back pin) arrives with its history on demand.
        let empty = self
            .repo
            .references()
            .ok()
            .and_then(|r| r.all().ok().map(|mut all| all.next().is_none()))
            .unwrap_or(false);
        let mut prepare = connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(fetch_err)?;
        if empty {
            prepare = prepare.with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(
                std::num::NonZeroU32::MIN,
            ));
        }
        let matched: Vec<String> = prepare
            .ref_map()
            .mappings
            .iter()
            .filter_map(|m| match &m.remote {
                gix::remote::fetch::refmap::Source::Ref(r) => {
                    Some(r.unpack().0.to_str_lossy().into_owned())
                }
                _ => None,
            })
            .collect();
        if matched.is_empty() {
            // Nothing to receive: gix would call the empty mapping an error; the caller decides.
            return Ok((matched, Transfer::default()));
        }
        let interrupt = AtomicBool::new(false);
        let outcome = prepare
            .receive(gix::progress::Discard, &interrupt)
            .map_err(fetch_err)?;
        let mut transfer = Transfer::default();
        if let gix::remote::fetch::Status::Change {
            mut write_pack_bundle,
            ..
        } = outcome.status
        {
            transfer.objects = write_pack_bundle.index.num_objects;
            transfer.bytes = write_pack_bundle
                .data_path
                .as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .map_or(0, |m| m.len());
            // Left by gix when no ref moved; the pack is reachable from our refs either way.
            if let Some(keep) = write_pack_bundle.keep_path.take() {
                let _ = std::fs::remove_file(keep);
            }
        }
        Ok((matched, transfer))
    }
}

/// HTTP transport options: the connect timeout also bounds gix's own connection attempts (the
/// reqwest backend otherwise waits 20 s), and Basic credentials go in as a configured header.
/// gix refuses to send an identity over plain `http://` (only a compile-time feature lifts that,
/// for every use); the Master speaks plain HTTP unless `[master] tls` is set, exactly like the
/// launcher's own `GET /v1/domain`, so the header makes the same trade-off explicit. A configured
/// header also makes gix refuse redirects, so the credentials never travel elsewhere.
fn http_options(
    connect_timeout: Duration,
    auth: Option<(&str, &str)>,
) -> gix::protocol::transport::client::blocking_io::http::Options {
    use base64ct::Encoding;
    use gix::protocol::transport::client::blocking_io::http;
    let extra_headers = auth
        .map(|(u, p)| {
            let token = base64ct::Base64::encode_string(format!("{u}:{p}").as_bytes());
            vec![format!("Authorization: Basic {token}")]
        })
        .unwrap_or_default();
    // An https Master with a private CA: trusted through GIT_SSL_CAINFO, as by git itself. An
    // unreadable file leaves only the system's anchors; the TLS error then names the cause.
    let extra = crate::tls::reqwest_extra_roots().unwrap_or_default();
    let backend = http::reqwest::Options {
        configure_client: Some(Box::new(move |b| {
            Ok(b.connect_timeout(connect_timeout)
                .tls_certs_merge(extra.clone()))
        })),
        configure_request: None,
    };
    http::Options {
        extra_headers,
        connect_timeout: Some(connect_timeout),
        backend: Some(std::sync::Arc::new(std::sync::Mutex::new(backend))),
        ..Default::default()
    }
}

/// A quick TCP connect: a refused connection fails at once, an unanswering host after
/// `timeout`, with a message saying which.
fn reachable(url: &gix::Url, timeout: Duration) -> std::result::Result<(), String> {
    let Some(host) = url.host() else {
        return Err("the URL names no host".into());
    };
    let port = url
        .port
        .unwrap_or(if url.scheme == gix::url::Scheme::Https {
            443
        } else {
            80
        });
    let addrs: Vec<_> = (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("{host} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                last = format!("connection refused by {addr} (nothing listens there)");
            }
            Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
                last = format!("no answer from {addr} within {} ms", timeout.as_millis());
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last)
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match gix::url::parse(url.as_bytes().as_bstr()) {
        Ok(mut u) if u.password().is_some() => {
            u.set_password(Some("***".into()));
            u.to_bstring().to_string()
        }
        _ => url.to_owned(),
    }
}

fn open_repo(git_dir: &Path) -> Result<gix::Repository> {
    let opts = gix::open::Options::isolated().open_path_as_is(true);
    gix::open_opts(git_dir, opts).map_err(|e| CacheError::Corrupt {
        path: git_dir.to_owned(),
        problem: format!("cannot open the repository: {}", chain(&e)),
    })
}

fn init_repo(git_dir: &Path) -> Result<gix::Repository> {
    gix::init_bare(git_dir).map_err(git_err("cannot create the local cache"))?;
    open_repo(git_dir)
}

/// Renames the corrupt repository to `domain.git.corrupt-<unix time>[-n]` beside it.
fn move_aside(git_dir: &Path) -> Result<PathBuf> {
    let base = format!("domain.git.corrupt-{}", now());
    let parent = git_dir.parent().unwrap_or(Path::new("."));
    let mut target = parent.join(&base);
    let mut n = 1;
    while target.exists() {
        target = parent.join(format!("{base}-{n}"));
        n += 1;
    }
    std::fs::rename(git_dir, &target)
        .map_err(io(git_dir, "cannot move the corrupt cache aside"))?;
    Ok(target)
}

/// Reads every ref under `refs/` and verifies each tip fully (objects `verified` holds only for
/// their presence), then records what it checked.
fn check(repo: &gix::Repository, git_dir: &Path, verified: &mut Verified) -> Result<()> {
    let corrupt = |problem: String| CacheError::Corrupt {
        path: git_dir.to_owned(),
        problem,
    };
    verified.refresh(git_dir, repo.object_hash());
    let mut checked = HashSet::new();
    let platform = repo
        .references()
        .map_err(|e| corrupt(format!("cannot list refs: {}", chain(&e))))?;
    let all = platform
        .all()
        .map_err(|e| corrupt(format!("cannot list refs: {}", chain(&e))))?;
    for r in all {
        let mut r = r.map_err(|e| corrupt(format!("a ref cannot be read: {}", chain(&e))))?;
        let name = r.name().as_bstr().to_string();
        let id = r
            .peel_to_id()
            .map_err(|e| corrupt(format!("{name} does not resolve: {}", chain(&e))))?
            .detach();
        verify_commit(repo, id, verified.ids(), &mut checked)
            .map_err(|p| corrupt(format!("{name}: {p}")))?;
    }
    if !checked.is_empty() {
        verified.extend(checked);
        // A record not saved costs a full read next time, nothing else.
        let _ = verified.save(git_dir);
    }
    Ok(())
}

/// Reads `id` (a commit), its tree and everything below, checking each object's hash. What
/// `known` holds was checked before: a known commit is only looked up, a known tree is skipped
/// with everything below it (it was recorded only once all of that was checked), a known blob is
/// skipped. `checked` receives what was checked now.
fn verify_commit(
    repo: &gix::Repository,
    id: gix::ObjectId,
    known: &HashSet<gix::ObjectId>,
    checked: &mut HashSet<gix::ObjectId>,
) -> std::result::Result<(), String> {
    let done =
        |id: &gix::ObjectId, checked: &HashSet<_>| known.contains(id) || checked.contains(id);
    if done(&id, checked) {
        return match repo.has_object(id) {
            true => Ok(()),
            false => Err(format!("commit {id} is missing")),
        };
    }
    let data = read_checked(repo, id, gix::objs::Kind::Commit)?;
    let mut found = vec![id];
    let commit = gix::objs::CommitRef::from_bytes(&data, repo.object_hash())
        .map_err(|e| format!("commit {id} cannot be decoded: {e}"))?;
    let tree = commit.tree();
    let mut stack = vec![tree];
    while let Some(tree_id) = stack.pop() {
        if done(&tree_id, checked) {
            continue;
        }
        let data = read_checked(repo, tree_id, gix::objs::Kind::Tree)?;
        found.push(tree_id);
        let tree = gix::objs::TreeRef::from_bytes(&data, repo.object_hash())
            .map_err(|e| format!("tree {tree_id} cannot be decoded: {e}"))?;
        for entry in tree.entries {
            let oid = entry.oid.to_owned();
            match entry.mode.kind() {
                gix::objs::tree::EntryKind::Tree => stack.push(oid),
                gix::objs::tree::EntryKind::Commit => {}
                _ if done(&oid, checked) => {}
                _ => {
                    read_checked(repo, oid, gix::objs::Kind::Blob)?;
                    found.push(oid);
                }
            }
        }
    }
    // Only a commit read whole counts: a tree is skipped later on the strength of what is below.
    checked.extend(found);
    Ok(())
}

fn read_checked(
    repo: &gix::Repository,
    id: gix::ObjectId,
    kind: gix::objs::Kind,
) -> std::result::Result<Vec<u8>, String> {
    let obj = match repo.try_find_object(id) {
        Ok(Some(o)) => o,
        Ok(None) => return Err(format!("{kind} {id} is missing")),
        Err(e) => return Err(format!("{kind} {id} cannot be read: {}", chain(&e))),
    };
    if obj.kind != kind {
        return Err(format!("{id} is a {}, expected a {kind}", obj.kind));
    }
    let actual = gix::objs::compute_hash(repo.object_hash(), obj.kind, &obj.data)
        .map_err(|e| format!("{kind} {id}: {}", chain(&e)))?;
    if actual != id {
        return Err(format!(
            "{kind} {id} is damaged (its content hashes to {actual})"
        ));
    }
    Ok(obj.detach().data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("steward-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "Op")
            .env("GIT_AUTHOR_EMAIL", "op@example.com")
            .env("GIT_COMMITTER_NAME", "Op")
            .env("GIT_COMMITTER_EMAIL", "op@example.com")
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A repository with two commits on `main`; returns (dir, head).
    fn origin(dir: &Path) -> (PathBuf, String) {
        let src = dir.join("origin");
        std::fs::create_dir_all(src.join("sub")).expect("mkdir");
        git(&src, &["init", "-q", "-b", "main"]);
        std::fs::write(src.join("a.txt"), "a\n").expect("write");
        std::fs::write(src.join("sub/b.txt"), "b\n".repeat(100)).expect("write");
        git(&src, &["add", "-A"]);
        git(&src, &["commit", "-qm", "one"]);
        std::fs::write(src.join("a.txt"), "a2\n").expect("write");
        git(&src, &["commit", "-qam", "two"]);
        let head = git(&src, &["rev-parse", "HEAD"]);
        (src, head)
    }

    fn remote(url: &Path) -> Remote {
        Remote {
            url: url.to_string_lossy().into_owned(),
            user: None,
            password: None,
            connect_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn fetches_a_branch_and_records_the_last_valid_commit() {
        let d = tmp("fetch");
        let (src, head) = origin(&d);
        let home = d.join("home");
        let (cache, repaired) = Cache::open(&home).expect("open");
        assert!(repaired.is_none());
        assert_eq!(cache.last_valid().expect("read"), None);
        let f = cache.fetch_git(&remote(&src), "main").expect("fetch");
        assert_eq!(f.commit.to_hex(), head);
        assert_eq!(f.remote_ref, "refs/heads/main");
        // Depth 1 into an empty cache: the tip commit, two trees, two blobs.
        assert_eq!(f.transfer.objects, 5, "{:?}", f.transfer);
        cache.verify(f.commit).expect("complete");
        cache.record_valid(f.commit, "a test").expect("record");
        let last = cache.last_valid().expect("read").expect("some");
        assert_eq!(last.commit, head);
        assert!(last.at.is_some());
        assert_eq!(last.source.as_deref(), Some("a test"));
        // Nothing new: nothing travels.
        let again = cache.fetch_git(&remote(&src), "main").expect("fetch");
        assert_eq!(again.transfer, Transfer::default());
        drop(cache);
        let (_, repaired) = Cache::open(&home).expect("reopen");
        assert!(repaired.is_none());
        // An older commit, behind the shallow tip, is fetched on demand and complete.
        let (cache, _) = Cache::open(&home).expect("reopen");
        let first = git(&src, &["rev-parse", "HEAD~1"]);
        git(&src, &["branch", "old", &first]);
        let old = cache.fetch_git(&remote(&src), "old").expect("fetch old");
        assert_eq!(old.commit.to_hex(), first);
        cache.verify(old.commit).expect("complete");
        drop(cache);
        // A missing branch is a clear error.
        let (cache, _) = Cache::open(&home).expect("reopen");
        let e = cache
            .fetch_git(&remote(&src), "nope")
            .expect_err("no branch");
        assert!(e.to_string().contains("refs/heads/nope"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_pack_is_detected_and_moved_aside() {
        let d = tmp("damage");
        let (src, _) = origin(&d);
        let home = d.join("home");
        {
            let (cache, _) = Cache::open(&home).expect("open");
            let f = cache.fetch_git(&remote(&src), "main").expect("fetch");
            cache.verify(f.commit).expect("intact");
            cache.record_valid(f.commit, "a test").expect("record");
        }
        // The objects checked are recorded, and an open with the record finds nothing wrong.
        let record = git_dir(&home).join("steward-verified");
        assert!(record.exists());
        let (_, repaired) = Cache::open(&home).expect("open");
        assert!(repaired.is_none());
        let pack_dir = git_dir(&home).join("objects/pack");
        let pack = std::fs::read_dir(&pack_dir)
            .expect("packs")
            .map(|e| e.expect("entry").path())
            .find(|p| p.extension().is_some_and(|x| x == "pack"))
            .expect("a pack");
        // Flip bytes in the middle of the compressed objects (header and trailer intact).
        let mut bytes = std::fs::read(&pack).expect("read");
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid - 8..mid + 8] {
            *b ^= 0x5a;
        }
        std::fs::write(&pack, bytes).expect("write");
        let (cache, repaired) = Cache::open(&home).expect("open");
        let r = repaired.expect("corruption detected");
        assert!(r.moved_to.exists());
        assert!(
            cache.last_valid().expect("read").is_none(),
            "a new, empty cache"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_broken_ref_is_detected() {
        let d = tmp("ref");
        let (src, _) = origin(&d);
        let home = d.join("home");
        {
            let (cache, _) = Cache::open(&home).expect("open");
            let f = cache.fetch_git(&remote(&src), "main").expect("fetch");
            cache.record_valid(f.commit, "a test").expect("record");
        }
        let packed = git_dir(&home).join("packed-refs");
        let loose = git_dir(&home).join("refs/steward/last-valid");
        assert!(loose.exists() || packed.exists());
        std::fs::create_dir_all(loose.parent().expect("parent")).expect("mkdir");
        std::fs::write(&loose, "not a ref at all\n").expect("write");
        let (_, repaired) = Cache::open(&home).expect("open");
        assert!(repaired.is_some(), "a broken ref is corruption");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn one_writer_at_a_time() {
        let d = tmp("lock");
        let home = d.join("home");
        let (first, _) = Cache::open(&home).expect("open");
        let h = home.clone();
        let t = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let _second = Cache::open(&h).expect("open");
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
        let waited = t.join().expect("thread");
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
