//! The destinations and what they hold: queues (competing consumers, round robin, in order per
//! consumer, redelivery and dead letters), topics (every subscriber gets each message) and their
//! durable subscriptions (a queue of the topic's messages kept for one named subscriber). All of
//! it is plain data behind the engine's one lock; deliveries leave through each connection's
//! bounded outbox ([`Outbox`]), never blocking the lock. What persistent destinations hold is
//! also written to the [`Store`]: each public operation hands its changes over as one group,
//! whose ticket says when they are durable.
//!
//! Over 600 lines because its last half is unit tests: queue and topic semantics are decided here
//! and tested here, without sockets.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use schema::model::Messaging;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};

use super::store::{self, Op, Recovered, Store};

/// Deliveries a client-ack subscription may hold unacknowledged unless it asks for fewer
/// (`prefetch-count`).
pub const PREFETCH: usize = 100;
/// The suffix of a queue's dead-letter queue: `/queue/orders` → `/queue/orders.dlq`.
pub const DLQ_SUFFIX: &str = ".dlq";
/// `max-depth` of a queue recovered from the store that is no longer configured (it drains).
const DRAINING_DEPTH: u64 = 10_000;

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
    #[error(
        "durable subscription {name:?} of client-id {client:?} on {topic} is in use by another subscription"
    )]
    DurableInUse {
        topic: String,
        client: String,
        name: String,
    },
    #[error("no durable subscription {name:?} of client-id {client:?} on {topic}")]
    NoSuchDurable {
        topic: String,
        client: String,
        name: String,
    },
    #[error("a client-id or durable subscription name cannot contain a line break")]
    BadDurableName,
    /// The store's writer failed: persistent destinations accept nothing until a restart.
    #[error("the message store failed, {0} accepts nothing: {1}")]
    StoreFailed(String, String),
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
    /// The broker queue it came from (a queue's name, or a durable subscription's key), as
    /// opposed to a topic's plain subscription.
    pub queue: Option<String>,
    /// The store group that records this delivery: the frame is written only once it is durable
    /// (0: nothing to wait for), so that a message handed out before a crash comes back flagged.
    pub durable: u64,
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
    /// It may have been handed out before a crash (recovered at or below its log's lease, its
    /// mark not written): flagged `redelivered`, not counted as a redelivery.
    leased: bool,
}

impl Held {
    fn new(msg: Arc<Message>) -> Held {
        Held {
            msg,
            redeliveries: 0,
            leased: false,
        }
    }
}

/// Messages one lease of a queue covers ([`QueueState::lease`]): the next ones in line, whose
/// deliveries then need no commit of their own. A crash flags at most about this many messages
/// `redelivered` that were never handed out.
const LEASE: usize = 1024;
/// A new lease is written when the message this far in line is not covered yet, so that it is
/// durable before the deliveries reach it.
const LEASE_AHEAD: usize = LEASE / 2;

/// Counters of one destination, as `GET /v1/messaging` reports them.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub enqueued: u64,
    pub dequeued: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
    /// Dead letters a full dead-letter queue could not take (dropped); for a durable
    /// subscription, messages beyond its backlog limit.
    pub discarded: u64,
}

/// Whose durable subscription a queue is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DurableOf {
    topic: String,
    client: String,
    name: String,
}

#[derive(Debug)]
struct QueueState {
    max_depth: u64,
    persistent: bool,
    max_redeliveries: u32,
    /// Its records in the store: `q:NAME`, or `d:KEY` for a durable subscription.
    log: String,
    /// The leases written for its log, oldest first (at most two): `(upto, ticket)`, messages
    /// with ids up to `upto` may be handed out once group `ticket` is durable (0: it is).
    leases: VecDeque<(u64, u64)>,
    ready: VecDeque<Held>,
    consumers: Vec<Consumer>,
    next: usize,
    /// Delivered to a client-ack consumer, not yet acknowledged: by delivery id.
    inflight: HashMap<u64, (u64, String, Held)>,
    counts: Counts,
    /// Still in the configuration (directly, or as a configured queue's dead-letter queue, or as
    /// a durable subscription of a configured topic).
    configured: bool,
    /// The queue this one is the dead-letter queue of: its messages are never dead-lettered again.
    dead_letter_of: Option<String>,
    durable: Option<DurableOf>,
}

#[derive(Debug)]
struct TopicState {
    max_subscribers: u64,
    persistent: bool,
    durable_max_depth: u64,
    subscribers: Vec<Consumer>,
    /// Its durable subscriptions: their keys in [`Broker::queues`].
    durables: BTreeSet<String>,
    counts: Counts,
    configured: bool,
}

impl TopicState {
    /// Whether one more subscriber (plain or a new durable subscription) may join: a removed
    /// topic takes none, and durable subscriptions count against `max-subscribers`.
    fn admits(&self, dest: &Dest) -> Result<(), BrokerError> {
        if !self.configured {
            return Err(BrokerError::Removed(dest.to_string()));
        }
        if (self.subscribers.len() + self.durables.len()) as u64 >= self.max_subscribers {
            return Err(BrokerError::TooManySubscribers {
                topic: dest.to_string(),
                max: self.max_subscribers,
            });
        }
        Ok(())
    }
}

/// One destination in [`Broker::report`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DestinationReport {
    pub destination: String,
    pub kind: &'static str,
    /// Messages held: waiting plus delivered and not yet acknowledged (queues; a topic: what its
    /// durable subscriptions hold).
    pub depth: u64,
    pub in_flight: u64,
    pub consumers: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_subscribers: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_redeliveries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
    /// Removed from the configuration, kept until what it holds is consumed.
    pub draining: bool,
    #[serde(flatten)]
    pub counts: Counts,
    /// A topic's durable subscriptions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub durable_subscriptions: Vec<DurableReport>,
}

/// One durable subscription of a topic in [`DestinationReport`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DurableReport {
    pub client_id: String,
    pub name: String,
    /// Messages kept for it, delivered or not.
    pub depth: u64,
    pub in_flight: u64,
    /// Whether a subscriber is attached now.
    pub connected: bool,
    #[serde(flatten)]
    pub counts: Counts,
}

/// What one broker operation changes in the store, handed to it as one group at the end
/// ([`Broker::flush`]).
#[derive(Debug, Default)]
struct Effects {
    next_id: u64,
    /// Whether there is a store to write to.
    journal: bool,
    ops: Vec<Op>,
    /// Messages put in this group: handing one out needs no wait (both are durable together or
    /// neither is).
    put: HashSet<u64>,
    /// The last group's ticket; this group's is the next.
    ticket: u64,
}

impl Effects {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Records `held` entering `q` (a persistent one).
    fn put(&mut self, q: &QueueState, held: &Held, delivered: bool) {
        if self.journal && q.persistent {
            self.ops.push(Op::Put {
                log: q.log.clone(),
                state: store::state(held.redeliveries, delivered),
                msg: held.msg.clone(),
            });
            self.put.insert(held.msg.id);
        }
    }

    fn delete(&mut self, q: &QueueState, id: u64) {
        if self.journal && q.persistent {
            self.ops.push(Op::Delete {
                log: q.log.clone(),
                id,
            });
        }
    }
}

#[derive(Debug, Default)]
pub struct Broker {
    queues: BTreeMap<String, QueueState>,
    topics: BTreeMap<String, TopicState>,
    fx: Effects,
    store: Option<Arc<Store>>,
}

/// The key of a durable subscription in [`Broker::queues`] (a line break: no configured queue
/// name has one).
fn durable_key(topic: &str, client: &str, name: &str) -> String {
    format!("{topic}\n{client}\n{name}")
}

impl QueueState {
    fn new(max_depth: u64, persistent: bool, log: String) -> QueueState {
        QueueState {
            max_depth,
            persistent,
            max_redeliveries: schema::model::Queue::default().max_redeliveries,
            log,
            leases: VecDeque::new(),
            ready: VecDeque::new(),
            consumers: Vec::new(),
            next: 0,
            inflight: HashMap::new(),
            counts: Counts::default(),
            configured: true,
            dead_letter_of: None,
            durable: None,
        }
    }

    /// A durable subscription keeping at most `max_depth` messages (its topic's
    /// `durable-max-depth`: more are discarded, counted).
    fn durable(d: DurableOf, persistent: bool, max_depth: u64) -> QueueState {
        let key = durable_key(&d.topic, &d.client, &d.name);
        let mut q = QueueState::new(max_depth, persistent, format!("d:{key}"));
        q.durable = Some(d);
        q
    }

    fn depth(&self) -> u64 {
        (self.ready.len() + self.inflight.len()) as u64
    }

    /// Whether refused messages move to a dead-letter queue (not those of a dead-letter queue or
    /// a durable subscription: they are redelivered without limit).
    fn dead_letters(&self) -> bool {
        self.dead_letter_of.is_none() && self.durable.is_none()
    }

    /// Makes the queue persistent (writes what it holds) or not (drops its records).
    fn set_persistent(&mut self, on: bool, fx: &mut Effects) {
        if self.persistent == on {
            return;
        }
        // Its lease record goes with its log (off) or was dropped before (on).
        self.leases.clear();
        if !on {
            if fx.journal {
                fx.ops.push(Op::DropLog {
                    log: self.log.clone(),
                });
            }
            self.persistent = false;
            return;
        }
        self.persistent = true;
        if fx.journal && self.durable.is_some() {
            fx.ops.push(Op::Durable {
                log: self.log.clone(),
            });
        }
        for held in &self.ready {
            fx.put(self, held, false);
        }
        for (_, _, held) in self.inflight.values() {
            fx.put(self, held, true);
        }
    }

    /// Hands waiting messages to consumers with room, round robin from where it left off.
    fn dispatch(&mut self, name: &str, fx: &mut Effects) {
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
            let recorded = fx.journal && self.persistent;
            // A message stored in this very group needs no lease: it and its delivery's mark
            // (or deletion) are durable together, or the message is lost unreceipted.
            let durable = if recorded && !fx.put.contains(&held.msg.id) {
                self.lease(held.msg.id, fx)
            } else {
                0
            };
            let c = &mut self.consumers[i];
            let ack = (c.ack != AckMode::Auto).then(|| fx.id());
            let delivery = Delivery {
                subscription: c.sub.clone(),
                ack,
                message: held.msg.clone(),
                redelivered: held.redeliveries > 0 || held.leased,
                queue: Some(name.to_owned()),
                durable,
            };
            // `has_room` saw capacity and only this lock's holder sends: this cannot fail, but
            // if it did the message goes back rather than being lost.
            if c.out.tx.try_send(delivery).is_err() {
                self.ready.push_front(held);
                return;
            }
            let (id, redeliveries) = (held.msg.id, held.redeliveries);
            match ack {
                Some(a) => {
                    c.unacked += 1;
                    self.inflight.insert(a, (c.out.conn, c.sub.clone(), held));
                    if recorded {
                        fx.ops.push(Op::Mark {
                            log: self.log.clone(),
                            id,
                            state: store::state(redeliveries, true),
                        });
                    }
                }
                None => {
                    // `auto`: consumed once handed to the connection.
                    self.counts.dequeued += 1;
                    fx.delete(self, id);
                }
            }
        }
    }
}

impl QueueState {
    /// The store group after which message `id` (next in line, just taken from `ready`) may be
    /// handed out: a delivery must not reach its consumer before something durable says it may
    /// have, or a crash would bring it back unflagged. Marking each delivery and waiting for its
    /// commit would put the disk's fsync into every delivery's latency; instead the log's lease
    /// (the highest id that may have been handed out) is raised over the next [`LEASE`] messages
    /// in one group, written [`LEASE_AHEAD`] messages early, so that deliveries under it wait
    /// for nothing. Ids only grow, and what is behind the head of the line was covered when it
    /// was handed out before, so one number per log suffices.
    fn lease(&mut self, id: u64, fx: &mut Effects) -> u64 {
        let ticket = match self.leases.iter().find(|(upto, _)| id <= *upto) {
            Some(&(_, ticket)) => ticket,
            None => self.extend_lease(id, fx),
        };
        if self
            .ready
            .get(LEASE_AHEAD)
            .is_some_and(|h| h.msg.id > self.leased_upto())
        {
            self.extend_lease(id, fx);
        }
        ticket
    }

    fn leased_upto(&self) -> u64 {
        self.leases.back().map_or(0, |l| l.0)
    }

    /// Writes a lease covering `id` and the next [`LEASE`] messages in line; its group's ticket.
    fn extend_lease(&mut self, id: u64, fx: &mut Effects) -> u64 {
        let upto = self
            .ready
            .iter()
            .take(LEASE)
            .map(|h| h.msg.id)
            .fold(id.max(self.leased_upto()), u64::max);
        fx.ops.push(Op::Lease {
            log: self.log.clone(),
            upto,
        });
        let ticket = fx.ticket + 1;
        self.leases.push_back((upto, ticket));
        if self.leases.len() > 2 {
            // A later group makes the older lease's range durable too.
            self.leases.pop_front();
        }
        ticket
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
    /// A broker whose persistent destinations are written to `store`.
    pub fn with_store(store: Arc<Store>) -> Broker {
        Broker {
            fx: Effects {
                journal: true,
                ..Effects::default()
            },
            store: Some(store),
            ..Broker::default()
        }
    }

    /// Hands this operation's changes to the store as one group: its ticket (0: none).
    fn flush(&mut self) -> u64 {
        self.fx.put.clear();
        if self.fx.ops.is_empty() {
            return 0;
        }
        let ops = std::mem::take(&mut self.fx.ops);
        self.fx.ticket += 1;
        if let Some(s) = &self.store {
            s.submit(self.fx.ticket, ops);
        }
        self.fx.ticket
    }

    /// Creates destinations that are new in `cfg` and applies the limits of those that exist
    /// (kept messages stay; `persistent` switched on writes them, switched off drops their
    /// records). A destination no longer configured refuses new messages and subscriptions,
    /// and is forgotten once it holds nothing and nobody consumes it.
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
                let e = explicit.unwrap_or(q);
                let dead_letter_of = if explicit.is_some() {
                    None
                } else {
                    dead_letter_of
                };
                let s = self.queues.entry(n.clone()).or_insert_with(|| {
                    QueueState::new(e.max_depth, e.persistent, format!("q:{n}"))
                });
                s.max_depth = e.max_depth;
                s.max_redeliveries = e.max_redeliveries;
                s.set_persistent(e.persistent, &mut self.fx);
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
                    persistent: t.persistent,
                    durable_max_depth: t.durable_max_depth,
                    subscribers: Vec::new(),
                    durables: BTreeSet::new(),
                    counts: Counts::default(),
                    configured: true,
                });
            s.max_subscribers = t.max_subscribers;
            s.persistent = t.persistent;
            s.durable_max_depth = t.durable_max_depth;
            s.configured = true;
        }
        for t in self.topics.values() {
            for key in &t.durables {
                if let Some(q) = self.queues.get_mut(key) {
                    q.configured = t.configured;
                    q.max_depth = t.durable_max_depth;
                    q.set_persistent(t.persistent, &mut self.fx);
                }
            }
        }
        self.sweep();
        self.flush();
    }

    /// Takes back what the store held at start (after [`Broker::apply`] of the configuration):
    /// each destination's messages in order, a message handed out before the stop flagged as
    /// redelivered. A destination no longer configured comes back draining; one no longer
    /// persistent keeps its messages in memory only. The number of messages recovered.
    pub fn recover(&mut self, r: Recovered) -> usize {
        let mut n = 0;
        // New ids stay above every lease: a message sent after the restart is not covered by
        // one written before it.
        self.fx.next_id = r.leases.values().fold(self.fx.next_id, |a, &b| a.max(b));
        for log in r.durables.iter().chain(r.logs.keys()) {
            if let Some(d) = log.strip_prefix("d:").and_then(parse_durable) {
                self.ensure_durable(d);
            }
        }
        for (log, msgs) in r.logs {
            let (key, destination) = if let Some(name) = log.strip_prefix("q:") {
                self.queues.entry(name.to_owned()).or_insert_with(|| {
                    let mut q = QueueState::new(DRAINING_DEPTH, true, log.clone());
                    q.configured = false;
                    q
                });
                (name.to_owned(), format!("/queue/{name}"))
            } else if let Some(d) = log.strip_prefix("d:").and_then(parse_durable) {
                let topic = format!("/topic/{}", d.topic);
                (durable_key(&d.topic, &d.client, &d.name), topic)
            } else {
                continue;
            };
            let Some(q) = self.queues.get_mut(&key) else {
                continue;
            };
            for m in msgs {
                self.fx.next_id = self.fx.next_id.max(m.id);
                n += 1;
                q.ready.push_back(Held {
                    msg: Arc::new(Message {
                        id: m.id,
                        destination: if m.destination.is_empty() {
                            destination.clone()
                        } else {
                            m.destination
                        },
                        headers: m.headers,
                        body: m.body,
                    }),
                    redeliveries: m.redeliveries + u32::from(m.delivered),
                    leased: m.leased,
                });
            }
            if let Some(&upto) = r.leases.get(&log)
                && q.persistent
            {
                q.leases = VecDeque::from([(upto, 0)]);
            }
            if !q.persistent && self.fx.journal {
                self.fx.ops.push(Op::DropLog { log });
            }
        }
        self.flush();
        n
    }

    /// The durable subscription `d`, created if missing (its topic too, draining, if it is no
    /// longer configured).
    fn ensure_durable(&mut self, d: DurableOf) -> &mut QueueState {
        let key = durable_key(&d.topic, &d.client, &d.name);
        let t = self
            .topics
            .entry(d.topic.clone())
            .or_insert_with(|| TopicState {
                max_subscribers: schema::model::Topic::default().max_subscribers,
                persistent: true,
                durable_max_depth: schema::model::Topic::default().durable_max_depth,
                subscribers: Vec::new(),
                durables: BTreeSet::new(),
                counts: Counts::default(),
                configured: false,
            });
        t.durables.insert(key.clone());
        let (configured, persistent, max_depth) = (t.configured, t.persistent, t.durable_max_depth);
        let fx = &mut self.fx;
        self.queues.entry(key).or_insert_with(|| {
            let mut q = QueueState::durable(d, persistent, max_depth);
            q.configured = configured;
            if fx.journal && persistent {
                fx.ops.push(Op::Durable { log: q.log.clone() });
            }
            q
        })
    }

    /// Forgets removed destinations that hold nothing and have no consumer (and their records).
    fn sweep(&mut self) {
        let fx = &mut self.fx;
        let mut gone = Vec::new();
        self.queues.retain(|key, q| {
            let keep = q.configured || q.depth() > 0 || !q.consumers.is_empty();
            if !keep {
                if fx.journal && q.persistent {
                    fx.ops.push(Op::DropLog { log: q.log.clone() });
                }
                if let Some(d) = &q.durable {
                    gone.push((d.topic.clone(), key.clone()));
                }
            }
            keep
        });
        for (topic, key) in gone {
            if let Some(t) = self.topics.get_mut(&topic) {
                t.durables.remove(&key);
            }
        }
        self.topics
            .retain(|_, t| t.configured || !t.subscribers.is_empty() || !t.durables.is_empty());
    }

    /// Refuses anything new for a persistent destination once the store has failed.
    fn store_ok(&self, dest: &Dest) -> Result<(), BrokerError> {
        match self.store.as_ref().and_then(|s| s.failed()) {
            Some(e) => Err(BrokerError::StoreFailed(dest.to_string(), e.to_string())),
            None => Ok(()),
        }
    }

    /// Enqueues (queue) or publishes (topic) a message; the ticket of its store group (0 when
    /// nothing was written: not persistent).
    pub fn send(
        &mut self,
        dest: &Dest,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<u64, BrokerError> {
        let msg = Arc::new(Message {
            id: self.fx.id(),
            destination: dest.to_string(),
            headers,
            body,
        });
        let held = Held::new(msg);
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
                if q.persistent {
                    self.store_ok(dest)?;
                }
                let q = existing(&mut self.queues, name, dest)?;
                self.fx.put(q, &held, false);
                q.ready.push_back(held);
                q.counts.enqueued += 1;
                q.dispatch(name, &mut self.fx);
            }
            Dest::Topic(name) => {
                let t = existing(&mut self.topics, name, dest)?;
                if !t.configured {
                    return Err(BrokerError::Removed(dest.to_string()));
                }
                if t.persistent && !t.durables.is_empty() {
                    self.store_ok(dest)?;
                }
                let t = existing(&mut self.topics, name, dest)?;
                t.counts.enqueued += 1;
                for s in &mut t.subscribers {
                    let ack = (s.ack != AckMode::Auto).then(|| self.fx.id());
                    let d = Delivery {
                        subscription: s.sub.clone(),
                        ack,
                        message: held.msg.clone(),
                        redelivered: false,
                        queue: None,
                        durable: 0,
                    };
                    if s.out.tx.try_send(d).is_ok() {
                        t.counts.dequeued += 1;
                    } else {
                        // A subscriber that cannot keep up is disconnected rather than let
                        // its backlog grow without bound.
                        s.out.overflow.notify_one();
                    }
                }
                for key in &t.durables {
                    let Some(q) = self.queues.get_mut(key) else {
                        continue;
                    };
                    if q.depth() >= q.max_depth {
                        q.counts.discarded += 1;
                        continue;
                    }
                    self.fx.put(q, &held, false);
                    q.ready.push_back(held.clone());
                    q.counts.enqueued += 1;
                    q.dispatch(key, &mut self.fx);
                }
            }
        }
        Ok(self.flush())
    }

    fn consumer(out: Outbox, sub: &str, ack: AckMode, window: usize) -> Consumer {
        Consumer {
            out,
            sub: sub.to_owned(),
            ack,
            window: window.clamp(1, PREFETCH),
            unacked: 0,
        }
    }

    pub fn subscribe(
        &mut self,
        out: Outbox,
        sub: &str,
        dest: &Dest,
        ack: AckMode,
        window: usize,
    ) -> Result<(), BrokerError> {
        let consumer = Broker::consumer(out, sub, ack, window);
        match dest {
            Dest::Queue(name) => {
                let q = existing(&mut self.queues, name, dest)?;
                // A removed queue still takes consumers: that is how it drains.
                q.consumers.push(consumer);
                q.dispatch(name, &mut self.fx);
            }
            Dest::Topic(name) => {
                let t = existing(&mut self.topics, name, dest)?;
                t.admits(dest)?;
                t.subscribers.push(consumer);
            }
        }
        self.flush();
        Ok(())
    }

    /// Attaches subscription `sub` to the durable subscription `name` of `client` on `topic`,
    /// creating it (it then counts as a subscriber of the topic). Returns its key: the queue
    /// to ACK, NACK and unsubscribe with. One subscriber at a time.
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe_durable(
        &mut self,
        out: Outbox,
        sub: &str,
        topic: &str,
        client: &str,
        name: &str,
        ack: AckMode,
        window: usize,
    ) -> Result<String, BrokerError> {
        if client.contains('\n') || name.contains('\n') {
            return Err(BrokerError::BadDurableName);
        }
        let dest = Dest::Topic(topic.to_owned());
        let key = durable_key(topic, client, name);
        let t = existing(&mut self.topics, topic, &dest)?;
        if !self.queues.contains_key(&key) {
            t.admits(&dest)?;
        }
        self.ensure_durable(DurableOf {
            topic: topic.to_owned(),
            client: client.to_owned(),
            name: name.to_owned(),
        });
        let q = existing(&mut self.queues, &key, &dest)?;
        if !q.consumers.is_empty() {
            self.flush();
            return Err(BrokerError::DurableInUse {
                topic: dest.to_string(),
                client: client.to_owned(),
                name: name.to_owned(),
            });
        }
        q.consumers.push(Broker::consumer(out, sub, ack, window));
        q.dispatch(&key, &mut self.fx);
        self.flush();
        Ok(key)
    }

    /// Removes the durable subscription `name` of `client` on `topic` and what it kept; the
    /// store group's ticket. Refused while a subscriber is attached.
    pub fn remove_durable(
        &mut self,
        topic: &str,
        client: &str,
        name: &str,
    ) -> Result<u64, BrokerError> {
        let key = durable_key(topic, client, name);
        let Some(q) = self.queues.get(&key) else {
            return Err(BrokerError::NoSuchDurable {
                topic: format!("/topic/{topic}"),
                client: client.to_owned(),
                name: name.to_owned(),
            });
        };
        if !q.consumers.is_empty() {
            return Err(BrokerError::DurableInUse {
                topic: format!("/topic/{topic}"),
                client: client.to_owned(),
                name: name.to_owned(),
            });
        }
        if let Some(q) = self.queues.remove(&key)
            && self.fx.journal
            && q.persistent
        {
            self.fx.ops.push(Op::DropLog { log: q.log });
        }
        if let Some(t) = self.topics.get_mut(topic) {
            t.durables.remove(&key);
        }
        self.sweep();
        Ok(self.flush())
    }

    /// Ends subscription `sub` of connection `conn`: what it held unacknowledged is redelivered.
    /// `dest` is a queue, a durable subscription's key as a queue, or a topic.
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
        self.flush();
    }

    /// Acknowledges deliveries `ids` of queue `name` made to `conn`; the store group's ticket
    /// (0: nothing to make durable).
    pub fn ack(&mut self, conn: u64, name: &str, ids: &[u64]) -> u64 {
        let Some(q) = self.queues.get_mut(name) else {
            return 0;
        };
        for id in ids {
            if q.inflight.get(id).is_some_and(|(c, _, _)| *c == conn)
                && let Some((_, sub, held)) = q.inflight.remove(id)
            {
                q.counts.dequeued += 1;
                self.fx.delete(q, held.msg.id);
                if let Some(c) = q
                    .consumers
                    .iter_mut()
                    .find(|c| c.out.conn == conn && c.sub == sub)
                {
                    c.unacked = c.unacked.saturating_sub(1);
                }
            }
        }
        q.dispatch(name, &mut self.fx);
        self.sweep();
        self.flush()
    }

    /// Refuses deliveries `ids` of queue `name` made to `conn`: redelivered (first in line), or
    /// dead-lettered after the queue's `max-redeliveries`. The store group's ticket.
    pub fn nack(&mut self, conn: u64, name: &str, ids: &[u64]) -> u64 {
        let mine: Vec<u64> = self.queues.get(name).map_or_else(Vec::new, |q| {
            ids.iter()
                .copied()
                .filter(|id| q.inflight.get(id).is_some_and(|(c, _, _)| *c == conn))
                .collect()
        });
        self.requeue(name, &mine);
        self.sweep();
        self.flush()
    }

    /// Puts inflight deliveries `ids` back at the head of the queue, in their original order.
    /// The store keeps their records as they are: a record marked delivered comes back
    /// redelivered once more, which is what this makes it in memory.
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
            if q.dead_letters() && held.redeliveries > q.max_redeliveries {
                q.counts.dead_lettered += 1;
                self.fx.delete(q, held.msg.id);
                dead.push(held);
            } else {
                q.counts.redelivered += 1;
                q.ready.push_front(held);
            }
        }
        q.dispatch(name, &mut self.fx);
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
                let held = Held::new(held.msg);
                self.fx.put(d, &held, false);
                d.ready.push_back(held);
            }
            d.dispatch(&dlq, &mut self.fx);
        }
    }

    /// Takes back `auto` queue deliveries that were never written to their connection (it
    /// ended, or their subscription did): first in line again, in their order, not counted as
    /// redelivered. Other deliveries are ignored (client-mode ones are in flight and come back
    /// with [`Broker::unsubscribe`] or [`Broker::disconnect`]; topics keep nothing).
    pub fn unsent(&mut self, deliveries: Vec<Delivery>) {
        let mut by_queue: BTreeMap<String, Vec<(Arc<Message>, bool)>> = BTreeMap::new();
        for d in deliveries {
            if let (None, Some(q)) = (d.ack, d.queue) {
                by_queue
                    .entry(q)
                    .or_default()
                    .push((d.message, d.redelivered));
            }
        }
        for (name, msgs) in by_queue {
            let Some(q) = self.queues.get_mut(&name) else {
                continue;
            };
            for (msg, flagged) in msgs.into_iter().rev() {
                q.counts.dequeued = q.counts.dequeued.saturating_sub(1);
                // Not written: not a redelivery; one flagged already stays flagged.
                let held = Held {
                    leased: flagged,
                    ..Held::new(msg)
                };
                self.fx.put(q, &held, false);
                q.ready.push_front(held);
            }
            q.dispatch(&name, &mut self.fx);
        }
        self.flush();
    }

    /// Hands waiting messages of the queues `conn` consumes to it (its outbox has room again).
    pub fn pump(&mut self, conn: u64) {
        for (name, q) in &mut self.queues {
            if !q.ready.is_empty() && q.consumers.iter().any(|c| c.out.conn == conn) {
                q.dispatch(name, &mut self.fx);
            }
        }
        self.flush();
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
        self.flush();
    }

    pub fn report(&self) -> Vec<DestinationReport> {
        let queues = self
            .queues
            .iter()
            .filter(|(_, q)| q.durable.is_none())
            .map(|(n, q)| DestinationReport {
                destination: format!("/queue/{n}"),
                kind: "queue",
                depth: q.depth(),
                in_flight: q.inflight.len() as u64,
                consumers: q.consumers.len() as u64,
                max_depth: Some(q.max_depth),
                max_subscribers: None,
                max_redeliveries: q.dead_letters().then_some(q.max_redeliveries),
                persistent: Some(q.persistent),
                draining: !q.configured,
                counts: q.counts.clone(),
                durable_subscriptions: Vec::new(),
            });
        let topics = self.topics.iter().map(|(n, t)| {
            let durables: Vec<(&DurableOf, &QueueState)> = t
                .durables
                .iter()
                .filter_map(|k| self.queues.get(k))
                .filter_map(|q| q.durable.as_ref().map(|d| (d, q)))
                .collect();
            DestinationReport {
                destination: format!("/topic/{n}"),
                kind: "topic",
                depth: durables.iter().map(|(_, q)| q.depth()).sum(),
                in_flight: durables.iter().map(|(_, q)| q.inflight.len() as u64).sum(),
                consumers: (t.subscribers.len()
                    + durables
                        .iter()
                        .map(|(_, q)| q.consumers.len())
                        .sum::<usize>()) as u64,
                max_depth: None,
                max_subscribers: Some(t.max_subscribers),
                max_redeliveries: None,
                persistent: Some(t.persistent),
                draining: !t.configured,
                counts: t.counts.clone(),
                durable_subscriptions: durables
                    .iter()
                    .map(|(d, q)| DurableReport {
                        client_id: d.client.clone(),
                        name: d.name.clone(),
                        depth: q.depth(),
                        in_flight: q.inflight.len() as u64,
                        connected: !q.consumers.is_empty(),
                        counts: q.counts.clone(),
                    })
                    .collect(),
            }
        });
        queues.chain(topics).collect()
    }
}

/// `TOPIC\nCLIENT\nNAME` (a durable log without its `d:`).
fn parse_durable(key: &str) -> Option<DurableOf> {
    let mut parts = key.splitn(3, '\n');
    let (topic, client, name) = (parts.next()?, parts.next()?, parts.next()?);
    Some(DurableOf {
        topic: topic.to_owned(),
        client: client.to_owned(),
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::model::{Queue, Topic};

    /// `q` (max-redeliveries 3) and `t`, persistent or not.
    fn cfg_p(depth: u64, subs: u64, persistent: bool) -> Messaging {
        Messaging {
            listener: None,
            queues: [(
                "q".to_owned(),
                Queue {
                    max_depth: depth,
                    persistent,
                    max_redeliveries: 3,
                },
            )]
            .into(),
            topics: [(
                "t".to_owned(),
                Topic {
                    max_subscribers: subs,
                    persistent,
                    durable_max_depth: 2,
                },
            )]
            .into(),
        }
    }

    fn cfg(depth: u64, subs: u64) -> Messaging {
        cfg_p(depth, subs, false)
    }

    /// A broker on the store in `dir` (the previous one must be dropped: it closes its store),
    /// configured with `c` and holding what the store kept.
    fn restart(dir: &std::path::Path, c: &Messaging) -> (Broker, usize) {
        let (store, recovered) = Store::open(dir, None).unwrap();
        let mut b = Broker::with_store(Arc::new(store));
        b.apply(c);
        let n = b.recover(recovered);
        (b, n)
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
            .map(|_| ())
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
        for _ in 0..3 {
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
        assert_eq!(
            main.counts.redelivered, 3,
            "max-redeliveries of the configuration"
        );
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

    #[test]
    fn persistent_messages_come_back_in_order_and_those_handed_out_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg_p(100, 10, true);
        {
            let (mut b, n) = restart(dir.path(), &c);
            assert_eq!(n, 0);
            for m in ["a", "b", "c", "d"] {
                assert!(b.send(&q(), Vec::new(), m.into()).unwrap() > 0, "written");
            }
            let (o, mut r) = outbox(1, 16);
            b.subscribe(o, "s", &q(), AckMode::ClientIndividual, 2)
                .unwrap();
            let got = bodies(&mut r);
            assert_eq!(got.len(), 2);
            // `a` is acknowledged, which hands `c` over: `b` and `c` are held unacknowledged
            // when the server stops, `d` was never handed out.
            b.ack(1, "q", &[got[0].2.unwrap()]);
            assert_eq!(bodies(&mut r)[0].0, "c");
        }
        let (mut b, n) = restart(dir.path(), &c);
        assert_eq!(n, 3);
        let (o, mut r) = outbox(1, 16);
        b.subscribe(o, "s", &q(), AckMode::ClientIndividual, PREFETCH)
            .unwrap();
        let got = bodies(&mut r);
        let seen: Vec<(&str, bool)> = got.iter().map(|g| (g.0.as_str(), g.1)).collect();
        assert_eq!(seen, [("b", true), ("c", true), ("d", false)]);
        // Acknowledged after the restart: gone for good.
        b.ack(
            1,
            "q",
            &got.iter().map(|g| g.2.unwrap()).collect::<Vec<_>>(),
        );
        drop(b);
        assert_eq!(restart(dir.path(), &c).1, 0);
    }

    #[test]
    fn a_durable_subscription_keeps_up_to_its_topics_durable_max_depth_live() {
        let mut b = Broker::default();
        let mut c = cfg(100, 10);
        b.apply(&c);
        let t = Dest::Topic("t".into());
        let (o, _r) = outbox(1, 16);
        b.subscribe_durable(o, "s", "t", "app", "audit", AckMode::Client, 10)
            .unwrap();
        b.disconnect(1);
        let kept = |b: &Broker| {
            let r = b.report();
            let d = &r
                .iter()
                .find(|d| d.kind == "topic")
                .unwrap()
                .durable_subscriptions[0];
            (d.depth, d.counts.discarded)
        };
        for m in ["1", "2", "3"] {
            send(&mut b, &t, m).unwrap();
        }
        assert_eq!(kept(&b), (2, 1), "durable-max-depth 2");
        c.topics.get_mut("t").unwrap().durable_max_depth = 3;
        b.apply(&c);
        send(&mut b, &t, "4").unwrap();
        assert_eq!(kept(&b), (3, 1), "raised live");
        c.topics.get_mut("t").unwrap().durable_max_depth = 1;
        b.apply(&c);
        send(&mut b, &t, "5").unwrap();
        assert_eq!(kept(&b), (3, 2), "lowered live: what it holds is kept");
    }

    #[test]
    fn leases_are_written_ahead_of_the_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg_p(100_000, 10, true);
        let n = 2 * LEASE as u64;
        {
            let (mut b, _) = restart(dir.path(), &c);
            for i in 1..=n {
                send(&mut b, &q(), &i.to_string()).unwrap();
            }
            let (o, mut r) = outbox(1, 16);
            b.subscribe(o, "s", &q(), AckMode::ClientIndividual, 1)
                .unwrap();
            // The first delivery leases it and the LEASE after it (ids 1..=n, in order).
            assert_eq!(b.queues["q"].leased_upto(), LEASE as u64 + 1);
            let mut delivered = 1;
            while delivered <= LEASE_AHEAD + 1 {
                let d = bodies(&mut r);
                b.ack(1, "q", &[d[0].2.unwrap()]);
                delivered += 1;
            }
            // A second lease before the deliveries reach the end of the first.
            let upto = b.queues["q"].leased_upto();
            assert!(
                upto > LEASE as u64 + 1 && upto <= (LEASE + LEASE_AHEAD + 2) as u64,
                "{upto}"
            );
            b.store.as_ref().unwrap().close_as_crashed();
        }
        let (_store, r) = Store::open(dir.path(), None).unwrap();
        let upto = r.leases["q:q"];
        assert!(upto > LEASE as u64 + 1, "{upto}");
        for m in &r.logs["q:q"] {
            assert_eq!(m.leased, m.id <= upto, "{}", m.id);
        }
    }

    #[test]
    fn a_crash_flags_what_the_lease_covered_without_counting_it() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg_p(100, 10, true);
        {
            // What a crash leaves when a lease reached the disk and the marks of the deliveries
            // made under it did not: a and b under the lease, c above it.
            let (store, _) = Store::open(dir.path(), None).unwrap();
            let put = |id, body: &str| Op::Put {
                log: "q:q".into(),
                state: 0,
                msg: Arc::new(Message {
                    id,
                    destination: "/queue/q".into(),
                    headers: Vec::new(),
                    body: body.into(),
                }),
            };
            let lease = Op::Lease {
                log: "q:q".into(),
                upto: 2,
            };
            store.submit(1, vec![put(1, "a"), put(2, "b"), put(3, "c"), lease]);
            store.close_as_crashed();
        }
        let (mut b, n) = restart(dir.path(), &c);
        assert_eq!(n, 3);
        assert!(b.fx.next_id >= 3, "new ids above the lease");
        let (o, mut r) = outbox(1, 16);
        b.subscribe(o, "s", &q(), AckMode::ClientIndividual, 1)
            .unwrap();
        let mut d = bodies(&mut r);
        assert_eq!((d[0].0.as_str(), d[0].1), ("a", true));
        // Flagged, not counted: it still takes max-redeliveries (3) NACKs before dead-lettering.
        for _ in 0..3 {
            b.nack(1, "q", &[d[0].2.unwrap()]);
            d = bodies(&mut r);
            assert_eq!((d[0].0.as_str(), d[0].1), ("a", true));
        }
        b.ack(1, "q", &[d[0].2.unwrap()]);
        let d = bodies(&mut r);
        assert_eq!((d[0].0.as_str(), d[0].1), ("b", true));
        b.ack(1, "q", &[d[0].2.unwrap()]);
        let d = bodies(&mut r);
        assert_eq!((d[0].0.as_str(), d[0].1), ("c", false), "above the lease");
    }

    #[test]
    fn redeliveries_and_dead_letters_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg_p(100, 10, true);
        {
            let (mut b, _) = restart(dir.path(), &c);
            send(&mut b, &q(), "poison").unwrap();
            let (o, mut r) = outbox(1, 16);
            b.subscribe(o, "s", &q(), AckMode::ClientIndividual, 1)
                .unwrap();
            // Delivered 3 times (the first and two redeliveries), then the server stops with the
            // third delivery unacknowledged.
            for _ in 0..2 {
                let id = bodies(&mut r)[0].2.unwrap();
                b.nack(1, "q", &[id]);
            }
            assert_eq!(bodies(&mut r).len(), 1);
        }
        let (mut b, _) = restart(dir.path(), &c);
        let (o, mut r) = outbox(1, 16);
        b.subscribe(o, "s", &q(), AckMode::ClientIndividual, 1)
            .unwrap();
        // Recovered as its third redelivery; one NACK more passes max-redeliveries (3).
        let d = bodies(&mut r);
        assert_eq!((d[0].0.as_str(), d[0].1), ("poison", true));
        b.nack(1, "q", &[d[0].2.unwrap()]);
        assert!(bodies(&mut r).is_empty());
        drop(b);
        let (b, n) = restart(dir.path(), &c);
        assert_eq!(n, 1);
        let dlq = b.report();
        let dlq = dlq
            .iter()
            .find(|d| d.destination == "/queue/q.dlq")
            .unwrap();
        assert_eq!(dlq.depth, 1, "the dead letter is kept too");
    }

    #[test]
    fn persistent_switched_live_keeps_the_messages_held() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut b, _) = restart(dir.path(), &cfg_p(100, 10, true));
            send(&mut b, &q(), "1").unwrap();
            b.apply(&cfg_p(100, 10, false));
            assert_eq!(b.report()[0].depth, 1, "kept in memory");
            send(&mut b, &q(), "2").unwrap();
        }
        // Off: nothing was kept on disk.
        {
            let (mut b, n) = restart(dir.path(), &cfg_p(100, 10, false));
            assert_eq!(n, 0);
            send(&mut b, &q(), "3").unwrap();
            b.apply(&cfg_p(100, 10, true));
        }
        // Back on: what it held then was written.
        let (mut b, n) = restart(dir.path(), &cfg_p(100, 10, true));
        assert_eq!(n, 1);
        let (o, mut r) = outbox(1, 16);
        b.subscribe(o, "s", &q(), AckMode::Auto, PREFETCH).unwrap();
        assert_eq!(bodies(&mut r)[0].0, "3");
    }

    #[test]
    fn a_removed_persistent_queue_comes_back_draining_and_leaves_no_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut b, _) = restart(dir.path(), &cfg_p(100, 10, true));
            send(&mut b, &q(), "left").unwrap();
            b.apply(&Messaging::default());
        }
        let (mut b, n) = restart(dir.path(), &Messaging::default());
        assert_eq!(n, 1);
        assert!(b.report()[0].draining);
        let (o, mut r) = outbox(1, 4);
        b.subscribe(o, "s", &q(), AckMode::Auto, 1).unwrap();
        assert_eq!(bodies(&mut r)[0].0, "left");
        b.unsubscribe(1, "s", &q());
        assert!(b.report().is_empty(), "drained: gone");
        drop(b);
        assert_eq!(restart(dir.path(), &Messaging::default()).1, 0);
    }

    #[test]
    fn a_durable_subscription_keeps_what_its_absent_subscriber_missed() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg_p(100, 2, true);
        let t = Dest::Topic("t".into());
        {
            let (mut b, _) = restart(dir.path(), &c);
            let (o, mut r) = outbox(1, 16);
            let key = b
                .subscribe_durable(o.clone(), "s", "t", "app", "audit", AckMode::Client, 10)
                .unwrap();
            assert!(matches!(
                b.subscribe_durable(o, "s2", "t", "app", "audit", AckMode::Auto, 10),
                Err(BrokerError::DurableInUse { .. })
            ));
            send(&mut b, &t, "seen").unwrap();
            let got = bodies(&mut r);
            assert_eq!(got[0].0, "seen");
            b.ack(1, &key, &[got[0].2.unwrap()]);
            b.disconnect(1);
            send(&mut b, &t, "missed").unwrap();
            let report = b.report();
            let topic = report.iter().find(|d| d.kind == "topic").unwrap();
            assert_eq!(topic.durable_subscriptions.len(), 1);
            assert_eq!(topic.durable_subscriptions[0].depth, 1);
            assert!(!topic.durable_subscriptions[0].connected);
            // It counts as a subscriber: one plain subscriber more fills max-subscribers (2).
            let (o2, _r2) = outbox(2, 4);
            b.subscribe(o2, "p", &t, AckMode::Auto, 1).unwrap();
            let (o3, _r3) = outbox(3, 4);
            assert!(b.subscribe(o3, "p", &t, AckMode::Auto, 1).is_err());
        }
        let (mut b, n) = restart(dir.path(), &c);
        assert_eq!(n, 1);
        let (o, mut r) = outbox(1, 16);
        b.subscribe_durable(o, "s", "t", "app", "audit", AckMode::Auto, 10)
            .unwrap();
        let got = bodies(&mut r);
        assert_eq!((got[0].0.as_str(), got[0].1), ("missed", false));
        b.disconnect(1);
        b.remove_durable("t", "app", "audit").unwrap();
        let topic = |b: &Broker| b.report().into_iter().find(|d| d.kind == "topic").unwrap();
        assert!(topic(&b).durable_subscriptions.is_empty());
        drop(b);
        let (b, n) = restart(dir.path(), &c);
        assert_eq!(n, 0);
        assert!(
            topic(&b).durable_subscriptions.is_empty(),
            "removed for good"
        );
    }
}
