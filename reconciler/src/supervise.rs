//! The node agent's supervision policy (`steward node`, docs/node.md): given what it sees of each
//! server of its machine (the pid file and the process it names), whether to leave it, adopt it,
//! or start it again, and when to give up. Pure: the agent feeds it observations and the outcome
//! of its own launches, and carries out the [`Action`]s.
//!
//! What the pid file tells apart is the whole rule. A server that stops gracefully (an operator's
//! `stop-server`, an order, the first half of a restart) removes its pid file: that was meant,
//! and the server is left stopped. A server that dies (`kill -9`, a crash) leaves its pid file
//! naming a process that is gone: it is started again after a backoff that doubles with each
//! restart, at most `restart-max` times within `restart-window`, then left stopped with a warning
//! until an operator starts it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// `[nodes.NAME] restart-max`, `restart-window`, `restart-backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub max: u32,
    pub window: Duration,
    pub backoff: Duration,
}

impl Policy {
    pub fn of(node: &schema::model::Node) -> Policy {
        Policy {
            max: node.restart_max,
            window: node.restart_window.0,
            backoff: node.restart_backoff.0,
        }
    }

    /// The wait before the restart that follows `done` restarts within the window: the backoff
    /// doubled for each, capped at the window (a longer wait would outlast the count it guards).
    pub fn delay(&self, done: usize) -> Duration {
        let factor = 1u32.checked_shl(done.min(20) as u32).unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(self.window)
    }
}

/// What the agent sees of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Its pid file names a live `steward server` process of this server.
    Alive { pid: i32 },
    /// No pid file: stopped gracefully, or never started.
    Absent,
    /// A pid file naming a process that is gone (or is another program): it died.
    Dead { pid: i32 },
}

/// Why the agent starts a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// It died (pid `pid`); this is restart number `attempt` within the window.
    Died { pid: Option<i32>, attempt: usize },
}

/// What the agent does (and logs) after an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A server running that the agent did not know running: supervised from now on (at the
    /// agent's start: re-adopted, not restarted).
    Adopt { server: String, pid: i32 },
    /// It stopped gracefully: left stopped.
    Stopped { server: String, pid: i32 },
    /// It died; it is started again in `retry_in`.
    Died {
        server: String,
        pid: Option<i32>,
        retry_in: Duration,
    },
    /// Start it through its launcher now.
    Start { server: String, why: Why },
    /// It died more than `restart-max` times within `restart-window`: left stopped.
    GiveUp {
        server: String,
        restarts: usize,
        window: Duration,
    },
}

#[derive(Debug, Clone, Default)]
struct Entry {
    /// Whether it should run: known after the first observation or order.
    up: bool,
    /// The pid it runs with, as last seen.
    pid: Option<i32>,
    /// Restarts after a death, within the window.
    restarts: VecDeque<Instant>,
    /// When the next restart is due, once a death was seen.
    due: Option<Instant>,
    /// The pid of the death being handled.
    dead_pid: Option<i32>,
    /// A launch of the agent's is under way: the launcher owns the pid file meanwhile.
    launching: bool,
    /// The agent's own restart failed: the server is still down, not stopped on purpose.
    failed: bool,
    gave_up: bool,
}

/// The state of every server of the machine.
#[derive(Debug, Default)]
pub struct Supervisor {
    entries: BTreeMap<String, Entry>,
}

impl Supervisor {
    /// The servers seen or ordered so far.
    pub fn servers(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Whether the agent gave up restarting `server`.
    pub fn gave_up(&self, server: &str) -> bool {
        self.entries.get(server).is_some_and(|e| e.gave_up)
    }

    /// Whether a launch of the agent's for `server` is under way.
    pub fn launching(&self, server: &str) -> bool {
        self.entries.get(server).is_some_and(|e| e.launching)
    }

    /// Forgets a server that left the machine's configuration.
    pub fn forget(&mut self, server: &str) {
        self.entries.remove(server);
    }

    /// An order is carried out by the agent's launcher now: `up` for a start or a restart, not
    /// for a stop. An operator's order starts the count afresh.
    pub fn ordered(&mut self, server: &str, up: bool) {
        let e = self.entries.entry(server.to_owned()).or_default();
        *e = Entry {
            up,
            pid: e.pid,
            launching: true,
            ..Entry::default()
        };
    }

    /// The agent's launch (or stop) of `server` ended: `ok` when it did what was asked. An
    /// ordered launch that failed is reported to the Master and not retried; a restart after a
    /// death that failed counts as one and is tried again after the backoff.
    pub fn finished(&mut self, server: &str, ok: bool, ordered: bool) {
        if let Some(e) = self.entries.get_mut(server) {
            e.launching = false;
            e.failed = !ok && !ordered && e.up;
            if !ok && ordered {
                e.up = false;
            }
        }
    }

    /// What to do about `server`, seen as `seen` at `now`.
    pub fn observe(&mut self, server: &str, seen: Seen, now: Instant, p: Policy) -> Vec<Action> {
        let known = self.entries.contains_key(server);
        let e = self.entries.entry(server.to_owned()).or_default();
        let name = || server.to_owned();
        if e.launching {
            return Vec::new();
        }
        match seen {
            Seen::Alive { pid } => {
                let new = e.pid != Some(pid);
                e.pid = Some(pid);
                e.up = true;
                e.failed = false;
                e.due = None;
                e.dead_pid = None;
                e.gave_up = false;
                if new {
                    return vec![Action::Adopt {
                        server: name(),
                        pid,
                    }];
                }
                Vec::new()
            }
            Seen::Absent if !e.failed => {
                let was = e.pid.take();
                e.due = None;
                if !known {
                    e.up = false;
                }
                match was {
                    Some(pid) if e.up => {
                        e.up = false;
                        vec![Action::Stopped {
                            server: name(),
                            pid,
                        }]
                    }
                    _ => Vec::new(),
                }
            }
            // Dead, or still down after a failed restart of ours.
            Seen::Absent | Seen::Dead { .. } => {
                if known && !e.up {
                    return Vec::new();
                }
                if let Seen::Dead { pid } = seen {
                    e.dead_pid = Some(pid);
                }
                e.up = true;
                e.pid = None;
                if e.gave_up {
                    return Vec::new();
                }
                while e
                    .restarts
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > p.window)
                {
                    e.restarts.pop_front();
                }
                if e.restarts.len() >= p.max as usize {
                    e.gave_up = true;
                    e.due = None;
                    return vec![Action::GiveUp {
                        server: name(),
                        restarts: e.restarts.len(),
                        window: p.window,
                    }];
                }
                match e.due {
                    None => {
                        let wait = p.delay(e.restarts.len());
                        e.due = Some(now + wait);
                        vec![Action::Died {
                            server: name(),
                            pid: e.dead_pid,
                            retry_in: wait,
                        }]
                    }
                    Some(due) if now >= due => {
                        e.due = None;
                        e.failed = false;
                        e.launching = true;
                        e.restarts.push_back(now);
                        vec![Action::Start {
                            server: name(),
                            why: Why::Died {
                                pid: e.dead_pid,
                                attempt: e.restarts.len(),
                            },
                        }]
                    }
                    Some(_) => Vec::new(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy {
        max: 2,
        window: Duration::from_secs(60),
        backoff: Duration::from_secs(1),
    };

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn a_running_server_is_adopted_once_and_a_graceful_stop_is_left_alone() {
        let mut s = Supervisor::default();
        let t0 = Instant::now();
        let a = s.observe("s1", Seen::Alive { pid: 7 }, t0, P);
        assert_eq!(
            a,
            vec![Action::Adopt {
                server: "s1".into(),
                pid: 7
            }]
        );
        assert!(s.observe("s1", Seen::Alive { pid: 7 }, t0, P).is_empty());
        let a = s.observe("s1", Seen::Absent, t0, P);
        assert_eq!(
            a,
            vec![Action::Stopped {
                server: "s1".into(),
                pid: 7
            }]
        );
        // Stopped on purpose stays stopped.
        assert!(s.observe("s1", Seen::Absent, secs(t0, 100), P).is_empty());
        // A server never started is not started either.
        assert!(s.observe("s2", Seen::Absent, t0, P).is_empty());
        // A restart by its own launcher (stop, then start): a new pid, adopted.
        let a = s.observe("s1", Seen::Alive { pid: 9 }, t0, P);
        assert_eq!(
            a,
            vec![Action::Adopt {
                server: "s1".into(),
                pid: 9
            }]
        );
    }

    #[test]
    fn a_dead_server_restarts_with_a_doubling_backoff_then_the_agent_gives_up() {
        let mut s = Supervisor::default();
        let t0 = Instant::now();
        s.observe("s1", Seen::Alive { pid: 7 }, t0, P);
        let a = s.observe("s1", Seen::Dead { pid: 7 }, t0, P);
        assert_eq!(
            a,
            vec![Action::Died {
                server: "s1".into(),
                pid: Some(7),
                retry_in: Duration::from_secs(1)
            }]
        );
        assert!(
            s.observe("s1", Seen::Dead { pid: 7 }, t0, P).is_empty(),
            "not before the backoff"
        );
        let a = s.observe("s1", Seen::Dead { pid: 7 }, secs(t0, 1), P);
        assert_eq!(
            a,
            vec![Action::Start {
                server: "s1".into(),
                why: Why::Died {
                    pid: Some(7),
                    attempt: 1
                }
            }]
        );
        // While the launcher runs, nothing else happens.
        assert!(s.observe("s1", Seen::Absent, secs(t0, 1), P).is_empty());
        s.finished("s1", true, false);
        s.observe("s1", Seen::Alive { pid: 8 }, secs(t0, 2), P);
        // Second death: the backoff doubles.
        let a = s.observe("s1", Seen::Dead { pid: 8 }, secs(t0, 3), P);
        assert!(
            matches!(&a[..], [Action::Died { retry_in, .. }] if *retry_in == Duration::from_secs(2))
        );
        let a = s.observe("s1", Seen::Dead { pid: 8 }, secs(t0, 5), P);
        assert!(matches!(
            &a[..],
            [Action::Start {
                why: Why::Died { attempt: 2, .. },
                ..
            }]
        ));
        s.finished("s1", true, false);
        s.observe("s1", Seen::Alive { pid: 9 }, secs(t0, 6), P);
        // Third death within the window: restart-max (2) reached.
        let a = s.observe("s1", Seen::Dead { pid: 9 }, secs(t0, 7), P);
        assert_eq!(
            a,
            vec![Action::GiveUp {
                server: "s1".into(),
                restarts: 2,
                window: Duration::from_secs(60)
            }]
        );
        assert!(s.gave_up("s1"));
        assert!(
            s.observe("s1", Seen::Dead { pid: 9 }, secs(t0, 500), P)
                .is_empty(),
            "given up until an operator acts"
        );
        // An operator's start begins afresh.
        s.ordered("s1", true);
        s.finished("s1", true, true);
        s.observe("s1", Seen::Alive { pid: 10 }, secs(t0, 501), P);
        assert!(!s.gave_up("s1"));
        let a = s.observe("s1", Seen::Dead { pid: 10 }, secs(t0, 502), P);
        assert!(
            matches!(&a[..], [Action::Died { retry_in, .. }] if *retry_in == Duration::from_secs(1))
        );
    }

    #[test]
    fn restarts_older_than_the_window_no_longer_count() {
        let mut s = Supervisor::default();
        let t0 = Instant::now();
        let p = Policy { max: 1, ..P };
        s.observe("s1", Seen::Alive { pid: 1 }, t0, p);
        s.observe("s1", Seen::Dead { pid: 1 }, t0, p);
        assert!(matches!(
            &s.observe("s1", Seen::Dead { pid: 1 }, secs(t0, 1), p)[..],
            [Action::Start { .. }]
        ));
        s.finished("s1", true, false);
        s.observe("s1", Seen::Alive { pid: 2 }, secs(t0, 2), p);
        let late = secs(t0, 62);
        assert!(matches!(
            &s.observe("s1", Seen::Dead { pid: 2 }, late, p)[..],
            [Action::Died { .. }]
        ));
    }

    #[test]
    fn a_failed_restart_is_tried_again_and_a_failed_order_is_not() {
        let mut s = Supervisor::default();
        let t0 = Instant::now();
        s.observe("s1", Seen::Dead { pid: 3 }, t0, P);
        assert!(matches!(
            &s.observe("s1", Seen::Dead { pid: 3 }, secs(t0, 1), P)[..],
            [Action::Start { .. }]
        ));
        // The launcher failed and removed the pid file: still down, not stopped on purpose.
        s.finished("s1", false, false);
        assert!(matches!(
            &s.observe("s1", Seen::Absent, secs(t0, 2), P)[..],
            [Action::Died { retry_in, .. }] if *retry_in == Duration::from_secs(2)
        ));

        s.ordered("s2", true);
        s.finished("s2", false, true);
        assert!(s.observe("s2", Seen::Absent, t0, P).is_empty());
        // An ordered stop: gone on purpose.
        s.observe("s3", Seen::Alive { pid: 4 }, t0, P);
        s.ordered("s3", false);
        s.finished("s3", true, true);
        assert!(s.observe("s3", Seen::Absent, t0, P).is_empty());
    }

    #[test]
    fn restart_max_zero_never_restarts_and_the_delay_is_capped() {
        let mut s = Supervisor::default();
        let t0 = Instant::now();
        let p = Policy { max: 0, ..P };
        s.observe("s1", Seen::Alive { pid: 1 }, t0, p);
        assert!(matches!(
            &s.observe("s1", Seen::Dead { pid: 1 }, t0, p)[..],
            [Action::GiveUp { restarts: 0, .. }]
        ));
        assert_eq!(P.delay(30), P.window);
    }
}
