//! `process` applications: a supervised child process per application, reverse-proxied.
//!
//! The child runs with a cleared environment (only `PATH`, `HOME` and `LANG` are kept from the
//! server, so applications never inherit the server's secrets), then the application's `env`, then
//! what Steward gives it: `PORT` (a free port on 127.0.0.1 chosen for each start),
//! `STEWARD_APP`, `STEWARD_DEPLOY_DIR`, `STEWARD_GENERATED_DIR`, `STEWARD_WORK_DIR` and
//! `STEWARD_LIBRARY_PATH`; and, when the messaging engine has a listener, `STEWARD_MESSAGING_URL`
//! (an application's own `env` may set it otherwise); a `component` application also gets
//! `STEWARD_TIMER_URL` and `STEWARD_TIMER_TOKEN` (`engine::component`). Its working directory is its work dir; it is the leader of its own
//! process group, so stopping it (SIGTERM, then SIGKILL after [`STOP_GRACE`]) reaches its
//! children too. Its stdout and stderr go to `logs/app_<name>_<YYYYMMDD>.log<NNNNN>`.
//!
//! It receives traffic only after its `health-path` answers with a status below 500. When it
//! exits it is started again after a backoff that doubles from 100 ms up to 30 s, and starts over
//! from 100 ms once a run stayed healthy for 30 s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

use crate::deploy::Deployment;
use crate::logfile::{LogFile, Logger, Rotation};

/// Time a stopped process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const HEALTHY_RESET: Duration = Duration::from_secs(30);
const PROBE_EVERY: Duration = Duration::from_millis(25);

/// Why a process did not become healthy.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    #[error("stopped")]
    Stopped,
    #[error("supervisor ended")]
    Ended,
    #[error("did not become healthy within {}", crate::engine::web::fmt_duration(*.0))]
    NotHealthy(Duration),
    #[error("no free port: {0}")]
    NoPort(Arc<std::io::Error>),
    #[error("command {0:?} must be a path inside the deploy image (no `..`, not absolute)")]
    OutsideImage(String),
    #[error("cannot run {command:?} (in {}): {error}", image.display())]
    Spawn {
        command: String,
        image: PathBuf,
        error: Arc<std::io::Error>,
    },
    #[error("exited during start: {0}")]
    Exited(std::process::ExitStatus),
    #[error("{path} did not answer within {}", crate::engine::web::fmt_duration(*within))]
    NoAnswer { path: String, within: Duration },
}

/// Where a supervised process is.
#[derive(Debug, Clone)]
pub enum ProcState {
    /// Starting (or restarting) and not yet healthy.
    Starting,
    /// Healthy, listening on 127.0.0.1 at this port.
    Ready(u16),
    /// The last start failed; it will be tried again after a backoff.
    Failed(StartError),
    /// Stopped for good.
    Stopped,
}

/// What the supervisor runs. Equal specs mean the running process can be kept.
#[derive(Debug, Clone)]
pub struct ProcSpec {
    pub app: String,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub deployment: Deployment,
}

impl PartialEq for ProcSpec {
    fn eq(&self, o: &Self) -> bool {
        self.app == o.app
            && self.command == o.command
            && self.args == o.args
            && self.env == o.env
            && same_content(&self.deployment, &o.deployment)
    }
}

/// Whether two deployments put the same content in the same places (whether the second one
/// reused the image, and the warnings it found, do not matter).
pub fn same_content(a: &Deployment, b: &Deployment) -> bool {
    a.fingerprint == b.fingerprint
        && a.image == b.image
        && a.generated == b.generated
        && a.work_dir == b.work_dir
        && a.library_path == b.library_path
}

/// Live settings: read at each start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcLive {
    pub health_path: String,
    pub start_timeout: Duration,
}

#[derive(Debug)]
pub struct Supervisor {
    pub spec: ProcSpec,
    live: Arc<RwLock<ProcLive>>,
    state: watch::Receiver<ProcState>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pid: Arc<Mutex<Option<u32>>>,
}

impl Supervisor {
    /// Starts supervising (the first start begins at once).
    pub fn start(
        spec: ProcSpec,
        live: ProcLive,
        logs_dir: PathBuf,
        rotation: Rotation,
        logger: Option<Logger>,
    ) -> Supervisor {
        let (state_tx, state) = watch::channel(ProcState::Starting);
        let (stop, stop_rx) = watch::channel(false);
        let live = Arc::new(RwLock::new(live));
        let pid = Arc::new(Mutex::new(None));
        let run = Run {
            spec: spec.clone(),
            live: Arc::clone(&live),
            state: state_tx,
            stop: stop_rx,
            logs_dir,
            rotation,
            logger,
            pid: Arc::clone(&pid),
        };
        let task = tokio::spawn(run.run());
        Supervisor {
            spec,
            live,
            state,
            stop,
            task: Mutex::new(Some(task)),
            pid,
        }
    }

    pub fn state(&self) -> ProcState {
        self.state.borrow().clone()
    }

    /// The port to proxy to, if the process is healthy now.
    pub fn port(&self) -> Option<u16> {
        match *self.state.borrow() {
            ProcState::Ready(p) => Some(p),
            _ => None,
        }
    }

    /// The pid of the running child, if any.
    pub fn pid(&self) -> Option<u32> {
        self.pid.lock().ok().and_then(|p| *p)
    }

    pub fn set_live(&self, live: ProcLive) {
        if let Ok(mut l) = self.live.write() {
            *l = live;
        }
    }

    /// Waits until the process is healthy (`Ok(port)`) or its first start failed or `timeout`
    /// passed (`Err(why)`).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<u16, StartError> {
        let mut rx = self.state.clone();
        let wait = rx.wait_for(|s| !matches!(s, ProcState::Starting));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) => match &*s {
                ProcState::Ready(p) => Ok(*p),
                ProcState::Failed(why) => Err(why.clone()),
                _ => Err(StartError::Stopped),
            },
            Ok(Err(_)) => Err(StartError::Ended),
            Err(_) => Err(StartError::NotHealthy(timeout)),
        }
    }

    /// Stops the process (SIGTERM, then SIGKILL) and the supervision; waits for both.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // A supervisor dropped without `stop` still must not leave its process behind.
        let _ = self.stop.send(true);
    }
}

struct Run {
    spec: ProcSpec,
    live: Arc<RwLock<ProcLive>>,
    state: watch::Sender<ProcState>,
    stop: watch::Receiver<bool>,
    logs_dir: PathBuf,
    rotation: Rotation,
    logger: Option<Logger>,
    pid: Arc<Mutex<Option<u32>>>,
}

impl Run {
    fn log(&self, id: &str, warn: bool, msg: &str) {
        if let Some(l) = &self.logger {
            if warn {
                l.warn(id, msg);
            } else {
                l.info(id, msg);
            }
        }
    }

    /// A step logged at the `debug` level (`logging.level = "debug"`).
    fn debug(&self, id: &str, msg: &str) {
        if let Some(l) = &self.logger {
            l.debug(id, &format!("Application {}: {msg}", self.spec.app));
        }
    }

    /// Stops the child (see [`terminate`]), logging each step at the `debug` level.
    async fn stop_child(&self, child: &mut tokio::process::Child, why: &str) {
        let pid = child.id().unwrap_or(0);
        self.debug(
            "WEB-0208",
            &format!(
                "stopping pid {pid} ({why}): SIGTERM to its process group, SIGKILL after {}.",
                crate::engine::web::fmt_duration(STOP_GRACE)
            ),
        );
        let (status, killed) = terminate(child).await;
        self.debug(
            "WEB-0209",
            &format!(
                "pid {pid} stopped{}: {status}.",
                if killed {
                    " (killed: it did not stop within the grace period)"
                } else {
                    ""
                }
            ),
        );
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    async fn run(mut self) {
        let app_log = LogFile::open(
            &self.logs_dir,
            &format!("app_{}", self.spec.app),
            self.rotation,
        )
        .ok()
        .map(|f| Arc::new(Mutex::new(f)));
        let mut backoff = BACKOFF_START;
        while !self.stopping() {
            let live = self.live.read().map(|l| l.clone()).unwrap_or(ProcLive {
                health_path: "/".into(),
                start_timeout: Duration::from_secs(30),
            });
            let outcome = self.once(&live, app_log.clone()).await;
            if self.stopping() {
                break;
            }
            match outcome {
                Ok(healthy_for) if healthy_for >= HEALTHY_RESET => backoff = BACKOFF_START,
                Ok(_) => {}
                Err(why) => {
                    self.log(
                        "WEB-0203",
                        true,
                        &format!("Application {} failed to start: {why}", self.spec.app),
                    );
                    let _ = self.state.send(ProcState::Failed(why));
                }
            }
            self.log(
                "WEB-0204",
                true,
                &format!(
                    "Application {} is not running; restarting in {}.",
                    self.spec.app,
                    crate::engine::web::fmt_duration(backoff)
                ),
            );
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.stop.changed() => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        let _ = self.state.send(ProcState::Stopped);
    }

    /// One run of the process: start, wait healthy, wait for the exit. `Ok(time healthy)` if it
    /// became healthy, `Err(why)` if it never did.
    async fn once(
        &mut self,
        live: &ProcLive,
        app_log: Option<Arc<Mutex<LogFile>>>,
    ) -> Result<Duration, StartError> {
        let port = free_port().map_err(|e| StartError::NoPort(Arc::new(e)))?;
        self.debug(
            "WEB-0206",
            &format!(
                "starting {:?} with arguments {:?} in {} on port {port}; health path {} (start-timeout {}).",
                self.spec.command,
                self.spec.args,
                self.spec.deployment.work_dir.display(),
                live.health_path,
                crate::engine::web::fmt_duration(live.start_timeout)
            ),
        );
        let mut child = self.command(port)?.spawn().map_err(|e| StartError::Spawn {
            command: self.spec.command.clone(),
            image: self.spec.deployment.image.clone(),
            error: Arc::new(e),
        })?;
        let pid = child.id();
        if let Ok(mut p) = self.pid.lock() {
            *p = pid;
        }
        if let Some(out) = child.stdout.take() {
            tokio::spawn(copy_lines(out, app_log.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(copy_lines(err, app_log));
        }
        self.log(
            "WEB-0201",
            false,
            &format!(
                "Application {} started (pid {}, port {port}).",
                self.spec.app,
                pid.unwrap_or(0)
            ),
        );
        let started = Instant::now();
        let deadline = started + live.start_timeout;
        let mut probes = 0u32;
        let healthy = loop {
            if self.stopping() {
                break Err(StartError::Stopped);
            }
            if let Ok(Some(status)) = child.try_wait() {
                break Err(StartError::Exited(status));
            }
            if probe(port, &live.health_path).await {
                self.debug(
                    "WEB-0207",
                    &format!(
                        "health path {} answered on port {port} after {} ms ({} probe(s)).",
                        live.health_path,
                        started.elapsed().as_millis(),
                        probes + 1
                    ),
                );
                break Ok(());
            }
            if probes == 0 {
                self.debug(
                    "WEB-0207",
                    &format!(
                        "health path {} not answering on port {port} yet; probing every {} ms.",
                        live.health_path,
                        PROBE_EVERY.as_millis()
                    ),
                );
            }
            probes += 1;
            if Instant::now() >= deadline {
                break Err(StartError::NoAnswer {
                    path: live.health_path.clone(),
                    within: live.start_timeout,
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(PROBE_EVERY) => {}
                _ = self.stop.changed() => {}
            }
        };
        if let Err(why) = healthy {
            self.stop_child(&mut child, "not healthy").await;
            return Err(why);
        }
        let since = Instant::now();
        let _ = self.state.send(ProcState::Ready(port));
        self.log(
            "WEB-0202",
            false,
            &format!("Application {} is healthy on port {port}.", self.spec.app),
        );
        tokio::select! {
            status = child.wait() => {
                let _ = self.state.send(ProcState::Starting);
                let text = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                self.log("WEB-0205", true, &format!("Application {} exited: {text}.", self.spec.app));
            }
            _ = self.stop.changed() => {
                let _ = self.state.send(ProcState::Starting);
                self.stop_child(&mut child, "the application is stopped or replaced").await;
            }
        }
        if let Ok(mut p) = self.pid.lock() {
            *p = None;
        }
        Ok(since.elapsed())
    }

    fn command(&self, port: u16) -> Result<tokio::process::Command, StartError> {
        let d = &self.spec.deployment;
        let program = resolve_command(&self.spec.command, &d.image)?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&self.spec.args)
            .current_dir(&d.work_dir)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        for keep in ["PATH", "HOME", "LANG"] {
            if let Some(v) = std::env::var_os(keep) {
                cmd.env(keep, v);
            }
        }
        cmd.envs(&self.spec.env)
            .env("PORT", port.to_string())
            .env("STEWARD_APP", &self.spec.app)
            .env("STEWARD_DEPLOY_DIR", &d.image)
            .env("STEWARD_GENERATED_DIR", &d.generated)
            .env("STEWARD_WORK_DIR", &d.work_dir)
            .env("STEWARD_LIBRARY_PATH", d.library_path_var());
        Ok(cmd)
    }
}

/// The program for `command`: a path with a `/` is relative to the image and must stay inside
/// it; a bare name is the image's file of that name if there is one, else looked up in `PATH`
/// (so `python3` works).
fn resolve_command(command: &str, image: &std::path::Path) -> Result<PathBuf, StartError> {
    use std::path::Component;
    let p = std::path::Path::new(command);
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(StartError::OutsideImage(command.to_owned()));
    }
    let inside = image.join(p);
    if command.contains('/') || inside.is_file() {
        Ok(inside)
    } else {
        Ok(PathBuf::from(command))
    }
}

/// A port free on 127.0.0.1 now. Another program may take it before the child binds it; the
/// child then fails its start and the next attempt picks another port.
fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

/// Whether `GET path` on the port answers with a status below 500.
async fn probe(port: u16, path: &str) -> bool {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .ok()?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(hyper::header::HOST, format!("127.0.0.1:{port}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .ok()?;
        let resp = send.send_request(req).await.ok()?;
        Some(resp.status().as_u16() < 500)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// SIGTERM to the process group, SIGKILL after [`STOP_GRACE`]. Returns how the child ended and
/// whether it had to be killed.
async fn terminate(child: &mut tokio::process::Child) -> (String, bool) {
    let ended = |r: std::io::Result<std::process::ExitStatus>| {
        r.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
    };
    let Some(pid) = child.id() else {
        return (ended(child.wait().await), false);
    };
    let Ok(pgid) = i32::try_from(pid) else {
        return ("not signalled (pid out of range)".to_owned(), false);
    };
    // SAFETY: kill(2) with a negative pid signals the group this child leads.
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(r) => (ended(r), false),
        Err(_) => {
            // SAFETY: as above.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            (ended(child.wait().await), true)
        }
    }
}

async fn copy_lines(out: impl tokio::io::AsyncRead + Unpin, log: Option<Arc<Mutex<LogFile>>>) {
    use std::io::Write;
    let mut lines = BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(log) = &log
            && let Ok(mut f) = log.lock()
        {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}
