//! The timer service's decisions (docs/components.md), pure so they are tested without a clock:
//! what a timer whose firing came due while the server was down does on start (its misfire
//! policy), and what follows a failed callback (the retry policy).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use schema::model::Misfire;
use schema::timer::Schedule;

/// A firing late by at most this much when the server starts is not a misfire: it fires as
/// scheduled, whatever the policy (a restart that took a second loses nothing).
pub const MISFIRE_THRESHOLD: Duration = Duration::from_secs(1);

/// `fire-all` fires at most this many missed firings (the latest ones); the rest are counted as
/// skipped, so an interval of `1ms` and a week of downtime does not flood the component.
pub const FIRE_ALL_MAX: usize = 1000;

/// What to do on start about a timer that was due at `due`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catchup {
    /// Scheduled instants to fire now, oldest first.
    pub fire: Vec<Timestamp>,
    /// Missed instants not fired (`skip`, or beyond [`FIRE_ALL_MAX`]).
    pub skipped: u64,
    /// The next regular firing: `due` itself when it was not missed; `None` when the schedule
    /// has no more.
    pub next: Option<Timestamp>,
}

/// Applies `policy` to a timer due at `due` when the server starts at `now`.
pub fn catch_up(schedule: &Schedule, due: Timestamp, now: Timestamp, policy: Misfire) -> Catchup {
    let threshold = SignedDuration::try_from(MISFIRE_THRESHOLD).unwrap_or(SignedDuration::ZERO);
    if now.duration_since(due) <= threshold {
        return Catchup {
            fire: Vec::new(),
            skipped: 0,
            next: Some(due),
        };
    }
    // The missed instants, oldest first; only the latest FIRE_ALL_MAX are kept.
    let mut missed = std::collections::VecDeque::new();
    let mut count: u64 = 0;
    let mut at = Some(due);
    while let Some(t) = at.filter(|t| *t <= now) {
        count += 1;
        missed.push_back(t);
        if missed.len() > FIRE_ALL_MAX {
            missed.pop_front();
        }
        at = schedule.next_after(t);
    }
    let fire: Vec<Timestamp> = match policy {
        Misfire::Skip => Vec::new(),
        Misfire::FireOnce => missed.back().copied().into_iter().collect(),
        Misfire::FireAll => missed.into_iter().collect(),
    };
    Catchup {
        skipped: count - fire.len() as u64,
        fire,
        next: at,
    }
}

/// What follows a failed callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again at `at`; this will be retry number `retry` (1 for the first).
    Retry { retry: u32, at: Timestamp },
    /// Retries are used up: record the firing as failed.
    Failed,
}

/// After attempt `attempt` (0 the first call, n the n-th retry) failed at `now`: retry
/// `retry_delay` later while fewer than `max_retries` retries were made.
pub fn after_failure(
    attempt: u32,
    max_retries: u32,
    retry_delay: Duration,
    now: Timestamp,
) -> AfterFailure {
    if attempt >= max_retries {
        return AfterFailure::Failed;
    }
    let delay = SignedDuration::try_from(retry_delay).unwrap_or(SignedDuration::MAX);
    match now.checked_add(delay) {
        Ok(at) => AfterFailure::Retry {
            retry: attempt + 1,
            at,
        },
        Err(_) => AfterFailure::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn every_minute() -> Schedule {
        Schedule::Every {
            anchor: ts("2027-01-01T00:00:00Z"),
            every: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_firing_within_the_threshold_is_not_a_misfire() {
        let c = catch_up(
            &every_minute(),
            ts("2027-01-01T00:01:00Z"),
            ts("2027-01-01T00:01:00.500Z"),
            Misfire::Skip,
        );
        assert_eq!(c.fire, vec![]);
        assert_eq!(c.next, Some(ts("2027-01-01T00:01:00Z")));
        assert_eq!(c.skipped, 0);
    }

    #[test]
    fn each_policy_after_five_missed_firings() {
        // Due at 00:01; the server starts at 00:05:30: 00:01 … 00:05 were missed.
        let (due, now) = (ts("2027-01-01T00:01:00Z"), ts("2027-01-01T00:05:30Z"));
        let next = Some(ts("2027-01-01T00:06:00Z"));
        let once = catch_up(&every_minute(), due, now, Misfire::FireOnce);
        assert_eq!(once.fire, vec![ts("2027-01-01T00:05:00Z")]);
        assert_eq!((once.skipped, once.next), (4, next));
        let skip = catch_up(&every_minute(), due, now, Misfire::Skip);
        assert_eq!((skip.fire.len(), skip.skipped, skip.next), (0, 5, next));
        let all = catch_up(&every_minute(), due, now, Misfire::FireAll);
        assert_eq!(all.fire.len(), 5);
        assert_eq!(all.fire[0], due);
        assert_eq!((all.skipped, all.next), (0, next));
    }

    #[test]
    fn fire_all_is_bounded_and_keeps_the_latest() {
        let every_ms = Schedule::Every {
            anchor: ts("2027-01-01T00:00:00Z"),
            every: Duration::from_millis(1),
        };
        let c = catch_up(
            &every_ms,
            ts("2027-01-01T00:00:00.001Z"),
            ts("2027-01-01T00:00:05Z"),
            Misfire::FireAll,
        );
        assert_eq!(c.fire.len(), FIRE_ALL_MAX);
        assert_eq!(c.skipped, 5000 - FIRE_ALL_MAX as u64);
        assert_eq!(c.fire.last(), Some(&ts("2027-01-01T00:00:05Z")));
    }

    #[test]
    fn a_missed_one_shot_timer_fires_once_or_is_dropped() {
        let at = Schedule::At(ts("2027-01-01T00:00:00Z"));
        let now = ts("2027-01-02T00:00:00Z");
        for policy in [Misfire::FireOnce, Misfire::FireAll] {
            let c = catch_up(&at, ts("2027-01-01T00:00:00Z"), now, policy);
            assert_eq!(c.fire, vec![ts("2027-01-01T00:00:00Z")]);
            assert_eq!(c.next, None);
        }
        let c = catch_up(&at, ts("2027-01-01T00:00:00Z"), now, Misfire::Skip);
        assert_eq!((c.fire.len(), c.skipped, c.next), (0, 1, None));
    }

    #[test]
    fn failed_callbacks_are_retried_then_recorded() {
        let now = ts("2027-01-01T00:00:00Z");
        let d = Duration::from_secs(5);
        assert_eq!(
            after_failure(0, 3, d, now),
            AfterFailure::Retry {
                retry: 1,
                at: ts("2027-01-01T00:00:05Z")
            }
        );
        assert!(matches!(
            after_failure(2, 3, d, now),
            AfterFailure::Retry { retry: 3, .. }
        ));
        assert_eq!(after_failure(3, 3, d, now), AfterFailure::Failed);
        assert_eq!(after_failure(0, 0, d, now), AfterFailure::Failed);
    }
}
