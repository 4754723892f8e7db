//! UTC stamps as Steward writes them: RFC 3339 (pins, history, reports) and the access log's
//! common log format. The calendar is jiff's.

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::Timestamp;

/// `t` to the second; times before the epoch count as the epoch.
fn utc(t: SystemTime) -> Timestamp {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    i64::try_from(secs)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// `t` as RFC 3339 UTC with seconds (`2026-11-24T05:13:39Z`).
pub fn rfc3339(t: SystemTime) -> String {
    utc(t).strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Now, as [`rfc3339`].
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// `t` in the common log format, UTC (`10/Oct/2000:13:55:36 +0000`).
pub fn clf(t: SystemTime) -> String {
    utc(t).strftime("%d/%b/%Y:%H:%M:%S +0000").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_238_019_900);
        assert_eq!(rfc3339(t), "2026-11-21T05:13:39Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn formats_clf() {
        // 2000-02-29T12:34:56Z, a leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_827_696);
        assert_eq!(clf(t), "29/Feb/2000:12:34:56 +0000");
        assert_eq!(clf(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
    }
}
