//! The Master's log lines: `tracing` events of the process's subscriber, which `launch::run`
//! installs (`[2026.11.24 05:29:53][2] [master] [Master-0010] message`, on standard error or into
//! the rotating `master_<YYYYMMDD>.log<NNNNN>` files). These free functions keep the Master's call
//! sites short (`log::info("Master-0010", …)`) without a logger passed to every task. Each id is
//! listed in docs/messages.md.

use std::time::Duration;

pub use crate::logging::Level;

#[track_caller]
pub fn log(level: Level, id: &str, message: &str) {
    crate::logging::event(level, id, message);
}

#[track_caller]
pub fn info(id: &str, message: &str) {
    log(Level::Info, id, message);
}

#[track_caller]
pub fn warning(id: &str, message: &str) {
    log(Level::Warning, id, message);
}

#[track_caller]
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
#[track_caller]
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

/// Tells whoever started the Master (systemd `Type=notify`, or a launcher) its state, over the
/// sd_notify protocol: one datagram to the unix socket named by `NOTIFY_SOCKET` (`@name`: the
/// abstract namespace). Without the variable (started by hand) this does nothing. A failure is
/// logged, never fatal: the Master serves either way.
pub fn sd_notify(state: &str) {
    if let Err(e) = crate::notify::notify(state) {
        warning("Master-0004", &format!("Cannot notify {e}"));
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
}
