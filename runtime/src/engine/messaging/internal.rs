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
