//! Starting a Steward process in the background and knowing when it is ready, as every launcher
//! does (`start-master`; meant for `start-server` too): spawn it detached with a notify socket of
//! our own, wait for `READY=1` (or its exit, or a deadline), and, for `--verbose`, stay attached
//! until it stops, passing SIGINT/SIGTERM on as a graceful stop.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::notify::{self, Listener, NotifyError};

#[derive(Debug, thiserror::Error)]
pub enum BackgroundError {
    #[error("cannot start {exe}: {error}")]
    Spawn { exe: PathBuf, error: std::io::Error },
    #[error(transparent)]
    Notify(#[from] NotifyError),
}

/// How the wait for readiness ended.
#[derive(Debug)]
pub enum Boot {
    /// `READY=1` arrived; the whole notification (`STATUS=…`, `MAINPID=…`).
    Ready(String),
    /// The process exited before it was ready.
    Exited(ExitStatus),
    /// Neither within the time allowed; the process still runs (the caller decides its fate).
    TimedOut,
}

/// Spawns `cmd` detached: its own session (no controlling terminal, so it outlives the shell and
/// a Ctrl-C meant for the launcher does not reach it), standard input closed, and
/// `NOTIFY_SOCKET` naming `listener`. Standard output and error are the caller's choice.
pub fn spawn_detached(cmd: &mut Command, listener: &Listener) -> Result<Child, BackgroundError> {
    cmd.env("NOTIFY_SOCKET", listener.name())
        .stdin(Stdio::null());
    crate::process::detach(cmd)
        .spawn()
        .map_err(|error| BackgroundError::Spawn {
            exe: PathBuf::from(cmd.get_program()),
            error,
        })
}

/// Waits up to `timeout` for `READY=1` on `listener` from `child`, noticing at once (within 20 ms)
/// if it exits first.
pub fn wait_ready(
    listener: &Listener,
    child: &mut Child,
    timeout: Duration,
) -> Result<Boot, BackgroundError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(msg) = listener.recv(Duration::from_millis(20))?
            && notify::field(&msg, "READY") == Some("1")
        {
            return Ok(Boot::Ready(msg));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(Boot::Exited(status));
        }
        if Instant::now() >= deadline {
            return Ok(Boot::TimedOut);
        }
    }
}

/// What [`attend`] reports while it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attending {
    /// SIGINT or SIGTERM arrived; the child was sent SIGTERM.
    Stopping,
    /// The child outlived `stop_timeout` after SIGTERM and was killed.
    Killed,
}

/// `--verbose`: waits until `child` exits. SIGINT/SIGTERM to this process stop it gracefully:
/// SIGTERM, then SIGKILL after `stop_timeout`. `report` hears of each step (for the log).
pub fn attend(
    child: &mut Child,
    stop_timeout: Duration,
    mut report: impl FnMut(Attending),
) -> std::io::Result<ExitStatus> {
    crate::signals::install();
    let mut deadline: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        match deadline {
            None if crate::signals::stop_requested() => {
                report(Attending::Stopping);
                // Already gone is fine: the next try_wait sees it.
                let _ = crate::process::signal(child.id() as i32, libc::SIGTERM);
                deadline = Some(Instant::now() + stop_timeout);
            }
            Some(d) if Instant::now() >= d => {
                report(Attending::Killed);
                child.kill()?;
                return child.wait();
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
