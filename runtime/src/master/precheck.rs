//! Validating a push in the Master, before git takes it: no hook process on the path of a push.
//!
//! While the request streams into `git receive-pack`, a copy goes to a blocking task that reads
//! the ref updates at its start, indexes the pack that follows (completing a thin pack from the
//! repository's objects) into a throw-away object directory and runs the hook's own check on it
//! ([`reconciler::hook::check`]). The last byte of the upload is held back until the answer is
//! in, so a push this refuses never reaches `git`'s ref updates; one it accepts goes to a
//! `receive-pack` started with hooks off, which is why this runs only while the repository's
//! one hook is Steward's ([`reconciler::hook::only_stewards_hook`]). A hook of the operator's
//! gets the old path: `receive-pack` runs every hook, Steward's included.

use std::io::Read;
use std::path::Path;

use axum::body::Bytes;
use tokio::sync::{mpsc, oneshot};

use reconciler::git::{GitError, Oid, Repo};
use reconciler::hook::{self, HookError, RefUpdate, Verdict};

use super::{log, sniff};

/// Chunks of the upload in flight to the check: it reads as fast as the upload arrives, this
/// only bounds what a stalled check can hold.
const IN_FLIGHT: usize = 16;

/// Errors of this module: what makes the Master refuse a push it cannot read.
#[derive(Debug, thiserror::Error)]
pub enum PrecheckError {
    #[error("the request ends before its ref updates do")]
    Truncated,
    #[error("the request's pkt-lines are malformed: {0}")]
    Malformed(&'static str),
    #[error("ref update {0:?} is malformed")]
    Command(String),
    #[error("cannot read the request: {0}")]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error("the check stopped before its verdict")]
    Stopped,
}

/// A check under way; [`Precheck::send`] each chunk of the request, then [`Precheck::finish`].
pub(super) struct Precheck {
    tx: mpsc::Sender<Bytes>,
    verdict: oneshot::Receiver<Result<Verdict, PrecheckError>>,
}

impl Precheck {
    pub(super) fn start(git_dir: &Path) -> Precheck {
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let (answer, verdict) = oneshot::channel();
        let git_dir = git_dir.to_owned();
        tokio::task::spawn_blocking(move || {
            let chunks = Chunks {
                rx,
                current: Bytes::new(),
            };
            // The objects' directory is removed once the verdict is out: the push need not wait.
            let mut objects = None;
            let _ = answer.send(run(&git_dir, chunks, &mut objects));
            drop(objects);
        });
        Precheck { tx, verdict }
    }

    /// Copies a chunk to the check; once the check has read what it needs (or given up), this
    /// returns at once.
    pub(super) async fn send(&self, chunk: Bytes) {
        let _ = self.tx.send(chunk).await;
    }

    /// The end of the request: the check's verdict. A request it cannot read is refused, with
    /// the reason for the pusher and in the log.
    pub(super) async fn finish(self, user: &str) -> Verdict {
        drop(self.tx);
        let result = match self.verdict.await {
            Ok(r) => r,
            Err(_) => Err(PrecheckError::Stopped),
        };
        result.unwrap_or_else(|e| {
            log::warning(
                "Master-0033",
                &format!("A push by {user} is refused: the Master cannot read it: {e}"),
            );
            Verdict {
                accepted: false,
                messages: format!("steward: the Master cannot read this push: {e}\n"),
                valid: Vec::new(),
            }
        })
    }
}

/// The request as a [`Read`]: chunks as they arrive, the end when the sender is gone.
struct Chunks {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Reads the request from `chunks` and checks it; the repository it read through is left in
/// `objects`, for the caller to drop.
fn run(
    git_dir: &Path,
    chunks: Chunks,
    objects: &mut Option<Repo>,
) -> Result<Verdict, PrecheckError> {
    let mut input = std::io::BufReader::with_capacity(64 * 1024, chunks);
    let updates = read_updates(&mut input)?;
    if updates.iter().all(RefUpdate::is_delete) {
        return Ok(Verdict {
            accepted: true,
            messages: String::new(),
            valid: Vec::new(),
        });
    }
    let repo = objects.insert(Repo::open_with_pack(git_dir, &mut input)?);
    Ok(hook::check(repo, &updates)?)
}

/// Reads the pkt-lines before the pack: the ref updates (after any `shallow` lines) up to a
/// flush, then, when the client announced `push-options`, the options up to a second flush.
fn read_updates(input: &mut impl Read) -> Result<Vec<RefUpdate>, PrecheckError> {
    let mut head = Vec::new();
    read_section(input, &mut head)?;
    let commands = sniff::commands(&head);
    if sniff::capabilities(&head)
        .iter()
        .any(|c| c == "push-options")
    {
        read_section(input, &mut Vec::new())?;
    }
    commands
        .into_iter()
        .map(|c| {
            let id = |hex: &str| Oid::from_hex(hex).map_err(|_| PrecheckError::Command(hex.into()));
            Ok(RefUpdate {
                old: id(&c.old)?,
                new: id(&c.new)?,
                name: c.name,
            })
        })
        .collect()
}

/// Appends pkt-lines to `out` up to and including a flush.
fn read_section(input: &mut impl Read, out: &mut Vec<u8>) -> Result<(), PrecheckError> {
    loop {
        let mut len = [0u8; 4];
        read_exact(input, &mut len)?;
        let n =
            sniff::pkt_len(&len).ok_or(PrecheckError::Malformed("a length is not hexadecimal"))?;
        out.extend_from_slice(&len);
        match n {
            0 => return Ok(()),
            1..=3 => return Err(PrecheckError::Malformed("a special packet in the commands")),
            _ => {
                let start = out.len();
                out.resize(start + n - 4, 0);
                read_exact(input, &mut out[start..])?;
            }
        }
    }
}

fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<(), PrecheckError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => PrecheckError::Truncated,
        _ => PrecheckError::Read(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sniff::pkt;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    #[test]
    fn reads_the_updates_and_stops_at_the_pack() {
        let mut req =
            pkt(format!("{A} {B} refs/heads/main\0report-status push-options\n").as_bytes());
        req.extend(pkt(format!("{B} {A} refs/tags/v1\n").as_bytes()));
        req.extend(b"0000");
        req.extend(pkt(b"ci.skip"));
        req.extend(b"0000");
        req.extend(b"PACK...");
        let mut input = &req[..];
        let updates = read_updates(&mut input).expect("updates");
        assert_eq!(
            updates.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
            ["refs/heads/main", "refs/tags/v1"]
        );
        assert_eq!(updates[0].new.to_hex(), B);
        assert_eq!(input, b"PACK...", "the options are not taken for the pack");
    }

    #[test]
    fn a_cut_or_malformed_head_is_an_error() {
        let req = pkt(format!("{A} {B} refs/heads/main\n").as_bytes());
        assert!(matches!(
            read_updates(&mut &req[..]),
            Err(PrecheckError::Truncated)
        ));
        assert!(matches!(
            read_updates(&mut &b"zzzz"[..]),
            Err(PrecheckError::Malformed(_))
        ));
        let mut bad = pkt(format!("{A} {} refs/heads/main\n", "g".repeat(40)).as_bytes());
        bad.extend(b"0000");
        // Not hex: not a command at all, as for git (a push certificate line looks like that).
        assert!(read_updates(&mut &bad[..]).expect("read").is_empty());
    }
}
