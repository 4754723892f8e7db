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
//! The parts: `config` is what the engine is given, `listen` the bound listeners and their
//! capacity, `route` the snapshot every request reads, `apply` the one transaction that
//! replaces it; requests are served in `serve`, static files in [`files`], process applications
//! supervised in [`supervisor`] and proxied by `relay` (the common case, without hyper) or
//! [`proxy`] (through hyper), over the connections of [`pool`].

pub mod access;
mod apply;
pub mod body;
mod chunked;
mod config;
pub mod files;
mod listen;
pub mod pool;
pub mod proxy;
mod relay;
mod route;
mod serve;
mod stats;
pub mod supervisor;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use schema::model::AccessLog as AccessLogSettings;
use tokio::sync::{Notify, watch};

use crate::logfile::Rotation;

use apply::Applied;
pub use body::Body;
pub use config::{AppSpec, ApplyReport, ComponentEnv, EngineContext, WebConfig};
use listen::ListenerRt;
use route::{Handler, Limits, Route, Snapshot};
use serve::{plain, unavailable};
pub use supervisor::ProcState;

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
    stats: stats::Stats,
    /// The bound listeners until the first snapshot with routes is published: their accept
    /// loops start then ([`WebEngine::swap`]), so no request is answered from the empty
    /// snapshot (a 404 for an application about to be routed). Connections that arrive before
    /// wait in the kernel's backlog.
    unaccepted: std::sync::Mutex<Vec<tokio::net::TcpListener>>,
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
        let (listeners, bound) = listen::bind(&config).await?;
        let empty = Snapshot {
            routes: Vec::new(),
            procs: BTreeMap::new(),
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
            stats: stats::Stats::default(),
            unaccepted: std::sync::Mutex::new(bound),
        });
        let engine = WebEngine { inner };
        // Accepting starts with the first routes (static applications are served while process
        // applications start: see `apply`).
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

    /// The pid of a process or component application's running child.
    pub fn app_pid(&self, app: &str) -> Option<u32> {
        self.snapshot().procs.get(app)?.supervisor.pid()
    }

    /// The local port of a process or component application, while it is healthy.
    pub fn app_port(&self, app: &str) -> Option<u16> {
        self.snapshot().procs.get(app)?.supervisor.port()
    }

    /// Where a process or component application's supervisor is.
    pub fn app_state(&self, app: &str) -> Option<ProcState> {
        Some(self.snapshot().procs.get(app)?.supervisor.state())
    }

    /// Whether an application is healthy: a process or component one answers its health path
    /// (and receives traffic, if routed); a static one is routed.
    pub fn app_ready(&self, app: &str) -> bool {
        let snap = self.snapshot();
        match snap.procs.get(app) {
            Some(p) => p.supervisor.port().is_some(),
            None => snap
                .routes
                .iter()
                .any(|r| r.app == app && matches!(r.handler, Handler::Static(_))),
        }
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

    /// Writes the engine's metrics (requests per application, the listeners' pools) for a scrape.
    pub fn render_metrics(&self, t: &mut crate::metrics::Text) {
        let readings: Vec<stats::ListenerReading<'_>> = self
            .inner
            .listeners
            .iter()
            .map(|l| {
                let capacity = l.pool.capacity();
                stats::ListenerReading {
                    name: &l.name,
                    capacity,
                    in_use: capacity.saturating_sub(l.pool.sem.available_permits()),
                    rejected: l.pool.rejected.load(Ordering::Relaxed),
                }
            })
            .collect();
        stats::render(t, &self.inner.stats, &readings);
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        read_snapshot(&self.inner)
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
                procs: BTreeMap::new(),
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
