//! Message-driven components (the MDB counterpart; docs/components.md#message-driven-components).
//!
//! For each `consumes` entry of a component deployed here, one consumer task takes messages
//! from the server's messaging engine in process ([`crate::engine::messaging::internal`]: a
//! `client-individual` subscription, so redelivery and dead letters are exactly a STOMP
//! consumer's) and POSTs each to the component on its local port at `/messages/queue/NAME` (or
//! `/messages/topic/NAME`). A 2xx answer ACKs the message; any other answer, no connection, or no
//! answer within `component.message-timeout` NACKs it. Deliveries in flight share the
//! `thread-pool.max` slots of timer callbacks. While the component is not ready the consumer is
//! not subscribed, so messages stay queued; it subscribes again once the component is healthy.
//! Stopping a consumer (undeploy, the entry removed) ends its subscription: what it held
//! unacknowledged goes back to the queue. POSTs go over kept-alive connections ([`super::conns`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use hyper::header::{CONTENT_TYPE, HeaderName};
use schema::model::Consume;
use serde::Serialize;
use tokio::sync::watch;

use super::{Apps, Inner, acquire};
use crate::engine::messaging::MessagingEngine;
use crate::engine::messaging::broker::{Delivery, Dest};

/// How often a consumer looks at its component's health (subscribed only while it is ready).
const HEALTH_POLL: Duration = Duration::from_millis(200);
/// How long a consumer waits before subscribing again after the broker refused it.
const RETRY: Duration = Duration::from_secs(1);

/// Why a delivery was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    #[error("the component is not running")]
    NotRunning,
    #[error("cannot connect to the component on port {port}: {error}")]
    Connect { port: u16, error: String },
    #[error("cannot speak HTTP to the component: {0}")]
    Http(String),
    #[error("no answer within {0}")]
    Timeout(String),
    #[error("the component answered {0}")]
    Status(u16),
}

/// The consumers of this server's components: one per (application, `consumes` entry).
#[derive(Default)]
pub(super) struct Consumers {
    messaging: OnceLock<MessagingEngine>,
    running: Mutex<BTreeMap<(String, String), Running>>,
}

struct Running {
    stats: Arc<Stats>,
    stop: watch::Sender<bool>,
}

#[derive(Default)]
struct Stats {
    /// `waiting` (for its component to be ready), `consuming`, or `refused` (the broker
    /// refused the subscription; tried again).
    state: Mutex<&'static str>,
    in_flight: AtomicU64,
    delivered: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Stats {
    fn set_state(&self, s: &'static str) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    fn set_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
}

/// One consumer in `GET /v1/components`.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerReport {
    /// `/queue/NAME` or `/topic/NAME`.
    pub destination: String,
    pub state: &'static str,
    pub in_flight: u64,
    pub delivered: u64,
    pub acked: u64,
    pub nacked: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Consumers {
    fn running(&self) -> MutexGuard<'_, BTreeMap<(String, String), Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives the consumers the messaging engine; they start with the next [`reconcile`].
    pub(super) fn attach(&self, messaging: MessagingEngine) {
        let _ = self.messaging.set(messaging);
    }

    /// The consumers of `app`, ordered by their `consumes` entry.
    pub(super) fn report(&self, app: &str) -> Vec<ConsumerReport> {
        self.running()
            .iter()
            .filter(|((a, _), _)| a == app)
            .filter_map(|((_, entry), r)| {
                let s = &r.stats;
                Some(ConsumerReport {
                    destination: Consume::parse(entry).ok()?.destination(),
                    state: *s.state.lock().unwrap_or_else(|p| p.into_inner()),
                    in_flight: s.in_flight.load(Ordering::Relaxed),
                    delivered: s.delivered.load(Ordering::Relaxed),
                    acked: s.acked.load(Ordering::Relaxed),
                    nacked: s.nacked.load(Ordering::Relaxed),
                    last_error: s
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                })
            })
            .collect()
    }

    /// Stops every consumer (shutdown): their subscriptions end, what they held is given back.
    pub(super) fn stop_all(&self) {
        for (_, r) in std::mem::take(&mut *self.running()) {
            let _ = r.stop.send(true);
        }
    }
}

/// Starts the consumers `apps` ask for and stops the others. Nothing runs before the web and
/// messaging engines are attached.
pub(super) fn reconcile(inner: &Arc<Inner>, apps: &Apps) {
    let Some(messaging) = inner.consumers.messaging.get().cloned() else {
        return;
    };
    if inner.web.get().is_none() {
        return;
    }
    let wanted: BTreeMap<(String, String), Dest> = apps
        .iter()
        .flat_map(|(name, app)| {
            app.consumes.iter().filter_map(move |entry| {
                let dest = match Consume::parse(entry).ok()? {
                    Consume::Queue(n) => Dest::Queue(n),
                    Consume::Topic(n) => Dest::Topic(n),
                };
                Some(((name.clone(), entry.clone()), dest))
            })
        })
        .collect();
    let mut running = inner.consumers.running();
    running.retain(|(app, entry), r| {
        let keep = wanted.contains_key(&(app.clone(), entry.clone()));
        if !keep {
            let _ = r.stop.send(true);
            inner.info(
                "COMP-0041",
                &format!("Component {app} no longer consumes {entry}: its consumer stopped, what it held unacknowledged is back in the queue."),
            );
        }
        keep
    });
    for ((app, entry), dest) in wanted {
        if running.contains_key(&(app.clone(), entry.clone())) {
            continue;
        }
        let (stop, stopped) = watch::channel(false);
        let stats = Arc::new(Stats::default());
        stats.set_state("waiting");
        inner.info(
            "COMP-0040",
            &format!("Component {app} consumes {dest} (once it is ready)."),
        );
        tokio::spawn(run(
            inner.clone(),
            messaging.clone(),
            app.clone(),
            dest,
            stats.clone(),
            stopped,
        ));
        running.insert((app, entry), Running { stats, stop });
    }
}

/// One consumer: subscribed while its component is ready, until stopped.
async fn run(
    inner: Arc<Inner>,
    messaging: MessagingEngine,
    app: String,
    dest: Dest,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) {
    let ready = |inner: &Inner| inner.web.get().and_then(|w| w.app_port(&app)).is_some();
    let mut tick = tokio::time::interval(HEALTH_POLL);
    loop {
        stats.set_state("waiting");
        while !ready(&inner) {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
        }
        if *stop.borrow() {
            return;
        }
        let window = inner.state().settings.thread_pool.max.max(1) as usize;
        let mut consumer = match messaging.consume(&dest, window) {
            Ok(c) => c,
            Err(e) => {
                stats.set_state("refused");
                stats.set_error(e.to_string());
                inner.warn(
                    "COMP-0042",
                    &format!("Component {app} cannot consume {dest}: {e}; trying again."),
                );
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        stats.set_state("consuming");
        let settle = consumer.settle();
        let mut failed = false;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {
                    if !ready(&inner) {
                        // Not ready: unsubscribed (what it holds goes back) until it is again.
                        break;
                    }
                }
                d = consumer.recv() => match d {
                    None => return,
                    Some(Err(e)) => {
                        stats.set_error(e.to_string());
                        failed = true;
                        break;
                    }
                    Some(Ok(d)) => {
                        stats.delivered.fetch_add(1, Ordering::Relaxed);
                        stats.in_flight.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(handle(
                            inner.clone(),
                            app.clone(),
                            d,
                            settle.clone(),
                            stats.clone(),
                        ));
                    }
                },
            }
        }
        drop(consumer);
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// One delivery: waits for a slot of the pool, POSTs, then ACKs or NACKs.
async fn handle(
    inner: Arc<Inner>,
    app: String,
    d: Delivery,
    settle: crate::engine::messaging::internal::Settle,
    stats: Arc<Stats>,
) {
    acquire(&inner).await;
    let result = post_message(&inner, &app, &d).await;
    inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    inner.slot_freed.notify_one();
    let ack = d.ack.unwrap_or_default();
    match result {
        Ok(()) => {
            settle.ack(ack);
            stats.acked.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            settle.nack(ack);
            stats.nacked.fetch_add(1, Ordering::Relaxed);
            stats.set_error(e.to_string());
        }
    }
    stats.in_flight.fetch_sub(1, Ordering::Relaxed);
}

/// `POST /messages/queue/NAME` (or `/messages/topic/NAME`) with the message's body and headers.
async fn post_message(inner: &Inner, app: &str, d: &Delivery) -> Result<(), DeliveryError> {
    let port = inner
        .web
        .get()
        .and_then(|w| w.app_port(app))
        .ok_or(DeliveryError::NotRunning)?;
    let timeout = inner.state().settings.message_timeout.0;
    let m = &d.message;
    let content_type = m
        .headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map_or("application/octet-stream", |(_, v)| v.as_str());
    let own: serde_json::Map<String, serde_json::Value> = m.headers.iter().rev().fold(
        serde_json::Map::new(),
        // Reversed, so that the first of a repeated header wins (as in STOMP).
        |mut map, (k, v)| {
            map.insert(k.clone(), serde_json::Value::String(v.clone()));
            map
        },
    );
    let headers = [
        (CONTENT_TYPE, content_type.to_owned()),
        (
            HeaderName::from_static("steward-message-id"),
            m.id.to_string(),
        ),
        (
            HeaderName::from_static("steward-destination"),
            m.destination.clone(),
        ),
        (
            HeaderName::from_static("steward-redelivered"),
            d.redelivered.to_string(),
        ),
        (
            HeaderName::from_static("steward-message-headers"),
            ascii_json(&serde_json::Value::Object(own)),
        ),
    ];
    let path = format!("/messages{}", m.destination);
    let body = bytes::Bytes::from(m.body.clone());
    match tokio::time::timeout(timeout, inner.conns.post(port, &path, &headers, body)).await {
        Err(_) => Err(DeliveryError::Timeout(crate::engine::web::fmt_duration(
            timeout,
        ))),
        Ok(Err(e)) => Err(e),
        Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
        Ok(Ok(status)) => Err(DeliveryError::Status(status)),
    }
}

/// JSON with every character outside printable ASCII escaped (`\uXXXX`): a valid header value.
fn ascii_json(v: &serde_json::Value) -> String {
    let text = v.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::ascii_json;

    #[test]
    fn message_headers_become_an_ascii_header_value() {
        let v = serde_json::json!({"k": "é😀\n"});
        let s = ascii_json(&v);
        assert_eq!(s, r#"{"k":"\u00e9\ud83d\ude00\n"}"#);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&s).unwrap(), v);
    }
}
