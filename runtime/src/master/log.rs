//! The Master's log lines, in the format every Steward component writes (docs/messages.md):
//! `[2026.11.24 05:29:53][2] [master] [Master-0010] message`, on standard error (systemd or
//! whoever started it decides where that goes) unless a sink is set: `steward master --log-dir`
//! sets one that writes the rotating `master_<YYYYMMDD>.log<NNNNN>` files (this crate cannot
//! depend on the runtime crate that has the writer). Each id is listed in docs/master.md.

use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// JEUS levels: lower is more serious.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Severe = 0,
    Warning = 1,
    Info = 2,
}

/// Where lines go instead of standard error: gets the level and the whole line, without newline.
pub type Sink = Box<dyn Fn(Level, &str) + Send + Sync>;

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sends every later line to `sink`. Only the first call counts (returns false after that).
pub fn set_sink(sink: Sink) -> bool {
    SINK.set(sink).is_ok()
}

pub fn log(level: Level, id: &str, message: &str) {
    // Continuation lines are indented, so one message stays one grep-able block.
    let message = message.trim_end().replace('\n', "\n    ");
    let line = format!("[{}][{}] [master] [{id}] {message}", stamp(), level as u8);
    if let Some(sink) = SINK.get() {
        sink(level, &line);
        return;
    }
    // One write of the whole line: concurrent tasks never interleave inside a line.
    let _ = std::io::stderr()
        .lock()
        .write_all(format!("{line}\n").as_bytes());
}

pub fn info(id: &str, message: &str) {
    log(Level::Info, id, message);
}

pub fn warning(id: &str, message: &str) {
    log(Level::Warning, id, message);
}

pub fn severe(id: &str, message: &str) {
    log(Level::Severe, id, message);
}

/// Repeats of one message id within this window are counted, not written.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);

/// Which repeated messages to write: at most one line per id per [`REPEAT_WINDOW`]; the next line
/// written says how many were left out. For what a flood or a persistent fault can repeat
/// endlessly (a disk that stays full, descriptors that stay exhausted).
#[derive(Debug, Default)]
pub struct Limiter {
    seen: std::collections::HashMap<String, (std::time::Instant, u64)>,
}

impl Limiter {
    /// `Some(n)`: write the line, mentioning `n` left out since the last one; `None`: leave it out.
    pub fn admit(&mut self, id: &str, now: std::time::Instant) -> Option<u64> {
        match self.seen.get_mut(id) {
            Some((last, skipped)) if now.saturating_duration_since(*last) < REPEAT_WINDOW => {
                *skipped += 1;
                None
            }
            Some((last, skipped)) => {
                *last = now;
                Some(std::mem::take(skipped))
            }
            None => {
                self.seen.insert(id.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

/// Like [`log`], rate-limited per id by [`Limiter`].
pub fn limited(level: Level, id: &str, message: &str) {
    static LIMITER: std::sync::Mutex<Option<Limiter>> = std::sync::Mutex::new(None);
    let admitted = match LIMITER.lock() {
        Ok(mut l) => l
            .get_or_insert_with(Limiter::default)
            .admit(id, std::time::Instant::now()),
        Err(_) => Some(0),
    };
    match admitted {
        Some(0) => log(level, id, message),
        Some(n) => log(
            level,
            id,
            &format!("{message} ({n} more like this in the last {REPEAT_WINDOW:?} not logged)"),
        ),
        None => {}
    }
}

/// Local time as `YYYY.MM.DD HH:MM:SS`; the C library knows the machine's time zone.
fn stamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as libc::time_t;
    // SAFETY: `tm` is plain data; localtime_r fills it and keeps no reference to it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        // Fall back to UTC, from the RFC 3339 form.
        let t = reconciler::pin::now_rfc3339();
        return t.trim_end_matches('Z').replace('-', ".").replace('T', " ");
    }
    format!(
        "{:04}.{:02}.{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Tells whoever started the Master (systemd `Type=notify`, or a launcher) its state, over the
/// sd_notify protocol: one datagram to the unix socket named by `NOTIFY_SOCKET` (`@name`: the
/// abstract namespace). Without the variable (started by hand) this does nothing. A failure is
/// logged, never fatal: the Master serves either way.
pub fn sd_notify(state: &str) {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = socket.to_string_lossy().into_owned();
    let addr = match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => SocketAddr::from_pathname(&socket),
    };
    let sent = addr.and_then(|a| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &a));
    if let Err(e) = sent {
        warning(
            "Master-0004",
            &format!("Cannot notify NOTIFY_SOCKET={socket}: {e}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_writes_one_line_per_window_and_counts_the_rest() {
        let mut l = Limiter::default();
        let t0 = std::time::Instant::now();
        assert_eq!(l.admit("Master-0019", t0), Some(0));
        assert_eq!(l.admit("Master-0019", t0 + Duration::from_secs(1)), None);
        assert_eq!(l.admit("Master-0019", t0 + Duration::from_secs(2)), None);
        assert_eq!(l.admit("Master-0060", t0), Some(0), "ids are apart");
        assert_eq!(l.admit("Master-0019", t0 + REPEAT_WINDOW), Some(2));
        assert_eq!(l.admit("Master-0019", t0 + REPEAT_WINDOW * 3), Some(0));
    }

    #[test]
    fn stamp_shape() {
        let s = super::stamp();
        assert_eq!(s.len(), 19, "{s}");
        assert_eq!(&s[4..5], ".");
        assert_eq!(&s[10..11], " ");
    }
}
