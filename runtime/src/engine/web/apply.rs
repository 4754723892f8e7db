//! Applying a configuration live: one transaction over the engine's state. Process
//! applications whose deployment or settings changed start anew and are switched to once
//! healthy; the snapshot requests read is replaced whole.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
use schema::model::AppKind;

use crate::deploy::Deployment;

use super::files::StaticApp;
use super::listen::restart_paths;
use super::proxy::ProcessApp;
use super::route::normalize_context;
use super::supervisor::{self, ProcLive, ProcSpec, Supervisor};
use super::{ApplyReport, Handler, Limits, Route, Snapshot, WebConfig, WebEngine, WebError};

/// A process application being started by `apply`: name, the new one, the one it replaces, and
/// how long it may take.
pub(super) type Starting = (String, Arc<ProcessApp>, Option<Arc<ProcessApp>>, Duration);

/// A served static application: its deployment and index file (what it was built from), and it.
pub(super) type StaticEntry = (Deployment, String, Arc<StaticApp>);

/// State only `apply` touches (serialized by its lock).
#[derive(Debug)]
pub(super) struct Applied {
    pub(super) config: WebConfig,
    pub(super) statics: BTreeMap<String, StaticEntry>,
    pub(super) procs: BTreeMap<String, Arc<ProcessApp>>,
}

impl WebEngine {
    /// Applies a new configuration live. Refuses (changing nothing) when a restart-only setting
    /// differs: a listener added, removed, or with another address or port. Otherwise: pool
    /// sizes, timeouts, access log, context paths, index files and health settings change in
    /// place; applications whose deployment or process settings changed are started anew, and
    /// switched to only once healthy; removed ones stop after the switch.
    pub async fn apply(&self, config: WebConfig) -> Result<ApplyReport, WebError> {
        if *self.inner.shutdown.borrow() {
            return Err(WebError::ShutDown);
        }
        let restart = restart_paths(&self.inner.listeners, &config);
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
                        env: self
                            .inner
                            .ctx
                            .env
                            .iter()
                            .chain(&spec.app.env)
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
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
    pub(super) fn swap(
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
                stats: self.inner.stats.app(name),
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
        // The first routes are in place: accept (once).
        let bound = std::mem::take(
            &mut *self
                .inner
                .unaccepted
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (index, tcp) in bound.into_iter().enumerate() {
            tokio::spawn(super::serve::accept_loop(
                Arc::clone(&self.inner),
                index,
                tcp,
            ));
        }
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
