//! The Master's background work: following the repository's refs, polling the upstream in mirror
//! mode, watching heartbeats, and waiting for the signal to stop.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::state::{Event, State};
use super::{MasterError, Result, log};
use crate::pin::Source;

/// Safety net under the file watcher: a missed inotify event (queue overflow, a network file
/// system) delays a pin by at most this long.
pub(super) const SAFETY_POLL: Duration = Duration::from_secs(2);

pub(super) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Mirror mode: fetch at start, then every poll interval.
pub(super) async fn poll_upstream(state: Arc<State>) {
    let Some(interval) = state.mirror.as_ref().map(|m| m.upstream.poll_interval) else {
        return;
    };
    loop {
        state.sync(Source::Poll).await;
        tokio::time::sleep(interval).await;
    }
}

/// Watches the repository's refs; each change (coalesced) wakes [`follow`].
pub(super) fn watch(git_dir: &Path, tx: mpsc::Sender<()>) -> Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let err = |path: &Path, e: notify::Error| MasterError::Watch {
        path: path.to_owned(),
        cause: e.to_string(),
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        // Only ref files matter; pack and object writes during a push are noise.
        let relevant = event.paths.iter().any(|p| {
            p.components().any(|c| c.as_os_str() == "refs")
                || p.file_name()
                    .is_some_and(|n| n == "packed-refs" || n == "HEAD")
        });
        if relevant {
            // Capacity 1: a burst of events becomes one wake-up.
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| err(git_dir, e))?;
    let refs = git_dir.join("refs");
    watcher
        .watch(&refs, RecursiveMode::Recursive)
        .map_err(|e| err(&refs, e))?;
    watcher
        .watch(git_dir, RecursiveMode::NonRecursive)
        .map_err(|e| err(git_dir, e))?;
    Ok(watcher)
}

/// Decides on every ref change the watcher reports, and every [`SAFETY_POLL`].
pub(super) async fn follow(state: Arc<State>, mut rx: mpsc::Receiver<()>) {
    loop {
        tokio::select! {
            m = rx.recv() => if m.is_none() { return },
            () = tokio::time::sleep(SAFETY_POLL) => {}
        }
        state.reconcile(Source::Watch, None, None).await;
    }
}

/// Announces servers whose heartbeats stopped, once per outage.
pub(super) async fn watch_heartbeats(state: Arc<State>) {
    loop {
        let c = state.current();
        let m = &c.domain.config.master;
        let (interval, timeout) = (m.heartbeat_interval.0, m.heartbeat_timeout.0);
        let servers = &c.domain.config.servers;
        for view in state
            .servers
            .newly_lost(timeout, |n| servers.contains_key(n))
        {
            log::warning(
                "Master-0021",
                &format!(
                    "Server {} is unreachable: no heartbeat for {timeout:?}",
                    view.name
                ),
            );
            let _ = state
                .events
                .send(Arc::new(Event::new("server", None, &view)));
        }
        drop(c);
        // Check a few times per timeout, so "unreachable" shows promptly.
        let tick = (timeout / 4).clamp(
            Duration::from_millis(100),
            interval.max(Duration::from_millis(100)),
        );
        tokio::time::sleep(tick).await;
    }
}
