//! The Managed Server process, `steward server` (started by the launcher, or by systemd): loads
//! its commit from the local cache, validates it, creates or repairs SERVER_HOME, deploys its
//! applications and starts the web engine with them (`crate::serving`), answers
//! `GET /v1/status` on its base `listen` address, signals READY over sd_notify, and stops
//! gracefully on SIGTERM/SIGINT (in-flight requests get up to `stop-timeout`, then the process
//! applications stop). The component and messaging engines start around the web engine.
//!
//! Long because the boot sequence, the management API and the stop path share their state here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use reconciler::cache::Cache;
use reconciler::git::Oid;

use crate::layout::ServerHome;
use crate::logfile::{Echo, Level, LogFile, Logger, Rotation};
use crate::logging::Format;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Layout(#[from] crate::layout::LayoutError),
    #[error(transparent)]
    Log(#[from] crate::logfile::LogError),
    #[error("cannot load commit {commit} from the local cache: {cause}")]
    Load { commit: String, cause: LoadError },
    #[error("commit {commit} is invalid; not starting:\n{problems}")]
    Invalid { commit: String, problems: String },
    #[error("commit {commit} defines no server named {name}")]
    NoSuchServer { commit: String, name: String },
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
    #[error(transparent)]
    Serving(#[from] crate::serving::ServingError),
    #[error(transparent)]
    Messaging(#[from] crate::engine::messaging::MessagingError),
    #[error(transparent)]
    Component(#[from] crate::engine::component::ComponentError),
}

/// Why the boot commit cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Git(#[from] reconciler::git::GitError),
    #[error(transparent)]
    Cache(#[from] reconciler::cache::CacheError),
}

pub use reconciler::wire::Mode;

/// What `steward server` was told.
#[derive(Debug, Clone)]
pub struct Options {
    pub domain_home: PathBuf,
    pub name: String,
    pub commit: String,
    pub mode: Mode,
    /// Also print log lines on stderr (under `--verbose` or systemd).
    pub console: bool,
    /// `process.args` of the configuration, passed through by the launcher.
    pub args: Vec<String>,
    /// `host:port` of the Master to report to and follow; `None`: run alone.
    pub master_url: Option<String>,
    /// For the Master (`servers:register`), from STEWARD_USER / STEWARD_PASSWORD.
    pub credentials: Option<(String, String)>,
}

/// The server's `GET /v1/status`, also the body of its reports to the Master.
pub use reconciler::wire::Status;

/// [`Status::older_images`] of `serving`.
pub fn older_images(serving: &crate::serving::Serving) -> BTreeMap<String, String> {
    serving
        .older_images()
        .into_iter()
        .map(|(app, commit)| (app, commit.to_hex()))
        .collect()
}

type Shared = Arc<RwLock<Status>>;

/// What the management API (`/v1/status`, `/metrics`) reads.
struct Management {
    status: Shared,
    engine: crate::engine::web::WebEngine,
    deploys: Arc<crate::server_metrics::DeployStats>,
    messaging: crate::engine::messaging::MessagingEngine,
    component: crate::engine::component::ComponentEngine,
    auth: Arc<crate::auth::Auth>,
    /// The accounts and policies of the applied commit (live: updated with each commit applied).
    domain: Arc<RwLock<Arc<schema::model::Domain>>>,
}

impl Management {
    fn snapshot(&self) -> Status {
        self.status
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn domain(&self) -> Arc<schema::model::Domain> {
        match self.domain.read() {
            Ok(d) => d.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Whether `user` holds one of `permissions` in the applied commit.
    fn permits(&self, user: &str, permissions: &[&str]) -> bool {
        let domain = self.domain();
        permissions.iter().any(|p| domain.permits(user, p))
    }
}

/// The user [`gate`] authenticated.
#[derive(Clone)]
struct User(String);

/// In front of every route of the management API: authenticates against the applied commit's
/// accounts before a route is chosen, so without valid credentials every method and path gets
/// the same 401 (or 429/503 while password checks are bounded; see [`crate::auth`]).
async fn gate(
    State(m): State<Arc<Management>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let domain = m.domain();
    match crate::auth::authenticate(&m.auth, &domain, req.headers(), Some(peer.ip())).await {
        Ok(user) => {
            req.extensions_mut().insert(User(user));
            next.run(req).await
        }
        Err(r) => r,
    }
}

/// Who may read a server's status: operators (`servers:read`) and the servers' launchers
/// (`servers:register`, the one permission of their account that concerns servers).
const STATUS_READERS: &[&str] = &["servers:read", "servers:register"];

async fn status(
    State(m): State<Arc<Management>>,
    Extension(User(user)): Extension<User>,
) -> Response {
    if !m.permits(&user, STATUS_READERS) {
        return StatusCode::FORBIDDEN.into_response();
    }
    axum::Json(m.snapshot()).into_response()
}

/// `GET /v1/messaging` (docs/messaging.md): the destinations and their counters; readable by
/// whoever may read the status.
async fn messaging(
    State(m): State<Arc<Management>>,
    Extension(User(user)): Extension<User>,
) -> Response {
    if !m.permits(&user, STATUS_READERS) {
        return StatusCode::FORBIDDEN.into_response();
    }
    axum::Json(m.messaging.report()).into_response()
}

/// `GET /v1/components` (docs/components.md): the component applications and their timers;
/// readable by whoever may read the status.
async fn components(
    State(m): State<Arc<Management>>,
    Extension(User(user)): Extension<User>,
) -> Response {
    if !m.permits(&user, STATUS_READERS) {
        return StatusCode::FORBIDDEN.into_response();
    }
    axum::Json(m.component.report()).into_response()
}

/// `DELETE /v1/components/{app}/timers/{id}` (docs/components.md): an operator cancels a timer
/// (`servers:control`); answered once the removal is committed to the timer store, with the
/// timer as it was. The Master forwards `steward admin timers cancel` here.
async fn cancel_timer(
    State(m): State<Arc<Management>>,
    Extension(User(user)): Extension<User>,
    axum::extract::Path((app, id)): axum::extract::Path<(String, String)>,
) -> Response {
    use crate::engine::component::operator::CancelError;
    if !m.permits(&user, &["servers:control"]) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let engine = m.component.clone();
    // The store's commit (fsync) blocks: off the runtime's workers.
    let result = tokio::task::spawn_blocking(move || engine.operator_cancel(&app, &id)).await;
    let refuse = |status: StatusCode, e: &dyn std::fmt::Display| {
        (
            status,
            axum::Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response()
    };
    match result {
        Ok(Ok(t)) => axum::Json(t).into_response(),
        Ok(Err(e @ (CancelError::UnknownApp { .. } | CancelError::UnknownTimer { .. }))) => {
            refuse(StatusCode::NOT_FOUND, &e)
        }
        Ok(Err(e @ CancelError::Declared { .. })) => refuse(StatusCode::CONFLICT, &e),
        Ok(Err(e @ CancelError::Store(_))) => refuse(StatusCode::SERVICE_UNAVAILABLE, &e),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

/// `GET /metrics` (docs/metrics.md).
async fn metrics(
    State(m): State<Arc<Management>>,
    Extension(User(user)): Extension<User>,
) -> Response {
    if !m.permits(&user, &["metrics:read"]) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let s = m.snapshot();
    let body = crate::server_metrics::render(
        &m.engine,
        &m.messaging.report(),
        &m.deploys,
        s.pending_restart.len(),
        s.failed_applications.len(),
    );
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    r
}

fn level(l: schema::model::LogLevel) -> Level {
    use schema::model::LogLevel::*;
    match l {
        Trace => Level::Finer,
        Debug => Level::Fine,
        Info => Level::Info,
        Warn => Level::Warning,
        Error => Level::Severe,
    }
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(opts: Options) -> Result<(), ServerError> {
    let started = Instant::now();
    let home = ServerHome::new(&opts.domain_home, &opts.name)?;
    home.create()?;
    let file = LogFile::open(&home.logs(), "server", Rotation::default())?;
    let echo = if opts.console {
        Echo::Stderr
    } else {
        Echo::None
    };
    let log = Logger::new(Some(file), echo, &opts.name);
    log.install();
    match boot(&opts, &home, &log, started) {
        Ok(()) => Ok(()),
        Err(e) => {
            log.severe("SERVER-0090", &format!("The server failed to start: {e}"));
            Err(e)
        }
    }
}

fn boot(
    opts: &Options,
    home: &ServerHome,
    log: &Logger,
    started: Instant,
) -> Result<(), ServerError> {
    log.info(
        "SERVER-0001",
        &format!(
            "Starting the server[{}] of {} in {} mode with commit {}.",
            opts.name,
            home.domain_home.display(),
            opts.mode.as_str(),
            opts.commit
        ),
    );
    clean_staging(home, log);
    let load_err = |cause: LoadError| ServerError::Load {
        commit: opts.commit.clone(),
        cause,
    };
    let commit = Oid::from_hex(&opts.commit).map_err(|e| load_err(e.into()))?;
    let loaded = {
        // Shared lock: no launcher moves the cache aside while this reads it.
        let cache = Cache::open_shared(&home.domain_home).map_err(|e| load_err(e.into()))?;
        let tree = cache.tree(commit).map_err(|e| load_err(e.into()))?;
        let validation = schema::validate(&tree);
        match validation.loaded {
            Some(l) => l,
            None => {
                return Err(ServerError::Invalid {
                    commit: commit.short(),
                    problems: validation.report.render_short(),
                });
            }
        }
    };
    let Some(server) = loaded.domain.config.servers.get(&opts.name).cloned() else {
        return Err(ServerError::NoSuchServer {
            commit: commit.short(),
            name: opts.name.clone(),
        });
    };
    apply_logging(log, &server);
    if !opts.args.is_empty() {
        log.info(
            "SERVER-0003",
            &format!("Process arguments: {}", opts.args.join(" ")),
        );
    }
    let threads = usize::from(server.process.runtime_threads.max(1));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    // `stop-timeout` is live: the control loop updates it with every applied commit.
    let stop_timeout = Arc::new(std::sync::atomic::AtomicU64::new(
        server.stop_timeout.0.as_millis() as u64,
    ));
    // The component engine first: its timer service's address and tokens are in the
    // environment of the component applications the web engine starts.
    let component = rt.block_on(crate::engine::component::ComponentEngine::start(
        &home.ejbtimerdb(),
        &server.component,
        crate::engine::component::components(&crate::serving::apps_of(&loaded, &opts.name)),
        Some(log.clone()),
    ))?;
    // Applications before READY: a server reported RUNNING serves what it can.
    let serving = match rt.block_on(crate::serving::Serving::start(
        &opts.name,
        home,
        log,
        &loaded,
        commit,
        Some(component.component_env()),
    )) {
        Ok(s) => s,
        Err(e) => {
            component.shutdown();
            return Err(e.into());
        }
    };
    let engine = serving.engine().clone();
    // Timers fire from now on, to the components the web engine supervises.
    rt.block_on(async { component.attach(engine.clone()) });
    let deploys = serving.deploy_stats().clone();
    let domain = Arc::new(RwLock::new(Arc::new(loaded.domain.clone())));
    let auth = Arc::new(crate::auth::Auth::new());
    let tmlog = home.workspace().join("tmlog");
    let messaging = match rt.block_on(crate::engine::messaging::MessagingEngine::start(
        &server.messaging,
        Some(&tmlog),
        domain.clone(),
        auth.clone(),
        Some(log.clone()),
    )) {
        Ok(m) => m,
        Err(e) => {
            // The process applications already run: they must not outlive a failed start.
            component.shutdown();
            rt.block_on(engine.shutdown(Duration::ZERO));
            return Err(e.into());
        }
    };
    // Message-driven components consume from now on.
    rt.block_on(async { component.attach_messaging(messaging.clone()) });
    let status: Shared = Arc::new(RwLock::new(Status {
        name: opts.name.clone(),
        state: crate::master::ServerState::Starting,
        mode: opts.mode,
        applied_commit: Some(commit.to_hex()),
        pending_restart: Vec::new(),
        failed_applications: serving.failed().keys().cloned().collect(),
        older_images: older_images(&serving),
        last_error: serving.failure_summary(),
        pid: Some(std::process::id()),
        // When the process started, to the second: `started` is this process's own clock.
        started_at: Some(reconciler::pin::now_rfc3339()),
    }));
    let handle = rt.handle().clone();
    let control = opts.master_url.as_ref().map(|master| {
        let apply_log = log.clone();
        let me = opts.name.clone();
        let live_stop_timeout = stop_timeout.clone();
        let live_domain = domain.clone();
        let live_messaging = messaging.clone();
        let live_component = component.clone();
        crate::control::Control {
            name: opts.name.clone(),
            domain_home: home.domain_home.clone(),
            master: crate::launcher::source::master_base(master),
            credentials: opts.credentials.clone(),
            status: status.clone(),
            log: log.clone(),
            boot: loaded.clone(),
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("steward")),
            serving,
            handle,
            reporter: std::sync::OnceLock::new(),
            dependent: false,
            apply_live: Box::new(move |target: &schema::Loaded| {
                // Accounts and policies are live: the management API checks the applied ones.
                let d = Arc::new(target.domain.clone());
                match live_domain.write() {
                    Ok(mut w) => *w = d,
                    Err(p) => *p.into_inner() = d,
                }
                if let Some(s) = target.domain.config.servers.get(&me) {
                    apply_logging(&apply_log, s);
                    // Destinations and their limits; the listener is restart-class.
                    live_messaging.apply(&s.messaging);
                    // Timer settings and declared timers; undeployed components' timers go.
                    live_component.apply(
                        &s.component,
                        crate::engine::component::components(&crate::serving::apps_of(target, &me)),
                    );
                    live_stop_timeout.store(
                        s.stop_timeout.0.as_millis() as u64,
                        std::sync::atomic::Ordering::SeqCst,
                    );
                }
            }),
        }
    });
    rt.block_on(serve(ServeArgs {
        home,
        log,
        status: status.clone(),
        listen: server.listen,
        stop_timeout,
        mode: opts.mode,
        started,
        control,
        management: Arc::new(Management {
            status: status.clone(),
            engine: engine.clone(),
            deploys,
            messaging: messaging.clone(),
            component: component.clone(),
            auth,
            domain,
        }),
        engine,
    }))
}

/// Removes what deployments of processes killed mid-way left in `.workspace/tmp/` (their staging
/// directories), before this process deploys anything.
fn clean_staging(home: &ServerHome, log: &Logger) {
    let exe = std::env::current_exe().ok();
    let removed = crate::deploy::clean_stale_staging(home, exe.as_deref());
    if removed.is_empty() {
        return;
    }
    let bytes: u64 = removed.iter().map(|(_, b)| b).sum();
    let names: Vec<String> = removed
        .iter()
        .map(|(p, _)| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    log.info(
        "SERVER-0008",
        &format!(
            "Removed {} staging director{} left by interrupted deployments ({:.1} MiB): {}.",
            removed.len(),
            if removed.len() == 1 { "y" } else { "ies" },
            bytes as f64 / f64::from(1 << 20),
            names.join(", ")
        ),
    );
}

/// The live logging settings: level (through the subscriber's reload handle), format and
/// rotation.
fn apply_logging(log: &Logger, server: &schema::model::Server) {
    log.set_level(level(server.logging.level));
    log.set_format(match server.logging.format {
        schema::model::LogFormat::Jeus => Format::Jeus,
        schema::model::LogFormat::Json => Format::Json,
    });
    log.set_rotation(crate::serving::rotation_of(server));
}

struct ServeArgs<'a> {
    home: &'a ServerHome,
    log: &'a Logger,
    status: Shared,
    listen: SocketAddr,
    /// Milliseconds; live.
    stop_timeout: Arc<std::sync::atomic::AtomicU64>,
    mode: Mode,
    started: Instant,
    control: Option<crate::control::Control>,
    management: Arc<Management>,
    engine: crate::engine::web::WebEngine,
}

async fn serve(a: ServeArgs<'_>) -> Result<(), ServerError> {
    use tokio::signal::unix::{SignalKind, signal};
    let listener = match tokio::net::TcpListener::bind(a.listen).await {
        Ok(l) => l,
        Err(error) => {
            // The process applications already run: they must not outlive a failed start.
            a.engine.shutdown(Duration::ZERO).await;
            return Err(ServerError::Listen {
                addr: a.listen,
                error,
            });
        }
    };
    // Installed before READY, so a stop right after READY is never lost.
    let mut term = signal(SignalKind::terminate()).map_err(ServerError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServerError::Runtime)?;
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/v1/messaging", get(messaging))
        .route("/v1/components", get(components))
        .route(
            "/v1/components/{app}/timers/{id}",
            axum::routing::delete(cancel_timer),
        )
        // Behind the gate too: an unknown path answers 404 only to valid credentials.
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(axum::middleware::from_fn_with_state(
            a.management.clone(),
            gate,
        ))
        .with_state(a.management.clone())
        .into_make_service_with_connect_info::<SocketAddr>();
    a.log.info(
        "SERVER-0010",
        &format!(
            "Listening on {} (management API: GET /v1/status, GET /v1/messaging, GET /v1/components, DELETE /v1/components/APP/timers/ID, GET /metrics).",
            a.listen
        ),
    );
    let pid = std::process::id();
    if let Err(e) = crate::process::write_pid(a.home, pid) {
        a.engine.shutdown(Duration::ZERO).await;
        return Err(e.into());
    }
    if let Ok(mut s) = a.status.write() {
        s.state = crate::master::ServerState::Running;
    }
    match a.mode {
        Mode::Independent => a.log.info(
            "SERVER-0249",
            "Successfully started the server INDEPENDENTLY.",
        ),
        Mode::Dependent => a.log.info(
            "SERVER-0250",
            "Successfully started the server DEPENDENT on the Master.",
        ),
    }
    a.log.info("SERVER-0248", "The server is RUNNING.");
    a.log.info(
        "SERVER-0401",
        &format!(
            "The elapsed time to start: {}ms.",
            a.started.elapsed().as_millis()
        ),
    );
    if let Err(e) = crate::notify::notify(&format!(
        "READY=1\nSTATUS=RUNNING ({})\nMAINPID={pid}",
        a.mode.as_str()
    )) {
        a.log
            .warn("SERVER-0011", &format!("Cannot signal readiness: {e}"));
    }

    let stop_control = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let control = a.control.map(|c| {
        let stop = stop_control.clone();
        std::thread::spawn(move || c.run(stop))
    });

    let (tx, rx) = tokio::sync::oneshot::channel::<&'static str>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = rx.await;
    });
    let mut server = std::pin::pin!(server.into_future());
    let signal_name = tokio::select! {
        r = &mut server => {
            // The listener failed on its own: nothing to drain.
            a.engine.shutdown(Duration::ZERO).await;
            crate::process::remove_pid(a.home, pid);
            return r.map_err(ServerError::Runtime);
        }
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    if let Ok(mut s) = a.status.write() {
        s.state = crate::master::ServerState::Stopping;
    }
    let _ = crate::notify::notify("STOPPING=1");
    let stop_timeout =
        Duration::from_millis(a.stop_timeout.load(std::sync::atomic::Ordering::SeqCst));
    a.log.info(
        "SERVER-0300",
        &format!(
            "Received {signal_name}; stopping gracefully (in-flight requests get up to {} ms).",
            stop_timeout.as_millis()
        ),
    );
    let _ = tx.send(signal_name);
    // No timer fires into applications that are stopping; the consumers of message-driven
    // components end their subscriptions while the messaging store still takes the changes.
    a.management.component.shutdown();
    a.management.messaging.shutdown();
    stop_control.store(true, std::sync::atomic::Ordering::SeqCst);
    // The web engine drains its requests (up to stop-timeout) and then stops the process
    // applications, while the management API drains its own.
    let (_, management) = tokio::join!(
        a.engine.shutdown(stop_timeout),
        tokio::time::timeout(stop_timeout, &mut server)
    );
    match management {
        Ok(_) => a.log.info("SERVER-0301", "The server stopped."),
        Err(_) => a.log.warn(
            "SERVER-0302",
            "In-flight requests did not finish within stop-timeout; stopping anyway.",
        ),
    }
    if let Some(c) = control
        && let Ok(Ok(c)) = tokio::task::spawn_blocking(move || c.join()).await
    {
        let _ = tokio::task::spawn_blocking(move || c.farewell()).await;
    }
    crate::process::remove_pid(a.home, pid);
    Ok(())
}

/// The stop-timeout the server at `argv` runs with now. `stop-timeout` is live, so this asks the
/// server for its applied commit (`GET /v1/status` on its base address, which is restart-class
/// and so still the boot commit's, as the servers' account: [`local_credentials`]); if it cannot
/// answer, the boot commit (`--commit`) decides.
pub fn stop_timeout_of(home: &ServerHome, argv: &[String]) -> Option<Duration> {
    let boot = Oid::from_hex(crate::process::arg_value(argv, "--commit")?).ok()?;
    let cache = Cache::open_shared(&home.domain_home).ok()?;
    let server_of = |commit: Oid| -> Option<schema::model::Server> {
        let tree = cache.tree(commit).ok()?;
        let loaded = schema::validate(&tree).loaded?;
        loaded.domain.config.servers.get(&home.name).cloned()
    };
    let at_boot = server_of(boot)?;
    let credentials = local_credentials(&home.domain_home);
    let applied = crate::client::Client::new(
        &at_boot.listen.to_string(),
        credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
        Duration::from_millis(500),
        // The first request of these credentials pays an Argon2 check: milliseconds in a
        // release build, seconds in a debug build on a busy machine.
        Duration::from_secs(10),
    )
    .and_then(|c| c.get("/v1/status"))
    .ok()
    .filter(|r| r.status == 200)
    .and_then(|r| serde_json::from_slice::<Status>(&r.body).ok())
    .and_then(|s| s.applied_commit)
    .and_then(|c| Oid::from_hex(&c).ok())
    .filter(|c| *c != boot)
    .and_then(server_of);
    Some(applied.unwrap_or(at_boot).stop_timeout.0)
}

/// The credentials this machine's launchers use (STEWARD_USER and STEWARD_PASSWORD, else the
/// domain home's `config/server-credentials`), to read a local server's `GET /v1/status`: the
/// servers' account holds `servers:register`, which that route accepts.
pub fn local_credentials(domain_home: &std::path::Path) -> Option<(String, String)> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (env("STEWARD_USER"), env("STEWARD_PASSWORD")) {
        (Some(u), Some(p)) => Some((u, p)),
        _ => crate::launcher::credentials::read(domain_home)
            .ok()
            .flatten(),
    }
}
