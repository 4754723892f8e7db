//! The Master Server: hosts (or mirrors) the domain repository, validates what arrives on the
//! followed branch, pins valid commits, tells subscribers, and tracks the Managed Servers.
//!
//! One decision procedure, [`State::reconcile`], moves the pin, whatever noticed the change: the
//! end of a push over HTTP, a ref change seen by the file watcher (a push by file path or ssh
//! through the same installed hook), the safety poll, a mirror fetch, or the start of the Master
//! (commits that arrived while it was down). It runs under one lock, which HTTP pushes also hold
//! from the end of their upload to their pin ([`push`]), so pushes are serialized and two racing
//! pushes never both pin.
//!
//! The decisions themselves are pure of HTTP and live below, in `reconciler`: whether a head is
//! pinned or rejected and how a rollback is made (`reconciler::decide`), whom to order to restart
//! (`reconciler::rolling`), and the documents exchanged with servers (`reconciler::wire`).
//!
//! Layout: this file runs the Master ([`launch`]: `master`, `start-master`, `stop-master`);
//! [`state`] holds what it knows and calls the decisions under the lock;
//! [`routes`] has one module per concern of the HTTP API, behind one gate that authenticates
//! first ([`crate::auth`] bounds the password checks); [`conn`] caps and times out connections;
//! [`tasks`] the background work (ref watcher, mirror polling, heartbeat watch, signals).

mod advert;
mod bus;
mod cgi;
mod conn;
mod csrf;
mod https;
pub mod launch;
mod lock;
pub mod log;
mod metrics;
pub(crate) mod mirror;
mod nodes;
mod packs;
mod precheck;
mod push;
mod rollouts;

mod routes;
mod servers;
pub use lock::running;
pub use servers::ServerState;
mod sniff;
mod state;
mod tasks;
mod webadmin;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};

use reconciler::git::Repo;
use reconciler::pin::{Outcome, PinStore, Source};
use state::{State, describe, load_pinned};
use tasks::{follow, poll_upstream, shutdown_signal, watch, watch_heartbeats};

/// How many events a slow SSE subscriber may fall behind before it is told it lagged.
const EVENT_BUFFER: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("{0}: not a domain home (no config/domain.git); create one with `steward init {0}`")]
    NotADomainHome(PathBuf),
    #[error(transparent)]
    Decide(#[from] reconciler::decide::DecideError),
    #[error(transparent)]
    Pin(#[from] reconciler::pin::PinError),
    #[error(transparent)]
    Hold(#[from] reconciler::hold::HoldError),
    #[error("[master.tls] of the pinned commit {commit}: {error}")]
    Tls {
        commit: String,
        // Boxed: rustls errors are large, and every `Result` of the Master carries this type.
        error: Box<reconciler::tls::TlsError>,
    },
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
    /// How long a push's pre-receive step may run, from the end of its upload.
    pub pre_receive_timeout: Duration,
}

impl Options {
    pub fn new(home: PathBuf) -> Options {
        Options {
            home,
            listen: None,
            branch: reconciler::init::BRANCH.to_owned(),
            upstream: None,
            poll_interval: None,
            webhook_secret: None,
            pre_receive_timeout: push::PRE_RECEIVE_TIMEOUT,
        }
    }
}

/// The default poll interval of mirror mode when neither the command line nor the domain says.
const DEFAULT_POLL: Duration = Duration::from_secs(30);

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

async fn serve(opts: Options) -> Result<()> {
    let home = std::path::absolute(&opts.home).unwrap_or(opts.home.clone());
    let store = PinStore::for_home(&home);
    if !store.git_dir().join("HEAD").is_file() {
        return Err(MasterError::NotADomainHome(home));
    }
    let _lock = lock::lock_home(&home.join("config"))?;
    let (store, current, last, upstream, branch, hold) = {
        let store2 = store.clone();
        let home2 = home.clone();
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
            let hold = reconciler::hold::read(&home2)?;
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
            Ok((store2, current, last, upstream, branch, hold))
        })
        .await
        .map_err(|e| MasterError::Runtime(std::io::Error::other(e)))??
    };
    let addr = opts.listen.unwrap_or(current.domain.config.master.listen);
    let name = current.domain.config.domain.name.clone();
    // Loaded before anything listens, so a bad certificate or key stops the start with a message
    // naming the file instead of serving something else.
    let tls = match &current.domain.config.master.tls {
        Some(t) => {
            let (cert, key) = (home.join(&t.certificate), home.join(&t.key));
            let config =
                tokio::task::spawn_blocking(move || reconciler::tls::server_config(&cert, &key))
                    .await
                    .map_err(|e| MasterError::Runtime(std::io::Error::other(e)))?;
            Some(config.map_err(|error| MasterError::Tls {
                commit: current.commit.short(),
                error: Box::new(error),
            })?)
        }
        None => None,
    };
    let pinned = current.commit;
    let registry = conn::Registry::new(conn::raise_fd_limit());
    let state = Arc::new(State {
        home: home.clone(),
        store,
        branch,
        current: RwLock::new(Arc::new(current)),
        events: bus::Bus::new(EVENT_BUFFER),
        decided: Arc::new(Mutex::new(last)),
        auth: crate::auth::Auth::new(),
        wakeups: std::sync::atomic::AtomicU64::new(0),
        connections: registry.clone(),
        pre_receive_timeout: opts.pre_receive_timeout,
        servers: servers::Registry::default(),
        nodes: nodes::Nodes::default(),
        rolling: reconciler::rolling::Rolling::default(),
        mirror: upstream.map(mirror::Mirror::new),
        rollouts: rollouts::Rollouts::default(),
        url: std::sync::OnceLock::new(),
        hold: std::sync::Mutex::new(hold),
        adverts: advert::Adverts::default(),
        packs: packs::Packs::default(),
        metrics: metrics::Metrics::default(),
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
                reconciler::cache::redact(&m.upstream.url),
                m.upstream.poll_interval
            ),
        );
        tokio::spawn(poll_upstream(state.clone()));
    }

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| MasterError::Listen { addr, error })?;
    let local = listener.local_addr().unwrap_or(addr);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let _ = state.url.set(rollouts::self_url(local, tls.is_some()));
    tokio::spawn(rollouts::drive(state.clone()));
    if tls.is_none() && !local.ip().is_loopback() {
        log::warning(
            "Master-0005",
            &format!(
                "Serving plain HTTP on {local}: passwords and the domain repository cross the network \
                 unencrypted. Configure [master.tls] certificate and key for HTTPS, or listen on a \
                 loopback address."
            ),
        );
    }
    log::info(
        "Master-0001",
        &format!(
            "The Master of domain {name} is listening on {scheme}://{local}: pinned {}, following {}, {} {scheme}://{local}/git/domain.git",
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
    let app = routes::router(state).into_make_service_with_connect_info::<conn::Peer>();
    let server = async move {
        match tls {
            Some(config) => axum::serve(https::listen(listener, config, registry)?, app).await,
            None => {
                axum::serve(
                    conn::Plain {
                        tcp: listener,
                        registry,
                    },
                    app,
                )
                .await
            }
        }
    };
    tokio::select! {
        r = server => r.map_err(MasterError::Runtime),
        () = shutdown_signal() => {
            log::info("Master-0002", "Stopping on a signal.");
            log::sd_notify("STOPPING=1");
            Ok(())
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
