//! Where the configuration comes from, in the seed's order: the Master (→ DEPENDENT), else the Git
//! URL (→ INDEPENDENT, validated here first), else the last validated commit of the local cache
//! (→ INDEPENDENT, possibly stale), else no boot. Every step is logged with a message id.

use std::time::{Duration, Instant};

use reconciler::cache::{Cache, Remote};
use reconciler::git::Oid;
use reconciler::wire::Domain;
use schema::Loaded;

use crate::client::{self, Client};
use crate::clock::Local;
use crate::logfile::Logger;
use crate::server::Mode;

/// What the launcher was told about sources.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `HOST:PORT`, `http://HOST:PORT`, or `https://HOST:PORT` for a Master serving HTTPS.
    pub master_url: Option<String>,
    pub git_url: Option<String>,
    /// The branch of the Git URL, when it has no `refs/steward/pinned`.
    pub branch: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    /// How long the Master may take to answer `GET /v1/domain` once connected.
    pub response_timeout: Duration,
}

/// A commit to boot from.
#[derive(Debug)]
pub struct Resolved {
    pub commit: Oid,
    pub mode: Mode,
    pub loaded: Box<Loaded>,
    /// `the Master at …`, `the Git URL …`, `the local cache`.
    pub origin: String,
}

/// One source tried and why it was not used.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub source: String,
    pub failure: String,
}

/// Nothing usable: every attempt, for the refusal message.
#[derive(Debug)]
pub struct Refused {
    pub attempts: Vec<Attempt>,
}

impl Refused {
    pub fn describe(&self) -> String {
        self.attempts
            .iter()
            .map(|a| format!("  - {}: {}", a.source, a.failure))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Why a source was not used. Whether the search goes on depends on the variant: a Master that
/// refused ([`Failure::Refused`]) or a configuration without this server
/// ([`Failure::NotInDomain`]) ends it; anything else (unreachable, broken, invalid) tries the next
/// source.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error(transparent)]
    Cache(#[from] reconciler::cache::CacheError),
    #[error(transparent)]
    Git(#[from] reconciler::git::GitError),
    #[error("GET /v1/domain answered {0}")]
    Status(u16),
    #[error("GET /v1/domain: not a domain document: {0}")]
    Document(serde_json::Error),
    #[error("commit {commit} is invalid:\n{problems}")]
    Invalid { commit: String, problems: String },
    /// The fetched ref does not validate (its problems are logged).
    #[error("{0} is not valid")]
    InvalidRef(String),
    /// The source answered with a valid configuration that has no such server: the server was
    /// removed from the domain (or the name is wrong), and booting it from an older
    /// configuration would resurrect it.
    #[error("commit {commit} defines no server named {name}")]
    NotInDomain { commit: String, name: String },
    /// The Master answered and refused the credentials (401/403). INDEPENDENT is for a Master
    /// that cannot be reached, never for one that said no.
    #[error(transparent)]
    Refused(Refusal),
    #[error("no validated configuration is cached on this machine")]
    NothingCached,
}

/// How the Master refused the launcher.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("it asks for credentials and none were given (401)")]
    NoCredentials,
    #[error("it refused the credentials of user {0} (401)")]
    BadCredentials(String),
    #[error(
        "user {0} may not read the domain (403: the servers' role needs domain:read, git:read, events:read and servers:register)"
    )]
    Forbidden(String),
}

/// `HOST:PORT` of a `--master-url` (scheme and trailing slash dropped), for messages.
pub fn master_host_port(url: &str) -> &str {
    client::split(url).1
}

/// The base URL of a `--master-url`: `https://HOST:PORT` stays TLS; `HOST:PORT` and
/// `http://HOST:PORT` are plain HTTP.
pub fn master_base(url: &str) -> String {
    match client::split(url) {
        (true, host_port) => format!("https://{host_port}"),
        (false, host_port) => format!("http://{host_port}"),
    }
}

/// Resolves the configuration for server `name`.
pub fn resolve(
    cache: &Cache,
    name: &str,
    sources: &Sources,
    log: &Logger,
) -> Result<Resolved, Refused> {
    let search = Search {
        cache,
        name,
        sources,
        log,
    };
    let mut attempts = Vec::new();
    match &sources.master_url {
        Some(url) => {
            let label = format!("the Master at {}", master_host_port(url));
            log.info(
                "Launcher-0010",
                &format!("Receiving the configuration from {label}."),
            );
            match from_master(search, url) {
                Ok(r) => return Ok(r),
                Err(e @ Failure::NotInDomain { .. }) => {
                    return Err(not_in_domain(log, name, label, e.to_string(), attempts));
                }
                Err(Failure::Refused(refusal)) => {
                    let message = refusal.to_string();
                    log.severe(
                        "Launcher-0068",
                        &format!(
                            "{label} refused this launcher: {message}. Not starting as INDEPENDENT: \
                             that is for a Master that cannot be reached, not for one that said no. \
                             Give the servers' account in DOMAIN_HOME/config/server-credentials \
                             (STEWARD_USER=… and STEWARD_PASSWORD=… lines, mode 0600), in the \
                             environment (STEWARD_USER, STEWARD_PASSWORD), or with -u/-p."
                        ),
                    );
                    attempts.push(Attempt {
                        source: label,
                        failure: message,
                    });
                    return Err(Refused { attempts });
                }
                Err(e) => {
                    let failure = e.to_string();
                    log.severe(
                        "Launcher-0052",
                        &format!(
                            "Receiving the configuration failed. Attempting to start as INDEPENDENT.\n{label}: {failure}"
                        ),
                    );
                    attempts.push(Attempt {
                        source: label,
                        failure,
                    });
                }
            }
        }
        None => {
            log.warn(
                "Launcher-0053",
                "No Master URL given (--master-url): the server will start as INDEPENDENT.",
            );
            attempts.push(Attempt {
                source: "the Master".into(),
                failure: "no --master-url given".into(),
            });
        }
    }
    match &sources.git_url {
        Some(url) => {
            let label = format!("the Git URL {}", reconciler::cache::redact(url));
            log.info(
                "Launcher-0020",
                &format!(
                    "Fetching refs/steward/pinned or refs/heads/{} from {label}.",
                    sources.branch
                ),
            );
            match from_git(search, url) {
                Ok(r) => return Ok(r),
                Err(e @ Failure::NotInDomain { .. }) => {
                    return Err(not_in_domain(log, name, label, e.to_string(), attempts));
                }
                Err(e) => {
                    let failure = e.to_string();
                    log.severe(
                        "Launcher-0023",
                        &format!("Not starting from {label}: {failure}"),
                    );
                    attempts.push(Attempt {
                        source: label,
                        failure,
                    });
                }
            }
        }
        None => attempts.push(Attempt {
            source: "a Git URL".into(),
            failure: "no --git-url given".into(),
        }),
    }
    match from_cache(cache, name, log) {
        Ok(r) => Ok(r),
        Err(failure) => {
            attempts.push(Attempt {
                source: format!("the local cache {}", cache.git_dir().display()),
                failure: failure.to_string(),
            });
            Err(Refused { attempts })
        }
    }
}

fn not_in_domain(
    log: &Logger,
    name: &str,
    source: String,
    message: String,
    mut attempts: Vec<Attempt>,
) -> Refused {
    log.severe(
        "Launcher-0067",
        &format!(
            "{source}: {message}. Not falling back to older configurations: they would start \
             a server the domain no longer has [{name}]."
        ),
    );
    attempts.push(Attempt {
        source,
        failure: message,
    });
    Refused { attempts }
}

/// Validates `commit` from the cache and checks it defines server `name`.
fn load(cache: &Cache, commit: Oid, name: &str) -> Result<Loaded, Failure> {
    let tree = cache.tree(commit)?;
    let validation = schema::validate(&tree);
    let Some(loaded) = validation.loaded else {
        return Err(Failure::Invalid {
            commit: commit.short(),
            problems: validation.report.render_short().trim_end().to_owned(),
        });
    };
    if !loaded.domain.config.servers.contains_key(name) {
        return Err(Failure::NotInDomain {
            commit: commit.short(),
            name: name.to_owned(),
        });
    }
    Ok(loaded)
}

/// What every source is searched with.
#[derive(Clone, Copy)]
struct Search<'a> {
    cache: &'a Cache,
    name: &'a str,
    sources: &'a Sources,
    log: &'a Logger,
}

impl<'a> Search<'a> {
    fn parts(self) -> (&'a Cache, &'a str, &'a Sources, &'a Logger) {
        (self.cache, self.name, self.sources, self.log)
    }
}

fn from_master(search: Search<'_>, url: &str) -> Result<Resolved, Failure> {
    let (cache, name, s, log) = search.parts();
    let start = Instant::now();
    let base = master_base(url);
    let creds = s.user.as_deref().zip(s.password.as_deref());
    let resp = Client::new(&base, creds, s.connect_timeout, s.response_timeout)
        .and_then(|c| c.get("/v1/domain"))?;
    match (resp.status, creds) {
        (200, _) => {}
        (401, None) => return Err(Failure::Refused(Refusal::NoCredentials)),
        (401, Some((user, _))) => {
            return Err(Failure::Refused(Refusal::BadCredentials(user.to_owned())));
        }
        (403, user) => {
            let user = user.map_or("(none)", |u| u.0).to_owned();
            return Err(Failure::Refused(Refusal::Forbidden(user)));
        }
        (other, _) => return Err(Failure::Status(other)),
    }
    let domain: Domain = serde_json::from_slice(&resp.body).map_err(Failure::Document)?;
    let commit = Oid::from_hex(&domain.pinned.commit)?;
    if cache.has_complete(commit) {
        // Warm cache: the pinned commit is already here, no Git round trip needed.
        log.info(
            "Launcher-0011",
            &format!(
                "The Master pins {}; it is already in the local cache.",
                commit.short()
            ),
        );
    } else {
        log.info(
            "Launcher-0011",
            &format!(
                "The Master pins {}; fetching it into the local cache.",
                commit.short()
            ),
        );
        let remote = Remote {
            url: format!("{base}/git/domain.git"),
            user: s.user.clone(),
            password: s.password.clone(),
            connect_timeout: s.connect_timeout,
        };
        let (_, transfer) = cache.fetch_master(&remote)?;
        log.info(
            "Launcher-0013",
            &format!("Fetched from the Master: {transfer}."),
        );
        // The pin may have moved between the two requests; the commit asked for is in the
        // history of what arrived, and is what the Master told us to run.
        cache.verify(commit)?;
    }
    let loaded = load(cache, commit, name)?;
    let label = format!("the Master at {}", master_host_port(url));
    let _ = cache.set_ref(
        reconciler::cache::MASTER_PINNED,
        commit,
        "pinned by the Master",
    );
    cache.record_valid(commit, &label)?;
    log.info(
        "Launcher-0012",
        &format!(
            "Received the configuration {} from {label} in {} ms.",
            commit.short(),
            start.elapsed().as_millis()
        ),
    );
    Ok(Resolved {
        commit,
        mode: Mode::Dependent,
        loaded: Box::new(loaded),
        origin: label,
    })
}

fn from_git(search: Search<'_>, url: &str) -> Result<Resolved, Failure> {
    let (cache, name, s, log) = search.parts();
    let start = Instant::now();
    let remote = Remote {
        url: url.to_owned(),
        user: s.user.clone(),
        password: s.password.clone(),
        connect_timeout: s.connect_timeout,
    };
    let fetched = cache.fetch_git(&remote, &s.branch)?;
    let label = format!("the Git URL {}", reconciler::cache::redact(url));
    let loaded = match load(cache, fetched.commit, name) {
        Ok(l) => l,
        Err(e @ Failure::NotInDomain { .. }) => return Err(e),
        Err(problems) => {
            log.severe(
                "Launcher-0022",
                &format!(
                    "{} of {label} is not valid; not starting from it.\n{problems}",
                    fetched.remote_ref
                ),
            );
            return Err(Failure::InvalidRef(fetched.remote_ref.to_string()));
        }
    };
    cache.record_valid(fetched.commit, &label)?;
    log.info(
        "Launcher-0021",
        &format!(
            "Received the configuration {} ({}, {}) from {label} in {} ms; it is valid.",
            fetched.commit.short(),
            fetched.remote_ref,
            fetched.transfer,
            start.elapsed().as_millis()
        ),
    );
    Ok(Resolved {
        commit: fetched.commit,
        mode: Mode::Independent,
        loaded: Box::new(loaded),
        origin: label,
    })
}

fn from_cache(cache: &Cache, name: &str, log: &Logger) -> Result<Resolved, Failure> {
    let last = cache.last_valid()?.ok_or(Failure::NothingCached)?;
    let commit = Oid::from_hex(&last.commit)?;
    let loaded = load(cache, commit, name)?;
    let since = match last.at {
        Some(at) => {
            let t = std::time::UNIX_EPOCH + Duration::from_secs(at);
            format!("validated {}", Local::at(t).log_stamp())
        }
        None => "validated at an unknown time".into(),
    };
    let from = last
        .source
        .map(|s| format!(" from {s}"))
        .unwrap_or_default();
    log.warn(
        "Launcher-0030",
        &format!(
            "Starting from the last validated configuration in the local cache: {} ({since}{from}). \
             It may be stale: nothing newer could be received since then.",
            commit.short()
        ),
    );
    Ok(Resolved {
        commit,
        mode: Mode::Independent,
        loaded: Box::new(loaded),
        origin: "the local cache".into(),
    })
}
