//! The access log: `logs/access_<YYYYMMDD>.log<NNNNN>`, written through [`crate::logfile::LogFile`]
//! (the same naming and rotation as the server log) by one writer thread, so a request only
//! formats its line and hands it over; the thread writes whatever has queued up in one write.
//!
//! Timestamps are UTC (`+0000`): log lines from servers in several time zones then sort and
//! compare without conversion.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use schema::model::AccessLogFormat;

use crate::logfile::{LogFile, Rotation};

/// What one line says.
#[derive(Debug)]
pub struct Entry<'a> {
    pub remote: IpAddr,
    pub method: &'a str,
    pub target: &'a str,
    pub version: &'a str,
    pub status: u16,
    pub bytes: Option<u64>,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub duration: Duration,
    pub app: Option<&'a str>,
}

pub fn format(format: AccessLogFormat, e: &Entry<'_>, now: SystemTime) -> String {
    let bytes = e.bytes.map_or_else(|| "-".to_owned(), |b| b.to_string());
    match format {
        AccessLogFormat::Common | AccessLogFormat::Combined => {
            let mut line = format!(
                "{} - - [{}] \"{} {} {}\" {} {bytes}",
                e.remote,
                clf_time(now),
                e.method,
                e.target,
                e.version,
                e.status
            );
            if format == AccessLogFormat::Combined {
                let q = |v: Option<&str>| v.unwrap_or("-").replace('"', "\\\"");
                line.push_str(&format!(" \"{}\" \"{}\"", q(e.referer), q(e.user_agent)));
            }
            line
        }
        AccessLogFormat::Json => serde_json::json!({
            "time": clf_time(now),
            "remote": e.remote.to_string(),
            "method": e.method,
            "target": e.target,
            "protocol": e.version,
            "status": e.status,
            "bytes": e.bytes,
            "referer": e.referer,
            "user_agent": e.user_agent,
            "duration_ms": e.duration.as_secs_f64() * 1000.0,
            "app": e.app,
        })
        .to_string(),
    }
}

/// `10/Oct/2000:13:55:36 +0000`.
fn clf_time(t: SystemTime) -> String {
    reconciler::time::clf(t)
}

/// The writer: opened on first use (a server with the access log disabled never creates the
/// file).
#[derive(Debug)]
pub struct AccessLog {
    dir: PathBuf,
    rotation: Mutex<Rotation>,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
}

impl AccessLog {
    pub fn new(dir: PathBuf, rotation: Rotation) -> AccessLog {
        AccessLog {
            dir,
            rotation: Mutex::new(rotation),
            tx: Mutex::new(None),
        }
    }

    /// Queues one line (without newline).
    pub fn write(&self, mut line: String) {
        line.push('\n');
        let Ok(mut guard) = self.tx.lock() else {
            return;
        };
        if guard.is_none() {
            let rotation = self.rotation.lock().map(|r| *r).unwrap_or_default();
            let Ok(file) = LogFile::open(&self.dir, "access", rotation) else {
                // The log directory is unusable: requests go on, the lines are lost.
                return;
            };
            let (tx, rx) = mpsc::channel::<Msg>();
            let spawned = std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || writer(file, rx));
            if spawned.is_err() {
                return;
            }
            *guard = Some(tx);
        }
        if let Some(tx) = guard.as_ref() {
            let _ = tx.send(Msg::Line(line));
        }
    }

    /// Applies `rotation` from the next write on (`servers.<s>.logging.rotation` is live).
    pub fn set_rotation(&self, rotation: Rotation) {
        if let Ok(mut r) = self.rotation.lock() {
            *r = rotation;
        }
        if let Ok(guard) = self.tx.lock()
            && let Some(tx) = guard.as_ref()
        {
            let _ = tx.send(Msg::Rotation(rotation));
        }
    }

    /// Waits (up to a second) until every line queued so far is written: tests and shutdown.
    pub fn flush(&self) {
        let (done_tx, done_rx) = mpsc::channel();
        {
            let Ok(guard) = self.tx.lock() else { return };
            let Some(tx) = guard.as_ref() else { return };
            if tx.send(Msg::Flush(done_tx)).is_err() {
                return;
            }
        }
        let _ = done_rx.recv_timeout(Duration::from_secs(1));
    }
}

enum Msg {
    Line(String),
    Flush(mpsc::Sender<()>),
    Rotation(Rotation),
}

fn writer(mut file: LogFile, rx: mpsc::Receiver<Msg>) {
    use std::io::Write;
    let mut buf = String::new();
    let mut waiting = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(l) => buf.push_str(&l),
                Msg::Flush(done) => waiting.push(done),
                Msg::Rotation(r) => file.set_rotation(r),
            }
            if buf.len() < 64 << 10 {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            let _ = file.write_all(buf.as_bytes());
            let _ = file.flush();
            buf.clear();
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn formats() {
        let e = Entry {
            remote: "10.0.0.1".parse().expect("ip"),
            method: "GET",
            target: "/shop/?q=1",
            version: "HTTP/1.1",
            status: 200,
            bytes: Some(13),
            referer: None,
            user_agent: Some("curl/8 \"x\""),
            duration: Duration::from_millis(3),
            app: Some("shop"),
        };
        let t = UNIX_EPOCH + Duration::from_secs(971_186_136);
        assert_eq!(
            format(AccessLogFormat::Common, &e, t),
            "10.0.0.1 - - [10/Oct/2000:13:55:36 +0000] \"GET /shop/?q=1 HTTP/1.1\" 200 13"
        );
        assert!(
            format(AccessLogFormat::Combined, &e, t)
                .ends_with(" 200 13 \"-\" \"curl/8 \\\"x\\\"\""),
            "{}",
            format(AccessLogFormat::Combined, &e, t)
        );
        let j: serde_json::Value =
            serde_json::from_str(&format(AccessLogFormat::Json, &e, t)).expect("json");
        assert_eq!(j["status"], 200);
        assert_eq!(j["app"], "shop");
        assert_eq!(j["target"], "/shop/?q=1");
    }

    #[test]
    fn common_log_time() {
        // 2000-10-10 13:55:36 UTC
        let t = UNIX_EPOCH + Duration::from_secs(971_186_136);
        assert_eq!(clf_time(t), "10/Oct/2000:13:55:36 +0000");
    }
}
