//! What `steward admin` prints for people: plain-text tables, no colour codes, so the output reads
//! the same in a terminal, a log and a ticket. (`--format json` prints the Master's documents
//! instead.)

use std::fmt::Write;

use reconciler::pin::{Outcome, Record};
use reconciler::wire::{
    Domain, NodeServerState, NodeView, RepositoryMode, Rollout, ServerState, StepState, View,
};

fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

/// Columns padded to their widest cell; the last column is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `3d4h`, `5m12s`, `42s`.
pub fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

pub use jiff::Timestamp;

/// Now, for [`status`].
pub fn now() -> Timestamp {
    Timestamp::now()
}

/// `now` to the second, for a line of `status --watch`.
pub fn stamp(now: Timestamp) -> String {
    now.round(jiff::Unit::Second).unwrap_or(now).to_string()
}

/// Seconds since `at` (RFC 3339), as of `now`.
fn since(at: &str, now: jiff::Timestamp) -> Option<i64> {
    let t: jiff::Timestamp = at.parse().ok()?;
    Some(now.as_second() - t.as_second())
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

/// The domain's pin, mode, hold and upstream, then one line per server.
pub fn status(domain: &Domain, views: &[View], now: jiff::Timestamp) -> String {
    let mut out = String::new();
    let pin = &domain.pinned.commit;
    let _ = writeln!(
        out,
        "Domain {} ({}), pinned {} at {}",
        domain.name,
        match domain.mode {
            RepositoryMode::Hosted => "hosted",
            RepositoryMode::Mirror => "mirror",
        },
        short(pin),
        domain.pinned.at
    );
    if let Some(h) = &domain.hold {
        let _ = writeln!(
            out,
            "HELD since {} by {} ({}): new upstream heads are recorded, not pinned{}; `steward admin resume` follows the upstream again",
            h.since,
            h.by,
            h.reason,
            h.held_head
                .as_deref()
                .map(|c| format!(" (newest held: {})", short(c)))
                .unwrap_or_default()
        );
    }
    if let Some(u) = &domain.upstream {
        let health = if u.stale {
            format!(
                "STALE since {}: {}",
                u.stale_since.as_deref().unwrap_or("?"),
                u.last_error.as_deref().unwrap_or("fetches fail")
            )
        } else {
            format!(
                "healthy, last fetched {}",
                u.last_success.as_deref().unwrap_or("never")
            )
        };
        let _ = writeln!(
            out,
            "Upstream {} ({}), head {}: {health}",
            u.url,
            u.branch,
            u.head.as_deref().map_or("unknown", short)
        );
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            let commit = match v.applied_commit.as_deref() {
                None => "-".to_owned(),
                Some(c) if c == pin => short(c).to_owned(),
                Some(c) => format!("{} (pin {})", short(c), short(pin)),
            };
            let running = matches!(v.state, ServerState::Running | ServerState::Starting);
            let uptime = v
                .started_at
                .as_deref()
                .filter(|_| running)
                .and_then(|s| since(s, now))
                .map(duration);
            let mut name = v.name.clone();
            if !v.configured {
                name.push_str(" (removed)");
            }
            vec![
                name,
                v.state.to_string(),
                v.mode.map_or("-", |m| m.as_str()).to_owned(),
                commit,
                v.pid
                    .filter(|_| running)
                    .map_or("-".into(), |p| p.to_string()),
                uptime.unwrap_or_else(|| "-".into()),
                or_dash(v.pending_restart.join(", ")),
                or_dash(v.failed_applications.join(", ")),
                v.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "SERVER",
            "STATE",
            "MODE",
            "COMMIT",
            "PID",
            "UPTIME",
            "PENDING RESTART",
            "FAILED APPS",
            "LAST ERROR",
        ],
        &rows,
    ));
    out
}

/// One line per node and whether its agent is connected, when the domain declares nodes or an
/// agent ever polled; empty otherwise (a one-machine domain without agents).
pub fn nodes(nodes: &[NodeView]) -> String {
    if !nodes.iter().any(|n| n.declared || n.last_seen.is_some()) {
        return String::new();
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let servers: Vec<String> = n
                .servers
                .iter()
                .map(|s| {
                    let state = match s.state {
                        NodeServerState::Running => "running",
                        NodeServerState::Stopped => "stopped",
                        NodeServerState::Died => "died",
                        NodeServerState::Launching => "launching",
                        NodeServerState::GaveUp => "gave up",
                    };
                    format!("{} {state}", s.name)
                })
                .collect();
            vec![
                if n.configured {
                    n.name.clone()
                } else {
                    format!("{} (removed)", n.name)
                },
                n.address.clone(),
                if n.connected {
                    "CONNECTED".to_owned()
                } else {
                    "NOT CONNECTED".to_owned()
                },
                n.last_seen.clone().unwrap_or_else(|| "never".into()),
                or_dash(servers.join(", ")),
            ]
        })
        .collect();
    format!(
        "\n{}",
        table(&["NODE", "ADDRESS", "AGENT", "LAST POLL", "SERVERS"], &rows)
    )
}

/// `steward admin timers`: one line per timer of `GET /v1/timers`, then the servers that could
/// not be asked.
pub fn timers(doc: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let rows: Vec<Vec<String>> = doc["timers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let last = &t["last"];
            let last_text = match last["result"].as_str() {
                None => "-".to_owned(),
                Some(r) => {
                    let mut s = format!("{r} {}", last["scheduled"].as_str().unwrap_or("?"));
                    if let Some(code) = last["status"].as_u64() {
                        s.push_str(&format!(" ({code})"));
                    }
                    s
                }
            };
            let retries = last["attempts"]
                .as_u64()
                .map_or("-".to_owned(), |a| a.saturating_sub(1).to_string());
            let state = match (t["state"].as_str(), t["renamed_to"].as_str()) {
                (Some("orphaned"), Some(to)) => format!("orphaned (renamed to {to}?)"),
                (Some(s), _) => s.to_owned(),
                (None, _) => "-".to_owned(),
            };
            let id = text(&t["id"]).unwrap_or_default();
            let timer = match text(&t["name"]) {
                Some(n) if n != id => format!("{id} (/timers/{n})"),
                _ => id,
            };
            vec![
                text(&t["server"]).unwrap_or_default(),
                text(&t["app"]).unwrap_or_default(),
                timer,
                if t["declared"] == true {
                    "declared"
                } else {
                    "run-time"
                }
                .to_owned(),
                if t["persistent"] == true { "yes" } else { "no" }.to_owned(),
                text(&t["next"]).unwrap_or_else(|| "-".into()),
                last_text,
                retries,
                state,
            ]
        })
        .collect();
    let mut out = table(
        &[
            "SERVER",
            "APPLICATION",
            "TIMER",
            "KIND",
            "PERSISTENT",
            "NEXT FIRE",
            "LAST RESULT",
            "RETRIES",
            "STATE",
        ],
        &rows,
    );
    for u in doc["unavailable"].as_array().into_iter().flatten() {
        let server = u["server"].as_str().unwrap_or("?");
        let error = u["error"].as_str().unwrap_or("?");
        let _ = match u["asked"] == true {
            true => writeln!(out, "{server}: NO ANSWER: {error}"),
            false => writeln!(out, "{server}: {error}, not asked"),
        };
    }
    out
}

fn outcome(o: Outcome) -> &'static str {
    match o {
        Outcome::Pinned => "PINNED",
        Outcome::Rejected => "REJECTED",
        Outcome::Held => "HELD",
    }
}

/// The history, newest first, one line per record.
pub fn history(records: &[Record]) -> String {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let mut what = r.summary.clone();
            if r.outcome == Outcome::Rejected {
                let n = r.problems.len() + r.more_problems;
                what = format!(
                    "{n} problem(s){}",
                    if what.is_empty() {
                        String::new()
                    } else {
                        format!(": {what}")
                    }
                );
            }
            vec![
                r.at.clone(),
                outcome(r.outcome).to_owned(),
                short(&r.commit).to_owned(),
                r.source.as_str().to_owned(),
                r.pusher
                    .clone()
                    .or_else(|| r.author.clone())
                    .unwrap_or_else(|| "-".into()),
                or_dash(what),
            ]
        })
        .collect();
    table(
        &["AT", "OUTCOME", "COMMIT", "SOURCE", "BY", "SUMMARY"],
        &rows,
    )
}

/// A validation problem as `steward validate` prints it: `file:line:col: severity[code]:
/// message`, then its hint.
pub fn problem(p: &serde_json::Value) -> String {
    let s = |k: &str| p[k].as_str().unwrap_or("");
    let mut out = String::new();
    let place = match (p["line"].as_u64(), p["column"].as_u64()) {
        (Some(l), Some(c)) => format!("{}:{l}:{c}", s("file")),
        _ => s("file").to_owned(),
    };
    let _ = writeln!(
        out,
        "{place}: {}[{}]: {}",
        if s("severity").is_empty() {
            "error"
        } else {
            s("severity")
        },
        s("code"),
        s("message")
    );
    if !s("hint").is_empty() {
        let _ = writeln!(out, "  = help: {}", s("hint"));
    }
    out
}

/// Everything the history says about one commit, and its plan when the Master could make one.
pub fn show(commit: &str, records: &[&Record], plan: Option<&str>) -> String {
    let mut out = String::new();
    for r in records {
        let _ = writeln!(
            out,
            "{} {} at {} (source {}{})",
            outcome(r.outcome),
            r.commit,
            r.at,
            r.source.as_str(),
            r.pusher
                .as_deref()
                .map(|p| format!(", by {p}"))
                .unwrap_or_default()
        );
        if let Some(a) = &r.author {
            let _ = writeln!(out, "  author: {a}");
        }
        if !r.summary.is_empty() {
            let _ = writeln!(out, "  {}", r.summary);
        }
        if let Some(p) = &r.previous {
            let _ = writeln!(out, "  previous pin: {}", short(p));
        }
        if !r.problems.is_empty() {
            out.push('\n');
            for p in &r.problems {
                out.push_str(&problem(p));
            }
            if r.more_problems > 0 {
                let _ = writeln!(out, "… and {} more problem(s)", r.more_problems);
            }
        }
        out.push('\n');
    }
    if records.is_empty() {
        let _ = writeln!(
            out,
            "{commit}: not in the Master's history (never pinned, rejected or held)\n"
        );
    }
    if let Some(plan) = plan {
        out.push_str("Plan (against its parent):\n");
        out.push_str(plan);
    }
    out
}

/// A step of a rollout, for the progress lines `restart`/`stop`/`start` print.
pub fn step(r: &Rollout, i: usize) -> String {
    let s = &r.steps[i];
    let state = match s.state {
        StepState::Waiting => "waiting",
        StepState::InProgress => "in progress",
        StepState::Done => "done",
        StepState::Failed => "FAILED",
        StepState::Skipped => "skipped",
    };
    let mut line = format!("{}: {state}", s.server);
    if let Some(d) = &s.detail {
        let _ = write!(line, " ({d})");
    }
    if let Some(e) = &s.error {
        let _ = write!(line, ": {e}");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(312), "5m12s");
        assert_eq!(duration(3 * 3600 + 60), "3h1m");
        assert_eq!(duration(2 * 86400 + 7200), "2d2h");
        assert_eq!(duration(-5), "0s");
    }

    #[test]
    fn problems_print_as_validate_prints_them() {
        let p = serde_json::json!({
            "severity": "error", "code": "unknown-key", "message": "unknown key `bogus`",
            "file": "domain.toml", "line": 11, "column": 18, "hint": "did you mean `port`?"
        });
        assert_eq!(
            problem(&p),
            "domain.toml:11:18: error[unknown-key]: unknown key `bogus`\n  = help: did you mean `port`?\n"
        );
    }

    #[test]
    fn tables_align_and_trim() {
        let t = table(
            &["A", "BB", "C"],
            &[vec!["xxx".into(), "y".into(), "z z".into()]],
        );
        assert_eq!(t, "A    BB  C\nxxx  y   z z\n");
    }
}
