//! The destinations and what they hold: queues (competing consumers, round robin, in order per
//! consumer, redelivery and dead letters) and topics (every subscriber gets each message). All
//! of it is plain data behind the engine's one lock; deliveries leave through each connection's
//! bounded outbox ([`Outbox`]), never blocking the lock.
//!
//! Over 600 lines because its last third is unit tests: queue and topic semantics are decided here
//! and tested here, without sockets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use schema::model::Messaging;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};

/// Deliveries a client-ack subscription may hold unacknowledged unless it asks for fewer
/// (`prefetch-count`).
pub const PREFETCH: usize = 100;
/// Redeliveries of a queue message before it moves to the queue's dead-letter queue.
pub const MAX_REDELIVERIES: u32 = 5;
/// The suffix of a queue's dead-letter queue: `/queue/orders` → `/queue/orders.dlq`.
pub const DLQ_SUFFIX: &str = ".dlq";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("destination {0} must be /queue/NAME or /topic/NAME")]
    BadDestination(String),
    #[error("no destination {0} is configured on this server")]
    NoSuchDestination(String),
    #[error("queue {queue} is full (max-depth {max_depth}); message refused")]
    Full { queue: String, max_depth: u64 },
    #[error("topic {topic} has its max-subscribers ({max}) already")]
    TooManySubscribers { topic: String, max: u64 },
    #[error("destination {0} was removed from the configuration and accepts nothing new")]
    Removed(String),
}

/// A destination as clients name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dest {
    Queue(String),
    Topic(String),
}

impl Dest {
    pub fn parse(s: &str) -> Result<Dest, BrokerError> {
        let bad = || BrokerError::BadDestination(s.to_owned());
        let (kind, name) = if let Some(n) = s.strip_prefix("/queue/") {
            (true, n)
        } else if let Some(n) = s.strip_prefix("/topic/") {
            (false, n)
        } else {
            return Err(bad());
        };
        if name.is_empty() || name.contains('/') {
            return Err(bad());
        }
        Ok(if kind {
            Dest::Queue(name.to_owned())
        } else {
            Dest::Topic(name.to_owned())
        })
    }
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::Queue(n) => write!(f, "/queue/{n}"),
            Dest::Topic(n) => write!(f, "/topic/{n}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    Auto,
    Client,
    ClientIndividual,
}

/// A message as sent: its user headers and body.
#[derive(Debug)]
pub struct Message {
    pub id: u64,
    pub destination: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// One MESSAGE to write to a connection.
#[derive(Debug)]
pub struct Delivery {
    pub subscription: String,
    /// The `ack` header: the delivery to ACK or NACK (client modes only).
    pub ack: Option<u64>,
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// A queue delivery (as opposed to a topic's).
    pub queue: Option<String>,
}

/// Where a connection's deliveries go: a bounded channel (the pending-frame limit) and the
/// signal that a topic message could not be queued there (the connection is then closed).
#[derive(Debug, Clone)]
pub struct Outbox {
    pub conn: u64,
    pub tx: mpsc::Sender<Delivery>,
    pub overflow: Arc<Notify>,
}

#[derive(Debug)]
struct Consumer {
    out: Outbox,
    sub: String,
    ack: AckMode,
    window: usize,
    unacked: usize,
}

#[derive(Debug, Clone)]
struct Held {
    msg: Arc<Message>,
    redeliveries: u32,
}

/// Counters of one destination, as `GET /v1/messaging` reports them.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub enqueued: u64,
    pub dequeued: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
    /// Dead letters a full dead-letter queue could not take (dropped).
    pub discarded: u64,
}

#[derive(Debug)]
struct QueueState {
    max_depth: u64,
    persistent: bool,
    ready: VecDeque<Held>,
    consumers: Vec<Consumer>,
    next: usize,
    /// Delivered to a client-ack consumer, not yet acknowledged: by delivery id.
    inflight: HashMap<u64, (u64, String, Held)>,
    counts: Counts,
    /// Still in the configuration (directly, or as a configured queue's dead-letter queue).
    configured: bool,
    /// The queue this one is the dead-letter queue of: its messages are never dead-lettered again.
    dead_letter_of: Option<String>,
}

#[derive(Debug)]
struct TopicState {
    max_subscribers: u64,
    subscribers: Vec<Consumer>,
    counts: Counts,
    configured: bool,
}

/// One destination in [`Broker::report`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DestinationReport {
    pub destination: String,
    pub kind: &'static str,
    /// Messages held: waiting plus delivered and not yet acknowledged (queues).
    pub depth: u64,
    pub in_flight: u64,
    pub consumers: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_subscribers: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
    /// Removed from the configuration, kept until what it holds is consumed.
    pub draining: bool,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Default)]
pub struct Broker {
    queues: BTreeMap<String, QueueState>,
    topics: BTreeMap<String, TopicState>,
    next_id: u64,
}

impl QueueState {
    fn new(max_depth: u64, persistent: bool, dead_letter_of: Option<String>) -> QueueState {
        QueueState {
            max_depth,
            persistent,
            ready: VecDeque::new(),
            consumers: Vec::new(),
            next: 0,
            inflight: HashMap::new(),
            counts: Counts::default(),
            configured: true,
            dead_letter_of,
        }
    }

    fn depth(&self) -> u64 {
        (self.ready.len() + self.inflight.len()) as u64
    }

    /// Hands waiting messages to consumers with room, round robin from where it left off.
    fn dispatch(&mut self, name: &str, next_id: &mut u64) {
        while !self.ready.is_empty() && !self.consumers.is_empty() {
            let n = self.consumers.len();
            let Some(i) = (0..n)
                .map(|k| (self.next + k) % n)
                .find(|&i| has_room(&self.consumers[i]))
            else {
                return;
            };
            self.next = (i + 1) % n;
            let Some(held) = self.ready.pop_front() else {
                return;
            };
            let c = &mut self.consumers[i];
            let ack = (c.ack != AckMode::Auto).then(|| {
                *next_id += 1;
                *next_id
            });
            let delivery = Delivery {
                subscription: c.sub.clone(),
                ack,
                message: held.msg.clone(),
                redelivered: held.redeliveries > 0,
                queue: Some(name.to_owned()),
            };
            // `has_room` saw capacity and only this lock's holder sends: this cannot fail, but
            // if it did the message goes back rather than being lost.
            if c.out.tx.try_send(delivery).is_err() {
                self.ready.push_front(held);
                return;
            }
            match ack {
                Some(id) => {
                    c.unacked += 1;
                    self.inflight.insert(id, (c.out.conn, c.sub.clone(), held));
                }
                None => self.counts.dequeued += 1,
            }
        }
    }
}

/// Whether `c` may take one more message: client modes up to their window of unacknowledged
/// messages; `auto` up to its window of messages handed to the connection and not yet written
/// (those are returned to the queue if the connection ends: [`Broker::unsent`]).
fn has_room(c: &Consumer) -> bool {
    let waiting = c.out.tx.max_capacity() - c.out.tx.capacity();
    c.out.tx.capacity() > 0
        && match c.ack {
            AckMode::Auto => waiting < c.window,
            _ => c.unacked < c.window,
        }
}

/// Destination `name` of `dest`'s kind, or the error a client gets for one that does not exist.
fn existing<'a, T>(
    map: &'a mut BTreeMap<String, T>,
    name: &str,
    dest: &Dest,
) -> Result<&'a mut T, BrokerError> {
    map.get_mut(name)
        .ok_or_else(|| BrokerError::NoSuchDestination(dest.to_string()))
}

impl Broker {
    /// Creates destinations that are new in `cfg` and applies the limits of those that exist
    /// (kept messages stay). A destination no longer configured refuses new messages and
    /// subscriptions, and is forgotten once it holds nothing and nobody consumes it.
    pub fn apply(&mut self, cfg: &Messaging) {
        for q in self.queues.values_mut() {
            q.configured = false;
        }
        for t in self.topics.values_mut() {
            t.configured = false;
        }
        for (name, q) in &cfg.queues {
            let dlq = format!("{name}{DLQ_SUFFIX}");
            for (n, dead_letter_of) in [(name.clone(), None), (dlq, Some(name.clone()))] {
                let explicit = cfg.queues.get(&n);
                let (depth, persistent) =
                    explicit.map_or((q.max_depth, q.persistent), |e| (e.max_depth, e.persistent));
                let dead_letter_of = if explicit.is_some() {
                    None
                } else {
                    dead_letter_of
                };
                let s = self
                    .queues
                    .entry(n)
                    .or_insert_with(|| QueueState::new(depth, persistent, dead_letter_of.clone()));
                s.max_depth = depth;
                s.persistent = persistent;
                s.configured = true;
                s.dead_letter_of = dead_letter_of;
            }
        }
        for (name, t) in &cfg.topics {
            let s = self
                .topics
                .entry(name.clone())
                .or_insert_with(|| TopicState {
                    max_subscribers: t.max_subscribers,
                    subscribers: Vec::new(),
                    counts: Counts::default(),
                    configured: true,
                });
            s.max_subscribers = t.max_subscribers;
            s.configured = true;
        }
        self.sweep();
    }

    /// Forgets removed destinations that hold nothing and have no consumer.
    fn sweep(&mut self) {
        self.queues
            .retain(|_, q| q.configured || q.depth() > 0 || !q.consumers.is_empty());
        self.topics
            .retain(|_, t| t.configured || !t.subscribers.is_empty());
    }

    /// Enqueues (queue) or publishes (topic) a message.
    pub fn send(
        &mut self,
        dest: &Dest,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<(), BrokerError> {
        self.next_id += 1;
        let msg = Arc::new(Message {
            id: self.next_id,
            destination: dest.to_string(),
            headers,
            body,
        });
        match dest {
            Dest::Queue(name) => {
                let q = existing(&mut self.queues, name, dest)?;
                if !q.configured {
                    return Err(BrokerError::Removed(dest.to_string()));
                }
                if q.depth() >= q.max_depth {
                    return Err(BrokerError::Full {
                        queue: dest.to_string(),
                        max_depth: q.max_depth,
                    });
                }
                q.ready.push_back(Held {
                    msg,
                    redeliveries: 0,
                });
                q.counts.enqueued += 1;
                q.dispatch(name, &mut self.next_id);
            }
            Dest::Topic(name) => {
                let t = existing(&mut self.topics, name, dest)?;
                if !t.configured {
                    return Err(BrokerError::Removed(dest.to_string()));
                }
                t.counts.enqueued += 1;
                for s in &mut t.subscribers {
                    let ack = (s.ack != AckMode::Auto).then(|| {
                        self.next_id += 1;
                        self.next_id
                    });
                    let d = Delivery {
                        subscription: s.sub.clone(),
                        ack,
                        message: msg.clone(),
                        redelivered: false,
                        queue: None,
                    };
                    if s.out.tx.try_send(d).is_ok() {
                        t.counts.dequeued += 1;
                    } else {
                        // A subscriber that cannot keep up is disconnected rather than let
                        // its backlog grow without bound.
                        s.out.overflow.notify_one();
                    }
                }
            }
        }
        Ok(())
    }

    pub fn subscribe(
        &mut self,
        out: Outbox,
        sub: &str,
        dest: &Dest,
        ack: AckMode,
        window: usize,
    ) -> Result<(), BrokerError> {
        let consumer = Consumer {
            out,
            sub: sub.to_owned(),
            ack,
            window: window.clamp(1, PREFETCH),
            unacked: 0,
        };
        match dest {
            Dest::Queue(name) => {
                let q = existing(&mut self.queues, name, dest)?;
                // A removed queue still takes consumers: that is how it drains.
                q.consumers.push(consumer);
                q.dispatch(name, &mut self.next_id);
            }
            Dest::Topic(name) => {
                let t = existing(&mut self.topics, name, dest)?;
                if !t.configured {
                    return Err(BrokerError::Removed(dest.to_string()));
                }
                if t.subscribers.len() as u64 >= t.max_subscribers {
                    return Err(BrokerError::TooManySubscribers {
                        topic: dest.to_string(),
                        max: t.max_subscribers,
                    });
                }
                t.subscribers.push(consumer);
            }
        }
        Ok(())
    }

    /// Ends subscription `sub` of connection `conn`: what it held unacknowledged is redelivered.
    pub fn unsubscribe(&mut self, conn: u64, sub: &str, dest: &Dest) {
        match dest {
            Dest::Queue(name) => {
                if let Some(q) = self.queues.get_mut(name) {
                    q.consumers
                        .retain(|c| !(c.out.conn == conn && c.sub == sub));
                    let ids: Vec<u64> = q
                        .inflight
                        .iter()
                        .filter(|(_, (c, s, _))| *c == conn && s == sub)
                        .map(|(id, _)| *id)
                        .collect();
                    self.requeue(name, &ids);
                }
            }
            Dest::Topic(name) => {
                if let Some(t) = self.topics.get_mut(name) {
                    t.subscribers
                        .retain(|c| !(c.out.conn == conn && c.sub == sub));
                }
            }
        }
        self.sweep();
    }

    /// Acknowledges deliveries `ids` of queue `name` made to `conn`.
    pub fn ack(&mut self, conn: u64, name: &str, ids: &[u64]) {
        let Some(q) = self.queues.get_mut(name) else {
            return;
        };
        for id in ids {
            if q.inflight.get(id).is_some_and(|(c, _, _)| *c == conn)
                && let Some((_, sub, _)) = q.inflight.remove(id)
            {
                q.counts.dequeued += 1;
                if let Some(c) = q
                    .consumers
                    .iter_mut()
                    .find(|c| c.out.conn == conn && c.sub == sub)
                {
                    c.unacked = c.unacked.saturating_sub(1);
                }
            }
        }
        q.dispatch(name, &mut self.next_id);
        self.sweep();
    }

    /// Refuses deliveries `ids` of queue `name` made to `conn`: redelivered (first in line), or
    /// dead-lettered after [`MAX_REDELIVERIES`].
    pub fn nack(&mut self, conn: u64, name: &str, ids: &[u64]) {
        let mine: Vec<u64> = self.queues.get(name).map_or_else(Vec::new, |q| {
            ids.iter()
                .copied()
                .filter(|id| q.inflight.get(id).is_some_and(|(c, _, _)| *c == conn))
                .collect()
        });
        self.requeue(name, &mine);
        self.sweep();
    }

    /// Puts inflight deliveries `ids` back at the head of the queue, in their original order.
    fn requeue(&mut self, name: &str, ids: &[u64]) {
        let Some(q) = self.queues.get_mut(name) else {
            return;
        };
        let mut back: Vec<Held> = Vec::new();
        for id in ids {
            if let Some((conn, sub, mut held)) = q.inflight.remove(id) {
                if let Some(c) = q
                    .consumers
                    .iter_mut()
                    .find(|c| c.out.conn == conn && c.sub == sub)
                {
                    c.unacked = c.unacked.saturating_sub(1);
                }
                held.redeliveries += 1;
                back.push(held);
            }
        }
        back.sort_by_key(|h| h.msg.id);
        let mut dead = Vec::new();
        for held in back.into_iter().rev() {
            if q.dead_letter_of.is_none() && held.redeliveries > MAX_REDELIVERIES {
                q.counts.dead_lettered += 1;
                dead.push(held);
            } else {
                q.counts.redelivered += 1;
                q.ready.push_front(held);
            }
        }
        q.dispatch(name, &mut self.next_id);
        if dead.is_empty() {
            return;
        }
        let dlq = format!("{name}{DLQ_SUFFIX}");
        if let Some(d) = self.queues.get_mut(&dlq) {
            for held in dead.into_iter().rev() {
                if d.depth() >= d.max_depth {
                    d.counts.discarded += 1;
                    continue;
                }
                d.counts.enqueued += 1;
                d.ready.push_back(Held {
                    msg: held.msg,
                    redeliveries: 0,
                });
            }
            d.dispatch(&dlq, &mut self.next_id);
        }
    }

    /// Takes back `auto` queue deliveries that were never written to their connection (it
    /// ended, or their subscription did): first in line again, in their order, not counted as
    /// redelivered. Other deliveries are ignored (client-mode ones are in flight and come back
    /// with [`Broker::unsubscribe`] or [`Broker::disconnect`]; topics keep nothing).
    pub fn unsent(&mut self, deliveries: Vec<Delivery>) {
        let mut by_queue: BTreeMap<String, Vec<Arc<Message>>> = BTreeMap::new();
        for d in deliveries {
            if let (None, Some(q)) = (d.ack, d.queue) {
                by_queue.entry(q).or_default().push(d.message);
            }
        }
        for (name, msgs) in by_queue {
            let Some(q) = self.queues.get_mut(&name) else {
                continue;
            };
            for msg in msgs.into_iter().rev() {
                q.counts.dequeued = q.counts.dequeued.saturating_sub(1);
                q.ready.push_front(Held {
                    msg,
                    redeliveries: 0,
                });
            }
            q.dispatch(&name, &mut self.next_id);
        }
    }

    /// Hands waiting messages of the queues `conn` consumes to it (its outbox has room again).
    pub fn pump(&mut self, conn: u64) {
        for (name, q) in &mut self.queues {
            if !q.ready.is_empty() && q.consumers.iter().any(|c| c.out.conn == conn) {
                q.dispatch(name, &mut self.next_id);
            }
        }
    }

    /// A connection ended: its subscriptions end and what it held unacknowledged is redelivered.
    pub fn disconnect(&mut self, conn: u64) {
        let names: Vec<String> = self.queues.keys().cloned().collect();
        for name in names {
            if let Some(q) = self.queues.get_mut(&name) {
                q.consumers.retain(|c| c.out.conn != conn);
                let ids: Vec<u64> = q
                    .inflight
                    .iter()
                    .filter(|(_, (c, _, _))| *c == conn)
                    .map(|(id, _)| *id)
                    .collect();
                self.requeue(&name, &ids);
            }
        }
        for t in self.topics.values_mut() {
            t.subscribers.retain(|c| c.out.conn != conn);
        }
        self.sweep();
    }

    pub fn report(&self) -> Vec<DestinationReport> {
        let queues = self.queues.iter().map(|(n, q)| DestinationReport {
            destination: format!("/queue/{n}"),
            kind: "queue",
            depth: q.depth(),
            in_flight: q.inflight.len() as u64,
            consumers: q.consumers.len() as u64,
            max_depth: Some(q.max_depth),
            max_subscribers: None,
            persistent: Some(q.persistent),
            draining: !q.configured,
            counts: q.counts.clone(),
        });
        let topics = self.topics.iter().map(|(n, t)| DestinationReport {
            destination: format!("/topic/{n}"),
            kind: "topic",
            depth: 0,
            in_flight: 0,
            consumers: t.subscribers.len() as u64,
            max_depth: None,
            max_subscribers: Some(t.max_subscribers),
            persistent: None,
            draining: !t.configured,
            counts: t.counts.clone(),
        });
        queues.chain(topics).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::model::{Queue, Topic};

    fn cfg(depth: u64, subs: u64) -> Messaging {
        Messaging {
            listener: None,
            queues: [(
                "q".to_owned(),
                Queue {
                    max_depth: depth,
                    persistent: false,
                },
            )]
            .into(),
            topics: [(
                "t".to_owned(),
                Topic {
                    max_subscribers: subs,
                },
            )]
            .into(),
        }
    }

    fn outbox(conn: u64, cap: usize) -> (Outbox, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(cap);
        (
            Outbox {
                conn,
                tx,
                overflow: Arc::new(Notify::new()),
            },
            rx,
        )
    }

    fn q() -> Dest {
        Dest::Queue("q".into())
    }

    fn send(b: &mut Broker, dest: &Dest, body: &str) -> Result<(), BrokerError> {
        b.send(dest, Vec::new(), body.as_bytes().to_vec())
    }

    fn bodies(rx: &mut mpsc::Receiver<Delivery>) -> Vec<(String, bool, Option<u64>)> {
        let mut out = Vec::new();
        while let Ok(d) = rx.try_recv() {
            out.push((
                String::from_utf8_lossy(&d.message.body).into_owned(),
                d.redelivered,
                d.ack,
            ));
        }
        out
    }

    #[test]
    fn destinations_parse() {
        assert_eq!(Dest::parse("/queue/a"), Ok(Dest::Queue("a".into())));
        assert_eq!(Dest::parse("/topic/b"), Ok(Dest::Topic("b".into())));
        for bad in ["/queue/", "queue/a", "/exchange/a", "/queue/a/b"] {
            assert!(Dest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn competing_consumers_take_turns_in_order() {
        let mut b = Broker::default();
        b.apply(&cfg(100, 10));
        let (o1, mut r1) = outbox(1, 16);
        let (o2, mut r2) = outbox(2, 16);
        b.subscribe(o1, "s", &q(), AckMode::Auto, PREFETCH).unwrap();
        b.subscribe(o2, "s", &q(), AckMode::Auto, PREFETCH).unwrap();
        for i in 0..6 {
            send(&mut b, &q(), &i.to_string()).unwrap();
        }
        let one: Vec<String> = bodies(&mut r1).into_iter().map(|x| x.0).collect();
        let two: Vec<String> = bodies(&mut r2).into_iter().map(|x| x.0).collect();
        assert_eq!(one, ["0", "2", "4"]);
        assert_eq!(two, ["1", "3", "5"]);
        assert_eq!(b.report()[0].counts.dequeued, 6);
    }

    #[test]
    fn max_depth_counts_unacknowledged_messages_and_applies_live() {
        let mut b = Broker::default();
        b.apply(&cfg(2, 10));
        let (o, mut r) = outbox(1, 16);
        b.subscribe(o, "s", &q(), AckMode::Client, PREFETCH)
            .unwrap();
        send(&mut b, &q(), "a").unwrap();
        send(&mut b, &q(), "b").unwrap();
        assert_eq!(
            send(&mut b, &q(), "c"),
            Err(BrokerError::Full {
                queue: "/queue/q".into(),
                max_depth: 2
            })
        );
        b.apply(&cfg(3, 10));
        send(&mut b, &q(), "c").unwrap();
        let got = bodies(&mut r);
        b.ack(1, "q", &[got[0].2.unwrap()]);
        assert_eq!(b.report()[0].depth, 2);
    }

    #[test]
    fn nack_redelivers_first_then_dead_letters() {
        let mut b = Broker::default();
        b.apply(&cfg(100, 10));
        let (o, mut r) = outbox(1, 64);
        b.subscribe(o, "s", &q(), AckMode::ClientIndividual, PREFETCH)
            .unwrap();
        send(&mut b, &q(), "a").unwrap();
        send(&mut b, &q(), "b").unwrap();
        let first = bodies(&mut r);
        assert_eq!(first.len(), 2);
        b.nack(1, "q", &[first[0].2.unwrap()]);
        let again = bodies(&mut r);
        assert_eq!((again[0].0.as_str(), again[0].1), ("a", true));
        let mut id = again[0].2.unwrap();
        for _ in 0..MAX_REDELIVERIES {
            b.nack(1, "q", &[id]);
            if let Some(d) = bodies(&mut r).pop() {
                id = d.2.unwrap();
            }
        }
        let report = b.report();
        let main = report.iter().find(|d| d.destination == "/queue/q").unwrap();
        let dlq = report
            .iter()
            .find(|d| d.destination == "/queue/q.dlq")
            .unwrap();
        assert_eq!(main.counts.dead_lettered, 1);
        assert_eq!(main.counts.redelivered, MAX_REDELIVERIES as u64);
        assert_eq!(main.depth, 1, "b is still unacknowledged");
        assert_eq!(dlq.depth, 1);
    }

    #[test]
    fn a_disconnect_without_ack_redelivers_to_another_consumer() {
        let mut b = Broker::default();
        b.apply(&cfg(100, 10));
        let (o1, mut r1) = outbox(1, 16);
        b.subscribe(o1, "s", &q(), AckMode::Client, PREFETCH)
            .unwrap();
        send(&mut b, &q(), "a").unwrap();
        assert_eq!(bodies(&mut r1).len(), 1);
        let (o2, mut r2) = outbox(2, 16);
        b.subscribe(o2, "s", &q(), AckMode::Auto, PREFETCH).unwrap();
        b.disconnect(1);
        let got = bodies(&mut r2);
        assert_eq!((got[0].0.as_str(), got[0].1), ("a", true));
    }

    #[test]
    fn the_window_and_the_outbox_bound_what_a_consumer_holds() {
        let mut b = Broker::default();
        b.apply(&cfg(100, 10));
        let (o, mut r) = outbox(1, 3);
        b.subscribe(o, "s", &q(), AckMode::Client, 2).unwrap();
        for i in 0..5 {
            send(&mut b, &q(), &i.to_string()).unwrap();
        }
        let got = bodies(&mut r);
        assert_eq!(got.len(), 2);
        b.ack(1, "q", &[got[0].2.unwrap()]);
        assert_eq!(bodies(&mut r).len(), 1);
        // Auto: the outbox's capacity is the limit, and pump refills it.
        let (o2, mut r2) = outbox(2, 1);
        b.subscribe(o2, "s", &q(), AckMode::Auto, PREFETCH).unwrap();
        assert_eq!(bodies(&mut r2).len(), 1);
        b.pump(2);
        assert_eq!(bodies(&mut r2).len(), 1);
    }

    #[test]
    fn auto_deliveries_never_written_go_back_first_in_line() {
        let mut b = Broker::default();
        b.apply(&cfg(100, 10));
        let (o1, mut r1) = outbox(1, 16);
        b.subscribe(o1, "s", &q(), AckMode::Auto, 3).unwrap();
        for i in 0..5 {
            send(&mut b, &q(), &i.to_string()).unwrap();
        }
        // The window bounds what waits in the outbox.
        let mut pending = Vec::new();
        while let Ok(d) = r1.try_recv() {
            pending.push(d);
        }
        assert_eq!(pending.len(), 3);
        b.disconnect(1);
        b.unsent(pending);
        let (o2, mut r2) = outbox(2, 16);
        b.subscribe(o2, "s", &q(), AckMode::Auto, PREFETCH).unwrap();
        let got = bodies(&mut r2);
        let order: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(order, ["0", "1", "2", "3", "4"]);
        assert!(got.iter().all(|g| !g.1), "never written: not redelivered");
        assert_eq!(b.report()[0].counts.dequeued, 5);
    }

    #[test]
    fn topics_reach_every_subscriber_up_to_max_subscribers() {
        let mut b = Broker::default();
        b.apply(&cfg(100, 2));
        let t = Dest::Topic("t".into());
        let (o1, mut r1) = outbox(1, 16);
        let (o2, mut r2) = outbox(2, 16);
        let (o3, _r3) = outbox(3, 16);
        b.subscribe(o1, "s", &t, AckMode::Auto, PREFETCH).unwrap();
        b.subscribe(o2, "s", &t, AckMode::Auto, PREFETCH).unwrap();
        assert!(matches!(
            b.subscribe(o3, "s", &t, AckMode::Auto, PREFETCH),
            Err(BrokerError::TooManySubscribers { max: 2, .. })
        ));
        send(&mut b, &t, "x").unwrap();
        assert_eq!(bodies(&mut r1).len(), 1);
        assert_eq!(bodies(&mut r2).len(), 1);
    }

    #[test]
    fn a_slow_topic_subscriber_is_signalled() {
        let mut b = Broker::default();
        b.apply(&cfg(100, 2));
        let t = Dest::Topic("t".into());
        let (o, _r) = outbox(1, 1);
        let overflow = o.overflow.clone();
        b.subscribe(o, "s", &t, AckMode::Auto, PREFETCH).unwrap();
        send(&mut b, &t, "1").unwrap();
        send(&mut b, &t, "2").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(1), overflow.notified())
                .await
                .expect("signalled")
        });
    }

    #[test]
    fn removed_destinations_drain_then_disappear() {
        let mut b = Broker::default();
        b.apply(&cfg(100, 2));
        send(&mut b, &q(), "left").unwrap();
        b.apply(&Messaging::default());
        assert!(matches!(
            send(&mut b, &q(), "new"),
            Err(BrokerError::Removed(_))
        ));
        let report = b.report();
        assert_eq!(report.len(), 1, "{report:?}");
        assert!(report[0].draining);
        let (o, mut r) = outbox(1, 4);
        b.subscribe(o, "s", &q(), AckMode::Auto, 1).unwrap();
        assert_eq!(bodies(&mut r)[0].0, "left");
        assert_eq!(b.report().len(), 1, "kept while consumed");
        b.unsubscribe(1, "s", &q());
        assert!(b.report().is_empty());
        assert!(
            send(&mut b, &Dest::Queue("nope".into()), "x")
                .is_err_and(|e| matches!(e, BrokerError::NoSuchDestination(_)))
        );
    }
}
