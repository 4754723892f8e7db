//! The server's listeners: bound once at start (their addresses and ports change only with a
//! restart), each with a capacity that follows `thread-pool.max` live.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use schema::model::Listener;
use tokio::sync::Semaphore;

use super::{WebConfig, WebError};

/// A listener's capacity: a semaphore whose size follows `thread-pool.max`.
#[derive(Debug)]
pub(super) struct Capacity {
    pub(super) sem: Arc<Semaphore>,
    pub(super) capacity: Mutex<usize>,
    /// Requests answered 503 for want of a slot within queue-timeout.
    pub(super) rejected: AtomicU64,
}

impl Capacity {
    pub(super) fn new(n: usize) -> Capacity {
        Capacity {
            sem: Arc::new(Semaphore::new(n)),
            capacity: Mutex::new(n),
            rejected: AtomicU64::new(0),
        }
    }

    /// The configured size (while a shrink is under way, slots still held count as in use).
    pub(super) fn capacity(&self) -> usize {
        *self.capacity.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Grows at once; shrinks by taking permits out of circulation as requests return them, so
    /// requests already running are never cut short.
    pub(super) fn resize(&self, n: usize) {
        let Ok(mut cap) = self.capacity.lock() else {
            return;
        };
        if n > *cap {
            self.sem.add_permits(n - *cap);
        } else if n < *cap {
            let sem = Arc::clone(&self.sem);
            let take = *cap - n;
            tokio::spawn(async move {
                for _ in 0..take {
                    match sem.acquire().await {
                        Ok(p) => p.forget(),
                        Err(_) => return,
                    }
                }
            });
        }
        *cap = n;
    }
}

#[derive(Debug)]
pub(super) struct ListenerRt {
    pub(super) name: String,
    pub(super) configured: Listener,
    pub(super) local: SocketAddr,
    pub(super) pool: Capacity,
}

/// Binds every listener of `config`: the listeners, and their sockets in the same order. One
/// that cannot be bound fails the start.
pub(super) async fn bind(
    config: &WebConfig,
) -> Result<(Vec<ListenerRt>, Vec<tokio::net::TcpListener>), WebError> {
    let mut bound = Vec::new();
    let mut listeners = Vec::new();
    for (name, l) in &config.listeners {
        let addr = SocketAddr::new(l.address, l.port);
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|error| WebError::Bind {
                name: name.clone(),
                addr,
                error,
            })?;
        let local = tcp.local_addr().map_err(|error| WebError::Bind {
            name: name.clone(),
            addr,
            error,
        })?;
        listeners.push(ListenerRt {
            name: name.clone(),
            configured: l.clone(),
            local,
            pool: Capacity::new(l.thread_pool.max.max(1) as usize),
        });
        bound.push(tcp);
    }
    Ok((listeners, bound))
}

/// Paths of restart-only settings that differ between the bound listeners and `config`.
pub(super) fn restart_paths(listeners: &[ListenerRt], config: &WebConfig) -> Vec<String> {
    let base = format!("servers.{}.web.listeners", config.server);
    let mut out = Vec::new();
    for l in listeners {
        match config.listeners.get(&l.name) {
            None => out.push(format!("{base}.{}", l.name)),
            Some(c) => {
                if c.address != l.configured.address {
                    out.push(format!("{base}.{}.address", l.name));
                }
                if c.port != l.configured.port {
                    out.push(format!("{base}.{}.port", l.name));
                }
            }
        }
    }
    for name in config.listeners.keys() {
        if !listeners.iter().any(|l| &l.name == name) {
            out.push(format!("{base}.{name}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn pools_resize_in_place() {
        let pool = Capacity::new(4);
        let held = Arc::clone(&pool.sem)
            .acquire_many_owned(3)
            .await
            .expect("permits");
        pool.resize(2);
        // The shrink takes the one free permit now and one more when `held` is returned.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.sem.available_permits(), 0);
        drop(held);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.sem.available_permits(), 2);
        pool.resize(5);
        assert_eq!(pool.sem.available_permits(), 5);
    }
}
