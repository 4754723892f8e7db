//! The fan-out of `/v1/events`: one broadcast channel for subscribers of every kind, and one per
//! set of kinds that subscribers asked for (`?events=pinned,order`). A subscriber is woken only by
//! events it asked for: with one channel and a filter at each receiver, every one of a thousand
//! servers' `server` events after a pin woke each of the thousand servers' streams (a million
//! wake-ups to deliver nothing), and a steady 500 reports a second would do the same on any change.

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::state::Event;

/// The channel of one set of kinds (sorted, without repeats).
type Filtered = (Vec<String>, broadcast::Sender<Arc<Event>>);

pub(super) struct Bus {
    capacity: usize,
    all: broadcast::Sender<Arc<Event>>,
    /// Channels of the kind sets in use. Few: every Managed Server asks for the same set.
    filtered: Mutex<Vec<Filtered>>,
}

impl Bus {
    /// `capacity`: how many events a subscriber may fall behind before it is told it lagged.
    pub(super) fn new(capacity: usize) -> Bus {
        Bus {
            capacity,
            all: broadcast::channel(capacity).0,
            filtered: Mutex::new(Vec::new()),
        }
    }

    /// Sends `event` to the subscribers of every kind and to those that asked for its kind.
    pub(super) fn send(&self, event: Event) {
        let event = Arc::new(event);
        // Under the lock, so that a subscriber never misses an event sent after it subscribed.
        let mut filtered = self.lock();
        filtered.retain(|(_, tx)| tx.receiver_count() > 0);
        for (kinds, tx) in filtered.iter() {
            if kinds.iter().any(|k| k == event.name) {
                let _ = tx.send(event.clone());
            }
        }
        let _ = self.all.send(event);
    }

    /// A receiver of the events of `kinds` (`None`: every kind).
    pub(super) fn subscribe(&self, kinds: Option<Vec<String>>) -> broadcast::Receiver<Arc<Event>> {
        let Some(mut kinds) = kinds else {
            return self.all.subscribe();
        };
        kinds.sort();
        kinds.dedup();
        let mut filtered = self.lock();
        if let Some((_, tx)) = filtered.iter().find(|(k, _)| *k == kinds) {
            return tx.subscribe();
        }
        let (tx, rx) = broadcast::channel(self.capacity);
        filtered.push((kinds, tx));
        rx
    }

    /// Subscribers connected now, of every channel.
    pub(super) fn receiver_count(&self) -> usize {
        self.all.receiver_count()
            + self
                .lock()
                .iter()
                .map(|(_, tx)| tx.receiver_count())
                .sum::<usize>()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Filtered>> {
        self.filtered.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &'static str) -> Event {
        Event::new(name, None, &name)
    }

    #[test]
    fn a_subscriber_gets_only_the_kinds_it_asked_for_in_order() {
        let bus = Bus::new(16);
        let mut all = bus.subscribe(None);
        let mut pins = bus.subscribe(Some(vec!["order".into(), "pinned".into()]));
        let mut same = bus.subscribe(Some(vec!["pinned".into(), "order".into(), "pinned".into()]));
        assert_eq!(bus.lock().len(), 1, "one channel per set of kinds");
        for name in ["server", "pinned", "server", "order", "node"] {
            bus.send(event(name));
        }
        let names = |rx: &mut broadcast::Receiver<Arc<Event>>| {
            std::iter::from_fn(|| rx.try_recv().ok().map(|e| e.name)).collect::<Vec<_>>()
        };
        assert_eq!(
            names(&mut all),
            ["server", "pinned", "server", "order", "node"]
        );
        assert_eq!(names(&mut pins), ["pinned", "order"]);
        assert_eq!(names(&mut same), ["pinned", "order"]);
        assert_eq!(bus.receiver_count(), 3);
    }

    #[test]
    fn a_set_nobody_listens_to_any_more_is_dropped() {
        let bus = Bus::new(16);
        let rx = bus.subscribe(Some(vec!["pinned".into()]));
        drop(rx);
        bus.send(event("pinned"));
        assert!(bus.lock().is_empty());
        assert_eq!(bus.receiver_count(), 0);
    }

    #[test]
    fn a_slow_subscriber_is_told_it_lagged() {
        let bus = Bus::new(2);
        let mut rx = bus.subscribe(Some(vec!["pinned".into()]));
        for _ in 0..3 {
            bus.send(event("pinned"));
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(1))
        ));
    }
}
