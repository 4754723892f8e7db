//! The Master Server in hosted mode: serves `DOMAIN_HOME/config/domain.git` over Git smart HTTP,
//! validates what arrives on the followed branch, pins valid commits, and tells subscribers.
//!
//! One decision procedure, [`State::reconcile`], moves the pin, whatever noticed the change: the
//! end of a push over HTTP, a ref change seen by the file watcher (a push by file path or ssh
//! through the same installed hook), the safety poll, or the start of the Master (commits that
//! arrived while it was down). It runs under one lock, which HTTP pushes also hold from their
//! first byte to their pin, so pushes are serialized and two racing pushes never both pin.

mod auth;
mod cgi;
mod log;
mod mirror;
mod servers;
mod sniff;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Path as UrlPath, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::Serialize;
use tokio::sync::{Mutex, OwnedMutexGuard, broadcast, mpsc};

use crate::git::{Oid, Repo};
use crate::pin::{Outcome, PinStore, Record, Source};

/// Safety net under the file watcher: a missed inotify event (queue overflow, a network file
/// system) delays a pin by at most this long.
const SAFETY_POLL: Duration = Duration::from_secs(2);
/// How many events a slow SSE subscriber may fall behind before it is told it lagged.
const EVENT_BUFFER: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("{0}: not a domain home (no config/domain.git); create one with `steward init {0}`")]
    NotADomainHome(PathBuf),
    #[error(
        "{0}: nothing is pinned; the domain home is damaged (re-create it with `steward init`)"
    )]
    NothingPinned(PathBuf),
    #[error(
        "the pinned commit {commit} does not validate with this version of steward:\n{problems}"
    )]
    PinnedInvalid { commit: String, problems: String },
    #[error("{0}")]
    Git(String),
    #[error(transparent)]
    Pin(#[from] crate::pin::PinError),
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot watch {path}: {cause}")]
    Watch { path: PathBuf, cause: String },
    #[error("{0}")]
    Runtime(std::io::Error),
    #[error("another Master already runs on this domain home{}", .pid.as_deref().map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning { pid: Option<String> },
    #[error("{path}: cannot take the Master's lock: {error}")]
    Lock {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// One Master per domain home: an exclusive `flock` on `config/master.lock`, held for the life of
/// the process (the kernel releases it however the process ends, `kill -9` included). The file
/// holds the pid, for the message a second Master prints.
fn lock_home(config: &Path) -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let path = config.join("master.lock");
    let err = |error| MasterError::Lock {
        path: path.clone(),
        error,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(err)?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim().to_owned();
            return Err(MasterError::AlreadyRunning {
                pid: (!pid.is_empty()).then_some(pid),
            });
        }
        return Err(err(e));
    }
    file.set_len(0).map_err(err)?;
    file.rewind().map_err(err)?;
    write!(file, "{}", std::process::id()).map_err(err)?;
    Ok(file)
}

type Result<T, E = MasterError> = std::result::Result<T, E>;

/// How to run the Master. (No `Debug`: it may hold the webhook secret.)
#[derive(Clone)]
pub struct Options {
    pub home: PathBuf,
    /// Overrides `[master] listen` of the pinned commit (tests use a free port).
    pub listen: Option<SocketAddr>,
    /// The branch whose head is validated and pinned (in mirror mode: the upstream branch, kept
    /// under the same name locally).
    pub branch: String,
    /// Mirror mode: the upstream URL. Overrides `[master.upstream]` of the pinned commit.
    pub upstream: Option<String>,
    /// Mirror mode: how often to fetch (default: `[master.upstream] poll-interval`, else 30 s).
    pub poll_interval: Option<Duration>,
    /// Mirror mode: the webhook secret (default: the variable named by
    /// `[master.upstream] webhook-secret-env`).
    pub webhook_secret: Option<String>,
}

impl Options {
    pub fn new(home: PathBuf) -> Options {
        Options {
            home,
            listen: None,
            branch: crate::init::BRANCH.to_owned(),
            upstream: None,
            poll_interval: None,
            webhook_secret: None,
        }
    }
}

/// The default poll interval of mirror mode when neither the command line nor the domain says.
const DEFAULT_POLL: Duration = Duration::from_secs(30);

/// What the domain runs now.
struct Current {
    commit: Oid,
    at: String,
    domain: schema::model::Domain,
}

/// One message of `/v1/events`, encoded once however many subscribers there are.
#[derive(Debug, Clone)]
struct Event {
    /// SSE event name: `pinned`, `rejected` or `server`.
    name: &'static str,
    /// SSE id: the commit for pins and rejections.
    id: Option<String>,
    /// JSON.
    data: String,
}

impl Event {
    fn new(name: &'static str, id: Option<String>, data: &impl Serialize) -> Event {
        Event {
            name,
            id,
            data: serde_json::to_string(data).unwrap_or_else(|_| "null".into()),
        }
    }
}

struct State {
    home: PathBuf,
    store: PinStore,
    branch: String,
    current: RwLock<Arc<Current>>,
    events: broadcast::Sender<Arc<Event>>,
    /// The decision lock. Holds the last head of the branch that was decided on (pinned or
    /// rejected), so a rejected head is recorded once, not at every poll.
    decided: Arc<Mutex<Option<Oid>>>,
    auth: auth::AuthCache,
    servers: servers::Registry,
    /// Mirror mode; `None` when the Master hosts the repository.
    mirror: Option<mirror::Mirror>,
}

/// Runs the Master in the foreground until SIGINT or SIGTERM.
pub fn run(opts: Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(MasterError::Runtime)?;
    let result = rt.block_on(serve(opts));
    // Do not wait long for blocking work in flight (a hung upstream fetch): what matters (the pin
    // and its record) is written before any event says so.
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

/// Loads the pinned commit's domain; errors name the problem.
fn load_pinned(store: &PinStore) -> Result<Current> {
    let commit = store
        .pinned()?
        .ok_or_else(|| MasterError::NothingPinned(store.git_dir().to_owned()))?;
    let repo = Repo::open(store.git_dir()).map_err(|e| MasterError::Git(e.to_string()))?;
    let tree = repo
        .tree(commit)
        .map_err(|e| MasterError::Git(e.to_string()))?;
    let v = schema::validate(&tree);
    let Some(loaded) = v.loaded else {
        return Err(MasterError::PinnedInvalid {
            commit: commit.to_hex(),
            problems: v.report.render_short(),
        });
    };
    let at = store
        .history()?
        .into_iter()
        .rev()
        .find(|r| r.outcome == Outcome::Pinned && r.commit == commit.to_hex())
        .map(|r| r.at)
        .unwrap_or_default();
    Ok(Current {
        commit,
        at,
        domain: loaded.domain,
    })
}

/// A record describing `commit` (author and summary from the commit itself).
fn describe(repo: &Repo, commit: Oid, outcome: Outcome, source: Source) -> Record {
    let info = repo.commit_info(commit).ok();
    Record {
        outcome,
        commit: commit.to_hex(),
        previous: None,
        at: crate::pin::now_rfc3339(),
        source,
        author: info
            .as_ref()
            .map(|i| format!("{} <{}>", i.author_name, i.author_email)),
        pusher: None,
        summary: info.map(|i| i.summary).unwrap_or_default(),
        problems: Vec::new(),
        branch_head: None,
    }
}

async fn serve(opts: Options) -> Result<()> {
    let home = std::path::absolute(&opts.home).unwrap_or(opts.home.clone());
    let store = PinStore::for_home(&home);
    if !store.git_dir().join("HEAD").is_file() {
        return Err(MasterError::NotADomainHome(home));
    }
    let _lock = lock_home(&home.join("config"))?;
    let (store, current, last, upstream, branch) = {
        let store2 = store.clone();
        let opts = opts.clone();
        tokio::task::spawn_blocking(move || -> Result<_> {
            // A crash between moving the ref and writing its record: write the record now.
            if let Ok(repo) = Repo::open(store2.git_dir())
                && let Some(r) =
                    store2.recover(|c| describe(&repo, c, Outcome::Pinned, Source::Recovered))?
            {
                log::warning(
                    "Master-0012",
                    &format!(
                        "The pin {} was missing from the history (a crash between moving the pin and recording it); recorded now",
                        r.commit
                    ),
                );
            }
            let current = load_pinned(&store2)?;
            let (upstream, branch) = upstream_of(&opts, &current.domain);
            // The branch head is already decided if a record settled it (a rejection, or a
            // rollback away from it); otherwise the first decision below handles it.
            let head = Repo::open(store2.git_dir())
                .ok()
                .and_then(|r| r.resolve(&branch).ok().flatten());
            let last = head.filter(|h| {
                let hex = h.to_hex();
                store2
                    .history()
                    .is_ok_and(|hist| hist.iter().rev().any(|r| r.decided_head() == hex))
            });
            Ok((store2, current, last, upstream, branch))
        })
        .await
        .map_err(|e| MasterError::Runtime(std::io::Error::other(e)))??
    };
    let addr = opts.listen.unwrap_or(current.domain.config.master.listen);
    let name = current.domain.config.domain.name.clone();
    let pinned = current.commit;
    let (events, _) = broadcast::channel(EVENT_BUFFER);
    let state = Arc::new(State {
        home: home.clone(),
        store,
        branch,
        current: RwLock::new(Arc::new(current)),
        events,
        decided: Arc::new(Mutex::new(last)),
        auth: auth::AuthCache::default(),
        servers: servers::Registry::default(),
        mirror: upstream.map(mirror::Mirror::new),
    });

    // Commits that arrived while the Master was down.
    state.reconcile(Source::Watch, None, None).await;

    let (tx, rx) = mpsc::channel(1);
    let _watcher = watch(state.store.git_dir(), tx)?;
    tokio::spawn(follow(state.clone(), rx));
    tokio::spawn(watch_heartbeats(state.clone()));
    if let Some(m) = &state.mirror {
        log::info(
            "Master-0003",
            &format!(
                "Mirroring branch {} of {} every {:?}; webhooks at POST /v1/hooks/git",
                m.upstream.branch,
                mirror::redact(&m.upstream.url),
                m.upstream.poll_interval
            ),
        );
        tokio::spawn(poll_upstream(state.clone()));
    }

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| MasterError::Listen { addr, error })?;
    let local = listener.local_addr().unwrap_or(addr);
    log::info(
        "Master-0001",
        &format!(
            "The Master of domain {name} is listening on http://{local}: pinned {}, following {}, {} http://{local}/git/domain.git",
            pinned.short(),
            state.branch,
            if state.mirror.is_some() {
                "clone (read-only mirror) from"
            } else {
                "push to"
            }
        ),
    );

    log::sd_notify(&format!(
        "READY=1\nSTATUS=listening on {local}, pinned {}\nMAINPID={}",
        pinned.short(),
        std::process::id()
    ));
    let app = router(state);
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    );
    tokio::select! {
        r = server => r.map_err(MasterError::Runtime),
        () = shutdown_signal() => {
            log::info("Master-0002", "Stopping on a signal.");
            log::sd_notify("STOPPING=1");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Mirror mode settings (command line first, then `[master.upstream]` of the pinned commit) and
/// the full name of the followed branch.
fn upstream_of(
    opts: &Options,
    domain: &schema::model::Domain,
) -> (Option<mirror::Upstream>, String) {
    let configured = domain.config.master.upstream.as_ref();
    let from_env = |var: &String| std::env::var(var).ok().filter(|v| !v.is_empty());
    let upstream = match (&opts.upstream, configured) {
        (Some(url), c) => Some(mirror::Upstream {
            url: url.clone(),
            branch: opts
                .branch
                .strip_prefix("refs/heads/")
                .unwrap_or(&opts.branch)
                .to_owned(),
            poll_interval: opts
                .poll_interval
                .or(c.map(|c| c.poll_interval.0))
                .unwrap_or(DEFAULT_POLL),
            secret: opts.webhook_secret.clone().or_else(|| {
                c.and_then(|c| c.webhook_secret_env.as_ref())
                    .and_then(from_env)
            }),
        }),
        (None, Some(c)) => Some(mirror::Upstream {
            url: c.url.clone(),
            branch: c.branch.clone(),
            poll_interval: opts.poll_interval.unwrap_or(c.poll_interval.0),
            secret: opts
                .webhook_secret
                .clone()
                .or_else(|| c.webhook_secret_env.as_ref().and_then(from_env)),
        }),
        (None, None) => None,
    };
    let branch = match &upstream {
        Some(u) => format!("refs/heads/{}", u.branch),
        None => opts.branch.clone(),
    };
    (upstream, branch)
}

/// Mirror mode: fetch at start, then every poll interval.
async fn poll_upstream(state: Arc<State>) {
    let Some(interval) = state.mirror.as_ref().map(|m| m.upstream.poll_interval) else {
        return;
    };
    loop {
        state.sync(Source::Poll).await;
        tokio::time::sleep(interval).await;
    }
}

/// Watches the repository's refs; each change (coalesced) wakes [`follow`].
fn watch(git_dir: &Path, tx: mpsc::Sender<()>) -> Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let err = |path: &Path, e: notify::Error| MasterError::Watch {
        path: path.to_owned(),
        cause: e.to_string(),
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        // Only ref files matter; pack and object writes during a push are noise.
        let relevant = event.paths.iter().any(|p| {
            p.components().any(|c| c.as_os_str() == "refs")
                || p.file_name()
                    .is_some_and(|n| n == "packed-refs" || n == "HEAD")
        });
        if relevant {
            // Capacity 1: a burst of events becomes one wake-up.
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| err(git_dir, e))?;
    let refs = git_dir.join("refs");
    watcher
        .watch(&refs, RecursiveMode::Recursive)
        .map_err(|e| err(&refs, e))?;
    watcher
        .watch(git_dir, RecursiveMode::NonRecursive)
        .map_err(|e| err(git_dir, e))?;
    Ok(watcher)
}

/// Decides on every ref change the watcher reports, and every [`SAFETY_POLL`].
async fn follow(state: Arc<State>, mut rx: mpsc::Receiver<()>) {
    loop {
        tokio::select! {
            m = rx.recv() => if m.is_none() { return },
            () = tokio::time::sleep(SAFETY_POLL) => {}
        }
        state.reconcile(Source::Watch, None, None).await;
    }
}

impl State {
    fn current(&self) -> Arc<Current> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Validates the head of the followed branch and pins it if valid, records it as rejected if
    /// not. `guard` is the decision lock when the caller already holds it (a push).
    async fn reconcile(
        self: &Arc<Self>,
        source: Source,
        pusher: Option<String>,
        guard: Option<OwnedMutexGuard<Option<Oid>>>,
    ) -> Option<Record> {
        let mut decided = match guard {
            Some(g) => g,
            None => self.decided.clone().lock_owned().await,
        };
        let me = self.clone();
        let last = *decided;
        let outcome = tokio::task::spawn_blocking(move || me.decide(last, source, pusher)).await;
        let outcome = match outcome {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                log::severe(
                    "Master-0019",
                    &format!("Cannot decide on {}; the pin stays: {e}", self.branch),
                );
                return None;
            }
            Err(e) => {
                log::severe(
                    "Master-0019",
                    &format!("Cannot decide on {}; the pin stays: {e}", self.branch),
                );
                return None;
            }
        };
        let (head, record, current) = outcome?;
        *decided = Some(head);
        drop(decided);
        self.publish(record.clone(), current);
        Some(record)
    }

    /// Mirror mode: fetches the upstream branch and decides on its head, under the decision lock
    /// (so the ref watcher, woken by the fetch, finds nothing left to decide).
    async fn sync(self: &Arc<Self>, source: Source) -> serde_json::Value {
        let Some(mirror) = &self.mirror else {
            return serde_json::json!({ "outcome": "hosted" });
        };
        let guard = self.decided.clone().lock_owned().await;
        let git_dir = self.store.git_dir().to_owned();
        let (url, branch) = (mirror.upstream.url.clone(), mirror.upstream.branch.clone());
        let fetched = tokio::task::spawn_blocking(move || mirror::fetch(&git_dir, &url, &branch))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match fetched {
            Ok(head) => {
                if mirror.succeeded(head) {
                    log::info(
                        "Master-0041",
                        &format!("The upstream {} is reachable again.", mirror.status().url),
                    );
                }
                match self.reconcile(source, None, Some(guard)).await {
                    Some(r) => serde_json::json!({
                        "outcome": match r.outcome { Outcome::Pinned => "pinned", Outcome::Rejected => "rejected" },
                        "commit": r.commit,
                        "problems": r.problems,
                    }),
                    None => serde_json::json!({ "outcome": "unchanged", "commit": head.to_hex() }),
                }
            }
            Err(e) => {
                drop(guard);
                if mirror.failed(&e) {
                    log::warning(
                        "Master-0040",
                        &format!(
                            "Cannot fetch the upstream; the pin stays, the mirror is stale: {e}"
                        ),
                    );
                }
                serde_json::json!({ "outcome": "unreachable", "error": e })
            }
        }
    }

    /// Makes a decision public: the new current pin (if any), the log line, the event.
    fn publish(&self, record: Record, current: Option<Current>) {
        if let Some(c) = current {
            match self.current.write() {
                Ok(mut w) => *w = Arc::new(c),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(c),
            }
        }
        let name = match record.outcome {
            Outcome::Pinned => "pinned",
            Outcome::Rejected => "rejected",
        };
        let by = record
            .pusher
            .as_deref()
            .map(|p| format!(" by {p}"))
            .unwrap_or_default();
        match record.outcome {
            Outcome::Pinned => log::info(
                "Master-0010",
                &format!(
                    "Pinned {} (source {}{by}): {}",
                    record.commit,
                    record.source.as_str(),
                    record.summary
                ),
            ),
            Outcome::Rejected => log::warning(
                "Master-0011",
                &format!(
                    "Rejected {} (source {}{by}): {} problem(s); the pin stays",
                    record.commit,
                    record.source.as_str(),
                    record.problems.len()
                ),
            ),
        }
        // No subscribers is not an error.
        let id = Some(record.commit.clone());
        let _ = self.events.send(Arc::new(Event::new(name, id, &record)));
    }

    /// The blocking part of [`State::reconcile`]: `None` when there is nothing new to decide.
    fn decide(
        &self,
        last: Option<Oid>,
        source: Source,
        pusher: Option<String>,
    ) -> Result<Option<(Oid, Record, Option<Current>)>> {
        let repo = Repo::open(self.store.git_dir()).map_err(|e| MasterError::Git(e.to_string()))?;
        let Some(head) = repo
            .resolve(&self.branch)
            .map_err(|e| MasterError::Git(e.to_string()))?
        else {
            return Ok(None); // the branch was deleted: keep the pin
        };
        let pinned = self.store.pinned()?;
        if Some(head) == pinned || Some(head) == last {
            return Ok(None);
        }
        let tree = repo
            .tree(head)
            .map_err(|e| MasterError::Git(e.to_string()))?;
        // Validate again even though the hook did: a ref can be moved without a push, and an
        // invalid commit is never pinned.
        let v = schema::validate(&tree);
        let mut record = describe(&repo, head, Outcome::Pinned, source);
        record.pusher = pusher;
        record.previous = pinned.map(|p| p.to_hex());
        match v.loaded {
            Some(loaded) => {
                self.store.pin(head, pinned, &record)?;
                let current = Current {
                    commit: head,
                    at: record.at.clone(),
                    domain: loaded.domain,
                };
                Ok(Some((head, record, Some(current))))
            }
            None => {
                record.outcome = Outcome::Rejected;
                record.problems = v.report.to_json()["problems"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                self.store.append(&record)?;
                Ok(Some((head, record, None)))
            }
        }
    }

    /// The blocking part of `POST /v1/domain/pin`.
    fn rollback(&self, rev: &str, user: String) -> Result<Rollback> {
        let git = |e: crate::git::GitError| MasterError::Git(e.to_string());
        let repo = Repo::open(self.store.git_dir()).map_err(git)?;
        let Ok(Some(commit)) = repo.resolve(rev) else {
            return Ok(Rollback::NotFound);
        };
        let pinned = self.store.pinned()?;
        if pinned == Some(commit) {
            return Ok(Rollback::Unchanged(commit));
        }
        let tree = repo.tree(commit).map_err(git)?;
        let v = schema::validate(&tree);
        let Some(loaded) = v.loaded else {
            let problems = v.report.to_json()["problems"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            return Ok(Rollback::Invalid(problems));
        };
        let head = repo.resolve(&self.branch).map_err(git)?;
        let mut record = describe(&repo, commit, Outcome::Pinned, Source::Rollback);
        record.pusher = Some(user);
        record.previous = pinned.map(|p| p.to_hex());
        record.branch_head = Some(head.map(|h| h.to_hex()).unwrap_or_default());
        self.store.pin(commit, pinned, &record)?;
        let current = Current {
            commit,
            at: record.at.clone(),
            domain: loaded.domain,
        };
        Ok(Rollback::Done(Box::new((head, record, current))))
    }

    /// Records a push the pre-receive hook refused for the followed branch: the commit never
    /// entered the repository, so what is known comes from the conversation itself.
    async fn record_refusal(self: &Arc<Self>, request: &[u8], response: &[u8], pusher: String) {
        let answer = sniff::answer(response);
        let declined = answer
            .refused
            .iter()
            .any(|(name, reason)| *name == self.branch && reason.contains("hook declined"));
        let Some(cmd) = sniff::commands(request)
            .into_iter()
            .find(|c| c.name == self.branch)
        else {
            return;
        };
        if !declined {
            return;
        }
        let record = Record {
            outcome: Outcome::Rejected,
            commit: cmd.new,
            previous: Some(self.current().commit.to_hex()),
            at: crate::pin::now_rfc3339(),
            source: Source::Push,
            author: None,
            pusher: Some(pusher),
            summary: String::new(),
            problems: sniff::problems(&answer.messages),
            branch_head: None,
        };
        let store = self.store.clone();
        let rec = record.clone();
        match tokio::task::spawn_blocking(move || store.append(&rec)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::severe("Master-0031", &format!("Cannot record a refused push: {e}")),
            Err(e) => log::severe("Master-0031", &format!("Cannot record a refused push: {e}")),
        }
        self.publish(record, None);
    }

    /// The authenticated user, or the response to send instead: 401 without (valid) credentials,
    /// 403 when the user lacks `permission`. Neither says which part was wrong.
    async fn require(
        self: &Arc<Self>,
        headers: &HeaderMap,
        permission: &str,
    ) -> Result<String, Response> {
        let Some((user, password)) = auth::parse_basic(headers) else {
            return Err(unauthorized());
        };
        let current = self.current();
        let hash = current
            .domain
            .accounts
            .users
            .get(&user)
            .map(|u| u.password.clone());
        let me = self.clone();
        let u = user.clone();
        let ok =
            tokio::task::spawn_blocking(move || me.auth.verify(&u, &password, hash.as_deref()))
                .await
                .unwrap_or(false);
        if !ok {
            return Err(unauthorized());
        }
        if !current.domain.permits(&user, permission) {
            return Err(StatusCode::FORBIDDEN.into_response());
        }
        Ok(user)
    }
}

fn unauthorized() -> Response {
    let mut r = StatusCode::UNAUTHORIZED.into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"steward\""),
    );
    r
}

fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/domain", get(domain))
        .route("/v1/domain/history", get(history))
        .route("/v1/domain/pin", post(pin))
        .route("/v1/hooks/git", post(webhook))
        .route("/v1/events", get(events))
        .route("/v1/servers", get(list_servers))
        .route("/v1/servers/{name}", get(one_server))
        .route("/v1/servers/{name}/register", post(register))
        .route("/v1/servers/{name}/heartbeat", post(heartbeat))
        .route("/git/domain.git/{*rest}", any(git))
        .fallback(not_found)
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Unknown routes need credentials too, so probing does not map the API.
async fn not_found(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    match state.require(&headers, "domain:read").await {
        Ok(_) => StatusCode::NOT_FOUND.into_response(),
        Err(r) => r,
    }
}

async fn domain(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    if let Err(r) = state.require(&headers, "domain:read").await {
        return r;
    }
    let c = state.current();
    axum::Json(serde_json::json!({
        "name": c.domain.config.domain.name,
        "pinned": { "commit": c.commit.to_hex(), "at": c.at },
        "branch": state.branch,
        "mode": if state.mirror.is_some() { "mirror" } else { "hosted" },
        "upstream": state.mirror.as_ref().map(|m| m.status()),
    }))
    .into_response()
}

async fn history(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    if let Err(r) = state.require(&headers, "domain:read").await {
        return r;
    }
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.history()).await {
        Ok(Ok(mut records)) => {
            records.reverse(); // newest first
            axum::Json(records).into_response()
        }
        Ok(Err(e)) => internal(&e.to_string()),
        Err(e) => internal(&e.to_string()),
    }
}

/// Announces servers whose heartbeats stopped, once per outage.
async fn watch_heartbeats(state: Arc<State>) {
    loop {
        let c = state.current();
        let m = &c.domain.config.master;
        let (interval, timeout) = (m.heartbeat_interval.0, m.heartbeat_timeout.0);
        let servers = &c.domain.config.servers;
        for view in state
            .servers
            .newly_lost(timeout, |n| servers.contains_key(n))
        {
            log::warning(
                "Master-0021",
                &format!(
                    "Server {} is unreachable: no heartbeat for {timeout:?}",
                    view.name
                ),
            );
            let _ = state
                .events
                .send(Arc::new(Event::new("server", None, &view)));
        }
        drop(c);
        // Check a few times per timeout, so "unreachable" shows promptly.
        let tick = (timeout / 4).clamp(
            Duration::from_millis(100),
            interval.max(Duration::from_millis(100)),
        );
        tokio::time::sleep(tick).await;
    }
}

async fn list_servers(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    if let Err(r) = state.require(&headers, "servers:read").await {
        return r;
    }
    let c = state.current();
    let timeout = c.domain.config.master.heartbeat_timeout.0;
    axum::Json(state.servers.list(c.domain.config.servers.keys(), timeout)).into_response()
}

async fn one_server(
    AxState(state): AxState<Arc<State>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = state.require(&headers, "servers:read").await {
        return r;
    }
    let c = state.current();
    let timeout = c.domain.config.master.heartbeat_timeout.0;
    match state
        .servers
        .list(c.domain.config.servers.keys(), timeout)
        .into_iter()
        .find(|v| v.name == name)
    {
        Some(v) => axum::Json(v).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such server"),
    }
}

async fn register(
    st: AxState<Arc<State>>,
    name: UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    report(st, name, headers, body, true).await
}

async fn heartbeat(
    st: AxState<Arc<State>>,
    name: UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    report(st, name, headers, body, false).await
}

/// Registration and heartbeat take the same document and answer the same: what the server needs
/// to stay in step (the pin, and how often to report). A heartbeat from a server the Master does
/// not know (the Master restarted) simply registers it again.
async fn report(
    AxState(state): AxState<Arc<State>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
    registering: bool,
) -> Response {
    if let Err(r) = state.require(&headers, "servers:register").await {
        return r;
    }
    let report: servers::Report = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("not a server status: {e}"),
            );
        }
    };
    let c = state.current();
    let configured = c.domain.config.servers.contains_key(&name);
    if registering && !configured {
        return error(
            StatusCode::NOT_FOUND,
            "no such server in the pinned domain.toml",
        );
    }
    if let Some(view) = state.servers.report(&name, report, configured) {
        if registering {
            log::info(
                "Master-0020",
                &format!(
                    "Server {name} registered: {}, {}, running {}",
                    view.state,
                    view.mode.map_or("?", |m| m.as_str()),
                    view.applied_commit.as_deref().unwrap_or("?")
                ),
            );
        }
        let _ = state
            .events
            .send(Arc::new(Event::new("server", None, &view)));
    }
    let m = &c.domain.config.master;
    axum::Json(serde_json::json!({
        "pinned": { "commit": c.commit.to_hex(), "at": c.at },
        "heartbeat_interval_ms": m.heartbeat_interval.0.as_millis() as u64,
        "heartbeat_timeout_ms": m.heartbeat_timeout.0.as_millis() as u64,
    }))
    .into_response()
}

/// Mirror mode: a push notification from GitHub or GitLab (or anything that POSTs). Verified by
/// the shared secret (GitHub's HMAC signature, GitLab's token) when the call carries one, else by
/// HTTP Basic with `git:push`. A push to another branch is acknowledged and ignored; otherwise the
/// Master fetches and decides before answering.
async fn webhook(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(mirror) = &state.mirror else {
        if let Err(r) = state.require(&headers, "git:push").await {
            return r;
        }
        return error(
            StatusCode::NOT_FOUND,
            "this Master hosts the repository; webhooks are for mirror mode",
        );
    };
    let signed = mirror
        .upstream
        .secret
        .as_deref()
        .and_then(|secret| mirror::verify_webhook(&headers, &body, secret));
    match signed {
        Some(true) => {}
        Some(false) => return unauthorized(),
        None => {
            if let Err(r) = state.require(&headers, "git:push").await {
                return r;
            }
        }
    }
    let branch = format!("refs/heads/{}", mirror.upstream.branch);
    if let Some(r) = mirror::payload_ref(&body)
        && r != branch
    {
        return axum::Json(serde_json::json!({ "outcome": "ignored", "ref": r })).into_response();
    }
    axum::Json(state.sync(Source::Webhook).await).into_response()
}

/// Body of `POST /v1/domain/pin`.
#[derive(serde::Deserialize)]
struct PinRequest {
    /// Any revision Git understands; usually a full commit id from the history.
    commit: String,
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// Rollback (or roll forward): pins a commit of the repository that validates, whatever the branch
/// head is. The branch head at that moment counts as decided, so the pin holds until the next
/// commit arrives on the branch.
async fn pin(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let user = match state.require(&headers, "domain:pin").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let req: PinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"commit\": \"<id>\"}}: {e}"),
            );
        }
    };
    let mut decided = state.decided.clone().lock_owned().await;
    let st = state.clone();
    let outcome = tokio::task::spawn_blocking(move || st.rollback(&req.commit, user)).await;
    let (head, record, current) = match outcome {
        Ok(Ok(Rollback::Done(done))) => *done,
        Ok(Ok(Rollback::Unchanged(commit))) => {
            let c = state.current();
            return axum::Json(serde_json::json!({
                "pinned": { "commit": commit.to_hex(), "at": c.at },
                "changed": false,
            }))
            .into_response();
        }
        Ok(Ok(Rollback::NotFound)) => {
            return error(
                StatusCode::NOT_FOUND,
                "no such commit in the domain repository",
            );
        }
        Ok(Ok(Rollback::Invalid(problems))) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(serde_json::json!({
                    "error": "the commit does not validate; it was not pinned",
                    "problems": problems,
                })),
            )
                .into_response();
        }
        Ok(Err(MasterError::Pin(crate::pin::PinError::Conflict { .. }))) => {
            return error(StatusCode::CONFLICT, "the pin moved meanwhile; try again");
        }
        Ok(Err(e)) => return internal(&e.to_string()),
        Err(e) => return internal(&e.to_string()),
    };
    *decided = head;
    drop(decided);
    let body = serde_json::json!({
        "pinned": { "commit": record.commit, "at": record.at },
        "changed": true,
    });
    state.publish(record, Some(current));
    axum::Json(body).into_response()
}

enum Rollback {
    /// The branch head at the time (now decided), the record, the new current pin.
    Done(Box<(Option<Oid>, Record, Current)>),
    Unchanged(Oid),
    NotFound,
    Invalid(Vec<serde_json::Value>),
}

fn internal(message: &str) -> Response {
    log::severe("Master-0031", message);
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(serde_json::json!({ "error": "internal error; see the Master's log" })),
    )
        .into_response()
}

async fn events(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    if let Err(r) = state.require(&headers, "events:read").await {
        return r;
    }
    let rx = state.events.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let sse = match rx.recv().await {
            Ok(ev) => {
                let e = SseEvent::default().event(ev.name).data(ev.data.clone());
                match &ev.id {
                    Some(id) => e.id(id.clone()),
                    None => e,
                }
            }
            // Tell the client it missed events so it can re-read /v1/domain.
            Err(broadcast::error::RecvError::Lagged(n)) => {
                SseEvent::default().event("lagged").data(n.to_string())
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(sse), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Git smart HTTP. Fetching needs `git:read`, pushing `git:push`; a push holds the decision lock
/// until its commit is pinned or rejected.
async fn git(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    UrlPath(rest): UrlPath<String>,
    request: Request,
) -> Response {
    let query = request.uri().query().unwrap_or("").to_owned();
    let push =
        rest == "git-receive-pack" || query.split('&').any(|p| p == "service=git-receive-pack");
    let permission = if push { "git:push" } else { "git:read" };
    let user = match state.require(request.headers(), permission).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if push && state.mirror.is_some() {
        // The upstream is the source of truth; a push here would be overwritten by the next fetch.
        return error(
            StatusCode::FORBIDDEN,
            "this Master mirrors an upstream repository: push there",
        );
    }
    // The backend serves the whole project root (`DOMAIN_HOME/config`); keep requests inside
    // domain.git.
    if rest.split('/').any(|c| c == ".." || c == ".") || rest.starts_with('/') {
        return StatusCode::NOT_FOUND.into_response();
    }
    // Only the POST that carries the pack changes refs; the ref advertisement is a read.
    let guard = if rest == "git-receive-pack" {
        Some(state.decided.clone().lock_owned().await)
    } else {
        None
    };
    let (parts, body) = request.into_parts();
    let config = state.home.join("config");
    let req = cgi::CgiRequest {
        project_root: &config,
        path_info: format!("/domain.git/{rest}"),
        query,
        method: parts.method,
        headers: parts.headers,
        user: user.clone(),
        remote: Some(remote),
    };
    let (response, mut child, captured) = match cgi::run(req, body, guard.is_some()).await {
        Ok(x) => x,
        Err(e) => return cgi::bad_gateway(&e),
    };
    match guard {
        None => {
            tokio::spawn(async move {
                if tokio::time::timeout(cgi::BACKEND_TIMEOUT, child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            });
        }
        Some(guard) => {
            let st = state.clone();
            tokio::spawn(async move {
                let done = tokio::time::timeout(cgi::BACKEND_TIMEOUT, child.wait()).await;
                if done.is_err() {
                    let _ = child.kill().await;
                }
                let Some(c) = captured else {
                    st.reconcile(Source::Push, Some(user), Some(guard)).await;
                    return;
                };
                // The whole answer is needed to see what the hook refused. Bounded: a client that
                // stops reading must not hold the push lock for long.
                let _ = tokio::time::timeout(Duration::from_secs(60), c.eof).await;
                st.reconcile(Source::Push, Some(user.clone()), Some(guard))
                    .await;
                let request = c.request.lock().map(|b| b.clone()).unwrap_or_default();
                let response = c.response.lock().map(|b| b.clone()).unwrap_or_default();
                st.record_refusal(&request, &response, user).await;
                // Only now may `git push` return: the pin (or the rejection) is already public.
                let _ = c.release.send(());
            });
        }
    }
    response
}
