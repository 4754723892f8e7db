//! The Managed Server's control loop: it reports to the Master (register, then a heartbeat every
//! `[master] heartbeat-interval`), follows the Master's pin, applies what can change live, and
//! reports what needs a restart. Losing the Master makes the server INDEPENDENT without
//! interrupting service; reaching it again resynchronizes and makes it DEPENDENT (the seed's
//! `Domain-0101`, `SERVER-0201`, `SERVER-0308`).
//!
//! [`decide`] (in `reconciler::resync`) is the pure part: from the configuration the process booted
//! with, the one it applies now, the pinned one and what serves, what to do. The rest is effects.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use reconciler::cache::{Cache, Remote};
use reconciler::git::Oid;
use reconciler::resync::{Decision, decide};
use schema::Loaded;
use schema::model::RestartPolicy;

use crate::client::{Client, ClientError, Next};
use crate::logfile::Logger;
use crate::server::{Mode, Status};
use reconciler::wire::ReportReply;

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
    pub running: Loaded,
    /// The `steward` executable, for a restart under `restart-policy = "auto"`.
    pub exe: PathBuf,
    /// Applies live settings that live outside this module (the log level, …).
    pub apply_live: Box<dyn Fn(&Loaded) + Send>,
    /// The applications and the web engine, moved along with each applied commit.
    pub serving: crate::serving::Serving,
    /// The server's runtime: this loop is a plain thread and drives the engine through it.
    pub handle: tokio::runtime::Handle,
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

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

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
    fn report(&self, registered: bool) -> Result<ReportReply, ReportError> {
        let kind = if registered { "heartbeat" } else { "register" };
        let body = serde_json::to_vec(&self.snapshot()).map_err(ReportError::Encode)?;
        let resp = Client::new(
            &self.master,
            self.credentials(),
            CONNECT_TIMEOUT,
            RESPONSE_TIMEOUT,
        )
        .and_then(|c| c.post_json(&format!("/v1/servers/{}/{kind}", self.name), body))?;
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

    /// An apply step, logged at the `debug` level.
    /// Fetches, validates and applies the pinned commit. `Err` leaves the server as it was.
    fn resync(&mut self, pinned: &str) -> Result<(), String> {
        let commit = Oid::from_hex(pinned).map_err(|e| e.to_string())?;
        // A background retry holds the cache (shared) and deploys the older commit: the pin
        // supersedes it.
        self.serving.cancel_retry();
        let (cache, _) = Cache::open(&self.domain_home).map_err(|e| e.to_string())?;
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
            cache.fetch_master(&remote).map_err(|e| e.to_string())?;
        }
        let tree = cache.tree(commit).map_err(|e| e.to_string())?;
        let validation = schema::validate(&tree);
        let Some(target) = validation.loaded else {
            return Err(format!(
                "the pinned commit {} is invalid here:\n{}",
                commit.short(),
                validation.report.render_short()
            ));
        };
        cache
            .record_valid(commit, &format!("master {}", self.master))
            .map_err(|e| e.to_string())?;
        drop(cache);
        let served = self.serving.served();
        let Some(d) = decide(&self.boot, &self.running, &target, &self.name, &served) else {
            return Err(format!(
                "the pinned commit {} no longer defines this server; it keeps running its current configuration until stopped",
                commit.short()
            ));
        };
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
        let d = self.apply(&target, commit, d)?;
        for c in &d.live {
            self.log.info(
                "SERVER-0310",
                &format!("Applied live: {} {}.", c.path, c.describe()),
            );
        }
        if !d.pending_restart.is_empty() {
            self.log.warn(
                "SERVER-0311",
                &format!(
                    "A restart is needed to apply: {} (restart-policy {:?}).",
                    d.pending_restart.join(", "),
                    d.policy
                ),
            );
        }
        self.update(|s| {
            s.applied_commit = Some(commit.to_hex());
            s.pending_restart = d.pending_restart.clone();
            s.failed_applications = self.serving.failed().keys().cloned().collect();
            s.older_images = crate::server::older_images(&self.serving);
            s.last_error = self.serving.failure_summary();
        });
        self.log.info(
            "SERVER-0309",
            &format!(
                "Applied commit {}: {} live change(s), {} pending restart.",
                commit.short(),
                d.live.len(),
                d.pending_restart.len()
            ),
        );
        self.running = target;
        if d.policy == RestartPolicy::Auto && !d.pending_restart.is_empty() {
            self.restart_self();
        }
        Ok(())
    }

    /// A detached `stop-server` then `start-server`, the same path an operator takes, so the new
    /// process boots from the pinned commit (`restart-policy` auto, or rolling when ordered).
    fn restart_self(&self) {
        self.log.info(
            "SERVER-0320",
            "Restarting through the launcher to apply the pending settings.",
        );
        let home = self.domain_home.display().to_string();
        let script = "\"$0\" stop-server --domain-home \"$1\" --server \"$2\" && exec \"$0\" start-server --domain-home \"$1\" --server \"$2\" --master-url \"$3\"";
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
            self.log.severe(
                "SERVER-0321",
                &format!("Cannot restart through the launcher: {e}"),
            );
        }
    }

    /// Runs until `stop` is set.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        let (wake, woken) = mpsc::channel::<String>();
        {
            let (master, creds, stop) =
                (self.master.clone(), self.credentials.clone(), stop.clone());
            std::thread::spawn(move || watch_pins(&master, creds.as_ref(), &wake, &stop));
        }
        let mut registered = false;
        let mut connected = self.snapshot().mode == Mode::Dependent;
        let mut interval = self.boot.domain.config.master.heartbeat_interval.0;
        let mut backoff = interval;
        let mut refused_logged = false;
        let mut refusal: Option<String> = None;
        let mut announced: Option<String> = None;
        while !stop.load(Ordering::SeqCst) {
            // A pin announced on the event stream is applied at once; the report that follows
            // confirms it (and catches any event that was missed).
            if let Some(pin) = announced.take()
                && connected
                && !pin.is_empty()
                && self.snapshot().applied_commit.as_deref() != Some(pin.as_str())
                && let Err(e) = self.resync(&pin)
            {
                self.log.warn(
                    "SERVER-0312",
                    &format!("Cannot apply the pinned commit: {e}"),
                );
                self.update(|s| s.last_error = Some(e));
            }
            let wait = match self.report(registered) {
                Ok(ReportReply {
                    pinned,
                    heartbeat_interval_ms,
                    restart,
                    ..
                }) => {
                    let pinned = pinned.commit;
                    registered = true;
                    refused_logged = false;
                    if let Some(r) = refusal.take() {
                        self.update(|s| {
                            if s.last_error.as_ref() == Some(&r) {
                                s.last_error = None;
                            }
                        });
                    }
                    interval = Duration::from_millis(heartbeat_interval_ms);
                    backoff = interval;
                    if !connected {
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
                    // Back from INDEPENDENT with applications that failed: resync anyway, which
                    // retries them (the seed redeploys what failed when the Master returns).
                    let behind = self.snapshot().applied_commit.as_deref() != Some(pinned.as_str())
                        || (!connected && !self.serving.failed().is_empty());
                    let synced = if behind {
                        match self.resync(&pinned) {
                            Ok(()) => true,
                            Err(e) => {
                                self.log.warn(
                                    "SERVER-0312",
                                    &format!("Cannot apply the pinned commit: {e}"),
                                );
                                self.update(|s| s.last_error = Some(e));
                                false
                            }
                        }
                    } else {
                        true
                    };
                    if !connected && synced {
                        self.update(|s| s.mode = Mode::Dependent);
                        self.log.info(
                            "SERVER-0308",
                            "Resynchronized the configuration with the Master; the server is DEPENDENT.",
                        );
                    }
                    connected = synced || connected;
                    if restart && !self.snapshot().pending_restart.is_empty() {
                        // restart-policy rolling: the Master says it is this server's turn.
                        self.log.info(
                            "SERVER-0322",
                            "The Master orders a restart (restart-policy rolling): it is this server's turn.",
                        );
                        self.restart_self();
                    }
                    interval
                }
                Err(e) => {
                    // A refusal is no outage: say so in the status, which the Master shows too.
                    let refused = matches!(e, ReportError::Refused { .. });
                    let e = e.to_string();
                    if refused {
                        self.update(|s| s.last_error = Some(e.clone()));
                        refusal = Some(e.clone());
                    }
                    if connected {
                        self.log.warn(
                            "SERVER-0210",
                            &format!(
                                "Lost the Master ({e}). The server keeps serving as INDEPENDENT and retries."
                            ),
                        );
                        self.update(|s| s.mode = Mode::Independent);
                        connected = false;
                        registered = false;
                    } else if refused && !refused_logged {
                        self.log.warn("SERVER-0211", &e);
                        refused_logged = true;
                    }
                    let b = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    b
                }
            };
            // Sleep until the next report, or until the Master announces a pin; meanwhile the
            // failed applications are retried in the background.
            let until = Instant::now() + wait;
            while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                self.poll_retry();
                if let Ok(pin) = woken.recv_timeout(Duration::from_millis(50)) {
                    // Only the latest announcement matters.
                    announced = Some(woken.try_iter().last().unwrap_or(pin));
                    break;
                }
            }
        }
        self.serving.cancel_retry();
    }

    /// One step of the background retry; publishes what changed. `last_error` is replaced only
    /// when it was the applications' summary (an error of the last resync stays).
    fn poll_retry(&mut self) {
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

impl Control {
    /// The apply step of a resync: the applications and the web engine first (they can fail, and
    /// then the server returns to its previous configuration: nothing else is changed), then the
    /// live settings outside the engine (log level and rotation). Returns the decision with the
    /// engine's restart-only settings merged into its pending restarts, each listed once.
    fn apply(&mut self, target: &Loaded, commit: Oid, d: Decision) -> Result<Decision, String> {
        let applied = self
            .serving
            .apply(&self.handle, target, commit, &d.apps)
            .map_err(|e| e.to_string())?;
        (self.apply_live)(target);
        self.log.debug(
            "SERVER-0332",
            &format!(
                "Applied the settings outside the web engine (log level, rotation, stop-timeout) of commit {}.",
                commit.short()
            ),
        );
        Ok(Decision {
            pending_restart: crate::serving::merge_restart(&d.pending_restart, &applied.restart),
            ..d
        })
    }
}

/// Follows the Master's `/v1/events` and wakes the loop on every `pinned` event, so a push
/// reaches the server in one round trip instead of at the next heartbeat. Reconnects forever;
/// the heartbeat stays the safety net for missed events.
fn watch_pins(
    master: &str,
    creds: Option<&(String, String)>,
    wake: &mpsc::Sender<String>,
    stop: &AtomicBool,
) {
    let creds = creds.map(|(u, p)| (u.as_str(), p.as_str()));
    while !stop.load(Ordering::SeqCst) {
        // A one-second read timeout lets the loop notice `stop`; keep-alive comments arrive
        // meanwhile.
        let events = Client::new(master, creds, CONNECT_TIMEOUT, Duration::from_secs(1))
            .and_then(|c| c.events("/v1/events"));
        if let Ok(mut events) = events {
            while let Ok(next) = events.next_event() {
                match next {
                    Next::Event(e) if e.kind == "pinned" => {
                        if wake.send(e.id).is_err() {
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
