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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Path as UrlPath, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
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
}

type Result<T, E = MasterError> = std::result::Result<T, E>;

/// How to run the Master.
#[derive(Debug, Clone)]
pub struct Options {
    pub home: PathBuf,
    /// Overrides `[master] listen` of the pinned commit (tests use a free port).
    pub listen: Option<SocketAddr>,
    /// The branch whose head is validated and pinned.
    pub branch: String,
}

impl Options {
    pub fn new(home: PathBuf) -> Options {
        Options {
            home,
            listen: None,
            branch: crate::init::BRANCH.to_owned(),
        }
    }
}

/// What the domain runs now.
struct Current {
    commit: Oid,
    at: String,
    domain: schema::model::Domain,
}

/// A pin or rejection, as sent on `/v1/events`.
#[derive(Debug, Clone, Serialize)]
struct Event {
    /// SSE event name: `pinned` or `rejected`.
    #[serde(skip)]
    name: &'static str,
    #[serde(flatten)]
    record: Record,
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
}

/// Runs the Master in the foreground until SIGINT or SIGTERM.
pub fn run(opts: Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(MasterError::Runtime)?;
    rt.block_on(serve(opts))
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
    }
}

async fn serve(opts: Options) -> Result<()> {
    let home = std::path::absolute(&opts.home).unwrap_or(opts.home.clone());
    let store = PinStore::for_home(&home);
    if !store.git_dir().join("HEAD").is_file() {
        return Err(MasterError::NotADomainHome(home));
    }
    let (store, current, last) = {
        let store2 = store.clone();
        tokio::task::spawn_blocking(move || -> Result<_> {
            // A crash between moving the ref and writing its record: write the record now.
            if let Ok(repo) = Repo::open(store2.git_dir()) {
                store2.recover(|c| describe(&repo, c, Outcome::Pinned, Source::Recovered))?;
            }
            let current = load_pinned(&store2)?;
            let last = store2
                .history()?
                .last()
                .and_then(|r| Oid::from_hex(&r.commit).ok());
            Ok((store2, current, last))
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
        branch: opts.branch.clone(),
        current: RwLock::new(Arc::new(current)),
        events,
        decided: Arc::new(Mutex::new(last)),
        auth: auth::AuthCache::default(),
    });

    // Commits that arrived while the Master was down.
    state.reconcile(Source::Watch, None, None).await;

    let (tx, rx) = mpsc::channel(1);
    let _watcher = watch(state.store.git_dir(), tx)?;
    tokio::spawn(follow(state.clone(), rx));

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| MasterError::Listen { addr, error })?;
    let local = listener.local_addr().unwrap_or(addr);
    eprintln!(
        "steward master: domain {name}, pinned {}, following {}; listening on http://{local} (push to http://{local}/git/domain.git)",
        pinned.short(),
        state.branch
    );

    let app = router(state);
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    );
    tokio::select! {
        r = server => r.map_err(MasterError::Runtime),
        () = shutdown_signal() => {
            eprintln!("steward master: stopping");
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
    ) {
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
                eprintln!("steward master: cannot decide on {}: {e}", self.branch);
                return;
            }
            Err(e) => {
                eprintln!("steward master: decision task failed: {e}");
                return;
            }
        };
        let Some((head, record, current)) = outcome else {
            return;
        };
        *decided = Some(head);
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
        eprintln!(
            "steward master: {name} {} ({}{})",
            record.commit,
            record.source.as_str(),
            record
                .pusher
                .as_deref()
                .map(|p| format!(" by {p}"))
                .unwrap_or_default()
        );
        // No subscribers is not an error.
        let _ = self.events.send(Arc::new(Event { name, record }));
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
        .route("/v1/events", get(events))
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
        "mode": "hosted",
        "upstream": null,
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

fn internal(message: &str) -> Response {
    eprintln!("steward master: {message}");
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
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    let sse = SseEvent::default()
                        .event(ev.name)
                        .id(ev.record.commit.clone())
                        .json_data(&*ev)
                        .unwrap_or_else(|_| SseEvent::default().comment("unencodable event"));
                    return Some((Ok::<_, std::convert::Infallible>(sse), rx));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // Tell the client it missed events so it can re-read /v1/domain.
                    let sse = SseEvent::default().event("lagged").data(n.to_string());
                    return Some((Ok(sse), rx));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
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
    let (response, mut child) = match cgi::run(req, body).await {
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
                st.reconcile(Source::Push, Some(user), Some(guard)).await;
            });
        }
    }
    response
}
