//! The messaging engine: queues and topics in the Managed Server's process, spoken to over
//! STOMP 1.2 on `messaging.listener`. Started at every boot: with no listener configured the
//! destinations exist (and are reported) but no client can reach them. Persistent destinations
//! are also kept on disk ([`store`], `SERVER_HOME/.workspace/tmlog`): see `docs/messaging.md`.
//!
//! The parts: [`frame`] the codec, [`broker`] the destinations behind one lock, [`store`] their
//! records and the thread that writes them, `session` one client connection. Live configuration: [`MessagingEngine::apply`] creates destinations and
//! changes limits at once; the listener is bound once (restart-class).

pub mod broker;
pub mod frame;
pub mod internal;
mod session;
pub mod store;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use schema::model::{Domain, Messaging, MessagingListener};
use serde::Serialize;
use tokio::sync::watch;

use crate::auth::Auth;
use crate::logfile::Logger;

pub use broker::DestinationReport;

/// Client connections served at once; more are refused with an ERROR frame.
pub const MAX_CONNECTIONS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    #[error("messaging listener: cannot bind {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("{0} (move the directory aside to start with no stored messages)")]
    Store(#[from] store::StoreError),
}

/// The accounts and policies of the applied commit, shared with the management API (live).
pub type SharedDomain = Arc<RwLock<Arc<Domain>>>;

struct Inner {
    broker: Mutex<broker::Broker>,
    /// Where persistent destinations are written; sessions wait on it for receipts.
    store: Option<Arc<store::Store>>,
    domain: SharedDomain,
    auth: Arc<Auth>,
    shutdown: watch::Sender<bool>,
    next_conn: AtomicU64,
    connections: AtomicUsize,
    /// The listener as bound at start (restart-class).
    listener: Option<MessagingListener>,
    local: Option<SocketAddr>,
}

impl Inner {
    fn broker(&self) -> MutexGuard<'_, broker::Broker> {
        self.broker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn domain(&self) -> Arc<Domain> {
        match self.domain.read() {
            Ok(d) => d.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The running engine. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct MessagingEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MessagingEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessagingEngine")
            .field("local", &self.inner.local)
            .finish()
    }
}

/// `GET /v1/messaging`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `stomp://host:port` clients connect to; absent without a listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub connections: usize,
    pub destinations: Vec<DestinationReport>,
}

/// The address applications on this machine connect to: the listener's, with a wildcard
/// address replaced by the loopback one.
pub fn url_of(l: &MessagingListener) -> String {
    let host = if l.address.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        l.address
    };
    format!("stomp://{}", SocketAddr::new(host, l.port))
}

impl MessagingEngine {
    /// Creates the configured destinations, takes back what the store in `store_dir` holds
    /// (none: memory only) and, when a listener is configured, binds it and serves STOMP on it.
    pub async fn start(
        cfg: &Messaging,
        store_dir: Option<&Path>,
        domain: SharedDomain,
        auth: Arc<Auth>,
        log: Option<Logger>,
    ) -> Result<MessagingEngine, MessagingError> {
        let (mut broker, store, recovered) = match store_dir {
            Some(dir) => {
                let (store, recovered) = store::Store::open(dir, log.clone())?;
                let store = Arc::new(store);
                (
                    broker::Broker::with_store(store.clone()),
                    Some(store),
                    Some((dir, recovered)),
                )
            }
            None => (broker::Broker::default(), None, None),
        };
        broker.apply(cfg);
        if let Some((dir, r)) = recovered {
            let logs = r.logs.len();
            let n = broker.recover(r);
            if let Some(log) = &log {
                log.info(
                    "MSG-0003",
                    &format!(
                        "Recovered {n} message(s) of {logs} destination(s) and durable subscription(s) from {}.",
                        dir.display()
                    ),
                );
            }
        }
        let bound = match &cfg.listener {
            Some(l) => {
                let addr = SocketAddr::new(l.address, l.port);
                let tcp = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|error| MessagingError::Bind { addr, error })?;
                let local = tcp.local_addr().unwrap_or(addr);
                Some((tcp, local))
            }
            None => None,
        };
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            broker: Mutex::new(broker),
            store,
            domain,
            auth,
            shutdown,
            next_conn: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            listener: cfg.listener.clone(),
            local: bound.as_ref().map(|(_, a)| *a),
        });
        if let Some(log) = &log {
            let n = cfg.queues.len() + cfg.topics.len();
            match &bound {
                Some((_, a)) => log.info(
                    "MSG-0001",
                    &format!("The messaging engine listens on {a} (STOMP 1.2); {n} destination(s)."),
                ),
                None => log.info(
                    "MSG-0002",
                    &format!("The messaging engine runs without a listener (messaging.listener is not set); {n} destination(s)."),
                ),
            }
        }
        if let Some((tcp, _)) = bound {
            tokio::spawn(accept_loop(inner.clone(), tcp));
        }
        Ok(MessagingEngine { inner })
    }

    /// Applies a new configuration: destinations added, limits changed (messages kept), removed
    /// destinations drained. A changed listener is not applied: it is restart-class, and the
    /// plan reports it as pending restart.
    pub fn apply(&self, cfg: &Messaging) {
        self.inner.broker().apply(cfg);
    }

    /// The bound listener's address (none without a listener).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local
    }

    pub fn report(&self) -> Report {
        Report {
            url: self.inner.listener.as_ref().map(url_of),
            connections: self.inner.connections.load(Ordering::Relaxed),
            destinations: self.inner.broker().report(),
        }
    }

    /// Stops accepting and closes every connection with an ERROR frame; unacknowledged
    /// messages stay in their queues (persistent ones on disk), and what the store had pending
    /// is written before this returns.
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        if let Some(s) = &self.inner.store {
            s.close();
        }
    }
}

async fn accept_loop(inner: Arc<Inner>, tcp: tokio::net::TcpListener) {
    let mut stop = inner.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            a = tcp.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((mut stream, peer)) = accepted else {
            // Out of descriptors and the like: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        if inner.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            inner.connections.fetch_sub(1, Ordering::SeqCst);
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut out = Vec::new();
                frame::Frame::new("ERROR")
                    .header("message", "too many connections")
                    .encode(&mut out);
                let _ = stream.write_all(&out).await;
            });
            continue;
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            session::serve(inner.clone(), stream, peer).await;
            inner.connections.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::model::{Queue, Role, User};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads from `s` until what was read contains `needle`.
    async fn read_until(s: &mut tokio::net::TcpStream, needle: &str) -> String {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&all).contains(needle) {
            let n = tokio::time::timeout(std::time::Duration::from_secs(30), s.read(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&all));
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).into_owned()
    }

    /// Sends `frame`, waits until the engine shows its effect (`done`), and checks that nothing
    /// was answered (the store's writer is held back).
    async fn held_back(
        engine: &MessagingEngine,
        s: &mut tokio::net::TcpStream,
        frame: &[u8],
        done: impl Fn(&Report) -> bool,
        what: &str,
    ) {
        s.write_all(frame).await.unwrap();
        while !done(&engine.report()) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Time for a wrong answer to arrive; the right one never does while the writer waits.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut buf = [0u8; 64];
        assert!(
            matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{what}"
        );
    }

    // The guard holds the store's writer back on purpose; this future runs on block_on's thread.
    #[allow(clippy::await_holding_lock)]
    #[test]
    fn receipts_and_deliveries_of_stored_messages_wait_for_the_disk() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let cfg = Messaging {
                listener: Some(MessagingListener {
                    address: "127.0.0.1".parse().unwrap(),
                    port: 0,
                }),
                queues: [("q".to_owned(), Queue::default())].into(),
                topics: Default::default(),
            };
            let mut domain = Domain::default();
            domain.accounts.users.insert(
                "u".into(),
                User {
                    password: schema::security::hash_password("pw").unwrap(),
                    groups: Vec::new(),
                    description: String::new(),
                },
            );
            domain.policies.roles.insert(
                "r".into(),
                Role {
                    permissions: vec!["messaging:*".into()],
                    users: vec!["u".into()],
                    ..Role::default()
                },
            );
            let engine = MessagingEngine::start(
                &cfg,
                Some(dir.path()),
                Arc::new(RwLock::new(Arc::new(domain))),
                Arc::new(Auth::new()),
                None,
            )
            .await
            .unwrap();
            let store = engine.inner.store.clone().unwrap();
            let mut s = tokio::net::TcpStream::connect(engine.local_addr().unwrap())
                .await
                .unwrap();
            s.write_all(b"CONNECT\naccept-version:1.2\nlogin:u\npasscode:pw\n\n\0")
                .await
                .unwrap();
            read_until(&mut s, "CONNECTED").await;
            // Queued, handed to the store, not yet committed: no receipt.
            let held = store.hold();
            let frame = b"SEND\ndestination:/queue/q\nreceipt:r1\n\nhello\0";
            let queued = |r: &Report| r.destinations[0].depth > 0;
            held_back(
                &engine,
                &mut s,
                frame,
                queued,
                "a receipt before the commit",
            )
            .await;
            // The connection goes on handling frames while its receipt waits for the disk.
            let frame = b"SEND\ndestination:/queue/q\nreceipt:r2\n\nworld\0";
            let both = |r: &Report| r.destinations[0].depth == 2;
            held_back(&engine, &mut s, frame, both, "a receipt before the commit").await;
            assert_eq!(store.progress().durable, 0);
            drop(held);
            let answer = read_until(&mut s, "receipt-id:r2").await;
            let (r1, r2) = (answer.find("receipt-id:r1"), answer.find("receipt-id:r2"));
            assert!(r1.is_some() && r1 < r2, "in order: {answer}");
            assert!(store.progress().durable >= 1);
            // A stored message may be handed out once a lease covering it is on disk.
            let held = store.hold();
            let frame =
                b"SUBSCRIBE\nid:1\ndestination:/queue/q\nack:client-individual\nprefetch-count:1\n\n\0";
            let handed = |r: &Report| r.destinations[0].in_flight > 0;
            held_back(
                &engine,
                &mut s,
                frame,
                handed,
                "a delivery before its lease is on disk",
            )
            .await;
            drop(held);
            let answer = read_until(&mut s, "hello").await;
            let ack = answer
                .lines()
                .find_map(|l| l.strip_prefix("ack:"))
                .expect("an ack header")
                .to_owned();
            // The lease covered the next message too: its delivery waits for nothing, not even
            // for the commit of the ACK that makes room for it.
            let held = store.hold();
            s.write_all(format!("ACK\nid:{ack}\n\n\0").as_bytes())
                .await
                .unwrap();
            read_until(&mut s, "world").await;
            drop(held);
            engine.shutdown();
        });
    }

    #[test]
    fn applications_reach_a_wildcard_listener_on_the_loopback_address() {
        let l = |a: &str| MessagingListener {
            address: a.parse().unwrap(),
            port: 61613,
        };
        assert_eq!(url_of(&l("0.0.0.0")), "stomp://127.0.0.1:61613");
        assert_eq!(url_of(&l("::")), "stomp://127.0.0.1:61613");
        assert_eq!(url_of(&l("10.1.2.3")), "stomp://10.1.2.3:61613");
        assert_eq!(url_of(&l("::1")), "stomp://[::1]:61613");
    }
}
