//! Pushes over Git smart HTTP: the Master checks the push itself ([`precheck`]) and `git
//! receive-pack` takes it with hooks off, or, when the repository has a hook of the operator's,
//! `receive-pack` runs the hooks, Steward's pre-receive included (started directly, or by `git
//! http-backend` for a request only the backend can take: see [`cgi::Receiver`]). Either way the
//! Master decides on the pin before the client hears that its push succeeded.
//!
//! - The decision lock is taken when the upload is complete (and the Master's own check passed):
//!   the last byte of the pack is held back until the lock is ours, so `receive-pack` cannot run
//!   a hook or move a ref before (it unpacks the rest meanwhile), and a slow upload holds nobody
//!   up. A push the check refuses never gets its last byte: `receive-pack` is stopped, and the
//!   Master answers for it.
//! - From then on the pre-receive step has a deadline (`steward master --pre-receive-timeout`);
//!   past it, or as soon as the client goes away, the backend and everything it started (its
//!   process group: the hook and its children) are killed and the lock released.
//! - The hook's messages (side band 2) reach the client as they come; the report-status (side band
//!   1, "ok"/"ng" per ref) is held until the Master has pinned the branch head. If the pin or its
//!   record cannot be written, the branch is moved back and the report says `ng` with the reason:
//!   a push is acknowledged only once pinned.
//! - A push the hook refused is recorded as a rejection, with its first problems and a count of
//!   the rest, however much the hook printed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::Response;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{OwnedMutexGuard, mpsc, oneshot};
use tokio::time::Instant;

use super::cgi::{self, CgiRequest};
use super::conn::Conn;
use super::precheck::Precheck;
use super::state::{Refusal, State};
use super::{log, sniff};
use reconciler::git::Oid;
use reconciler::pin::{RECORD_PROBLEMS, Source};

/// Default deadline of the pre-receive step (from the end of the upload to git's answer).
pub const PRE_RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// An upload that sends nothing for this long is abandoned.
const UPLOAD_STALL: Duration = Duration::from_secs(60);
/// Report-status kept for rewriting at most; a longer one is passed on as it is.
const HELD_LIMIT: usize = 1024 * 1024;
/// How often a push whose client is silent checks that the client is still there.
const HANGUP_CHECK: Duration = Duration::from_millis(250);

type Guard = OwnedMutexGuard<Option<Oid>>;

/// What the upload ends in: the decision lock, or the Master's own check refusing the push.
/// `messages`: the check's, for the pusher.
enum Gate {
    Open {
        guard: Guard,
        messages: String,
        checked: Vec<(Oid, schema::Loaded)>,
        /// When the upload ended.
        uploaded: Instant,
    },
    Refused {
        messages: String,
    },
}

/// Serves `POST /git/domain.git/git-receive-pack` for `user`.
pub(super) async fn receive(
    state: Arc<State>,
    conn: Arc<Conn>,
    req: CgiRequest<'_>,
    body: Body,
) -> Response {
    let user = req.user.clone();
    let receiver = cgi::Receiver::of(&req, state.store.git_dir());
    let precheck =
        (receiver == cgi::Receiver::Checked).then(|| Precheck::start(state.store.git_dir()));
    let mut child = match receiver.spawn(&req, state.store.git_dir()) {
        Ok(c) => c,
        Err(e) => return cgi::bad_gateway(&e),
    };
    let (stdin, mut stdout, stderr) = match cgi::pipes(&mut child) {
        Ok(p) => p,
        Err(e) => return cgi::bad_gateway(&e),
    };
    let request = Arc::new(Mutex::new(Vec::new()));
    let (lock_tx, lock_rx) = oneshot::channel();
    tokio::spawn(feed(
        body,
        stdin,
        request.clone(),
        state.decided.clone(),
        lock_tx,
        precheck,
        user.clone(),
    ));
    tokio::spawn(cgi::log_stderr(receiver.name(), stderr));
    let (status, headers, first) = if receiver.is_cgi() {
        match cgi::read_headers(&mut stdout).await {
            Ok(x) => x,
            Err(e) => {
                cgi::kill_group(&child);
                return cgi::bad_gateway(&e);
            }
        }
    } else {
        let (status, headers) = cgi::receive_pack_head();
        (status, headers, Vec::new())
    };
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(drive(Drive {
        deadline: state.pre_receive_timeout,
        state,
        conn,
        child,
        stdout,
        first,
        lock: lock_rx,
        request,
        user,
        tx,
        parse: status == StatusCode::OK,
    }));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Streams the upload into the backend (and to the Master's own check, if any), holding back its
/// last byte until the check passed and the decision lock is taken; the outcome goes to
/// [`drive`] through `gate`. Dropping `stdin` early (a client gone or stalled, a push refused)
/// makes the backend fail without touching any ref.
async fn feed(
    body: Body,
    mut stdin: ChildStdin,
    copy: Arc<Mutex<Vec<u8>>>,
    lock: Arc<tokio::sync::Mutex<Option<Oid>>>,
    gate: oneshot::Sender<Gate>,
    precheck: Option<Precheck>,
    user: String,
) {
    let mut stream = body.into_data_stream();
    let mut held: Option<Bytes> = None;
    loop {
        let next = match tokio::time::timeout(UPLOAD_STALL, stream.next()).await {
            Ok(n) => n,
            Err(_) => return,
        };
        match next {
            Some(Ok(bytes)) => {
                if let Ok(mut c) = copy.lock() {
                    let room = sniff::REQUEST_LIMIT.saturating_sub(c.len());
                    c.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
                if let Some(p) = &precheck {
                    p.send(bytes.clone()).await;
                }
                if let Some(prev) = held.replace(bytes)
                    && stdin.write_all(&prev).await.is_err()
                {
                    return;
                }
            }
            Some(Err(_)) => return,
            None => break,
        }
    }
    let uploaded = Instant::now();
    // All of the upload but its last byte goes in now: `receive-pack` reads the commands and
    // unpacks while the check runs and the lock is taken (for a small push, the one chunk is the
    // last), and cannot finish the pack, let alone move a ref, without that byte.
    let last = match held {
        Some(mut most) => {
            let last = most.split_off(most.len().saturating_sub(1));
            if !most.is_empty() && stdin.write_all(&most).await.is_err() {
                return;
            }
            Some(last)
        }
        None => None,
    };
    let (mut messages, mut checked) = (String::new(), Vec::new());
    if let Some(p) = precheck {
        let verdict = p.finish(&user).await;
        if !verdict.accepted {
            let _ = gate.send(Gate::Refused {
                messages: verdict.messages,
            });
            return;
        }
        (messages, checked) = (verdict.messages, verdict.valid);
    }
    let guard = lock.lock_owned().await;
    if let Some(last) = last
        && stdin.write_all(&last).await.is_err()
    {
        return;
    }
    let open = Gate::Open {
        guard,
        messages,
        checked,
        uploaded,
    };
    if gate.send(open).is_err() {
        return;
    }
    let _ = stdin.shutdown().await;
}

/// Splits the backend's answer: hook messages pass at once (and are scanned for problems), the
/// report-status is held back for the decision, the final flush is sent last.
#[derive(Default)]
struct Demux {
    buf: Vec<u8>,
    held: Vec<u8>,
    banded: bool,
    /// The answer was not pkt-lines, or its report too long to hold: passed on as it came.
    raw: bool,
    /// The final flush was held back (it goes out after the report).
    flush: bool,
    line: String,
    problems: Vec<serde_json::Value>,
    more_problems: usize,
}

impl Demux {
    /// Takes more of the answer; returns what to send now.
    fn push(&mut self, data: &[u8]) -> Vec<u8> {
        if self.raw {
            return data.to_vec();
        }
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut i = 0;
        while self.buf.len() - i >= 4 {
            let Some(len) = sniff::pkt_len(&self.buf[i..i + 4]) else {
                return self.give_up(out, i);
            };
            if len < 4 {
                // The final flush (sent last, after the report) or a delimiter.
                if len == 0 {
                    self.flush = true;
                } else {
                    out.extend_from_slice(&self.buf[i..i + 4]);
                }
                i += 4;
                continue;
            }
            if self.buf.len() - i < len {
                break;
            }
            let packet = &self.buf[i..i + len];
            match packet.get(4) {
                Some(1) => {
                    self.banded = true;
                    self.held.extend_from_slice(packet);
                }
                Some(2) => {
                    self.banded = true;
                    out.extend_from_slice(packet);
                    let text = String::from_utf8_lossy(&packet[5..]).into_owned();
                    self.scan(&text);
                }
                Some(3) => out.extend_from_slice(packet),
                _ => self.held.extend_from_slice(packet),
            }
            i += len;
        }
        self.buf.drain(..i);
        if self.held.len() > HELD_LIMIT {
            return self.give_up(out, 0);
        }
        out
    }

    /// Passes on everything from here as it comes (a flush held back goes first).
    fn give_up(&mut self, mut out: Vec<u8>, from: usize) -> Vec<u8> {
        self.raw = true;
        if std::mem::take(&mut self.flush) {
            out.extend_from_slice(b"0000");
        }
        out.append(&mut self.held);
        out.extend_from_slice(&self.buf[from..]);
        self.buf.clear();
        out
    }

    /// Collects the problem lines of the hook's messages, the first few whole.
    fn scan(&mut self, text: &str) {
        self.line.push_str(text);
        while let Some(end) = self.line.find('\n') {
            if let Some(p) = sniff::problem(&self.line[..end]) {
                if self.problems.len() < RECORD_PROBLEMS {
                    self.problems.push(p);
                } else {
                    self.more_problems += 1;
                }
            } else if let Some(n) = sniff::omitted(&self.line[..end]) {
                self.more_problems += n;
            }
            self.line.drain(..=end);
        }
        if self.line.len() > 64 * 1024 {
            self.line.clear();
        }
    }
}

struct Drive {
    state: Arc<State>,
    conn: Arc<Conn>,
    child: Child,
    stdout: ChildStdout,
    first: Vec<u8>,
    lock: oneshot::Receiver<Gate>,
    request: Arc<Mutex<Vec<u8>>>,
    user: String,
    tx: mpsc::Sender<Bytes>,
    parse: bool,
    deadline: Duration,
}

enum Stop {
    /// The client went away: nobody to answer.
    Gone,
    /// The pre-receive step outlived its deadline.
    Deadline,
    /// The Master's own check refused the push (its messages): git never got all of it.
    Refused(String),
}

async fn drive(d: Drive) {
    let Drive {
        state,
        conn,
        mut child,
        mut stdout,
        first,
        lock,
        request,
        user,
        tx,
        parse,
        deadline,
    } = d;
    let mut demux = Demux {
        raw: !parse,
        ..Demux::default()
    };
    let mut lock = Some(lock);
    let mut guard: Option<Guard> = None;
    // The models of the Master's check, for the decision.
    let mut checked = Vec::new();
    let mut until: Option<Instant> = None;
    // When the upload ended: the start of the push's validation.
    let mut uploaded_at: Option<Instant> = None;
    let mut stop = None;
    let mut pending = first;
    let mut buf = vec![0u8; 64 * 1024];
    let mut check = tokio::time::interval(HANGUP_CHECK);
    loop {
        if !pending.is_empty() {
            let out = demux.push(&pending);
            pending.clear();
            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                stop = Some(Stop::Gone);
                break;
            }
        }
        let expiry = async {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = stdout.read(&mut buf) => match r {
                Ok(n) if n > 0 => pending.extend_from_slice(&buf[..n]),
                _ => break,
            },
            g = async {
                match lock.as_mut() {
                    Some(l) => l.await,
                    None => std::future::pending().await,
                }
            }, if lock.is_some() => {
                lock = None;
                match g {
                    Ok(Gate::Open { guard: g, messages, checked: c, uploaded }) => {
                        (guard, checked) = (Some(g), c);
                        uploaded_at = Some(uploaded);
                        until = Some(Instant::now() + deadline);
                        let banded = request.lock().is_ok_and(|r| sniff::wants_side_band(&r));
                        let out = checked_messages(&mut demux, banded, &messages);
                        if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                            stop = Some(Stop::Gone);
                            break;
                        }
                    }
                    Ok(Gate::Refused { messages }) => {
                        stop = Some(Stop::Refused(messages));
                        break;
                    }
                    Err(_) => {}
                }
            }
            () = expiry => {
                stop = Some(Stop::Deadline);
                break;
            }
            _ = check.tick() => if conn.hung_up() {
                stop = Some(Stop::Gone);
                break;
            }
        }
    }
    if stop.is_some() {
        cgi::kill_group(&child);
    }
    let reap = async move {
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            cgi::kill_group(&child);
            let _ = child.wait().await;
        }
    };
    if stop.is_none() && demux.flush {
        // Its answer ended with its final flush: the refs are as it left them (git writes the
        // report after updating them), so the decision need not wait for the process to be gone.
        tokio::spawn(reap);
    } else {
        reap.await;
    }
    // The lock may have been handed over just as the backend finished (or the push refused,
    // which stops the backend).
    if guard.is_none()
        && stop.is_none()
        && let Some(rx) = lock
    {
        match rx.await {
            Ok(Gate::Open {
                guard: g,
                checked: c,
                ..
            }) => (guard, checked) = (Some(g), c),
            Ok(Gate::Refused { messages }) => stop = Some(Stop::Refused(messages)),
            Err(_) => {}
        }
    }
    let request = request.lock().map(|r| r.clone()).unwrap_or_default();
    let commands = sniff::commands(&request);
    let banded = demux.banded || sniff::wants_side_band(&request);
    let mut tail = Vec::new();
    // Whether the answer can still be changed: it is pkt-lines and nothing of the report was sent.
    let rewritable = parse && !demux.raw;
    match stop {
        Some(Stop::Gone) => {
            log::warning(
                "Master-0032",
                &format!("A push by {user} was stopped: the client went away"),
            );
            // In case a ref moved before the backend was stopped.
            if let Some(g) = guard {
                state.reconcile(Source::Push, Some(user), Some(g)).await;
            }
            return;
        }
        Some(Stop::Deadline) => {
            log::warning(
                "Master-0032",
                &format!(
                    "A push by {user} was stopped: its pre-receive step took longer than {deadline:?}"
                ),
            );
            let reason = format!(
                "steward: stopped after {}s, the deadline of the pre-receive step",
                deadline.as_secs_f64()
            );
            if rewritable {
                if banded {
                    tail.extend(sniff::banded(2, format!("{reason}\n").as_bytes()));
                }
                tail.extend(sniff::refusal_report(&commands, banded, &reason));
                demux.flush = true;
            }
            if let Some(g) = guard {
                state.reconcile(Source::Push, Some(user), Some(g)).await;
            }
        }
        Some(Stop::Refused(messages)) => {
            let mut report = Vec::new();
            if rewritable {
                tail.extend(checked_messages(&mut demux, banded, &messages));
                report = sniff::refusal_report(&commands, banded, sniff::HOOK_DECLINED);
                tail.extend_from_slice(&report);
                demux.flush = true;
            }
            record(&state, &mut demux, commands, &report, user).await;
        }
        None => {
            let mut report = std::mem::take(&mut demux.held);
            if let Some(mut g) = guard {
                let decided = state
                    .decide_locked(&mut g, Source::Push, Some(user.clone()), checked)
                    .await;
                if let Err(e) = decided {
                    let reason = unpin(&state, &commands, &user, &e).await;
                    if rewritable {
                        report = sniff::refuse_in_report(&report, banded, &state.branch, &reason);
                        if banded {
                            tail.extend(sniff::banded(2, format!("{reason}\n").as_bytes()));
                        }
                    }
                }
                drop(g);
            }
            record(&state, &mut demux, commands, &report, user).await;
            tail.extend(report);
            if let Some(t) = uploaded_at {
                state.metrics.push_validated(t.elapsed());
            }
        }
    }
    if demux.flush {
        tail.extend_from_slice(b"0000");
    }
    let _ = tx.send(Bytes::from(tail)).await;
    drop(tx);
    // The housekeeping `receive-pack` is told not to do while the client waits.
    cgi::maintain(state.store.git_dir());
}

/// Records what `report` (the report-status as sent, before the final flush) refused, with the
/// problems the messages named.
async fn record(
    state: &Arc<State>,
    demux: &mut Demux,
    commands: Vec<sniff::Command>,
    report: &[u8],
    user: String,
) {
    let mut answer = report.to_vec();
    answer.extend_from_slice(b"0000");
    let refusal = Refusal {
        commands,
        refused: sniff::answer(&answer).refused,
        problems: std::mem::take(&mut demux.problems),
        more_problems: demux.more_problems,
    };
    state.record_refusal(refusal, user).await;
}

/// The messages of the Master's own check as the pusher gets them: on side band 2, as a hook's
/// would come (without side bands git drops a hook's messages too); scanned for the record.
fn checked_messages(demux: &mut Demux, banded: bool, messages: &str) -> Vec<u8> {
    demux.scan(messages);
    if banded && !messages.is_empty() {
        sniff::banded(2, messages.as_bytes())
    } else {
        Vec::new()
    }
}

/// After git accepted a push the Master could not pin (`error`): moves the branch back to where
/// it was, logs why, and returns the reason for the pusher.
async fn unpin(
    state: &Arc<State>,
    commands: &[sniff::Command],
    user: &str,
    error: &super::MasterError,
) -> String {
    let cmd = commands.iter().find(|c| c.name == state.branch);
    let ids = cmd.and_then(|c| Some((Oid::from_hex(&c.new).ok()?, Oid::from_hex(&c.old).ok()?)));
    let Some((new, old)) = ids else {
        log::limited(
            log::Level::Severe,
            "Master-0019",
            &format!("Cannot decide on {}; the pin stays: {error}", state.branch),
        );
        return "steward: the Master could not decide on this push; see its log".into();
    };
    let st = state.clone();
    let back = (!old.is_null()).then_some(old);
    let undone = tokio::task::spawn_blocking(move || st.unmove_branch(new, back))
        .await
        .map_err(|e| super::MasterError::Runtime(std::io::Error::other(e)))
        .and_then(|r| r);
    match undone {
        Ok(()) => {
            log::severe(
                "Master-0013",
                &format!(
                    "A push by {user} of {} could not be pinned, so it is refused and {} is back at {}: {error}",
                    new.to_hex(),
                    state.branch,
                    if old.is_null() {
                        "nothing (deleted)".to_owned()
                    } else {
                        old.to_hex()
                    }
                ),
            );
            "steward: the commit is valid but the Master could not pin it (see its log); the push is refused".into()
        }
        Err(e) => {
            log::severe(
                "Master-0014",
                &format!(
                    "A push by {user} of {} could not be pinned ({error}), and {} could not be moved back: {e}",
                    new.to_hex(),
                    state.branch
                ),
            );
            "steward: the commit is valid but the Master could not pin it (see its log)".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sniff::pkt;

    #[test]
    fn demux_passes_messages_holds_the_report_and_counts_problems() {
        let mut answer = Vec::new();
        let mut msgs = Vec::new();
        for i in 0..(RECORD_PROBLEMS + 20) {
            msgs.extend_from_slice(
                format!("domain.toml:{i}:1: error[syntax]: expected a key\n").as_bytes(),
            );
        }
        msgs.extend_from_slice(b"steward: refs/heads/main is invalid\n");
        answer.extend(sniff::banded(2, &msgs));
        let mut report = pkt(b"unpack ok\n");
        report.extend(pkt(b"ng refs/heads/main pre-receive hook declined\n"));
        report.extend(b"0000");
        answer.extend(sniff::banded(1, &report));
        answer.extend(b"0000");
        let mut d = Demux::default();
        // Fed in awkward pieces: packets split anywhere.
        let mut sent = Vec::new();
        for chunk in answer.chunks(7) {
            sent.extend(d.push(chunk));
        }
        assert!(d.banded && !d.raw && d.flush);
        assert_eq!(d.problems.len(), RECORD_PROBLEMS);
        assert_eq!(d.more_problems, 20);
        assert_eq!(
            sent,
            sniff::banded(2, &msgs),
            "only the messages pass at once"
        );
        let mut held = d.held.clone();
        held.extend(b"0000");
        assert_eq!(
            sniff::answer(&held).refused,
            vec![sniff::Refused {
                name: "refs/heads/main".into(),
                reason: sniff::Reason::HookDeclined
            }]
        );
    }

    #[test]
    fn demux_passes_what_is_not_pkt_lines() {
        let mut d = Demux::default();
        assert_eq!(d.push(b"fatal: not a pkt line"), b"fatal: not a pkt line");
        assert!(d.raw);
        assert_eq!(d.push(b"more"), b"more");
    }
}
