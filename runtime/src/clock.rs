//! Local wall-clock time for log lines and log file names, in the machine's time zone: `TZ` (a
//! zone name, a zone file, or a POSIX rule), else `/etc/localtime`, else UTC.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use jiff::{Timestamp, Zoned, tz::TimeZone};

/// A moment in local time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local(Zoned);

impl Local {
    pub fn now() -> Local {
        Local(Timestamp::now().to_zoned(zone()))
    }

    pub fn at(t: SystemTime) -> Local {
        let t = Timestamp::try_from(t).unwrap_or(Timestamp::UNIX_EPOCH);
        Local(t.to_zoned(zone()))
    }

    /// `YYYYMMDD`, as log file names carry it.
    pub fn date_stamp(&self) -> String {
        self.0.strftime("%Y%m%d").to_string()
    }

    /// `YYYY.MM.DD HH:MM:SS`, as JEUS log lines show it.
    pub fn log_stamp(&self) -> String {
        self.0.strftime("%Y.%m.%d %H:%M:%S").to_string()
    }

    /// RFC 3339 with milliseconds and the local offset (`2026-11-24T05:29:53.120+09:00`), for
    /// JSON log lines.
    pub fn rfc3339_millis(&self) -> String {
        self.0.strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string()
    }
}

/// The process's time zone, read once. Read from its zone file directly: jiff's
/// `TimeZone::system()` first lists the whole zoneinfo tree, milliseconds at every process start
/// (each launcher and server pays it).
fn zone() -> TimeZone {
    static ZONE: OnceLock<TimeZone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let tz = std::env::var("TZ").ok().filter(|t| !t.is_empty());
        let from_file = |path: &std::path::Path, name: &str| {
            let bytes = std::fs::read(path).ok()?;
            TimeZone::tzif(name, &bytes).ok()
        };
        match tz.as_deref().map(|t| t.trim_start_matches(':')) {
            Some(t) if t.starts_with('/') => from_file(t.as_ref(), t),
            Some(t) => from_file(&std::path::Path::new("/usr/share/zoneinfo").join(t), t)
                .or_else(|| TimeZone::posix(t).ok()),
            None => from_file("/etc/localtime".as_ref(), "Local"),
        }
        .unwrap_or(TimeZone::UTC)
    })
    .clone()
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps_in_a_fixed_zone() {
        // 2024-02-29 12:34:56.789 UTC, shown at +09:00.
        let t = Timestamp::from_millisecond(1_709_210_096_789).unwrap();
        let l = Local(t.to_zoned(TimeZone::fixed(jiff::tz::offset(9))));
        assert_eq!(l.date_stamp(), "20240229");
        assert_eq!(l.log_stamp(), "2024.02.29 21:34:56");
        assert_eq!(l.rfc3339_millis(), "2024-02-29T21:34:56.789+09:00");
    }

    #[test]
    fn now_has_the_log_shape() {
        let s = Local::at(UNIX_EPOCH + Duration::from_secs(86_400 * 365)).log_stamp();
        assert_eq!(s.len(), 19, "{s}");
        assert_eq!((&s[4..5], &s[10..11]), (".", " "));
    }
}
