//! The Managed Server's control step, decided without I/O: `step(state, event) -> (state,
//! effects)`. The server reports to the Master (register, then a heartbeat every
//! `[master] heartbeat-interval`), follows its pin, applies what can change live and reports what
//! needs a restart. Losing the Master makes the server INDEPENDENT without interrupting service,
//! retrying with a growing [`Backoff`]; reaching it again resynchronizes and makes it DEPENDENT.
//! A refusal of the server's credentials is no outage: it is said in `last_error`, once in the
//! log, and never turns an already INDEPENDENT server into anything else.
//!
//! `runtime::control` executes the effects and turns what happened into the next event. Every
//! step ends with exactly one effect that produces the next event ([`Effect::next_event`]): a
//! report, a fetch, an apply, or a wait.
//!
//! Over 600 lines only because of its tests: every transition is unit-tested here, without
//! processes (the code itself is about 430 lines).

use std::time::Duration;

use schema::Loaded;
use schema::model::RestartPolicy;
use schema::plan::Change;

use crate::resync::{Decision, Served, decide, merge_restart};
use crate::wire::{Mode, OrderAction, ReportReply};

/// The longest wait between two reports while the Master cannot be reached.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long to wait before the next report while the Master cannot be reached: doubling from
/// the heartbeat interval up to a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            next: first.min(cap),
            cap,
        }
    }

    /// The wait now; the next one is twice as long (up to the cap).
    pub fn take(&mut self) -> Duration {
        let now = self.next;
        self.next = now.saturating_mul(2).min(self.cap);
        now
    }

    /// Starts again from `first` (the Master answered).
    pub fn reset(&mut self, first: Duration) {
        self.next = first.min(self.cap);
    }
}

/// What happened: the input of a step.
#[derive(Debug, Clone)]
pub enum Event {
    /// Time to report (the loop starts with it; a wait ends with it).
    Due,
    /// The Master announced a pin on its event stream (empty: it asks for a report now).
    Announced(String),
    /// The Master answered a report. `apps_failing`: some applications fail right now.
    Answered {
        reply: ReportReply,
        apps_failing: bool,
    },
    /// A report did not go through.
    ReportFailed(ReportFailure),
    /// The pinned commit is in the local cache and valid here; `served` is what serves now.
    Fetched {
        commit: String,
        target: Box<Loaded>,
        served: Served,
    },
    /// The applications and the live settings of the fetched commit are applied; the web engine
    /// names `engine_restart`, settings it can change only with a restart.
    Applied { engine_restart: Vec<String> },
    /// Fetching, validating or applying the pinned commit failed; the server is as it was.
    ResyncFailed(String),
}

/// Why a report did not go through. The message is for `last_error` and the log; the variant is
/// what the step decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportFailure {
    /// The Master answered and refused the server's credentials (401/403).
    Refused(String),
    /// The Master cannot be reached, or answered something else.
    Lost(String),
}

/// Which report to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Register,
    Heartbeat,
}

/// Why the server restarts itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// `restart-policy = "auto"` and settings pend.
    Auto,
    /// `restart-policy = "rolling"`: the Master says it is this server's turn.
    Rolling,
    /// An operator's order through the Master (a rollout).
    Ordered,
}

/// A log line worth writing; the executor words it.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// The Master answered after an outage.
    Recovered,
    /// The Master cannot be reached: the server goes INDEPENDENT.
    Lost(String),
    /// The Master refused the credentials (logged once per refusal streak).
    Refused(String),
    /// The pinned commit could not be applied.
    CannotApply(String),
    /// Back in step with the Master: DEPENDENT.
    Resynchronized,
    /// Rolling restarts: this server's turn.
    RollingTurn,
    /// An operator ordered this server to restart or stop (rollout `rollout`).
    Ordered {
        rollout: String,
        action: OrderAction,
    },
    /// A commit was applied.
    Applied {
        commit: String,
        live: Vec<Change>,
        pending_restart: Vec<String>,
        policy: RestartPolicy,
    },
}

/// Moving to a fetched commit, as decided.
#[derive(Debug, Clone)]
pub struct Apply {
    pub commit: String,
    pub target: Box<Loaded>,
    pub decision: Decision,
}

/// What to do: the output of a step, executed in order.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Report the status to the Master; gives [`Event::Answered`] or [`Event::ReportFailed`].
    Report(Report),
    /// Bring the commit into the local cache and validate it; gives [`Event::Fetched`] or
    /// [`Event::ResyncFailed`].
    Fetch(String),
    /// Deploy, keep, retry and undeploy the applications, apply the live settings; gives
    /// [`Event::Applied`] or [`Event::ResyncFailed`].
    Apply(Box<Apply>),
    /// Wait this long (retrying failed applications meanwhile); gives [`Event::Due`], or
    /// [`Event::Announced`] when a pin is announced first.
    Wait(Duration),
    SetMode(Mode),
    /// `last_error` becomes this.
    SetError(String),
    /// `last_error` is cleared if it is still this (a refusal the Master no longer makes).
    ClearError(String),
    /// The status names the applied commit and its pending restarts (and what the applications
    /// do now).
    Publish {
        applied: String,
        pending_restart: Vec<String>,
    },
    Log(Note),
    /// Restart through the launcher, to boot from the applied commit.
    Restart(RestartReason),
    /// Stop gracefully through the launcher.
    Stop,
}

impl Effect {
    /// Whether executing this effect produces the next event.
    pub fn next_event(&self) -> bool {
        matches!(
            self,
            Effect::Report(_) | Effect::Fetch(_) | Effect::Apply(_) | Effect::Wait(_)
        )
    }
}

/// What comes after a resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// The resync of an announced pin: report next (the answer confirms it).
    Report,
    /// The resync the Master's answer asked for.
    Answered {
        reconnecting: bool,
        restart: bool,
        order: Option<OrderAction>,
    },
}

#[derive(Debug, Clone)]
enum Phase {
    Idle,
    Fetching(After),
    Applying { after: After, apply: Box<Apply> },
}

/// The control loop's state.
#[derive(Debug, Clone)]
pub struct State {
    name: String,
    mode: Mode,
    registered: bool,
    interval: Duration,
    backoff: Backoff,
    /// The `last_error` a refusal set, cleared at the next answer if still shown.
    refusal: Option<String>,
    refusal_logged: bool,
    applied: String,
    pending_restart: Vec<String>,
    /// What the process booted with: restart-class settings stay as they were then.
    boot: Box<Loaded>,
    /// What it applies now.
    running: Box<Loaded>,
    phase: Phase,
}

impl State {
    /// Server `name`, booted with `boot` (commit `applied`) in `mode`.
    pub fn new(name: &str, mode: Mode, boot: Loaded, applied: String) -> State {
        let interval = boot.domain.config.master.heartbeat_interval.0;
        State {
            name: name.to_owned(),
            mode,
            registered: false,
            interval,
            backoff: Backoff::new(interval, MAX_BACKOFF),
            refusal: None,
            refusal_logged: false,
            applied,
            pending_restart: Vec::new(),
            running: Box::new(boot.clone()),
            boot: Box::new(boot),
            phase: Phase::Idle,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn applied(&self) -> &str {
        &self.applied
    }

    fn report(&self) -> Effect {
        Effect::Report(if self.registered {
            Report::Heartbeat
        } else {
            Report::Register
        })
    }

    fn resync(&mut self, commit: String, after: After, fx: &mut Vec<Effect>) {
        self.phase = Phase::Fetching(after);
        fx.push(Effect::Fetch(commit));
    }

    /// After a resync (or none needed): back to DEPENDENT if it synced after an outage, a
    /// rolling restart if ordered, then the next report.
    fn settle(&mut self, after: After, synced: bool, fx: &mut Vec<Effect>) {
        self.phase = Phase::Idle;
        match after {
            After::Report => fx.push(self.report()),
            After::Answered {
                reconnecting,
                restart,
                order,
            } => {
                if reconnecting && synced {
                    self.mode = Mode::Dependent;
                    fx.push(Effect::SetMode(Mode::Dependent));
                    fx.push(Effect::Log(Note::Resynchronized));
                }
                match order {
                    Some(OrderAction::Restart) => fx.push(Effect::Restart(RestartReason::Ordered)),
                    Some(OrderAction::Stop) => fx.push(Effect::Stop),
                    None if restart && !self.pending_restart.is_empty() => {
                        fx.push(Effect::Log(Note::RollingTurn));
                        fx.push(Effect::Restart(RestartReason::Rolling));
                    }
                    None => {}
                }
                fx.push(Effect::Wait(self.interval));
            }
        }
    }

    /// The after-resync of the phase left behind (a report, if the phase was lost).
    fn after(&mut self) -> After {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Fetching(after) | Phase::Applying { after, .. } => after,
            Phase::Idle => After::Report,
        }
    }
}

/// One step of the control loop.
pub fn step(mut s: State, event: Event) -> (State, Vec<Effect>) {
    let mut fx = Vec::new();
    match event {
        Event::Due => fx.push(s.report()),
        // A pin announced on the event stream is applied at once; the report that follows
        // confirms it (and catches any event that was missed). INDEPENDENT waits for the
        // Master's answer instead.
        Event::Announced(pin) => {
            if s.mode == Mode::Dependent && !pin.is_empty() && s.applied != pin {
                s.resync(pin, After::Report, &mut fx);
            } else {
                fx.push(s.report());
            }
        }
        Event::Answered {
            reply,
            apps_failing,
        } => {
            s.registered = true;
            s.refusal_logged = false;
            if let Some(r) = s.refusal.take() {
                fx.push(Effect::ClearError(r));
            }
            s.interval = Duration::from_millis(reply.heartbeat_interval_ms);
            s.backoff.reset(s.interval);
            let reconnecting = s.mode == Mode::Independent;
            if reconnecting {
                fx.push(Effect::Log(Note::Recovered));
            }
            let order = reply.order.map(|o| {
                fx.push(Effect::Log(Note::Ordered {
                    rollout: o.rollout,
                    action: o.action,
                }));
                o.action
            });
            let after = After::Answered {
                reconnecting,
                restart: reply.restart,
                order,
            };
            // Back from INDEPENDENT with applications that failed: resync anyway, which retries
            // them (the seed redeploys what failed when the Master returns).
            let behind = s.applied != reply.pinned.commit || (reconnecting && apps_failing);
            if behind {
                s.resync(reply.pinned.commit, after, &mut fx);
            } else {
                s.settle(after, true, &mut fx);
            }
        }
        Event::ReportFailed(failure) => {
            let (refused, message) = match failure {
                ReportFailure::Refused(m) => (true, m),
                ReportFailure::Lost(m) => (false, m),
            };
            // A refusal is no outage: say so in the status, which the Master shows too.
            if refused {
                fx.push(Effect::SetError(message.clone()));
                s.refusal = Some(message.clone());
            }
            if s.mode == Mode::Dependent {
                fx.push(Effect::Log(Note::Lost(message)));
                fx.push(Effect::SetMode(Mode::Independent));
                s.mode = Mode::Independent;
                s.registered = false;
            } else if refused && !s.refusal_logged {
                fx.push(Effect::Log(Note::Refused(message)));
                s.refusal_logged = true;
            }
            fx.push(Effect::Wait(s.backoff.take()));
        }
        Event::Fetched {
            commit,
            target,
            served,
        } => {
            let after = s.after();
            match decide(&s.boot, &s.running, &target, &s.name, &served) {
                None => {
                    let why = format!(
                        "the pinned commit {} no longer defines this server; it keeps running its current configuration until stopped",
                        short(&commit)
                    );
                    fail(&mut s, after, why, &mut fx);
                }
                Some(decision) => {
                    let apply = Box::new(Apply {
                        commit,
                        target,
                        decision,
                    });
                    fx.push(Effect::Apply(apply.clone()));
                    s.phase = Phase::Applying { after, apply };
                }
            }
        }
        Event::Applied { engine_restart } => match std::mem::replace(&mut s.phase, Phase::Idle) {
            Phase::Applying { after, apply } => {
                let Apply {
                    commit,
                    target,
                    decision,
                } = *apply;
                let pending = merge_restart(&decision.pending_restart, &engine_restart);
                fx.push(Effect::Publish {
                    applied: commit.clone(),
                    pending_restart: pending.clone(),
                });
                fx.push(Effect::Log(Note::Applied {
                    commit: commit.clone(),
                    live: decision.live,
                    pending_restart: pending.clone(),
                    policy: decision.policy,
                }));
                s.applied = commit;
                s.running = target;
                let auto = decision.policy == RestartPolicy::Auto && !pending.is_empty();
                s.pending_restart = pending;
                if auto {
                    fx.push(Effect::Restart(RestartReason::Auto));
                }
                s.settle(after, true, &mut fx);
            }
            // Not applying: nothing was asked; carry on reporting.
            other => {
                s.phase = other;
                fx.push(s.report());
            }
        },
        Event::ResyncFailed(why) => {
            let after = s.after();
            fail(&mut s, after, why, &mut fx);
        }
    }
    (s, fx)
}

/// The pinned commit could not be applied: said in the log and the status; the server stays as
/// it was.
fn fail(s: &mut State, after: After, why: String, fx: &mut Vec<Effect>) {
    fx.push(Effect::Log(Note::CannotApply(why.clone())));
    fx.push(Effect::SetError(why));
    s.settle(after, false, fx);
}

/// The short form of a commit id, for messages.
fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resync::tests::{DOMAIN, load, serving_all};
    use crate::wire::Pinned;

    const C1: &str = "1111111111111111111111111111111111111111";
    const C2: &str = "2222222222222222222222222222222222222222";

    fn reply(commit: &str, restart: bool) -> Event {
        ordered(commit, restart, None)
    }

    fn ordered(commit: &str, restart: bool, order: Option<OrderAction>) -> Event {
        Event::Answered {
            reply: ReportReply {
                restart,
                order: order.map(|action| crate::wire::Order {
                    rollout: "r1".into(),
                    action,
                }),
                pinned: Pinned {
                    commit: commit.to_owned(),
                    at: "2026-11-24T05:19:52Z".to_owned(),
                },
                heartbeat_interval_ms: 5000,
                heartbeat_timeout_ms: 15000,
            },
            apps_failing: false,
        }
    }

    fn lost() -> Event {
        Event::ReportFailed(ReportFailure::Lost("connection refused".into()))
    }

    fn refused() -> Event {
        Event::ReportFailed(ReportFailure::Refused("refused (401)".into()))
    }

    fn start(mode: Mode) -> State {
        State::new("server1", mode, load(DOMAIN), C1.to_owned())
    }

    /// Runs `event`, checks the step's contract (one event-producing effect, last) and returns
    /// the effects.
    fn run(s: &mut State, event: Event) -> Vec<Effect> {
        let (next, fx) = step(s.clone(), event);
        *s = next;
        assert_eq!(
            fx.iter().filter(|e| e.next_event()).count(),
            1,
            "exactly one next event: {fx:?}"
        );
        assert!(fx.last().is_some_and(Effect::next_event), "{fx:?}");
        fx
    }

    fn waits(fx: &[Effect]) -> Option<Duration> {
        match fx.last() {
            Some(Effect::Wait(d)) => Some(*d),
            _ => None,
        }
    }

    fn has(fx: &[Effect], f: impl Fn(&Effect) -> bool) -> bool {
        fx.iter().any(f)
    }

    /// Feeds the fetch of `commit` (the same configuration) through to its application.
    fn fetch_and_apply(s: &mut State, commit: &str, target: Loaded) -> Vec<Effect> {
        let served = serving_all(&target, "server1");
        let fx = run(
            s,
            Event::Fetched {
                commit: commit.to_owned(),
                target: Box::new(target),
                served,
            },
        );
        assert!(matches!(fx.last(), Some(Effect::Apply(a)) if a.commit == commit));
        run(
            s,
            Event::Applied {
                engine_restart: Vec::new(),
            },
        )
    }

    #[test]
    fn connects_registers_then_heartbeats() {
        let mut s = start(Mode::Dependent);
        let fx = run(&mut s, Event::Due);
        assert!(matches!(fx[..], [Effect::Report(Report::Register)]));
        // In step with the pin: nothing to apply, wait one interval.
        let fx = run(&mut s, reply(C1, false));
        assert_eq!(waits(&fx), Some(Duration::from_secs(5)));
        assert!(!has(&fx, |e| matches!(
            e,
            Effect::Fetch(_) | Effect::Log(_)
        )));
        let fx = run(&mut s, Event::Due);
        assert!(matches!(fx[..], [Effect::Report(Report::Heartbeat)]));
    }

    #[test]
    fn a_new_pin_is_fetched_applied_and_published() {
        let mut s = start(Mode::Dependent);
        run(&mut s, Event::Due);
        let fx = run(&mut s, reply(C2, false));
        assert!(matches!(&fx[..], [Effect::Fetch(c)] if c == C2));
        let fx = fetch_and_apply(&mut s, C2, load(DOMAIN));
        assert!(has(
            &fx,
            |e| matches!(e, Effect::Publish { applied, .. } if applied == C2)
        ));
        assert!(has(&fx, |e| matches!(e, Effect::Log(Note::Applied { .. }))));
        assert_eq!(waits(&fx), Some(Duration::from_secs(5)));
        assert_eq!(s.applied(), C2);
    }

    #[test]
    fn a_failed_resync_is_reported_and_the_server_stays_as_it_was() {
        let mut s = start(Mode::Dependent);
        run(&mut s, Event::Due);
        run(&mut s, reply(C2, false));
        let fx = run(&mut s, Event::ResyncFailed("invalid".into()));
        assert!(has(
            &fx,
            |e| matches!(e, Effect::SetError(m) if m == "invalid")
        ));
        assert!(has(&fx, |e| matches!(e, Effect::Log(Note::CannotApply(_)))));
        assert_eq!((s.applied(), s.mode()), (C1, Mode::Dependent));
        // The next answer asks again.
        run(&mut s, Event::Due);
        let fx = run(&mut s, reply(C2, false));
        assert!(matches!(&fx[..], [Effect::Fetch(c)] if c == C2));
    }

    #[test]
    fn a_removed_server_keeps_running_what_it_runs() {
        let mut s = start(Mode::Dependent);
        run(&mut s, Event::Due);
        run(&mut s, reply(C2, false));
        let without = load(
            &DOMAIN
                .replace("servers.server1", "servers.server9")
                .replace("servers = [\"server1\", ", "servers = [\"server9\", "),
        );
        let fx = run(
            &mut s,
            Event::Fetched {
                commit: C2.into(),
                target: Box::new(without),
                served: Served::default(),
            },
        );
        assert!(has(
            &fx,
            |e| matches!(e, Effect::SetError(m) if m.contains("no longer defines this server"))
        ));
        assert_eq!(s.applied(), C1);
    }

    #[test]
    fn losing_the_master_goes_independent_and_backs_off_to_a_cap() {
        let mut s = start(Mode::Dependent);
        run(&mut s, Event::Due);
        run(&mut s, reply(C1, false));
        run(&mut s, Event::Due);
        let fx = run(&mut s, lost());
        assert!(has(&fx, |e| matches!(e, Effect::Log(Note::Lost(_)))));
        assert!(has(&fx, |e| matches!(
            e,
            Effect::SetMode(Mode::Independent)
        )));
        assert_eq!(s.mode(), Mode::Independent);
        let mut seen = vec![waits(&fx).expect("waits")];
        for _ in 0..5 {
            let fx = run(&mut s, Event::Due);
            // Not registered any more: the next report registers again.
            assert!(matches!(fx[..], [Effect::Report(Report::Register)]));
            let fx = run(&mut s, lost());
            // Logged once per outage.
            assert!(!has(&fx, |e| matches!(
                e,
                Effect::Log(_) | Effect::SetMode(_)
            )));
            seen.push(waits(&fx).expect("waits"));
        }
        let secs: Vec<u64> = seen.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [5, 10, 20, 30, 30, 30]);
    }

    #[test]
    fn reconnecting_resyncs_and_goes_dependent_again() {
        let mut s = start(Mode::Dependent);
        run(&mut s, Event::Due);
        run(&mut s, lost());
        run(&mut s, Event::Due);
        // Back, with a pin that moved meanwhile: DEPENDENT only once it is applied.
        let fx = run(&mut s, reply(C2, false));
        assert!(has(&fx, |e| matches!(e, Effect::Log(Note::Recovered))));
        assert!(!has(&fx, |e| matches!(e, Effect::SetMode(_))));
        let fx = fetch_and_apply(&mut s, C2, load(DOMAIN));
        assert!(has(&fx, |e| matches!(e, Effect::SetMode(Mode::Dependent))));
        assert!(has(&fx, |e| matches!(e, Effect::Log(Note::Resynchronized))));
        assert_eq!(s.mode(), Mode::Dependent);
        // The backoff starts again from the interval.
        run(&mut s, Event::Due);
        let fx = run(&mut s, lost());
        assert_eq!(waits(&fx), Some(Duration::from_secs(5)));
    }

    #[test]
    fn reconnecting_with_failed_applications_resyncs_the_same_commit() {
        let mut s = start(Mode::Independent);
        let mut answer = reply(C1, false);
        if let Event::Answered { apps_failing, .. } = &mut answer {
            *apps_failing = true;
        }
        run(&mut s, Event::Due);
        let fx = run(&mut s, answer);
        assert!(matches!(fx.last(), Some(Effect::Fetch(c)) if c == C1));
        // A failed resync keeps it INDEPENDENT; the next answer tries again.
        let fx = run(&mut s, Event::ResyncFailed("still failing".into()));
        assert!(!has(&fx, |e| matches!(e, Effect::SetMode(_))));
        assert_eq!(s.mode(), Mode::Independent);
    }

    #[test]
    fn a_refusal_is_said_once_and_is_no_outage_for_an_independent_server() {
        let mut s = start(Mode::Independent);
        run(&mut s, Event::Due);
        let fx = run(&mut s, refused());
        assert!(has(
            &fx,
            |e| matches!(e, Effect::SetError(m) if m == "refused (401)")
        ));
        assert!(has(&fx, |e| matches!(e, Effect::Log(Note::Refused(_)))));
        // No fallback of its own: it stays INDEPENDENT, nothing else changes.
        assert!(!has(&fx, |e| matches!(
            e,
            Effect::SetMode(_) | Effect::Fetch(_)
        )));
        run(&mut s, Event::Due);
        let fx = run(&mut s, refused());
        assert!(!has(&fx, |e| matches!(e, Effect::Log(_))), "logged once");
        // Accepted again: the refusal's error is cleared (if still shown).
        run(&mut s, Event::Due);
        let fx = run(&mut s, reply(C1, false));
        assert!(has(
            &fx,
            |e| matches!(e, Effect::ClearError(m) if m == "refused (401)")
        ));
        assert!(has(&fx, |e| matches!(e, Effect::SetMode(Mode::Dependent))));
    }

    #[test]
    fn a_refusal_of_a_dependent_server_loses_the_master() {
        let mut s = start(Mode::Dependent);
        run(&mut s, Event::Due);
        let fx = run(&mut s, refused());
        assert!(has(&fx, |e| matches!(e, Effect::Log(Note::Lost(_)))));
        assert!(has(&fx, |e| matches!(e, Effect::SetError(_))));
        // The refusal itself is logged at the next one.
        run(&mut s, Event::Due);
        let fx = run(&mut s, refused());
        assert!(has(&fx, |e| matches!(e, Effect::Log(Note::Refused(_)))));
    }

    #[test]
    fn an_announced_pin_is_applied_at_once_when_dependent_only() {
        let mut s = start(Mode::Dependent);
        run(&mut s, Event::Due);
        run(&mut s, reply(C1, false));
        let fx = run(&mut s, Event::Announced(C2.into()));
        assert!(matches!(&fx[..], [Effect::Fetch(c)] if c == C2));
        // Applied, then the report confirms it.
        let fx = fetch_and_apply(&mut s, C2, load(DOMAIN));
        assert!(matches!(fx.last(), Some(Effect::Report(Report::Heartbeat))));
        // The same pin again: nothing to apply.
        let fx = run(&mut s, Event::Announced(C2.into()));
        assert!(matches!(fx[..], [Effect::Report(_)]));

        // While disconnected, the announcement waits for the Master's answer.
        let mut s = start(Mode::Dependent);
        run(&mut s, Event::Due);
        run(&mut s, lost());
        let fx = run(&mut s, Event::Announced(C2.into()));
        assert!(matches!(fx[..], [Effect::Report(Report::Register)]));
    }

    #[test]
    fn an_operators_order_restarts_or_stops_whatever_pends() {
        let mut s = start(Mode::Dependent);
        run(&mut s, Event::Due);
        let fx = run(&mut s, ordered(C1, false, Some(OrderAction::Restart)));
        assert!(has(&fx, |e| matches!(
            e,
            Effect::Log(Note::Ordered { rollout, action: OrderAction::Restart }) if rollout == "r1"
        )));
        assert!(has(&fx, |e| matches!(
            e,
            Effect::Restart(RestartReason::Ordered)
        )));
        assert_eq!(waits(&fx), Some(Duration::from_secs(5)));
        // Behind the pin: the stop comes after the resync, which it does not prevent.
        let fx = run(&mut s, ordered(C2, false, Some(OrderAction::Stop)));
        assert!(matches!(fx.last(), Some(Effect::Fetch(_))));
        let fx = fetch_and_apply(&mut s, C2, load(DOMAIN));
        assert!(has(&fx, |e| matches!(e, Effect::Stop)));
    }

    #[test]
    fn a_rolling_order_restarts_only_with_pending_restarts() {
        let mut s = start(Mode::Dependent);
        run(&mut s, Event::Due);
        // Nothing pends: the order is moot.
        let fx = run(&mut s, reply(C1, true));
        assert!(!has(&fx, |e| matches!(e, Effect::Restart(_))));
        // A restart-class change (rolling policy in the example) pends, then the turn comes.
        let fx = run(&mut s, reply(C2, false));
        assert!(matches!(fx.last(), Some(Effect::Fetch(_))));
        let fx = fetch_and_apply(
            &mut s,
            C2,
            load(&DOMAIN.replace("port = 8088", "port = 8090")),
        );
        assert!(has(
            &fx,
            |e| matches!(e, Effect::Publish { pending_restart, .. } if !pending_restart.is_empty())
        ));
        assert!(
            !has(&fx, |e| matches!(e, Effect::Restart(_))),
            "rolling waits for its turn"
        );
        run(&mut s, Event::Due);
        let fx = run(&mut s, reply(C2, true));
        assert!(has(&fx, |e| matches!(e, Effect::Log(Note::RollingTurn))));
        assert!(has(&fx, |e| matches!(
            e,
            Effect::Restart(RestartReason::Rolling)
        )));
        assert_eq!(waits(&fx), Some(Duration::from_secs(5)));
    }

    #[test]
    fn auto_policy_restarts_after_applying_a_restart_change() {
        let auto = DOMAIN.replace("restart-policy = \"rolling\"", "restart-policy = \"auto\"");
        let mut s = State::new("server1", Mode::Dependent, load(&auto), C1.into());
        run(&mut s, Event::Due);
        run(&mut s, reply(C2, false));
        let fx = fetch_and_apply(
            &mut s,
            C2,
            load(&auto.replace("port = 8088", "port = 8090")),
        );
        assert!(has(&fx, |e| matches!(
            e,
            Effect::Restart(RestartReason::Auto)
        )));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(4), Duration::from_secs(10));
        let got: Vec<u64> = (0..4).map(|_| b.take().as_secs()).collect();
        assert_eq!(got, [4, 8, 10, 10]);
        b.reset(Duration::from_secs(1));
        assert_eq!(b.take(), Duration::from_secs(1));
    }
}
