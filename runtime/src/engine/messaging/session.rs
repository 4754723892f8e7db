//! One STOMP connection: CONNECT (credentials checked against the applied commit's accounts),
//! then frames until DISCONNECT, an error, a missed heart-beat or shutdown. One task owns the
//! socket: it reads frames, writes what the broker delivers to its outbox, and sends heart-beats.
//! A frame that breaks the protocol or a refused operation gets an ERROR frame and the connection
//! is closed (STOMP 1.2: "the server MUST then close the connection").
//!
//! What the store must make durable first (a RECEIPT, a delivery of a stored message) is held
//! back in order until its group is committed, while the connection goes on reading and
//! handling frames: a producer's next SEND is not queued behind the fsync of the previous one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::Inner;
use super::broker::{AckMode, Delivery, Dest, Outbox, PREFETCH};
use super::frame::{Decoded, Frame, decode};
use super::store::{Progress, StoreError};
use crate::auth::Verdict;

/// Largest message body accepted.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Frames waiting to be written to one connection (deliveries): the pending-frame limit.
pub const PENDING_FRAMES: usize = 1024;
/// Time a new connection has to send its CONNECT frame.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The server's heart-beat offer (milliseconds): what it can send, what it wants to receive.
pub const HEART_BEAT_MS: u64 = 10_000;
/// Output held back for the store (bytes) beyond which the connection stops reading frames and
/// taking deliveries until the disk catches up.
const HELD_LIMIT: usize = 1024 * 1024;
/// Subscriptions and open transactions per connection, frames per transaction.
const MAX_SUBSCRIPTIONS: usize = 256;
const MAX_TRANSACTIONS: usize = 16;
const MAX_TRANSACTION_FRAMES: usize = 10_000;

/// Why a connection is being closed with an ERROR frame.
struct Fatal {
    message: String,
    receipt: Option<String>,
}

fn fatal(message: impl Into<String>, frame: Option<&Frame>) -> Fatal {
    Fatal {
        message: message.into(),
        receipt: frame.and_then(|f| f.get("receipt")).map(str::to_owned),
    }
}

struct Subscription {
    dest: Dest,
    /// The broker queue its ACKs and NACKs settle: the queue, or the durable subscription's key
    /// (none for a plain topic subscription).
    queue: Option<String>,
    ack: AckMode,
    /// Client-ack deliveries not yet acknowledged, in delivery order.
    unacked: VecDeque<u64>,
}

struct Session {
    inner: Arc<Inner>,
    conn: u64,
    user: String,
    /// CONNECT's `client-id`: what names its durable subscriptions.
    client_id: Option<String>,
    /// The store group that must be durable before `out` is written (receipts of persistent
    /// SENDs and ACKs, deliveries of stored messages); only grows, so output stays in order.
    wait: u64,
    /// Output sealed before `wait` last grew, each part with the group it waits for, in order.
    held: VecDeque<(u64, Vec<u8>)>,
    held_bytes: usize,
    /// The last store group this connection's frames made: a receipt waits for it, so that it
    /// also vouches for every frame before it.
    ticket: u64,
    subs: BTreeMap<String, Subscription>,
    /// Which subscription each outstanding queue `ack` id belongs to.
    acks: HashMap<u64, String>,
    /// The highest `ack` id given to this connection: an ACK or NACK of a lower id that is not
    /// outstanding (settled already, or a topic message: topics keep nothing to settle) changes
    /// nothing; of a higher one is an error.
    max_ack: u64,
    transactions: HashMap<String, Vec<Frame>>,
    out: Vec<u8>,
    closing: bool,
    /// Deliveries to subscriptions that ended before they were written.
    unsent: Vec<Delivery>,
}

/// Serves one accepted connection to its end; never panics on input.
pub(super) async fn serve(inner: Arc<Inner>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let connect =
        match tokio::time::timeout(CONNECT_TIMEOUT, first_frame(&mut stream, &mut buf)).await {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(e)) => {
                send_error(&mut stream, &fatal(e, None)).await;
                return;
            }
        };
    let (user, heart) = match handshake(&inner, &connect, peer).await {
        Ok(x) => x,
        Err(e) => {
            send_error(&mut stream, &e).await;
            return;
        }
    };
    let conn = inner.next_conn();
    let (tx, mut rx) = mpsc::channel::<Delivery>(PENDING_FRAMES);
    let overflow = Arc::new(Notify::new());
    let outbox = Outbox {
        conn,
        tx,
        overflow: overflow.clone(),
    };
    let mut connected = Frame::new("CONNECTED")
        .header("version", "1.2")
        .header("heart-beat", format!("{HEART_BEAT_MS},{HEART_BEAT_MS}"))
        .header("server", concat!("steward/", env!("CARGO_PKG_VERSION")))
        .header("session", conn.to_string());
    if let Some(r) = connect.get("receipt") {
        connected = connected.header("receipt-id", r);
    }
    let mut s = Session {
        inner: inner.clone(),
        conn,
        user,
        client_id: connect.get("client-id").map(str::to_owned),
        wait: 0,
        held: VecDeque::new(),
        held_bytes: 0,
        ticket: 0,
        subs: BTreeMap::new(),
        acks: HashMap::new(),
        max_ack: 0,
        transactions: HashMap::new(),
        out: Vec::new(),
        closing: false,
        unsent: Vec::new(),
    };
    connected.encode(&mut s.out);
    let mut shutdown = inner.shutdown.subscribe();
    let (send_every, expect_every) = heart;
    let mut last_read = Instant::now();
    let mut last_write = Instant::now();
    let tick = [send_every, expect_every]
        .into_iter()
        .flatten()
        .min()
        .map_or(Duration::from_secs(3600), |d| d / 2);
    let mut ticker = tokio::time::interval(tick.max(Duration::from_millis(50)));
    let mut progress = inner.store.as_ref().map(|st| st.watch());
    let result: Result<(), Fatal> = async {
        loop {
            // Frames already read (the CONNECT frame's packet may hold more) are handled first.
            while !s.closing && !s.congested() {
                match decode(&mut buf, MAX_BODY) {
                    Ok(None) => break,
                    Ok(Some(Decoded::HeartBeat)) => {}
                    Ok(Some(Decoded::Frame(f))) => s.handle(f, &outbox)?,
                    Err(e) => return Err(fatal(e.to_string(), None)),
                }
            }
            if s.write_durable(&mut stream).await? {
                last_write = Instant::now();
            }
            let waiting = s.pending();
            if s.closing && !waiting {
                return Ok(());
            }
            let congested = s.congested();
            tokio::select! {
                read = stream.read_buf(&mut buf), if !s.closing && !congested => {
                    match read {
                        Ok(0) | Err(_) => return Ok(()),
                        Ok(_) => last_read = Instant::now(),
                    }
                }
                alive = durable_changed(&mut progress), if waiting => {
                    if !alive {
                        return Err(fatal(StoreError::Closed.to_string(), None));
                    }
                }
                d = rx.recv(), if !congested => {
                    let Some(d) = d else { return Ok(()) };
                    let mut queue_delivery = d.queue.is_some();
                    s.deliver(d);
                    // Take what else is ready: one write for the batch.
                    while s.out.len() < 64 * 1024 && !s.congested() {
                        match rx.try_recv() {
                            Ok(d) => {
                                queue_delivery |= d.queue.is_some();
                                s.deliver(d);
                            }
                            Err(_) => break,
                        }
                    }
                    if queue_delivery {
                        let mut broker = s.inner.broker();
                        broker.unsent(std::mem::take(&mut s.unsent));
                        broker.pump(conn);
                    }
                }
                _ = overflow.notified() => {
                    return Err(fatal(format!(
                        "more than {PENDING_FRAMES} frames are waiting for this connection; it is too slow for its subscriptions"
                    ), None));
                }
                _ = ticker.tick() => {
                    if let Some(every) = expect_every
                        && last_read.elapsed() > every * 2
                    {
                        // No frame and no heart-beat: the peer is gone.
                        return Ok(());
                    }
                    if let Some(every) = send_every
                        && last_write.elapsed() >= every
                    {
                        s.out.push(b'\n');
                    }
                }
                _ = shutdown.changed() => {
                    return Err(fatal("the server is shutting down", None));
                }
            }
        }
    }
    .await;
    if let Err(e) = result
        && !e.message.is_empty()
    {
        // What earlier frames were promised (their receipts) once it is durable; what cannot
        // become durable is dropped.
        if s.pending()
            && let Some(store) = &s.inner.store
        {
            let _ = store.durable(s.wait).await;
        }
        let _ = s.write_durable(&mut stream).await;
        send_error(&mut stream, &e).await;
    }
    // Under one lock: once its consumers are gone nothing new reaches the outbox, and what
    // waits there unwritten goes back to its queue.
    let mut broker = s.inner.broker();
    broker.disconnect(conn);
    rx.close();
    let mut unsent = s.unsent;
    while let Ok(d) = rx.try_recv() {
        unsent.push(d);
    }
    broker.unsent(unsent);
}

/// Waits until the store made more durable; false once its writer is gone (or there is none).
async fn durable_changed(progress: &mut Option<watch::Receiver<Progress>>) -> bool {
    match progress {
        Some(p) => p.changed().await.is_ok(),
        None => false,
    }
}

async fn first_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Option<Frame>, String> {
    loop {
        match decode(buf, MAX_BODY) {
            Ok(Some(Decoded::Frame(f))) => return Ok(Some(f)),
            Ok(Some(Decoded::HeartBeat)) => continue,
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// Checks the CONNECT frame and its credentials; the user and the negotiated heart-beats
/// (server sends every…, expects from the client every…).
async fn handshake(
    inner: &Inner,
    f: &Frame,
    peer: SocketAddr,
) -> Result<(String, (Option<Duration>, Option<Duration>)), Fatal> {
    if f.command != "CONNECT" && f.command != "STOMP" {
        return Err(fatal(
            format!("expected CONNECT or STOMP, got {}", f.command),
            Some(f),
        ));
    }
    let versions = f.get("accept-version").unwrap_or("1.0");
    if !versions.split(',').any(|v| v.trim() == "1.2") {
        return Err(fatal("this server speaks STOMP 1.2 only", Some(f)));
    }
    let (cx, cy) = f
        .get("heart-beat")
        .map(parse_heart_beat)
        .transpose()?
        .unwrap_or((0, 0));
    let (Some(login), Some(passcode)) = (f.get("login"), f.get("passcode")) else {
        return Err(fatal("login and passcode are required", Some(f)));
    };
    let domain = inner.domain();
    let hash = domain
        .accounts
        .users
        .get(login)
        .map(|u| u.password.as_str());
    match inner
        .auth
        .check(Some(peer.ip()), login, passcode, hash)
        .await
    {
        Verdict::Valid => {}
        Verdict::Invalid => return Err(fatal("authentication failed", Some(f))),
        Verdict::Busy => {
            return Err(fatal(
                "too many logins are being checked; try again shortly",
                Some(f),
            ));
        }
        Verdict::Throttled(wait) => {
            return Err(fatal(
                format!(
                    "too many failed logins; try again in {} s",
                    wait.as_secs().max(1)
                ),
                Some(f),
            ));
        }
    }
    Ok((login.to_owned(), negotiate(cx, cy)))
}

/// The heart-beats of a connection whose CONNECT said `heart-beat:cx,cy`, against the server's
/// offer of [`HEART_BEAT_MS`] both ways: how often the server sends one, how long it waits for
/// the client's (`None`: not at all).
fn negotiate(cx: u64, cy: u64) -> (Option<Duration>, Option<Duration>) {
    let send = (cy > 0).then(|| Duration::from_millis(cy.max(HEART_BEAT_MS)));
    let expect = (cx > 0).then(|| Duration::from_millis(cx.max(HEART_BEAT_MS)));
    (send, expect)
}

fn parse_heart_beat(v: &str) -> Result<(u64, u64), Fatal> {
    let bad = || fatal(format!("heart-beat {v:?} is not two numbers"), None);
    let (a, b) = v.split_once(',').ok_or_else(bad)?;
    Ok((
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    ))
}

async fn send_error(stream: &mut TcpStream, e: &Fatal) {
    let mut f = Frame::new("ERROR").header("message", e.message.clone());
    if let Some(r) = &e.receipt {
        f = f.header("receipt-id", r.clone());
    }
    f.body = e.message.clone().into_bytes();
    let mut out = Vec::new();
    f.encode(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// The durable subscription a SUBSCRIBE or UNSUBSCRIBE names: Artemis's header, or ActiveMQ's.
fn durable_name(f: &Frame) -> Option<&str> {
    f.get("durable-subscription-name")
        .or_else(|| f.get("activemq.subscriptionName"))
}

fn required<'a>(f: &'a Frame, name: &str) -> Result<&'a str, Fatal> {
    f.get(name)
        .ok_or_else(|| fatal(format!("{} needs a {name} header", f.command), Some(f)))
}

impl Session {
    fn handle(&mut self, f: Frame, outbox: &Outbox) -> Result<(), Fatal> {
        match f.command.as_str() {
            "SEND" | "ACK" | "NACK" if f.get("transaction").is_some() => {
                let tx = required(&f, "transaction")?.to_owned();
                // Permissions are checked when the frame arrives, the effect happens at COMMIT.
                if f.command == "SEND" {
                    self.send_permitted(&f)?;
                }
                let Some(frames) = self.transactions.get_mut(&tx) else {
                    return Err(fatal(format!("no transaction {tx} is open"), Some(&f)));
                };
                if frames.len() >= MAX_TRANSACTION_FRAMES {
                    return Err(fatal(
                        format!("transaction {tx} holds {MAX_TRANSACTION_FRAMES} frames already"),
                        Some(&f),
                    ));
                }
                let receipt = f.get("receipt").map(str::to_owned);
                frames.push(f);
                self.receipt(receipt.as_deref());
                return Ok(());
            }
            "SEND" => {
                let dest = self.send_permitted(&f)?;
                self.send(&f, &dest)?;
            }
            "SUBSCRIBE" => self.subscribe(&f, outbox)?,
            "UNSUBSCRIBE" => self.unsubscribe(&f)?,
            "ACK" | "NACK" => self.ack(&f)?,
            "BEGIN" => {
                let tx = required(&f, "transaction")?;
                if self.transactions.len() >= MAX_TRANSACTIONS {
                    return Err(fatal(
                        format!("at most {MAX_TRANSACTIONS} transactions may be open"),
                        Some(&f),
                    ));
                }
                if self.transactions.contains_key(tx) {
                    return Err(fatal(format!("transaction {tx} is already open"), Some(&f)));
                }
                self.transactions.insert(tx.to_owned(), Vec::new());
            }
            "COMMIT" | "ABORT" => {
                let tx = required(&f, "transaction")?;
                let Some(frames) = self.transactions.remove(tx) else {
                    return Err(fatal(format!("no transaction {tx} is open"), Some(&f)));
                };
                if f.command == "COMMIT" {
                    for g in frames {
                        match g.command.as_str() {
                            "SEND" => {
                                let dest = self.send_permitted(&g)?;
                                self.send(&g, &dest)?;
                            }
                            _ => self.ack(&g)?,
                        }
                    }
                }
            }
            "DISCONNECT" => self.closing = true,
            "CONNECT" | "STOMP" => {
                return Err(fatal("already connected", Some(&f)));
            }
            other => {
                return Err(fatal(
                    format!("{other} is not a frame a client sends"),
                    Some(&f),
                ));
            }
        }
        if f.get("receipt").is_some() {
            self.need(self.ticket);
        }
        self.receipt(f.get("receipt"));
        Ok(())
    }

    /// Ends subscription `id`; with `durable-subscription-name` (or ActiveMQ's
    /// `activemq.subscriptionName`) also removes that durable subscription of this client and
    /// what it kept.
    fn unsubscribe(&mut self, f: &Frame) -> Result<(), Fatal> {
        let durable = durable_name(f);
        let sub = f.get("id").and_then(|id| self.subs.remove(id));
        if let Some(sub) = &sub {
            for a in &sub.unacked {
                self.acks.remove(a);
            }
            let dest = sub.queue.clone().map_or(sub.dest.clone(), Dest::Queue);
            self.inner
                .broker()
                .unsubscribe(self.conn, f.get("id").unwrap_or_default(), &dest);
        }
        match (durable, &sub) {
            (Some(name), _) => {
                let topic = match (&sub, f.get("destination")) {
                    (Some(s), _) => s.dest.clone(),
                    (None, Some(d)) => Dest::parse(d).map_err(|e| fatal(e.to_string(), Some(f)))?,
                    (None, None) => {
                        return Err(fatal(
                            "UNSUBSCRIBE of a durable subscription needs the id of its subscription or its destination",
                            Some(f),
                        ));
                    }
                };
                let Dest::Topic(topic) = topic else {
                    return Err(fatal("durable subscriptions are of topics", Some(f)));
                };
                let client = self.client_id(f)?;
                let ticket = self
                    .inner
                    .broker()
                    .remove_durable(&topic, &client, name)
                    .map_err(|e| fatal(e.to_string(), Some(f)))?;
                self.ticket = self.ticket.max(ticket);
                Ok(())
            }
            (None, Some(_)) => Ok(()),
            (None, None) => {
                let id = required(f, "id")?;
                Err(fatal(format!("no subscription {id}"), Some(f)))
            }
        }
    }

    fn client_id(&self, f: &Frame) -> Result<String, Fatal> {
        self.client_id.clone().ok_or_else(|| {
            fatal(
                "a durable subscription needs a client-id header on CONNECT",
                Some(f),
            )
        })
    }

    fn receipt(&mut self, id: Option<&str>) {
        if let Some(id) = id {
            Frame::new("RECEIPT")
                .header("receipt-id", id)
                .encode(&mut self.out);
        }
    }

    /// Whether the user (in the applied commit: permissions are live) holds `permission`.
    fn permitted(&self, action: &str, dest: &Dest, f: &Frame) -> Result<(), Fatal> {
        let permission = format!("messaging:{action}:{dest}");
        if self.inner.domain().permits(&self.user, &permission) {
            Ok(())
        } else {
            Err(fatal(
                format!("user {} lacks permission {permission}", self.user),
                Some(f),
            ))
        }
    }

    fn send_permitted(&self, f: &Frame) -> Result<Dest, Fatal> {
        let dest =
            Dest::parse(required(f, "destination")?).map_err(|e| fatal(e.to_string(), Some(f)))?;
        self.permitted("send", &dest, f)?;
        Ok(dest)
    }

    fn send(&mut self, f: &Frame, dest: &Dest) -> Result<(), Fatal> {
        let headers: Vec<(String, String)> = f
            .headers
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "destination" | "transaction" | "receipt" | "content-length"
                )
            })
            .cloned()
            .collect();
        let ticket = self
            .inner
            .broker()
            .send(dest, headers, f.body.clone())
            .map_err(|e| fatal(e.to_string(), Some(f)))?;
        self.ticket = self.ticket.max(ticket);
        Ok(())
    }

    fn subscribe(&mut self, f: &Frame, outbox: &Outbox) -> Result<(), Fatal> {
        let id = required(f, "id")?.to_owned();
        let dest =
            Dest::parse(required(f, "destination")?).map_err(|e| fatal(e.to_string(), Some(f)))?;
        self.permitted("receive", &dest, f)?;
        let ack = match f.get("ack").unwrap_or("auto") {
            "auto" => AckMode::Auto,
            "client" => AckMode::Client,
            "client-individual" => AckMode::ClientIndividual,
            other => return Err(fatal(format!("unknown ack mode {other:?}"), Some(f))),
        };
        if self.subs.contains_key(&id) {
            return Err(fatal(format!("subscription {id} exists already"), Some(f)));
        }
        if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(fatal(
                format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection"),
                Some(f),
            ));
        }
        let window = f
            .get("prefetch-count")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(PREFETCH);
        let durable = match (&dest, durable_name(f)) {
            (Dest::Topic(topic), Some(name)) => Some((topic.clone(), self.client_id(f)?, name)),
            (Dest::Queue(_), Some(_)) => {
                return Err(fatal("durable subscriptions are of topics", Some(f)));
            }
            _ => None,
        };
        // Registered before the broker may deliver to it.
        self.subs.insert(
            id.clone(),
            Subscription {
                dest: dest.clone(),
                queue: match &dest {
                    Dest::Queue(name) => Some(name.clone()),
                    Dest::Topic(_) => None,
                },
                ack,
                unacked: VecDeque::new(),
            },
        );
        let mut broker = self.inner.broker();
        let r = match durable {
            Some((topic, client, name)) => broker
                .subscribe_durable(outbox.clone(), &id, &topic, &client, name, ack, window)
                .map(Some),
            None => broker
                .subscribe(outbox.clone(), &id, &dest, ack, window)
                .map(|()| None),
        };
        drop(broker);
        match r {
            Ok(key) => {
                if let (Some(key), Some(sub)) = (key, self.subs.get_mut(&id)) {
                    sub.queue = Some(key);
                }
                Ok(())
            }
            Err(e) => {
                self.subs.remove(&id);
                Err(fatal(e.to_string(), Some(f)))
            }
        }
    }

    /// ACK or NACK: `client` mode covers every earlier delivery of the subscription too.
    fn ack(&mut self, f: &Frame) -> Result<(), Fatal> {
        let raw = required(f, "id")?;
        let unknown = || fatal(format!("{} of unknown delivery {raw}", f.command), Some(f));
        let id: u64 = raw.parse().map_err(|_| unknown())?;
        let Some(sub_id) = self.acks.get(&id).cloned() else {
            return if id <= self.max_ack {
                Ok(())
            } else {
                Err(unknown())
            };
        };
        let Some(sub) = self.subs.get_mut(&sub_id) else {
            return Err(unknown());
        };
        let ids: Vec<u64> = match sub.ack {
            AckMode::Client => {
                let Some(pos) = sub.unacked.iter().position(|x| *x == id) else {
                    return Err(unknown());
                };
                sub.unacked.drain(..=pos).collect()
            }
            _ => {
                sub.unacked.retain(|x| *x != id);
                vec![id]
            }
        };
        for i in &ids {
            self.acks.remove(i);
        }
        if let Some(name) = &sub.queue {
            let mut broker = self.inner.broker();
            let ticket = if f.command == "ACK" {
                broker.ack(self.conn, name, &ids)
            } else {
                broker.nack(self.conn, name, &ids)
            };
            self.ticket = self.ticket.max(ticket);
        }
        Ok(())
    }

    /// What is written from now on waits for store group `ticket` too: the output so far is
    /// sealed with what it waits for.
    fn need(&mut self, ticket: u64) {
        if ticket <= self.wait {
            return;
        }
        if !self.out.is_empty() {
            self.held_bytes += self.out.len();
            self.held
                .push_back((self.wait, std::mem::take(&mut self.out)));
        }
        self.wait = ticket;
    }

    /// Whether output waits for the store.
    fn pending(&self) -> bool {
        !self.held.is_empty() || (!self.out.is_empty() && self.wait > self.durable())
    }

    /// Whether so much waits for the store that the connection should stop taking more.
    fn congested(&self) -> bool {
        self.held_bytes + self.out.len() > HELD_LIMIT
    }

    /// The last store group made durable (everything, without a store).
    fn durable(&self) -> u64 {
        self.inner
            .store
            .as_ref()
            .map_or(u64::MAX, |st| st.progress().durable)
    }

    /// Writes the output whose store groups are durable; whether anything was written. Fails
    /// once the store failed with output still waiting for it.
    async fn write_durable(&mut self, stream: &mut TcpStream) -> Result<bool, Fatal> {
        let durable = self.durable();
        let mut wrote = false;
        while self.held.front().is_some_and(|(t, _)| *t <= durable) {
            if let Some((_, chunk)) = self.held.pop_front() {
                self.held_bytes -= chunk.len();
                stream
                    .write_all(&chunk)
                    .await
                    .map_err(|_| fatal("", None))?;
                wrote = true;
            }
        }
        if self.held.is_empty() && self.wait <= durable && !self.out.is_empty() {
            stream
                .write_all(&self.out)
                .await
                .map_err(|_| fatal("", None))?;
            self.out.clear();
            wrote = true;
        }
        if self.pending()
            && let Some(e) = self.inner.store.as_ref().and_then(|st| st.failed())
        {
            return Err(fatal(e.to_string(), None));
        }
        Ok(wrote)
    }

    /// Writes a MESSAGE frame for `d`. If its subscription ended meanwhile, an `auto` queue
    /// delivery goes back to the queue ([`super::broker::Broker::unsent`]); the broker
    /// redelivers what client-mode subscriptions held.
    fn deliver(&mut self, d: Delivery) {
        if !self.subs.contains_key(&d.subscription) {
            self.unsent.push(d);
            return;
        }
        self.need(d.durable);
        let Some(sub) = self.subs.get_mut(&d.subscription) else {
            return;
        };
        let mut f = Frame::new("MESSAGE")
            .header("subscription", d.subscription.clone())
            .header("message-id", d.message.id.to_string())
            .header("destination", d.message.destination.clone());
        if let Some(a) = d.ack {
            f = f.header("ack", a.to_string());
            self.max_ack = self.max_ack.max(a);
            // Only queue deliveries are tracked: what a topic delivered has nothing to settle,
            // and tracking it would grow without bound for a client that never acknowledges.
            if d.queue.is_some() {
                sub.unacked.push_back(a);
                self.acks.insert(a, d.subscription.clone());
            }
        }
        if d.redelivered {
            f = f.header("redelivered", "true");
        }
        for (k, v) in &d.message.headers {
            if !matches!(
                k.as_str(),
                "subscription" | "message-id" | "ack" | "redelivered"
            ) {
                f.headers.push((k.clone(), v.clone()));
            }
        }
        f.body = d.message.body.clone();
        f.encode(&mut self.out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heart_beats_are_the_slower_of_both_offers_and_zero_means_none() {
        let s = |ms| Some(Duration::from_millis(ms));
        assert_eq!(negotiate(0, 0), (None, None));
        assert_eq!(negotiate(1000, 0), (None, s(HEART_BEAT_MS)));
        assert_eq!(negotiate(0, 30_000), (s(30_000), None));
        assert_eq!(negotiate(60_000, 500), (s(HEART_BEAT_MS), s(60_000)));
    }

    #[test]
    fn heart_beat_headers_are_two_numbers() {
        assert_eq!(parse_heart_beat("100, 200").ok(), Some((100, 200)));
        assert!(parse_heart_beat("100").is_err());
        assert!(parse_heart_beat("a,1").is_err());
    }
}
