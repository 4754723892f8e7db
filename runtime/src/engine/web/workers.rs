//! The threads that serve connections: one single-threaded tokio runtime each, as many as the
//! runtime that starts the engine has workers (`process.runtime-threads`). The accept loop hands
//! each new connection to the next one in turn; the connection is served there from its first
//! request to its close, and the upstream connections its requests use belong to that thread
//! (see [`super::pool`]). So a request, its upstream exchange and the wake-ups between them stay
//! on one thread, as in nginx's worker processes: measured against a multi-threaded runtime
//! where they were spread over the workers, see docs/web-engine.md "Reverse proxy".

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::watch;

thread_local! {
    /// The index of the serving thread this is, if it is one.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The serving thread the caller runs on (0 elsewhere: tests, the engine's own tasks).
pub fn current() -> usize {
    CURRENT.with(Cell::get).unwrap_or(0)
}

#[derive(Debug)]
pub(super) struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: watch::Sender<bool>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Workers {
    /// Starts `n` serving threads (at least one).
    pub(super) fn start(n: usize) -> std::io::Result<Workers> {
        let (stop, _) = watch::channel(false);
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for index in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let mut stopped = stop.subscribe();
            let thread = std::thread::Builder::new()
                .name(format!("steward-web-{index}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(Some(index)));
                    // Until the engine is shut down (or gone); the connections still open then
                    // are dropped with the runtime.
                    rt.block_on(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    });
                })?;
            threads.push(thread);
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            stop,
            threads: Mutex::new(threads),
        })
    }

    pub(super) fn len(&self) -> usize {
        self.handles.len()
    }

    /// The thread the next connection goes to (in turn).
    pub(super) fn next(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }

    /// Stops every serving thread and waits for them to end (off the async threads).
    pub(super) async fn stop(&self) {
        let _ = self.stop.send(true);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
