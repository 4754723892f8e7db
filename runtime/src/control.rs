//! The Managed Server's control loop, the effects of [`reconciler::control::step`]: it reports to
//! the Master, fetches and validates the pinned commit, applies it through
//! [`crate::serving::Serving`], restarts through the launcher, logs, and keeps the status the
//! server serves (and reports) up to date. The decisions (connected or not, when to resync, the
//! backoff, what to deploy, what pends) are the step's; this file only carries them out.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use reconciler::cache::{Cache, CacheError, Remote};
use reconciler::control::{
    Apply, Effect, Event, Note, Report, ReportFailure, RestartReason, State, step,
};
use reconciler::git::{GitError, Oid};
use reconciler::wire::ReportReply;
use schema::Loaded;

use crate::client::{Client, ClientError, Next};
use crate::logfile::Logger;
use crate::server::Status;
use crate::serving::ServingError;

/// Everything the loop needs; built by the server process once it runs.
pub struct Control {
    pub name: String,
    pub domain_home: PathBuf,
    /// The Master's base URL (`http://HOST:PORT` or `https://HOST:PORT`).
    pub master: String,
    pub credentials: Option<(String, String)>,
    pub status: Arc<RwLock<Status>>,
    pub log: Logger,
    pub boot: Loaded,
    /// The `steward` executable, for a restart under `restart-policy = "auto"`.
    pub exe: PathBuf,
    /// Applies live settings that live outside this module (the log level, …).
    pub apply_live: Box<dyn Fn(&Loaded) + Send>,
    /// The applications and the web engine, moved along with each applied commit.
    pub serving: crate::serving::Serving,
    /// The server's runtime: this loop is a plain thread and drives the engine through it.
    pub handle: tokio::runtime::Handle,
    /// The client for reports, made at the first one and kept: making one starts a thread and
    /// reads trust roots.
    pub reporter: std::sync::OnceLock<Client>,
    /// DEPENDENT when the loop ended (set by [`Control::run`]).
    pub dependent: bool,
}

/// Why a report to the Master failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(
        "the Master refused this server's credentials ({status}): give the servers' account (role with servers:register, domain:read, git:read, events:read) in DOMAIN_HOME/config/server-credentials or STEWARD_USER/STEWARD_PASSWORD, then restart the server"
    )]
    Refused { status: u16 },
    #[error("the Master answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the Master's answer is not a report reply: {0}")]
    Reply(serde_json::Error),
    #[error("cannot encode the status: {0}")]
    Encode(serde_json::Error),
}

/// Why the pinned commit could not be fetched or applied; the server stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error("not a commit id: {0}")]
    Commit(#[from] GitError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("the pinned commit {commit} is invalid here:\n{problems}")]
    Invalid { commit: String, problems: String },
    #[error(transparent)]
    Serving(#[from] ServingError),
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

impl Control {
    fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut s = self.status.write().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }

    fn snapshot(&self) -> Status {
        self.status
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Registers or heart-beats; returns the Master's answer.
    fn report(&self, report: Report) -> Result<ReportReply, ReportError> {
        let kind = match report {
            Report::Register => "register",
            Report::Heartbeat => "heartbeat",
        };
        let body = serde_json::to_vec(&self.snapshot()).map_err(ReportError::Encode)?;
        let client = match self.reporter.get() {
            Some(c) => c,
            None => {
                let c = Client::new(
                    &self.master,
                    self.credentials(),
                    CONNECT_TIMEOUT,
                    RESPONSE_TIMEOUT,
                )?;
                self.reporter.get_or_init(|| c)
            }
        };
        let resp = client.post_json(&format!("/v1/servers/{}/{kind}", self.name), body)?;
        match resp.status {
            200 => serde_json::from_slice(&resp.body).map_err(ReportError::Reply),
            401 | 403 => Err(ReportError::Refused {
                status: resp.status,
            }),
            status => Err(ReportError::Status {
                status,
                body: String::from_utf8_lossy(&resp.body).into_owned(),
            }),
        }
    }

    /// Brings the pinned commit into the local cache and validates it.
    fn fetch(&mut self, pinned: &str) -> Result<(Oid, Loaded), ResyncError> {
        let commit = Oid::from_hex(pinned)?;
        // A background retry holds the cache (shared) and deploys the older commit: the pin
        // supersedes it.
        self.serving.cancel_retry();
        let (cache, _) = Cache::open(&self.domain_home)?;
        let cached = cache.has_complete(commit);
        self.log.debug(
            "SERVER-0330",
            &format!(
                "Resync to commit {}: {}.",
                commit.short(),
                if cached {
                    "already in the local cache"
                } else {
                    "fetching it from the Master"
                }
            ),
        );
        if !cached {
            let remote = Remote {
                url: format!("{}/git/domain.git", self.master),
                user: self.credentials.as_ref().map(|c| c.0.clone()),
                password: self.credentials.as_ref().map(|c| c.1.clone()),
                connect_timeout: CONNECT_TIMEOUT,
            };
            cache.fetch_master(&remote)?;
        }
        let tree = cache.tree(commit)?;
        let validation = schema::validate(&tree);
        let Some(target) = validation.loaded else {
            return Err(ResyncError::Invalid {
                commit: commit.short(),
                problems: validation.report.render_short(),
            });
        };
        cache.record_valid(commit, &format!("master {}", self.master))?;
        Ok((commit, target))
    }

    /// The apply step of a resync: the applications and the web engine first (they can fail, and
    /// then the server returns to its previous configuration: nothing else is changed), then the
    /// live settings outside the engine (log level and rotation). Returns the engine's
    /// restart-only settings.
    fn apply(&mut self, a: &Apply) -> Result<Vec<String>, ResyncError> {
        let commit = Oid::from_hex(&a.commit)?;
        let d = &a.decision;
        self.log.debug(
            "SERVER-0331",
            &format!(
                "Commit {} is valid here; decided: {} live change(s) [{}], {} setting(s) differ from the boot configuration [{}], restart-policy {:?}.",
                commit.short(),
                d.live.len(),
                d.live.iter().map(|c| c.path.as_str()).collect::<Vec<_>>().join(", "),
                d.pending_restart.len(),
                d.pending_restart.join(", "),
                d.policy
            ),
        );
        let applied = self
            .serving
            .apply(&self.handle, &a.target, commit, &d.apps)?;
        (self.apply_live)(&a.target);
        self.log.debug(
            "SERVER-0332",
            &format!(
                "Applied the settings outside the web engine (log level, rotation, stop-timeout) of commit {}.",
                commit.short()
            ),
        );
        Ok(applied.restart)
    }

    /// A detached `stop-server` then `start-server`, the same path an operator takes, so the new
    /// process boots from the pinned commit (`restart-policy` auto, rolling when ordered, or an
    /// operator's order).
    fn restart_self(&self, reason: RestartReason) {
        self.log.info(
            "SERVER-0320",
            match reason {
                RestartReason::Ordered => "Restarting through the launcher, as ordered.",
                RestartReason::Auto | RestartReason::Rolling => {
                    "Restarting through the launcher to apply the pending settings."
                }
            },
        );
        self.launcher(
            "\"$0\" stop-server --domain-home \"$1\" --server \"$2\" && exec \"$0\" start-server --domain-home \"$1\" --server \"$2\" --master-url \"$3\"",
        );
    }

    /// A detached `stop-server`, as an operator would run it: a graceful stop within the
    /// server's stop-timeout.
    fn stop_self(&self) {
        self.log
            .info("SERVER-0323", "Stopping through the launcher, as ordered.");
        self.launcher("exec \"$0\" stop-server --domain-home \"$1\" --server \"$2\"");
    }

    /// Runs `script` (`$0` the steward executable, `$1` the domain home, `$2` this server, `$3`
    /// the Master) detached from this process, with the server's credentials.
    fn launcher(&self, script: &str) {
        let home = self.domain_home.display().to_string();
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg(&self.exe)
            .arg(&home)
            .arg(&self.name)
            .arg(&self.master)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some((u, p)) = &self.credentials {
            cmd.env("STEWARD_USER", u).env("STEWARD_PASSWORD", p);
        }
        // Its own session: the stop it asks for must not take it down too.
        crate::process::detach(&mut cmd);
        if let Err(e) = cmd.spawn() {
            self.log
                .severe("SERVER-0321", &format!("Cannot run the launcher: {e}"));
        }
    }

    /// Runs until `stop` is set: waits for an event, asks [`step`] what to do, does it. Gives
    /// itself back for the [`Control::farewell`].
    pub fn run(mut self, stop: Arc<AtomicBool>) -> Control {
        let (wake, woken) = mpsc::channel::<String>();
        {
            let (master, creds, stop) =
                (self.master.clone(), self.credentials.clone(), stop.clone());
            let me = self.name.clone();
            std::thread::spawn(move || watch_pins(&master, &me, creds.as_ref(), &wake, &stop));
        }
        let now = self.snapshot();
        let mut state = State::new(
            &self.name,
            now.mode,
            self.boot.clone(),
            now.applied_commit.unwrap_or_default(),
        );
        let mut event = Some(Event::Due);
        while let Some(e) = event.take() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let (next, effects) = step(state, e);
            state = next;
            for effect in effects {
                if let Some(e) = self.execute(effect, &woken, &stop) {
                    event = Some(e);
                }
            }
        }
        self.serving.cancel_retry();
        self.dependent = state.mode() == reconciler::wire::Mode::Dependent;
        self
    }

    /// The last report of a graceful stop: `SHUTDOWN`, so the Master shows a server stopped on
    /// purpose rather than one that went silent. Best effort and quick (a Master that does not
    /// answer within a second must not hold the stop up); only while DEPENDENT.
    pub fn farewell(&self) {
        if !self.dependent {
            return;
        }
        self.update(|s| s.state = reconciler::wire::ServerState::Shutdown);
        let sent = serde_json::to_vec(&self.snapshot())
            .map_err(ReportError::Encode)
            .and_then(|body| {
                let fast = Duration::from_millis(500);
                let c = Client::new(&self.master, self.credentials(), fast, 2 * fast)?;
                Ok(c.post_json(&format!("/v1/servers/{}/heartbeat", self.name), body)?)
            });
        if let Err(e) = sent {
            self.log.debug(
                "SERVER-0325",
                &format!("Could not tell the Master that this server stopped: {e}"),
            );
        }
    }

    /// Does one effect; returns the event it produced, if it is one that does (`None` also when
    /// `stop` ended a wait).
    fn execute(
        &mut self,
        effect: Effect,
        woken: &mpsc::Receiver<String>,
        stop: &AtomicBool,
    ) -> Option<Event> {
        match effect {
            Effect::Report(report) => Some(match self.report(report) {
                Ok(reply) => Event::Answered {
                    reply,
                    apps_failing: !self.serving.failed().is_empty(),
                },
                Err(e @ ReportError::Refused { .. }) => {
                    Event::ReportFailed(ReportFailure::Refused(e.to_string()))
                }
                Err(e) => Event::ReportFailed(ReportFailure::Lost(e.to_string())),
            }),
            Effect::Fetch(commit) => Some(match self.fetch(&commit) {
                Ok((_, target)) => Event::Fetched {
                    commit,
                    target: Box::new(target),
                    served: self.serving.served(),
                },
                Err(e) => Event::ResyncFailed(e.to_string()),
            }),
            Effect::Apply(a) => Some(match self.apply(&a) {
                Ok(engine_restart) => Event::Applied { engine_restart },
                Err(e) => Event::ResyncFailed(e.to_string()),
            }),
            Effect::Wait(d) => self.wait(d, woken, stop),
            Effect::SetMode(mode) => {
                self.update(|s| s.mode = mode);
                None
            }
            Effect::SetError(e) => {
                self.update(|s| s.last_error = Some(e));
                None
            }
            Effect::ClearError(e) => {
                self.update(|s| {
                    if s.last_error.as_ref() == Some(&e) {
                        s.last_error = None;
                    }
                });
                None
            }
            Effect::Publish {
                applied,
                pending_restart,
            } => {
                self.update(|s| {
                    s.applied_commit = Some(applied);
                    s.pending_restart = pending_restart;
                    s.failed_applications = self.serving.failed().keys().cloned().collect();
                    s.older_images = crate::server::older_images(&self.serving);
                    s.last_error = self.serving.failure_summary();
                });
                None
            }
            Effect::Log(note) => {
                self.note(note);
                None
            }
            Effect::Restart(reason) => {
                self.restart_self(reason);
                None
            }
            Effect::Stop => {
                self.stop_self();
                None
            }
        }
    }

    /// Sleeps until the next report, or until the Master announces a pin; meanwhile the failed
    /// applications are retried in the background.
    fn wait(
        &mut self,
        d: Duration,
        woken: &mpsc::Receiver<String>,
        stop: &AtomicBool,
    ) -> Option<Event> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            self.poll_retry();
            if let Ok(first) = woken.recv_timeout(Duration::from_millis(50)) {
                // Only the latest pin matters; an order (empty) only asks for a report, which
                // a pin's resync ends with anyway.
                let pin = std::iter::once(first)
                    .chain(woken.try_iter())
                    .filter(|p| !p.is_empty())
                    .last()
                    .unwrap_or_default();
                return Some(Event::Announced(pin));
            }
        }
        Some(Event::Due)
    }

    fn note(&self, note: Note) {
        match note {
            Note::Recovered => {
                self.log.info(
                    "Domain-0101",
                    &format!(
                        "The Master recovered. {} is communicating with the Master.",
                        self.name
                    ),
                );
                self.log.info(
                    "SERVER-0201",
                    &format!("Successfully connected to the Master ({}).", self.master),
                );
            }
            Note::Lost(e) => self.log.warn(
                "SERVER-0210",
                &format!(
                    "Lost the Master ({e}). The server keeps serving as INDEPENDENT and retries."
                ),
            ),
            Note::Refused(e) => self.log.warn("SERVER-0211", &e),
            Note::CannotApply(e) => self.log.warn(
                "SERVER-0312",
                &format!("Cannot apply the pinned commit: {e}"),
            ),
            Note::Resynchronized => self.log.info(
                "SERVER-0308",
                "Resynchronized the configuration with the Master; the server is DEPENDENT.",
            ),
            Note::RollingTurn => self.log.info(
                "SERVER-0322",
                "The Master orders a restart (restart-policy rolling): it is this server's turn.",
            ),
            Note::Ordered { rollout, action } => self.log.info(
                "SERVER-0324",
                &format!(
                    "The Master orders this server to {} (rollout {rollout}).",
                    match action {
                        reconciler::wire::OrderAction::Restart => "restart",
                        reconciler::wire::OrderAction::Stop => "stop",
                    }
                ),
            ),
            Note::Applied {
                commit,
                live,
                pending_restart,
                policy,
            } => {
                for c in &live {
                    self.log.info(
                        "SERVER-0310",
                        &format!("Applied live: {} {}.", c.path, c.describe()),
                    );
                }
                if !pending_restart.is_empty() {
                    self.log.warn(
                        "SERVER-0311",
                        &format!(
                            "A restart is needed to apply: {} (restart-policy {policy:?}).",
                            pending_restart.join(", "),
                        ),
                    );
                }
                self.log.info(
                    "SERVER-0309",
                    &format!(
                        "Applied commit {}: {} live change(s), {} pending restart.",
                        commit.get(..7).unwrap_or(&commit),
                        live.len(),
                        pending_restart.len()
                    ),
                );
            }
        }
    }

    /// One step of the background retry; publishes what changed. `last_error` is replaced only
    /// when it was the applications' summary (an error of the last resync stays).
    fn poll_retry(&mut self) {
        // Called every 50 ms: the summary is built only when a finished retry may change it.
        if !self.serving.retry_finished() {
            self.serving.poll_retry(&self.handle);
            return;
        }
        let before = self.serving.failure_summary();
        if !self.serving.poll_retry(&self.handle) {
            return;
        }
        let after = self.serving.failure_summary();
        self.update(|s| {
            s.failed_applications = self.serving.failed().keys().cloned().collect();
            s.older_images = crate::server::older_images(&self.serving);
            if s.last_error == before {
                s.last_error = after;
            }
        });
    }
}

/// Follows the Master's `/v1/events` and wakes the loop on every `pinned` event, so a push
/// reaches the server in one round trip instead of at the next heartbeat, and on an `order` for
/// this server (sent as an empty pin: report now, the answer carries the order). Reconnects forever;
/// the heartbeat stays the safety net for missed events.
fn watch_pins(
    master: &str,
    me: &str,
    creds: Option<&(String, String)>,
    wake: &mpsc::Sender<String>,
    stop: &AtomicBool,
) {
    let creds = creds.map(|(u, p)| (u.as_str(), p.as_str()));
    while !stop.load(Ordering::SeqCst) {
        // A one-second read timeout lets the loop notice `stop`; keep-alive comments arrive
        // meanwhile.
        let events = Client::new(master, creds, CONNECT_TIMEOUT, Duration::from_secs(1))
            .and_then(|c| c.events("/v1/events?events=pinned,order"));
        if let Ok(mut events) = events {
            while let Ok(next) = events.next_event() {
                match next {
                    Next::Event(e) if e.kind == "pinned" => {
                        if wake.send(e.id).is_err() {
                            return;
                        }
                    }
                    Next::Event(e) if e.kind == "order" && e.id == me => {
                        if wake.send(String::new()).is_err() {
                            return;
                        }
                    }
                    Next::Event(_) | Next::Idle if stop.load(Ordering::SeqCst) => return,
                    Next::Event(_) | Next::Idle => {}
                    Next::End => break,
                }
            }
        }
        // The Master is away or closed the stream: try again shortly.
        for _ in 0..20 {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
