//! The component engine (the EJB engine's counterpart; docs/components.md). Started at every
//! boot with defaults, beside the web and messaging engines.
//!
//! `component` applications are supervised processes: the web engine's apply transaction
//! deploys, starts, health-checks, redeploys and stops them with the same supervisor as `process`
//! applications (routed only when they have a `context-path`); this engine gives them their
//! timer service environment and runs their timers.
//!
//! The timer service: declared timers (`[applications.X.timers.NAME]`) and timers the
//! application creates through the local API ([`api`], `STEWARD_TIMER_URL`). A firing is an HTTP
//! POST to the component's port at `/timers/NAME`; at most `thread-pool.max` run at once; a
//! failed one is retried `max-retries` times `retry-delay` apart, then recorded failed.
//! Persistent timers live in `.workspace/ejbtimerdb` ([`store`]); on start, firings missed while
//! the server was down are handled by each timer's misfire policy
//! ([`reconciler::timer::catch_up`]). Timers of an undeployed application are removed; those of
//! an application that seems renamed (gone, while another with its `source` runs) are kept,
//! not fired, and reported as orphaned.
//!
//! Long because the timer table, its scheduler and its live configuration move one state; the
//! store and the local API are in their own files.

pub mod api;
mod conns;
pub mod consume;
pub mod operator;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use jiff::Timestamp;
use reconciler::timer::{AfterFailure, after_failure, catch_up};
use schema::model::{AppKind, Application, Component};
use schema::timer::Schedule;
use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::engine::web::{ComponentEnv, WebEngine};
use crate::logfile::Logger;
use store::{Outcome, Record, Spec, Store, Unfinished};

/// How long a timer callback may take before it counts as failed.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Firings due within this many milliseconds are taken ahead of time: their progress is stored
/// in one commit, and each callback is sent at its instant. The commit (an fsync, milliseconds)
/// is then no part of a firing's lateness (benches/timers_load.py).
const LOOKAHEAD_MS: i64 = 50;

#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("timer service: cannot bind 127.0.0.1: {0}")]
    Bind(std::io::Error),
    #[error("timer service: cannot read random bytes for its tokens: {0}")]
    Random(std::io::Error),
    #[error("timer service: opening the store failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Why the local API refused a timer.
#[derive(Debug, thiserror::Error)]
pub enum TimerError {
    #[error("{0}")]
    Invalid(String),
    #[error("application {app} already has a timer with id {id:?}")]
    Exists { app: String, id: String },
    #[error("application {app} has no timer with id {id:?}")]
    NotFound { app: String, id: String },
    #[error("timer {id:?} is declared in the domain; remove it from domain.toml instead")]
    Declared { id: String },
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// The component applications a server runs, by name.
pub type Apps = BTreeMap<String, Application>;

/// The component applications among `apps`.
pub fn components(apps: &BTreeMap<String, Application>) -> Apps {
    apps.iter()
        .filter(|(_, a)| a.kind == AppKind::Component)
        .map(|(n, a)| (n.clone(), a.clone()))
        .collect()
}

/// One timer in memory.
#[derive(Debug)]
struct Entry {
    record: Record,
    schedule: Schedule,
    /// Bumped when the timer is replaced: queued jobs of an older generation are dropped.
    generation: u64,
    /// Set when the application is gone but seems renamed: the new name, if known.
    orphaned: Option<Option<String>>,
    /// Retries queued or callbacks in flight.
    pending: u32,
}

/// A queued firing.
#[derive(Debug, Clone)]
struct Job {
    key: String,
    generation: u64,
    /// The instant the firing is for.
    scheduled: Timestamp,
    /// 0 the first call, n the n-th retry.
    attempt: u32,
    /// A regular firing moves the timer to its next instant; catch-up firings and retries do
    /// not.
    regular: bool,
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<String, Entry>,
    /// Due time (ms), then a sequence number → the job.
    queue: BTreeMap<(i64, u64), Job>,
    seq: u64,
    generation: u64,
    /// Persistent records changed since the last write, and keys removed.
    dirty: BTreeSet<String>,
    removed: BTreeSet<String>,
    /// The component applications deployed here, as last applied.
    apps: Apps,
    settings: Component,
}

impl State {
    fn push(&mut self, at: Timestamp, job: Job) {
        self.seq += 1;
        self.queue.insert((at.as_millisecond(), self.seq), job);
    }

    fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    fn mark(&mut self, key: &str) {
        if self.entries.get(key).is_some_and(|e| e.record.persistent) {
            self.dirty.insert(key.to_owned());
        }
    }

    /// Adds (or replaces) a timer and queues its next regular firing.
    fn insert(&mut self, record: Record, schedule: Schedule) {
        let key = record.key();
        let generation = self.next_generation();
        if let Some(next) = record
            .next_ms
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        {
            self.push(
                next,
                Job {
                    key: key.clone(),
                    generation,
                    scheduled: next,
                    attempt: 0,
                    regular: true,
                },
            );
        }
        let persistent = record.persistent;
        self.entries.insert(
            key.clone(),
            Entry {
                record,
                schedule,
                generation,
                orphaned: None,
                pending: 0,
            },
        );
        self.removed.remove(&key);
        if persistent {
            self.dirty.insert(key);
        }
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let e = self.entries.remove(key)?;
        self.dirty.remove(key);
        if e.record.persistent {
            self.removed.insert(key.to_owned());
        }
        Some(e)
    }
}

struct Inner {
    state: Mutex<State>,
    store: Store,
    wake: Notify,
    /// Callbacks in flight, bounded by `thread-pool.max`.
    in_flight: AtomicUsize,
    slot_freed: Notify,
    secret: [u8; 32],
    api: SocketAddr,
    web: OnceLock<WebEngine>,
    log: Option<Logger>,
    shutdown: watch::Sender<bool>,
    started: AtomicBool,
    /// Message-driven components' consumers ([`consume`]).
    consumers: consume::Consumers,
    /// Kept-alive connections to the components, for callbacks and deliveries.
    conns: conns::Conns,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn info(&self, id: &str, msg: &str) {
        if let Some(l) = &self.log {
            l.info(id, msg);
        }
    }

    fn warn(&self, id: &str, msg: &str) {
        if let Some(l) = &self.log {
            l.warn(id, msg);
        }
    }

    /// Writes what changed to the store, in one transaction. A failed write is logged and kept
    /// dirty, to be tried again at the next change.
    fn flush(&self) -> Result<(), store::StoreError> {
        let (puts, removes) = {
            let mut st = self.state();
            let dirty = std::mem::take(&mut st.dirty);
            let removed = std::mem::take(&mut st.removed);
            let puts: Vec<Record> = dirty
                .iter()
                .filter_map(|k| st.entries.get(k))
                .map(|e| e.record.clone())
                .collect();
            (puts, removed)
        };
        if puts.is_empty() && removes.is_empty() {
            return Ok(());
        }
        let result = self
            .store
            .write(puts.iter(), removes.iter().map(String::as_str));
        if let Err(e) = &result {
            self.warn("COMP-0020", &format!("Cannot write the timer store: {e}"));
            let mut st = self.state();
            for r in &puts {
                st.dirty.insert(r.key());
            }
            st.removed.extend(removes);
        }
        result
    }

    /// The application's token: `<app>.<hex HMAC-SHA256 of the app under this boot's secret>`.
    fn token(&self, app: &str) -> String {
        let mut out = format!("{app}.");
        if let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.secret) {
            mac.update(app.as_bytes());
            for b in mac.finalize().into_bytes() {
                out.push_str(&format!("{b:02x}"));
            }
        }
        out
    }

    /// The application a bearer token belongs to (compared in constant time).
    fn token_app<'t>(&self, token: &'t str) -> Option<&'t str> {
        let (app, hex) = token.rsplit_once('.')?;
        let expected = crate::master::mirror::decode_hex(hex)?;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.secret).ok()?;
        mac.update(app.as_bytes());
        mac.verify_slice(&expected).ok()?;
        Some(app)
    }
}

/// The running engine. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct ComponentEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ComponentEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentEngine")
            .field("api", &self.inner.api)
            .finish()
    }
}

/// `GET /v1/components`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub timer_service: ServiceReport,
    pub components: Vec<ComponentReport>,
    /// Timers whose application is gone but seems renamed: kept, not fired.
    pub orphaned: Vec<TimerReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    pub enabled: bool,
    pub max_retries: u32,
    pub retry_delay_ms: u64,
    pub thread_pool_max: u32,
    pub in_flight: usize,
    /// The local API's address (what components get as `STEWARD_TIMER_URL`).
    pub url: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentReport {
    pub name: String,
    /// `starting`, `ready`, `failed`, `stopped`, or `not-deployed` (its deployment failed).
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_path: Option<String>,
    /// Its consumers, one per `consumes` entry (message-driven components).
    pub consumers: Vec<consume::ConsumerReport>,
    pub timers: Vec<TimerReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimerReport {
    pub app: String,
    pub id: String,
    pub name: String,
    pub declared: bool,
    pub persistent: bool,
    pub misfire: &'static str,
    pub schedule: Spec,
    pub info: serde_json::Value,
    /// The next regular firing (RFC 3339); absent when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    pub fired: u64,
    pub failed: u64,
    /// Retries queued or callbacks in flight.
    pub pending: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<Outcome>,
    /// Orphaned timers: the application that seems to be the renamed one, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renamed_to: Option<String>,
}

fn report_of(e: &Entry) -> TimerReport {
    TimerReport {
        app: e.record.app.clone(),
        id: e.record.id.clone(),
        name: e.record.name.clone(),
        declared: e.record.declared,
        persistent: e.record.persistent,
        misfire: e.record.misfire.as_str(),
        schedule: e.record.spec.clone(),
        info: e.record.info.clone(),
        next: e
            .record
            .next_ms
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .map(|t| t.to_string()),
        fired: e.record.fired,
        failed: e.record.failed,
        pending: e.pending,
        last: e.record.last.clone(),
        renamed_to: e.orphaned.clone().flatten(),
    }
}

/// The schedule a spec describes, anchored at `anchor_ms`.
pub fn schedule_of(spec: &Spec, anchor_ms: i64) -> Result<Schedule, String> {
    let anchor = Timestamp::from_millisecond(anchor_ms).map_err(|e| e.to_string())?;
    Ok(match spec {
        Spec::Schedule {
            schedule,
            time_zone,
        } => Schedule::Cron {
            cron: schema::timer::Cron::parse(schedule).map_err(String::from)?,
            tz: schema::timer::time_zone(time_zone).map_err(String::from)?,
        },
        Spec::Interval { every_ms } => Schedule::Every {
            anchor,
            every: Duration::from_millis(*every_ms),
        },
        Spec::At { at } => Schedule::At(schema::timer::instant(at).map_err(String::from)?),
    })
}

/// The spec of a declared timer.
fn spec_of(t: &schema::model::Timer) -> Spec {
    match (&t.schedule, t.interval, &t.at) {
        (Some(s), _, _) => Spec::Schedule {
            schedule: s.clone(),
            time_zone: t.time_zone.clone(),
        },
        (None, Some(every), _) => Spec::Interval {
            every_ms: u64::try_from(every.0.as_millis()).unwrap_or(u64::MAX),
        },
        (None, None, Some(at)) => Spec::At { at: at.clone() },
        // The loader refuses a timer without one of them.
        (None, None, None) => Spec::At {
            at: Timestamp::UNIX_EPOCH.to_string(),
        },
    }
}

fn random_secret() -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut secret)?;
    Ok(secret)
}

impl ComponentEngine {
    /// Opens the timer store in `ejbtimerdb`, loads the timers (applying each misfire policy to
    /// those that came due while the server was down), reconciles them with the declared timers
    /// of `apps`, and binds the local API on 127.0.0.1. Firing starts with [`Self::attach`].
    pub async fn start(
        ejbtimerdb: &std::path::Path,
        settings: &Component,
        apps: Apps,
        log: Option<Logger>,
    ) -> Result<ComponentEngine, ComponentError> {
        let loading = std::time::Instant::now();
        let store = {
            let dir = ejbtimerdb.to_owned();
            tokio::task::spawn_blocking(move || Store::open(&dir)).await??
        };
        let records = store.load()?;
        let tcp = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(ComponentError::Bind)?;
        let api = tcp.local_addr().map_err(ComponentError::Bind)?;
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                settings: settings.clone(),
                ..State::default()
            }),
            store,
            wake: Notify::new(),
            in_flight: AtomicUsize::new(0),
            slot_freed: Notify::new(),
            secret: random_secret().map_err(ComponentError::Random)?,
            api,
            web: OnceLock::new(),
            log,
            shutdown,
            started: AtomicBool::new(false),
            consumers: consume::Consumers::default(),
            conns: conns::Conns::default(),
        });
        let engine = ComponentEngine { inner };
        engine.load(records, &apps);
        // Declared timers are reconciled when firing starts (`attach`): a new one counts from
        // then, not from before its component was started.
        engine.inner.state().apps = apps;
        engine.inner.flush()?;
        let (n, orphans) = {
            let st = engine.inner.state();
            let orphans = st.entries.values().filter(|e| e.orphaned.is_some()).count();
            (st.entries.len() - orphans, orphans)
        };
        engine.inner.info(
            "COMP-0001",
            &format!(
                "The component engine runs; timer service on http://{api} with {n} stored timer(s){} (loaded in {} ms).",
                if orphans > 0 {
                    format!(", {orphans} orphaned")
                } else {
                    String::new()
                },
                loading.elapsed().as_millis()
            ),
        );
        tokio::spawn(api::serve(engine.clone(), tcp));
        Ok(engine)
    }

    /// Stored timers; those of applications not deployed here are orphaned (seemingly renamed)
    /// or removed.
    fn load(&self, records: Vec<Record>, apps: &Apps) {
        let mut st = self.inner.state();
        for r in records {
            let schedule = match schedule_of(&r.spec, r.anchor_ms) {
                Ok(s) => s,
                Err(why) => {
                    self.inner.warn(
                        "COMP-0021",
                        &format!(
                            "Timer {}/{} in the store cannot be read ({why}); removed.",
                            r.app, r.id
                        ),
                    );
                    st.removed.insert(r.key());
                    continue;
                }
            };
            let key = r.key();
            let app_gone = !apps.contains_key(&r.app);
            let source = r.source.clone();
            let unfinished = r.unfinished.clone();
            // Queued at its stored next firing: once firing starts, one that came due while the
            // server was down follows the misfire policy (`take_due`).
            st.insert(r, schedule);
            // As stored: nothing to write.
            st.dirty.remove(&key);
            if !app_gone {
                resend_unfinished(&self.inner, &mut st, &key, &unfinished);
            }
            if app_gone {
                match renamed_target(apps, &source) {
                    Some(to) => {
                        if let Some(e) = st.entries.get_mut(&key) {
                            e.orphaned = Some(Some(to));
                        }
                    }
                    None => {
                        st.remove(&key);
                    }
                }
            }
        }
    }

    /// Moves to `apps` (the component applications deployed here) and their declared timers.
    /// `before`: the applications as they were (live), for telling an undeploy from a rename.
    fn reconcile(&self, apps: Apps, before: Option<&Apps>) {
        let now = Timestamp::now();
        let mut st = self.inner.state();
        // Applications that left: renamed (another with their source arrived) or undeployed.
        if let Some(before) = before {
            for (gone, app) in before.iter().filter(|(n, _)| !apps.contains_key(*n)) {
                let arrived: Apps = apps
                    .iter()
                    .filter(|(n, _)| !before.contains_key(*n))
                    .map(|(n, a)| (n.clone(), a.clone()))
                    .collect();
                let keys: Vec<String> = st
                    .entries
                    .iter()
                    .filter(|(_, e)| e.record.app == *gone)
                    .map(|(k, _)| k.clone())
                    .collect();
                match renamed_target(&arrived, &app.source) {
                    Some(to) => {
                        self.inner.warn(
                            "COMP-0012",
                            &format!(
                                "Application {gone} is gone while {to} runs its source ({}): its {} timer(s) are kept as orphaned, not fired.",
                                app.source,
                                keys.len()
                            ),
                        );
                        for k in keys {
                            if let Some(e) = st.entries.get_mut(&k) {
                                e.orphaned = Some(Some(to.clone()));
                            }
                        }
                    }
                    None => {
                        if !keys.is_empty() {
                            self.inner.info(
                                "COMP-0011",
                                &format!(
                                    "Application {gone} was undeployed: its {} timer(s) are removed.",
                                    keys.len()
                                ),
                            );
                        }
                        for k in keys {
                            st.remove(&k);
                        }
                    }
                }
            }
        }
        for (name, app) in &apps {
            // Timers of an application back under its name fire again (their queued firings
            // were dropped while they were orphaned).
            let mut back = Vec::new();
            for (k, e) in st.entries.iter_mut().filter(|(_, e)| e.record.app == *name) {
                if e.orphaned.take().is_some()
                    && let Some(next) = e
                        .record
                        .next_ms
                        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
                {
                    back.push((k.clone(), e.generation, next));
                }
            }
            for (key, generation, next) in back {
                st.push(
                    next,
                    Job {
                        key,
                        generation,
                        scheduled: next,
                        attempt: 0,
                        regular: true,
                    },
                );
            }
            // Declared timers: kept when unchanged (their schedule goes on), replaced when
            // changed, removed when no longer declared.
            let declared_keys: Vec<String> = st
                .entries
                .iter()
                .filter(|(_, e)| e.record.app == *name && e.record.declared)
                .map(|(k, _)| k.clone())
                .collect();
            for k in declared_keys {
                let keep = st
                    .entries
                    .get(&k)
                    .is_some_and(|e| app.timers.contains_key(&e.record.id));
                if !keep {
                    st.remove(&k);
                }
            }
            for (tname, t) in &app.timers {
                let key = store::key(name, tname);
                let spec = spec_of(t);
                let same = st.entries.get(&key).is_some_and(|e| {
                    e.record.declared
                        && e.record.spec == spec
                        && e.record.persistent == t.persistent
                        && e.record.misfire == t.misfire
                });
                if same {
                    if let Some(e) = st.entries.get_mut(&key) {
                        e.record.source = app.source.clone();
                    }
                    continue;
                }
                if st.entries.get(&key).is_some_and(|e| !e.record.declared) {
                    self.inner.warn(
                        "COMP-0013",
                        &format!(
                            "Timer {tname} declared for {name} replaces the run-time timer with that id."
                        ),
                    );
                }
                let anchor_ms = now.as_millisecond();
                let schedule = match schedule_of(&spec, anchor_ms) {
                    Ok(s) => s,
                    Err(why) => {
                        // The loader checked these values: a machine without that time zone.
                        self.inner.warn(
                            "COMP-0022",
                            &format!("Timer {tname} of {name} cannot be scheduled: {why}"),
                        );
                        continue;
                    }
                };
                let record = Record {
                    app: name.clone(),
                    id: tname.clone(),
                    name: tname.clone(),
                    info: serde_json::Value::Null,
                    declared: true,
                    spec,
                    persistent: t.persistent,
                    misfire: t.misfire,
                    source: app.source.clone(),
                    anchor_ms,
                    next_ms: schedule.next_after(now).map(|t| t.as_millisecond()),
                    fired: 0,
                    failed: 0,
                    last: None,
                    unfinished: Vec::new(),
                };
                if st.entries.get(&key).is_some_and(|e| e.record.persistent) && !t.persistent {
                    st.removed.insert(key.clone());
                }
                st.insert(record, schedule);
            }
        }
        st.apps = apps;
        drop(st);
        self.inner.wake.notify_one();
    }

    /// Gives the engine the web engine that supervises the components (their ports) and starts
    /// firing.
    pub fn attach(&self, web: WebEngine) {
        let _ = self.inner.web.set(web);
        if !self.inner.started.swap(true, Ordering::SeqCst) {
            let apps = self.inner.state().apps.clone();
            self.reconcile(apps, None);
            let _ = self.inner.flush();
            tokio::spawn(scheduler(self.inner.clone()));
        }
    }

    /// Gives the engine the server's messaging engine and starts the consumers of
    /// message-driven components (after [`Self::attach`]).
    pub fn attach_messaging(&self, messaging: crate::engine::messaging::MessagingEngine) {
        self.inner.consumers.attach(messaging);
        let apps = self.inner.state().apps.clone();
        consume::reconcile(&self.inner, &apps);
    }

    /// What `component` applications get besides the engine-wide environment.
    pub fn component_env(&self) -> ComponentEnv {
        let inner = self.inner.clone();
        ComponentEnv(Arc::new(move |app: &str| {
            BTreeMap::from([
                (
                    "STEWARD_TIMER_URL".to_owned(),
                    format!("http://{}", inner.api),
                ),
                ("STEWARD_TIMER_TOKEN".to_owned(), inner.token(app)),
            ])
        }))
    }

    /// Applies a commit live: the settings (pool, enabled, retries) and the component
    /// applications deployed here with their declared timers.
    pub fn apply(&self, settings: &Component, apps: Apps) {
        let before = {
            let mut st = self.inner.state();
            st.settings = settings.clone();
            st.apps.clone()
        };
        self.reconcile(apps, Some(&before));
        let _ = self.inner.flush();
        let apps = self.inner.state().apps.clone();
        consume::reconcile(&self.inner, &apps);
        // A larger pool may let waiting callbacks go.
        self.inner.slot_freed.notify_waiters();
    }

    /// The local API's address.
    pub fn api_addr(&self) -> SocketAddr {
        self.inner.api
    }

    pub fn report(&self) -> Report {
        let web = self.inner.web.get();
        let st = self.inner.state();
        let mut components = Vec::new();
        for (name, app) in &st.apps {
            let state = match web.and_then(|w| w.app_state(name)) {
                Some(crate::engine::web::ProcState::Starting) => "starting",
                Some(crate::engine::web::ProcState::Ready(_)) => "ready",
                Some(crate::engine::web::ProcState::Failed(_)) => "failed",
                Some(crate::engine::web::ProcState::Stopped) => "stopped",
                None => "not-deployed",
            };
            components.push(ComponentReport {
                name: name.clone(),
                state: state.to_owned(),
                pid: web.and_then(|w| w.app_pid(name)),
                port: web.and_then(|w| w.app_port(name)),
                context_path: app.context_path.clone(),
                consumers: self.inner.consumers.report(name),
                timers: st
                    .entries
                    .values()
                    .filter(|e| e.record.app == *name && e.orphaned.is_none())
                    .map(report_of)
                    .collect(),
            });
        }
        Report {
            timer_service: ServiceReport {
                enabled: st.settings.timer_service.enabled,
                max_retries: st.settings.timer_service.max_retries,
                retry_delay_ms: u64::try_from(st.settings.timer_service.retry_delay.0.as_millis())
                    .unwrap_or(u64::MAX),
                thread_pool_max: st.settings.thread_pool.max,
                in_flight: self.inner.in_flight.load(Ordering::Relaxed),
                url: format!("http://{}", self.inner.api),
            },
            components,
            orphaned: st
                .entries
                .values()
                .filter(|e| e.orphaned.is_some())
                .map(report_of)
                .collect(),
        }
    }

    /// Stops firing and the local API; what is stored stays.
    pub fn shutdown(&self) {
        self.inner.consumers.stop_all();
        let _ = self.inner.shutdown.send(true);
        self.inner.wake.notify_one();
        let _ = self.inner.flush();
    }

    // The local API's operations (see `api`).

    fn app_timers(&self, app: &str) -> Vec<TimerReport> {
        let st = self.inner.state();
        st.entries
            .values()
            .filter(|e| e.record.app == app && e.orphaned.is_none())
            .map(report_of)
            .collect()
    }

    fn deployed(&self, app: &str) -> bool {
        self.inner.state().apps.contains_key(app)
    }

    /// Creates a run-time timer; returns once it is stored (persistent ones).
    fn create(&self, app: &str, req: api::CreateTimer) -> Result<TimerReport, TimerError> {
        let now = Timestamp::now();
        let (spec, name) = req.check()?;
        let anchor_ms = now.as_millisecond();
        let schedule = schedule_of(&spec, anchor_ms).map_err(TimerError::Invalid)?;
        let key = store::key(app, &req.id);
        {
            let mut st = self.inner.state();
            if st.entries.contains_key(&key) {
                return Err(TimerError::Exists {
                    app: app.to_owned(),
                    id: req.id.clone(),
                });
            }
            let source = st
                .apps
                .get(app)
                .map(|a| a.source.clone())
                .unwrap_or_default();
            let record = Record {
                app: app.to_owned(),
                id: req.id.clone(),
                name,
                info: req.info.clone().unwrap_or(serde_json::Value::Null),
                declared: false,
                spec,
                persistent: req.persistent.unwrap_or(true),
                misfire: req.misfire.unwrap_or_default(),
                source,
                anchor_ms,
                next_ms: schedule.next_after(now).map(|t| t.as_millisecond()),
                fired: 0,
                failed: 0,
                last: None,
                unfinished: Vec::new(),
            };
            st.insert(record, schedule);
        }
        if let Err(e) = self.inner.flush() {
            // Not stored: not created.
            self.inner.state().remove(&key);
            return Err(e.into());
        }
        self.inner.wake.notify_one();
        let st = self.inner.state();
        st.entries
            .get(&key)
            .map(report_of)
            .ok_or(TimerError::NotFound {
                app: app.to_owned(),
                id: req.id,
            })
    }

    /// Cancels a run-time timer (declared ones are the domain's).
    fn cancel(&self, app: &str, id: &str) -> Result<(), TimerError> {
        let key = store::key(app, id);
        {
            let mut st = self.inner.state();
            match st.entries.get(&key) {
                None => {
                    return Err(TimerError::NotFound {
                        app: app.to_owned(),
                        id: id.to_owned(),
                    });
                }
                Some(e) if e.record.declared => {
                    return Err(TimerError::Declared { id: id.to_owned() });
                }
                Some(_) => {
                    st.remove(&key);
                }
            }
        }
        self.inner.flush()?;
        Ok(())
    }
}

/// The deployed application among `apps` that runs `source`, if exactly one does.
fn renamed_target(apps: &Apps, source: &str) -> Option<String> {
    let mut same = apps.iter().filter(|(_, a)| a.source == source);
    match (same.next(), same.next()) {
        (Some((n, _)), None) => Some(n.clone()),
        _ => None,
    }
}

/// Pops due jobs and dispatches them, until shutdown.
async fn scheduler(inner: Arc<Inner>) {
    let mut stop = inner.shutdown.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        let now = Timestamp::now();
        let (jobs, next_due) = take_due(&inner, now);
        // The progress of what is about to fire is committed before any of it is sent; off the
        // runtime's workers, as the commit blocks.
        let writer = inner.clone();
        let _ = tokio::task::spawn_blocking(move || writer.flush()).await;
        for (due, job) in jobs {
            tokio::spawn(fire_at(inner.clone(), due, job));
        }
        let sleep = match next_due {
            Some(ms) => Duration::from_millis(
                u64::try_from(ms - LOOKAHEAD_MS - Timestamp::now().as_millisecond()).unwrap_or(0),
            ),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = inner.wake.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// A job taken from the queue: when to send it (ms since the epoch), the job and its timer.
type Due = (i64, (Job, Record));

/// The jobs due by `now` + [`LOOKAHEAD_MS`], each with when to send it (ms; regular ones move
/// their timer to its next instant), and when the next job is due. A regular firing later than
/// [`reconciler::timer::MISFIRE_THRESHOLD`] (the server was down, or the service paused or
/// overloaded) follows its timer's misfire policy. Nothing is taken while the timer service is
/// disabled.
fn take_due(inner: &Inner, now: Timestamp) -> (Vec<Due>, Option<i64>) {
    let mut st = inner.state();
    if !st.settings.timer_service.enabled {
        return (Vec::new(), None);
    }
    let mut out = Vec::new();
    let now_ms = now.as_millisecond();
    while let Some(entry) = st.queue.first_entry() {
        let due = entry.key().0;
        if due > now_ms + LOOKAHEAD_MS {
            break;
        }
        let job = entry.remove();
        let Some(e) = st.entries.get_mut(&job.key) else {
            continue;
        };
        if e.generation != job.generation {
            continue;
        }
        if e.orphaned.is_some() {
            // Kept, not fired: looked at again when the application is back.
            continue;
        }
        let mut fire = vec![job.clone()];
        let mut follow = None;
        if job.regular {
            let c = catch_up(&e.schedule, job.scheduled, now, e.record.misfire);
            if c.next == Some(job.scheduled) {
                // On time.
                follow = e.schedule.next_after(job.scheduled);
            } else {
                inner.info(
                    "COMP-0010",
                    &format!(
                        "Timer {}/{} missed {} firing(s) (the server was down, or the timer service was paused or overloaded); misfire policy {}: firing {}, skipping {}.",
                        e.record.app,
                        e.record.id,
                        c.fire.len() as u64 + c.skipped,
                        e.record.misfire.as_str(),
                        c.fire.len(),
                        c.skipped
                    ),
                );
                fire = c
                    .fire
                    .iter()
                    .map(|t| Job {
                        scheduled: *t,
                        regular: false,
                        ..job.clone()
                    })
                    .collect();
                follow = c.next;
            }
            e.record.next_ms = follow.map(|t| t.as_millisecond());
        }
        if job.attempt == 0 {
            e.pending += fire.len() as u32;
        }
        // Committed with the schedule's progress, before any of them is sent.
        for j in &fire {
            note_unfinished(&mut e.record, j);
        }
        let record = e.record.clone();
        let (key, generation) = (job.key.clone(), e.generation);
        st.mark(&key);
        if let Some(next) = follow {
            st.push(
                next,
                Job {
                    key,
                    generation,
                    scheduled: next,
                    attempt: 0,
                    regular: true,
                },
            );
        }
        // Catch-up firings go at once; the others (on time, or retries) at their instant.
        let at = match fire.first() {
            Some(j) if job.regular && !j.regular => now_ms,
            _ => due,
        };
        out.extend(fire.into_iter().map(|j| (at, (j, record.clone()))));
    }
    let next_due = st.queue.keys().next().map(|(ms, _)| *ms);
    (out, next_due)
}

/// Records that `job`'s attempt is about to be sent: until its outcome is recorded, a restart
/// sends it again ([`resend_unfinished`]).
fn note_unfinished(r: &mut Record, job: &Job) {
    let ms = job.scheduled.as_millisecond();
    match r.unfinished.iter_mut().find(|u| u.scheduled_ms == ms) {
        Some(u) => u.attempt = job.attempt,
        None => r.unfinished.push(Unfinished {
            scheduled_ms: ms,
            attempt: job.attempt,
        }),
    }
}

/// Firings of a stored timer that were sent (or about to be) when the server stopped, without
/// a recorded outcome: sent again at once as their next attempt, so that a firing is delivered
/// at least once (the component sees `attempt` above 0 and may ignore a repeat).
fn resend_unfinished(inner: &Inner, st: &mut State, key: &str, unfinished: &[Unfinished]) {
    let Some(e) = st.entries.get_mut(key) else {
        return;
    };
    let generation = e.generation;
    let (app, id) = (e.record.app.clone(), e.record.id.clone());
    let now = Timestamp::now();
    let mut jobs = Vec::new();
    for u in unfinished {
        let Ok(scheduled) = Timestamp::from_millisecond(u.scheduled_ms) else {
            continue;
        };
        e.pending += 1;
        jobs.push(Job {
            key: key.to_owned(),
            generation,
            scheduled,
            attempt: u.attempt + 1,
            regular: false,
        });
    }
    for job in jobs {
        inner.info(
            "COMP-0015",
            &format!(
                "Timer {app}/{id}: the firing of {} had no recorded outcome when the server stopped; sending it again (attempt {}).",
                job.scheduled, job.attempt
            ),
        );
        st.push(now, job);
    }
}

/// The callback's JSON body.
#[derive(Debug, Serialize)]
struct Callback<'a> {
    id: &'a str,
    name: &'a str,
    info: &'a serde_json::Value,
    scheduled: String,
    attempt: u32,
}

/// Waits until `due` (ms), then [`fire`]s the job unless its timer was cancelled or replaced
/// meanwhile.
async fn fire_at(inner: Arc<Inner>, due: i64, job: (Job, Record)) {
    let wait = due - Timestamp::now().as_millisecond();
    if let Ok(ms) = u64::try_from(wait)
        && ms > 0
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let current = inner
            .state()
            .entries
            .get(&job.0.key)
            .is_some_and(|e| e.generation == job.0.generation && e.orphaned.is_none());
        if !current {
            return;
        }
    }
    fire(inner, job).await;
}

/// One attempt of one firing: waits for a slot of the pool, POSTs, records the outcome and
/// queues a retry if it failed and retries are left.
async fn fire(inner: Arc<Inner>, (job, record): (Job, Record)) {
    acquire(&inner).await;
    let result = post(&inner, &job, &record).await;
    inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    inner.slot_freed.notify_one();
    let now = Timestamp::now();
    let mut st = inner.state();
    let (max_retries, delay) = (
        st.settings.timer_service.max_retries,
        st.settings.timer_service.retry_delay.0,
    );
    let retry = match &result {
        Ok(_) => None,
        Err(_) => match after_failure(job.attempt, max_retries, delay, now) {
            AfterFailure::Retry { retry, at } => Some((retry, at)),
            AfterFailure::Failed => None,
        },
    };
    let Some(e) = st.entries.get_mut(&job.key) else {
        return;
    };
    if e.generation != job.generation {
        return;
    }
    let (status, error) = match &result {
        Ok(s) => (Some(*s), None),
        Err((s, why)) => (*s, Some(why.clone())),
    };
    if let Some((retry, at)) = retry {
        e.record.last = Some(Outcome {
            scheduled: job.scheduled.to_string(),
            at: now.to_string(),
            result: "retrying".into(),
            attempts: job.attempt + 1,
            status,
            error,
        });
        st.push(
            at,
            Job {
                attempt: retry,
                ..job
            },
        );
        drop(st);
        inner.wake.notify_one();
        return;
    }
    e.pending = e.pending.saturating_sub(1);
    let scheduled_ms = job.scheduled.as_millisecond();
    e.record
        .unfinished
        .retain(|u| u.scheduled_ms != scheduled_ms);
    let ok = result.is_ok();
    if ok {
        e.record.fired += 1;
    } else {
        e.record.failed += 1;
    }
    e.record.last = Some(Outcome {
        scheduled: job.scheduled.to_string(),
        at: now.to_string(),
        result: if ok { "ok" } else { "failed" }.into(),
        attempts: job.attempt + 1,
        status,
        error: error.clone(),
    });
    let (app, id) = (e.record.app.clone(), e.record.id.clone());
    // A one-shot run-time timer is done once its firing is.
    let done = e.record.next_ms.is_none() && e.pending == 0 && !e.record.declared;
    if done {
        st.remove(&job.key);
    } else {
        st.mark(&job.key);
    }
    drop(st);
    if !ok {
        inner.warn(
            "COMP-0030",
            &format!(
                "Timer {app}/{id} failed at {} after {} attempt(s): {}.",
                job.scheduled,
                job.attempt + 1,
                error.unwrap_or_default()
            ),
        );
    }
    inner.wake.notify_one();
}

/// Waits for a slot: at most `thread-pool.max` callbacks at once (live).
async fn acquire(inner: &Inner) {
    loop {
        let freed = inner.slot_freed.notified();
        let max = inner.state().settings.thread_pool.max.max(1) as usize;
        let cur = inner.in_flight.load(Ordering::SeqCst);
        if cur < max
            && inner
                .in_flight
                .compare_exchange(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return;
        }
        if cur >= max {
            freed.await;
        }
    }
}

/// The callback: `Ok(status)` for a 2xx answer; otherwise the status (if any) and why.
async fn post(inner: &Inner, job: &Job, record: &Record) -> Result<u16, (Option<u16>, String)> {
    let port = inner
        .web
        .get()
        .and_then(|w| w.app_port(&record.app))
        .ok_or((None, "the component is not running".to_owned()))?;
    let body = Callback {
        id: &record.id,
        name: &record.name,
        info: &record.info,
        scheduled: job.scheduled.to_string(),
        attempt: job.attempt,
    };
    // Serializing plain data cannot fail.
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let path = format!("/timers/{}", record.name);
    let json = [(hyper::header::CONTENT_TYPE, "application/json".to_owned())];
    let posted = inner
        .conns
        .post(port, &path, &json, bytes::Bytes::from(body));
    match tokio::time::timeout(CALLBACK_TIMEOUT, posted).await {
        Err(_) => Err((
            None,
            format!(
                "no answer within {}",
                crate::engine::web::fmt_duration(CALLBACK_TIMEOUT)
            ),
        )),
        Ok(Err(why)) => Err((None, why.to_string())),
        Ok(Ok(status)) if (200..300).contains(&status) => Ok(status),
        Ok(Ok(status)) => Err((Some(status), format!("the component answered {status}"))),
    }
}
