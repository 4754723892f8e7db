//! The web engine: HTTP/1.1 on the server's listeners, routing each request by the longest
//! matching context path to a deployed application (`static` files, or a supervised `process`
//! reverse-proxied).
//!
//! Live configuration: everything a request reads (routes, timeouts, access-log settings) is one
//! immutable [`Snapshot`] behind a lock, taken once at the start of each request, so a request
//! finishes on the configuration it started with and [`WebEngine::apply`] swaps the whole of it
//! at once. Capacity (`thread-pool.max`) is a semaphore per listener resized in place. Listener
//! addresses and ports are bound once: `apply` refuses to change them and names the settings, the
//! caller reports them as pending restart. See `docs/web-engine.md`.
//!
//! This file is the engine's state and [`WebEngine::apply`], kept together because `apply` is one
//! transaction over all of it (about 700 lines); requests are served in `serve`, process
//! applications proxied in `proxy` over the connections of `pool`.

pub mod access;
pub mod body;
pub mod files;
pub mod pool;
pub mod proxy;
mod serve;
pub mod supervisor;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
use schema::model::{AccessLog as AccessLogSettings, AppKind, Application, Listener, Server};
use tokio::sync::{Notify, Semaphore, watch};

use crate::deploy::Deployment;
use crate::logfile::{Logger, Rotation};

pub use body::Body;
use files::StaticApp;
use proxy::ProcessApp;
use serve::{accept_loop, plain, unavailable};
use supervisor::{ProcLive, ProcSpec, ProcState, Supervisor};

/// Errors of the web engine.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("listener {name}: cannot bind {addr}: {error}")]
    Bind {
        name: String,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("these settings take effect only after a restart: {}", paths.join(", "))]
    RestartRequired { paths: Vec<String> },
    #[error("applications {first} and {second} both use context path {path:?}")]
    DuplicateContext {
        path: String,
        first: String,
        second: String,
    },
    #[error("application {app}: {message}")]
    App { app: String, message: String },
    #[error("the web engine is shut down")]
    ShutDown,
}

/// The web engine's part of a server's configuration, with the applications deployed to it.
#[derive(Debug, Clone, PartialEq)]
pub struct WebConfig {
    /// The server's name: setting paths in errors are `servers.<server>.web…`.
    pub server: String,
    pub listeners: BTreeMap<String, Listener>,
    pub access_log: AccessLogSettings,
    pub apps: BTreeMap<String, AppSpec>,
}

impl WebConfig {
    /// The web configuration of `server` (named `name`) with `apps` deployed.
    pub fn new(name: &str, server: &Server, apps: BTreeMap<String, AppSpec>) -> WebConfig {
        WebConfig {
            server: name.to_owned(),
            listeners: server.web.listeners.clone(),
            access_log: server.web.access_log.clone(),
            apps,
        }
    }
}

/// One deployed application: its settings and where its deployment put it.
#[derive(Debug, Clone, PartialEq)]
pub struct AppSpec {
    pub app: Application,
    pub deployment: Deployment,
}

/// What the engine needs from the server process.
#[derive(Debug, Clone)]
pub struct EngineContext {
    /// `SERVER_HOME/logs`: the access log and the applications' output logs.
    pub logs_dir: PathBuf,
    pub rotation: Rotation,
    /// The server log, for application lifecycle lines (`WEB-02xx`).
    pub logger: Option<Logger>,
}

/// What [`WebEngine::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Process applications started (new or redeployed) and healthy.
    pub started: Vec<String>,
    /// Applications no longer served.
    pub removed: Vec<String>,
    /// Applications that could not be (re)started: `(app, why)`. A redeployed application that
    /// failed keeps its previous process serving; a new one is routed and answers 503 while its
    /// supervisor keeps retrying.
    pub failed: Vec<(String, String)>,
}

/// Per listener: what its requests read from the snapshot.
#[derive(Debug, Clone)]
struct Limits {
    queue_timeout: Duration,
    request_timeout: Duration,
}

#[derive(Debug)]
enum Handler {
    Static(Arc<StaticApp>),
    Process(Arc<ProcessApp>),
}

#[derive(Debug)]
struct Route {
    context: String,
    /// `context` as an `X-Forwarded-Prefix` value, built once.
    prefix: HeaderValue,
    app: String,
    handler: Handler,
}

/// Everything a request reads, swapped whole by `apply`.
#[derive(Debug)]
struct Snapshot {
    /// Longest context path first.
    routes: Vec<Route>,
    limits: Vec<Limits>,
    access_log: AccessLogSettings,
}

/// A listener's capacity: a semaphore whose size follows `thread-pool.max`.
#[derive(Debug)]
struct Pool {
    sem: Arc<Semaphore>,
    capacity: Mutex<usize>,
}

impl Pool {
    fn new(n: usize) -> Pool {
        Pool {
            sem: Arc::new(Semaphore::new(n)),
            capacity: Mutex::new(n),
        }
    }

    /// Grows at once; shrinks by taking permits out of circulation as requests return them, so
    /// requests already running are never cut short.
    fn resize(&self, n: usize) {
        let Ok(mut cap) = self.capacity.lock() else {
            return;
        };
        if n > *cap {
            self.sem.add_permits(n - *cap);
        } else if n < *cap {
            let sem = Arc::clone(&self.sem);
            let take = *cap - n;
            tokio::spawn(async move {
                for _ in 0..take {
                    match sem.acquire().await {
                        Ok(p) => p.forget(),
                        Err(_) => return,
                    }
                }
            });
        }
        *cap = n;
    }
}

#[derive(Debug)]
struct ListenerRt {
    name: String,
    configured: Listener,
    local: SocketAddr,
    pool: Pool,
}

/// A process application being started by `apply`: name, the new one, the one it replaces, and
/// how long it may take.
type Starting = (String, Arc<ProcessApp>, Option<Arc<ProcessApp>>, Duration);

/// A served static application: its deployment and index file (what it was built from), and it.
type StaticEntry = (Deployment, String, Arc<StaticApp>);

/// State only `apply` touches (serialized by its lock).
#[derive(Debug)]
struct Applied {
    config: WebConfig,
    statics: BTreeMap<String, StaticEntry>,
    procs: BTreeMap<String, Arc<ProcessApp>>,
}

#[derive(Debug)]
struct Inner {
    snapshot: RwLock<Arc<Snapshot>>,
    listeners: Vec<ListenerRt>,
    access: access::AccessLog,
    ctx: EngineContext,
    applied: tokio::sync::Mutex<Option<Applied>>,
    shutdown: watch::Sender<bool>,
    connections: AtomicUsize,
    idle: Notify,
}

/// The running web engine. Cheap to clone; every clone is the same engine.
#[derive(Debug, Clone)]
pub struct WebEngine {
    inner: Arc<Inner>,
}

/// `1.5s`, `200ms`: durations in messages.
pub fn fmt_duration(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl WebEngine {
    /// Binds every listener, starts the applications of `config` (waiting for process
    /// applications to be healthy, each within its `start-timeout`), and serves. Failed
    /// applications are in the report; a listener that cannot be bound fails the start.
    pub async fn start(
        config: WebConfig,
        ctx: EngineContext,
    ) -> Result<(WebEngine, ApplyReport), WebError> {
        let mut bound = Vec::new();
        let mut listeners = Vec::new();
        for (name, l) in &config.listeners {
            let addr = SocketAddr::new(l.address, l.port);
            let tcp =
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|error| WebError::Bind {
                        name: name.clone(),
                        addr,
                        error,
                    })?;
            let local = tcp.local_addr().map_err(|error| WebError::Bind {
                name: name.clone(),
                addr,
                error,
            })?;
            listeners.push(ListenerRt {
                name: name.clone(),
                configured: l.clone(),
                local,
                pool: Pool::new(l.thread_pool.max.max(1) as usize),
            });
            bound.push(tcp);
        }
        let empty = Snapshot {
            routes: Vec::new(),
            limits: listeners
                .iter()
                .map(|l| Limits {
                    queue_timeout: l.configured.queue_timeout.0,
                    request_timeout: l.configured.request_timeout.0,
                })
                .collect(),
            access_log: config.access_log.clone(),
        };
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            snapshot: RwLock::new(Arc::new(empty)),
            listeners,
            access: access::AccessLog::new(ctx.logs_dir.clone(), ctx.rotation),
            ctx,
            applied: tokio::sync::Mutex::new(None),
            shutdown,
            connections: AtomicUsize::new(0),
            idle: Notify::new(),
        });
        let engine = WebEngine { inner };
        // Accept at once: static applications are served while process applications start.
        for (index, tcp) in bound.into_iter().enumerate() {
            tokio::spawn(accept_loop(Arc::clone(&engine.inner), index, tcp));
        }
        match engine.apply(config).await {
            Ok(report) => Ok((engine, report)),
            Err(e) => {
                let _ = engine.inner.shutdown.send(true);
                Err(e)
            }
        }
    }

    /// The bound address of each listener, by name (useful with port 0).
    pub fn local_addrs(&self) -> BTreeMap<String, SocketAddr> {
        self.inner
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.local))
            .collect()
    }

    /// The pid of a process application's running child.
    pub fn app_pid(&self, app: &str) -> Option<u32> {
        let snap = self.snapshot();
        snap.routes
            .iter()
            .find(|r| r.app == app)
            .and_then(|r| match &r.handler {
                Handler::Process(p) => p.supervisor.pid(),
                Handler::Static(_) => None,
            })
    }

    /// Whether a process application is healthy and receiving traffic (static: always true
    /// once routed).
    pub fn app_ready(&self, app: &str) -> bool {
        let snap = self.snapshot();
        snap.routes.iter().any(|r| {
            r.app == app
                && match &r.handler {
                    Handler::Process(p) => p.supervisor.port().is_some(),
                    Handler::Static(_) => true,
                }
        })
    }

    /// The configuration last applied.
    pub async fn config(&self) -> Option<WebConfig> {
        self.inner
            .applied
            .lock()
            .await
            .as_ref()
            .map(|a| a.config.clone())
    }

    /// Applies a new log rotation to the access log (live). Application output logs take it at
    /// their next start.
    pub fn set_rotation(&self, rotation: Rotation) {
        self.inner.access.set_rotation(rotation);
    }

    /// Waits for the access log writer to catch up (tests, shutdown).
    pub fn flush_access_log(&self) {
        self.inner.access.flush();
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        read_snapshot(&self.inner)
    }

    /// Applies a new configuration live. Refuses (changing nothing) when a restart-only setting
    /// differs: a listener added, removed, or with another address or port. Otherwise: pool
    /// sizes, timeouts, access log, context paths, index files and health settings change in
    /// place; applications whose deployment or process settings changed are started anew, and
    /// switched to only once healthy; removed ones stop after the switch.
    pub async fn apply(&self, config: WebConfig) -> Result<ApplyReport, WebError> {
        if *self.inner.shutdown.borrow() {
            return Err(WebError::ShutDown);
        }
        let restart = self.restart_paths(&config);
        if !restart.is_empty() {
            return Err(WebError::RestartRequired { paths: restart });
        }
        let mut contexts: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, spec) in &config.apps {
            let ctx = normalize_context(&spec.app.context_path);
            if let Some(first) = contexts.insert(ctx, name) {
                return Err(WebError::DuplicateContext {
                    path: ctx.to_owned(),
                    first: first.to_owned(),
                    second: name.clone(),
                });
            }
        }
        let mut guard = self.inner.applied.lock().await;
        let old = guard.take();
        let (mut old_statics, mut old_procs) = match old {
            Some(a) => (a.statics, a.procs),
            None => (BTreeMap::new(), BTreeMap::new()),
        };
        let mut report = ApplyReport::default();
        let mut statics = BTreeMap::new();
        let mut procs: BTreeMap<String, Arc<ProcessApp>> = BTreeMap::new();
        let mut to_stop: Vec<Arc<ProcessApp>> = Vec::new();
        let mut starting: Vec<Starting> = Vec::new();
        for (name, spec) in &config.apps {
            match spec.app.kind {
                AppKind::Static => {
                    let reuse = old_statics.remove(name).filter(|(d, index, _)| {
                        supervisor::same_content(d, &spec.deployment) && *index == spec.app.index
                    });
                    let app = match reuse {
                        Some((_, _, app)) => app,
                        None => match StaticApp::new(&spec.deployment.image, &spec.app.index) {
                            Ok(app) => Arc::new(app),
                            Err(e) => {
                                report.failed.push((
                                    name.clone(),
                                    format!(
                                        "deploy image {}: {e}",
                                        spec.deployment.image.display()
                                    ),
                                ));
                                continue;
                            }
                        },
                    };
                    statics.insert(
                        name.clone(),
                        (spec.deployment.clone(), spec.app.index.clone(), app),
                    );
                }
                AppKind::Process => {
                    let Some(command) = spec.app.command.clone() else {
                        report
                            .failed
                            .push((name.clone(), "`command` is required".to_owned()));
                        continue;
                    };
                    let want = ProcSpec {
                        app: name.clone(),
                        command,
                        args: spec.app.args.clone(),
                        env: spec.app.env.clone(),
                        deployment: spec.deployment.clone(),
                    };
                    let live = ProcLive {
                        health_path: spec.app.health_path.clone(),
                        start_timeout: spec.app.start_timeout.0,
                    };
                    let previous = old_procs.remove(name);
                    match previous {
                        Some(p) if p.supervisor.spec == want => {
                            p.supervisor.set_live(live);
                            procs.insert(name.clone(), p);
                        }
                        previous => {
                            let timeout = live.start_timeout;
                            let sup = Supervisor::start(
                                want,
                                live,
                                self.inner.ctx.logs_dir.clone(),
                                self.inner.ctx.rotation,
                                self.inner.ctx.logger.clone(),
                            );
                            let app =
                                Arc::new(ProcessApp::new(name, sup, self.inner.ctx.logger.clone()));
                            starting.push((name.clone(), app, previous, timeout));
                        }
                    }
                }
            }
        }
        // While new processes start, everything else is already served: new applications are
        // routed (503 until healthy), redeployed ones keep their previous process.
        if !starting.is_empty() {
            let mut interim = procs.clone();
            for (name, app, previous, _) in &starting {
                let serving = previous.as_ref().unwrap_or(app);
                interim.insert(name.clone(), Arc::clone(serving));
            }
            self.swap(&config, &statics, &interim);
        }
        // They start concurrently; each is switched to once healthy.
        for (name, app, previous, timeout) in starting {
            match app.supervisor.wait_ready(timeout).await {
                Ok(_) => {
                    report.started.push(name.clone());
                    procs.insert(name, app);
                    if let Some(p) = previous {
                        to_stop.push(p);
                    }
                }
                Err(why) => {
                    report.failed.push((name.clone(), why.to_string()));
                    match previous {
                        Some(p) => {
                            to_stop.push(app);
                            procs.insert(name, p);
                        }
                        None => {
                            procs.insert(name, app);
                        }
                    }
                }
            }
        }
        for (name, p) in old_procs {
            report.removed.push(name);
            to_stop.push(p);
        }
        for name in old_statics.keys() {
            report.removed.push(name.clone());
        }
        self.swap(&config, &statics, &procs);
        *guard = Some(Applied {
            config,
            statics,
            procs,
        });
        drop(guard);
        // Requests that started on the old snapshot may still be proxying to the replaced
        // processes: stop them only once nothing else holds them (or after a grace period).
        for p in to_stop {
            tokio::spawn(retire(p));
        }
        Ok(report)
    }

    /// Builds the snapshot for `config` with these application objects, resizes the pools, and
    /// makes it the one new requests read.
    fn swap(
        &self,
        config: &WebConfig,
        statics: &BTreeMap<String, StaticEntry>,
        procs: &BTreeMap<String, Arc<ProcessApp>>,
    ) {
        let mut routes = Vec::new();
        for (name, spec) in &config.apps {
            let handler = if let Some((_, _, s)) = statics.get(name) {
                Handler::Static(Arc::clone(s))
            } else if let Some(p) = procs.get(name) {
                Handler::Process(Arc::clone(p))
            } else {
                continue;
            };
            let context = normalize_context(&spec.app.context_path);
            routes.push(Route {
                context: context.to_owned(),
                prefix: HeaderValue::try_from(context).unwrap_or(HeaderValue::from_static("/")),
                app: name.clone(),
                handler,
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.context.len()));
        let limits = self
            .inner
            .listeners
            .iter()
            .map(|l| {
                let c = config.listeners.get(&l.name).unwrap_or(&l.configured);
                Limits {
                    queue_timeout: c.queue_timeout.0,
                    request_timeout: c.request_timeout.0,
                }
            })
            .collect();
        for l in &self.inner.listeners {
            if let Some(c) = config.listeners.get(&l.name) {
                l.pool.resize(c.thread_pool.max.max(1) as usize);
            }
        }
        let snapshot = Arc::new(Snapshot {
            routes,
            limits,
            access_log: config.access_log.clone(),
        });
        // A panic elsewhere while holding the lock must not stop configuration changes.
        *self
            .inner
            .snapshot
            .write()
            .unwrap_or_else(|p| p.into_inner()) = snapshot;
    }

    /// Paths of restart-only settings that differ between the bound listeners and `config`.
    fn restart_paths(&self, config: &WebConfig) -> Vec<String> {
        let base = format!("servers.{}.web.listeners", config.server);
        let mut out = Vec::new();
        for l in &self.inner.listeners {
            match config.listeners.get(&l.name) {
                None => out.push(format!("{base}.{}", l.name)),
                Some(c) => {
                    if c.address != l.configured.address {
                        out.push(format!("{base}.{}.address", l.name));
                    }
                    if c.port != l.configured.port {
                        out.push(format!("{base}.{}.port", l.name));
                    }
                }
            }
        }
        for name in config.listeners.keys() {
            if !self.inner.listeners.iter().any(|l| &l.name == name) {
                out.push(format!("{base}.{name}"));
            }
        }
        out
    }

    /// Graceful shutdown: stops accepting, lets requests in flight finish (idle keep-alive
    /// connections are closed), waits up to `deadline` for connections to end, then stops every
    /// process application.
    pub async fn shutdown(&self, deadline: Duration) {
        let _ = self.inner.shutdown.send(true);
        let until = Instant::now() + deadline;
        loop {
            let notified = self.inner.idle.notified();
            if self.inner.connections.load(Ordering::SeqCst) == 0 {
                break;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                break;
            }
        }
        let applied = self.inner.applied.lock().await.take();
        if let Some(a) = applied {
            for p in a.procs.into_values() {
                p.supervisor.stop().await;
            }
        }
        {
            let mut s = self
                .inner
                .snapshot
                .write()
                .unwrap_or_else(|p| p.into_inner());
            *s = Arc::new(Snapshot {
                routes: Vec::new(),
                limits: Vec::new(),
                access_log: AccessLogSettings {
                    enabled: false,
                    ..AccessLogSettings::default()
                },
            });
        }
        self.inner.access.flush();
    }
}

/// Stops a replaced process once no request holds it any more (at most 60 s later).
async fn retire(p: Arc<ProcessApp>) {
    let until = Instant::now() + Duration::from_secs(60);
    while Arc::strong_count(&p) > 1 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.supervisor.stop().await;
}

/// `/shop/` → `/shop`; `""` → `/`.
fn normalize_context(p: &str) -> &str {
    let t = p.trim_end_matches('/');
    if t.is_empty() { "/" } else { t }
}

fn read_snapshot(inner: &Inner) -> Arc<Snapshot> {
    match inner.snapshot.read() {
        Ok(s) => Arc::clone(&s),
        Err(poisoned) => Arc::clone(&poisoned.into_inner()),
    }
}

impl ProcState {
    pub fn is_ready(&self) -> bool {
        matches!(self, ProcState::Ready(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serve::under;

    #[test]
    fn context_paths_match_by_segment() {
        assert!(under("/shop", "/shop"));
        assert!(under("/shop/x", "/shop"));
        assert!(!under("/shopping", "/shop"));
        assert!(under("/anything", "/"));
        assert_eq!(normalize_context("/shop/"), "/shop");
        assert_eq!(normalize_context(""), "/");
    }

    #[tokio::test]
    async fn pools_resize_in_place() {
        let pool = Pool::new(4);
        let held = Arc::clone(&pool.sem)
            .acquire_many_owned(3)
            .await
            .expect("permits");
        pool.resize(2);
        // The shrink takes the one free permit now and one more when `held` is returned.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.sem.available_permits(), 0);
        drop(held);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.sem.available_permits(), 2);
        pool.resize(5);
        assert_eq!(pool.sem.available_permits(), 5);
    }
}
