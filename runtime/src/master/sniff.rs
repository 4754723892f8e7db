//! Reading a push as it passes through: which refs it updates (the pkt-lines at the start of the
//! request) and what the server answered (report-status and the hook's messages, multiplexed in
//! the response's side bands).
//!
//! A push the pre-receive hook refuses never reaches the repository (git drops its quarantine), so
//! the only place the Master can learn what was refused, and why, is the conversation itself. This
//! lets such refusals be recorded in the pin history and announced as `rejected` events.

/// Keep at most this much of a request (the commands come first; the pack is not needed).
pub const REQUEST_LIMIT: usize = 64 * 1024;

/// One ref update requested by a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub old: String,
    pub new: String,
    pub name: String,
}

/// The length a pkt-line's 4 hexadecimal digits give (the packet's whole length, or 0–3 for a
/// flush, delimiter or response end); `None` when they are not hexadecimal.
pub fn pkt_len(head: &[u8]) -> Option<usize> {
    std::str::from_utf8(head)
        .ok()
        .and_then(|h| usize::from_str_radix(h, 16).ok())
}

/// Splits `data` into pkt-line payloads; stops at a flush packet (`0000`) when `stop_at_flush`, or
/// at the end. `None` when a packet is malformed or cut off before a flush it was asked to find.
fn pkt_lines(data: &[u8], stop_at_flush: bool) -> Option<(Vec<&[u8]>, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= data.len() {
        let len = pkt_len(&data[i..i + 4])?;
        if len < 4 {
            // 0000 flush, 0001 delim, 0002 response-end: no payload.
            i += 4;
            if len == 0 && stop_at_flush {
                return Some((out, i));
            }
            continue;
        }
        if i + len > data.len() {
            break;
        }
        out.push(&data[i + 4..i + len]);
        i += len;
    }
    if stop_at_flush { None } else { Some((out, i)) }
}

/// The ref updates at the start of a receive-pack request body.
pub fn commands(request: &[u8]) -> Vec<Command> {
    let Some((lines, _)) = pkt_lines(request, true) else {
        return Vec::new();
    };
    lines
        .into_iter()
        .filter_map(|line| {
            let line = line.split(|b| *b == 0).next().unwrap_or(line);
            let text = std::str::from_utf8(line).ok()?.trim_end();
            // A push certificate or shallow line is not a command.
            let mut f = text.split(' ');
            let (old, new, name) = (f.next()?, f.next()?, f.next()?);
            let hex = |s: &str| s.len() >= 40 && s.bytes().all(|b| b.is_ascii_hexdigit());
            (hex(old) && hex(new)).then(|| Command {
                old: old.to_owned(),
                new: new.to_owned(),
                name: name.to_owned(),
            })
        })
        .collect()
}

/// What a receive-pack response said: refused refs with git's reason, and the hook's messages
/// (side band 2, what the pusher sees as `remote:` lines).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Answer {
    pub refused: Vec<Refused>,
    pub messages: String,
}

/// A ref git refused (`ng <ref> <reason>` in its report-status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub name: String,
    pub reason: Reason,
}

/// Git's report-status reason for a ref the pre-receive hook refused; the Master's own check of a
/// push refuses in the same words, which clients and tools know.
pub const HOOK_DECLINED: &str = "pre-receive hook declined";

/// Why git refused a ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The pre-receive hook (Steward's validation) said no: git's fixed report-status reason
    /// `pre-receive hook declined`.
    HookDeclined,
    /// Anything else, as git said it (not fast-forward, a ref lock, …).
    Other(String),
}

impl Reason {
    fn parse(reason: &str) -> Reason {
        if reason == HOOK_DECLINED {
            Reason::HookDeclined
        } else {
            Reason::Other(reason.to_owned())
        }
    }
}

pub fn answer(response: &[u8]) -> Answer {
    let mut out = Answer::default();
    let Some((packets, _)) = pkt_lines(response, false) else {
        return out;
    };
    let mut report = Vec::new();
    let mut banded = false;
    for p in &packets {
        match p.first() {
            Some(1) => {
                banded = true;
                report.extend_from_slice(&p[1..]);
            }
            Some(2) => {
                banded = true;
                out.messages.push_str(&String::from_utf8_lossy(&p[1..]));
            }
            _ => {}
        }
    }
    // Without side bands (an old client), the report-status lines are the packets themselves.
    let status: Vec<Vec<u8>> = if banded {
        pkt_lines(&report, false)
            .map(|(l, _)| l.into_iter().map(<[u8]>::to_vec).collect())
            .unwrap_or_default()
    } else {
        packets.iter().map(|p| p.to_vec()).collect()
    };
    for line in status {
        let text = String::from_utf8_lossy(&line);
        if let Some(rest) = text.trim_end().strip_prefix("ng ") {
            let (name, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            out.refused.push(Refused {
                name: name.to_owned(),
                reason: Reason::parse(reason),
            });
        }
    }
    out
}

/// One problem line of the hook's messages: `file:line:col: severity[code]: message` (what
/// `steward hook pre-receive` prints first), as the same fields `steward validate --format json`
/// uses. `None` for lines in other shapes.
pub fn problem(line: &str) -> Option<serde_json::Value> {
    let line = line.trim();
    let (loc, rest) = line.split_once(": ")?;
    let (head, message) = rest.split_once(": ")?;
    let (severity, code) = head.strip_suffix(']')?.split_once('[')?;
    if !matches!(severity, "error" | "warning") {
        return None;
    }
    let mut parts = loc.rsplitn(3, ':');
    let column: u64 = parts.next()?.parse().ok()?;
    let line_no: u64 = parts.next()?.parse().ok()?;
    let file = parts.next()?;
    let (message, hint) = match message.rsplit_once(" (help: ") {
        Some((m, h)) => (m, h.strip_suffix(')')),
        None => (message, None),
    };
    Some(serde_json::json!({
        "severity": severity,
        "code": code,
        "message": message,
        "file": file,
        "line": line_no,
        "column": column,
        "hint": hint,
    }))
}

/// The count in the hook's last line when the validator left problems out (`… and 1,234 more
/// problems (not shown; …)`, `schema::diag::Report::omitted_line`): they count as problems of the
/// rejection too. `None` for lines in other shapes.
pub fn omitted(line: &str) -> Option<usize> {
    let rest = line.trim().strip_prefix("… and ")?;
    let (count, tail) = rest.split_once(' ')?;
    if !tail.starts_with("more problem") {
        return None;
    }
    count.replace(',', "").parse().ok()
}

/// One pkt-line holding `payload`.
pub fn pkt(payload: &[u8]) -> Vec<u8> {
    let mut v = format!("{:04x}", payload.len() + 4).into_bytes();
    v.extend_from_slice(payload);
    v
}

/// Largest payload of a side-band-64k packet after its band byte.
const BAND_PAYLOAD: usize = 65515;

/// `data` as side-band packets on `band`.
pub fn banded(band: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in data.chunks(BAND_PAYLOAD) {
        let mut p = vec![band];
        p.extend_from_slice(chunk);
        out.extend(pkt(&p));
    }
    out
}

/// The report-status of a push (the band-1 packets of a banded answer, or the packets themselves),
/// with `ok <branch>` turned into `ng <branch> <reason>`: what a client is told when the Master
/// could not pin what git already accepted. Anything that does not parse is returned unchanged.
pub fn refuse_in_report(report: &[u8], banded_answer: bool, branch: &str, reason: &str) -> Vec<u8> {
    let reason = reason.replace(['\n', '\r'], " ");
    let ok = format!("ok {branch}");
    let rewrite = |lines: Vec<&[u8]>| -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            if String::from_utf8_lossy(l).trim_end() == ok {
                out.extend(pkt(format!("ng {branch} {reason}\n").as_bytes()));
            } else {
                out.extend(pkt(l));
            }
        }
        out.extend_from_slice(b"0000");
        out
    };
    // A banded answer carries the report inside band-1 packets.
    let inner: Vec<u8>;
    let lines = if banded_answer {
        let Some((packets, _)) = pkt_lines(report, false) else {
            return report.to_vec();
        };
        inner = packets
            .iter()
            .filter(|p| p.first() == Some(&1))
            .flat_map(|p| p[1..].to_vec())
            .collect();
        pkt_lines(&inner, true)
    } else {
        pkt_lines(report, false)
    };
    match lines {
        Some((lines, _)) => finish_report(rewrite(lines), banded_answer),
        None => report.to_vec(),
    }
}

/// A report-status ending in its flush, as sent: in band 1 for a banded answer, else without the
/// flush (the caller sends the final one).
fn finish_report(mut report: Vec<u8>, banded_answer: bool) -> Vec<u8> {
    if banded_answer {
        banded(1, &report)
    } else {
        report.truncate(report.len() - 4);
        report
    }
}

/// A whole report-status refusing every command with `reason` (for a push stopped before git
/// answered), banded or not as the client asked.
pub fn refusal_report(commands: &[Command], banded_answer: bool, reason: &str) -> Vec<u8> {
    let reason = reason.replace(['\n', '\r'], " ");
    let mut inner = pkt(b"unpack ok\n");
    for c in commands {
        inner.extend(pkt(format!("ng {} {reason}\n", c.name).as_bytes()));
    }
    inner.extend_from_slice(b"0000");
    finish_report(inner, banded_answer)
}

/// The capabilities the client announced (after its first command).
pub fn capabilities(request: &[u8]) -> Vec<String> {
    let Some((lines, _)) = pkt_lines(request, true) else {
        return Vec::new();
    };
    lines
        .first()
        .and_then(|l| l.split(|b| *b == 0).nth(1))
        .map(|caps| {
            String::from_utf8_lossy(caps)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the client asked for side bands.
pub fn wants_side_band(request: &[u8]) -> bool {
    capabilities(request)
        .iter()
        .any(|c| c == "side-band-64k" || c == "side-band")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn main_refused(reason: Reason) -> Vec<Refused> {
        vec![Refused {
            name: "refs/heads/main".into(),
            reason,
        }]
    }

    #[test]
    fn the_validators_omitted_count_is_read() {
        assert_eq!(
            omitted("… and 199,800 more problems (not shown; fix the first 200 and run again)"),
            Some(199_800)
        );
        assert_eq!(omitted("  … and 1 more problem (not shown)"), Some(1));
        assert_eq!(omitted("… and so on"), None);
        assert_eq!(
            omitted("domain.toml:1:1: error[x]: … and 3 more problems"),
            None
        );
    }

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    #[test]
    fn reads_push_commands() {
        let mut body =
            pkt(format!("{A} {B} refs/heads/main\0report-status side-band-64k\n").as_bytes());
        body.extend(pkt(format!("{B} {A} refs/heads/other\n").as_bytes()));
        body.extend(b"0000PACK...");
        let c = commands(&body);
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[0],
            Command {
                old: A.into(),
                new: B.into(),
                name: "refs/heads/main".into()
            }
        );
        assert_eq!(c[1].name, "refs/heads/other");
        assert!(commands(&body[..20]).is_empty(), "cut off before the flush");
        assert!(commands(b"zzzz").is_empty());
    }

    #[test]
    fn reads_a_banded_answer() {
        let mut report = pkt(b"unpack ok\n");
        report.extend(pkt(b"ng refs/heads/main pre-receive hook declined\n"));
        report.extend(b"0000");
        let mut resp = Vec::new();
        let mut band2 = vec![2u8];
        band2.extend_from_slice(
            b"domain.toml:11:18: error[unknown-key]: unknown key `bogus` (help: expected `node`)\n",
        );
        resp.extend(pkt(&band2));
        let mut band1 = vec![1u8];
        band1.extend_from_slice(&report);
        resp.extend(pkt(&band1));
        resp.extend(b"0000");
        let a = answer(&resp);
        assert_eq!(a.refused, main_refused(Reason::HookDeclined));
        let p: Vec<_> = a.messages.lines().filter_map(problem).collect();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0]["file"], "domain.toml");
        assert_eq!(p[0]["line"], 11);
        assert_eq!(p[0]["column"], 18);
        assert_eq!(p[0]["code"], "unknown-key");
        assert_eq!(p[0]["message"], "unknown key `bogus`");
        assert_eq!(p[0]["hint"], "expected `node`");
    }

    #[test]
    fn reads_an_unbanded_answer() {
        let mut resp = pkt(b"unpack ok\n");
        resp.extend(pkt(b"ok refs/heads/main\n"));
        resp.extend(b"0000");
        assert_eq!(answer(&resp), Answer::default());
    }

    #[test]
    fn refuses_the_branch_in_a_report() {
        let mut inner = pkt(b"unpack ok\n");
        inner.extend(pkt(b"ok refs/heads/main\n"));
        inner.extend(pkt(b"ok refs/tags/v1\n"));
        inner.extend(b"0000");
        let out = refuse_in_report(&banded(1, &inner), true, "refs/heads/main", "cannot pin");
        let mut resp = out.clone();
        resp.extend(b"0000");
        let a = answer(&resp);
        assert_eq!(a.refused, main_refused(Reason::Other("cannot pin".into())));
        // Unbanded: the packets themselves.
        let plain = &inner[..inner.len() - 4];
        let mut out = refuse_in_report(plain, false, "refs/heads/main", "x\ny");
        out.extend(b"0000");
        assert_eq!(
            answer(&out).refused,
            main_refused(Reason::Other("x y".into()))
        );
    }

    #[test]
    fn builds_a_refusal_for_every_command() {
        let c = vec![
            Command {
                old: A.into(),
                new: B.into(),
                name: "refs/heads/main".into(),
            },
            Command {
                old: A.into(),
                new: B.into(),
                name: "refs/heads/x".into(),
            },
        ];
        for banded_answer in [true, false] {
            let mut out = refusal_report(&c, banded_answer, "stopped");
            out.extend(b"0000");
            assert_eq!(answer(&out).refused.len(), 2, "banded {banded_answer}");
        }
        let req = pkt(format!("{A} {B} refs/heads/main\0report-status side-band-64k\n").as_bytes());
        let mut req = req;
        req.extend(b"0000");
        assert!(wants_side_band(&req));
        let mut plain = pkt(format!("{A} {B} refs/heads/main\0report-status\n").as_bytes());
        plain.extend(b"0000");
        assert!(!wants_side_band(&plain));
    }

    #[test]
    fn skips_lines_that_are_not_problems() {
        let text = "steward: refs/heads/main abc is valid\n   --> domain.toml:11:18\nerror: abc is invalid: 1 error\n";
        assert!(text.lines().all(|l| problem(l).is_none()));
    }
}
