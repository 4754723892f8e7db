//! What the Managed Server does with its applications: at boot it deploys every application it
//! runs from its commit and starts the web engine with them; on each resync it deploys only what
//! the plan says changed, applies the new web configuration live, and undeploys what left. A
//! failing application fails alone: it is listed with its reason, the others serve.
//!
//! An application whose deployment failed is retried in the background (a thread, with the
//! backoff of [`retry_delay`]), never on the path of a new pin: a resync applies the pin first,
//! and a newer pin cancels a retry in progress (the retry was for the older commit) and starts
//! the schedule again. When a redeployment fails, the application keeps serving its previous image;
//! [`Serving::older_images`] says which applications do, and from which commit.
//!
//! "Never run a mix": when the engine refuses a configuration, the images replaced for it are
//! deployed again from the running commit and the previous [`WebConfig`] is applied again, so the
//! server keeps serving exactly what it served before.
//!
//! Long because boot, resync, background retry and rollback all move the same `Serving` state;
//! about a third of it is tests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reconciler::cache::Cache;
use reconciler::git::Oid;
use reconciler::resync::{AppStep, Apps, Served};
use schema::Loaded;
use schema::model::{Application, Listener, Server};

use crate::deploy::{self, DeployContext, DeployError, Deployment, GitSource};
use crate::engine::web::{AppSpec, EngineContext, WebConfig, WebEngine, WebError};
use crate::layout::ServerHome;
use crate::logfile::{Logger, Rotation};
use crate::server_metrics::DeployStats;

/// Errors of serving applications. A single application's failure is not one of them: it is
/// reported in [`Serving::failed`].
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("the configuration does not define server {0}")]
    NoSuchServer(String),
    #[error("the deployment thread failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("the web engine refused the new configuration ({error}); returned to the previous one")]
    RolledBack { error: WebError },
    #[error(transparent)]
    Web(#[from] WebError),
}

/// The log rotation of a server's `logging.rotation` settings.
pub fn rotation_of(server: &Server) -> Rotation {
    Rotation {
        max_size: server.logging.rotation.max_size.0,
        daily: server.logging.rotation.daily,
        keep: server.logging.rotation.keep,
    }
}

pub use reconciler::resync::{apps_of, merge_restart};

/// The outcome of deploying one application: its deployment, or why it failed.
type Deployed = BTreeMap<String, Result<Deployment, AppError>>;

/// Why one application did not deploy.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// Without the commit nothing deploys: every application fails with the same reason.
    #[error("cannot read commit {commit} for deployment: {error}")]
    Source {
        commit: String,
        error: Arc<SourceError>,
    },
}

/// Why the commit to deploy from cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Cache(#[from] reconciler::cache::CacheError),
    #[error(transparent)]
    Git(#[from] reconciler::git::GitError),
    #[error(transparent)]
    Deploy(#[from] DeployError),
}

/// The first retry of a failed deployment waits this long; each further one twice as long.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two retries.
const RETRY_MAX: Duration = Duration::from_secs(300);

/// How long to wait before retry number `attempt` (0 for the first) of failed deployments: the
/// backoff policy, doubling from [`RETRY_FIRST`] up to [`RETRY_MAX`].
pub fn retry_delay(attempt: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1u32 << attempt.min(20))
        .min(RETRY_MAX)
}

/// Where an application is served, for the log: its context path, or that it is an unrouted
/// component.
fn served_at(app: &Application) -> &str {
    app.context_path
        .as_deref()
        .unwrap_or("component, not routed")
}

/// Logs a step at the `debug` level.
/// Deploys `apps` from `commit` of the machine's cache, each on its own: one failing does not
/// stop the others; `cancel` stops what remains (those are left out of the result). Blocking
/// (file-system work, and [`GitSource`] is not `Send`): run it on a thread that may block.
pub fn deploy_apps(
    home: &ServerHome,
    commit: Oid,
    apps: &BTreeMap<String, Application>,
    cancel: Option<&AtomicBool>,
    log: &Logger,
) -> Deployed {
    if apps.is_empty() {
        return BTreeMap::new();
    }
    log.debug(
        "SERVER-0530",
        &format!(
            "Deploying {} application(s) from commit {}: {}.",
            apps.len(),
            commit.short(),
            apps.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    );
    let ctx = DeployContext {
        cancel,
        log: Some(log),
    };
    // Shared lock: no launcher moves the cache aside while the images are read from it.
    let source = Cache::open_shared(&home.domain_home)
        .map_err(SourceError::from)
        .and_then(|cache| {
            let repo = cache.repo()?;
            let source = GitSource::open(&repo, commit)?;
            Ok((cache, source))
        });
    match source {
        Ok((_cache, source)) => apps
            .iter()
            .filter_map(
                |(name, app)| match deploy::deploy_with(home, &source, name, app, ctx) {
                    Err(DeployError::Cancelled { .. }) => None,
                    r => Some((name.clone(), r.map_err(AppError::from))),
                },
            )
            .collect(),
        Err(error) => {
            let error = Arc::new(error);
            apps.keys()
                .map(|name| {
                    let why = AppError::Source {
                        commit: commit.short(),
                        error: error.clone(),
                    };
                    (name.clone(), Err(why))
                })
                .collect()
        }
    }
}

/// The result of applying a new configuration to the applications.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Setting paths the web engine cannot change without a restart (its listeners), in the
    /// form the engine names them.
    pub restart: Vec<String>,
    /// Applications deployed (new or redeployed, image rewritten).
    pub deployed: Vec<String>,
    /// Applications undeployed.
    pub undeployed: Vec<String>,
}

/// The server's applications and its web engine.
pub struct Serving {
    name: String,
    home: ServerHome,
    log: Logger,
    engine: WebEngine,
    /// The listeners the engine bound at start: addresses and ports stay these until a restart.
    bound: BTreeMap<String, Listener>,
    /// The configuration the engine runs: the one to return to when an apply fails.
    current: WebConfig,
    /// The commit the running configuration came from: where images are restored from.
    commit: Oid,
    /// Applications that failed, with why: those of [`Retry::apps`], and process applications
    /// that are not running (their supervisor restarts them).
    failed: BTreeMap<String, String>,
    /// The applications of the running commit that this server runs.
    want: BTreeMap<String, Application>,
    /// The commit each served image was deployed from (or found unchanged at).
    images: BTreeMap<String, Oid>,
    retry: Retry,
    /// Deployments and applies, for `GET /metrics`.
    stats: Arc<DeployStats>,
}

/// The background retry of failed deployments.
#[derive(Debug)]
struct Retry {
    /// Applications whose deployment from the running commit failed.
    apps: BTreeSet<String>,
    /// Retries done since the last pin (the backoff's exponent).
    attempt: u32,
    /// When the next retry may start.
    next: Instant,
    job: Option<RetryJob>,
}

#[derive(Debug)]
struct RetryJob {
    cancel: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Deployed>,
}

impl Retry {
    /// A fresh schedule for `apps` (at a new pin, or at start).
    fn new(apps: BTreeSet<String>) -> Retry {
        Retry {
            apps,
            attempt: 0,
            next: Instant::now() + retry_delay(0),
            job: None,
        }
    }
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("name", &self.name)
            .field("commit", &self.commit)
            .field("apps", &self.current.apps.keys().collect::<Vec<_>>())
            .field("failed", &self.failed)
            .finish()
    }
}

impl Serving {
    /// At boot: deploys the applications of `loaded` that server `name` runs (on a blocking
    /// thread) and starts the web engine with those that deployed (components get
    /// `component_env` besides the rest). Only a listener that cannot
    /// be bound fails the start; failed applications are in [`Serving::failed`].
    pub async fn start(
        name: &str,
        home: &ServerHome,
        log: &Logger,
        loaded: &Loaded,
        commit: Oid,
        component_env: Option<crate::engine::web::ComponentEnv>,
    ) -> Result<Serving, ServingError> {
        let server = loaded
            .domain
            .config
            .servers
            .get(name)
            .ok_or_else(|| ServingError::NoSuchServer(name.to_owned()))?;
        let began = Instant::now();
        let stats = Arc::new(DeployStats::default());
        let apps = apps_of(loaded, name);
        let deployed = {
            let (home, apps, log) = (home.clone(), apps.clone(), log.clone());
            tokio::task::spawn_blocking(move || deploy_apps(&home, commit, &apps, None, &log))
                .await?
        };
        let mut failed = BTreeMap::new();
        let mut specs = BTreeMap::new();
        let mut images = BTreeMap::new();
        for (app, result) in deployed {
            log_deployment(log, &stats, &app, result.as_ref(), commit);
            match result {
                Ok(deployment) => {
                    images.insert(app.clone(), commit);
                    if let Some(a) = apps.get(&app) {
                        specs.insert(
                            app,
                            AppSpec {
                                app: a.clone(),
                                deployment,
                            },
                        );
                    }
                }
                Err(why) => {
                    failed.insert(app, why.to_string());
                }
            }
        }
        let retry = Retry::new(failed.keys().cloned().collect());
        let config = WebConfig::new(name, server, specs);
        let ctx = EngineContext {
            logs_dir: home.logs(),
            rotation: rotation_of(server),
            logger: Some(log.clone()),
            // The messaging listener is bound once (restart-class): its address at boot is the
            // one applications keep until the restart.
            env: server
                .messaging
                .listener
                .iter()
                .map(|l| {
                    (
                        "STEWARD_MESSAGING_URL".to_owned(),
                        crate::engine::messaging::url_of(l),
                    )
                })
                .collect(),
            component_env,
        };
        let (engine, report) = WebEngine::start(config.clone(), ctx).await?;
        for (listener, addr) in engine.local_addrs() {
            log.info(
                "SERVER-0510",
                &format!("The web engine listens on {addr} (listener {listener})."),
            );
        }
        for (app, why) in report.failed {
            log.severe(
                "SERVER-0505",
                &format!("Application {app} failed to start: {why}"),
            );
            failed.insert(app, why);
        }
        let mut serving = Serving {
            name: name.to_owned(),
            home: home.clone(),
            log: log.clone(),
            engine,
            bound: server.web.listeners.clone(),
            current: config,
            commit,
            failed,
            want: apps,
            images,
            retry,
            stats,
        };
        serving.stats.applied(began.elapsed());
        serving.note_unhealthy();
        log.info("SERVER-0511", &serving.summary());
        Ok(serving)
    }

    /// The web engine (a handle: clones are the same engine).
    pub fn engine(&self) -> &WebEngine {
        &self.engine
    }

    /// Deployments and applies so far (shared: the management API reads them).
    pub fn deploy_stats(&self) -> &Arc<DeployStats> {
        &self.stats
    }

    /// Applications that failed, with why.
    pub fn failed(&self) -> &BTreeMap<String, String> {
        &self.failed
    }

    /// Applications that serve an image older than the running commit's (their deployment from
    /// it failed, the previous image stays), with the commit that image was deployed from.
    pub fn older_images(&self) -> BTreeMap<String, Oid> {
        self.retry
            .apps
            .iter()
            .filter(|n| self.current.apps.contains_key(*n))
            .filter_map(|n| Some((n.clone(), *self.images.get(n)?)))
            .collect()
    }

    /// `last_error` for the status: every failed application with its reason, `None` if none.
    pub fn failure_summary(&self) -> Option<String> {
        if self.failed.is_empty() {
            return None;
        }
        let older = self.older_images();
        let lines: Vec<String> = self
            .failed
            .iter()
            .map(|(app, why)| match older.get(app) {
                Some(c) => format!(
                    "application {app}: {why} (still serving its image from commit {})",
                    c.short()
                ),
                None => format!("application {app}: {why}"),
            })
            .collect();
        Some(lines.join("\n"))
    }

    fn summary(&self) -> String {
        let older = self.older_images();
        let served: Vec<String> = self
            .current
            .apps
            .iter()
            .filter(|(n, _)| !self.failed.contains_key(*n) || older.contains_key(*n))
            .map(|(n, s)| match older.get(n) {
                Some(c) => format!(
                    "{n} ({}) with its older image from commit {}",
                    served_at(&s.app),
                    c.short()
                ),
                None => format!("{n} ({})", served_at(&s.app)),
            })
            .collect();
        let failed: Vec<String> = self
            .failed
            .keys()
            .map(|n| match older.get(n) {
                Some(_) => format!("{n} (its deployment failed; the older image serves)"),
                None => format!("{n} (not served)"),
            })
            .collect();
        format!(
            "Serving {} application(s) at commit {}: {}{}",
            served.len(),
            self.commit.short(),
            if served.is_empty() {
                "none".to_owned()
            } else {
                served.join(", ")
            },
            if failed.is_empty() {
                String::new()
            } else {
                format!("; failed: {}", failed.join(", "))
            }
        )
    }

    /// Stops a background retry in progress and waits for it (within one read buffer): a newer
    /// pin supersedes it. What it deployed before the cancel is discarded; the images it had not
    /// swapped in yet are untouched.
    pub fn cancel_retry(&mut self) {
        if let Some(job) = self.retry.job.take() {
            job.cancel.store(true, Ordering::SeqCst);
            let _ = job.thread.join();
            self.log.debug(
                "SERVER-0532",
                "Cancelled the background retry of failed applications: a newer pin supersedes it.",
            );
        }
    }

    /// Whether a background retry has finished and waits to be taken in by [`Serving::poll_retry`]
    /// (only then can what is served or failed change).
    pub fn retry_finished(&self) -> bool {
        self.retry
            .job
            .as_ref()
            .is_some_and(|j| j.thread.is_finished())
    }

    /// Drives the background retry (from the control loop, often): starts a retry when one is
    /// due, and takes in a finished one (the applications that deployed now serve). Returns true
    /// when what is served or failed changed.
    pub fn poll_retry(&mut self, handle: &tokio::runtime::Handle) -> bool {
        if self.retry_finished() {
            let Some(job) = self.retry.job.take() else {
                return false;
            };
            let cancelled = job.cancel.load(Ordering::SeqCst);
            return match job.thread.join() {
                Ok(deployed) if !cancelled => self.take_retried(handle, deployed),
                _ => false,
            };
        }
        if self.retry.job.is_none()
            && !self.retry.apps.is_empty()
            && Instant::now() >= self.retry.next
        {
            self.start_retry();
        }
        false
    }

    fn start_retry(&mut self) {
        let apps: BTreeMap<String, Application> = self
            .retry
            .apps
            .iter()
            .filter_map(|n| Some((n.clone(), self.want.get(n)?.clone())))
            .collect();
        self.log.info(
            "SERVER-0506",
            &format!(
                "Retrying application(s) that failed at commit {} in the background (attempt {}): {}.",
                self.commit.short(),
                self.retry.attempt + 1,
                apps.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        );
        let cancel = Arc::new(AtomicBool::new(false));
        let (home, log, commit, flag) = (
            self.home.clone(),
            self.log.clone(),
            self.commit,
            cancel.clone(),
        );
        let thread =
            std::thread::spawn(move || deploy_apps(&home, commit, &apps, Some(&flag), &log));
        self.retry.job = Some(RetryJob { cancel, thread });
    }

    /// The results of a background retry: the applications that deployed are served (one engine
    /// apply), the others wait for the next retry, later. Returns whether anything changed.
    fn take_retried(&mut self, handle: &tokio::runtime::Handle, deployed: Deployed) -> bool {
        let before = self.failed.clone();
        let mut config = self.current.clone();
        let mut fixed = Vec::new();
        for (name, result) in deployed {
            log_deployment(&self.log, &self.stats, &name, result.as_ref(), self.commit);
            match result {
                Ok(d) => {
                    if let Some(app) = self.want.get(&name) {
                        config.apps.insert(
                            name.clone(),
                            AppSpec {
                                app: app.clone(),
                                deployment: d,
                            },
                        );
                        fixed.push(name);
                    }
                }
                Err(why) => {
                    self.failed.insert(name, why.to_string());
                }
            }
        }
        if !fixed.is_empty() {
            self.log.debug(
                "SERVER-0531",
                &format!(
                    "Applying the web configuration with the retried application(s): {}.",
                    fixed.join(", ")
                ),
            );
            match handle.block_on(self.engine.apply(config.clone())) {
                Ok(report) => {
                    for name in &fixed {
                        self.failed.remove(name);
                        self.retry.apps.remove(name);
                        self.images.insert(name.clone(), self.commit);
                    }
                    for (app, why) in report.failed {
                        self.log.severe(
                            "SERVER-0505",
                            &format!("Application {app} failed to start: {why}"),
                        );
                        self.failed.insert(app, why);
                    }
                    self.current = config;
                }
                Err(e) => {
                    self.log.severe(
                        "SERVER-0514",
                        &format!(
                            "The web engine refused the retried application(s) {}: {e}; they stay failed.",
                            fixed.join(", ")
                        ),
                    );
                    for name in &fixed {
                        self.failed.insert(name.clone(), e.to_string());
                    }
                }
            }
        }
        self.retry.attempt = self.retry.attempt.saturating_add(1);
        self.retry.next = Instant::now() + retry_delay(self.retry.attempt);
        self.note_unhealthy();
        // A retry that failed again for the same reasons changes nothing worth a line.
        let changed = self.failed != before;
        if changed {
            self.log.info("SERVER-0511", &self.summary());
        }
        changed
    }

    /// A process application that is routed but not healthy (its start failed and the
    /// supervisor keeps retrying) is failed too, until it is healthy.
    fn note_unhealthy(&mut self) {
        for name in self.current.apps.keys() {
            if !self.failed.contains_key(name) && !self.engine.app_ready(name) {
                self.failed.insert(
                    name.clone(),
                    "not running; the supervisor restarts it with backoff".to_owned(),
                );
            }
        }
    }

    /// What serves now, for [`reconciler::resync::decide`].
    pub fn served(&self) -> Served {
        Served {
            serving: self.current.apps.keys().cloned().collect(),
            retrying: self.retry.apps.clone(),
            failed: self.failed.keys().cloned().collect(),
        }
    }

    /// On a resync (from the control thread, outside the runtime; `handle` is the server's
    /// runtime): moves the applications to `target` (commit `commit`) as `apps` decided. Deploys
    /// what it deploys, applies the new web configuration live, then undeploys what left.
    /// Listener addresses and ports are kept as bound (they need a restart:
    /// [`Applied::restart`]). When the engine refuses the configuration, everything returns to
    /// the previous one and the error says why.
    pub fn apply(
        &mut self,
        handle: &tokio::runtime::Handle,
        target: &Loaded,
        commit: Oid,
        apps: &Apps,
    ) -> Result<Applied, ServingError> {
        let began = Instant::now();
        let result = self.apply_timed(handle, target, commit, apps);
        self.stats.applied(began.elapsed());
        result
    }

    fn apply_timed(
        &mut self,
        handle: &tokio::runtime::Handle,
        target: &Loaded,
        commit: Oid,
        apps: &Apps,
    ) -> Result<Applied, ServingError> {
        let server = target
            .domain
            .config
            .servers
            .get(&self.name)
            .ok_or_else(|| ServingError::NoSuchServer(self.name.clone()))?;
        // The pin first: a retry of the older commit must not delay it.
        self.cancel_retry();
        let deployed = deploy_apps(&self.home, commit, &apps.to_deploy(), None, &self.log);
        let mut failed = BTreeMap::new();
        let mut specs = BTreeMap::new();
        let mut rewritten = Vec::new();
        // Failed deployments, to retry in the background: those of this pin and those carried
        // over.
        let mut retry = BTreeSet::new();
        let mut images = BTreeMap::new();
        for (name, app) in &apps.want {
            let previous = self.current.apps.get(name);
            match (apps.steps.get(name), deployed.get(name)) {
                (Some(AppStep::Deploy), Some(Ok(d))) => {
                    log_deployment(&self.log, &self.stats, name, Ok(d), commit);
                    images.insert(name.clone(), commit);
                    if !d.reused {
                        rewritten.push(name.clone());
                    }
                    let deployment = d.clone();
                    specs.insert(
                        name.clone(),
                        AppSpec {
                            app: app.clone(),
                            deployment,
                        },
                    );
                }
                (Some(AppStep::Deploy), Some(Err(why))) => {
                    log_deployment(&self.log, &self.stats, name, Err(why), commit);
                    failed.insert(name.clone(), why.to_string());
                    retry.insert(name.clone());
                    // A failed redeployment left the image untouched: the previous version
                    // (with its settings) keeps serving.
                    if let Some(previous) = previous {
                        specs.insert(name.clone(), previous.clone());
                        images.extend(self.images.get(name).map(|c| (name.clone(), *c)));
                    }
                }
                // Cancelled (never: no cancel flag here), or kept, or left to the retry.
                (step, _) => {
                    if step == Some(&AppStep::Retry) {
                        // Failed before, unchanged by this pin: still failed, retried later.
                        retry.insert(name.clone());
                        if let Some(why) = self.failed.get(name) {
                            failed.insert(name.clone(), why.clone());
                        }
                    }
                    images.extend(self.images.get(name).map(|c| (name.clone(), *c)));
                    // Not redeployed: the same image, with the new live settings.
                    if let Some(previous) = previous {
                        let deployment = previous.deployment.clone();
                        specs.insert(
                            name.clone(),
                            AppSpec {
                                app: app.clone(),
                                deployment,
                            },
                        );
                    }
                }
            }
        }
        let mut config = WebConfig::new(&self.name, server, specs);
        let mut applied = Applied {
            deployed: rewritten.clone(),
            ..Applied::default()
        };
        self.log.debug(
            "SERVER-0531",
            &format!(
                "Applying the web configuration of commit {}: {} application(s), {} listener(s).",
                commit.short(),
                config.apps.len(),
                config.listeners.len()
            ),
        );
        let result = match handle.block_on(self.engine.apply(config.clone())) {
            Err(WebError::RestartRequired { paths }) => {
                // Everything else of this configuration applies now; the listeners stay as
                // bound until the restart.
                applied.restart = paths;
                config.listeners = keep_bound(&self.bound, &config.listeners);
                handle.block_on(self.engine.apply(config.clone()))
            }
            other => other,
        };
        let report = match result {
            Ok(report) => report,
            Err(error) => {
                self.roll_back(handle, &rewritten, &error);
                return Err(ServingError::RolledBack { error });
            }
        };
        for (app, why) in report.failed {
            self.log.severe(
                "SERVER-0505",
                &format!("Application {app} failed to start: {why}"),
            );
            failed.insert(app, why);
        }
        // Undeployed only now: until the switch, requests may still read the old images.
        for name in &apps.undeploy {
            match deploy::undeploy(&self.home, name) {
                Ok(()) => {
                    self.log
                        .info("SERVER-0503", &format!("Undeployed application {name}."));
                    applied.undeployed.push(name.clone());
                }
                Err(e) => self.log.warn(
                    "SERVER-0504",
                    &format!("Cannot remove what application {name} left: {e}"),
                ),
            }
        }
        // An application that never deployed and left the configuration may still have what its
        // attempt created (its working directory): nothing of it is to stay.
        for name in &apps.clean {
            let _ = deploy::undeploy(&self.home, name);
        }
        self.engine.set_rotation(rotation_of(server));
        let changed = !applied.deployed.is_empty()
            || !applied.undeployed.is_empty()
            || failed.keys().ne(self.failed.keys())
            || commit != self.commit && !failed.is_empty();
        self.current = config;
        self.commit = commit;
        self.failed = failed;
        self.want = apps.want.clone();
        self.images = images;
        // A new pin starts the schedule again: it may have fixed what failed.
        self.retry = Retry::new(retry);
        self.note_unhealthy();
        if changed {
            self.log.info("SERVER-0511", &self.summary());
        }
        Ok(applied)
    }

    /// The engine refused a configuration: images rewritten for it are deployed again from the
    /// running commit, and the previous configuration is applied again, so what serves is
    /// exactly what served before.
    fn roll_back(
        &mut self,
        handle: &tokio::runtime::Handle,
        rewritten: &[String],
        error: &WebError,
    ) {
        if matches!(error, WebError::ShutDown) {
            return;
        }
        self.log.severe(
            "SERVER-0512",
            &format!(
                "The web engine refused the new configuration: {error}. Returning to the previous configuration (commit {}).",
                self.commit.short()
            ),
        );
        let restore: BTreeMap<String, Application> = rewritten
            .iter()
            .filter_map(|n| Some((n.clone(), self.current.apps.get(n)?.app.clone())))
            .collect();
        for (name, result) in deploy_apps(&self.home, self.commit, &restore, None, &self.log) {
            if let Err(why) = result {
                self.log.severe(
                    "SERVER-0513",
                    &format!("Cannot restore the previous image of application {name}: {why}"),
                );
                self.failed.insert(name, why.to_string());
            }
        }
        // Applications deployed for the refused configuration only are not served: remove them.
        for name in rewritten {
            if !self.current.apps.contains_key(name) {
                let _ = deploy::undeploy(&self.home, name);
            }
        }
        if let Err(e) = handle.block_on(self.engine.apply(self.current.clone())) {
            self.log.severe(
                "SERVER-0513",
                &format!("Cannot re-apply the previous web configuration: {e}"),
            );
        }
    }

    /// Graceful stop: requests in flight finish (up to `deadline`), process applications stop.
    /// A background retry in progress is told to stop (what it left is removed at the next
    /// start at the latest).
    pub async fn shutdown(&self, deadline: Duration) {
        if let Some(job) = &self.retry.job {
            job.cancel.store(true, Ordering::SeqCst);
        }
        self.engine.shutdown(deadline).await;
    }
}

/// The listeners to apply live: the bound ones, with the live settings (pool, timeouts) of
/// `wanted` where it still has them. Added listeners wait for the restart.
fn keep_bound(
    bound: &BTreeMap<String, Listener>,
    wanted: &BTreeMap<String, Listener>,
) -> BTreeMap<String, Listener> {
    bound
        .iter()
        .map(|(name, b)| {
            let l = match wanted.get(name) {
                Some(w) => Listener {
                    address: b.address,
                    port: b.port,
                    ..w.clone()
                },
                None => b.clone(),
            };
            (name.clone(), l)
        })
        .collect()
}

/// Logs a deployment's outcome and counts it for `GET /metrics`.
fn log_deployment(
    log: &Logger,
    stats: &DeployStats,
    app: &str,
    result: Result<&Deployment, &AppError>,
    commit: Oid,
) {
    stats.deployed(app, result.is_ok());
    match result {
        Ok(d) => {
            let how = if d.reused {
                "unchanged, image kept"
            } else {
                "image written"
            };
            log.info(
                "SERVER-0500",
                &format!(
                    "Deployed application {app} from commit {} ({how}): {}",
                    commit.short(),
                    d.image.display()
                ),
            );
            for w in &d.warnings {
                log.warn("SERVER-0502", &format!("Application {app}: {w}"));
            }
        }
        Err(why) => log.severe(
            "SERVER-0501",
            &format!("Deployment of application {app} failed: {why}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::settings::FileKind;
    use schema::tree::MemTree;

    const ACCOUNTS: &str = include_str!("../../examples/domain1/security/accounts.toml");
    const POLICIES: &str = include_str!("../../examples/domain1/security/policies.toml");
    const DOMAIN: &str = r#"
[domain]
name = "d"
[master]
listen = "127.0.0.1:9736"
[servers.s1]
listen = "127.0.0.1:9741"
[servers.s1.web.listeners.http]
address = "127.0.0.1"
port = 8088
[applications.a]
kind = "static"
source = "apps/a"
context-path = "/a"
targets = ["s1"]
[applications.b]
kind = "static"
source = "apps/b"
context-path = "/b"
targets = ["s1"]
"#;

    fn git(dir: &std::path::Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Commits `a` and `b` with the given index contents in `work`; returns the commit.
    fn commit(work: &std::path::Path, a: &str, b: &str) -> Oid {
        for (app, text) in [("a", a), ("b", b)] {
            let dir = work.join("apps").join(app);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("index.html"), text).unwrap();
        }
        git(work, &["add", "-A"]);
        git(work, &["commit", "-qm", "c"]);
        Oid::from_hex(&git(work, &["rev-parse", "HEAD"])).unwrap()
    }

    fn get(addr: std::net::SocketAddr, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// A domain home whose cache holds c1 (A1, B1) and c2 (A2, B2), the configuration with `a`
    /// and `b` on `s1` (on any free port), a logger, and a runtime.
    struct Fixture {
        _tmp: tempfile::TempDir,
        c1: Oid,
        c2: Oid,
        home: ServerHome,
        running: Loaded,
        log: Logger,
        rt: tokio::runtime::Runtime,
    }

    /// Moves `serving` from `running` to `target` (commit `f.c2`) as decided.
    fn apply(
        serving: &mut Serving,
        f: &Fixture,
        running: &Loaded,
        target: &Loaded,
    ) -> Result<Applied, ServingError> {
        let decided = reconciler::resync::decide(running, running, target, "s1", &serving.served());
        let apps = decided.expect("defines s1").apps;
        serving.apply(f.rt.handle(), target, f.c2, &apps)
    }

    fn fixture(b2: &str) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q"]);
        let c1 = commit(&work, "A1", "B1");
        let c2 = commit(&work, "A2", b2);
        let domain_home = tmp.path().join("home");
        std::fs::create_dir_all(domain_home.join(".cache")).unwrap();
        git(
            tmp.path(),
            &["clone", "-q", "--bare", "work", "home/.cache/domain.git"],
        );
        let tree = MemTree::new("t")
            .with(FileKind::Domain.path(), DOMAIN)
            .with(FileKind::Accounts.path(), ACCOUNTS)
            .with(FileKind::Policies.path(), POLICIES)
            .with("apps/a/index.html", "x")
            .with("apps/b/index.html", "x");
        let mut running = schema::validate(&tree).loaded.expect("valid");
        // Any free port: the test binds, it does not care which.
        if let Some(l) = running
            .domain
            .config
            .servers
            .get_mut("s1")
            .and_then(|s| s.web.listeners.get_mut("http"))
        {
            l.port = 0;
        }
        let home = ServerHome::new(&domain_home, "s1").unwrap();
        home.create().unwrap();
        let log = Logger::new(None, crate::logfile::Echo::None, "s1");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        Fixture {
            _tmp: tmp,
            c1,
            c2,
            home,
            running,
            log,
            rt,
        }
    }

    /// Puts a file where the working directory of `app` belongs: its deployment fails (before
    /// anything is written) until [`unblock`].
    fn block(home: &ServerHome, app: &str) {
        let dir = home.tmp().join(app);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::write(dir, "in the way").unwrap();
    }

    fn unblock(home: &ServerHome, app: &str) {
        std::fs::remove_file(home.tmp().join(app)).unwrap();
    }

    #[test]
    fn failed_deployments_are_retried_in_the_background_and_older_images_named() {
        let f = fixture("B2");
        block(&f.home, "b");
        let mut serving =
            f.rt.block_on(Serving::start(
                "s1", &f.home, &f.log, &f.running, f.c1, None,
            ))
            .unwrap();
        let addr = serving.engine().local_addrs()["http"];
        assert_eq!(serving.failed().keys().collect::<Vec<_>>(), ["b"]);
        assert!(serving.older_images().is_empty());
        assert!(get(addr, "/b/").contains(" 404 "));

        // Retried in the background (the first retry after 1 s), served once it deploys.
        unblock(&f.home, "b");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !serving.poll_retry(f.rt.handle()) {
            assert!(std::time::Instant::now() < deadline, "no retry");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(serving.failed().is_empty(), "{:?}", serving.failed());
        assert!(get(addr, "/b/").ends_with("B1"));

        // f.c2 redeploys both; `a` fails and keeps serving its image of f.c1, which is named.
        block(&f.home, "a");
        let mut target = f.running.clone();
        target.content.insert("a".into(), "changed".into());
        target.content.insert("b".into(), "changed".into());
        apply(&mut serving, &f, &f.running, &target).unwrap();
        assert_eq!(serving.failed().keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(
            serving.older_images(),
            BTreeMap::from([("a".to_owned(), f.c1)])
        );
        assert!(get(addr, "/a/").ends_with("A1"));
        assert!(get(addr, "/b/").ends_with("B2"));
        let summary = serving.summary();
        assert!(
            summary.contains(&format!(
                "Serving 2 application(s) at commit {}: a (/a) with its older image from commit {}, b (/b); failed: a (its deployment failed; the older image serves)",
                f.c2.short(),
                f.c1.short()
            )),
            "{summary}"
        );
        assert!(
            serving
                .failure_summary()
                .unwrap_or_default()
                .contains(&format!(
                    "(still serving its image from commit {})",
                    f.c1.short()
                ))
        );

        // A retry in progress is cancelled by the next pin, which is applied.
        serving.retry.next = std::time::Instant::now();
        assert!(!serving.poll_retry(f.rt.handle()));
        assert!(serving.retry.job.is_some());
        apply(&mut serving, &f, &target, &target).unwrap();
        assert!(serving.retry.job.is_none());
        assert_eq!(serving.retry.attempt, 0);
        unblock(&f.home, "a");
        f.rt.block_on(serving.shutdown(Duration::from_secs(1)));
    }

    #[test]
    fn a_refused_configuration_returns_to_the_previous_one() {
        let f = fixture("B1");
        let mut serving =
            f.rt.block_on(Serving::start(
                "s1", &f.home, &f.log, &f.running, f.c1, None,
            ))
            .unwrap();
        let addr = serving.engine().local_addrs()["http"];
        assert!(get(addr, "/a/").ends_with("A1"));

        // The target redeploys `a` (new content) and gives `b` the context path of `a`: the
        // engine refuses it after `a`'s image was rewritten.
        let mut target = f.running.clone();
        target.content.insert("a".into(), "changed".into());
        if let Some(b) = target.domain.config.applications.get_mut("b") {
            b.context_path = Some("/a".into());
        }
        let r = apply(&mut serving, &f, &f.running, &target);
        assert!(matches!(r, Err(ServingError::RolledBack { .. })), "{r:?}");
        // Exactly what served before: `a`'s previous image, `b` where it was.
        let image = f.home.deployed().join("a/index.html");
        assert_eq!(std::fs::read_to_string(image).unwrap(), "A1");
        // ... after the new one had been written (the restore swapped it out).
        let replaced = f.home.tmp().join(".previous-a/index.html");
        assert_eq!(std::fs::read_to_string(replaced).unwrap(), "A2");
        assert!(get(addr, "/a/").ends_with("A1"));
        assert!(get(addr, "/b/").ends_with("B1"));
        assert!(serving.failed().is_empty());

        // The same change without the conflict applies.
        let mut target = f.running.clone();
        target.content.insert("a".into(), "changed".into());
        apply(&mut serving, &f, &f.running, &target).unwrap();
        assert!(get(addr, "/a/").ends_with("A2"));
        f.rt.block_on(serving.shutdown(Duration::from_secs(1)));
    }

    #[test]
    fn retries_back_off_doubling_up_to_a_ceiling() {
        let waits: Vec<u64> = (0..5).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16]);
        assert_eq!(retry_delay(9), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }

    fn l(port: u16, max: u32) -> Listener {
        let mut l = Listener::on_port(port);
        l.thread_pool.max = max;
        l
    }

    #[test]
    fn bound_listeners_keep_their_address_and_take_live_settings() {
        let bound = BTreeMap::from([("http".to_owned(), l(8088, 64))]);
        let wanted = BTreeMap::from([
            ("http".to_owned(), l(9000, 8)),
            ("extra".to_owned(), l(9001, 8)),
        ]);
        let kept = keep_bound(&bound, &wanted);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept["http"].port, 8088);
        assert_eq!(kept["http"].thread_pool.max, 8);
        // A listener removed from the configuration stays as bound until the restart.
        assert_eq!(keep_bound(&bound, &BTreeMap::new()), bound);
    }
}
