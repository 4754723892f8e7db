//! Timer schedules (docs/components.md): 5-field cron expressions and when a schedule fires next,
//! in a time zone. Pure: the loader checks `schedule`, `time-zone` and `at` values with these, and
//! the component engine computes every firing with [`Schedule::next_after`].

use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;

use crate::values::ValueError;

/// A parsed 5-field cron expression: minute, hour, day of month, month, day of week.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    /// Bit n set: minute n (0–59) matches.
    minutes: u64,
    hours: u64,
    /// Bits 1–31.
    days: u64,
    /// Bits 1–12.
    months: u64,
    /// Bits 0–6, Sunday 0.
    weekdays: u64,
    /// Day of month and day of week were both restricted: as in cron, a day matching either
    /// fires (`0 0 1 * MON` is the 1st and every Monday).
    either_day: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// How far [`Cron::next_after`] looks: an expression that matches no day in this many days
/// (`0 0 30 2 *`) never fires. Five years cover every 29 February.
const SEARCH_DAYS: u32 = 5 * 366;

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// Where `names[0]` counts from.
    names_from: u32,
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &MONTHS,
        names_from: 1,
    },
    Field {
        // 7 is Sunday too (folded into 0 after parsing).
        name: "day of week",
        min: 0,
        max: 7,
        names: &WEEKDAYS,
        names_from: 0,
    },
];

impl Field {
    fn value(&self, text: &str, expr: &str) -> Result<u32, ValueError> {
        let lower = text.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == lower) {
            return Ok(i as u32 + self.names_from);
        }
        let n: u32 = text.parse().map_err(|_| {
            ValueError::from(format!(
                "`{expr}`: `{text}` is not a {} (write a number {}–{}{})",
                self.name,
                self.min,
                self.max,
                if self.names.is_empty() {
                    String::new()
                } else {
                    format!(" or a name like `{}`", self.names[0])
                }
            ))
        })?;
        if n < self.min || n > self.max {
            return Err(format!(
                "`{expr}`: {} {n} is out of range {}–{}",
                self.name, self.min, self.max
            )
            .into());
        }
        Ok(n)
    }

    /// One comma-separated field: `*`, `5`, `1-5`, `*/15`, `1-30/2`, `10/5`, names, lists.
    fn parse(&self, text: &str, expr: &str) -> Result<u64, ValueError> {
        let mut bits = 0u64;
        for item in text.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => {
                    let step: u32 = s.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        ValueError::from(format!(
                            "`{expr}`: step `{s}` in the {} field must be a positive number",
                            self.name
                        ))
                    })?;
                    (r, step)
                }
                None => (item, 1),
            };
            let (lo, hi) = if range == "*" {
                (self.min, self.max)
            } else if let Some((a, b)) = range.split_once('-') {
                let (a, b) = (self.value(a, expr)?, self.value(b, expr)?);
                if a > b {
                    return Err(format!(
                        "`{expr}`: range `{range}` in the {} field runs backwards",
                        self.name
                    )
                    .into());
                }
                (a, b)
            } else {
                let a = self.value(range, expr)?;
                // `10/5`: from 10 to the end, every 5.
                (a, if item.contains('/') { self.max } else { a })
            };
            let mut v = lo;
            while v <= hi {
                bits |= 1 << v;
                v += step;
            }
        }
        Ok(bits)
    }
}

fn has(bits: u64, n: i8) -> bool {
    (0..64).contains(&n) && bits & (1 << n) != 0
}

impl Cron {
    /// Parses `minute hour day-of-month month day-of-week`, or one of `@hourly`, `@daily`
    /// (`@midnight`), `@weekly`, `@monthly`, `@yearly` (`@annually`).
    pub fn parse(expr: &str) -> Result<Cron, ValueError> {
        let expanded = match expr.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!(
                "`{expr}` has {} field(s); a schedule has 5: minute hour day-of-month month day-of-week (e.g. `0 3 * * *`)",
                parts.len()
            )
            .into());
        }
        let mut bits = [0u64; 5];
        for (i, (f, text)) in FIELDS.iter().zip(&parts).enumerate() {
            bits[i] = f.parse(text, expr)?;
        }
        let weekdays = (bits[4] | (bits[4] >> 7)) & 0x7f;
        let cron = Cron {
            minutes: bits[0],
            hours: bits[1],
            days: bits[2],
            months: bits[3],
            weekdays,
            either_day: !parts[2].starts_with('*') && !parts[4].starts_with('*'),
        };
        if cron
            .next_after(Timestamp::UNIX_EPOCH, &TimeZone::UTC)
            .is_none()
        {
            return Err(format!("`{expr}` names no day that exists (e.g. 30 February)").into());
        }
        Ok(cron)
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = has(self.days, d.day());
        let dow = has(self.weekdays, d.weekday().to_sunday_zero_offset());
        if self.either_day {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// The first instant after `after` whose wall-clock time in `tz` matches. A time skipped by
    /// a daylight-saving change fires at the moment after the gap; a time that happens twice
    /// fires once, at the first.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(tz.clone()).datetime();
        let mut date = start.date();
        for _ in 0..SEARCH_DAYS {
            if has(self.months, date.month()) && self.day_matches(date) {
                for h in 0..24i8 {
                    if !has(self.hours, h) {
                        continue;
                    }
                    for m in 0..60i8 {
                        if !has(self.minutes, m) {
                            continue;
                        }
                        let civil = DateTime::from(date).with().hour(h).minute(m).build().ok()?;
                        if date == start.date() && civil <= start {
                            continue;
                        }
                        let Ok(z) = tz.to_ambiguous_zoned(civil).compatible() else {
                            continue;
                        };
                        if z.timestamp() > after {
                            return Some(z.timestamp());
                        }
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

/// The time zone named `name` (`UTC`, `Asia/Seoul`), from the system's time zone database.
pub fn time_zone(name: &str) -> Result<TimeZone, ValueError> {
    TimeZone::get(name).map_err(|_| {
        ValueError::from(format!(
            "`{name}` is not a time zone this machine knows; write an IANA name like `UTC` or `Asia/Seoul`"
        ))
    })
}

/// An RFC 3339 instant (`2027-01-01T00:00:00Z`, `2027-01-01T09:00:00+09:00`).
pub fn instant(text: &str) -> Result<Timestamp, ValueError> {
    text.parse::<Timestamp>().map_err(|_| {
        ValueError::from(format!(
            "`{text}` is not an RFC 3339 instant; write e.g. `2027-01-01T00:00:00Z` or `2027-01-01T09:00:00+09:00`"
        ))
    })
}

/// When a timer fires.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron expression read in a time zone.
    Cron { cron: Cron, tz: TimeZone },
    /// Every `every` from `anchor` (its creation): `anchor + every`, `anchor + 2·every`, …
    Every { anchor: Timestamp, every: Duration },
    /// Once.
    At(Timestamp),
}

impl Schedule {
    /// The first firing after `after`; `None` when there is none (an `at` already passed).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Cron { cron, tz } => cron.next_after(after, tz),
            Schedule::At(t) => (*t > after).then_some(*t),
            Schedule::Every { anchor, every } => {
                let step = i128::try_from(every.as_nanos()).ok().filter(|s| *s > 0)?;
                let since = after.as_nanosecond() - anchor.as_nanosecond();
                // The count of whole steps since the anchor, at least 1.
                let k = if since < 0 { 1 } else { since / step + 1 };
                Timestamp::from_nanosecond(anchor.as_nanosecond() + k * step).ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(expr: &str, tz: &str, after: &str) -> String {
        let tz = TimeZone::get(tz).unwrap();
        let t = Cron::parse(expr)
            .unwrap()
            .next_after(ts(after), &tz)
            .unwrap();
        t.to_string()
    }

    #[test]
    fn daily_at_three_in_seoul_is_six_in_the_evening_utc() {
        assert_eq!(
            next("0 3 * * *", "Asia/Seoul", "2027-01-01T00:00:00Z"),
            "2027-01-01T18:00:00Z"
        );
        // Exactly at a firing: the next one.
        assert_eq!(
            next("0 3 * * *", "Asia/Seoul", "2027-01-01T18:00:00Z"),
            "2027-01-02T18:00:00Z"
        );
        assert_eq!(
            next("0 3 * * *", "UTC", "2027-01-01T00:00:00Z"),
            "2027-01-01T03:00:00Z"
        );
    }

    #[test]
    fn steps_ranges_lists_and_names() {
        assert_eq!(
            next("*/15 * * * *", "UTC", "2027-01-01T00:07:30Z"),
            "2027-01-01T00:15:00Z"
        );
        assert_eq!(
            next("0 9-17/4 * * mon-fri", "UTC", "2027-01-01T18:00:00Z"),
            // 2027-01-01 is a Friday: next is Monday at 09:00.
            "2027-01-04T09:00:00Z"
        );
        assert_eq!(
            next("30 6 1,15 jan *", "UTC", "2027-01-02T00:00:00Z"),
            "2027-01-15T06:30:00Z"
        );
        assert_eq!(
            next("0 0 * * 7", "UTC", "2027-01-01T00:00:00Z"),
            "2027-01-03T00:00:00Z"
        );
        assert_eq!(
            next("@monthly", "UTC", "2027-01-01T00:00:00Z"),
            "2027-02-01T00:00:00Z"
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_both_restricted_match_either() {
        // The 13th, or any Friday: 2027-01-01 is a Friday, so the 8th comes first.
        assert_eq!(
            next("0 0 13 * fri", "UTC", "2027-01-02T00:00:00Z"),
            "2027-01-08T00:00:00Z"
        );
    }

    #[test]
    fn daylight_saving_gaps_fire_after_the_gap_and_folds_once() {
        // New York skipped 02:00–03:00 on 2027-03-14: 02:30 fires at 03:30 EDT (07:30Z).
        assert_eq!(
            next("30 2 * * *", "America/New_York", "2027-03-14T05:00:00Z"),
            "2027-03-14T07:30:00Z"
        );
        // 01:30 happened twice on 2027-11-07: it fires at the first (EDT, 05:30Z), then not
        // again that day.
        assert_eq!(
            next("30 1 * * *", "America/New_York", "2027-11-07T04:00:00Z"),
            "2027-11-07T05:30:00Z"
        );
        assert_eq!(
            next("30 1 * * *", "America/New_York", "2027-11-07T05:30:00Z"),
            "2027-11-08T06:30:00Z"
        );
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        let err = |e: &str| Cron::parse(e).unwrap_err().to_string();
        assert!(err("0 3 * *").contains("has 4 field(s)"));
        assert!(err("61 * * * *").contains("minute 61 is out of range 0–59"));
        assert!(err("0 3 * foo *").contains("`foo` is not a month"));
        assert!(err("*/0 * * * *").contains("step `0`"));
        assert!(err("0 0 5-1 * *").contains("runs backwards"));
        assert!(err("0 0 30 2 *").contains("no day that exists"));
        assert!(Cron::parse("0 0 29 2 *").is_ok());
    }

    #[test]
    fn intervals_count_from_their_anchor_and_at_fires_once() {
        let every = Schedule::Every {
            anchor: ts("2027-01-01T00:00:00Z"),
            every: Duration::from_secs(300),
        };
        assert_eq!(
            every.next_after(ts("2026-12-31T00:00:00Z")),
            Some(ts("2027-01-01T00:05:00Z"))
        );
        assert_eq!(
            every.next_after(ts("2027-01-01T00:05:00Z")),
            Some(ts("2027-01-01T00:10:00Z"))
        );
        assert_eq!(
            every.next_after(ts("2027-01-01T00:12:00Z")),
            Some(ts("2027-01-01T00:15:00Z"))
        );
        let at = Schedule::At(ts("2027-01-01T00:00:00Z"));
        assert_eq!(
            at.next_after(ts("2026-01-01T00:00:00Z")),
            Some(ts("2027-01-01T00:00:00Z"))
        );
        assert_eq!(at.next_after(ts("2027-01-01T00:00:00Z")), None);
    }

    #[test]
    fn time_zones_and_instants_are_checked() {
        assert!(time_zone("Asia/Seoul").is_ok());
        assert!(
            time_zone("Mars/Olympus")
                .unwrap_err()
                .to_string()
                .contains("IANA")
        );
        assert!(instant("2027-01-01T00:00:00Z").is_ok());
        assert!(instant("2027-01-01").is_err());
    }
}
