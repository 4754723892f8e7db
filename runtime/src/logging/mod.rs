//! Logging: one `tracing` subscriber per process (a [`Logger`]), whose [`line`] layer writes JEUS
//! lines (`[2026.11.24 05:30:01][2] [launcher] [Launcher-0052] …`) or JSON lines into the rotating
//! `<log>_<YYYYMMDD>.log<NNNNN>` files of [`crate::logfile`], echoing them on the console if asked.
//! The level is live through a reload handle; the format and rotation are live too.
//!
//! [`Logger`] is a facade over `tracing` events: it keeps every message id at the call site
//! (`log.info("SERVER-0010", …)`) and keeps a log per value, so a test (or a process) can hold
//! its own. [`Logger::install`] makes it the process's global subscriber, so events from
//! `tracing` macros and [`event`] land in the same file.

pub mod line;

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::Dispatch;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{Registry, reload};

use crate::logfile::{LogFile, Rotation};
pub use line::Format;

/// A log line's level, numbered as JEUS numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Severe = 0,
    Warning = 1,
    Info = 2,
    /// `debug`.
    Fine = 4,
    /// `trace`.
    Finer = 5,
}

impl Level {
    fn filter(self) -> LevelFilter {
        match self {
            Level::Severe => LevelFilter::ERROR,
            Level::Warning => LevelFilter::WARN,
            Level::Info => LevelFilter::INFO,
            Level::Fine => LevelFilter::DEBUG,
            Level::Finer => LevelFilter::TRACE,
        }
    }

    /// The JEUS number of a `tracing` level.
    pub fn jeus(level: tracing::Level) -> u8 {
        match level {
            tracing::Level::ERROR => 0,
            tracing::Level::WARN => 1,
            tracing::Level::INFO => 2,
            tracing::Level::DEBUG => 4,
            tracing::Level::TRACE => 5,
        }
    }
}

/// Where a [`Logger`] also prints its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    None,
    Stdout,
    Stderr,
}

/// What the line layer writes to: the file, the console, and how lines look. Shared by the layer
/// and its [`Logger`]s, behind one lock, so each line is one write.
#[derive(Debug)]
pub struct Output {
    file: Option<LogFile>,
    echo: Echo,
    format: Format,
    /// The third bracket of a line when an event names no `thread`: `launcher`, `master`, the
    /// server's name.
    thread: Arc<str>,
}

impl Output {
    /// Writes one whole line (without newline) to the file and the console.
    fn write_line(&mut self, line: &str) {
        if let Some(f) = self.file.as_mut() {
            // A full disk must not stop the server; the line is lost, the work goes on.
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
        match self.echo {
            Echo::None => {}
            Echo::Stdout => {
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
            Echo::Stderr => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        }
    }
}

type Shared = Arc<Mutex<Output>>;

fn lock(out: &Shared) -> MutexGuard<'_, Output> {
    // A thread that panicked while writing leaves a usable output: keep logging.
    out.lock().unwrap_or_else(|p| p.into_inner())
}

/// A process's log: a `tracing` subscriber and the handles that change it live. Cheap to clone,
/// safe to share; clones are the same log.
#[derive(Clone)]
pub struct Logger {
    dispatch: Dispatch,
    level: reload::Handle<LevelFilter, Registry>,
    out: Shared,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger").field("out", &self.out).finish()
    }
}

impl Logger {
    /// A log writing to `file` (if any) and echoing as asked; `thread` is the label in the third
    /// bracket (`launcher`, the server's name). Everything is written until [`Logger::set_level`].
    pub fn new(file: Option<LogFile>, echo: Echo, thread: &str) -> Logger {
        let out: Shared = Arc::new(Mutex::new(Output {
            file,
            echo,
            format: Format::Jeus,
            thread: thread.into(),
        }));
        let (filter, level) = reload::Layer::new(LevelFilter::TRACE);
        let subscriber = Registry::default()
            .with(filter)
            .with(line::Lines::new(out.clone()));
        Logger {
            dispatch: Dispatch::new(subscriber),
            level,
            out,
        }
    }

    /// Makes this log the process's global subscriber: `tracing` events from anywhere in the
    /// process (and [`event`]) are written by it. Only the first call in a process counts.
    pub fn install(&self) -> bool {
        tracing::dispatcher::set_global_default(self.dispatch.clone()).is_ok()
    }

    /// Lines less severe than `level` are dropped from now on (through the reload handle).
    pub fn set_level(&self, level: Level) {
        // Inside this log's scope: with one subscriber in the process, `tracing` recomputes
        // which call sites are enabled against the current default only.
        tracing::dispatcher::with_default(&self.dispatch, || {
            let _ = self.level.reload(level.filter());
        });
    }

    /// Applies `rotation` from the next write on.
    pub fn set_rotation(&self, rotation: Rotation) {
        if let Some(f) = lock(&self.out).file.as_mut() {
            f.set_rotation(rotation);
        }
    }

    pub fn set_echo(&self, echo: Echo) {
        lock(&self.out).echo = echo;
    }

    /// JEUS or JSON lines from the next line on.
    pub fn set_format(&self, format: Format) {
        lock(&self.out).format = format;
    }

    pub fn path(&self) -> Option<PathBuf> {
        lock(&self.out).file.as_ref()?.path().map(PathBuf::from)
    }

    /// A second handle on the current log file, for a child process's stderr.
    pub fn clone_file(&self) -> Option<File> {
        lock(&self.out).file.as_ref()?.try_clone_file()
    }

    /// Whether lines of `level` are written now (the level is live).
    pub fn enables(&self, level: Level) -> bool {
        self.level
            .with_current(|max| level.filter() <= *max)
            .unwrap_or(true)
    }

    /// Writes `message` with `id` at `level`, as a `tracing` event of this log.
    #[track_caller]
    pub fn log(&self, level: Level, id: &str, message: &str) {
        let at = std::panic::Location::caller();
        tracing::dispatcher::with_default(&self.dispatch, || emit(level, id, message, at));
    }

    /// Writes an already formatted line as it is (a server's line copied into the launcher log).
    pub fn raw(&self, level: Level, line: &str) {
        if self.enables(level) {
            lock(&self.out).write_line(line);
        }
    }

    #[track_caller]
    pub fn debug(&self, id: &str, message: &str) {
        self.log(Level::Fine, id, message);
    }

    #[track_caller]
    pub fn info(&self, id: &str, message: &str) {
        self.log(Level::Info, id, message);
    }

    #[track_caller]
    pub fn warn(&self, id: &str, message: &str) {
        self.log(Level::Warning, id, message);
    }

    #[track_caller]
    pub fn severe(&self, id: &str, message: &str) {
        self.log(Level::Severe, id, message);
    }
}

/// Writes `message` with `id` at `level` to the process's global subscriber (see
/// [`Logger::install`]); nowhere if none is installed.
#[track_caller]
pub fn event(level: Level, id: &str, message: &str) {
    emit(level, id, message, std::panic::Location::caller());
}

/// The one place events are made: `tracing` needs a level known at compile time per call site.
fn emit(level: Level, id: &str, message: &str, at: &std::panic::Location<'_>) {
    let (file, line) = (at.file(), at.line());
    match level {
        Level::Severe => tracing::error!(id, file, line, "{message}"),
        Level::Warning => tracing::warn!(id, file, line, "{message}"),
        Level::Info => tracing::info!(id, file, line, "{message}"),
        Level::Fine => tracing::debug!(id, file, line, "{message}"),
        Level::Finer => tracing::trace!(id, file, line, "{message}"),
    }
}

#[cfg(test)]
mod tests;
