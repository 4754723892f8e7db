//! In-process consumers of the broker: what message-driven components use instead of a STOMP
//! connection (docs/components.md#message-driven-components). Each is a `client-individual`
//! subscription of a connection of its own, so it has exactly a STOMP consumer's semantics:
//! round robin with the other consumers of a queue, its window of unacknowledged messages,
//! NACK → redelivery flagged `redelivered`, then the dead-letter queue after `max-redeliveries`;
//! closed without ACK, what it held goes back to the queue.

use std::sync::Arc;

use tokio::sync::{Notify, mpsc};

use super::broker::{AckMode, BrokerError, Delivery, Dest, Outbox, PREFETCH};
use super::{Inner, MessagingEngine, store};

/// The subscription id of an in-process consumer (its connection is its own).
const SUBSCRIPTION: &str = "component";

/// One in-process subscription. Dropping it ends the subscription: deliveries not yet
/// acknowledged are redelivered, as when a STOMP client disconnects.
pub struct Consumer {
    inner: Arc<Inner>,
    conn: u64,
    rx: mpsc::Receiver<Delivery>,
    /// A delivery taken from `rx` whose store group is not yet durable.
    pending: Option<Delivery>,
    settle: Settle,
}

/// Acknowledges or refuses deliveries of one [`Consumer`]; cheap to clone into the tasks that
/// handle them. Once the consumer is gone, both do nothing (its deliveries were given back).
#[derive(Clone)]
pub struct Settle {
    inner: Arc<Inner>,
    conn: u64,
    /// The queue whose deliveries are settled; none for a topic (topics keep nothing to settle).
    queue: Option<String>,
}

impl MessagingEngine {
    /// Subscribes in process to `dest` with a window of `window` unacknowledged deliveries (at
    /// most [`PREFETCH`]).
    pub fn consume(&self, dest: &Dest, window: usize) -> Result<Consumer, BrokerError> {
        let conn = self.inner.next_conn();
        let window = window.clamp(1, PREFETCH);
        let (tx, rx) = mpsc::channel(window);
        let out = Outbox {
            conn,
            tx,
            overflow: Arc::new(Notify::new()),
        };
        self.inner.broker().subscribe(
            out,
            SUBSCRIPTION,
            dest,
            AckMode::ClientIndividual,
            window,
        )?;
        Ok(Consumer {
            inner: self.inner.clone(),
            conn,
            rx,
            pending: None,
            settle: Settle {
                inner: self.inner.clone(),
                conn,
                queue: match dest {
                    Dest::Queue(name) => Some(name.clone()),
                    Dest::Topic(_) => None,
                },
            },
        })
    }
}

impl Consumer {
    /// The next delivery, once its store record says it was handed out (as a STOMP session
    /// writes a stored message only then: after a crash it comes back flagged). `None` when the
    /// engine shut down; an error when the store failed. Cancel-safe: a delivery taken from the
    /// channel waits in `pending` until it is returned, so `select!` may drop this future.
    pub async fn recv(&mut self) -> Option<Result<Delivery, Arc<store::StoreError>>> {
        if self.pending.is_none() {
            self.pending = Some(self.rx.recv().await?);
        }
        let ticket = self.pending.as_ref().map_or(0, |d| d.durable);
        if ticket > 0
            && let Some(s) = &self.inner.store
            && let Err(e) = s.durable(ticket).await
        {
            return Some(Err(e));
        }
        self.pending.take().map(Ok)
    }

    pub fn settle(&self) -> Settle {
        self.settle.clone()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Under one lock: once the subscription is gone nothing new reaches the channel, and
        // what waits there is in flight for this connection, given back by `disconnect`.
        let mut broker = self.inner.broker();
        broker.disconnect(self.conn);
        self.rx.close();
    }
}

impl Settle {
    /// Acknowledges delivery `ack` (its `ack` id): consumed.
    pub fn ack(&self, ack: u64) {
        if let Some(q) = &self.queue {
            self.inner.broker().ack(self.conn, q, &[ack]);
        }
    }

    /// Refuses delivery `ack`: redelivered, or dead-lettered after `max-redeliveries`.
    pub fn nack(&self, ack: u64) {
        if let Some(q) = &self.queue {
            self.inner.broker().nack(self.conn, q, &[ack]);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;
    use std::time::Duration;

    use schema::model::{Domain, Messaging, Queue};

    use super::*;
    use crate::auth::Auth;

    fn body(d: &Delivery) -> (&str, bool) {
        (std::str::from_utf8(&d.message.body).unwrap(), d.redelivered)
    }

    // The guard holds the store's writer back on purpose; this future runs on block_on's thread.
    #[allow(clippy::await_holding_lock)]
    #[test]
    fn an_in_process_consumer_is_a_stomp_consumer_and_recv_is_cancel_safe() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let cfg = Messaging {
                listener: None,
                queues: [(
                    "q".to_owned(),
                    Queue {
                        max_redeliveries: 1,
                        ..Queue::default()
                    },
                )]
                .into(),
                topics: Default::default(),
            };
            let engine = MessagingEngine::start(
                &cfg,
                Some(dir.path()),
                Arc::new(RwLock::new(Arc::new(Domain::default()))),
                Arc::new(Auth::new()),
                None,
            )
            .await
            .unwrap();
            let q = Dest::Queue("q".into());
            let store = engine.inner.store.clone().unwrap();
            let ticket = engine
                .inner
                .broker()
                .send(&q, Vec::new(), b"a".to_vec())
                .unwrap();
            store.durable(ticket).await.unwrap();
            // A stored message handed out while its delivery mark is not yet on disk: recv
            // waits, and giving up waiting (a select! taking another branch) loses nothing.
            let held = store.hold();
            let mut c = engine.consume(&q, 4).unwrap();
            let settle = c.settle();
            let gave_up = tokio::time::timeout(Duration::from_millis(200), c.recv()).await;
            assert!(gave_up.is_err(), "delivered before its mark is on disk");
            drop(held);
            let d = tokio::time::timeout(Duration::from_secs(30), c.recv())
                .await
                .expect("the delivery taken before giving up is not lost")
                .unwrap()
                .unwrap();
            assert_eq!(body(&d), ("a", false));
            // NACK: redelivered flagged; NACK again past max-redeliveries (1): dead-lettered.
            settle.nack(d.ack.unwrap());
            let d = c.recv().await.unwrap().unwrap();
            assert_eq!(body(&d), ("a", true));
            settle.nack(d.ack.unwrap());
            engine
                .inner
                .broker()
                .send(&q, Vec::new(), b"b".to_vec())
                .unwrap();
            let d = c.recv().await.unwrap().unwrap();
            assert_eq!(body(&d), ("b", false));
            // Dropped without ACK: `b` goes back to the queue, flagged.
            drop(c);
            let report = engine.report();
            let of = |name: &str| {
                report
                    .destinations
                    .iter()
                    .find(|r| r.destination == name)
                    .unwrap()
                    .clone()
            };
            assert_eq!(of("/queue/q.dlq").depth, 1);
            assert_eq!((of("/queue/q").depth, of("/queue/q").consumers), (1, 0));
            let mut again = engine.consume(&q, 4).unwrap();
            let d = again.recv().await.unwrap().unwrap();
            assert_eq!(body(&d), ("b", true));
            again.settle().ack(d.ack.unwrap());
            assert_eq!(engine.report().destinations[0].depth, 0);
            engine.shutdown();
        });
    }
}
