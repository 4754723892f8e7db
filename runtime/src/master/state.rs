//! What the Master knows (the current pin and its domain, the event channel, the server
//! registry, the mirror) and the decisions it takes under the decision lock: pin, reject, roll
//! back, record a refused push, authenticate.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{MasterError, Result, log, mirror, servers, sniff};
use crate::auth;
use reconciler::decide;
pub(super) use reconciler::decide::{Pinned as Current, Rollback, describe, load_pinned};
use reconciler::git::Oid;
use reconciler::pin::{Outcome, PinStore, Record, Source};

/// One message of `/v1/events`, encoded once however many subscribers there are.
#[derive(Debug, Clone)]
pub(super) struct Event {
    /// SSE event name: `pinned`, `rejected`, `held`, `server`, `rollout`, `order`, `node` or `domain`.
    pub(super) name: &'static str,
    /// SSE id: the commit for pins and rejections.
    pub(super) id: Option<String>,
    /// JSON.
    pub(super) data: String,
}

impl Event {
    pub(super) fn new(name: &'static str, id: Option<String>, data: &impl Serialize) -> Event {
        Event {
            name,
            id,
            data: serde_json::to_string(data).unwrap_or_else(|_| "null".into()),
        }
    }
}

pub(super) struct State {
    pub(super) home: PathBuf,
    pub(super) store: PinStore,
    pub(super) branch: String,
    pub(super) current: RwLock<Arc<Current>>,
    pub(super) events: super::bus::Bus,
    /// The decision lock. Holds the last head of the branch that was decided on (pinned or
    /// rejected), so a rejected head is recorded once, not at every poll.
    pub(super) decided: Arc<Mutex<Option<Oid>>>,
    pub(super) auth: auth::Auth,
    /// How often the ref watcher woke the decision procedure (shown in `GET /v1/domain`: an idle
    /// Master's count stays still).
    pub(super) wakeups: std::sync::atomic::AtomicU64,
    /// The open client connections.
    pub(super) connections: Arc<super::conn::Registry>,
    /// The deadline of a push's pre-receive step (see [`super::push`]).
    pub(super) pre_receive_timeout: std::time::Duration,
    pub(super) servers: servers::Registry,
    /// The node agents: their reports and the orders waiting for them.
    pub(super) nodes: super::nodes::Nodes,
    /// Rolling restarts: which server of each cluster was ordered to restart.
    pub(super) rolling: reconciler::rolling::Rolling,
    /// Mirror mode; `None` when the Master hosts the repository.
    pub(super) mirror: Option<mirror::Mirror>,
    /// Operators' restarts, stops and starts.
    pub(super) rollouts: super::rollouts::Rollouts,
    /// This Master's URL for servers it starts (set once it listens).
    pub(super) url: std::sync::OnceLock<String>,
    /// Mirror mode: the hold, as kept in `config/hold.json` (see [`reconciler::hold`]).
    pub(super) hold: std::sync::Mutex<Option<reconciler::hold::Hold>>,
    /// Ref advertisements kept while the refs stay as they were.
    pub(super) adverts: super::advert::Adverts,
    pub(super) packs: super::packs::Packs,
    /// What `GET /metrics` reports.
    pub(super) metrics: super::metrics::Metrics,
}

impl State {
    pub(super) fn current(&self) -> Arc<Current> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// How the Master itself is doing, for `GET /v1/domain`: ref-watcher wake-ups (an idle Master's
    /// count stays still) and open connections against the cap.
    pub(super) fn vitals(&self) -> reconciler::wire::Vitals {
        reconciler::wire::Vitals {
            watch_wakeups: self.wakeups.load(std::sync::atomic::Ordering::Relaxed),
            connections: reconciler::wire::Connections {
                open: self.connections.len(),
                cap: self.connections.cap(),
            },
        }
    }

    /// Validates the head of the followed branch and pins it if valid, records it as rejected if
    /// not. `guard` is the decision lock when the caller already holds it. A failure is logged
    /// (at most once a minute: a full disk fails every poll) and the pin stays.
    pub(super) async fn reconcile(
        self: &Arc<Self>,
        source: Source,
        pusher: Option<String>,
        guard: Option<OwnedMutexGuard<Option<Oid>>>,
    ) -> Option<Record> {
        let mut decided = match guard {
            Some(g) => g,
            None => self.decided.clone().lock_owned().await,
        };
        match self
            .decide_locked(&mut decided, source, pusher, Vec::new())
            .await
        {
            Ok(r) => r,
            Err(e) => {
                log::limited(
                    log::Level::Severe,
                    "Master-0019",
                    &format!("Cannot decide on {}; the pin stays: {e}", self.branch),
                );
                None
            }
        }
    }

    /// [`State::reconcile`] for a caller holding the decision lock, which needs the error (a push
    /// that cannot be pinned is refused). `checked`: models of commits the caller validated
    /// already (the Master's check of a push, [`super::precheck`]), which need no second validation.
    pub(super) async fn decide_locked(
        self: &Arc<Self>,
        decided: &mut OwnedMutexGuard<Option<Oid>>,
        source: Source,
        pusher: Option<String>,
        checked: Vec<(Oid, schema::Loaded)>,
    ) -> Result<Option<Record>> {
        let me = self.clone();
        let last = **decided;
        let outcome =
            tokio::task::spawn_blocking(move || me.decide(last, source, pusher, &checked))
                .await
                .map_err(|e| MasterError::Runtime(std::io::Error::other(e)))??;
        let Some((head, record, current)) = outcome else {
            return Ok(None);
        };
        **decided = Some(head);
        self.publish(record.clone(), current);
        // A decision moved a ref: the kept advertisements are made again now, before the next
        // push or the launchers' fetches of this pin ask for them.
        self.adverts
            .refresh(self.home.join("config"), self.store.git_dir());
        Ok(Some(record))
    }

    /// Moves `branch` back from `from` to `to` (`None`: deletes it), only if it is still at `from`:
    /// for a push git accepted but the Master could not pin.
    pub(super) fn unmove_branch(&self, from: Oid, to: Option<Oid>) -> Result<()> {
        Ok(self.store.unmove_branch(&self.branch, from, to)?)
    }

    /// Mirror mode: fetches the upstream branch and decides on its head, under the decision lock
    /// (so the ref watcher, woken by the fetch, finds nothing left to decide).
    pub(super) async fn sync(self: &Arc<Self>, source: Source) -> serde_json::Value {
        let Some(mirror) = &self.mirror else {
            return serde_json::json!({ "outcome": "hosted" });
        };
        let guard = self.decided.clone().lock_owned().await;
        let git_dir = self.store.git_dir().to_owned();
        let (url, branch) = (mirror.upstream.url.clone(), mirror.upstream.branch.clone());
        let fetched =
            match tokio::task::spawn_blocking(move || mirror::fetch(&git_dir, &url, &branch)).await
            {
                Ok(fetched) => fetched.map_err(mirror::SyncError::from),
                Err(e) => Err(e.into()),
            };
        match fetched {
            Ok(head) => {
                if mirror.succeeded(head) {
                    log::info(
                        "Master-0041",
                        &format!("The upstream {} is reachable again.", mirror.status().url),
                    );
                }
                match self.reconcile(source, None, Some(guard)).await {
                    Some(r) => serde_json::json!({
                        "outcome": r.outcome.as_str(),
                        "commit": r.commit,
                        "problems": r.problems,
                    }),
                    None => serde_json::json!({ "outcome": "unchanged", "commit": head.to_hex() }),
                }
            }
            Err(e) => {
                drop(guard);
                let e = e.to_string();
                if mirror.failed(&e) {
                    log::warning(
                        "Master-0040",
                        &format!(
                            "Cannot fetch the upstream; the pin stays, the mirror is stale: {e}"
                        ),
                    );
                }
                serde_json::json!({ "outcome": "unreachable", "error": e })
            }
        }
    }

    /// Makes a decision public: the new current pin (if any), the log line, the event.
    pub(super) fn publish(&self, record: Record, current: Option<Current>) {
        if let Some(c) = current {
            match self.current.write() {
                Ok(mut w) => *w = Arc::new(c),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(c),
            }
        }
        self.metrics.decided(record.outcome, record.source);
        let name = record.outcome.as_str();
        let by = record
            .pusher
            .as_deref()
            .map(|p| format!(" by {p}"))
            .unwrap_or_default();
        match record.outcome {
            Outcome::Pinned => log::info(
                "Master-0010",
                &format!(
                    "Pinned {} (source {}{by}): {}",
                    record.commit,
                    record.source.as_str(),
                    record.summary
                ),
            ),
            Outcome::Held => log::info(
                "Master-0015",
                &format!(
                    "Held {} (source {}{by}): valid, not pinned while the domain is held; `steward admin resume` follows the upstream again: {}",
                    record.commit,
                    record.source.as_str(),
                    record.summary
                ),
            ),
            Outcome::Rejected => log::warning(
                "Master-0011",
                &format!(
                    "Rejected {} (source {}{by}): {} problem(s); the pin stays",
                    record.commit,
                    record.source.as_str(),
                    record.problems.len()
                ),
            ),
        }
        // No subscribers is not an error.
        let id = Some(record.commit.clone());
        self.events.send(Event::new(name, id, &record));
    }

    /// The blocking part of [`State::reconcile`]: `None` when there is nothing new to decide.
    pub(super) fn decide(
        &self,
        last: Option<Oid>,
        source: Source,
        pusher: Option<String>,
        checked: &[(Oid, schema::Loaded)],
    ) -> Result<Option<(Oid, Record, Option<Current>)>> {
        let held = self.mirror.is_some() && self.hold().is_some();
        let decision = decide::decide_head(
            &self.store,
            &self.branch,
            last,
            source,
            pusher,
            held,
            checked,
        )?;
        if let Some(d) = &decision
            && d.record.outcome == Outcome::Held
        {
            self.update_hold(|h| h.held_head = Some(d.record.commit.clone()))?;
        }
        Ok(decision.map(|d| (d.head, d.record, d.pinned)))
    }

    pub(super) fn hold(&self) -> Option<reconciler::hold::Hold> {
        self.hold.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets or clears the hold, on disk first. Returns whether it changed.
    pub(super) fn set_hold(&self, hold: Option<reconciler::hold::Hold>) -> Result<bool> {
        let mut h = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        if h.is_none() && hold.is_none() {
            return Ok(false);
        }
        reconciler::hold::write(&self.home, hold.as_ref())?;
        *h = hold;
        Ok(true)
    }

    /// Changes the hold in place (when there is one).
    fn update_hold(&self, f: impl FnOnce(&mut reconciler::hold::Hold)) -> Result<()> {
        let mut h = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hold) = h.as_mut() {
            f(hold);
            reconciler::hold::write(&self.home, Some(hold))?;
        }
        Ok(())
    }

    /// `GET /v1/domain`, also the `domain` event's data.
    pub(super) fn domain_doc(&self) -> reconciler::wire::Domain {
        use reconciler::wire::{Pinned, RepositoryMode};
        let c = self.current();
        reconciler::wire::Domain {
            name: c.domain.config.domain.name.clone(),
            pinned: Pinned {
                commit: c.commit.to_hex(),
                at: c.at.clone(),
            },
            branch: self.branch.clone(),
            mode: if self.mirror.is_some() {
                RepositoryMode::Mirror
            } else {
                RepositoryMode::Hosted
            },
            upstream: self.mirror.as_ref().map(|m| m.status()),
            hold: self.hold(),
            master: self.vitals(),
        }
    }

    /// Tells subscribers the domain document changed (a hold set or cleared).
    pub(super) fn announce_domain(&self) {
        self.events
            .send(Event::new("domain", None, &self.domain_doc()));
    }

    /// The blocking part of `POST /v1/domain/pin`: hosted mode writes a commit that restores
    /// `rev` on the branch, mirror mode pins `rev` itself.
    pub(super) fn rollback(&self, rev: &str, user: String) -> Result<Rollback> {
        let roll = if self.mirror.is_none() {
            decide::revert
        } else {
            decide::rollback
        };
        Ok(roll(&self.store, &self.branch, rev, user)?)
    }

    /// Records a push the pre-receive hook refused for the followed branch: the commit never
    /// entered the repository, so what is known comes from the conversation itself (see
    /// [`super::push`]): the commands, what git refused and why, and the hook's problems (the first
    /// ones, and how many more).
    pub(super) async fn record_refusal(self: &Arc<Self>, refusal: Refusal, pusher: String) {
        let declined = refusal
            .refused
            .iter()
            .any(|r| r.name == self.branch && r.reason == sniff::Reason::HookDeclined);
        let Some(cmd) = refusal.commands.into_iter().find(|c| c.name == self.branch) else {
            return;
        };
        if !declined {
            return;
        }
        let mut record = Record {
            outcome: Outcome::Rejected,
            commit: cmd.new,
            previous: Some(self.current().commit.to_hex()),
            at: reconciler::pin::now_rfc3339(),
            source: Source::Push,
            author: None,
            pusher: Some(pusher),
            summary: String::new(),
            problems: Vec::new(),
            more_problems: 0,
            branch_head: None,
        };
        record.set_problems(refusal.problems, refusal.more_problems);
        let store = self.store.clone();
        let rec = record.clone();
        let appended = tokio::task::spawn_blocking(move || store.append(&rec))
            .await
            .map_err(|e| MasterError::Runtime(std::io::Error::other(e)))
            .and_then(|r| r.map_err(MasterError::from));
        if let Err(e) = appended {
            log::limited(
                log::Level::Severe,
                "Master-0031",
                &format!("Cannot record a refused push: {e}"),
            );
        }
        self.publish(record, None);
    }
}

/// What a push the hook refused said (see [`State::record_refusal`]).
pub(super) struct Refusal {
    pub(super) commands: Vec<sniff::Command>,
    pub(super) refused: Vec<sniff::Refused>,
    pub(super) problems: Vec<serde_json::Value>,
    pub(super) more_problems: usize,
}
