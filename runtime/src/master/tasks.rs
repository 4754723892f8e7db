//! The Master's background work: following the repository's refs, polling the upstream in mirror
//! mode, watching heartbeats, and waiting for the signal to stop.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::state::{Event, State};
use super::{MasterError, Result, log};
use reconciler::pin::Source;

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

/// Whether a file event can mean that a ref changed: a ref file (under `refs/`) or `packed-refs`
/// created, renamed into place, written and closed, or removed. Git writes a ref to `<name>.lock`
/// and renames it, so lock files themselves are ignored; so are opens and reads (the Master's own
/// reads of the repository would otherwise wake it, and waking it makes it read again), and pack
/// and object writes during a push.
pub(super) fn signals_ref_change(kind: &notify::EventKind, path: &Path) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    let kind_counts = matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    );
    let is_lock = path.extension().is_some_and(|e| e == "lock");
    let is_ref = path.components().any(|c| c.as_os_str() == "refs")
        || path.file_name().is_some_and(|n| n == "packed-refs");
    kind_counts && is_ref && !is_lock
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
        if event
            .paths
            .iter()
            .any(|p| signals_ref_change(&event.kind, p))
        {
            // Capacity 1: a burst of events becomes one wake-up.
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| err(git_dir, e))?;
    let refs = git_dir.join("refs");
    watcher
        .watch(&refs, RecursiveMode::Recursive)
        .map_err(|e| err(&refs, e))?;
    // For packed-refs, which lives at the top.
    watcher
        .watch(git_dir, RecursiveMode::NonRecursive)
        .map_err(|e| err(git_dir, e))?;
    Ok(watcher)
}

/// Decides on every ref change the watcher reports, and every [`SAFETY_POLL`].
pub(super) async fn follow(state: Arc<State>, mut rx: mpsc::Receiver<()>) {
    loop {
        tokio::select! {
            m = rx.recv() => {
                if m.is_none() { return }
                state.wakeups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
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
            state.events.send(Event::new("server", None, &view));
        }
        for node in state.nodes.newly_lost(timeout) {
            log::warning(
                "Master-0093",
                &format!(
                    "Node {node} is not connected: its agent has not polled for {timeout:?}; its servers keep running, and starts there fail until it is back"
                ),
            );
            super::nodes::announce(&state, &c.domain, &node);
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

#[cfg(test)]
mod tests {
    use super::*;
    use notify::EventKind;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode,
    };

    #[test]
    fn only_ref_changes_wake_the_master() {
        let main = Path::new("/h/config/domain.git/refs/heads/main");
        let lock = Path::new("/h/config/domain.git/refs/heads/main.lock");
        let packed = Path::new("/h/config/domain.git/packed-refs");
        let head = Path::new("/h/config/domain.git/HEAD");
        let object = Path::new("/h/config/domain.git/objects/ab/cdef");
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        let written = EventKind::Access(AccessKind::Close(AccessMode::Write));
        let opened = EventKind::Access(AccessKind::Open(AccessMode::Any));
        let read_closed = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert!(signals_ref_change(&renamed, main));
        assert!(signals_ref_change(&renamed, packed));
        assert!(signals_ref_change(&written, main));
        assert!(signals_ref_change(
            &EventKind::Create(CreateKind::File),
            main
        ));
        assert!(signals_ref_change(
            &EventKind::Remove(RemoveKind::File),
            main
        ));
        // The Master's own reads, lock files, HEAD and objects never wake it.
        assert!(!signals_ref_change(&opened, main));
        assert!(!signals_ref_change(&opened, head));
        assert!(!signals_ref_change(&read_closed, packed));
        assert!(!signals_ref_change(&renamed, lock));
        assert!(!signals_ref_change(
            &EventKind::Create(CreateKind::File),
            lock
        ));
        assert!(!signals_ref_change(&renamed, head));
        assert!(!signals_ref_change(
            &EventKind::Create(CreateKind::File),
            object
        ));
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(
            !signals_ref_change(&data, main),
            "written in place: the close counts"
        );
    }
}
