//! What an operator does to timers (docs/components.md, "Operated by the console"): the server's
//! `DELETE /v1/components/{app}/timers/{id}`, which `steward admin timers cancel` and the
//! WebAdmin page reach through the Master. Unlike the local API, the operator may also remove
//! timers whose application is gone (orphaned ones, declared or not); a declared timer of a
//! running application lives in Git, so cancelling it is refused with what to do instead.

use super::{ComponentEngine, TimerReport, report_of, store};

/// Why an operator's cancel was refused.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error(
        "no application {app} with timers on this server; applications with timers here: {}",
        list(known)
    )]
    UnknownApp { app: String, known: Vec<String> },
    #[error(
        "application {app} has no timer with id {id:?}; its timers: {}",
        list(known)
    )]
    UnknownTimer {
        app: String,
        id: String,
        known: Vec<String>,
    },
    #[error(
        "timer {id:?} of {app} is declared in the domain: remove `[applications.{app}.timers.{id}]` from domain.toml (a commit) to cancel it"
    )]
    Declared { app: String, id: String },
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// At most this many names in an error.
const SHOWN: usize = 20;

fn list(names: &[String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    let mut out = names
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        out.push_str(&format!(" … and {} more", names.len() - SHOWN));
    }
    out
}

impl ComponentEngine {
    /// Cancels timer `id` of `app` for an operator, durably: the removal is committed to the store
    /// before this returns. Run-time timers (failed ones included) and orphaned timers may be
    /// cancelled; a declared timer of a deployed application may not. Returns the timer as it was.
    pub fn operator_cancel(&self, app: &str, id: &str) -> Result<TimerReport, CancelError> {
        let key = store::key(app, id);
        let removed = {
            let mut st = self.inner.state();
            let Some(e) = st.entries.get(&key) else {
                let mut known: Vec<String> = Vec::new();
                let mut apps: Vec<String> = st.apps.keys().cloned().collect();
                for e in st.entries.values() {
                    if e.record.app == app {
                        known.push(e.record.id.clone());
                    }
                    if !apps.contains(&e.record.app) {
                        apps.push(e.record.app.clone());
                    }
                }
                if known.is_empty() && !apps.iter().any(|a| a == app) {
                    apps.sort();
                    return Err(CancelError::UnknownApp {
                        app: app.to_owned(),
                        known: apps,
                    });
                }
                return Err(CancelError::UnknownTimer {
                    app: app.to_owned(),
                    id: id.to_owned(),
                    known,
                });
            };
            if e.record.declared && e.orphaned.is_none() {
                return Err(CancelError::Declared {
                    app: app.to_owned(),
                    id: id.to_owned(),
                });
            }
            let orphaned = e.orphaned.is_some();
            let report = report_of(e);
            st.remove(&key);
            (report, orphaned)
        };
        let (removed, orphaned) = removed;
        self.inner.flush()?;
        self.inner.info(
            "COMP-0014",
            &format!(
                "Timer {app}/{id} was cancelled by an operator{}.",
                if orphaned { " (orphaned)" } else { "" }
            ),
        );
        Ok(removed)
    }
}
