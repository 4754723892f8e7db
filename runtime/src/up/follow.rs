//! How `steward up` follows what it started: one combined log of the children's lines, and each
//! server by its home — pid file, launcher and server logs — rather than by a process handle, so
//! restarts (a new process, from a new launcher) are followed too.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex, mpsc};

use crate::layout::ServerHome;
use crate::logfile::{self, Mark};
use crate::process::{self, Running};

/// Serializes the children's lines into one log.
#[derive(Clone)]
pub(super) struct Log {
    pub(super) out: Arc<Mutex<std::io::Stdout>>,
    pub(super) width: usize,
}

impl Log {
    pub(super) fn line(&self, who: &str, text: &str) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "{who:>w$} | {text}", w = self.width);
        let _ = out.flush();
    }

    /// Copies `stream` line by line; the receiver disconnects when the stream has ended.
    pub(super) fn follow(
        &self,
        who: &str,
        stream: impl Read + Send + 'static,
    ) -> mpsc::Receiver<()> {
        let (log, who) = (self.clone(), who.to_owned());
        let (done, ended) = mpsc::channel();
        std::thread::spawn(move || {
            let _done = done;
            for line in BufReader::new(stream).lines() {
                match line {
                    Ok(l) => log.line(&who, &l),
                    Err(_) => break,
                }
            }
        });
        ended
    }
}

/// A server as `up` follows it: by its home (pid file, logs), not by a process handle.
pub(super) struct Tracked {
    pub(super) home: ServerHome,
    launcher_log: Mark,
    server_log: Mark,
    /// Whether the last launcher-log line shown was the launcher's own (for continuation lines).
    own: bool,
    pid: Option<i32>,
    /// `up` is stopping everything: a stop is expected, not news.
    pub(super) stopping: bool,
}

impl Tracked {
    pub(super) fn new(home: ServerHome) -> Tracked {
        let logs = home.logs();
        Tracked {
            launcher_log: logfile::mark(&logs, "launcher"),
            server_log: logfile::mark(&logs, "server"),
            own: false,
            pid: None,
            stopping: false,
            home,
        }
    }

    /// Prints what the server and its launchers logged since the last call, and pid changes.
    pub(super) fn poll(&mut self, log: &Log) {
        let logs = self.home.logs();
        let (text, mark) = logfile::read_since(&logs, "launcher", &self.launcher_log);
        self.launcher_log = mark;
        for line in text.lines() {
            self.own = launcher_own(line, self.own);
            if self.own {
                log.line(&self.home.name, line);
            }
        }
        let (text, mark) = logfile::read_since(&logs, "server", &self.server_log);
        self.server_log = mark;
        for line in text.lines() {
            log.line(&self.home.name, line);
        }
        let now = match process::running(&self.home) {
            Running::Yes { pid, .. } => Some(pid),
            Running::No | Running::Stale { .. } => None,
        };
        match change(self.pid, now) {
            Some(Change::Stopped(pid)) if self.stopping => {
                log.line("up", &format!("{} stopped [pid : {pid}]", self.home.name));
            }
            Some(c) => log.line("up", &c.describe(&self.home.name)),
            None => {}
        }
        self.pid = now;
    }

    /// True while a launcher holds the server's start lock (it is starting the server). Only
    /// asked while `up` stops everything: the probe holds the lock for an instant, and a launcher
    /// starting in that instant gives up (Launcher-0062), which is then what `up` wants anyway.
    pub(super) fn starting(&self) -> bool {
        let path = self.home.start_lock();
        match std::fs::File::open(&path) {
            Ok(f) => matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
            Err(_) => false,
        }
    }
}

/// Whether a launcher-log line is the launcher's own (shown) or a copy of the server's boot log
/// (not shown: the server log is followed directly). Lines indented by four spaces continue the
/// line before; lines that are not log lines at all are what the server process printed outside
/// its logger (a crash), and are shown.
fn launcher_own(line: &str, previous_own: bool) -> bool {
    if line.starts_with("    ") {
        previous_own
    } else if line.starts_with('[') {
        line.contains("] [launcher] [")
    } else if line.starts_with("{\"time\":") {
        // A server's JSON line (`logging.format = "json"`); the launcher writes JEUS lines only.
        false
    } else {
        true
    }
}

/// What a server's pid file says happened between two looks.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Started(i32),
    Restarted { from: i32, to: i32 },
    Stopped(i32),
}

impl Change {
    fn describe(&self, name: &str) -> String {
        match self {
            Change::Started(pid) => format!("{name} is running [pid : {pid}]"),
            Change::Restarted { from, to } => {
                format!("{name} was restarted [pid : {from} -> {to}]")
            }
            Change::Stopped(pid) => format!(
                "{name} stopped [pid : {pid}]; still following it (a restart, or `steward start-server`, brings it back)"
            ),
        }
    }
}

fn change(before: Option<i32>, now: Option<i32>) -> Option<Change> {
    match (before, now) {
        (None, Some(p)) => Some(Change::Started(p)),
        (Some(a), Some(b)) if a != b => Some(Change::Restarted { from: a, to: b }),
        (Some(a), None) => Some(Change::Stopped(a)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_changes_are_named() {
        assert_eq!(change(None, Some(5)), Some(Change::Started(5)));
        assert_eq!(
            change(Some(5), Some(6)),
            Some(Change::Restarted { from: 5, to: 6 })
        );
        assert_eq!(change(Some(6), None), Some(Change::Stopped(6)));
        assert_eq!(change(Some(6), Some(6)), None);
        assert_eq!(change(None, None), None);
    }

    #[test]
    fn only_the_launchers_own_lines_are_shown() {
        let own = "[2026.11.24 05:30:01][2] [launcher] [Launcher-0040] RUNNING";
        let copy = "[2026.11.24 05:30:01][2] [main] [SERVER-0001] booting";
        assert!(launcher_own(own, false));
        assert!(launcher_own("    continued", true));
        assert!(!launcher_own(copy, true));
        assert!(!launcher_own("    continued", false));
        assert!(launcher_own("thread 'main' panicked at …", false));
        assert!(!launcher_own(
            r#"{"time":"2026-11-24T05:30:01.000+00:00"}"#,
            true
        ));
    }
}
