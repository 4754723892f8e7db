//! What the Master knows (the current pin and its domain, the event channel, the server
//! registry, the mirror) and the decisions it takes under the decision lock: pin, reject, roll
//! back, record a refused push, authenticate.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::{Mutex, OwnedMutexGuard, broadcast};

use super::routes::unauthorized;
use super::{MasterError, Result, auth, log, mirror, servers, sniff};
use crate::git::{Oid, Repo};
use crate::pin::{Outcome, PinStore, Record, Source};

/// What the domain runs now.
pub(super) struct Current {
    pub(super) commit: Oid,
    pub(super) at: String,
    pub(super) domain: schema::model::Domain,
}

/// One message of `/v1/events`, encoded once however many subscribers there are.
#[derive(Debug, Clone)]
pub(super) struct Event {
    /// SSE event name: `pinned`, `rejected` or `server`.
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
    pub(super) events: broadcast::Sender<Arc<Event>>,
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
    /// Rolling restarts: which server of each cluster was ordered to restart.
    pub(super) rolling: super::rolling::Rolling,
    /// Mirror mode; `None` when the Master hosts the repository.
    pub(super) mirror: Option<mirror::Mirror>,
}

/// Loads the pinned commit's domain; errors name the problem.
pub(super) fn load_pinned(store: &PinStore) -> Result<Current> {
    let commit = store
        .pinned()?
        .ok_or_else(|| MasterError::NothingPinned(store.git_dir().to_owned()))?;
    let repo = Repo::open(store.git_dir()).map_err(|e| MasterError::Git(e.to_string()))?;
    let tree = repo
        .tree(commit)
        .map_err(|e| MasterError::Git(e.to_string()))?;
    let v = schema::validate(&tree);
    let Some(loaded) = v.loaded else {
        return Err(MasterError::PinnedInvalid {
            commit: commit.to_hex(),
            problems: v.report.render_short(),
        });
    };
    let at = store
        .history()?
        .into_iter()
        .rev()
        .find(|r| r.outcome == Outcome::Pinned && r.commit == commit.to_hex())
        .map(|r| r.at)
        .unwrap_or_default();
    Ok(Current {
        commit,
        at,
        domain: loaded.domain,
    })
}

/// A record describing `commit` (author and summary from the commit itself).
pub(super) fn describe(repo: &Repo, commit: Oid, outcome: Outcome, source: Source) -> Record {
    let info = repo.commit_info(commit).ok();
    Record {
        outcome,
        commit: commit.to_hex(),
        previous: None,
        at: crate::pin::now_rfc3339(),
        source,
        author: info
            .as_ref()
            .map(|i| format!("{} <{}>", i.author_name, i.author_email)),
        pusher: None,
        summary: info.map(|i| i.summary).unwrap_or_default(),
        problems: Vec::new(),
        more_problems: 0,
        branch_head: None,
    }
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
    pub(super) fn vitals(&self) -> serde_json::Value {
        serde_json::json!({
            "watch_wakeups": self.wakeups.load(std::sync::atomic::Ordering::Relaxed),
            "connections": { "open": self.connections.len(), "cap": self.connections.cap() },
        })
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
        match self.decide_locked(&mut decided, source, pusher).await {
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
    /// that cannot be pinned is refused).
    pub(super) async fn decide_locked(
        self: &Arc<Self>,
        decided: &mut OwnedMutexGuard<Option<Oid>>,
        source: Source,
        pusher: Option<String>,
    ) -> Result<Option<Record>> {
        let me = self.clone();
        let last = **decided;
        let outcome = tokio::task::spawn_blocking(move || me.decide(last, source, pusher))
            .await
            .map_err(|e| MasterError::Runtime(std::io::Error::other(e)))??;
        let Some((head, record, current)) = outcome else {
            return Ok(None);
        };
        **decided = Some(head);
        self.publish(record.clone(), current);
        Ok(Some(record))
    }

    /// Moves `branch` back from `from` to `to` (`None`: deletes it), only if it is still at `from`:
    /// for a push git accepted but the Master could not pin.
    pub(super) fn unmove_branch(&self, from: Oid, to: Option<Oid>) -> Result<()> {
        let mut cmd = std::process::Command::new("git");
        cmd.arg("--git-dir").arg(self.store.git_dir());
        match to {
            Some(to) => cmd.args([
                "update-ref",
                "-m",
                "steward: push not pinned",
                &self.branch,
                &to.to_hex(),
                &from.to_hex(),
            ]),
            None => cmd.args(["update-ref", "-d", &self.branch, &from.to_hex()]),
        };
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| MasterError::Git(format!("cannot run git update-ref: {e}")))?;
        if !out.status.success() {
            return Err(MasterError::Git(format!(
                "git update-ref {}: {}",
                self.branch,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
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
        let fetched = tokio::task::spawn_blocking(move || mirror::fetch(&git_dir, &url, &branch))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
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
                        "outcome": match r.outcome { Outcome::Pinned => "pinned", Outcome::Rejected => "rejected" },
                        "commit": r.commit,
                        "problems": r.problems,
                    }),
                    None => serde_json::json!({ "outcome": "unchanged", "commit": head.to_hex() }),
                }
            }
            Err(e) => {
                drop(guard);
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
        let name = match record.outcome {
            Outcome::Pinned => "pinned",
            Outcome::Rejected => "rejected",
        };
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
        let _ = self.events.send(Arc::new(Event::new(name, id, &record)));
    }

    /// The blocking part of [`State::reconcile`]: `None` when there is nothing new to decide.
    pub(super) fn decide(
        &self,
        last: Option<Oid>,
        source: Source,
        pusher: Option<String>,
    ) -> Result<Option<(Oid, Record, Option<Current>)>> {
        let repo = Repo::open(self.store.git_dir()).map_err(|e| MasterError::Git(e.to_string()))?;
        let Some(head) = repo
            .resolve(&self.branch)
            .map_err(|e| MasterError::Git(e.to_string()))?
        else {
            return Ok(None); // the branch was deleted: keep the pin
        };
        let pinned = self.store.pinned()?;
        if Some(head) == pinned || Some(head) == last {
            return Ok(None);
        }
        let tree = repo
            .tree(head)
            .map_err(|e| MasterError::Git(e.to_string()))?;
        // Validate again even though the hook did: a ref can be moved without a push, and an
        // invalid commit is never pinned.
        let v = schema::validate(&tree);
        let mut record = describe(&repo, head, Outcome::Pinned, source);
        record.pusher = pusher;
        record.previous = pinned.map(|p| p.to_hex());
        match v.loaded {
            Some(loaded) => {
                self.store.pin(head, pinned, &record)?;
                let current = Current {
                    commit: head,
                    at: record.at.clone(),
                    domain: loaded.domain,
                };
                Ok(Some((head, record, Some(current))))
            }
            None => {
                record.outcome = Outcome::Rejected;
                let (problems, omitted) = report_problems(&v.report);
                record.set_problems(problems, omitted);
                self.store.append(&record)?;
                Ok(Some((head, record, None)))
            }
        }
    }

    /// The blocking part of `POST /v1/domain/pin`.
    pub(super) fn rollback(&self, rev: &str, user: String) -> Result<Rollback> {
        let git = |e: crate::git::GitError| MasterError::Git(e.to_string());
        let repo = Repo::open(self.store.git_dir()).map_err(git)?;
        let Ok(Some(commit)) = repo.resolve(rev) else {
            return Ok(Rollback::NotFound);
        };
        let pinned = self.store.pinned()?;
        if pinned == Some(commit) {
            return Ok(Rollback::Unchanged(commit));
        }
        let tree = repo.tree(commit).map_err(git)?;
        let loaded = match rollback_target(&tree) {
            Ok(loaded) => loaded,
            Err(invalid) => return Ok(invalid),
        };
        let head = repo.resolve(&self.branch).map_err(git)?;
        let mut record = describe(&repo, commit, Outcome::Pinned, Source::Rollback);
        record.pusher = Some(user);
        record.previous = pinned.map(|p| p.to_hex());
        record.branch_head = Some(head.map(|h| h.to_hex()).unwrap_or_default());
        self.store.pin(commit, pinned, &record)?;
        let current = Current {
            commit,
            at: record.at.clone(),
            domain: loaded.domain,
        };
        Ok(Rollback::Done(Box::new((head, record, current))))
    }

    /// Records a push the pre-receive hook refused for the followed branch: the commit never
    /// entered the repository, so what is known comes from the conversation itself (see
    /// [`super::push`]): the commands, what git refused and why, and the hook's problems (the first
    /// ones, and how many more).
    pub(super) async fn record_refusal(self: &Arc<Self>, refusal: Refusal, pusher: String) {
        let declined = refusal
            .refused
            .iter()
            .any(|(name, reason)| *name == self.branch && reason.contains("hook declined"));
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
            at: crate::pin::now_rfc3339(),
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

    /// The authenticated user, or the response to send instead: 401 without valid credentials,
    /// 503 or 429 (with `Retry-After`) while verifications are bounded (see [`auth`]). `from`: the
    /// client's address, whose failures count. The router checks this before any route is
    /// chosen or any body read; routes then call [`State::require`].
    pub(super) async fn authenticate(
        &self,
        headers: &HeaderMap,
        from: Option<std::net::IpAddr>,
    ) -> Result<String, Response> {
        let Some((user, password)) = auth::parse_basic(headers) else {
            return Err(unauthorized());
        };
        let current = self.current();
        let hash = current
            .domain
            .accounts
            .users
            .get(&user)
            .map(|u| &u.password);
        match self
            .auth
            .check(from, &user, &password, hash.map(String::as_str))
            .await
        {
            auth::Verdict::Valid => Ok(user),
            auth::Verdict::Invalid => Err(unauthorized()),
            auth::Verdict::Busy => Err(retry_after(
                StatusCode::SERVICE_UNAVAILABLE,
                std::time::Duration::from_secs(1),
            )),
            auth::Verdict::Throttled(wait) => Err(retry_after(StatusCode::TOO_MANY_REQUESTS, wait)),
        }
    }

    /// The authenticated user, or the response to send instead: the user the router's gate
    /// authenticated (else, on a route the gate leaves open, as [`State::authenticate`]), and 403
    /// when the user lacks `permission`. Neither says which part was wrong.
    pub(super) async fn require(
        self: &Arc<Self>,
        headers: &HeaderMap,
        permission: &str,
    ) -> Result<String, Response> {
        let gated = super::routes::AUTHENTICATED
            .try_with(Clone::clone)
            .ok()
            .flatten();
        let user = match gated {
            Some(user) => user,
            None => self.authenticate(headers, None).await?,
        };
        if !self.current().domain.permits(&user, permission) {
            return Err(StatusCode::FORBIDDEN.into_response());
        }
        Ok(user)
    }
}

/// `status` with `Retry-After` in whole seconds (at least 1).
fn retry_after(status: StatusCode, wait: std::time::Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut r = status.into_response();
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(secs.max(1)),
    );
    r
}

/// What a push the hook refused said (see [`State::record_refusal`]).
pub(super) struct Refusal {
    pub(super) commands: Vec<sniff::Command>,
    pub(super) refused: Vec<(String, String)>,
    pub(super) problems: Vec<serde_json::Value>,
    pub(super) more_problems: usize,
}

/// A rollback target's configuration, or why it cannot be pinned (hosted and mirror mode alike).
pub(super) fn rollback_target(
    tree: &dyn schema::tree::Tree,
) -> std::result::Result<schema::Loaded, Rollback> {
    let v = schema::validate(tree);
    v.loaded
        .ok_or_else(|| Rollback::Invalid(report_problems(&v.report).0))
}

/// A report's problems as `steward validate --format json` gives them, and how many more the
/// validator itself left out.
fn report_problems(report: &schema::diag::Report) -> (Vec<serde_json::Value>, usize) {
    let json = report.to_json();
    let problems = json["problems"].as_array().cloned().unwrap_or_default();
    (problems, json["omitted"].as_u64().unwrap_or(0) as usize)
}

pub(super) enum Rollback {
    /// The branch head at the time (now decided), the record, the new current pin.
    Done(Box<(Option<Oid>, Record, Current)>),
    Unchanged(Oid),
    NotFound,
    Invalid(Vec<serde_json::Value>),
}
