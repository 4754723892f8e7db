//! Local wall-clock time for log lines and log file names, without a date crate: the C library
//! already knows the machine's time zone (`localtime_r`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A broken-down local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

impl Local {
    pub fn now() -> Local {
        Local::at(SystemTime::now())
    }

    pub fn at(t: SystemTime) -> Local {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = d.as_secs() as libc::time_t;
        // SAFETY: `tm` is plain data; localtime_r writes it and keeps no reference to it.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
        if !ok {
            return Local::utc(d.as_secs(), d.subsec_millis());
        }
        Local {
            year: tm.tm_year + 1900,
            month: (tm.tm_mon + 1) as u32,
            day: tm.tm_mday as u32,
            hour: tm.tm_hour as u32,
            minute: tm.tm_min as u32,
            second: tm.tm_sec as u32,
            millis: d.subsec_millis(),
        }
    }

    /// UTC from Unix seconds, used if localtime fails.
    fn utc(secs: u64, millis: u32) -> Local {
        let c = reconciler::time::civil(secs as i64);
        Local {
            year: c.year as i32,
            month: c.month,
            day: c.day,
            hour: c.hour,
            minute: c.minute,
            second: c.second,
            millis,
        }
    }

    pub fn date_stamp(&self) -> String {
        format!("{:04}{:02}{:02}", self.year, self.month, self.day)
    }

    /// `YYYY.MM.DD HH:MM:SS`, as JEUS log lines show it.
    pub fn log_stamp(&self) -> String {
        format!(
            "{:04}.{:02}.{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
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

    #[test]
    fn utc_fallback_knows_the_calendar() {
        // 2024-02-29 12:34:56 UTC
        let l = Local::utc(1_709_210_096, 0);
        assert_eq!((l.year, l.month, l.day), (2024, 2, 29));
        assert_eq!((l.hour, l.minute, l.second), (12, 34, 56));
        assert_eq!(Local::utc(0, 0).date_stamp(), "19700101");
    }
}
