//! The messages of persistent destinations on disk: one redb database,
//! `SERVER_HOME/.workspace/tmlog/messages.redb`, written by one thread (group commit).
//!
//! The broker, under its lock, hands each operation's changes to [`Store::submit`] as one group
//! with a ticket (increasing); the writer thread takes every group waiting, applies them in one
//! write transaction and commits it with one fsync, then publishes the last ticket it made
//! durable. N producers waiting for receipts therefore cost one fsync per batch, not one per
//! message. A redb transaction is all or nothing: a crash mid-batch leaves the previous commit.
//!
//! What is kept, per *log* (a queue: `q:NAME`; a durable subscription: `d:TOPIC\nCLIENT\nNAME`):
//! each message (its headers and body) under `(log, id)`, and beside it its delivery state (how
//! often it was redelivered, whether it was handed to a consumer), so that a message delivered
//! before a crash comes back flagged `redelivered`. And per log a *lease*: the highest message id
//! that may have been handed out. The broker writes it ahead of its deliveries, for many
//! messages in one group, so that a delivery does not wait for its own mark: after a crash every
//! message at or below the lease comes back flagged (see `Broker`'s `lease`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use super::broker::Message;
use crate::logfile::Logger;

/// The file inside the store's directory.
pub const FILE: &str = "messages.redb";

const MESSAGES: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("messages");
/// `(log, id)` → redeliveries × 2 + 1 if it was handed to a consumer; absent: 0.
const STATE: TableDefinition<'_, (&str, u64), u64> = TableDefinition::new("state");
/// The durable subscriptions (their logs), kept even while their backlog is empty.
const DURABLES: TableDefinition<'_, &str, ()> = TableDefinition::new("durables");
/// log → the highest id of its messages that may have been handed to a consumer.
const LEASES: TableDefinition<'_, &str, u64> = TableDefinition::new("leases");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("message store {path}: {error}")]
    Open { path: PathBuf, error: redb::Error },
    #[error("message store: {0}")]
    Write(#[from] redb::Error),
    #[error("message store: the record of message {id} in {log:?} is damaged")]
    Corrupt { log: String, id: u64 },
    #[error("message store: closed (the server is stopping)")]
    Closed,
    #[error("message store: cannot create {path}: {error}")]
    Dir {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// One change to the store.
#[derive(Debug)]
pub enum Op {
    /// A message enters `log` with delivery state `state`.
    Put {
        log: String,
        state: u64,
        msg: Arc<Message>,
    },
    /// Message `id` of `log` was handed to a consumer (`state`: see [`state`]).
    Mark { log: String, id: u64, state: u64 },
    /// Message `id` left `log` (acknowledged, consumed, dead-lettered).
    Delete { log: String, id: u64 },
    /// Everything of `log` goes: a destination removed, or made non-persistent.
    DropLog { log: String },
    /// Durable subscription `log` exists.
    Durable { log: String },
    /// Messages of `log` with ids up to `upto` may be handed out from now on.
    Lease { log: String, upto: u64 },
}

/// The delivery state as stored: `redeliveries` so far and whether the message was handed out.
pub fn state(redeliveries: u32, delivered: bool) -> u64 {
    (u64::from(redeliveries) << 1) | u64::from(delivered)
}

/// A message as recovered.
#[derive(Debug)]
pub struct Stored {
    pub id: u64,
    pub redeliveries: u32,
    /// Handed to a consumer before the stop, not acknowledged (its mark was written).
    pub delivered: bool,
    /// At or below its log's lease: it may have been handed out (its mark may not have been
    /// written before the crash).
    pub leased: bool,
    /// The destination it was sent to (a dead letter's is its original queue).
    pub destination: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What the store held when opened: each log's messages in id order, and the durable
/// subscriptions' logs.
#[derive(Debug, Default)]
pub struct Recovered {
    pub logs: BTreeMap<String, Vec<Stored>>,
    pub durables: Vec<String>,
    /// Each log's lease (logs without one: none).
    pub leases: BTreeMap<String, u64>,
}

/// How far the writer got.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Every group up to this ticket is durable.
    pub durable: u64,
    /// Transactions committed (one fsync each).
    pub batches: u64,
    /// The writer failed: nothing after `durable` will become durable.
    pub failed: Option<Arc<StoreError>>,
}

#[derive(Default)]
struct Pending {
    groups: Vec<(u64, Vec<Op>)>,
    closing: bool,
    /// Close as a crash after the last commit would leave the store: leases kept (tests).
    keep_leases: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Taken by the writer around each commit; tests hold it to keep a batch from committing.
    gate: Mutex<()>,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The open store and its writer thread; closed (what is pending written) on drop.
pub struct Store {
    shared: Arc<Shared>,
    progress: watch::Receiver<Progress>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("progress", &*self.progress.borrow())
            .finish()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`, reads back what it holds, and starts its writer.
    /// A failure of the writer is logged to `log` (`MSG-0004`).
    pub fn open(dir: &Path, log: Option<Logger>) -> Result<(Store, Recovered), StoreError> {
        std::fs::create_dir_all(dir).map_err(|error| StoreError::Dir {
            path: dir.to_owned(),
            error,
        })?;
        let path = dir.join(FILE);
        let open_err = |error: redb::Error| StoreError::Open {
            path: path.clone(),
            error,
        };
        let db = Database::create(&path).map_err(|e| open_err(e.into()))?;
        let recovered = recover(&db).map_err(|e| match e {
            StoreError::Write(error) => open_err(error),
            other => other,
        })?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            gate: Mutex::new(()),
        });
        let (tx, progress) = watch::channel(Progress::default());
        let writer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("messaging-store".into())
            .spawn(move || write_loop(&db, &writer, &tx, log.as_ref()))
            .map_err(|error| StoreError::Dir {
                path: dir.to_owned(),
                error,
            })?;
        Ok((
            Store {
                shared,
                progress,
                thread: Mutex::new(Some(thread)),
            },
            recovered,
        ))
    }

    /// Queues group `ticket` (greater than every earlier one) for the writer.
    pub fn submit(&self, ticket: u64, ops: Vec<Op>) {
        self.shared.pending().groups.push((ticket, ops));
        self.shared.wake.notify_one();
    }

    /// Waits until group `ticket` is durable.
    pub async fn durable(&self, ticket: u64) -> Result<(), Arc<StoreError>> {
        let mut rx = self.progress.clone();
        let p = match rx
            .wait_for(|p| p.durable >= ticket || p.failed.is_some())
            .await
        {
            Ok(p) => p.clone(),
            // The writer is gone (closed): what it made durable is all there is.
            Err(_) => self.progress.borrow().clone(),
        };
        if p.durable >= ticket {
            Ok(())
        } else {
            Err(p.failed.unwrap_or_else(|| Arc::new(StoreError::Closed)))
        }
    }

    /// Follows how far the writer gets (closed once the writer is gone).
    pub fn watch(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// How far the writer got.
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Keeps the writer from committing while the guard lives (tests).
    #[cfg(test)]
    pub(crate) fn hold(&self) -> MutexGuard<'_, ()> {
        self.shared.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes what is pending and stops the writer, leaving the leases as a crash would (tests).
    #[cfg(test)]
    pub(crate) fn close_as_crashed(&self) {
        self.shared.pending().keep_leases = true;
        self.close();
    }

    /// The writer's failure, if it failed.
    pub fn failed(&self) -> Option<Arc<StoreError>> {
        self.progress.borrow().failed.clone()
    }

    /// Writes what is pending and stops the writer (also done on drop).
    pub fn close(&self) {
        self.shared.pending().closing = true;
        self.shared.wake.notify_one();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(
    db: &Database,
    shared: &Shared,
    progress: &watch::Sender<Progress>,
    log: Option<&Logger>,
) {
    loop {
        let groups = {
            let mut p = shared.pending();
            while p.groups.is_empty() && !p.closing {
                p = shared.wake.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            if p.groups.is_empty() {
                let keep_leases = p.keep_leases;
                drop(p);
                // Closing with everything written: every delivery's mark is on disk, so the
                // leases would only flag messages never handed out. A failure here leaves them:
                // more flagged after the restart, nothing lost.
                if !keep_leases && progress.borrow().failed.is_none() {
                    let _ = clear_leases(db);
                }
                return;
            }
            std::mem::take(&mut p.groups)
        };
        if progress.borrow().failed.is_some() {
            // After a failed commit nothing more is written: what follows may depend on it.
            continue;
        }
        let last = groups.last().map_or(0, |g| g.0);
        let gate = shared.gate.lock().unwrap_or_else(|p| p.into_inner());
        let committed = commit(db, groups.iter().flat_map(|g| &g.1));
        drop(gate);
        match committed {
            Ok(()) => progress.send_modify(|p| {
                p.durable = last;
                p.batches += 1;
            }),
            Err(e) => {
                if let Some(log) = log {
                    log.severe(
                        "MSG-0004",
                        &format!(
                            "{e}; persistent destinations accept nothing until the server restarts."
                        ),
                    );
                }
                progress.send_modify(|p| p.failed = Some(Arc::new(e)));
            }
        }
    }
}

/// Applies `ops` in one transaction, durable when this returns.
fn commit<'a>(db: &Database, ops: impl Iterator<Item = &'a Op>) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(redb::Error::from)?;
    {
        let mut messages = txn.open_table(MESSAGES).map_err(redb::Error::from)?;
        let mut states = txn.open_table(STATE).map_err(redb::Error::from)?;
        let mut durables = txn.open_table(DURABLES).map_err(redb::Error::from)?;
        let mut leases = txn.open_table(LEASES).map_err(redb::Error::from)?;
        let mut buf = Vec::new();
        for op in ops {
            match op {
                Op::Put { log, state, msg } => {
                    buf.clear();
                    encode(msg, &mut buf);
                    messages.insert((log.as_str(), msg.id), buf.as_slice())?;
                    if *state != 0 {
                        states.insert((log.as_str(), msg.id), *state)?;
                    }
                }
                Op::Mark { log, id, state } => {
                    states.insert((log.as_str(), *id), *state)?;
                }
                Op::Delete { log, id } => {
                    messages.remove((log.as_str(), *id))?;
                    states.remove((log.as_str(), *id))?;
                }
                Op::DropLog { log } => {
                    let range = (log.as_str(), 0)..=(log.as_str(), u64::MAX);
                    messages.retain_in(range.clone(), |_, _| false)?;
                    states.retain_in(range, |_, _| false)?;
                    durables.remove(log.as_str())?;
                    leases.remove(log.as_str())?;
                }
                Op::Durable { log } => {
                    durables.insert(log.as_str(), ())?;
                }
                Op::Lease { log, upto } => {
                    leases.insert(log.as_str(), *upto)?;
                }
            }
        }
    }
    txn.commit().map_err(redb::Error::from)?;
    Ok(())
}

fn clear_leases(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(redb::Error::from)?;
    txn.open_table(LEASES)
        .map_err(redb::Error::from)?
        .retain(|_, _| false)?;
    txn.commit().map_err(redb::Error::from)?;
    Ok(())
}

impl From<redb::StorageError> for StoreError {
    fn from(e: redb::StorageError) -> StoreError {
        StoreError::Write(e.into())
    }
}

fn recover(db: &Database) -> Result<Recovered, StoreError> {
    // The tables exist from here on (a read transaction cannot create them).
    let txn = db.begin_write().map_err(redb::Error::from)?;
    txn.open_table(MESSAGES).map_err(redb::Error::from)?;
    txn.open_table(STATE).map_err(redb::Error::from)?;
    txn.open_table(DURABLES).map_err(redb::Error::from)?;
    txn.open_table(LEASES).map_err(redb::Error::from)?;
    txn.commit().map_err(redb::Error::from)?;
    let read = db.begin_read().map_err(redb::Error::from)?;
    let messages = read.open_table(MESSAGES).map_err(redb::Error::from)?;
    let states = read.open_table(STATE).map_err(redb::Error::from)?;
    let durables = read.open_table(DURABLES).map_err(redb::Error::from)?;
    let leases = read.open_table(LEASES).map_err(redb::Error::from)?;
    let mut out = Recovered::default();
    for entry in leases.iter()? {
        let (k, v) = entry?;
        out.leases.insert(k.value().to_owned(), v.value());
    }
    for entry in messages.iter()? {
        let (k, v) = entry?;
        let (log, id) = k.value();
        let s = states.get((log, id))?.map_or(0, |s| s.value());
        let (destination, headers, body) =
            decode(v.value()).ok_or_else(|| StoreError::Corrupt {
                log: log.to_owned(),
                id,
            })?;
        out.logs.entry(log.to_owned()).or_default().push(Stored {
            id,
            redeliveries: u32::try_from(s >> 1).unwrap_or(u32::MAX),
            delivered: s & 1 == 1,
            leased: out.leases.get(log).is_some_and(|&upto| id <= upto),
            destination,
            headers,
            body,
        });
    }
    for entry in durables.iter()? {
        let (k, _) = entry?;
        out.durables.push(k.value().to_owned());
    }
    Ok(out)
}

/// The destination as `len:u32 text`, `count:u32`, then each header as `len:u32 key len:u32
/// value`, then the body.
fn encode(msg: &Message, out: &mut Vec<u8>) {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(msg.destination.len()));
    out.extend_from_slice(msg.destination.as_bytes());
    out.extend_from_slice(&len(msg.headers.len()));
    for (k, v) in &msg.headers {
        out.extend_from_slice(&len(k.len()));
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&len(v.len()));
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(&msg.body);
}

type Decoded = (String, Vec<(String, String)>, Vec<u8>);

fn decode(mut b: &[u8]) -> Option<Decoded> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    fn num(b: &mut &[u8]) -> Option<usize> {
        let raw: [u8; 4] = take(b, 4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(raw)).ok()
    }
    fn text(b: &mut &[u8]) -> Option<String> {
        let n = num(b)?;
        String::from_utf8(take(b, n)?.to_vec()).ok()
    }
    let destination = text(&mut b)?;
    let count = num(&mut b)?;
    let mut headers = Vec::with_capacity(count.min(128));
    for _ in 0..count {
        headers.push((text(&mut b)?, text(&mut b)?));
    }
    Some((destination, headers, b.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64, body: &str) -> Arc<Message> {
        Arc::new(Message {
            id,
            destination: "/queue/q".into(),
            headers: vec![("k".into(), "v:1".into())],
            body: body.as_bytes().to_vec(),
        })
    }

    fn put(log: &str, id: u64, body: &str) -> Op {
        Op::Put {
            log: log.into(),
            state: 0,
            msg: msg(id, body),
        }
    }

    fn bodies(r: &Recovered, log: &str) -> Vec<(u64, String, u32, bool)> {
        r.logs.get(log).map_or_else(Vec::new, |v| {
            v.iter()
                .map(|s| {
                    (
                        s.id,
                        String::from_utf8_lossy(&s.body).into_owned(),
                        s.redeliveries,
                        s.delivered,
                    )
                })
                .collect()
        })
    }

    #[test]
    fn what_was_made_durable_comes_back_in_order_with_its_state() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, r) = Store::open(dir.path(), None).unwrap();
            assert!(r.logs.is_empty());
            store.submit(1, vec![put("q:a", 3, "three"), put("q:a", 1, "one")]);
            store.submit(
                2,
                vec![
                    put("q:a", 7, "seven"),
                    put("q:b", 2, "other"),
                    Op::Mark {
                        log: "q:a".into(),
                        id: 3,
                        state: state(2, true),
                    },
                    Op::Delete {
                        log: "q:a".into(),
                        id: 7,
                    },
                    Op::Durable {
                        log: "d:t\nc\ns".into(),
                    },
                    put("q:gone", 9, "x"),
                    Op::DropLog {
                        log: "q:gone".into(),
                    },
                ],
            );
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(store.durable(2)).unwrap();
        }
        let (_store, r) = Store::open(dir.path(), None).unwrap();
        assert_eq!(
            bodies(&r, "q:a"),
            [(1, "one".into(), 0, false), (3, "three".into(), 2, true)]
        );
        assert_eq!(bodies(&r, "q:b"), [(2, "other".into(), 0, false)]);
        assert!(!r.logs.contains_key("q:gone"));
        assert_eq!(r.durables, ["d:t\nc\ns"]);
        assert_eq!(r.logs["q:a"][0].headers, [("k".into(), "v:1".into())]);
    }

    #[test]
    fn groups_waiting_while_a_batch_commits_go_in_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), None).unwrap();
        let held = store.hold();
        for t in 1..=100 {
            store.submit(t, vec![put("q:a", t, "m")]);
        }
        assert_eq!(store.progress().durable, 0, "nothing commits while held");
        drop(held);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(store.durable(100)).unwrap();
        // The writer may have taken the first group before the others arrived: at most two.
        assert!(store.progress().batches <= 2, "{:?}", store.progress());
    }

    #[test]
    fn a_batch_that_was_not_committed_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        {
            let (store, _) = Store::open(dir.path(), None).unwrap();
            store.submit(1, vec![put("q:a", 1, "kept")]);
            store.close();
        }
        {
            // A batch cut short (the process killed before its commit): written, never
            // committed.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(MESSAGES).unwrap();
                let mut buf = Vec::new();
                encode(&msg(2, "torn"), &mut buf);
                t.insert(("q:a", 2), buf.as_slice()).unwrap();
                t.remove(("q:a", 1)).unwrap();
            }
            drop(txn);
        }
        let (_store, r) = Store::open(dir.path(), None).unwrap();
        assert_eq!(bodies(&r, "q:a"), [(1, "kept".into(), 0, false)]);
    }

    #[test]
    fn a_damaged_record_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(MESSAGES)
                .unwrap()
                .insert(("q:a", 5), [0u8, 0, 0, 0, 9, 0, 0, 0, 1].as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let e = Store::open(dir.path(), None).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { id: 5, .. }), "{e}");
    }

    #[test]
    fn records_decode_as_encoded_and_truncation_is_detected() {
        let m = msg(1, "body\0with nul");
        let mut buf = Vec::new();
        encode(&m, &mut buf);
        let (d, h, b) = decode(&buf).unwrap();
        assert_eq!(
            (d, h, b),
            (m.destination.clone(), m.headers.clone(), m.body.clone())
        );
        for cut in 0..buf.len() - m.body.len() {
            assert!(decode(&buf[..cut]).is_none(), "cut at {cut}");
        }
    }
}
